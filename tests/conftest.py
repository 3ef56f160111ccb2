"""Shared test set-up: Django settings, and the server fixtures every folder may use.

The Redis and PostgreSQL fixtures (``tests/backends/*/servers.py``) are plugins of the
whole run, so the conformance run over every backend and the backends' own tests start
and share the same servers. This folder is on ``sys.path`` (pytest's ``prepend``
import mode), which makes ``backends`` importable; the repository root is added when
the benchmark harness (whose throwaway Redis servers the fixtures use) is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import django
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("benchmarks") is None:  # the harness is not installed
    sys.path.insert(0, str(ROOT))

pytest_plugins = ["backends.redis.servers", "backends.postgres.servers"]

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
