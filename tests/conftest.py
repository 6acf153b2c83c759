"""Shared fixtures: a small synthetic benchmark, generated once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

SMALL_SYNTHETIC = {"train": 60, "val": 20, "test": 20}


@pytest.fixture(scope="session")
def synthetic_storage(tmp_path_factory) -> Path:
    """Storage root holding data/synthetic (seed 3, 60/20/20 expressions, images packed)."""
    from hivg.data.prepare import prepare_synthetic

    storage = tmp_path_factory.mktemp("synthetic-storage")
    prepare_synthetic(storage, seed=3, sizes=SMALL_SYNTHETIC, pack_images=True)
    return storage
