"""The Redis backend on a real six-node Redis Cluster: conformance, failover, resharding.

The cluster (three primaries, three replicas on loopback) is started once for the
module by the ``redis_cluster`` fixture. Tests that change it (resharding, killing
a primary) run last and leave it healthy again.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_conformance_on_a_six_node_cluster(redis_cluster, run_conformance) -> None:  # type: ignore[no-untyped-def]
    run_conformance(redis_cluster.url + "?prefix=conformance")
