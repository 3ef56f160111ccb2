"""Options: one answer to an unknown name on every backend, one rule for options given twice.

Rule: a keyword argument of ``from_url``/``ChannelLayer`` or a Django ``CONFIG`` key next
to a ``url`` overrides the same option in the URL's query string.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import layers
from layers.core import config

LAYER_VALID = ["capacity", "expiry", "group_expiry", "max_message_size", "serializer_format"]


def _urls(tmp_path: Path) -> dict[str, str]:
    return {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp_path}/opts.db",
        "redis": os.environ.get("LAYERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "postgres": os.environ.get(
            "LAYERS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    }


BACKENDS = ["memory", "sqlite", "redis", "postgres"]


def _with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spelling", ["keyword", "url", "config"])
def test_unknown_option_one_answer_everywhere(backend: str, spelling: str, tmp_path: Path) -> None:
    url = _urls(tmp_path)[backend]
    make = {
        "keyword": lambda: layers.from_url(url, capcity=10),
        "url": lambda: layers.from_url(_with_query(url, "capcity=10")),
        "config": lambda: layers.layer_from_config({"CONFIG": {"url": url, "capcity": 10}}),
    }[spelling]
    with pytest.raises(layers.UnknownOption) as caught:
        make()
    error = caught.value
    text = str(error)
    assert error.setting == error.option == "capcity"
    assert "unknown option 'capcity'" in text
    assert f"for the {layers.get_backend(url.split(':')[0]).name} backend" in text
    assert "Did you mean 'capacity'?" in text
    assert error.suggestion == "capacity"
    for name in LAYER_VALID:  # the layer's options are listed on every backend
        assert name in error.valid
    assert isinstance(error, layers.ConfigurationError)


@pytest.mark.parametrize(
    ("backend", "typo", "meant"),
    [
        ("memory", "stor", "store"),
        ("redis", "prefx", "prefix"),
        ("sqlite", "pol_interval", "poll_interval"),
        ("postgres", "schem", "schema"),
    ],
)
@pytest.mark.parametrize("in_url", [False, True])
def test_backend_option_typos_suggest_the_backend_option(
    backend: str, typo: str, meant: str, in_url: bool, tmp_path: Path
) -> None:
    url = _urls(tmp_path)[backend]
    if in_url and backend == "memory":
        meant = "expiry"  # memory URLs take only layer options; store is the host part
        typo = "expiy"
    if in_url:
        url, options = _with_query(url, f"{typo}=1"), {}
    else:
        options = {typo: "1"}
    with pytest.raises(layers.UnknownOption, match=f"Did you mean '{meant}'"):
        layers.from_url(url, **options)


def test_redis_url_typo_never_reaches_the_driver() -> None:
    with pytest.raises(layers.UnknownOption) as caught:
        layers.from_url("redis://127.0.0.1:6379/0?socket_timout=1")
    assert "unexpected keyword" not in str(caught.value)
    assert caught.value.suggestion == "socket_timeout"


def test_redis_url_refuses_driver_internals_and_lists_only_real_options() -> None:
    # redis-py's connection classes take internals (callbacks, handler objects) that a
    # URL's text cannot sensibly set; they are refused, and left out of the valid names.
    for internal in ("redis_connect_func", "event_dispatcher", "socket_type", "encoding"):
        with pytest.raises(layers.UnknownOption) as caught:
            layers.from_url(f"redis://127.0.0.1:6379/0?{internal}=x")
        listed = str(caught.value).split("Valid options: ")[1]
        assert internal not in listed
        assert "socket_connect_timeout" in listed
        assert "ssl_ca_certs" in listed
        assert len(listed.split(", ")) < 60, listed


def test_redis_tls_option_on_a_plain_url_names_the_scheme() -> None:
    for url in ("redis://127.0.0.1:6379/0", "unix:///run/redis.sock", "redis+sentinel://s1/m"):
        with pytest.raises(layers.ConfigurationError) as caught:
            layers.from_url(f"{url}?ssl_password=s3cret")
        assert caught.value.setting == "ssl_password"
        assert "rediss://" in str(caught.value)
        assert "s3cret" not in str(caught.value)
    layers.from_url("rediss://127.0.0.1:6380/0?ssl_cert_reqs=none&ssl_password=s3cret")


def test_valid_driver_options_in_urls_are_accepted(tmp_path: Path) -> None:
    layers.from_url("redis://127.0.0.1:6379/0?socket_timeout=1&prefix=p&health_check_interval=5")
    layers.from_url("postgresql://postgres@127.0.0.1/x?connect_timeout=3&schema=s&sslmode=disable")
    layers.from_url(f"sqlite:///{tmp_path}/x.db?poll_interval=0.01&busy_timeout=1")


# -- options given twice ---------------------------------------------------------------

# option -> (value in the URL, value given as keyword, how the layer reports it)
LAYER_OPTIONS: dict[str, tuple[str, Any]] = {
    "expiry": ("30", 10),
    "group_expiry": ("300", 600),
    "capacity": ("7", 3),
    "max_message_size": ("5000", 7000),
    "serializer_format": ("json", "msgpack"),
}


@pytest.mark.parametrize("option", sorted(LAYER_OPTIONS))
@pytest.mark.parametrize("spelling", ["from_url", "config"])
@pytest.mark.parametrize("direction", ["bigger", "smaller"])
def test_layer_option_keyword_overrides_url(option: str, spelling: str, direction: str) -> None:
    in_url, keyword = LAYER_OPTIONS[option]
    if direction == "smaller" and option != "serializer_format":
        keyword = type(keyword)(int(in_url) // 2 + 1) if keyword > int(in_url) else keyword
    url = f"memory://?{option}={in_url}"
    if spelling == "from_url":
        layer = layers.from_url(url, **{option: keyword})
    else:
        layer = layers.layer_from_config({"CONFIG": {"url": url, option: keyword}})
    if option == "serializer_format":
        assert layer._serializer is not layers.from_url(url)._serializer
        assert type(layer._serializer).__name__ != type(layers.from_url(url)._serializer).__name__
    else:
        assert getattr(layer, option) == keyword
        assert getattr(layers.from_url(url), option) == type(keyword)(in_url)


def test_max_message_size_none_keyword_overrides_url() -> None:
    layer = layers.from_url("memory://?max_message_size=100", max_message_size=None)
    assert layer.max_message_size is None


def test_not_given_keeps_the_url_value_and_defaults_apply() -> None:
    layer = layers.from_url("memory://?expiry=30")
    assert (layer.expiry, layer.capacity, layer.group_expiry) == (30, 100, 86400)
    layer = layers.from_url("memory://?expiry=30", expiry=None)
    assert layer.expiry == 30


@pytest.mark.parametrize("spelling", ["from_url", "config"])
def test_backend_option_keyword_overrides_url(spelling: str, tmp_path: Path) -> None:
    cases: list[tuple[str, str, Any, Any]] = [
        (f"sqlite:///{tmp_path}/a.db?poll_interval=0.5", "poll_interval", 0.01, None),
        (f"sqlite:///{tmp_path}/a.db?busy_timeout=9", "busy_timeout", 2.0, None),
        (f"sqlite:///{tmp_path}/a.db?cleanup_interval=9", "cleanup_interval", 3.0, None),
        ("redis://127.0.0.1:6379/0?prefix=fromurl", "prefix", "fromkw", None),
        ("postgresql://postgres@127.0.0.1/x?schema=fromurl", "schema", "fromkw", None),
        ("postgresql://postgres@127.0.0.1/x?pool_max_size=3", "pool_max_size", 4, None),
        ("postgresql://postgres@127.0.0.1/x?poll_interval=3", "poll_interval", 0.5, None),
    ]
    for url, option, keyword, _ in cases:
        if spelling == "from_url":
            layer = layers.from_url(url, **{option: keyword})
        else:
            layer = layers.layer_from_config({"CONFIG": {"url": url, option: keyword}})
        prepared = layer._backend_options
        if "config" in prepared:  # redis
            assert prepared["config"].prefix == keyword
        elif "settings" in prepared:  # postgres
            assert getattr(prepared["settings"], option) == keyword
        else:
            assert prepared[option] == keyword


# every PostgreSQL setting: (value in the URL, keyword value)
POSTGRES_SETTINGS: dict[str, tuple[str, Any]] = {
    "schema": ("from_url", "from_kw"),
    "unlogged": ("true", False),
    "synchronous_commit": ("local", "on"),
    "poll_only": ("true", False),
    "poll_interval": ("3", 0.5),
    "notify": ("false", True),
    "pool_min_size": ("2", 1),
    "pool_max_size": ("3", 5),
    "pool_timeout": ("3", 4.0),
    "cleanup_interval": ("9", 7.0),
    "cleanup_batch": ("50", 70),
}


@pytest.mark.parametrize("option", sorted(POSTGRES_SETTINGS))
@pytest.mark.parametrize("spelling", ["from_url", "config"])
def test_every_postgres_setting_keyword_overrides_url(option: str, spelling: str) -> None:
    in_url, keyword = POSTGRES_SETTINGS[option]
    url = f"postgresql://postgres@127.0.0.1/x?{option}={in_url}"
    if spelling == "from_url":
        layer = layers.from_url(url, **{option: keyword})
    else:
        layer = layers.layer_from_config({"CONFIG": {"url": url, option: keyword}})
    assert getattr(layer._backend_options["settings"], option) == keyword
    # and a libpq keyword too
    layer = layers.from_url(
        "postgresql://postgres@127.0.0.1/x?connect_timeout=3", connect_timeout=7
    )
    assert "connect_timeout=7" in layer._backend_options["conninfo"]


def test_memory_store_keyword_overrides_url_name() -> None:
    from layers.backends.memory import named_store

    layer = layers.from_url("memory://from_url", store="from_keyword")
    assert layer._backend_options["store"] is named_store("from_keyword")
    assert layers.from_url("memory://from_url")._backend_options["store"] is named_store("from_url")


def test_the_rule_is_documented() -> None:
    assert "overrides" in (config.__doc__ or "")
    assert "keyword" in (layers.ChannelLayer.__doc__ or "")
