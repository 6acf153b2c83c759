"""A merged export: the trained CLIP as a standard open_clip state dict in safetensors.

Every LoRA adapter is folded into its base weights (merge_lora: W += alpha/r B A), which leaves
exactly open_clip's keys (`visual.transformer.resblocks.3.attn.in_proj_weight`, ...: our
attention keeps nn.MultiheadAttention's names). The file loads with
`open_clip.create_model(NAME, pretrained=FILE)` for inference without this project's adapter
code. What HiVG adds around CLIP (bridge, VL encoder, box head) is not part of open_clip's
model and is not in the file.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn

from hivg.model.lora import merge_lora


def merged_clip_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The CLIP of a HiVG with every adapter merged (the model's adapters are folded in place)."""
    merge_lora(model)
    state = model.clip.state_dict()
    leftover = [k for k in state if ".lora." in k]
    if leftover:  # merge_lora removes every adapter; a key left means a module it missed
        raise RuntimeError(f"adapter weights survived the merge: {leftover[0]}")
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_safetensors(state: dict[str, Tensor], path: str | Path,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write atomically (a reader never sees half a file); metadata as safetensors strings."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    tmp.replace(path)
    return path
