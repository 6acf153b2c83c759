"""Reading what a search found and spent from its trial folders (hivg.analysis.
search_efficiency): trial folders written the way the trainer writes them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hivg.errors import UserError
from hivg.analysis.search_efficiency import (SearchOutcome, compare, format_comparison,
                                                  read_trials)

AXES = ["hilora.stages.stage0.lr", "model.vl_encoder.layers"]


def trial(study_dir: Path, key: str, lr: float, layers: int, vals: list[float],
          test: float | None) -> None:
    """A trial that reported len(vals) - 1 epochs (vals[0] is the stage-start evaluation);
    test None: stopped before it finished."""
    run_dir = study_dir / "trials" / key
    run_dir.mkdir(parents=True)
    config = {"model": {"vl_encoder": {"layers": layers}},
              "hilora": {"stages": [{"name": "stage0", "lr": lr, "epochs": 4}]}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"stage": "stage0", "stage_index": 0, "epoch": e, "global_epoch": e,
             "val/acc50": v} for e, v in enumerate(vals)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if test is not None:
        (run_dir / "summary.json").write_text(json.dumps({"val/acc50": max(vals),
                                                          "test/acc50": test}))


def test_epochs_are_reported_epochs_and_the_find_is_the_best_val_completed_trial(tmp_path):
    grid = tmp_path / "grid"
    trial(grid, "g0", 1e-3, 1, [0.0, 0.1, 0.2, 0.3, 0.4], test=0.38)
    trial(grid, "g1", 3e-3, 2, [0.0, 0.1, 0.1, 0.1, 0.1], test=0.12)
    trial(grid, "g2", 1e-4, 1, [0.0, 0.0, 0.1, 0.1, 0.2], test=0.22)
    search = tmp_path / "tpe"
    trial(search, "t0", 3e-3, 2, [0.0, 0.1, 0.1, 0.1, 0.1], test=0.12)
    # Stopped at epoch 1 with a higher val than any completed trial: never the find.
    trial(search, "t1", 1e-3, 3, [0.0, 0.9], test=None)
    trial(search, "t2", 1e-4, 1, [0.0, 0.0, 0.1, 0.1, 0.2], test=0.22)

    g = SearchOutcome("grid", read_trials(grid, AXES))
    s = SearchOutcome("tpe", read_trials(search, AXES))
    assert g.epochs == 12 and s.epochs == 9
    assert g.found.point == (1e-3, 1) and g.found.test == 0.38
    assert s.found.point == (1e-4, 1)

    result = compare(g, [s])
    assert result["rows"][1]["epochs_pct_of_grid"] == pytest.approx(75.0)
    assert result["rows"][1]["gap_to_grid_test"] == pytest.approx(-0.16)
    assert result["grid_best_minus_median_val"] == pytest.approx(0.2)
    assert result["target_met"] is False  # 16 points worse, 75% of the epochs
    text = format_comparison(result)
    assert "-16.0 pts" in text and "not met" in text and "75%" in text


def test_cheap_and_as_good_meets_the_target(tmp_path):
    grid = tmp_path / "grid"
    for i in range(6):
        trial(grid, f"g{i}", 1e-3 * (i + 1), 1, [0.0, 0.1, 0.1, 0.1, 0.1 + 0.05 * i],
              test=0.1 + 0.05 * i)
    search = tmp_path / "tpe"
    trial(search, "t0", 6e-3, 1, [0.0, 0.1, 0.1, 0.1, 0.35], test=0.35)
    result = compare(SearchOutcome("grid", read_trials(grid, AXES)),
                     [SearchOutcome("tpe", read_trials(search, AXES))])
    assert result["rows"][1]["epochs_pct_of_grid"] == pytest.approx(100 * 4 / 24)
    assert result["target_met"] is True


def test_a_search_with_no_completed_trial_says_so(tmp_path):
    trial(tmp_path / "s", "t0", 1e-3, 1, [0.0, 0.5], test=None)
    with pytest.raises(UserError, match="no trial completed"):
        SearchOutcome("s", read_trials(tmp_path / "s", AXES)).found
