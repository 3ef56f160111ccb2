"""Names as storage keys: every distinct valid name is its own queue or group.

A backend turns channel and group names into keys, rows or topics. Names that differ
only in case, in a character that is a wildcard somewhere (``_`` in SQL ``LIKE``,
``.`` in a regex), in their last character (a key column too short), or in a ``!``
(a reply inbox), and a group named like a channel, must never share storage.
"""

from __future__ import annotations

import pytest

from layers.conformance_tests.helpers import drain, expect_nothing, receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires
from layers.core.backend import Capability


async def _each_gets_its_own(layer: object, names: list[str]) -> None:
    from layers.core.layer import ChannelLayer

    assert isinstance(layer, ChannelLayer)
    for name in names:
        await layer.send(name, {"to": name})
    for name in reversed(names):
        assert await receive_within(layer, name) == {"to": name}, f"{name} got another's message"
    for name in names:
        await layer.send(name, {"again": name})
        assert await receive_within(layer, name) == {"again": name}


async def _each_group_its_own(layer: object, groups: list[str]) -> None:
    from layers.core.layer import ChannelLayer

    assert isinstance(layer, ChannelLayer)
    members = {group: unique("member") for group in groups}
    for group, member in members.items():
        await layer.group_add(group, member)
    for group in reversed(groups):
        await layer.group_send(group, {"group": group})
    for group, member in members.items():
        assert await drain(layer, member, quiet=0.1) == [{"group": group}], group


@async_test
async def test_names_differing_only_in_case_are_distinct(layer_factory: LayerFactory) -> None:
    """``a.ABC`` and ``a.abc`` are two channels (and two groups), as names are case-sensitive."""
    base = unique("case")
    async with layer_factory() as layer:
        await _each_gets_its_own(layer, [f"{base}.abc", f"{base}.ABC", f"{base}.Abc"])
        if Capability.GROUPS in layer.capabilities:
            await _each_group_its_own(layer, [f"{base}.grp", f"{base}.GRP"])


@async_test
async def test_names_differing_in_a_wildcard_character_are_distinct(
    layer_factory: LayerFactory,
) -> None:
    """``_``, ``.`` and ``-`` are plain characters: ``a_b``, ``a.b``, ``aXb`` are three channels.

    Neither is a name a prefix of another's storage: ``a`` and ``ab`` are separate too.
    """
    base = unique("wild")
    names = [f"{base}.aXb", f"{base}.a-b", f"{base}.ab", f"{base}.a", f"{base}.a_b", f"{base}.a.b"]
    async with layer_factory() as layer:
        await _each_gets_its_own(layer, names)
        if Capability.GROUPS in layer.capabilities:
            await _each_group_its_own(layer, [f"{base}.gXg", f"{base}.g", f"{base}.g_g"])


@async_test
async def test_names_with_a_trailing_newline_are_rejected(layer_factory: LayerFactory) -> None:
    """``"name\\n"`` is not a valid channel or group name (a ``$`` regex would let it through)."""
    good = unique()
    async with layer_factory() as layer:
        for bad in (good + "\n", good + "!x\n", good + "\n!x", "\n" + good):
            with pytest.raises(TypeError):
                await layer.send(bad, {"x": 1})
            with pytest.raises(TypeError):
                await layer.receive(bad)
        with pytest.raises(TypeError):
            await layer.new_channel("specific\n.")
        if Capability.GROUPS in layer.capabilities:
            with pytest.raises(TypeError):
                await layer.group_add(good + "\n", good)
            with pytest.raises(TypeError):
                await layer.group_add(good, good + "\n")
            with pytest.raises(TypeError):
                await layer.group_send(good + "\n", {"x": 1})
            with pytest.raises(TypeError):
                await layer.group_discard(good + "\n", good)
        await expect_nothing(layer, good, quiet=0.05)


@async_test
async def test_long_names_differing_in_their_last_character_are_distinct(
    layer_factory: LayerFactory,
) -> None:
    """Two 100-character names differing only at the end are two channels and two groups."""
    stem = (unique("long") + "." + "x" * 100)[:99]
    async with layer_factory() as layer:
        await _each_gets_its_own(layer, [stem + "a", stem + "b"])
        if Capability.GROUPS in layer.capabilities:
            await _each_group_its_own(layer, [stem + "a", stem + "b"])


@requires(Capability.GROUPS)
@async_test
async def test_a_group_and_a_channel_of_one_name_are_independent(
    layer_factory: LayerFactory,
) -> None:
    """A group may have a channel's name: neither touches the other's storage."""
    name, member = unique("same"), unique()
    async with layer_factory() as layer:
        await layer.send(name, {"queued": 1})
        await layer.group_add(name, member)
        await layer.send(name, {"queued": 2})
        await layer.group_send(name, {"group": True})
        assert await drain(layer, name) == [{"queued": 1}, {"queued": 2}]
        assert await receive_within(layer, member) == {"group": True}
        await layer.group_discard(name, member)
        await layer.send(name, {"queued": 3})
        assert await receive_within(layer, name) == {"queued": 3}


@async_test
async def test_reply_inbox_is_not_the_channel_without_its_bang(layer_factory: LayerFactory) -> None:
    """``specific.ID!local`` and the plain channel ``specific.ID`` never share storage."""
    async with layer_factory() as layer:
        reply = await layer.new_channel()
        plain = reply[: reply.index("!")]
        await layer.send(plain, {"plain": True})
        await layer.send(reply, {"reply": True})
        assert await receive_within(layer, reply) == {"reply": True}
        assert await receive_within(layer, plain) == {"plain": True}
        await expect_nothing(layer, reply, quiet=0.1)
