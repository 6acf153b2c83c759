"""Model statistics: parameters per HiLoRA stage and the forward cost of one image.

Cost is counted with torch.utils.flop_counter.FlopCounterMode, which counts FLOPs as 2 x MACs
for matmuls and convolutions (elementwise ops, softmax and norms are not counted). The model
is built with eager attention for counting: the counter does not see CPU SDPA kernels.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from hivg.config import Config
from hivg.model.build import build_model
from hivg.model.lora import apply_stage

# Forward-cost parts: module-name prefixes inside HiVG; CLIP towers are the rest.
PARTS = {
    "bridge": ("bridge",),
    "fusion": ("visual_fuse", "visual_proj", "text_proj"),
    "vl_encoder": ("vl_encoder",),
    "heads": ("box_head", "align_head", "seg_head"),
}


@dataclass
class StageParams:
    stage: str
    total: dict[str, int] = field(default_factory=dict)  # policy -> parameters
    trainable: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelStats:
    name: str
    stages: list[StageParams]
    macs: dict[str, int]  # part -> multiply-accumulates per image, stage 0 (= merged export)
    macs_last_stage_unmerged: int  # the last stage's adapters as separate branches (paper policy)


def forward_macs(model: torch.nn.Module, image_size: int, context_length: int) -> dict[str, int]:
    """MACs of one forward pass at batch 1, by part (`clip` = the towers), plus `total`."""
    image = torch.randn(1, 3, image_size, image_size)
    pad = torch.zeros(1, image_size, image_size, dtype=torch.bool)
    tokens = torch.zeros(1, context_length, dtype=torch.long)
    tokens[0, 0], tokens[0, 1:8], tokens[0, 8] = 49406, 320, 49407
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image, pad, tokens)
    model.train(was_training)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    flops = {"total": counter.get_total_flops(), **{part: 0 for part in PARTS}}
    for name, n in counts.items():
        path = name.split(".")
        ancestors = {".".join(path[:i]) for i in range(2, len(path))}
        if path[0] != root or len(path) < 2 or ancestors & counts.keys():
            continue  # count each called module once, at its outermost call
        for part, children in PARTS.items():
            if path[1] in children:
                flops[part] += n
    flops["clip"] = flops["total"] - sum(flops[p] for p in PARTS)
    return {k: v // 2 for k, v in flops.items()}


def model_stats(config: Config, name: str) -> ModelStats:
    """Parameters for every stage under both policies, and the forward cost per image."""
    config = config.replace({"model.attention": "eager", "model.weights": None})
    torch.manual_seed(0)
    base = build_model(config)
    macs = forward_macs(base, config.model.image_size, config.model.context_length)
    stages = [StageParams(s.name) for s in config.hilora.stages]
    last_unmerged = 0
    for policy in ("paper", "released"):
        hilora = copy.deepcopy(config.hilora)
        hilora.policy = policy
        model = copy.deepcopy(base)
        for k, row in enumerate(stages):
            apply_stage(model, hilora, k)
            row.total[policy] = sum(p.numel() for p in model.parameters())
            row.trainable[policy] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if policy == "paper":
            last_unmerged = forward_macs(model, config.model.image_size,
                                         config.model.context_length)["total"]
        del model
    return ModelStats(name, stages, macs, last_unmerged)


def format_stats(stats: list[ModelStats], paper_gflops: dict[str, float]) -> str:
    """Two markdown tables: parameters per stage, and forward cost per image."""
    m = lambda n: f"{n / 1e6:.1f}M"  # noqa: E731
    g = lambda n: f"{n / 1e9:.1f}"  # noqa: E731
    lines = ["| model | stage | total (paper) | trainable (paper) | total (released) "
             "| trainable (released) |", "|---|---|---|---|---|---|"]
    for s in stats:
        for row in s.stages:
            lines.append(f"| {s.name} | {row.stage} | {m(row.total['paper'])} | "
                         f"{m(row.trainable['paper'])} | {m(row.total['released'])} | "
                         f"{m(row.trainable['released'])} |")
    lines += ["", "| model | GMACs / image | GFLOPs / image (2 x MACs) | paper \"GFLOPs\" | "
              "CLIP towers | bridge | fusion | VL encoder | heads | GMACs, last stage unmerged |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s in stats:
        c = s.macs
        lines.append(f"| {s.name} | {g(c['total'])} | {g(2 * c['total'])} | "
                     f"{paper_gflops.get(s.name, '-')} | {g(c['clip'])} | {g(c['bridge'])} | "
                     f"{g(c['fusion'])} | {g(c['vl_encoder'])} | {g(c['heads'])} | "
                     f"{g(s.macs_last_stage_unmerged)} |")
    return "\n".join(lines)
