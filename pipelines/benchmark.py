"""Benchmarks of the HiVG model.

    python pipelines/benchmark.py --model-stats              # HiVG-B/16 and HiVG-L/14
    python pipelines/benchmark.py --model-stats --presets tiny hivg-b16

--model-stats: total and trainable parameters per HiLoRA stage (paper and released policies)
and the forward cost of one image as MACs and FLOPs (torch's flop counter: FLOPs = 2 x MACs),
beside the paper's 38.7 "GFLOPs" for HiVG-B. Random init, batch 1, no grad, CPU.

    python pipelines/benchmark.py --orchestration-overhead   # plain local run vs Ray Train

--orchestration-overhead: the tiny model on a small synthetic set, trained the same way as
a plain local run and on one Ray Train worker with the same number of compute threads, in
one invocation: per-epoch times side by side and their ratio, and the start-up from the
call to the first training step, broken down (Ray init, controller + worker start, imports,
model build + data, stage-start evaluation).

    python pipelines/benchmark.py --training-step            # tiny on CPU, hivg-b16 on CUDA
    python pipelines/benchmark.py --training-step --preset hivg-b16 --batch 64 --out b16.json

--training-step: one optimizer step (forward, loss, backward, AdamW) on random inputs at
stage 0 and at the last HiLoRA stage, under both profiles (hivg.train.profile: reference =
fp32, TF32 off, eager attention, unfused AdamW; fast = bf16 autocast, SDPA, fused AdamW on
CUDA, pinned non-blocking copies). Per row: images/s, step ms (median of the timed steps),
peak memory (CUDA: max_memory_allocated per row; CPU: the process's RSS high-water mark from
getrusage, which only grows across rows), achieved TFLOP/s (torch's flop counter on one
step / median step time) and, on CUDA only, MFU against a bf16 matmul peak measured in the
same run (no MFU on CPU). Random init; a table last and JSON written (--out).

    python pipelines/benchmark.py --search-efficiency        # grid vs TPE + ASHA, 3 seeds
    python pipelines/benchmark.py --search-efficiency --space search_spaces/x.yaml --seeds 0 1 2

--search-efficiency: the space's full grid, then TPE + ASHA over the same space once per
searcher seed, into one storage (--storage, default runs/search-efficiency). A TPE trial on a
point the grid trained is replayed from the stage cache: its epochs are reported to the
searcher as they were when trained and are counted as spent (hivg.orchestration.
search_efficiency), so each search is charged what it would cost alone. Per search: trials,
epochs (and % of the grid's), the point it found (its best-val completed trial) and that
point's test acc50 against the grid's pick. Table printed, JSON written (--out).
"""
from __future__ import annotations

import argparse
import math
import time

from hivg.cli import run_main
from hivg.config import load_preset, preset_names
from hivg.errors import UserError

PAPER_GFLOPS = {"hivg-b16": 38.7}
DEFAULT_OUT = "benchmark-training.json"
SEARCH_STORAGE = "runs/search-efficiency"  # the paper's table; very likely multiply-adds


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--model-stats", action="store_true",
                      help="parameters per stage and forward MACs/FLOPs per image")
    mode.add_argument("--orchestration-overhead", action="store_true",
                      help="per-epoch time and start-up: local run vs one Ray Train worker")
    mode.add_argument("--training-step", action="store_true",
                      help="training step at stage 0 and the last stage, reference vs fast")
    mode.add_argument("--profile-accuracy", action="store_true",
                      help="the tiny model trained under reference and fast, same seed: test acc50")
    mode.add_argument("--search-efficiency", action="store_true",
                      help="the full grid vs TPE + ASHA over the same space (--space)")
    p.add_argument("--preset", choices=preset_names(), default=None,
                   help="training-step model (default: hivg-b16 on CUDA, tiny on CPU)")
    p.add_argument("--batch", type=int, default=None,
                   help="training-step batch (default: 64 on CUDA, 8 on CPU)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per row")
    p.add_argument("--inference-batch", type=int, default=None,
                   help="training-step run: batched inference size (default 256 CUDA, 32 CPU)")
    p.add_argument("--pipeline-images", type=int, default=None,
                   help="training-step run: JPEGs in the input-pipeline test (512 CUDA, 128 CPU)")
    p.add_argument("--compile", action="store_true",
                   help="training-step run: torch.compile the model for the inference rows "
                        "(mode reduce-overhead, i.e. CUDA graphs, on a GPU)")
    p.add_argument("--inference-only", action="store_true",
                   help="training-step run: only the inference rows (e.g. a second, --compile "
                        "pass without re-timing the training steps)")
    p.add_argument("--space", default="search_spaces/search_efficiency.yaml",
                   help="study file with a space: (search efficiency)")
    p.add_argument("--storage", default=SEARCH_STORAGE,
                   help="storage for the search-efficiency studies (default) or the "
                        "profile-accuracy runs (default runs/profile-accuracy)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="TPE searcher seeds (search efficiency)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="TPE trials per seed (default: the study file's num_samples)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="JSON output (default: ./benchmark-training.json; with "
                        "--search-efficiency ./search-efficiency.json)")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs per run (overhead and profile-accuracy benchmarks)")
    p.add_argument("--eval-samples", type=int, default=None,
                   help="profile accuracy: val/test expressions used (default: all)")
    p.add_argument("--random-init", action="store_true",
                   help="profile accuracy: random CLIP weights instead of the tiny pre-training")
    p.add_argument("--threads", type=int, default=2, help="compute threads in both runs")
    p.add_argument("--address", default=None,
                   help="orchestration overhead: join this running Ray cluster (auto or "
                        "HOST:PORT, the `ray up` case) instead of starting a local one")
    p.add_argument("--train-samples", type=int, default=1200,
                   help="training expressions (overhead and profile-accuracy benchmarks)")
    p.add_argument("--presets", nargs="+", default=["hivg-b16", "hivg-l14"], choices=preset_names(),
                   help="model presets (default: hivg-b16 hivg-l14)")
    return p.parse_args()


def run_model_stats(presets: list[str]) -> None:
    from hivg.model.stats import format_stats, model_stats

    stats = []
    for name in presets:
        t0 = time.perf_counter()
        stats.append(model_stats(load_preset(name), name))
        print(f"{name}: counted in {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print(format_stats(stats, PAPER_GFLOPS))


class _MarkHooks:
    """Local TrainHooks that timestamp the start-up milestones."""

    def __new__(cls, marks: dict):
        from hivg.train.hooks import TrainHooks

        class Hooks(TrainHooks):
            def mark(self, event: str) -> None:
                marks.setdefault(event, time.time())

        return Hooks()


def run_orchestration_overhead(epochs: int, threads: int, train_samples: int,
                               address: str | None = None) -> None:
    import json
    import statistics
    import tempfile
    from pathlib import Path

    import torch

    from hivg.data.prepare import prepare_synthetic
    from hivg.orchestration import ray_train
    from hivg.orchestration.run import prepare_run_folder
    from hivg.train.fit import fit

    storage = Path(tempfile.mkdtemp(prefix="hivg-overhead-"))
    prepare_synthetic(storage, seed=0, sizes={"train": train_samples, "val": 200, "test": 200})
    stages = load_preset("tiny").hilora.stages
    config = load_preset("tiny").replace({
        "model.weights": None, "data.data_dir": str(storage / "data"), "data.num_workers": 0,
        f"hilora.stages.{stages[0].name}.epochs": epochs,
        **{f"hilora.stages.{s.name}.epochs": 0 for s in stages[1:]}})

    def epoch_times(run_dir: Path) -> list[float]:
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["time/epoch_s"] for r in rows if r["epoch"] > 0]

    torch.set_num_threads(threads)
    print(f"local run: {epochs} epochs of {train_samples} samples, {threads} threads", flush=True)
    marks: dict = {}
    local_dir = storage / "local"
    t_call = time.time()
    fit(config, local_dir, hooks=_MarkHooks(marks), log=lambda _m: None, show_progress=False)
    local = epoch_times(local_dir)

    print(f"Ray Train: 1 worker x {threads} CPUs (threads), same config", flush=True)
    t0 = time.time()
    ray_train.connect(address, num_cpus=None if address else threads + 1, log=lambda _m: None)
    t_ray = time.time()
    ray_dir = storage / "ray"
    prepare_run_folder(config, ray_dir, resume=False)
    timing = storage / "ray-marks.jsonl"
    t_fit = time.time()
    ray_train.train_on_ray(config, ray_dir, ray_train.RayResources(1, 0.0, float(threads)),
                           timing=str(timing), ray_storage=storage / ".ray-train")
    ray_marks: dict = {}
    for line in timing.read_text().splitlines():
        m = json.loads(line)
        ray_marks.setdefault(m["event"], m["time"])
    remote = epoch_times(ray_dir)

    med_local, med_ray = statistics.median(local), statistics.median(remote)
    print()
    print("per-epoch time (s)      " + "  ".join(f"e{i + 1}" for i in range(epochs)) + "   median")
    print(f"  local ({threads} threads)     " + "  ".join(f"{x:4.1f}" for x in local)
          + f"   {med_local:.2f}")
    print("  Ray Train (1 worker)  " + "  ".join(f"{x:4.1f}" for x in remote)
          + f"   {med_ray:.2f}")
    print(f"  ratio Ray / local: {med_ray / med_local:.3f}  (target <= 1.05)")
    print()
    print("start-up, seconds to the first training step")
    print(f"  local: fit() -> setup done {marks['setup_done'] - t_call:.1f}, "
          f"-> first step {marks['first_epoch'] - t_call:.1f}")
    parts = [("Ray init" if not address else f"join cluster {address}", t_ray - t0),
             ("controller + worker start", ray_marks["worker_started"] - t_fit),
             ("imports in the worker", ray_marks["imports_done"] - ray_marks["worker_started"]),
             ("model build + data", ray_marks["setup_done"] - ray_marks["imports_done"]),
             ("stage-start evaluation", ray_marks["first_epoch"] - ray_marks["setup_done"])]
    for name, value in parts:
        print(f"  Ray: {name:<28} {value:5.1f}")
    total = ray_marks["first_epoch"] - t0
    fixed = total - (marks["first_epoch"] - t_call)
    print(f"  Ray: total from connect to first step {total:.1f}; "
          f"beyond the local run's start-up {fixed:.1f} (target <= 12)")


def _bf16_matmul_peak_tflops(device) -> float:
    """Achieved bf16 TFLOP/s of a large square matmul on this GPU (the MFU denominator)."""
    import torch

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    reps, best = 20, float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * n ** 3 / best / 1e12


def _training_step_row(config, stage_index: int, profile_name: str, batch: int, steps: int,
                       warmup: int, device, peak_tflops):
    import statistics

    import torch

    import _bench_parts as parts
    from hivg.losses import build_criterion
    from hivg.model.build import build_model
    from hivg.model.lora import apply_stage
    from hivg.train.loop import autocast_context
    from hivg.train.optim import build_optimizer
    from hivg.train.profile import apply_profile, resolve_profile

    cfg = config.replace({"profile": profile_name})
    prof = resolve_profile(cfg, device.type)
    torch.manual_seed(0)
    model = build_model(apply_profile(cfg, device.type))
    apply_stage(model, cfg.hilora, stage_index)
    model.to(device).train()
    criterion = build_criterion(cfg.loss).to(device)
    optimizer = build_optimizer(model, 1e-4, cfg.optim.weight_decay, fused=prof.fused_adamw)
    amp = prof.torch_amp_dtype

    g = torch.Generator().manual_seed(0)
    host = parts.random_batch(cfg, batch, g)
    host["box"] = torch.rand(batch, 4, generator=g) * 0.4 + 0.3
    if prof.pin_memory:
        host = {k: v.pin_memory() for k, v in host.items()}

    def step():
        b = {k: v.to(device, non_blocking=prof.pin_memory) for k, v in host.items()}
        with autocast_context(device, amp):
            out = model(b["image"], b["pad_mask"], b["tokens"])
            loss = criterion(out, b)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = parts.timed(step, steps, warmup, parts.sync_for(device))
    flops = parts.count_flops(step)
    step_s = statistics.median(times)
    tflops = flops / step_s / 1e12
    stage = cfg.hilora.stages[stage_index]
    return {"profile": profile_name, "stage": stage.name, "stage_index": stage_index,
            "batch": batch, "images_per_s": batch / step_s, "step_ms": step_s * 1e3,
            "peak_memory_mb": parts.peak_memory_mb(device), "gflop_per_step": flops / 1e9,
            "tflops": tflops, "mfu": tflops / peak_tflops if peak_tflops else None,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "settings": {"amp_dtype": prof.amp_dtype or "fp32", "attention": prof.attention,
                         "fused_adamw": prof.fused_adamw, "tf32": prof.tf32,
                         "pin_memory": prof.pin_memory, "find_unused": prof.find_unused}}


def _print_training_table(rows: list[dict], by: dict) -> None:
    print(f"{'stage':<22} {'profile':<10} {'settings':<28} {'images/s':>9} {'step ms':>9} "
          f"{'peak MB':>9} {'TFLOP/s':>8} {'MFU':>6} {'fast/ref':>8}")
    for r in rows:
        s = r["settings"]
        settings = f"{s['amp_dtype']},{s['attention']}{',fusedAdamW' if s['fused_adamw'] else ''}"
        ratio = r["images_per_s"] / by[(r["stage"], "reference")]["images_per_s"]
        mfu = f"{r['mfu'] * 100:5.1f}%" if r["mfu"] is not None else "   n/a"
        print(f"{r['stage']:<22} {r['profile']:<10} {settings:<28} {r['images_per_s']:9.1f} "
              f"{r['step_ms']:9.1f} {r['peak_memory_mb']:9.0f} {r['tflops']:8.4f} {mfu:>6} "
              f"{ratio:7.2f}x")
    print()


def run_training_step(preset: str | None, batch: int | None, steps: int, warmup: int,
                      out: str, inference_batch: int | None = None,
                      pipeline_images: int | None = None, compile_model: bool = False,
                      inference_only: bool = False) -> None:
    import json
    import platform
    from datetime import datetime, timezone

    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    preset = preset or ("hivg-b16" if cuda else "tiny")
    batch = batch or (64 if cuda else 8)
    config = load_preset(preset).replace({"model.weights": None})
    last = len(config.hilora.stages) - 1
    card = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    peak = _bf16_matmul_peak_tflops(device) if cuda else None
    print(f"training step: {preset}, batch {batch}, {warmup} warm-up + {steps} timed steps, "
          f"{device.type} ({card}, {torch.get_num_threads()} threads)", flush=True)
    if peak:
        print(f"measured bf16 matmul peak: {peak:.1f} TFLOP/s", flush=True)
    rows = []
    for k in sorted({0, last}) if not inference_only else ():
        for name in ("reference", "fast"):
            t0 = time.perf_counter()
            rows.append(_training_step_row(config, k, name, batch, steps, warmup, device, peak))
            print(f"  {name} {rows[-1]['stage']}: {time.perf_counter() - t0:.1f} s", flush=True)
    import _bench_parts as parts

    for name in ("reference", "fast") if not inference_only else ():
        t0 = time.perf_counter()
        rows.append(parts.backbone_step_row(config, name, batch, steps, warmup, device, peak))
        print(f"  {name} bare backbone: {time.perf_counter() - t0:.1f} s", flush=True)
    inference_batch = inference_batch or (256 if cuda else 32)
    t0 = time.perf_counter()
    inference = parts.inference_rows(config, inference_batch, steps, warmup, device, peak,
                                     compile_model)
    print(f"  inference: {time.perf_counter() - t0:.1f} s", flush=True)
    pipeline = []
    if not inference_only:
        t0 = time.perf_counter()
        pipeline = parts.input_pipeline_rows(config, pipeline_images or (512 if cuda else 128))
        print(f"  input pipeline: {time.perf_counter() - t0:.1f} s", flush=True)
    result = {"benchmark": "training-step", "preset": preset, "device": device.type,
              "card": card, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "batch": batch, "steps": steps, "warmup": warmup,
              "bf16_matmul_peak_tflops": peak, "rows": rows, "inference": inference,
              "input_pipeline": pipeline,
              "notes": ("peak_memory_mb: " + ("torch.cuda.max_memory_allocated per row" if cuda
                        else "process RSS high-water mark (getrusage), cumulative over rows")
                        + "; mfu: " + ("vs the measured bf16 matmul peak" if cuda
                                       else "not measured on CPU"))}
    by = {(r["stage"], r["profile"]): r for r in rows}
    print()
    if rows:
        _print_training_table(rows, by)
    print(f"inference, auto profile ({inference[0]['settings']['amp_dtype']}, "
          f"{inference[0]['settings']['attention']}"
          f"{', compiled' if compile_model else ''}):")
    print(f"{'model':<12} {'mode':<38} {'median ms':>10} {'p99 ms':>8} {'images/s':>9} {'MFU':>6}")
    for r in inference:
        mfu = f"{r['mfu'] * 100:5.1f}%" if r.get("mfu") is not None else "   n/a"
        print(f"{r['model']:<12} {r['mode']:<38} {r['median_ms']:10.2f} {r['p99_ms']:8.2f} "
              f"{r['images_per_s']:9.1f} {mfu:>6}")
    print()
    if inference_only:
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"JSON: {out}")
        return
    fast_last = by[(config.hilora.stages[last].name, "fast")]["images_per_s"]
    print(f"input pipeline (decode + letterbox + training augmentations, 640x480 JPEGs, "
          f"canvas {config.model.image_size}):")
    for r in pipeline:
        need = math.ceil(fast_last / r["images_per_s_per_worker"])
        r["workers_for_fast_last_stage"] = need
        print(f"  {r['layout']:<18} {r['images_per_s_per_worker']:8.1f} images/s per worker; "
              f"the fast last-stage step ({fast_last:.0f} images/s) needs {need} worker(s)")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"JSON: {out}" + ("" if cuda else "  (CPU: no MFU; peak MB = process RSS high-water)"))


def main() -> int:
    args = parse_args()
    if args.training_step:
        run_training_step(args.preset, args.batch, args.steps, args.warmup, args.out,
                          args.inference_batch, args.pipeline_images, args.compile,
                          args.inference_only)
    if args.model_stats:
        run_model_stats(args.presets)
    if args.orchestration_overhead:
        run_orchestration_overhead(args.epochs, args.threads, args.train_samples, args.address)
    if args.profile_accuracy:
        run_profile_accuracy(args.storage if args.storage != SEARCH_STORAGE else
                             "runs/profile-accuracy", args.train_samples, args.epochs,
                             args.out if args.out != DEFAULT_OUT else "profile-accuracy.json",
                             args.eval_samples, args.random_init)
    if args.search_efficiency:
        run_search_efficiency(args.space, args.storage, args.seeds, args.num_samples,
                              args.out if args.out != DEFAULT_OUT else "search-efficiency.json")
    return 0


def run_profile_accuracy(storage: str, train_samples: int, epochs: int, out: str,
                         eval_samples: int | None = None, random_init: bool = False) -> None:
    """The tiny model on the synthetic benchmark, one stage, trained twice with the same seed
    and data: profile reference, then fast; test acc50 of each and the difference."""
    import json
    from pathlib import Path

    import torch

    from hivg.cli import with_storage_defaults
    from hivg.data.manifest import list_splits
    from hivg.data.prepare import ensure_synthetic
    from hivg.orchestration.run import TrackingOptions, run_training
    from hivg.orchestration.search_space import apply_study_overrides
    from hivg.train.pretrain import resolve_weights

    storage_path = Path(storage).resolve()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = apply_study_overrides(with_storage_defaults(load_preset("tiny"), storage_path), {
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
        rows.append({"profile": profile, "test/acc50": summary["splits"]["test"]["acc50"],
                     "val/acc50": summary["best"]["val/acc50"],
                     "wall_time_s": summary["wall_time_s"], "run_dir": str(run_dir)})
        print(f"  {profile}: test acc50 {rows[-1]['test/acc50']:.4f} "
              f"({rows[-1]['wall_time_s']:.0f}s)", flush=True)
    delta = rows[1]["test/acc50"] - rows[0]["test/acc50"]
    result = {"device": device, "train_samples": train_samples, "epochs": epochs,
              "seed": base.seed, "rows": rows, "fast_minus_reference": delta,
              "within_1_point": abs(delta) <= 0.01}
    Path(out).write_text(json.dumps(result, indent=2))
    print(f"{'profile':<10} {'val acc50':>9} {'test acc50':>10} {'wall s':>7}")
    for r in rows:
        print(f"{r['profile']:<10} {r['val/acc50']:9.4f} {r['test/acc50']:10.4f} "
              f"{r['wall_time_s']:7.0f}")
    print(f"fast - reference: {100 * delta:+.1f} points of test acc50 on {device} "
          f"(target: within 1 point: {'met' if abs(delta) <= 0.01 else 'not met'}); JSON: {out}")


def run_search_efficiency(space: str, storage: str, seeds: list[int], num_samples: int | None,
                          out: str) -> None:
    import json
    from pathlib import Path

    from _study_cli import prepare
    from hivg.orchestration.search_efficiency import (SearchOutcome, compare,
                                                      format_comparison, read_trials)
    from hivg.orchestration.search_space import load_study
    from hivg.orchestration.tune import StudyOptions, run_study

    study = load_study(Path(space))
    if study.kind != "space":
        raise UserError(f"{space}: --search-efficiency needs a study with a space:, not variants")
    storage_path = Path(storage).resolve()
    study = prepare(study, storage_path)
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


if __name__ == "__main__":
    run_main(main)
