"""Django settings of the runworker test project (the layer URL comes from the environment)."""

import os

SECRET_KEY = "tests-only"
INSTALLED_APPS = ["channels"]
ASGI_APPLICATION = "chreal_asgi.application"
CHANNEL_LAYERS = {
    "default": {"BACKEND": "layers.ChannelLayer", "CONFIG": {"url": os.environ["CHREAL_URL"]}}
}
USE_TZ = True
