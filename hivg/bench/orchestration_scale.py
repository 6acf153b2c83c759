"""`benchmark.py --orchestration-scale`: N no-op trials (each reports R results and does
nothing else), up to C at a time on a local Ray, run twice in one invocation:

- through the project's own study path (`hivg.orchestration.tune.run_study`): its TPE searcher
  and ASHA scheduler, the MLflow parent and child runs (SQLite beside the runs), run folders,
  results.json and table.md; only `fit` is swapped for `noop_fit` (StudyOptions.trial_fit);
- as a bare Ray Tune run, the anchor: a function trainable that only reports, no searcher or
  scheduler, `reuse_actors=True` (the fastest bare Tune).

Measured: the driver's wall time per reported result and its ratio to bare Tune's; the driver
process's RSS high-water per path (sampled every 0.1 s); the time each trial spends inside
MLflow calls on its own critical path (the child run's metrics inside the trial body, and
from the body's end to the run's end: artifacts and termination); the time to write the
table and the full report for the N trials; a cProfile of the project path's driver (its top
entries are saved beside the JSON: the first bottleneck)."""
from __future__ import annotations

import cProfile
import functools
import io
import json
import pstats
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

NOOP_VALUE = 0.5  # every trial reports the same value: ASHA never stops one (ties continue)

STUDY_YAML = """\
name: {name}
base: tiny
datasets: [synthetic]
metric: val/acc50
mode: max
seeds: [13]
overrides: {{device: cpu}}   # a no-op trial has no use for a GPU (nor for torch)
num_samples: {trials}
resources: {{workers: 0, cpus_per_worker: 1, gpus_per_worker: 0}}
scheduler: {{type: asha, grace_period: 1, reduction_factor: 3, max_t: {results}}}
space:
  hilora.stages.stage0.lr: {{loguniform: [1.0e-5, 1.0e-2]}}
"""


def noop_fit(config, run_dir, *, hooks, tracker, resume, show_progress, log, stage_cache,
             results: int = 10) -> dict[str, Any]:
    """`fit`'s contract without training: the config logged as params, `results` epochs
    recorded (metrics.jsonl, MLflow, Tune), summary.json written. The MLflow time on the
    trial's path is kept in the summary (bench.*) for the benchmark to read."""
    from hivg.run_folder import RunFolder, acc50, flatten, identity_tree
    from hivg.train.metrics import MetricsLog

    started = time.time()
    folder = RunFolder(Path(run_dir))
    metrics = MetricsLog(folder.metrics_path)
    t = time.perf_counter()
    tracker.log_params(flatten(identity_tree(config.to_dict())))  # as fit logs them
    params_s = time.perf_counter() - t
    metrics_s = 0.0
    for epoch in range(1, results + 1):
        record = {"val/acc50": NOOP_VALUE, "train/loss": 1.0 / epoch, "time/epoch_s": 0.0}
        metrics.append({"stage": "stage0", "stage_index": 0, "epoch": epoch,
                        "global_epoch": epoch, **record})
        t = time.perf_counter()
        tracker.log_metrics(record, step=epoch)
        metrics_s += time.perf_counter() - t
        hooks.report({**record, "stage_index": 0, "epoch": epoch, "global_epoch": epoch}, None)
    splits = {s: {"acc50": NOOP_VALUE, "count": 1, "by_type": {}}
              for s in ("val", "test")}
    summary = {"name": folder.name, **{acc50(s): v["acc50"] for s, v in splits.items()},
               "splits": splits, "best": {"stage": "stage0", "stage_index": 0, "epoch": results,
                                          "val/acc50": NOOP_VALUE},
               "epochs_trained": results, "wall_time_s": time.time() - started,
               "dataset": config.data.dataset, "world_size": 1, "device": "cpu",
               "bench": {"params_s": params_s, "metrics_s": metrics_s,
                         "body_end": time.time()}}
    folder.write_summary(summary)
    return summary


def _bare_trial(config: dict[str, Any], results: int = 10) -> None:
    from ray import tune

    for epoch in range(1, results + 1):
        tune.report({"val/acc50": NOOP_VALUE, "global_epoch": epoch})


class _PeakRss:
    """The driver process's RSS high-water over a block, sampled every `every` s."""

    def __init__(self, every: float = 0.1) -> None:
        import psutil

        self.proc, self.every, self.peak = psutil.Process(), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.every)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    with _PeakRss() as rss:
        t = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t
    return out, wall, rss.peak


def run_project_path(storage: Path, trials: int, concurrent: int, results: int,
                     profile: cProfile.Profile | None = None,
                     reuse_actors: bool = True) -> dict[str, Any]:
    """The N no-op trials through run_study (searcher, scheduler, MLflow, run folders, table)."""
    from hivg.orchestration.search_space import load_study
    from hivg.orchestration.tune import StudyOptions, run_study

    name = "scale"
    storage.mkdir(parents=True, exist_ok=True)
    path = storage / "scale.yaml"
    path.write_text(STUDY_YAML.format(name=name, trials=trials, results=results))
    study = load_study(path)
    options = StudyOptions(max_concurrent=concurrent, reuse_actors=reuse_actors,
                           trial_fit=functools.partial(noop_fit, results=results))

    def go():
        if profile is None:
            return run_study(study, storage, options, log=lambda _m: None)
        profile.enable()
        try:
            return run_study(study, storage, options, log=lambda _m: None)
        finally:
            profile.disable()

    out, wall, peak = _timed(go)
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, "finished": len(out["trials"]),
            "failed": len(out["failed_trials"]), "mlflow": _mlflow_on_trial_path(storage, name),
            **_table_and_report(storage, name)}


def _mlflow_on_trial_path(storage: Path, name: str) -> dict[str, Any]:
    """Per trial: seconds inside the child run's params and metrics calls (in the body), and
    from the body's end to the MLflow run's end (artifacts + termination)."""
    from mlflow import MlflowClient

    from hivg.run_folder import load_trials, safe_name

    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    ends = {safe_name(r.data.tags["trial_key"]): r.info.end_time / 1000
            for r in client.search_runs([exp.experiment_id], max_results=50000)
            if r.data.tags.get("trial_key") and r.info.end_time}
    inside, after = [], []
    for t in load_trials(storage / name):
        bench = (t.summary or {}).get("bench")
        if not bench:
            continue
        inside.append(bench["params_s"] + bench["metrics_s"])
        if t.folder.name in ends:
            after.append(ends[t.folder.name] - bench["body_end"])
    return {"runs_ended": len(ends), "in_body_s_median": _median(inside),
            "in_body_s_max": max(inside, default=None),
            "after_body_s_median": _median(after), "after_body_s_max": max(after, default=None)}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _table_and_report(storage: Path, name: str) -> dict[str, float]:
    from hivg.analysis import write_report
    from hivg.orchestration.tune import study_table

    t = time.perf_counter()
    study_table(storage, name)
    table_s = time.perf_counter() - t
    t = time.perf_counter()
    write_report(storage, name)
    return {"table_s": table_s, "report_s": time.perf_counter() - t}


def run_bare_tune(storage: Path, trials: int, concurrent: int, results: int) -> dict[str, Any]:
    from ray import tune

    def go():
        return tune.Tuner(
            functools.partial(_bare_trial, results=results),
            param_space={"lr": tune.loguniform(1e-5, 1e-2)},
            tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=concurrent,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name="bare", storage_path=str(storage / "tune"),
                                      verbose=0),
        ).fit()

    grid, wall, peak = _timed(go)
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20,
            "finished": sum(1 for r in grid if r.error is None),
            "failed": sum(1 for r in grid if r.error is not None)}


def run_orchestration_scale(trials: int, concurrent: int, results: int, out: str,
                            profile_top: int = 25, storage: str | None = None) -> dict[str, Any]:
    """`storage`: where both paths' runs go (default: a new temporary folder)."""
    import ray

    storage = Path(storage).resolve() if storage else Path(tempfile.mkdtemp(prefix="hivg-scale-"))
    # One logical CPU per concurrent no-op trial (and the driver): the trials do no work.
    ray.init(num_cpus=concurrent + 1, include_dashboard=False, log_to_driver=False)
    try:
        print(f"bare Ray Tune: {trials} no-op trials x {results} results, {concurrent} at once",
              flush=True)
        bare = run_bare_tune(storage / "bare", trials, concurrent, results)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"bare_tune": bare, "partial": True}, indent=2))
        print("project study path: the same trials through run_study", flush=True)
        profile = cProfile.Profile()
        project = run_project_path(storage / "project", trials, concurrent, results, profile)
    finally:
        ray.shutdown()
    n = trials * results
    for row in (bare, project):
        row["per_result_ms"] = 1000 * row["wall_s"] / n
    ratio = project["per_result_ms"] / bare["per_result_ms"]
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    profile_path = out_path.with_suffix(".profile.txt")
    profile_path.write_text(_profile_top(profile, profile_top))
    record = {"trials": trials, "max_concurrent": concurrent, "results_per_trial": results,
              "bare_tune": bare, "project": project, "ratio_project_to_bare": ratio,
              "target_ratio": 1.2, "report_target_s": 60.0, "profile": str(profile_path),
              "date": time.strftime("%Y-%m-%d"), "storage": str(storage)}
    out_path.write_text(json.dumps(record, indent=2))
    _print(record)
    print(f"\nJSON: {out_path}; driver profile (cProfile, cumulative): {profile_path}")
    return record


def _profile_top(profile: cProfile.Profile, top: int) -> str:
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()


def _print(r: dict[str, Any]) -> None:
    b, p = r["bare_tune"], r["project"]
    m = p["mlflow"]
    print()
    print(f"{r['trials']} no-op trials x {r['results_per_trial']} results, "
          f"{r['max_concurrent']} at once")
    print("| path | wall (s) | per result (ms) | vs bare | driver peak RSS (MiB) | finished |")
    print("|---|---|---|---|---|---|")
    print(f"| bare Ray Tune (reuse_actors) | {b['wall_s']:.1f} | {b['per_result_ms']:.2f} | "
          f"1.00x | {b['peak_rss_mb']:.0f} | {b['finished']} |")
    print(f"| project study path | {p['wall_s']:.1f} | {p['per_result_ms']:.2f} | "
          f"{r['ratio_project_to_bare']:.2f}x | {p['peak_rss_mb']:.0f} | {p['finished']} |")
    print(f"MLflow on a trial's path: {_s(m['in_body_s_median'])} median "
          f"({_s(m['in_body_s_max'])} max) in the body's params + metrics calls; "
          f"{_s(m['after_body_s_median'])} median ({_s(m['after_body_s_max'])} max) from the "
          f"body's end to the run's end (artifacts + end)")
    print(f"table for {p['finished']} trials: {p['table_s']:.1f} s; report: "
          f"{p['report_s']:.1f} s (target <= 60)")


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"
