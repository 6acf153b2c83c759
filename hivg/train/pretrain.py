"""Pre-training of a small CLIP on synthetic scenes: captions plus a dense region-phrase term.

HiVG starts from a pre-trained CLIP. Real CLIP weights are far too big for a 2-core demo, so
the tiny backbone gets its own short CLIP pre-training: fresh synthetic scenes (drawn from a
seed stream disjoint from the benchmark's images) with captions of two kinds, each with a hard
negative: up to four of their objects, left to right, each with its coarse place ("small red
square top left large yellow triangle middle centre ..."), or a relation and a superlative
that hold in the scene ("small red square to the left of large yellow triangle the topmost
is small blue circle"). The result is saved as an ordinary open_clip state dict and loaded
through the same weight-loading path as real CLIP weights.

Real CLIP's patch tokens say what is where; captions alone did not teach the tiny one that
(a linear read-out of shape from its patch tokens: 0.35, chance 0.25), and HiVG cannot ground
what its backbone does not see. So a dense region-phrase term (as in RegionCLIP) sits beside
the caption loss: every patch inside an object, projected into the joint space, is scored
against the text tower's embeddings of all 40 "size colour shape" phrases. It names
attributes only, never relations: those are HiVG's to learn.

The checkpoint is cached under {storage}/weights/ by a hash of everything that determines it
(model name, sizes, steps, seed, generator version), so every run and trial shares it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hivg.config import Config
from hivg.data import synthetic
from hivg.data.oracle import canvas_box, object_cells
from hivg.data.tokens import tokenize
from hivg.data.transforms import eval_placement, render
from hivg.train.checkpoint import save_checkpoint

# A config value for model.weights that means "the cached synthetic pre-training".
SYNTHETIC_WEIGHTS = "@synthetic-pretrained"
# Bump when the caption format changes: it is part of the cache key.
CAPTION_VERSION = 4


@dataclass(frozen=True)
class PretrainSettings:
    clip: str
    image_size: int
    context_length: int
    scenes: int = 12000
    steps: int = 2400
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    seed: int = 0
    dense_weight: float = 1.0   # the region-phrase term; 0 = captions only

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "generator": synthetic.GENERATOR_VERSION,
                           "captions": CAPTION_VERSION},
                          sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


MAX_CAPTIONED = 4  # 5 words an object: 4 objects + start/end fit a 24-token context


# A caption's coarse places: thirds of the image.
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")


def _phrase(o: synthetic.Shape, width: int, height: int) -> str:
    row = ROWS[min(2, int(3 * o.cy / height))]
    col = COLUMNS[min(2, int(3 * o.cx / width))]
    return f"{o.size} {o.colour} {o.shape} {row} {col}"


def captions(objects: list[synthetic.Shape], width: int, height: int, rng: random.Random
             ) -> tuple[str, str]:
    """A caption of the scene and a hard negative for it: half the time the objects with
    their places (`place_captions`), half the time a relation and a superlative
    (`relation_captions`) when the scene has them."""
    if rng.random() < RELATION_CAPTION_SHARE:
        relational = relation_captions(objects, rng)
        if relational is not None:
            return relational
    return place_captions(objects, width, height, rng)


def place_captions(objects: list[synthetic.Shape], width: int, height: int, rng: random.Random
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


# Words of spatial language, each with its opposite: a caption that says one is false with
# the other, so swapping it makes a hard negative.
OPPOSITE_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}
OPPOSITE_SUPERLATIVE = {"leftmost": "rightmost", "rightmost": "leftmost",
                        "topmost": "bottommost", "bottommost": "topmost",
                        "largest": "smallest", "smallest": "largest"}
RELATION_CAPTION_SHARE = 0.5


def relation_captions(objects: list[synthetic.Shape], rng: random.Random
                      ) -> tuple[str, str] | None:
    """"small red circle to the left of large blue square the topmost is small green
    diamond" (a relation that holds strictly, then a superlative that holds by the benchmark's
    margins) and the same caption with the relation or the superlative turned into its
    opposite, which is then false. None when the scene has neither.

    Real CLIP has read spatial language; without this the tiny text tower never sees the
    benchmark's relation and superlative words. Objects are named by their attributes, never
    by a referring expression, and nothing here touches a box."""
    def name(o: synthetic.Shape) -> str:
        return f"{o.size} {o.colour} {o.shape}"

    pairs = [(rel, a, b) for a in objects for b in objects if a is not b
             for rel in synthetic.RELATIONS if synthetic._strictly(rel, a, b)]
    extremes = [(kind, t) for kind in synthetic.SUPERLATIVES for t in objects
                if all(synthetic._beats(kind, t, o) for o in objects if o is not t)]
    if not pairs and not extremes:
        return None
    relation = rng.choice(pairs) if pairs else None
    extreme = rng.choice(extremes) if extremes else None
    flip_relation = extreme is None or (relation is not None and rng.random() < 0.5)

    def text(flip: bool) -> str:
        parts = []
        if relation is not None:
            rel, a, b = relation
            rel = OPPOSITE_RELATION[rel] if flip and flip_relation else rel
            parts.append(f"{name(a)} {synthetic.RELATIONS[rel]} {name(b)}")
        if extreme is not None:
            kind, t = extreme
            kind = OPPOSITE_SUPERLATIVE[kind] if flip and not flip_relation else kind
            parts.append(f"the {kind} is {name(t)}")
        return " ".join(parts)

    return text(False), text(True)


# Every object phrase the generator can draw, in a fixed order: the dense term's classes.
OBJECT_PHRASES = [f"{size} {colour} {shape}" for size in sorted(synthetic.SIZE_RANGES)
                  for colour in sorted(synthetic.COLOURS) for shape in synthetic.SHAPES]
NO_OBJECT = -1
# Scenes kept out of pre-training to report what the patch tokens tell apart.
HELD_OUT_SCENES = 200
HELD_OUT_SEED_OFFSET = 10_000


def phrase_attributes(index: torch.Tensor) -> torch.Tensor:
    """(size, colour, shape) value indices of OBJECT_PHRASES indices: (...,) -> (..., 3)."""
    per_colour = len(synthetic.SHAPES)
    per_size = len(synthetic.COLOURS) * per_colour
    return torch.stack([index // per_size, (index % per_size) // per_colour, index % per_colour],
                       dim=-1)


@dataclass
class PretrainData:
    images: torch.Tensor            # (N, 3, S, S) float16, normalised
    tokens: torch.Tensor            # (N, L) caption tokens
    negative_tokens: torch.Tensor   # (N, L) hard-negative caption tokens
    patch_labels: torch.Tensor      # (N, grid*grid) index into OBJECT_PHRASES, or NO_OBJECT


def patch_labels(objects: list[synthetic.Shape], placement, image_size: int, grid: int
                 ) -> torch.Tensor:
    """The phrase of the object covering each patch (the patch's centre inside the object's
    box, or the patch under the object's centre), NO_OBJECT elsewhere."""
    labels = torch.full((grid * grid,), NO_OBJECT, dtype=torch.long)
    for o in objects:
        cells, _centre = object_cells(canvas_box(o.box, placement, image_size), grid)
        labels[sorted(cells)] = OBJECT_PHRASES.index(f"{o.size} {o.colour} {o.shape}")
    return labels


def make_pairs(count: int, image_size: int, context_length: int, seed: int, grid: int
               ) -> PretrainData:
    """`count` letterboxed scenes with their caption, a hard-negative caption and the phrase
    of the object under each patch."""
    rng = random.Random(f"pretrain-{seed}")  # never the benchmark's (seed, split, index) stream
    images = torch.empty(count, 3, image_size, image_size, dtype=torch.float16)
    labels = torch.empty(count, grid * grid, dtype=torch.long)
    positives, negatives = [], []
    for i in range(count):
        w, h, objects = synthetic.make_scene(rng)
        picture = synthetic.draw_scene(w, h, objects, rng)
        placement = eval_placement(w, h, image_size)
        pixels, _mask = render(picture, (w, h), placement, image_size)
        images[i] = pixels.half()
        labels[i] = patch_labels(objects, placement, image_size, grid)
        positive, negative = captions(objects, w, h, rng)
        positives.append(positive)
        negatives.append(negative)
    return PretrainData(images, tokenize(positives, context_length),
                        tokenize(negatives, context_length), labels)


def region_phrase_loss(patch_features: torch.Tensor, phrase_features: torch.Tensor,
                       labels: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each object patch against all phrases (patches without an object
    are left out). patch_features (B, P, D), phrase_features (K, D), labels (B, P)."""
    keep = labels != NO_OBJECT
    if not keep.any():
        return patch_features.sum() * 0
    patches = F.normalize(patch_features[keep], dim=-1)
    logits = logit_scale.exp().clamp(max=100) * patches @ F.normalize(phrase_features, dim=-1).t()
    return F.cross_entropy(logits, labels[keep])


def encode_patches(model: torch.nn.Module, images: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled image embedding and every patch token projected into the joint space."""
    visual = model.visual
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = False
    return pooled, tokens @ visual.proj


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


@torch.no_grad()
def region_phrase_accuracy(model: torch.nn.Module, data: PretrainData, phrase_tokens: torch.Tensor,
                           batch_size: int = 100) -> dict[str, float]:
    """Held-out share of object patches whose best-scoring phrase has the right size, colour,
    shape, and all three: what the backbone's patch tokens tell apart."""
    was_training = model.training
    model.eval()
    phrases = F.normalize(model.encode_text(phrase_tokens), dim=-1)
    hits, total = torch.zeros(4), 0
    for start in range(0, len(data.images), batch_size):
        labels = data.patch_labels[start:start + batch_size]
        _pooled, patches = encode_patches(model, data.images[start:start + batch_size].float())
        keep = labels != NO_OBJECT
        predicted = (F.normalize(patches[keep], dim=-1) @ phrases.t()).argmax(-1)
        truth = labels[keep]
        same = phrase_attributes(predicted) == phrase_attributes(truth)   # (n, 3)
        hits += torch.cat([same, same.all(-1, keepdim=True)], dim=-1).float().sum(0)
        total += len(truth)
    model.train(was_training)
    return dict(zip(("size", "colour", "shape", "all"), (hits / max(1, total)).tolist()))


def pretrain_clip(settings: PretrainSettings, out_path: Path,
                  log: Callable[[str], None] = print, progress: bool | None = None) -> Path:
    """Pre-train and save to `out_path`, the held-out report beside it. A progress bar with an
    ETA on a terminal (`progress` None: when stderr is one); log lines every 50 steps."""
    from hivg.model.backbone import create_open_clip
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    model = create_open_clip(settings.clip)
    grid = settings.image_size // model.visual.patch_size[0]
    data = make_pairs(settings.scenes, settings.image_size, settings.context_length,
                      settings.seed, grid)
    held_out = make_pairs(HELD_OUT_SCENES, settings.image_size, settings.context_length,
                          settings.seed + HELD_OUT_SEED_OFFSET, grid)
    phrase_tokens = tokenize(OBJECT_PHRASES, settings.context_length)
    log(f"pre-training {settings.clip}: {settings.scenes} synthetic scenes made in "
        f"{time.perf_counter() - start:.0f}s; {settings.steps} steps of batch {settings.batch_size}"
        f", region-phrase weight {settings.dense_weight:g}")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    warmup = max(1, settings.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / settings.steps)))))
    gen = torch.Generator().manual_seed(settings.seed)
    accuracy: dict[str, float] = {}
    order = torch.randperm(settings.scenes, generator=gen)
    cursor = 0
    bar = tqdm(total=settings.steps, desc="pre-training", unit="step", dynamic_ncols=True,
               disable=not (sys.stderr.isatty() if progress is None else progress))
    for step in range(1, settings.steps + 1):
        if cursor + settings.batch_size > settings.scenes:
            order, cursor = torch.randperm(settings.scenes, generator=gen), 0
        idx = order[cursor:cursor + settings.batch_size]
        cursor += settings.batch_size
        pooled, patches = encode_patches(model, data.images[idx].float())
        caption_loss = clip_loss(pooled, model.encode_text(data.tokens[idx]), model.logit_scale,
                                 model.encode_text(data.negative_tokens[idx]))
        dense_loss = (region_phrase_loss(patches, model.encode_text(phrase_tokens),
                                         data.patch_labels[idx], model.logit_scale)
                      if settings.dense_weight else torch.zeros(()))
        loss = caption_loss + settings.dense_weight * dense_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.update()
        if step % 50 == 0 or step == settings.steps:
            bar.set_postfix_str(f"caption loss {caption_loss.item():.3f}", refresh=False)
            if bar.disable:  # the bar says as much on a terminal
                log(f"  step {step}/{settings.steps}  caption loss {caption_loss.item():.3f}  "
                    f"region-phrase loss {dense_loss.item():.3f}  "
                    f"{time.perf_counter() - start:.0f}s")
        if step % 300 == 0 or step == settings.steps:
            accuracy = region_phrase_accuracy(model, held_out, phrase_tokens)
            with bar.external_write_mode():  # the line above the bar, not through it
                log("  held-out object patches named right: " +
                    "  ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    bar.close()
    save_checkpoint(out_path, {"state_dict": model.state_dict()})
    # What the weights perceive, beside them: runs and READMEs quote it.
    report = {"settings": asdict(settings), "seconds": round(time.perf_counter() - start, 1),
              "held_out_scenes": HELD_OUT_SCENES, "held_out_accuracy": accuracy}
    report_path(out_path).write_text(json.dumps(report, indent=2) + "\n")
    return out_path


def report_path(weights_path: Path) -> Path:
    return Path(weights_path).with_suffix(".json")


def ensure_pretrained(settings: PretrainSettings, storage: Path,
                      log: Callable[[str], None] = print, shipped: bool = True,
                      progress: bool | None = None) -> Path:
    """The cached checkpoint for `settings` under {storage}/weights/: already there, unpacked
    from the copy shipped with hivg (the default recipe's), or pre-trained now (`progress`:
    see pretrain_clip)."""
    from hivg.train.shipped_weights import materialize

    path = Path(storage) / "weights" / f"{settings.clip}-synthetic-{settings.key()}.pt"
    if path.is_file():
        log(f"tiny CLIP weights: {path} (cached)")
        return path
    if shipped and materialize(settings.clip, settings.key(), path, log):
        return path
    return pretrain_clip(settings, path, log, progress)


def resolve_weights(config: Config, storage: Path, log: Callable[[str], None] = print) -> Config:
    """Replace model.weights == SYNTHETIC_WEIGHTS by the cached pre-trained checkpoint, and say
    where CLIP's weights come from (random initialisation too, which happens only by name).
    An open_clip tag stays a tag: every node resolves it through its own cache."""
    from hivg.model.weights import classify, weights_file

    m = config.model
    if m.weights == SYNTHETIC_WEIGHTS:
        settings = PretrainSettings(m.clip, m.image_size, m.context_length)
        path = ensure_pretrained(settings, storage, log)
        return config.replace({"model.weights": str(Path(path).resolve())})
    source = classify(m.weights, m.clip)
    if source.kind == "random":
        log(f"model.weights=random: {m.clip} starts from random values, not pre-trained "
            "weights")
    elif source.kind == "tag":
        log(f"model.weights={m.weights}: open_clip's {m.clip} weights, "
            f"{weights_file(source, log)}")
    elif source.loads:
        log(f"model.weights: {m.weights}")
    return config


def main() -> int:
    """python -m hivg.train.pretrain: pre-train the preset's recipe into {storage}/weights/
    (the way to remake the copy shipped with hivg: then tools/pack_tiny_clip.py)."""
    import argparse

    from hivg.cli import default_storage
    from hivg.config import load_preset

    p = argparse.ArgumentParser(description="Pre-train the tiny CLIP on synthetic scenes.")
    p.add_argument("--storage", default=default_storage(),
                   help="the weights land in STORAGE/weights/ (default: %(default)s)")
    p.add_argument("--preset", default="tiny", help="whose model sizes (default: %(default)s)")
    args = p.parse_args()
    m = load_preset(args.preset).model
    settings = PretrainSettings(m.clip, m.image_size, m.context_length)
    print(f"tiny CLIP weights: {ensure_pretrained(settings, Path(args.storage), shipped=False)}")
    return 0


if __name__ == "__main__":
    from hivg.cli import run_main

    run_main(main)
