"""No credential reaches an error: redact_url, and the URL errors that quote a URL."""

from __future__ import annotations

import pytest

import layers
from layers.core.errors import ConfigurationError
from layers.core.redact import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
        ("redis://:pw@h", "redis://:***@h"),
        (
            "postgresql://a:pw@h1:1,h2:2/db?password=pw",
            "postgresql://a:***@h1:1,h2:2/db?password=***",
        ),
        ("redis:/u:pw@h", "redis:/u:***@h"),
        ("://u:pw@h", "://u:***@h"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://u@h:1/0", "redis://u@h:1/0"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_redact_url_hides_passwords_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:s3cret@127.0.0.1:99999/0",  # port out of range
        "redis://u:s3cret@h:abc/0",  # port not a number
        "redis+cluster://u:s3cret@h:abc",
        "redis://u:s3cret@[::1/0",  # broken IPv6 host
        "sqlite://u:s3cret@[::1/x",
        "redis:/u:s3cret@h",  # one slash
        "://u:s3cret@h",  # no scheme
    ],
)
def test_a_malformed_url_is_a_configuration_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        layers.from_url(url)
    assert info.value.setting == "url"
    assert "s3cret" not in str(info.value)
    assert info.value.__cause__ is None or "s3cret" not in str(info.value.__cause__)
