"""Checkpoints: plain tensors, numbers and strings only, so `weights_only=True` loads them.

Writes are atomic (temporary file, then rename): a crash never leaves a torn checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hivg.errors import UserError


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a torn or foreign file
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_model_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a one-line error naming the first mismatching key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        what = "missing from" if missing else "not expected by this model, found in"
        raise UserError(f"{source}: key {key!r} {what} the checkpoint "
                        f"({len(missing)} missing, {len(unexpected)} unexpected): "
                        "a checkpoint of another architecture or stage")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise UserError(f"{source}: key {k!r} has shape {tuple(v.shape)}, the model expects "
                            f"{tuple(own[k].shape)}: a checkpoint of another architecture")
    model.load_state_dict(state)
