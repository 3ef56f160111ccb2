"""URL forms and option checks of the SQLite backend (no I/O beyond stat)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import layers
from layers.backends.sqlite import SqliteBackend, SqliteChannelLayer
from layers.core.errors import ConfigurationError


def test_relative_url_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    layer = layers.from_url("sqlite:///app.db")
    assert layer._backend_options["path"] == str(tmp_path / "app.db")
    nested = tmp_path / "sub"
    nested.mkdir()
    layer = layers.from_url("sqlite:///sub/app.db")
    assert layer._backend_options["path"] == str(nested / "app.db")


def test_absolute_url(tmp_path: Path) -> None:
    layer = layers.from_url(f"sqlite:///{tmp_path}/app.db")  # four slashes in all
    assert layer._backend_options["path"] == str(tmp_path / "app.db")


def test_absolute_url_with_layer_options_and_backend_options(tmp_path: Path) -> None:
    layer = layers.from_url(f"sqlite:///{tmp_path}/app.db?expiry=7&poll_interval=0.01")
    assert layer.expiry == 7
    assert layer._backend_options["path"] == str(tmp_path / "app.db")
    assert layer._backend_options["poll_interval"] == 0.01


def test_options_from_url_keeps_four_slash_and_percent_forms() -> None:
    assert SqliteBackend.options_from_url("sqlite:////srv/a b.db") == {"path": "/srv/a b.db"}
    assert SqliteBackend.options_from_url("sqlite:////srv/a%20b.db") == {"path": "/srv/a b.db"}
    assert SqliteBackend.options_from_url("sqlite:///rel.db") == {"path": "rel.db"}


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    prepared = SqliteBackend.prepare_options({"path": tmp_path / "x.db"})
    assert prepared == {
        "path": str(tmp_path / "x.db"),
        "poll_interval": 0.002,
        "busy_timeout": 5.0,
        "cleanup_interval": 5.0,
    }


@pytest.mark.parametrize("url", ["sqlite://:memory:", "sqlite:///:memory:"])
def test_memory_database_is_refused_with_a_hint(url: str) -> None:
    with pytest.raises(ConfigurationError, match="memory://") as info:
        layers.from_url(url)
    assert info.value.setting in {"url", "path"}


def test_a_host_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no host") as info:
        layers.from_url("sqlite://user@host:5/app.db")
    assert info.value.setting == "url"


def test_a_host_with_a_password_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError, match="no host") as info:
        layers.from_url("sqlite://user:s3cret-pw@host/app.db")
    assert "s3cret-pw" not in str(info.value)
    assert "user" in str(info.value)


def test_unknown_url_option_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        layers.from_url(f"sqlite:///{tmp_path}/a.db?pool_size=3")
    assert info.value.setting == "pool_size"


def test_unknown_config_option_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        SqliteChannelLayer(path=str(tmp_path / "a.db"), hosts=["x"])
    assert info.value.setting == "hosts"


def test_missing_path_is_named() -> None:
    with pytest.raises(ConfigurationError) as info:
        SqliteChannelLayer()
    assert info.value.setting == "path"


def test_missing_directory_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist") as info:
        SqliteChannelLayer(path=str(tmp_path / "nope" / "a.db"))
    assert info.value.setting == "path"


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="directory") as info:
        SqliteChannelLayer(path=str(tmp_path))
    assert info.value.setting == "path"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("poll_interval", 0),
        ("poll_interval", "fast"),
        ("poll_interval", True),
        ("busy_timeout", -1),
        ("cleanup_interval", None),
    ],
)
def test_bad_numbers_are_named(tmp_path: Path, key: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        SqliteChannelLayer(path=str(tmp_path / "a.db"), **{key: value})  # type: ignore[arg-type]
    assert info.value.setting == key


def test_numbers_from_the_url_are_converted(tmp_path: Path) -> None:
    layer = layers.from_url(f"sqlite:///{tmp_path}/a.db?busy_timeout=2&cleanup_interval=0.5")
    assert layer._backend_options["busy_timeout"] == 2.0
    assert layer._backend_options["cleanup_interval"] == 0.5


def test_path_like_and_home_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    prepared = SqliteBackend.prepare_options({"path": "~/a.db"})
    assert prepared["path"] == os.path.join(str(tmp_path), "a.db")


def test_capabilities_and_extensions(tmp_path: Path) -> None:
    layer = SqliteChannelLayer(path=str(tmp_path / "a.db"))
    assert {c.value for c in layer.capabilities} == {
        "groups",
        "flush",
        "cross_process",
        "persistent",
        "statistics",
    }
    assert layer.extensions == ["groups", "flush"]


def test_django_style_config_by_dotted_path(tmp_path: Path) -> None:
    layer = layers.layer_from_config(
        {
            "BACKEND": "layers.backends.sqlite.SqliteChannelLayer",
            "CONFIG": {"path": str(tmp_path / "dj.db"), "capacity": 9},
        }
    )
    assert isinstance(layer, SqliteChannelLayer)
    assert layer.capacity == 9
