"""`benchmark.py --trial-overhead`: a variants study (default the embedded demo) run twice
through the study path, with Tune's actor reuse off and on, into two storages (the stage
cache is per storage, so neither run reuses the other's stages); the prepared data is shared.

Per-trial overhead is measured as docs/results.md measured the demo's ~7%: the time inside
Tune against the trials' own run wall times (summary.json), i.e. per trial
`concurrent x Tune wall / trials - mean run wall`, and its share of a trial's wall time
(overhead + run). A run's wall is its training and its final evaluation (`wall_time_s +
final_eval_s`); the ~7% counted that evaluation, which runs after the last report, as
overhead. `--short` trains a shortened copy (300 training and 100 val/test
expressions, one epoch per stage, random init) that fits a 2-core machine in minutes."""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

SHORT = {"data.max_train_samples": 300, "data.max_eval_samples": 100,
         "hilora.stages.stage0.epochs": 1, "hilora.stages.stage1.epochs": 1,
         "model.weights": "random"}


def _short_copy(study_path: Path, folder: Path, data_dir: Path | None) -> Path:
    spec = yaml.safe_load(study_path.read_text())
    spec["overrides"] = {**(spec.get("overrides") or {}), **SHORT}
    if data_dir is not None:
        spec["overrides"]["data.data_dir"] = str(data_dir)
    path = folder / f"{study_path.stem}-short.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _one(study_path: Path, storage: Path, short: bool, data_dir: Path | None,
         reuse: bool, concurrent: int) -> dict[str, Any]:
    from hivg.cli import prepare_study
    from hivg.orchestration.search_space import load_study
    from hivg.orchestration.tune import StudyOptions, run_study
    from hivg.run_folder import load_trials

    storage.mkdir(parents=True, exist_ok=True)
    path = _short_copy(study_path, storage, data_dir) if short else study_path
    study, _plan = prepare_study(load_study(path), storage, log=lambda _m: None)
    options = StudyOptions(max_concurrent=concurrent, reuse_actors=reuse)
    t = time.perf_counter()
    results = run_study(study, storage, options, log=lambda _m: None)
    wall = time.perf_counter() - t
    name = results["study"]
    # A trial's own work: training (wall_time_s) and its final evaluation (final_eval_s,
    # after the last report; before 2026-12-05 it counted as overhead)
    runs = [t.summary["wall_time_s"] + t.summary.get("final_eval_s", 0.0)
            for t in load_trials(storage / name) if t.summary]
    tune_wall = results["wall_time_s"]
    per_trial = concurrent * tune_wall / len(runs) - statistics.mean(runs)
    return {"reuse_actors": reuse, "trials": len(runs), "concurrent": concurrent,
            "tune_wall_s": tune_wall, "study_wall_s": wall,
            "mean_run_wall_s": statistics.mean(runs), "overhead_per_trial_s": per_trial,
            "overhead_share": per_trial / (per_trial + statistics.mean(runs)),
            "data_dir": str(study.base.data.data_dir)}


def run_trial_overhead(study_path: str, short: bool, out: str, concurrent: int = 2
                       ) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="hivg-trial-overhead-"))
    print(f"{study_path}{' (shortened)' if short else ''}: actor reuse off, then on; "
          f"{concurrent} trials at once; storage {root}", flush=True)
    off = _one(Path(study_path), root / "reuse-off", short, None, False, concurrent)
    on = _one(Path(study_path), root / "reuse-on", short, Path(off["data_dir"]), True,
              concurrent)
    record = {"study": study_path, "short": short, "date": time.strftime("%Y-%m-%d"),
              "reuse_off": off, "reuse_on": on}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=2))
    print()
    print("| actor reuse | trials | Tune wall (s) | mean run wall (s) | overhead per trial (s) "
          "| share of a trial |")
    print("|---|---|---|---|---|---|")
    for r in (off, on):
        print(f"| {'on' if r['reuse_actors'] else 'off'} | {r['trials']} | "
              f"{r['tune_wall_s']:.0f} | {r['mean_run_wall_s']:.1f} | "
              f"{r['overhead_per_trial_s']:.1f} | {100 * r['overhead_share']:.1f}% |")
    print(f"\nJSON: {out} (target: <= 5% of a trial's wall time)")
    return record
