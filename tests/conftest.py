"""Shared test set-up: Django settings for the Channels integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import django
import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "layers.backends.memory.MemoryChannelLayer",
                "CONFIG": {"expiry": 30, "capacity": 50},
                "TEST_CONFIG": {"expiry": 5},
            },
            "by-name": {"BACKEND": "memory", "CONFIG": {"capacity": 7}},
            "by-url": {"BACKEND": "layers.ChannelLayer", "CONFIG": {"url": "memory://?expiry=9"}},
        },
        USE_TZ=True,
    )
    django.setup()


@pytest.fixture
def run_conformance() -> Callable[..., None]:
    """Run the shipped conformance suite on a URL in a subprocess; fail with its output."""

    def run(url: str, *, warnings: str = "error", timeout: float = 600) -> None:
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "layers.conformance_tests",
            "--layer-url",
            url,
            "--pyargs",
            "layers.conformance_tests",
            "-q",
            "-p",
            "no:cacheprovider",
        ]
        env = {**os.environ, "PYTHONWARNINGS": warnings}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

    return run
