"""Contrastive pre-training of a small CLIP on synthetic image-caption pairs.

HiVG starts from a pre-trained CLIP. Real CLIP weights are far too big for a 2-core demo, so
the tiny backbone gets its own short CLIP pre-training: fresh synthetic scenes (drawn from a
seed stream disjoint from the benchmark's images) captioned with up to four of their objects,
left to right, each with its coarse place ("small red square top left large yellow triangle
middle centre ..."). The result is saved as an ordinary
open_clip state dict and loaded through the same weight-loading path as real CLIP weights.

The checkpoint is cached under {storage}/weights/ by a hash of everything that determines it
(model name, sizes, steps, seed, generator version), so every run and trial shares it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from hivg.config import Config
from hivg.data import synthetic
from hivg.data.tokens import tokenize
from hivg.data.transforms import eval_placement, render
from hivg.train.checkpoint import save_checkpoint

# A config value for model.weights that means "the cached synthetic pre-training".
SYNTHETIC_WEIGHTS = "@synthetic-pretrained"
# Bump when the caption format changes: it is part of the cache key.
CAPTION_VERSION = 3


@dataclass(frozen=True)
class PretrainSettings:
    clip: str
    image_size: int
    context_length: int
    scenes: int = 3000
    steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "generator": synthetic.GENERATOR_VERSION,
                           "captions": CAPTION_VERSION},
                          sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


MAX_CAPTIONED = 4  # 5 words an object: 4 objects + start/end fit a 24-token context


def _phrase(o: synthetic.Shape, width: int, height: int) -> str:
    row = ("top", "middle", "bottom")[min(2, int(3 * o.cy / height))]
    col = ("left", "centre", "right")[min(2, int(3 * o.cx / width))]
    return f"{o.size} {o.colour} {o.shape} {row} {col}"


def captions(objects: list[synthetic.Shape], width: int, height: int, rng: random.Random
             ) -> tuple[str, str]:
    """A caption of up to four of the scene's objects, left to right, each with its coarse
    place ("small red circle top left"), and a hard negative: the same caption with one
    object's shape, colour or size changed.

    Places make CLIP's patch features carry where things are. The negatives make it encode
    every attribute: with scene captions alone, colour already tells the batch's scenes apart
    and the text tower learned to ignore shape ("the red circle" and "the red square" had
    cosine similarity 0.99)."""
    chosen = sorted(rng.sample(objects, min(MAX_CAPTIONED, len(objects))), key=lambda o: o.cx)
    positive = " ".join(_phrase(o, width, height) for o in chosen)
    k = rng.randrange(len(chosen))
    attribute = rng.choices(["shape", "colour", "size"], weights=[0.5, 0.3, 0.2])[0]
    values = {"shape": synthetic.SHAPES, "colour": sorted(synthetic.COLOURS),
              "size": sorted(synthetic.SIZE_RANGES)}[attribute]
    swapped = dataclasses.replace(chosen[k], **{attribute: rng.choice(
        [v for v in values if v != getattr(chosen[k], attribute)])})
    negative = " ".join(_phrase(swapped if i == k else o, width, height)
                        for i, o in enumerate(chosen))
    return positive, negative


def make_pairs(count: int, image_size: int, context_length: int, seed: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`count` letterboxed scenes (float16, normalised), their caption tokens and the tokens
    of a hard-negative caption for each."""
    rng = random.Random(f"pretrain-{seed}")  # never the benchmark's (seed, split, index) stream
    images = torch.empty(count, 3, image_size, image_size, dtype=torch.float16)
    positives, negatives = [], []
    for i in range(count):
        w, h, objects = synthetic.make_scene(rng)
        picture = synthetic.draw_scene(w, h, objects, rng)
        pixels, _mask = render(picture, (w, h), eval_placement(w, h, image_size), image_size)
        images[i] = pixels.half()
        positive, negative = captions(objects, w, h, rng)
        positives.append(positive)
        negatives.append(negative)
    return images, tokenize(positives, context_length), tokenize(negatives, context_length)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor, negative_features: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Symmetric InfoNCE; hard-negative captions join the image-to-text side (NegCLIP)."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * image_features @ text_features.t()
    labels = torch.arange(len(logits), device=logits.device)
    image_to_text = logits
    if negative_features is not None:
        negatives = scale * image_features @ F.normalize(negative_features, dim=-1).t()
        image_to_text = torch.cat([logits, negatives], dim=1)
    return (F.cross_entropy(image_to_text, labels) + F.cross_entropy(logits.t(), labels)) / 2


def pretrain_clip(settings: PretrainSettings, out_path: Path,
                  log: Callable[[str], None] = print) -> Path:
    from hivg.model.backbone import create_open_clip
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    images, tokens, negative_tokens = make_pairs(settings.scenes, settings.image_size,
                                                 settings.context_length, settings.seed)
    log(f"pre-training {settings.clip}: {settings.scenes} synthetic scenes made in "
        f"{time.perf_counter() - start:.0f}s; {settings.steps} steps of batch {settings.batch_size}")
    model = create_open_clip(settings.clip)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    warmup = max(1, settings.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / settings.steps)))))
    gen = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(settings.scenes, generator=gen)
    cursor = 0
    for step in range(1, settings.steps + 1):
        if cursor + settings.batch_size > settings.scenes:
            order, cursor = torch.randperm(settings.scenes, generator=gen), 0
        idx = order[cursor:cursor + settings.batch_size]
        cursor += settings.batch_size
        loss = clip_loss(model.encode_image(images[idx].float()), model.encode_text(tokens[idx]),
                         model.logit_scale, model.encode_text(negative_tokens[idx]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == settings.steps:
            log(f"  step {step}/{settings.steps}  contrastive loss {loss.item():.3f}  "
                f"{time.perf_counter() - start:.0f}s")
    save_checkpoint(out_path, {"state_dict": model.state_dict()})
    return out_path


def ensure_pretrained(settings: PretrainSettings, storage: Path,
                      log: Callable[[str], None] = print) -> Path:
    path = Path(storage) / "weights" / f"{settings.clip}-synthetic-{settings.key()}.pt"
    if path.is_file():
        log(f"tiny CLIP weights: {path} (cached)")
        return path
    return pretrain_clip(settings, path, log)


def resolve_weights(config: Config, storage: Path, log: Callable[[str], None] = print) -> Config:
    """Replace model.weights == SYNTHETIC_WEIGHTS by the cached pre-trained checkpoint."""
    if config.model.weights != SYNTHETIC_WEIGHTS:
        return config
    settings = PretrainSettings(config.model.clip, config.model.image_size,
                                config.model.context_length)
    path = ensure_pretrained(settings, storage, log)
    return config.replace({"model.weights": str(Path(path).resolve())})
