"""The app: connects the ``post_save`` handler that publishes posts."""

from django.apps import AppConfig


class LiveblogConfig(AppConfig):
    name = "examples.liveblog.django_variant"
    label = "liveblog"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from .models import Post, publish

        post_save.connect(publish, sender=Post)
