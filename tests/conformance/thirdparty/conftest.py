"""Run the channel-layers conformance suite on the example backend.

Enabling the plugin adds the suite's tests to this run; one fixture says which
layer to test. Every layer the factory makes shares one store: two layers act as
two processes of one deployment.
"""

from typing import Any

import pytest
from layers_example import ExampleBackend, ExampleStore

from layers import ChannelLayer

pytest_plugins = ["layers.conformance_tests"]


@pytest.fixture
def layer_factory() -> Any:
    store = ExampleStore()

    def factory(**options: Any) -> ChannelLayer:
        layer = ChannelLayer(backend=ExampleBackend, **options)
        layer._backend_options = {"store": store}
        return layer

    return factory


@pytest.fixture
def conformance_known_bugs() -> dict[str, str]:
    # Declare a known bug as {"test_name": "reason"}: it then runs as strict xfail.
    return {}
