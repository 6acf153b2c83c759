"""`--dry-run` of ablate.py and sweep.py: a study's trials and their configs, printed
without Ray, data, weights or MLflow."""
from __future__ import annotations

from typing import Callable

from hivg.config import format_override
from hivg.orchestration.search_space import Study, grid_points, variant_trials
from hivg.run_folder import safe_name


def print_study_plan(study: Study, *, name: str | None = None, num_samples: int | None = None,
                     grid: bool = False, log: Callable[[str], None] = print) -> None:
    """The base (preset and the file's overrides), then every trial with its overrides vs
    that base; a TPE search prints its space and how many trials it samples."""
    log(f"study {name or study.name} ({study.kind}, {study.path}); datasets "
        f"{', '.join(study.datasets)}; seeds {', '.join(map(str, study.seeds))}")
    log(f"base: {study.base_ref}" + (" with" if study.overrides else ""))
    for key, value in study.overrides.items():
        log(f"  {format_override(key, value)}")
    if study.kind == "variants" or grid:
        trials = _trials(study)
        log(f"{len(trials)} trials (name: overrides vs the base):")
        for key, overrides in trials:
            text = " ".join(format_override(k, v) for k, v in overrides.items())
            log(f"  {safe_name(key)}: {text or '(the base)'}")
        return
    n = study.num_samples if num_samples is None else num_samples
    log(f"TPE search: {n} trials per dataset, {n * len(study.datasets)} in all "
        f"(seed {study.seeds[0]}); space:")
    for key, domain in study.space.items():
        values = domain.values if domain.values is not None else [domain.low, domain.high]
        log(f"  {key}: {domain.kind} {values}")


def _trials(study: Study) -> list[tuple[str, dict]]:
    """(trial key, overrides) as tune.py's grid runs them: variants, or every grid point."""
    if study.kind == "variants":
        return [(t.key, t.overrides) for t in variant_trials(study)]
    return [(f"grid{i:03d}/{d}/seed{study.seeds[0]}", p)
            for d in study.datasets for i, p in enumerate(grid_points(study))]
