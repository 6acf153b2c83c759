"""Read a local weights file or folder into a plain dict of tensors, whatever its container.
Key layouts (open_clip, HF CLIPModel, the authors' peft keys) are hivg.model.convert's job.

Containers, told apart by content rather than by file name:
- safetensors (`.safetensors`): tensors only, no code.
- a Hugging Face model folder: `config.json` with `model.safetensors` or `pytorch_model.bin`;
  a folder holding open_clip's own files (`open_clip_model.safetensors`,
  `open_clip_pytorch_model.bin`, as on the Hub) is read the same way.
- OpenAI's TorchScript archives (`ViT-B-16.pt`, `ViT-L-14.pt`): `torch.jit.load`, keeping only
  the state dict. The one deliberate exception to weights_only loading: see `_read_torchscript`.
- anything else: `torch.load(..., weights_only=True)`: tensors, numbers, strings, containers
  (open_clip and HF `.bin` files, our checkpoints, the authors' checkpoints). The authors'
  training checkpoints also store their argparse `args`; `argparse.Namespace`, a plain
  attribute holder, is the one class allowed besides torch's own.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hivg.errors import WeightsError

# In a model folder, the first of these that exists is read (open_clip's own preference first,
# as open_clip's factory orders them).
FOLDER_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Entries of TorchScript state dicts that are not weights: OpenAI's settings (open_clip drops
# the same three), and open_clip's causal text mask, a non-persistent buffer that scripting
# makes persistent (an archive scripted from an open_clip model carries it).
TORCHSCRIPT_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def folder_weights_file(folder: str | Path) -> Path:
    """The weights file of a model folder; WeightsError naming what was expected."""
    folder = Path(folder)
    for name in FOLDER_FILES:
        if (folder / name).is_file():
            return folder / name
    raise WeightsError(f"{folder}: no weights file in the folder (expected config.json with "
                       f"model.safetensors or pytorch_model.bin, or {FOLDER_FILES[0]})")


def hf_folder_config(folder: str | Path) -> dict[str, Any] | None:
    """A model folder's config.json, or None when it has none; WeightsError when unreadable."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return config


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The raw contents of a weights file (a dict, possibly wrapped: {"state_dict": ...}), or of
    a model folder's weights file. Never runs pickled code."""
    path = Path(path)
    if path.is_dir():
        path = folder_weights_file(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.name.endswith(".safetensors.index.json"):
        return _read_safetensors_shards(path)
    if is_safetensors(path):
        return _read_safetensors(path)
    if is_torchscript(path):
        return _read_torchscript(path)
    return _read_pickle(path)


def is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length, then a JSON header ('{')."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding `constants.pkl` (torch's own test for it)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # a truncated or corrupt file
        raise WeightsError(f"{path}: not a readable safetensors file ({_reason(e)})") from None


def _read_safetensors_shards(index: Path) -> dict[str, Tensor]:
    """HF's sharded layout: an index whose weight_map names the shard of every tensor."""
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{index}: not a safetensors index with a weight_map ({e})") from None
    state: dict[str, Tensor] = {}
    for shard in shards:
        if not (index.parent / shard).is_file():
            raise WeightsError(f"{index}: shard {shard} is missing from {index.parent}")
        state.update(_read_safetensors(index.parent / shard))
    return state


def _read_torchscript(path: Path) -> dict[str, Tensor]:
    """OpenAI published CLIP as TorchScript archives, which torch.load(weights_only=True)
    refuses. torch.jit.load reads them; we keep the tensors and drop the module.

    Trust: unlike a weights-only file, a TorchScript archive holds code (TorchScript, run by
    torch's interpreter, not arbitrary Python; loading compiles it and may run a scripted
    __setstate__, and we never call forward). Load archives only from a source you trust, as
    you would a pickle: OpenAI's published files (open_clip checks their sha256), or your own."""
    try:
        with warnings.catch_warnings():  # torch marks torch.jit deprecated; it still reads them
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise WeightsError(f"{path}: a TorchScript archive that torch.jit.load cannot read "
                           f"({_reason(e)})") from None
    state = {k: v for k, v in module.state_dict().items() if k not in TORCHSCRIPT_NON_WEIGHTS}
    return state


def _read_pickle(path: Path) -> Any:
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code, a truncated file
        raise WeightsError(f"{path}: not a plain tensor state dict readable with "
                           f"weights_only=True ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__
