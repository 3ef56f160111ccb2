"""Shared test set-up: Django settings for the Channels integration tests."""

from __future__ import annotations

import django
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
