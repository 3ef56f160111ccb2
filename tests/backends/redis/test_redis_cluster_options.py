"""Cluster configuration without a server: URLs, seeds, TLS, credentials, refusals."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import SSLConnection

import layers
from layers.backends.redis._cluster_config import node_spec as _node_spec
from layers.backends.redis.cluster import (
    RedisClusterBackend,
    RedisClusterChannelLayer,
    key_slot,
)
from layers.core.errors import ConfigurationError
from layers.core.registry import get_backend


def test_cluster_schemes_are_registered() -> None:
    assert get_backend("redis+cluster") is RedisClusterBackend
    assert get_backend("rediss+cluster") is RedisClusterBackend


def test_url_lists_seeds_and_keeps_the_query_options() -> None:
    options = RedisClusterBackend.options_from_url(
        "rediss+cluster://alice:s3cret@a.example:7000,b.example:7001"
        "?ssl_cert_reqs=required&prefix=app"
    )
    specs = options["hosts"]
    assert [s.id for s in specs] == ["a.example:7000/0", "b.example:7001/0"]
    assert options["prefix"] == "app"
    node = _node_spec(specs[0], "10.0.0.9", 7005)
    assert node.url == "rediss://alice:s3cret@10.0.0.9:7005/0?ssl_cert_reqs=required"
    conn = node.make_pool()[0].make_connection()  # type: ignore[no-untyped-call]
    assert isinstance(conn, SSLConnection)
    assert (conn.username, conn.password, conn.host, conn.port) == (
        "alice",
        "s3cret",
        "10.0.0.9",
        7005,
    )


def test_dict_seeds_carry_credentials_to_discovered_nodes() -> None:
    seed = {"host": "10.0.0.1", "port": 7000, "username": "bob", "password": "pw1"}
    layer = RedisClusterChannelLayer(hosts=[{**seed, "connection_class": SSLConnection}])
    seed = layer._backend_options["config"].hosts[0]
    node = _node_spec(seed, "10.0.0.2", 7002)
    conn = node.make_pool()[0].make_connection()  # type: ignore[no-untyped-call]
    assert isinstance(conn, SSLConnection)
    assert (conn.username, conn.password, conn.port) == ("bob", "pw1", 7002)


def test_credentials_never_show_in_repr() -> None:
    layer = layers.from_url("redis+cluster://u:hunter22@127.0.0.1:7000")
    assert "hunter22" not in repr(layer)
    assert "hunter22" not in repr(layer._backend_options)


@pytest.mark.parametrize(
    ("url", "setting", "words"),
    [
        ("redis+cluster://h:7000?read_from_replicas=true", "read_from_replicas", "primaries"),
        ("redis+cluster://h:7000/2", "hosts", "only database 0"),
        ("redis+cluster://h:7000?no_such_option=1", "no_such_option", "Valid options"),
        ("redis+cluster://h:7000?wait_replicas=-1", "wait_replicas", "int >= 0"),
        ("redis+cluster://h:7000?wait_replicas=1&wait_timeout=0", "wait_timeout", "> 0"),
    ],
)
def test_bad_cluster_config_is_refused(url: str, setting: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words) as info:
        layers.from_url(url)
    assert info.value.setting == setting


def test_read_from_replicas_false_is_accepted() -> None:
    RedisClusterChannelLayer(hosts=[("h", 7000)], read_from_replicas=False)
    layers.from_url("redis+cluster://h:7000?read_from_replicas=false")


def test_a_sentinel_seed_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="Sentinel"):
        RedisClusterChannelLayer(hosts=[{"sentinels": [("h", 26379)], "master_name": "m"}])


def test_key_slot_is_redis_crc16() -> None:
    # Values from CLUSTER KEYSLOT on a Redis 7 server.
    assert key_slot("foo") == 12182
    assert key_slot("chat.room") == key_slot("chat.room")
    assert key_slot("specific.abc!") != key_slot("specific.abd!")


def test_an_unknown_option_lists_the_known_ones_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'wait_replicas'") as info:
        RedisClusterChannelLayer(hosts=[("h", 7000)], wait_replica=1)
    assert info.value.setting == "wait_replica"
    assert "read_from_replicas" in str(info.value)
