"""Export a training checkpoint's CLIP, LoRA merged, as an open_clip safetensors file
(hivg.model.export): what `pipelines/export.py` does."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from hivg.errors import UserError
from hivg.model.export import merged_clip_state_dict, save_safetensors
from hivg.train.inference import load_trained_model


def export_open_clip(checkpoint: str | Path, out: str | Path,
                     log: Callable[[str], None] = print) -> Path:
    """Write `out` (.safetensors): the checkpoint's CLIP with every adapter merged, in open_clip
    keys, with the open_clip model name and the source in the file's metadata."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: expected a .safetensors file name")
    model, config = load_trained_model(Path(checkpoint), torch.device("cpu"))
    state = merged_clip_state_dict(model)
    save_safetensors(state, out, metadata={
        "format": "open_clip", "open_clip_model": config.model.clip,
        "source_checkpoint": str(checkpoint),
        "starting_weights": config.model.weights or "random init"})
    log(f"{out}: {config.model.clip}, {sum(t.numel() for t in state.values()):,} parameters, "
        "LoRA merged")
    log(f"load it with: open_clip.create_model('{config.model.clip}', pretrained='{out}')")
    return out
