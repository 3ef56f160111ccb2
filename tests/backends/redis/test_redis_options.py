"""Options, URLs and routing of the Redis backend (no server needed)."""

from __future__ import annotations

import re

import pytest

import layers
from layers.backends.redis import RedisBackend, RedisChannelLayer
from layers.backends.redis._config import Router, hosts_from_url, parse_hosts
from layers.core.errors import ConfigurationError


def ids(value: object) -> list[str]:
    return [spec.id for spec in parse_hosts(value)]


def test_every_channels_redis_hosts_form() -> None:
    hosts = [
        "redis://:pw@10.0.0.1:6379/1",
        ("10.0.0.2", 6380),
        {"host": "10.0.0.3", "port": 6381, "password": "x"},
        {"address": "rediss://10.0.0.4:6390/2", "ssl_cert_reqs": None},
        {"address": ("10.0.0.5", 6391)},
        {"sentinels": [("10.0.0.6", 26379)], "master_name": "mymaster", "db": 3},
        "unix:///tmp/redis.sock?db=4",
    ]
    assert ids(hosts) == [
        "10.0.0.1:6379/1",
        "10.0.0.2:6380/0",
        "10.0.0.3:6381/0",
        "10.0.0.4:6390/2",
        "10.0.0.5:6391/0",
        "sentinel:mymaster/3",
        "unix:/tmp/redis.sock/4",
    ]
    assert ids(None) == ["localhost:6379/0"]


def test_bare_string_hosts_is_an_error_like_channels_redis() -> None:
    with pytest.raises(ConfigurationError, match="list"):
        parse_hosts("redis://localhost:6379")


def test_the_same_host_twice_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="twice"):
        parse_hosts(["redis://a:1/0", ("a", 1)])


def test_multi_host_url_shares_auth_db_and_options() -> None:
    specs, options = hosts_from_url("redis://u:pw@h1:7000,h2/3?socket_timeout=5&prefix=app")
    assert options == {"prefix": "app"}
    assert [s.id for s in specs] == ["h1:7000/3", "h2:6379/3"]
    assert specs[1].url == "redis://u:pw@h2/3?socket_timeout=5"


def test_a_unix_socket_url_keeps_its_double_slash_for_redis_py() -> None:
    # Recent redis-py accepts only "unix://"; urlunsplit would write "unix:/tmp/r.sock".
    (spec,), options = hosts_from_url("unix://user@/tmp/r.sock?db=2&prefix=app")
    assert options == {"prefix": "app"}
    assert spec.url == "unix://user@/tmp/r.sock?db=2"
    (spec,), _ = hosts_from_url("unix:///tmp/r.sock")
    assert spec.url == "unix:///tmp/r.sock"


def test_sentinel_url() -> None:
    (spec,), _ = hosts_from_url(
        "redis+sentinel://:secret@s1:26379,s2/mymaster/2?sentinel_password=sp"
    )
    assert spec.sentinels == (("s1", 26379), ("s2", 26379))
    assert spec.master_name == "mymaster"
    assert spec.kwargs["db"] == 2
    assert spec.kwargs["password"] == "secret"
    assert spec.sentinel_kwargs == {"password": "sp"}


def test_sentinel_url_needs_a_master_name() -> None:
    with pytest.raises(ConfigurationError, match="master_name"):
        hosts_from_url("redis+sentinel://s1:26379")


def test_cluster_url_in_the_hosts_of_a_non_cluster_layer_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="RedisClusterChannelLayer"):
        RedisChannelLayer(hosts=["redis+cluster://localhost:7000"])


def test_layer_takes_channels_redis_options() -> None:
    layer = RedisChannelLayer(
        hosts=[("localhost", 6379)],
        prefix="myapp",
        expiry=30,
        group_expiry=600,
        capacity=50,
        channel_capacity={"http.request": 200, re.compile(r"^websocket.send\!.+"): 20},
        symmetric_encryption_keys=["secret"],
        serializer_format="json",
        random_prefix_length=12,
    )
    assert (layer.expiry, layer.group_expiry, layer.capacity) == (30, 600, 50)
    assert layer.get_capacity("http.request") == 200
    assert layer.get_capacity("websocket.send!abc") == 20
    assert layer.extensions == ["groups", "flush"]


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"prefix": "a{b}"}, "prefix"),
        ({"prefix": ""}, "prefix"),
        ({"bogus": 1}, "bogus"),
        ({"hosts": [{"host": "h", "no_such_kwarg": 1}]}, "hosts"),
        ({"hosts": [("h",)]}, "hosts"),
        ({"hosts": [{"master_name": "m", "sentinels": []}]}, "hosts"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisBackend.prepare_options(options)
    assert info.value.setting == setting


def test_url_options_reach_the_backend() -> None:
    layer = layers.from_url("redis://h1,h2:6380/1?prefix=p&expiry=5&capacity=7")
    config = layer._backend_options["config"]
    assert config.prefix == "p"
    assert [s.id for s in config.hosts] == ["h1:6379/1", "h2:6380/1"]
    assert (layer.expiry, layer.capacity) == (5, 7)


def test_router_is_stable_balanced_and_moves_little() -> None:
    three = Router(["a:6379/0", "b:6379/0", "c:6379/0"])
    names = [f"chat.room-{i}" for i in range(3000)]
    placed = [three.index(n) for n in names]
    # Fixed values: the same in every process and Python version (no hash()).
    fixed = ("x", "specific.abc!", "group-1", "chat", "q1", "q2")
    assert [three.index(n) for n in fixed] == [1, 2, 0, 0, 2, 1]
    counts = [placed.count(i) for i in range(3)]
    assert min(counts) > 800, counts
    two = Router(["a:6379/0", "c:6379/0"])
    for name, where in zip(names, placed, strict=True):
        if where != 1:  # names not on the removed host stay where they were
            assert ["a:6379/0", "c:6379/0"][two.index(name)] == ["a", "b", "c"][where] + ":6379/0"
