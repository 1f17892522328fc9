"""Fixtures of the modelserver tests: one local Ray cluster for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import require_module


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A :class:`modelserver.cluster.RayCluster` on a local cluster of 2 CPUs, started once and shut
    down at the end (no Ray: a skip, a failure under CI=true)."""
    ray: Any = require_module("ray", "ray is not installed (pip install 'cortexloop[cluster]')")
    from modelserver.cluster import RayCluster

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield RayCluster.connect("auto")
    finally:
        ray.shutdown()
