"""Wording users read: error messages and documented examples."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

import layers

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_invalid_value_message_reads_well() -> None:
    async def send() -> None:
        async with layers.from_url("memory://") as layer:
            await layer.send("wording.check", {"value": object()})

    with pytest.raises(layers.InvalidMessage) as caught:
        asyncio.run(send())
    text = str(caught.value)
    assert "is a object" not in text
    assert "message['value'] is of type object" in text


def test_django_capacity_example_uses_current_channel_names() -> None:
    """The ``channel_capacity`` example names channels Channels 4 makes, not Channels 1's."""
    text = (DOCS / "django.md").read_text()
    example = re.search(r'"channel_capacity": (\{[^}]*\})', text)
    assert example is not None
    patterns = example.group(1)
    for old in ("http.request", "http.response", "websocket.send", "websocket.receive"):
        assert old not in patterns
    assert "specific.*" in patterns
