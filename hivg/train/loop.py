"""One training epoch and one evaluation pass. Explicit arguments, no config objects."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hivg.data.transforms import canvas_to_image_boxes
from hivg.ops.boxes import elementwise_iou


class NonFiniteLossError(RuntimeError):
    pass


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device) -> dict:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def blind_tokens(tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Text-blind control: each sample gets another sample's phrase (a derangement)."""
    n = tokens.shape[0]
    if n < 2:
        return tokens
    shift = int(torch.randint(1, n, (1,), generator=generator))
    perm = torch.randperm(n, generator=generator)
    return tokens[perm[(torch.argsort(perm) + shift) % n]]


@dataclass
class EpochStats:
    loss: float
    terms: dict[str, float]
    samples: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: DataLoader,
                    optimizer: torch.optim.Optimizer, scheduler, device: torch.device, *,
                    amp_dtype: torch.dtype | None, grad_clip_norm: float, stage_index: int,
                    epoch: int, text_blind: bool = False, blind_seed: int = 0,
                    show_progress: bool = True, desc: str = "") -> EpochStats:
    model.train()
    criterion.train()
    sums: dict[str, float] = {}
    seen, start = 0, time.perf_counter()
    gen = torch.Generator().manual_seed(blind_seed)
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not show_progress)
    for step, batch in enumerate(bar, start=1):
        if text_blind:
            batch["tokens"] = blind_tokens(batch["tokens"], gen)
        batch = to_device(batch, device)
        with autocast_context(device, amp_dtype):
            outputs = model(batch["image"], batch["pad_mask"], batch["tokens"])
            losses = criterion(outputs, batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss at stage {stage_index} epoch {epoch} step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], grad_clip_norm)
        optimizer.step()
        scheduler.step()
        n = batch["image"].shape[0]
        seen += n
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
        if step % 5 == 0:
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", img_s=f"{seen / elapsed:.0f}")
    seconds = time.perf_counter() - start
    means = {k: v / max(seen, 1) for k, v in sums.items()}
    return EpochStats(loss=means.pop("loss", math.nan), terms=means, samples=seen,
                      seconds=seconds)


@dataclass
class EvalResult:
    indices: np.ndarray      # manifest row of each prediction
    boxes: np.ndarray        # (N, 4) predicted xyxy pixels, clamped to the image
    iou: np.ndarray          # (N,)

    @property
    def hits(self) -> np.ndarray:
        return self.iou >= 0.5

    @property
    def acc50(self) -> float:
        return float(self.hits.mean()) if len(self.iou) else float("nan")

    @staticmethod
    def merge(parts: Sequence["EvalResult"]) -> "EvalResult":
        """Merge shards from several processes; each row appears once, sorted by row."""
        idx = np.concatenate([p.indices for p in parts])
        order = np.argsort(idx, kind="stable")
        merged = EvalResult(idx[order], np.concatenate([p.boxes for p in parts])[order],
                            np.concatenate([p.iou for p in parts])[order])
        if len(np.unique(merged.indices)) != len(merged.indices):
            raise RuntimeError("evaluation counted a row twice: the eval shards overlap")
        return merged


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *,
             amp_dtype: torch.dtype | None, canvas_size: int, text_blind: bool = False,
             blind_seed: int = 0, show_progress: bool = False, desc: str = "eval") -> EvalResult:
    model.eval()
    gen = torch.Generator().manual_seed(blind_seed)
    indices, boxes, ious = [], [], []
    it = tqdm(loader, desc=desc, leave=False, disable=not show_progress)
    for batch in it:
        if text_blind:
            batch["tokens"] = blind_tokens(batch["tokens"], gen)
        batch = to_device(batch, device)
        with autocast_context(device, amp_dtype):
            outputs = model(batch["image"], batch["pad_mask"], batch["tokens"])
        pred = canvas_to_image_boxes(outputs["pred_boxes"].float(), batch["scale"],
                                     batch["offset"], batch["orig_size"], canvas_size)
        iou = elementwise_iou(pred, batch["gt_box"].float())
        indices.append(batch["index"].cpu().numpy())
        boxes.append(pred.cpu().numpy())
        ious.append(iou.cpu().numpy())
    if not indices:
        return EvalResult(np.zeros(0, np.int64), np.zeros((0, 4), np.float32),
                          np.zeros(0, np.float32))
    return EvalResult(np.concatenate(indices), np.concatenate(boxes), np.concatenate(ious))
