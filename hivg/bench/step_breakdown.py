"""`benchmark.py --step-breakdown`: where one training step's time goes, by torch's profiler
(hivg-l14 at its last HiLoRA stage under `fast` on a GPU by default, tiny on CPU).

Every op's self time (GPU kernel time on CUDA, CPU time on CPU) goes to one part:
- adapters: the LoRA branches and the folding of frozen adapters into the weights;
- attention: the rest of every attention module (projections, SDPA), towers, bridge and
  VL encoder alike;
- bridge: the bridge layers outside their attention;
- vision tower / text tower: the towers outside their attention (MLPs, norms, embeddings);
- heads and VL encoder: the rest of the model's forward (fusion, VL encoder, heads);
- loss; optimizer (zero_grad and step); input copy;
- backward, unattributed: gradient accumulation and nodes with no forward op found;
- other: ops outside every scope (the step's own glue).
An op's part is the innermost labelled scope around it. A backward op takes the part of the
forward op that made its autograd node (matched by sequence number). On CUDA the table adds
launches: kernel launches per step, the CPU time spent launching them, and the step's wall
time left with no kernel running on the GPU.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import torch
from torch import nn

from hivg.bench.timing import sync_for, timed
from hivg.config import Config, load_preset
from hivg.train.loop import autocast_context

PARTS = ("adapters", "attention", "bridge", "vision tower", "text tower",
         "heads and VL encoder", "loss", "optimizer", "input copy", "backward, unattributed", "other")
PREFIX = "hivg/"  # the profiler scopes this module opens are named hivg/<part>
LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                "cudaGraphLaunch")


@contextmanager
def labelled_model(model: nn.Module) -> Iterator[None]:
    """Open a profiler scope per part around the model's pieces: instance attributes that
    shadow the modules' methods, and hivg.model.backbone's tower functions (the model runs
    the towers block by block through them); all restored on exit."""
    from hivg.model import backbone as bb
    from hivg.model.adapters import AttentionLoRA, LowRank
    from hivg.model.attention import Attention

    patched: list[tuple[Any, str, Any]] = []

    def label(owner: Any, name: str, part: str | Callable[[Any], str]) -> None:
        """`part` is a name, or a function of the call's first argument (a tower block)."""
        fn = getattr(owner, name)
        part_of = part if callable(part) else (lambda _: part)
        patched.append((owner, name, owner.__dict__.get(name)))

        def run(*args, **kwargs):
            with torch.profiler.record_function(PREFIX + part_of(args[0] if args else None)):
                return fn(*args, **kwargs)
        setattr(owner, name, run)

    tower = {id(b): "vision tower" for b in bb.vision_blocks(model.clip)}
    tower.update({id(b): "text tower" for b in bb.text_blocks(model.clip)})
    label(model, "forward", "heads and VL encoder")
    for fn in ("embed_image", "project_image"):
        label(bb, fn, "vision tower")
    for fn in ("text_layers", "project_text"):
        label(bb, fn, "text tower")
    for fn in ("block_attention", "block_mlp"):
        label(bb, fn, lambda block: tower[id(block)])
    for layer in model.bridge.values():
        label(layer, "forward", "bridge")
    for module in model.modules():
        if isinstance(module, Attention):
            label(module, "forward", "attention")
            if len(module.lora):  # folding frozen adapters into the weights
                label(module, "_weights", "adapters")
        elif isinstance(module, AttentionLoRA):
            label(module, "qkv_delta", "adapters")
        elif isinstance(module, LowRank):
            label(module, "forward", "adapters")
    try:
        yield
    finally:
        for owner, name, before in reversed(patched):
            if isinstance(owner, nn.Module):
                delattr(owner, name)  # the class's method shows through again
            else:
                setattr(owner, name, before)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the duration (C++ logging bypasses sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _part_of(event, by_seq: dict[int, str]) -> str | None:
    """The part of one profiler event: its innermost hivg/ scope, or for a backward op the part
    of the forward op whose autograd node it runs; None outside every scope."""
    e = event
    while e is not None:
        if e.name.startswith(PREFIX):
            return e.name[len(PREFIX):]
        if e.name.startswith("autograd::engine::evaluate_function"):
            return by_seq.get(e.sequence_nr, "backward, unattributed")
        e = e.cpu_parent
    return None


def event_parts(events) -> list[tuple[Any, str]]:
    """(event, part) for every profiler event."""
    by_seq: dict[int, str] = {}
    for e in events:  # forward ops in order: the last op recorded at a sequence number made its node
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::"):
            part = _part_of(e, {})
            if part is not None and part != "backward, unattributed":
                by_seq[e.sequence_nr] = part
    return [(e, _part_of(e, by_seq) or "other") for e in events]


def attribute(events, device_type: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Self time per part in ms (kernel time on CUDA, CPU time on CPU), and launch counts."""
    ms = dict.fromkeys(PARTS, 0.0)
    launches, launch_cpu_us = 0, 0.0
    for e, part in event_parts(events):
        t = e.self_device_time_total if device_type == "cuda" else e.self_cpu_time_total
        ms[part] += t / 1e3
        if any(e.name.startswith(c) for c in LAUNCH_CALLS):
            launches += 1
            launch_cpu_us += e.self_cpu_time_total
    return ms, {"kernel_launches": launches, "launch_cpu_ms": launch_cpu_us / 1e3}


def build_step(config: Config, stage_index: int, batch: int, device) -> tuple[nn.Module, Callable]:
    """The model at `stage_index` and one training step on a fixed random batch (the same
    step as `--training-step`'s row, its parts inside hivg/ scopes)."""
    from hivg.bench.training_step import hivg_setup, optimizer_step

    model, criterion, optimizer, host, prof = hivg_setup(config, stage_index, batch, device)

    def scope(part: str):
        return torch.profiler.record_function(PREFIX + part)

    def forward_loss(b):
        with autocast_context(device, prof.torch_amp_dtype):
            out = model(b["image"], b["pad_mask"], b["tokens"])
            with scope("loss"):
                return criterion(out, b)["loss"]

    return model, optimizer_step(forward_loss, host, optimizer, device, prof.pin_memory, scope)


def step_breakdown(config: Config, stage_index: int, batch: int, steps: int, warmup: int,
                   device) -> dict[str, Any]:
    """Time the step unprofiled (median of `steps`), then profile `steps` more and attribute
    their time per part (per-step means)."""
    from torch.profiler import ProfilerActivity, profile

    model, step = build_step(config, stage_index, batch, device)
    with labelled_model(model):
        step_s = statistics.median(timed(step, steps, warmup, sync_for(device)))
        activities = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if device.type == "cuda" else [])
        prof = profile(activities=activities)
        with _quiet_stderr():  # the profiler's C++ start notices
            prof.start()
        try:
            for _ in range(steps):
                step()
            sync_for(device)()
        finally:
            with _quiet_stderr():
                prof.stop()
    ms, launches = attribute(prof.events(), device.type)
    per_step = {k: v / steps for k, v in ms.items()}
    busy = sum(per_step.values())
    result = {"stage": config.hilora.stages[stage_index].name, "stage_index": stage_index,
              "batch": batch, "step_ms": step_s * 1e3, "images_per_s": batch / step_s,
              "parts_ms": per_step, "attributed_ms": busy,
              "time": "GPU kernel time" if device.type == "cuda" else "CPU self time"}
    if device.type == "cuda":
        result.update({"kernel_launches_per_step": launches["kernel_launches"] / steps,
                       "launch_cpu_ms_per_step": launches["launch_cpu_ms"] / steps,
                       "gpu_idle_ms_per_step": max(0.0, step_s * 1e3 - busy)})
    return result


def run_step_breakdown(preset: str | None, stage: int | None, batch: int | None, steps: int,
                       warmup: int, out: str) -> None:
    """One preset's step broken down, printed as a table, JSON in `out`."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    preset = preset or ("hivg-l14" if cuda else "tiny")
    config = load_preset(preset).replace({"model.weights": None, "profile": "fast"})
    stage = len(config.hilora.stages) - 1 if stage is None else stage
    if not 0 <= stage < len(config.hilora.stages):
        from hivg.errors import UserError
        raise UserError(f"--stage: expected 0 to {len(config.hilora.stages) - 1} for {preset}, "
                        f"got {stage}")
    batch = batch or (32 if cuda else 8)
    card = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    print(f"step breakdown: {preset}, {config.hilora.stages[stage].name}, fast, batch {batch}, "
          f"{warmup} warm-up + {steps} timed + {steps} profiled steps, {device.type} ({card})",
          flush=True)
    r = step_breakdown(config, stage, batch, steps, warmup, device)
    result = {"benchmark": "step-breakdown", "preset": preset, "device": device.type,
              "card": card, "torch": torch.__version__,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **r}
    print(f"\nstep {r['step_ms']:.1f} ms unprofiled ({r['images_per_s']:.1f} images/s); "
          f"{r['time']} per step, by part:")
    for part, t in sorted(r["parts_ms"].items(), key=lambda kv: -kv[1]):
        print(f"  {part:<24} {t:9.2f} ms {100 * t / r['attributed_ms']:5.1f}%")
    if cuda:
        print(f"  launches: {r['kernel_launches_per_step']:.0f} kernels per step, "
              f"{r['launch_cpu_ms_per_step']:.1f} ms of CPU launching them; the GPU ran no "
              f"kernel for {r['gpu_idle_ms_per_step']:.1f} ms of the step")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"JSON: {out}")
