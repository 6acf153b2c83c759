"""AdamW with decay / no-decay parameter groups, and a per-step cosine schedule with warm-up."""
from __future__ import annotations

import math

import torch
from torch import nn


def scaled_lr(base_lr: float, per_worker_batch: int, world_size: int, scale: bool,
              reference_world_size: int) -> float:
    """Linear scaling against the recipe's global batch (reference_world_size x per-GPU batch)."""
    if not scale:
        return base_lr
    return base_lr * (per_worker_batch * world_size) / (per_worker_batch * reference_world_size)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    fused: bool = False) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Biases, norms, embeddings and scalar gates are not decayed.
        (no_decay if p.ndim <= 1 or "embedding" in name else decay).append(p)
    if not decay and not no_decay:
        raise ValueError("no trainable parameters: the stage freezes everything")
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, **kwargs)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int,
                       warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
