"""The liveblog as a Django app: saving a ``Post`` broadcasts it from a ``post_save`` handler.

Run it (from the repository root)::

    export DJANGO_SETTINGS_MODULE=examples.liveblog.django_variant.settings
    python -m django migrate
    layers serve --layer default --port 8000 &
    layers worker examples.liveblog.django_variant.routing:channel_routing --layer default &
"""
