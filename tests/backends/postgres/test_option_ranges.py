"""PostgreSQL settings refuse NaN, infinities and reserved schemas when the layer is made."""

from __future__ import annotations

import pytest

import layers
from layers.core.errors import ConfigurationError

URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.mark.parametrize(
    ("query", "setting"),
    [
        ("poll_interval=nan", "poll_interval"),
        ("poll_interval=inf", "poll_interval"),
        ("cleanup_interval=nan", "cleanup_interval"),
        ("pool_timeout=inf", "pool_timeout"),
        ("cleanup_batch=99999999999", "cleanup_batch"),
        ("schema=public", "schema"),
        ("schema=pg_catalog", "schema"),
        ("schema=information_schema", "schema"),
    ],
)
def test_bad_settings_fail_when_the_layer_is_made(query: str, setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        layers.from_url(f"{URL}?{query}")
    assert info.value.setting == setting
