"""`benchmark.py --training-step`: one optimizer step (forward, loss, backward, AdamW) on random
inputs at stage 0 and at the last HiLoRA stage, under both profiles (hivg.train.profile), the
bare frozen backbone's step (docs/design.md's measured anchors), inference and the input pipeline.

Per row: images/s, step ms (median of the timed steps), peak memory (CUDA:
max_memory_allocated per row; CPU: the process's RSS high-water mark, which only grows across
rows), achieved TFLOP/s (torch's flop counter on one step / median step time) and, on CUDA
only, MFU against a bf16 matmul peak measured in the same run. A table last, JSON written.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import statistics
import time
from datetime import datetime, timezone
from typing import Any

import torch

from hivg.bench.inference import inference_rows
from hivg.bench.input_pipeline import input_pipeline_rows
from hivg.bench.timing import (bf16_matmul_peak_tflops, count_flops, peak_memory_mb,
                               random_batch, sync_for, timed)
from hivg.config import Config, load_preset
from hivg.train.loop import autocast_context
from hivg.train.profile import apply_profile, resolve_profile

PROFILES = ("reference", "fast")


def _settings(prof, find_unused: bool, compiled: str | None = None) -> dict[str, Any]:
    return {"amp_dtype": prof.amp_dtype or "fp32", "attention": prof.attention,
            "fused_adamw": prof.fused_adamw, "tf32": prof.tf32, "pin_memory": prof.pin_memory,
            "find_unused": find_unused, "compiled": compiled}


def compile_mode(device, backend: str) -> str | None:
    """CUDA graphs (`reduce-overhead`) for inductor on a GPU: the last HiLoRA stage's step is
    launch-bound there (docs/results.md#on-a-gpu); other backends take no mode."""
    return "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None


def compiled_forward(fn, device, backend: str):
    """`fn` (forward + loss) under torch.compile; backward runs the compiled backward graph
    and the optimizer stays eager (fused AdamW is a few launches on a GPU)."""
    if device.type == "cpu":  # "No CUDA runtime is found" on every CPU compile
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    mode = compile_mode(device, backend)
    return torch.compile(fn, backend=backend, **({"mode": mode} if mode else {}))


def _row(step, batch: int, steps: int, warmup: int, device, peak_tflops: float | None,
         flops_of=None) -> dict[str, Any]:
    """Time `step` and count its FLOPs (on `flops_of`, the same step run eagerly, when `step`
    is compiled: the flop counter sees no ops inside a compiled graph)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = timed(step, steps, warmup, sync_for(device))
    flops = count_flops(flops_of or step)
    step_s = statistics.median(times)
    tflops = flops / step_s / 1e12
    return {"batch": batch, "images_per_s": batch / step_s, "step_ms": step_s * 1e3,
            "peak_memory_mb": peak_memory_mb(device), "gflop_per_step": flops / 1e9,
            "tflops": tflops, "mfu": tflops / peak_tflops if peak_tflops else None}


def hivg_setup(config: Config, stage_index: int, batch: int, device):
    """HiVG at `stage_index` on `device` (training mode), its criterion and AdamW, a fixed random
    batch in host memory (pinned under the profile's pin_memory), and the resolved profile."""
    from hivg.losses import build_criterion
    from hivg.model.build import build_model
    from hivg.model.lora import apply_stage
    from hivg.train.optim import build_optimizer

    prof = resolve_profile(config, device.type)
    torch.manual_seed(0)
    model = build_model(apply_profile(config, device.type))
    apply_stage(model, config.hilora, stage_index)
    model.to(device).train()
    criterion = build_criterion(config.loss).to(device)
    optimizer = build_optimizer(model, 1e-4, config.optim.weight_decay, fused=prof.fused_adamw)
    g = torch.Generator().manual_seed(0)
    host = random_batch(config, batch, g)
    host["box"] = torch.rand(batch, 4, generator=g) * 0.4 + 0.3
    if prof.pin_memory:
        host = {k: v.pin_memory() for k, v in host.items()}
    return model, criterion, optimizer, host, prof


def optimizer_step(forward, host: dict, optimizer, device, pin_memory: bool,
                   scope=lambda part: contextlib.nullcontext()):
    """One training step as a function: `host` to the device, loss = forward(batch), backward,
    AdamW. `scope(part)` wraps the input copy and the optimizer (the profiler's labels)."""
    def step():
        with scope("input copy"):
            b = {k: v.to(device, non_blocking=pin_memory) for k, v in host.items()}
        loss = forward(b)
        with scope("optimizer"):
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with scope("optimizer"):
            optimizer.step()
    return step


def training_step_row(config: Config, stage_index: int, profile_name: str, batch: int,
                      steps: int, warmup: int, device, peak_tflops: float | None,
                      compile_backend: str | None = None) -> dict[str, Any]:
    """One HiVG training step at `stage_index` under `profile_name`; with `compile_backend`
    (inductor, or aot_eager for a quick check) the forward and loss are compiled."""
    cfg = config.replace({"profile": profile_name})
    model, criterion, optimizer, host, prof = hivg_setup(cfg, stage_index, batch, device)

    def forward_loss(b):
        with autocast_context(device, prof.torch_amp_dtype):
            out = model(b["image"], b["pad_mask"], b["tokens"])
            return criterion(out, b)["loss"]

    stage = cfg.hilora.stages[stage_index]
    return {"profile": profile_name + ("+compiled" if compile_backend else ""),
            "stage": stage.name, "stage_index": stage_index,
            **_compiled_or_eager_row(forward_loss, host, optimizer, prof, compile_backend,
                                     batch, steps, warmup, device, peak_tflops),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "settings": _settings(prof, prof.find_unused, _compiled(device, compile_backend))}


def backbone_step_row(config: Config, profile_name: str, batch: int, steps: int, warmup: int,
                      device, peak_tflops: float | None, compile_backend: str | None = None
                      ) -> dict[str, Any]:
    """One training step of the bare open_clip towers, frozen (LoRA-like: the backward pass
    runs through every activation, no weight gradients): a CLIP contrastive loss on the two
    embeddings, and AdamW on one trainable input scale so the backward has somewhere to go."""
    from torch.nn import functional as F

    from hivg.model import backbone as bb

    cfg = config.replace({"profile": profile_name})
    prof = resolve_profile(cfg, device.type)
    cfg = apply_profile(cfg, device.type)
    torch.manual_seed(0)
    clip = bb.create_clip(cfg.model.clip, prof.attention).to(device).train()
    clip.requires_grad_(False)
    scale = torch.nn.Parameter(torch.ones((), device=device))
    optimizer = torch.optim.AdamW([scale], lr=1e-4, fused=prof.fused_adamw or None)
    host = random_batch(cfg, batch, torch.Generator().manual_seed(0))
    host = {k: host[k] for k in ("image", "tokens")}

    def forward_loss(b):
        with autocast_context(device, prof.torch_amp_dtype):
            img = F.normalize(bb.encode_image(clip, b["image"] * scale).float(), dim=-1)
            txt = F.normalize(bb.encode_text(clip, b["tokens"]).float(), dim=-1)
            logits = img @ txt.t() * 100
            labels = torch.arange(batch, device=device)
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2

    return {"profile": profile_name + ("+compiled" if compile_backend else ""),
            "stage": "bare backbone (frozen)",
            **_compiled_or_eager_row(forward_loss, host, optimizer, prof, compile_backend,
                                     batch, steps, warmup, device, peak_tflops),
            "settings": _settings(prof, False, _compiled(device, compile_backend))}


def _compiled_or_eager_row(forward_loss, host, optimizer, prof, compile_backend, batch, steps,
                           warmup, device, peak_tflops) -> dict[str, Any]:
    eager = optimizer_step(forward_loss, host, optimizer, device, prof.pin_memory)
    if not compile_backend:
        return _row(eager, batch, steps, warmup, device, peak_tflops)
    step = optimizer_step(compiled_forward(forward_loss, device, compile_backend), host,
                          optimizer, device, prof.pin_memory)
    return _row(step, batch, steps, warmup, device, peak_tflops, flops_of=eager)


def _compiled(device, backend: str | None) -> str | None:
    """How a row was compiled, as written in its settings: `inductor/reduce-overhead` etc."""
    if not backend:
        return None
    mode = compile_mode(device, backend)
    return backend + (f"/{mode}" if mode else "")


def run_training_step(preset: str | None, batch: int | None, steps: int, warmup: int,
                      out: str, inference_batch: int | None = None,
                      pipeline_images: int | None = None, compile_model: bool = False,
                      inference_only: bool = False, compile_step: str | None = None) -> None:
    """Every row (tiny on CPU, hivg-b16 on CUDA by default), printed as tables, JSON in `out`.
    `compile_step` (a torch.compile backend) adds the last stage and the bare towers under
    `fast` with the forward and loss compiled (CUDA graphs on a GPU with inductor)."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    preset = preset or ("hivg-b16" if cuda else "tiny")
    batch = batch or (64 if cuda else 8)
    config = load_preset(preset).replace({"model.weights": None})
    card = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    peak = bf16_matmul_peak_tflops(device) if cuda else None
    print(f"training step: {preset}, batch {batch}, {warmup} warm-up + {steps} timed steps, "
          f"{device.type} ({card}, {torch.get_num_threads()} threads)", flush=True)
    if peak:
        print(f"measured bf16 matmul peak: {peak:.1f} TFLOP/s", flush=True)
    rows = [] if inference_only else _training_rows(config, batch, steps, warmup, device, peak,
                                                    compile_step)
    inference = _timed_part("inference", lambda: inference_rows(
        config, inference_batch or (256 if cuda else 32), steps, warmup, device, peak,
        compile_model))
    pipeline = [] if inference_only else _timed_part("input pipeline", lambda: (
        input_pipeline_rows(config, pipeline_images or (512 if cuda else 128))))
    result = {"benchmark": "training-step", "preset": preset, "device": device.type,
              "card": card, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "batch": batch, "steps": steps, "warmup": warmup, "compile_step": compile_step,
              "bf16_matmul_peak_tflops": peak, "rows": rows, "inference": inference,
              "input_pipeline": pipeline,
              "notes": ("peak_memory_mb: " + ("torch.cuda.max_memory_allocated per row" if cuda
                        else "process RSS high-water mark (getrusage), cumulative over rows")
                        + "; mfu: " + ("vs the measured bf16 matmul peak" if cuda
                                       else "not measured on CPU"))}
    print()
    if rows:
        _print_training_table(rows)
    _print_inference_table(inference, compile_model)
    if pipeline:
        last = config.hilora.stages[-1].name
        fast_last = next(r for r in rows if (r["stage"], r["profile"]) == (last, "fast"))
        _print_pipeline(pipeline, fast_last["images_per_s"], config.model.image_size)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"JSON: {out}" + ("" if cuda or inference_only else
                           "  (CPU: no MFU; peak MB = process RSS high-water)"))


def _timed_part(what: str, make):
    t0 = time.perf_counter()
    result = make()
    print(f"  {what}: {time.perf_counter() - t0:.1f} s", flush=True)
    return result


def _training_rows(config: Config, batch: int, steps: int, warmup: int, device,
                   peak: float | None, compile_step: str | None = None) -> list[dict[str, Any]]:
    """Stage 0 and the last stage under each profile, then the bare backbone's step; with
    `compile_step`, the last stage and the bare backbone once more, fast and compiled."""
    last = len(config.hilora.stages) - 1
    rows = []
    for k in sorted({0, last}):
        for name in PROFILES:
            rows.append(_timed_part(f"{name} {config.hilora.stages[k].name}", lambda: (
                training_step_row(config, k, name, batch, steps, warmup, device, peak))))
    for name in PROFILES:
        rows.append(_timed_part(f"{name} bare backbone", lambda: (
            backbone_step_row(config, name, batch, steps, warmup, device, peak))))
    if compile_step:  # compiling takes minutes on a GPU: said before it starts
        print(f"  compiling the fast step ({compile_step}) ...", flush=True)
        rows.append(_timed_part(f"fast+compiled {config.hilora.stages[last].name}", lambda: (
            training_step_row(config, last, "fast", batch, steps, warmup, device, peak,
                              compile_step))))
        rows.append(_timed_part("fast+compiled bare backbone", lambda: (
            backbone_step_row(config, "fast", batch, steps, warmup, device, peak,
                              compile_step))))
    return rows


def _print_training_table(rows: list[dict]) -> None:
    by = {(r["stage"], r["profile"]): r for r in rows}
    print(f"{'stage':<22} {'profile':<14} {'settings':<28} {'images/s':>9} {'step ms':>9} "
          f"{'peak MB':>9} {'TFLOP/s':>8} {'MFU':>6} {'fast/ref':>8}")
    for r in rows:
        s = r["settings"]
        settings = (f"{s['amp_dtype']},{s['attention']}{',fusedAdamW' if s['fused_adamw'] else ''}"
                    f"{',' + s['compiled'] if s.get('compiled') else ''}")
        ratio = r["images_per_s"] / by[(r["stage"], "reference")]["images_per_s"]
        print(f"{r['stage']:<22} {r['profile']:<14} {settings:<28} {r['images_per_s']:9.1f} "
              f"{r['step_ms']:9.1f} {r['peak_memory_mb']:9.0f} {r['tflops']:8.4f} "
              f"{_mfu(r):>6} {ratio:7.2f}x")
    compiled = [r for r in rows if r["profile"] == "fast+compiled"]
    if len(compiled) == 2:  # the issue-22 targets, side by side from this run
        last, bare = compiled
        ratio = last["images_per_s"] / by[(last["stage"], "reference")]["images_per_s"]
        print(f"compiled last stage: {ratio:.2f}x reference (target 3.5x); MFU {_mfu(last)} "
              f"against the bare towers' {_mfu(by[(bare['stage'], 'fast')])} eager, "
              f"{_mfu(bare)} compiled")
    print()


def _mfu(row: dict) -> str:
    return f"{row['mfu'] * 100:5.1f}%" if row["mfu"] is not None else "   n/a"


def _print_inference_table(inference: list[dict], compiled: bool) -> None:
    s = inference[0]["settings"]
    print(f"inference, auto profile ({s['amp_dtype']}, {s['attention']}"
          f"{', compiled' if compiled else ''}):")
    print(f"{'model':<12} {'mode':<38} {'median ms':>10} {'p99 ms':>8} {'images/s':>9} {'MFU':>6}")
    for r in inference:
        print(f"{r['model']:<12} {r['mode']:<38} {r['median_ms']:10.2f} {r['p99_ms']:8.2f} "
              f"{r['images_per_s']:9.1f} {_mfu(r) if 'mfu' in r else '   n/a':>6}")
    print()


def _print_pipeline(pipeline: list[dict], fast_last: float, canvas: int) -> None:
    """Per layout: images/s per loader worker, and the workers the fast last-stage step needs
    (recorded in its row)."""
    print(f"input pipeline (decode + letterbox + training augmentations, 640x480 JPEGs, "
          f"canvas {canvas}):")
    for r in pipeline:
        need = math.ceil(fast_last / r["images_per_s_per_worker"])
        r["workers_for_fast_last_stage"] = need
        print(f"  {r['layout']:<18} {r['images_per_s_per_worker']:8.1f} images/s per worker; "
              f"the fast last-stage step ({fast_last:.0f} images/s) needs {need} worker(s)")
