"""The example backend's own tests, next to the conformance suite."""

from layers import available_backends


def test_entry_point_registers_the_backend() -> None:
    assert "example" in available_backends()
