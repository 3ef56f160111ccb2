"""The public API is exactly what layers.__all__ lists."""

import types

import layers


def test_all_is_sorted_and_unique() -> None:
    assert list(layers.__all__) == sorted(set(layers.__all__))


def test_every_public_name_is_exported() -> None:
    public = {
        name
        for name, value in vars(layers).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public | {"__version__"} == set(layers.__all__)


def test_every_exported_name_exists_and_is_documented() -> None:
    for name in layers.__all__:
        value = getattr(layers, name)
        if callable(value):
            assert value.__doc__, f"layers.{name} has no docstring"


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("layers").joinpath("py.typed").is_file()
