"""Pack a tiny-CLIP pre-training output into the file hivg ships (hivg/weights/).

    python -m tools.pack_tiny_clip runs/weights/hivg-tiny-synthetic-<key>.pt

Reads the checkpoint and its .json report, keeps the token-embedding rows of the benchmark's
vocabulary (hivg.train.shipped_weights), checks that every token of generated benchmark
expressions and pre-training captions is among them and that the unpacked CLIP's outputs on
them match the full checkpoint's, then writes <name>.safetensors + <name>.json and removes
older shipped files. Make the checkpoint with `python -m hivg.train.pretrain`.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from hivg.errors import UserError
from hivg.train import shipped_weights
from hivg.train.pretrain import (OBJECT_PHRASES, PretrainSettings, captions, make_pairs,
                                 report_path)

# Cosine similarity of every text token's and image's features, full against unpacked:
# float16 weights move them by about 1e-4.
MIN_COSINE = 0.999


def benchmark_texts(scenes: int, seed: int = 0) -> list[str]:
    """Referring expressions of `scenes` benchmark scenes, a caption of each, and the 40
    object phrases."""
    from hivg.data import synthetic

    rng = random.Random(f"pack-check-{seed}")
    texts = list(OBJECT_PHRASES)
    for _ in range(scenes):
        w, h, objects = synthetic.make_scene(rng)
        texts += [e.text for e in synthetic.scene_expressions(objects, rng)]
        texts += captions(objects, w, h, rng)
    return texts


def missing_tokens(texts: list[str], rows: list[int], context_length: int) -> set[int]:
    from hivg.data.tokens import tokenize

    return set(tokenize(texts, context_length).unique().tolist()) - set(rows)


def outputs(state: dict[str, torch.Tensor], clip: str, tokens: torch.Tensor,
            images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every text token's final features (after ln_final), the pooled text and image
    embeddings."""
    from hivg.model.backbone import create_open_clip

    model = create_open_clip(clip)
    model.load_state_dict(state)
    model.eval()
    seen = {}
    hook = model.ln_final.register_forward_hook(lambda _m, _i, out: seen.update(tokens=out))
    with torch.no_grad():
        text = model.encode_text(tokens)
        image = model.encode_image(images)
    hook.remove()
    return {"text tokens": seen["tokens"].flatten(0, 1), "text": text, "image": image}


def parity(full: dict[str, torch.Tensor], unpacked: dict[str, torch.Tensor],
           settings: PretrainSettings, texts: list[str], images: int = 64) -> dict[str, float]:
    """The smallest cosine similarity, full against unpacked, of each kind of output."""
    from hivg.data.tokens import tokenize

    tokens = tokenize(texts, settings.context_length)
    pictures = make_pairs(images, settings.image_size, settings.context_length, 1,
                          grid=1).images.float()
    a = outputs(full, settings.clip, tokens, pictures)
    b = outputs(unpacked, settings.clip, tokens, pictures)
    return {k: F.cosine_similarity(a[k], b[k], dim=-1).min().item() for k in a}


def pack_checkpoint(weights: Path, out_dir: Path, check_scenes: int = 500,
                    log=print) -> Path:
    from hivg.model.convert import load_clip_state_dict

    report_file = report_path(weights)
    if not report_file.is_file():
        raise UserError(f"{report_file}: the pre-training report is missing")
    report = json.loads(report_file.read_text())
    settings = PretrainSettings(**report["settings"])
    key = settings.key()
    if key not in weights.name:
        raise UserError(f"{weights}: its report's settings have key {key}, not in the name")
    full = load_clip_state_dict(weights)
    rows = shipped_weights.vocabulary_ids(settings.context_length)
    texts = benchmark_texts(check_scenes)
    missing = missing_tokens(texts, rows, settings.context_length)
    if missing:
        raise UserError(f"token ids {sorted(missing)[:10]} of benchmark texts are not in "
                        "shipped_weights.vocabulary_words()")
    vocab_size = full[shipped_weights.EMBEDDING].shape[0]
    packed = shipped_weights.pack(full, rows)
    similarity = parity(full, shipped_weights.unpack(packed, vocab_size), settings, texts)
    if min(similarity.values()) < MIN_COSINE:
        raise UserError(f"unpacked outputs differ from the checkpoint's: {similarity}")
    for old in out_dir.glob(f"{settings.clip}-synthetic-*"):
        old.unlink()
    path = out_dir / f"{settings.clip}-synthetic-{key}.safetensors"
    info = shipped_weights.save_packed(path, packed, {
        **report, "key": key, "vocab_size": vocab_size, "token_rows": len(rows),
        "checked": {"texts": len(texts), "min_cosine_full_vs_unpacked": similarity}})
    log(f"{path}: {path.stat().st_size / 1e6:.1f} MB, {len(rows)} of {vocab_size} embedding "
        f"rows, {len(texts)} benchmark texts all in them; 1 - cosine, full vs unpacked: "
        + ", ".join(f"{k} {1 - v:.1e}" for k, v in similarity.items()) + f"; sha256 {info['sha256']}")
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", type=Path, help="a pre-training's .pt (its .json beside it)")
    p.add_argument("--out-dir", type=Path, default=shipped_weights.SHIPPED_DIR)
    p.add_argument("--check-scenes", type=int, default=500,
                   help="benchmark scenes whose texts are checked (default: %(default)s)")
    args = p.parse_args()
    pack_checkpoint(args.weights, args.out_dir, args.check_scenes)
    return 0


if __name__ == "__main__":
    from hivg.cli import run_main

    sys.exit(run_main(main))
