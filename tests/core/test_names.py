"""Random names: reply channel suffixes and client ids are unguessable and well formed."""

from __future__ import annotations

import asyncio
import string
from collections import Counter

import pytest

import layers
from layers.core import layer as layer_module
from layers.core.names import make_client_id, random_suffix, valid_channel_name

ALPHABET = set(string.ascii_letters + string.digits)


def test_random_suffix_has_the_length_and_alphabet_asked() -> None:
    for length in (1, 8, 12, 40):
        suffix = random_suffix(length)
        assert len(suffix) == length
        assert set(suffix) <= ALPHABET


def test_random_suffix_uses_every_letter_evenly_and_never_repeats() -> None:
    draws = [random_suffix(12) for _ in range(5000)]
    assert len(set(draws)) == len(draws)
    counts = Counter("".join(draws))
    assert set(counts) == ALPHABET
    expected = 12 * 5000 / 62  # about 968 per letter
    # Every position is uniform too: a short or biased conversion shows here.
    for position in (0, 6, 11):
        at = Counter(draw[position] for draw in draws)
        assert len(at) == 62, position
    assert min(counts.values()) > expected * 0.8
    assert max(counts.values()) < expected * 1.2


def test_client_ids_make_valid_reply_channel_names() -> None:
    ids = {make_client_id() for _ in range(100)}
    assert len(ids) == 100
    for client_id in ids:
        assert valid_channel_name(f"specific.{client_id}!{random_suffix()}")


def test_a_layer_remembers_validated_names_within_a_bound() -> None:
    """Sends and receives check a name once; the memory of names stays bounded."""

    async def main() -> None:
        async with layers.from_url("memory://") as layer:
            for i in range(layer_module._TARGETS_KEPT + 10):
                reply = await layer.new_channel()
                await layer.send(reply, {"i": i})
                assert (await layer.receive(reply))["i"] == i
            assert len(layer._targets) <= layer_module._TARGETS_KEPT
            assert len(layer._receivable) <= layer_module._TARGETS_KEPT
            for _ in range(2):  # a bad name is refused every time, never remembered
                with pytest.raises(TypeError):
                    await layer.send("bad name", {})
                with pytest.raises(TypeError):
                    await layer.receive("bad name")
                with pytest.raises(TypeError):
                    await layer.send(["unhashable"], {})  # type: ignore[arg-type]

    asyncio.run(main())


def test_changing_a_layers_capacity_applies_to_channels_already_sent_to() -> None:
    async def main() -> None:
        async with layers.from_url("memory://?capacity=1") as layer:
            await layer.send("cap", {})
            with pytest.raises(layers.ChannelFull):
                await layer.send("cap", {})
            layer.capacity = 2
            await layer.send("cap", {})
            layer.channel_capacity = layers.core.options.compile_capacities({"cap": 3})
            await layer.send("cap", {})
            with pytest.raises(layers.ChannelFull):
                await layer.send("cap", {})

    asyncio.run(main())
