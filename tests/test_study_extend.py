"""`--extend N` on a space search: N more trials on a real local Ray Tune, TPE going on from the
history its searcher saved (Tuner.restore cannot add trials; Ray issue 42221)."""
from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from hivg.errors import UserError  # noqa: E402
from hivg.orchestration.search_space import load_study  # noqa: E402
from hivg.orchestration.tune import (StudyOptions, _optuna, restore_searcher,  # noqa: E402
                                     run_study)
from hivg.run_folder import TRIALS  # noqa: E402
from test_tune import runs_of, write_study  # noqa: E402

SPACE = """
num_samples: 3
space:
  hilora.stages.stage0.lr: {loguniform: [1.0e-6, 1.0e-3]}
"""


@pytest.mark.slow
def test_extend_adds_trials_and_the_searcher_keeps_its_history(local_ray, synthetic_storage,
                                                               tmp_path):
    study = load_study(write_study(tmp_path, synthetic_storage / "data", SPACE))
    storage = tmp_path / "storage"
    uri = f"sqlite:///{storage.resolve()}/mlflow.db"
    options = StudyOptions(name="ext", workers_per_trial=0, mlflow_uri=uri, scheduler=False,
                           max_concurrent=1)
    with pytest.raises(UserError, match="--extend: study ext has no search"):
        run_study(study, storage, StudyOptions(**{**options.__dict__, "extend": 2}),
                  log=lambda _m: None)
    first = run_study(study, storage, options, log=lambda _m: None)
    trials = storage / "ext" / TRIALS
    assert len(first["trials"]) == 3
    summaries = {p.parent.name: p.read_bytes() for p in trials.glob("*/summary.json")}

    lines: list[str] = []
    more = run_study(study, storage, StudyOptions(**{**options.__dict__, "extend": 2}),
                     log=lines.append)
    assert any("2 more trials after 3" in line for line in lines), lines
    assert sorted(t["variant"] for t in more["trials"]) == [f"t00{i}" for i in range(5)]
    for name, data in summaries.items():  # the first three were not run again
        assert (trials / name / "summary.json").read_bytes() == data, name
    children = [r for r in runs_of(uri, "ext") if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 5 and all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["trial_key"] for r in children}) == 5
    # The extension's searcher holds all five: a later --extend goes on from them.
    searcher = _optuna(study, "synthetic", options)
    assert restore_searcher(searcher, storage, None, "ext", "search-synthetic.x1") == 5
