"""Settings for the Django liveblog (the database and layer URL come from the environment)."""

import os

SECRET_KEY = "liveblog-example-only"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["channels", "examples.liveblog.django_variant"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("LIVEBLOG_DATABASE", "liveblog.sqlite3"),
    }
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "layers.ChannelLayer",
        "CONFIG": {"url": os.environ.get("LIVEBLOG_LAYER_URL", "sqlite:///liveblog-layer.db")},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
