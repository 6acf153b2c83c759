"""Shared fixtures: a small synthetic benchmark, generated once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests downloads: open_clip tags resolve from a cache the test fills, or fail
# at once with the one-line error (the hub's own offline switch; subprocesses inherit it).
os.environ["HF_HUB_OFFLINE"] = "1"

SMALL_SYNTHETIC = {"train": 60, "val": 20, "test": 20}


@pytest.fixture(scope="session")
def synthetic_storage(tmp_path_factory) -> Path:
    """Storage root holding data/synthetic (seed 3, 60/20/20 expressions, images packed)."""
    from hivg.data.prepare import prepare_synthetic

    storage = tmp_path_factory.mktemp("synthetic-storage")
    prepare_synthetic(storage, seed=3, sizes=SMALL_SYNTHETIC, pack_images=True)
    return storage


@pytest.fixture(scope="session")
def local_ray(tmp_path_factory):
    """One local Ray for the whole session (starting one costs 10-30 s here); more logical CPUs
    than cores so a trial driver and 2 Ray Train workers fit."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=True, _temp_dir=str(tmp_path_factory.mktemp("ray")),
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()
