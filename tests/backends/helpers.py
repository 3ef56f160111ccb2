"""What the backend tests share: a missing service, the first error of a layer's send."""

from __future__ import annotations

import asyncio
import os
import time
from typing import NoReturn

import pytest

import layers

#: In CI every service must be present: a missing one fails the test instead of skipping it.
REQUIRED = os.environ.get("LAYERS_TEST_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip the test whose service is missing, or fail it when services are required."""
    if REQUIRED:
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def first_send_error(url: str) -> tuple[float, layers.BackendError]:
    """The seconds a first ``send`` on a layer built from ``url`` took to fail, and its error."""

    async def attempt() -> layers.BackendError:
        layer = layers.from_url(url)
        try:
            with pytest.raises(layers.BackendError) as caught:
                await layer.send("connect.check", {"n": 1})
        finally:
            await layer.aclose()
        return caught.value

    started = time.monotonic()
    error = asyncio.run(attempt())
    return time.monotonic() - started, error
