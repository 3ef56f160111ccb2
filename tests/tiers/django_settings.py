"""Django settings for the ``layers worker --layer`` test (the URL comes from the test)."""

import os

SECRET_KEY = "tests-only"
INSTALLED_APPS = ["channels"]
USE_TZ = True
CHANNEL_LAYERS = {
    "default": {"BACKEND": "layers.ChannelLayer", "CONFIG": {"url": os.environ["TIER_URL"]}},
}
