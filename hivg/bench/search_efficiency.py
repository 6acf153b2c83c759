"""`benchmark.py --search-efficiency`: the space's full grid, then TPE + ASHA over the same
space once per searcher seed, into one storage. A TPE trial on a point the grid trained is
replayed from the stage cache: its epochs are reported to the searcher as they were when
trained and are counted as spent (hivg.analysis.search_efficiency), so each search is
charged what it would cost alone. Per search: trials, epochs (and % of the grid's), the point
it found (its best-val completed trial) and that point's test acc50 against the grid's pick."""
from __future__ import annotations

import json
import time
from pathlib import Path

from hivg.analysis.search_efficiency import (SearchOutcome, compare, format_comparison,
                                             read_trials)
from hivg.cli import prepare_study
from hivg.errors import UserError


def run_search_efficiency(space: str, storage: str, seeds: list[int], num_samples: int | None,
                          out: str) -> None:
    from hivg.orchestration.search_space import load_study
    from hivg.orchestration.tune import StudyOptions, run_study

    study = load_study(Path(space))
    if study.kind != "space":
        raise UserError(f"{space}: --search-efficiency needs a study with a space:, not variants")
    storage_path = Path(storage).resolve()
    study = prepare_study(study, storage_path)
    axes = list(study.space)
    start = time.time()
    grid_name = f"{study.name}-grid"
    run_study(study, storage_path, StudyOptions(name=grid_name, grid=True, mlflow=False))
    grid_s = time.time() - start
    grid = SearchOutcome("grid", read_trials(storage_path / grid_name, axes))
    searches, seconds = [], {"grid": grid_s}
    for seed in seeds:
        name = f"{study.name}-tpe-asha-seed{seed}"
        t0 = time.time()
        run_study(study, storage_path, StudyOptions(name=name, search_seed=seed, mlflow=False,
                                                    num_samples=num_samples))
        seconds[name] = time.time() - t0
        searches.append(SearchOutcome(f"TPE+ASHA seed {seed}",
                                      read_trials(storage_path / name, axes)))
    result = compare(grid, searches)
    result.update(space=space, axes=axes, seconds=seconds,
                  num_samples=num_samples or study.num_samples)
    Path(out).write_text(json.dumps(result, indent=2))
    print()
    print(format_comparison(result))
    print(f"grid wall time {grid_s:.0f}s; searches replay grid points from the stage cache, so "
          f"their wall times are not their cost (their epochs are); JSON: {out}")
