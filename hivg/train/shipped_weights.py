"""The tiny CLIP that the default pre-training recipe makes, shipped inside the package.

Pre-training it takes 20-30 minutes on two cores, and every fresh storage would pay that
before its first result. hivg ships the recipe's output instead, packed to a few MB:
matrices in float16, and of the 49,408-row token embedding only the rows that the synthetic
benchmark's and the pre-training's words tokenize to (the other rows never received a
gradient: pre-training only ever read these words). Unpacking gives the full open_clip state
dict back, the unused embedding rows zero, and writes it where pre-training would have: the
normal cached file under {storage}/weights/, loaded by the normal weight loader.

The shipped file is found by the recipe's settings key (PretrainSettings.key()), so changing
any setting, the scene generator or the caption format means pre-training runs again.
tools/pack_tiny_clip.py makes the file from a pre-training's output.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hivg.errors import WeightsError

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"
FORMAT = "hivg-packed-clip/1"
EMBEDDING = "token_embedding.weight"
ROWS, PACKED = EMBEDDING + ".rows", EMBEDDING + ".packed"


def vocabulary_words() -> set[str]:
    """Every word the synthetic benchmark's expressions and the pre-training's captions use."""
    from hivg.data import synthetic
    from hivg.train import pretrain

    words = {"the", "shape", "is"}  # noun_phrase's article and default noun; "the X is Y"
    words |= set(synthetic.SHAPES) | set(synthetic.COLOURS) | set(synthetic.SIZE_RANGES)
    words |= set(synthetic.SUPERLATIVES) | set(pretrain.ROWS) | set(pretrain.COLUMNS)
    words |= {w for phrase in synthetic.RELATIONS.values() for w in phrase.split()}
    return words


def vocabulary_ids(context_length: int) -> list[int]:
    """The token ids of those words, plus padding (0), start and end of text: sorted."""
    from hivg.data.tokens import get_tokenizer

    tokenizer = get_tokenizer(context_length)
    ids = {0, tokenizer.sot_token_id, tokenizer.eot_token_id}
    for word in vocabulary_words():
        ids.update(tokenizer.encode(word))
    return sorted(ids)


def pack(state: dict[str, Tensor], rows: list[int]) -> dict[str, Tensor]:
    """Matrices as float16 (vectors and scalars stay float32: they are small and the logit
    scale is exponentiated), the token embedding cut to `rows`."""
    packed = {k: (v.half() if v.dim() >= 2 else v.float()).contiguous()
              for k, v in state.items() if k != EMBEDDING}
    index = torch.tensor(rows, dtype=torch.long)
    packed[ROWS] = index
    packed[PACKED] = state[EMBEDDING].index_select(0, index).half().contiguous()
    return packed


def unpack(packed: dict[str, Tensor], vocab_size: int) -> dict[str, Tensor]:
    """The full float32 open_clip state dict: unused embedding rows are zero."""
    state = {k: v.float() for k, v in packed.items() if k not in (ROWS, PACKED)}
    embedding = torch.zeros(vocab_size, packed[PACKED].shape[1])
    embedding[packed[ROWS]] = packed[PACKED].float()
    state[EMBEDDING] = embedding
    return state


def save_packed(path: Path, packed: dict[str, Tensor], info: dict[str, Any]) -> dict[str, Any]:
    """Write the packed tensors (safetensors: no pickle) and, beside them, `info` plus the
    file's sha256 as .json. Returns the written info."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(packed, str(path), metadata={"format": FORMAT})
    path.chmod(0o644)  # package data: readable by every user of an installed hivg
    info = {**info, "format": FORMAT, "file": path.name, "sha256": sha256(path)}
    path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_file(clip: str, key: str) -> Path | None:
    """The packed weights shipped for these settings, or None."""
    path = SHIPPED_DIR / f"{clip}-synthetic-{key}.safetensors"
    return path if path.is_file() else None


def load_shipped(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The full state dict and the shipped info (settings, held-out report). WeightsError when
    the file is not the one the info describes (a damaged install)."""
    from safetensors.torch import load_file

    info = json.loads(path.with_suffix(".json").read_text())
    if sha256(path) != info.get("sha256"):
        raise WeightsError(f"{path}: sha256 differs from {path.with_suffix('.json').name}; "
                           "reinstall hivg")
    return unpack(load_file(str(path)), info["vocab_size"]), info


def describe(info: dict[str, Any]) -> str:
    """'settings 1a2b3c4d5e, held-out object patches named right: ... all 0.812'"""
    accuracy = info.get("held_out_accuracy") or {}
    scores = "  ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
    return f"settings {info['key']}" + (f", held-out object patches named right: {scores}"
                                        if scores else "")


def materialize(clip: str, key: str, path: Path, log) -> bool:
    """Write the shipped weights for (clip, key) to `path` as the normal cached checkpoint,
    with the pre-training's report beside it. False when none is shipped for these settings."""
    from hivg.train.checkpoint import save_checkpoint

    source = shipped_file(clip, key)
    if source is None:
        return False
    state, info = load_shipped(source)
    save_checkpoint(path, {"state_dict": state})
    report = {k: info[k] for k in ("settings", "seconds", "held_out_scenes",
                                   "held_out_accuracy") if k in info}
    report["shipped"] = {"file": source.name, "sha256": info["sha256"]}
    path.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"tiny CLIP weights: shipped with hivg ({describe(info)}) -> {path}")
    return True
