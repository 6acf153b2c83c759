"""`ablate.py --list` / `sweep.py --list`: the studies under a storage (a folder or
s3://bucket/prefix), each with its trials finished, errored, started and pending, and the
best value of its metric so far. Read from the run folders alone: no Ray, no MLflow.

    started   has a run folder but no summary and no recorded failure: running now, or
              stopped (interrupted, or early-stopped by ASHA)
    errored   failed in the study's last invocation (results.json's failed_trials)
    pending   the trials the study file declares that have no run folder yet (a search:
              num_samples per dataset)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from hivg.analysis.study import RESULTS, STUDY_FILE
from hivg.data.splits import FIVE_DATASETS
from hivg.orchestration.search_space import DEFAULT_NUM_SAMPLES
from hivg.run_folder import (RESULT_FILES, SELECTION_METRIC, TRIALS, Trial, load_trials,
                             safe_name)


@dataclass
class StudyStatus:
    name: str
    kind: str
    metric: str
    finished: int
    errored: int
    started: int
    pending: int
    best: Optional[float]
    best_trial: Optional[str]


def declared_trials(spec: dict[str, Any]) -> tuple[Optional[set[str]], int]:
    """(the run folder names a variants study declares, or None for a search; how many
    trials it declares)."""
    datasets = spec.get("datasets")
    datasets = list(FIVE_DATASETS) if datasets == "all" else \
        ([datasets] if isinstance(datasets, str) else list(datasets or [None]))
    seeds = spec.get("seeds", [13])
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if "variants" in spec:
        names = {safe_name(f"{v}/{d}/seed{s}") for v in (spec.get("variants") or {})
                 for d in datasets for s in seeds if d is not None}
        count = len(spec.get("variants") or {}) * len(datasets) * len(seeds)
        return (names if None not in datasets else None), count
    return None, int(spec.get("num_samples") or DEFAULT_NUM_SAMPLES) * len(datasets)


def study_status(study_dir: Path) -> StudyStatus:
    spec = yaml.safe_load((study_dir / STUDY_FILE).read_text()) or {}
    results_path = study_dir / RESULTS
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    metric = spec.get("metric") or SELECTION_METRIC
    mode = spec.get("mode") or "max"
    names, declared = declared_trials(spec)
    trials = [t for t in load_trials(study_dir) if names is None or t.folder.name in names]
    failed = {safe_name(line.split(": ", 1)[0]) for line in results.get("failed_trials") or []}
    finished = [t for t in trials if t.finished]
    errored = [t for t in trials if not t.finished and t.folder.name in failed]
    started = len(trials) - len(finished) - len(errored)
    best, best_trial = _best(finished, metric, mode)
    return StudyStatus(study_dir.name, "variants" if "variants" in spec else "space", metric,
                       len(finished), len(errored), started,
                       max(declared - len(trials), 0), best, best_trial)


def _best(trials: list[Trial], metric: str, mode: str) -> tuple[Optional[float], Optional[str]]:
    scored = [(v, t.key) for t in trials if (v := t.best_value(metric, mode)) is not None]
    if not scored:
        return None, None
    value, key = (max if mode == "max" else min)(scored)
    return value, key


def list_studies(storage: Path) -> list[StudyStatus]:
    """Every study under `storage` (a folder holding study.yaml), by name."""
    if not storage.is_dir():
        return []
    return [study_status(d) for d in sorted(storage.iterdir())
            if d.is_dir() and (d / STUDY_FILE).is_file()]


def pull_study_records(remote, mirror: Path) -> int:
    """What the listing reads, from the bucket into the mirror: each study's study.yaml and
    results.json, its trials' summaries, configs, metrics and identities (files already
    there with the same size are kept). Returns how many were downloaded."""
    pulled = 0
    for rel, size in sorted(remote.sizes("").items()):
        parts = rel.split("/")
        wanted = (len(parts) == 2 and parts[1] in (STUDY_FILE, RESULTS)) or \
            (len(parts) == 4 and parts[1] == TRIALS and parts[3] in RESULT_FILES)
        local = mirror / rel
        if not wanted or (local.is_file() and local.stat().st_size == size):
            continue
        remote.download(rel, local)
        pulled += 1
    return pulled


def format_studies(statuses: list[StudyStatus], where: str) -> str:
    """One line per study, under a header."""
    if not statuses:
        return f"no studies under {where}"
    width = max(len("study"), *(len(s.name) for s in statuses))
    lines = [f"studies under {where}:",
             f"{'study':<{width}}  {'kind':<8} {'finished':>8} {'errored':>7} {'started':>7} "
             f"{'pending':>7}  best so far"]
    for s in statuses:
        best = f"{s.metric} {s.best:.4f} ({s.best_trial})" if s.best is not None else "-"
        lines.append(f"{s.name:<{width}}  {s.kind:<8} {s.finished:>8} {s.errored:>7} "
                     f"{s.started:>7} {s.pending:>7}  {best}")
    return "\n".join(lines)


def list_command(storage: str) -> int:
    """Print the studies under `storage` (a folder, or s3://bucket/prefix via its mirror)."""
    from hivg.orchestration.remote_storage import open_storage

    remote = open_storage(storage)
    if remote:
        remote.check()
        pull_study_records(remote, remote.mirror)
    local = remote.mirror if remote else Path(storage)
    print(format_studies(list_studies(local), remote.uri if remote else str(storage)))
    return 0
