"""`benchmark.py --profile-accuracy`: the tiny model on the synthetic benchmark, one stage,
trained twice with the same seed and data, under the reference profile and then the fast one:
test acc50 of each and the difference (target: within 1 point)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from hivg.cli import with_storage_defaults
from hivg.config import load_preset
from hivg.run_folder import SELECTION_METRIC, acc50


def run_profile_accuracy(storage: str, train_samples: int, epochs: int, out: str,
                         eval_samples: int | None = None, random_init: bool = False) -> None:
    """The tiny model on the synthetic benchmark, one stage, trained twice with the same seed
    and data: profile reference, then fast; test acc50 of each and the difference."""
    import torch

    from hivg.data.manifest import list_splits
    from hivg.data.prepare import ensure_synthetic
    from hivg.orchestration.run import TrackingOptions, run_training
    from hivg.train.pretrain import resolve_weights

    storage_path = Path(storage).resolve()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = with_storage_defaults(load_preset("tiny"), storage_path).replace({
        "hilora.num_stages": 1, "data.max_train_samples": train_samples,
        # a GPU outruns one process decoding the scenes; CPU runs keep the preset's loader
        "data.num_workers": 6 if device == "cuda" else 0,
        "data.max_eval_samples": eval_samples, "hilora.stages.stage0.epochs": epochs})
    if not list_splits(base.data.data_dir, "synthetic"):
        ensure_synthetic(storage_path, seed=0, log=print)
    base = base.replace({"model.weights": None}) if random_init else \
        resolve_weights(base, storage_path, log=print)
    rows = []
    for profile in ("reference", "fast"):
        run_dir = storage_path / f"profile-{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
        summary = run_training(base.replace({"profile": profile}), storage_path, run_dir,
                               tracking=TrackingOptions(enabled=False), show_progress=False,
                               log=lambda _m: None)
        rows.append({"profile": profile, acc50("test"): summary["splits"]["test"]["acc50"],
                     acc50("val"): summary["best"][SELECTION_METRIC],
                     "wall_time_s": summary["wall_time_s"], "run_dir": str(run_dir)})
        print(f"  {profile}: test acc50 {rows[-1][acc50('test')]:.4f} "
              f"({rows[-1]['wall_time_s']:.0f}s)", flush=True)
    delta = rows[1][acc50("test")] - rows[0][acc50("test")]
    result = {"device": device, "train_samples": train_samples, "epochs": epochs,
              "seed": base.seed, "rows": rows, "fast_minus_reference": delta,
              "within_1_point": abs(delta) <= 0.01}
    Path(out).write_text(json.dumps(result, indent=2))
    print(f"{'profile':<10} {'val acc50':>9} {'test acc50':>10} {'wall s':>7}")
    for r in rows:
        print(f"{r['profile']:<10} {r[acc50('val')]:9.4f} {r[acc50('test')]:10.4f} "
              f"{r['wall_time_s']:7.0f}")
    print(f"fast - reference: {100 * delta:+.1f} points of test acc50 on {device} "
          f"(target: within 1 point: {'met' if abs(delta) <= 0.01 else 'not met'}); JSON: {out}")
