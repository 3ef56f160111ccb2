"""Code written for Django Channels / channels_redis runs unchanged against our layers.

Exceptions Channels code catches, and the ``BaseChannelLayer`` surface of Channels 4.3
(names, messages, deprecations, capacities) plus channels_redis's ``close_pools()``.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import warnings

import pytest
from channels import exceptions as channels_exceptions
from channels.layers import BaseChannelLayer

import layers
from layers.conformance_tests.plugin import async_test

CHANNELS = BaseChannelLayer()


@async_test
async def test_except_channels_channelfull_catches_our_channelfull() -> None:
    layer = layers.from_url("memory://?capacity=1")
    await layer.send("jobs", {"n": 1})
    caught: list[BaseException] = []
    try:
        await layer.send("jobs", {"n": 2})
    except channels_exceptions.ChannelFull as exc:  # how Channels code backs off
        caught.append(exc)
    assert len(caught) == 1
    assert isinstance(caught[0], layers.ChannelFull)
    await layer.aclose()


def test_exceptions_with_a_channels_counterpart_are_instances_of_it() -> None:
    assert issubclass(layers.ChannelFull, channels_exceptions.ChannelFull)
    assert issubclass(layers.MessageTooLarge, channels_exceptions.MessageTooLarge)
    assert issubclass(layers.ConfigurationError, channels_exceptions.InvalidChannelLayerError)
    assert issubclass(layers.UnknownBackend, channels_exceptions.InvalidChannelLayerError)
    # and they stay what they were
    assert issubclass(layers.ConfigurationError, ValueError)
    assert issubclass(layers.MissingDriver, ImportError)
    assert issubclass(layers.ChannelFull, layers.LayerError)


@async_test
async def test_message_too_large_is_channels_message_too_large() -> None:
    layer = layers.from_url("memory://?max_message_size=64")
    with pytest.raises(channels_exceptions.MessageTooLarge):
        await layer.send("big", {"text": "x" * 200})
    await layer.aclose()


def test_a_bad_setting_is_channels_invalid_channel_layer_error() -> None:
    with pytest.raises(channels_exceptions.InvalidChannelLayerError, match="capacity"):
        layers.from_url("memory://", capacity=0)


def test_without_channels_our_exceptions_still_work() -> None:
    code = (
        "import sys; sys.modules['channels'] = None\n"
        "import layers, asyncio\n"
        "assert layers.ChannelFull.__mro__[1] is layers.LayerError\n"
        "async def main():\n"
        "    layer = layers.from_url('memory://?capacity=1')\n"
        "    await layer.send('a', {})\n"
        "    try:\n"
        "        await layer.send('a', {})\n"
        "    except layers.ChannelFull as exc:\n"
        "        print('caught', type(exc).__name__)\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "caught ChannelFull"


# -- BaseChannelLayer surface ------------------------------------------------------------


def test_max_name_length_and_invalid_name_error_read_as_channels() -> None:
    layer = layers.from_url("memory://")
    assert layer.MAX_NAME_LENGTH == CHANNELS.MAX_NAME_LENGTH == 100
    assert layer.invalid_name_error == CHANNELS.invalid_name_error
    assert type(layer).invalid_name_error == CHANNELS.invalid_name_error


@pytest.mark.parametrize("kind", ["Channel", "Group"])
@pytest.mark.parametrize("name", ["has space", "", "x" * 101, 42, "a!b!c"])
def test_invalid_name_errors_start_with_channels_text(kind: str, name: object) -> None:
    layer = layers.from_url("memory://")
    if kind == "Group" and name == "a!b!c":
        name = "a!b"
    check = (
        layer.require_valid_channel_name if kind == "Channel" else layer.require_valid_group_name
    )
    with pytest.raises(TypeError) as ours:
        check(name)
    channels_check = (
        CHANNELS.require_valid_channel_name
        if kind == "Channel"
        else CHANNELS.require_valid_group_name
    )
    with pytest.raises(TypeError) as theirs:
        channels_check(name)
    assert str(ours.value).startswith(str(theirs.value))
    assert re.match(re.escape(CHANNELS.invalid_name_error.format(kind)), str(ours.value))


@async_test
async def test_send_and_group_add_errors_read_as_channels() -> None:
    layer = layers.from_url("memory://")
    expected = CHANNELS.invalid_name_error.format("Channel")
    with pytest.raises(TypeError, match=re.escape(expected)):
        await layer.send("bad name", {})
    with pytest.raises(TypeError, match=re.escape(CHANNELS.invalid_name_error.format("Group"))):
        await layer.group_add("bad group", "ok")
    await layer.aclose()


def test_require_valid_names_return_true_as_channels() -> None:
    layer = layers.from_url("memory://")
    assert layer.require_valid_channel_name("a.b!c") is True
    assert layer.require_valid_group_name("a.b") is True
    assert layer.valid_channel_names(["a", "b!c"]) is True
    with pytest.raises(TypeError):
        layer.valid_channel_names(["a", "b c"])


@pytest.mark.parametrize(
    ("method", "argument", "wording"),
    [
        (
            "valid_channel_name",
            "a.b",
            "valid_channel_name is deprecated, use require_valid_channel_name instead.",
        ),
        (
            "valid_group_name",
            "a.b",
            "valid_group_name is deprecated, use require_valid_group_name instead.",
        ),
    ],
)
def test_deprecated_validators_warn_with_channels_wording(
    method: str, argument: str, wording: str
) -> None:
    layer = layers.from_url("memory://")
    with pytest.warns(DeprecationWarning, match="deprecated") as ours:
        assert getattr(layer, method)(argument) is True
    with pytest.warns(DeprecationWarning, match="deprecated") as theirs:
        getattr(CHANNELS, method)(argument)
    assert str(ours[0].message) == str(theirs[0].message) == wording
    assert ours[0].filename == __file__  # stacklevel points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(TypeError):
            getattr(layer, method)("not valid")


def test_match_type_and_length_get_capacity_compile_capacities_extensions() -> None:
    layer = layers.from_url("memory://", capacity=7, channel_capacity={"chat.*": 3})
    assert layer.match_type_and_length("abc") is True
    assert layer.match_type_and_length(5) is False
    assert layer.match_type_and_length("x" * 101) is False
    assert layer.get_capacity("chat.room") == 3
    assert layer.get_capacity("other") == 7
    compiled = layer.compile_capacities({"a.*": 2, re.compile("^b"): 4})
    reference = CHANNELS.compile_capacities({"a.*": 2, re.compile("^b"): 4})
    assert [(p.pattern, v) for p, v in compiled] == [(p.pattern, v) for p, v in reference]
    assert layer.extensions == ["groups", "flush"]


# -- close_pools (channels_redis) ------------------------------------------------------


@async_test
async def test_close_pools_releases_and_the_layer_stays_usable() -> None:
    layer = layers.from_url("memory://")
    await layer.send("keep", {"n": 1})
    await layer.close_pools()
    assert not layer._states  # this loop's connections are gone
    await layer.close_pools()  # idempotent
    assert await layer.receive("keep") == {"n": 1}  # messages stay; it reconnects
    await layer.aclose()


def test_close_pools_closes_the_state_of_another_running_loop() -> None:
    layer = layers.from_url("memory://")
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(layer.send("x", {}), other).result(5)
        assert other in layer._states

        async def close() -> None:
            await layer.send("y", {})
            await layer.close_pools()

        asyncio.run(close())
        assert other not in layer._states
        assert not layer._states
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(5)
        other.close()
