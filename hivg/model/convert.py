"""CLIP weights from local files, as open_clip state dicts. Never downloads; reading the file
(safetensors, TorchScript, weights-only pickles, model folders) is hivg.model.weight_files' job.

Formats (key layouts):
- open_clip: a state dict with open_clip keys (`visual.conv1.weight`, ...), optionally wrapped
  in {"state_dict": ...} and/or prefixed `module.` (open_clip's training checkpoints); OpenAI's
  TorchScript archives have the same keys.
- hf: a transformers `CLIPModel` state dict; q/k/v projections are concatenated into the fused
  `in_proj`, HF's (out, in) projection matrices transposed to open_clip's (in, out).
- hivg_released: the authors' checkpoints. Their "debiased" CLIP: HF keys with peft LoRA keys
  under (possibly nested) `base_model.model.` prefixes. Each LoRA is merged, W += (lora_alpha /
  r) B A, with r read from A's shape; alpha is not stored in the file (the released config uses
  16). Their HiVG training checkpoints (`best_checkpoint.pth`: {"model": ..., "args": ...}) and
  `clip_lora_stage_with_bridge.pth` hold the same CLIP under `clip.` plus their bridge and head:
  the CLIP (LoRA merged) is taken, the bridge and head left out (ours are built fresh).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from hivg.errors import WeightsError
from hivg.model.weight_files import read_state_dict

FORMATS = ("auto", "open_clip", "hf", "hivg_released")
_HF_ROOTS = ("vision_model.", "text_model.", "visual_projection.", "text_projection.", "logit_scale")


def load_clip_state_dict(path: str | Path, fmt: str = "auto", *, lora_alpha: float = 16.0,
                         log: Callable[[str], None] | None = None) -> dict[str, Tensor]:
    """Read a weights file (or model folder) and return an open_clip-keyed CLIP state dict."""
    if fmt not in FORMATS:
        raise WeightsError(f"weights format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: weights file not found")
    sd = _unwrap(read_state_dict(path), path)
    if fmt == "auto":
        fmt = detect_format(sd, path)
    if fmt == "hivg_released":
        sd, left_out = authors_clip_part(sd)
        if left_out and log:
            log(f"{path}: the authors' HiVG checkpoint: its CLIP is used (LoRA merged); "
                f"{left_out} tensors of their bridge and head are left out")
        sd = hf_to_open_clip(merge_peft_lora(sd, lora_alpha), path)
    elif fmt == "hf":
        sd = hf_to_open_clip(sd, path)
    else:
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def _unwrap(obj, path: Path) -> dict[str, Tensor]:
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return obj


def detect_format(sd: dict[str, Tensor], path: Path | str = "weights") -> str:
    keys = list(sd)
    if any("base_model.model." in k or ".lora_A." in k for k in keys):
        return "hivg_released"
    if any(k.startswith(("vision_model.", "text_model.")) or ".vision_model." in k
           or ".text_model." in k for k in keys):
        return "hf"
    if any(k.removeprefix("module.").startswith(("visual.", "transformer.")) for k in keys):
        return "open_clip"
    raise WeightsError(f"{path}: cannot tell the weights format from keys like {keys[:3]} "
                       "(set model.weights_format)")


# -- released layout: merge peft LoRA into the HF weights -------------------------------------

# Parameters the authors' bridge adds inside CLIP's vision layers (models/HiVG.py,
# CLIPEncoderLayer_with_Crossmodal_Bridge): cross_norm, cross_attn, cross_mlp, cross_gate,
# cross_adaptive_weights.
_AUTHORS_BRIDGE = re.compile(r"\.cross_(norm|attn|mlp|gate|adaptive_weights)\.")


def authors_clip_part(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """The CLIP of one of the authors' checkpoints and how many tensors were left out: with
    `clip.`-prefixed keys (a HiVG training checkpoint) only those are kept, prefix removed;
    their bridge's parameters inside the vision layers are dropped either way."""
    keep = sd
    if any(k.startswith("clip.") for k in sd):
        keep = {k.removeprefix("clip."): v for k, v in sd.items() if k.startswith("clip.")}
    keep = {k: v for k, v in keep.items() if not _AUTHORS_BRIDGE.search(k)}
    return keep, len(sd) - len(keep)


_LORA = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.(?P<name>[^.]+))?\.weight$")


def merge_peft_lora(sd: dict[str, Tensor], lora_alpha: float = 16.0) -> dict[str, Tensor]:
    """HF + peft keys -> plain HF keys with every LoRA merged into its base weight."""
    plain: dict[str, Tensor] = {}
    pairs: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        key = key.replace("base_model.model.", "").replace(".base_layer.", ".")
        m = _LORA.match(key)
        if m:
            pairs.setdefault((m["mod"], m["name"] or ""), {})[m["ab"]] = value
        else:
            plain[key] = value
    for (mod, name), ab in sorted(pairs.items()):
        label = f"{mod}.lora_{{A,B}}{'.' + name if name else ''}"
        if set(ab) != {"A", "B"}:
            raise WeightsError(f"{label}: LoRA pair incomplete (found only lora_{''.join(ab)})")
        base = plain.get(f"{mod}.weight")
        A, B = ab["A"].float(), ab["B"].float()
        if base is None:
            raise WeightsError(f"{mod}.weight: missing base weight for its LoRA")
        if (B.shape[0], A.shape[1]) != tuple(base.shape) or B.shape[1] != A.shape[0]:
            raise WeightsError(f"{label}: shapes A {tuple(A.shape)}, B {tuple(B.shape)} do not "
                               f"match the base weight {tuple(base.shape)}")
        plain[f"{mod}.weight"] = (base.float() + (lora_alpha / A.shape[0]) * (B @ A)).to(base.dtype)
    return plain


# -- HF CLIPModel -> open_clip ----------------------------------------------------------------

def _hf_root(key: str) -> int | None:
    """Where the HF CLIP part of a key starts, dropping wrappers such as `clip.` or `model.`."""
    best = None
    for root in _HF_ROOTS:
        p = key.find(root)
        while p > 0 and key[p - 1] != ".":
            p = key.find(root, p + 1)
        if p != -1 and (best is None or p < best):
            best = p
    return best


_LAYER_MAP = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_TOP_MAP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_LAYER_KEY = re.compile(r"^(?P<tower>text|vision)_model\.encoder\.layers\.(?P<i>\d+)\.(?P<rest>.+)$")


def hf_to_open_clip(sd: dict[str, Tensor], path: Path | str = "weights") -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for raw_key, value in sd.items():
        start = _hf_root(raw_key)
        if start is None:
            raise WeightsError(f"{path}: unexpected key {raw_key!r} in an HF CLIP state dict")
        key = raw_key[start:]
        if key.endswith("position_ids"):
            continue  # a buffer in older transformers versions
        if key in _TOP_MAP:
            out[_TOP_MAP[key]] = value
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.t().contiguous()
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif m := _LAYER_KEY.match(key):
            prefix = ("visual." if m["tower"] == "vision" else "") + f"transformer.resblocks.{m['i']}."
            mod, _, leaf = m["rest"].rpartition(".")
            if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((prefix, leaf), {})[mod[10]] = value
            elif mod in _LAYER_MAP:
                out[prefix + _LAYER_MAP[mod] + "." + leaf] = value
            else:
                raise WeightsError(f"{path}: unexpected key {raw_key!r} in an HF CLIP state dict")
        else:
            raise WeightsError(f"{path}: unexpected key {raw_key!r} in an HF CLIP state dict")
    for (prefix, leaf), parts in qkv.items():
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            hf = prefix.replace("visual.transformer.resblocks.", "vision_model.encoder.layers.")
            hf = hf.replace("transformer.resblocks.", "text_model.encoder.layers.")
            raise WeightsError(f"{path}: missing key {hf}self_attn.{missing[0]}_proj.{leaf}")
        out[f"{prefix}attn.in_proj_{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# -- into the model -----------------------------------------------------------------------------

def load_into_clip(clip: nn.Module, sd: dict[str, Tensor], source: str = "weights") -> None:
    """Copy a converted state dict into the CLIP's base weights. Every base weight must be
    present with its exact shape and nothing else may be there; the first bad key (in the
    model's order) is named in a WeightsError. LoRA adapters, if any, are left alone."""
    own = {k: v for k, v in clip.state_dict().items() if ".lora." not in k}
    for key, value in own.items():
        if key not in sd:
            raise WeightsError(f"{source}: missing key {key}")
        if tuple(sd[key].shape) != tuple(value.shape):
            raise WeightsError(f"{source}: shape mismatch for {key}: file has "
                               f"{tuple(sd[key].shape)}, the model needs {tuple(value.shape)}")
    extra = [k for k in sd if k not in own]
    if extra:
        raise WeightsError(f"{source}: unexpected key {extra[0]} (not part of this CLIP)")
    clip.load_state_dict(sd, strict=False)
