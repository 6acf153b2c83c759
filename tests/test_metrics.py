"""The miss breakdown (hivg.train.metrics.localisation), table-driven."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hivg.train.metrics import localisation

GT = [10, 10, 30, 30]


@pytest.mark.parametrize("pred, located, acc_if_located", [
    ([10, 10, 30, 30], 1.0, 1.0),          # exact
    ([15, 15, 25, 25], 1.0, 0.0),          # right object, box a quarter of it: IoU 0.25
    ([40, 40, 60, 60], 0.0, math.nan),     # another object
    ([0, 0, 22, 22], 1.0, 0.0),            # centre (11, 11) inside, IoU 144/740
    ([12, 12, 32, 32], 1.0, 1.0),          # shifted by 2: IoU 324/476
])
def test_one_prediction(pred, located, acc_if_located):
    r = localisation(np.array([pred]), np.array([GT]))
    assert r["located"] == located
    if math.isnan(acc_if_located):
        assert math.isnan(r["acc50_if_located"])
    else:
        assert r["acc50_if_located"] == acc_if_located


def test_a_batch_separates_wrong_objects_from_loose_boxes():
    pred = np.array([[10, 10, 30, 30], [15, 15, 25, 25], [40, 40, 60, 60], [41, 41, 59, 59]])
    r = localisation(pred, np.array([GT] * 4))
    assert r == {"located": 0.5, "acc50_if_located": 0.5}
