"""Paired statistics of a variant against the baseline on one dataset x split.

- pairs: the two runs of the same seed, matched by expression id (seed by seed, only seeds
  both have), concatenated over seeds.
- McNemar's exact test: the two-sided binomial test (p = 1/2) on the discordant pairs
  (baseline right / variant wrong vs the reverse), scipy.stats.binomtest; p = 1 without
  discordant pairs.
- Paired bootstrap: expressions are resampled with replacement (an expression keeps its
  pairs of every seed together), `n_boot` times with a fixed seed; the 95% interval is the
  percentile interval of the resampled accuracy differences. Since a resample only changes
  how often each expression is drawn, it is drawn exactly as multinomial counts over the
  expressions' distinct (sum of differences, pairs) values: vectorised, O(n_boot) memory.
Neither captures seed-to-seed variance beyond the seeds paired; the table's ± shows that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from hivg.run_folder import Trial

N_BOOT = 2000
LEVEL = 0.95


def mcnemar_exact(only_baseline: int, only_variant: int) -> float:
    """Two-sided exact McNemar p-value on the discordant pair counts (b, c)."""
    from scipy.stats import binomtest

    b, c = int(only_baseline), int(only_variant)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    if b + c == 0:
        return 1.0
    return float(binomtest(c, b + c, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap(baseline: np.ndarray, variant: np.ndarray,
                     groups: Optional[np.ndarray] = None, n_boot: int = N_BOOT,
                     seed: int = 0, level: float = LEVEL) -> tuple[float, float, float]:
    """(delta, low, high): accuracy of `variant` minus `baseline` over paired hit vectors and
    its percentile bootstrap interval. Resamples the `groups` (expression ids; default: each
    pair its own group) with replacement; a group keeps all its pairs."""
    a = np.asarray(baseline, dtype=np.int64)
    b = np.asarray(variant, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"expected two non-empty hit vectors of one length, got {a.shape} "
                         f"and {b.shape}")
    d = b - a
    if groups is None:
        codes = np.arange(d.size)
    else:
        _, codes = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(codes, weights=d)                      # per expression
    counts = np.bincount(codes)
    kinds, per_kind = np.unique(np.stack([sums, counts], axis=1), axis=0, return_counts=True)
    n_groups = int(counts.size)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_groups, per_kind / n_groups, size=n_boot)
    deltas = (draws @ kinds[:, 0]) / (draws @ kinds[:, 1])
    alpha = (1 - level) / 2
    low, high = np.quantile(deltas, [alpha, 1 - alpha])
    return float(d.sum() / d.size), float(low), float(high)


@dataclass
class PairedStat:
    """A variant against the baseline on one dataset x split (fractions)."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    only_baseline: int     # baseline right, variant wrong
    only_variant: int      # variant right, baseline wrong
    pairs: int
    seeds: list[int]

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def paired_hits(baseline_runs: Iterable[Trial], variant_runs: Iterable[Trial],
                split: str) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]]:
    """Hit vectors paired by expression id, seed by seed, concatenated over the seeds both
    sides have: (baseline hits, variant hits, expression ids, seeds); None without pairs."""
    by_seed = {t.seed: t for t in variant_runs}
    parts_a, parts_b, parts_id, seeds = [], [], [], []
    for base in baseline_runs:
        other = by_seed.get(base.seed)
        if other is None:
            continue
        pa, pb = base.predictions(split), other.predictions(split)
        if pa is None or pb is None:
            continue
        _, ia, ib = np.intersect1d(pa[0], pb[0], assume_unique=True, return_indices=True)
        if ia.size == 0:
            continue
        parts_a.append(pa[1][ia])
        parts_b.append(pb[1][ib])
        parts_id.append(pa[0][ia])
        seeds.append(base.seed)
    if not seeds:
        return None
    return (np.concatenate(parts_a), np.concatenate(parts_b), np.concatenate(parts_id), seeds)


def compare(baseline_runs: list[Trial], variant_runs: list[Trial], split: str,
            n_boot: int = N_BOOT, seed: int = 0) -> Optional[PairedStat]:
    paired = paired_hits(baseline_runs, variant_runs, split)
    if paired is None:
        return None
    a, b, ids, seeds = paired
    delta, low, high = paired_bootstrap(a, b, ids, n_boot=n_boot, seed=seed)
    only_baseline = int(np.sum(a & ~b))
    only_variant = int(np.sum(~a & b))
    return PairedStat(delta=delta, ci_low=low, ci_high=high,
                      p_value=mcnemar_exact(only_baseline, only_variant),
                      only_baseline=only_baseline, only_variant=only_variant, pairs=int(a.size),
                      seeds=seeds)
