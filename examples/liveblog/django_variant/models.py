"""A liveblog post, and the seed's ``post_save`` handler, unchanged."""

import json
from typing import Any

from django.db import models

from layers import Group


class Post(models.Model):
    text = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "liveblog"


def publish(sender: type, instance: Post, created: bool, **kwargs: Any) -> None:
    """Send every saved post to every open page: plain sync code, no await."""
    Group("liveblog").send({"text": json.dumps({"id": instance.pk, "text": instance.text})})
