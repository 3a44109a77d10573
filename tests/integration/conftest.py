"""One embedded local Ray for the whole session (Ray start-up costs seconds), shared by every job run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    from orchestrator.launcher import connect_ray

    connect_ray()
    yield
    import ray

    ray.shutdown()
