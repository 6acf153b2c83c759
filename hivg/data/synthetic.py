"""The synthetic grounding benchmark: coloured shapes and referring expressions.

Images are W x H with W, H drawn independently from 128..192 pixels (not square, so the
letterbox and its pad mask are exercised; small, so decoding is cheap on a CPU). Each holds
3..6 shapes (circle, square, triangle, diamond) in 5 colours and two size classes (small
sides 14..22 px, large 30..42 px), at least GAP pixels apart. An image draws its colours
from a pool of 2 (sometimes 3) and its shapes from 2 (sometimes 3), so objects share
attributes: colour alone identifies a target only rarely, and identical twins can only be
told apart by where they are.

Expressions (one per target, each resolving to exactly one object), with their type:
  attribute    the shortest unique description: "the small red circle", "the blue shape"
  relational   "the circle to the left of the green square" (also: to the right of, above,
               below); the anchor is named by a unique description, the target's own
               description is ambiguous without the relation
  superlative  "the leftmost red shape" (rightmost, topmost, bottommost, largest, smallest)
               among at least two objects matching the description
Resolution rules (the tests re-implement them independently):
  - a description matches an object when every attribute it names is equal;
  - "X to the left of A": A is the only object matching its description; the target is
    strictly left of A (its right edge <= A's left edge) and is the only other object
    matching X whose centre is left of A's centre (same for right / above / below);
  - "the leftmost X": among >= 2 objects matching X, the target's centre is left of every
    other's by >= POS_MARGIN pixels (largest / smallest: side ratio >= SIZE_RATIO).
Types are drawn per target (attribute 0.4, relational 0.4, superlative 0.2) with a fallback
to the other types when the drawn one has no valid expression (twins have no attribute
expression). With seed 0: 33% attribute, 28% relational, 38% superlative, so 67% spatial;
the target's colour is unique in its image for only 15% of the expressions.

Sizes: 10,000 train / 1,000 val / 1,000 test expressions by default, with up to
MAX_EXPRESSIONS_PER_IMAGE targets per image (3.8 on average: 2,606 + 261 + 258 images with
seed 0). Several expressions per image, as in RefCOCO, make the phrase necessary (the same
image asks for different objects) and keep generation and decoding cheap. 10k train
expressions give each type thousands of examples while an epoch stays short on a CPU;
1k val/test keep the standard error of acc50 at most 1.6 points. Splits use disjoint
images. Everything is derived from (seed, split, image index), so the output is identical
for the same seed on any machine with the same Pillow version.

Files (under {storage}/data/synthetic/raw): images/{split}_{i:05d}.png; splits/
synthetic_{split}.pth (RefCOCO tuples: image, {height, width}, [x, y, w, h], phrase,
polygon); objects.json, the sidecar with every image's objects and every expression's
target and type, row-aligned with the split files.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from PIL import Image, ImageDraw

COLOURS = {
    "red": (215, 45, 45),
    "green": (45, 160, 65),
    "blue": (50, 90, 215),
    "yellow": (230, 195, 35),
    "purple": (145, 65, 185),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZE_RANGES = {"small": (14, 22), "large": (30, 42)}
IMAGE_SIDE = (128, 192)
OBJECT_COUNTS = (3, 4, 4, 5, 5, 6)
GAP = 4
MAX_EXPRESSIONS_PER_IMAGE = 4
POS_MARGIN = 8.0
SIZE_RATIO = 1.25
TYPE_WEIGHTS = {"attribute": 0.4, "relational": 0.4, "superlative": 0.2}
DEFAULT_SIZES = {"train": 10_000, "val": 1_000, "test": 1_000}
GENERATOR_VERSION = 1

RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above",
             "below": "below"}
SUPERLATIVES = ("leftmost", "rightmost", "topmost", "bottommost", "largest", "smallest")
ATTRIBUTES = ("size", "colour", "shape")


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    size: str                                  # small | large
    box: tuple[float, float, float, float]     # xyxy pixels (a square of side x2 - x1)

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def cy(self) -> float:
        return (self.box[1] + self.box[3]) / 2

    @property
    def side(self) -> float:
        return self.box[2] - self.box[0]


@dataclass(frozen=True)
class Expression:
    target: int
    text: str
    expr_type: str


# ----------------------------------------------------------------------------- scenes


def _separated(a: tuple, b: tuple) -> bool:
    return (a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or
            b[3] + GAP <= a[1])


def make_scene(rng: random.Random) -> tuple[int, int, list[Shape]]:
    """A scene with at least 3 objects (crowded draws that place fewer are redrawn)."""
    while True:
        width, height, objects = _draw_layout(rng)
        if len(objects) >= 3:
            return width, height, objects


def _draw_layout(rng: random.Random) -> tuple[int, int, list[Shape]]:
    width, height = rng.randint(*IMAGE_SIDE), rng.randint(*IMAGE_SIDE)
    colours = rng.sample(sorted(COLOURS), 2 if rng.random() < 0.7 else 3)
    shapes = rng.sample(SHAPES, 2 if rng.random() < 0.6 else 3)
    objects: list[Shape] = []
    for _ in range(rng.choice(OBJECT_COUNTS)):
        size = rng.choice(sorted(SIZE_RANGES))
        side = rng.randint(*SIZE_RANGES[size])
        for _try in range(60):
            x, y = rng.randint(2, width - side - 2), rng.randint(2, height - side - 2)
            box = (float(x), float(y), float(x + side), float(y + side))
            if all(_separated(box, o.box) for o in objects):
                objects.append(Shape(rng.choice(colours), rng.choice(shapes), size, box))
                break
    return width, height, objects


def outline(obj: Shape) -> list[tuple[float, float]]:
    """The shape's polygon in pixel coordinates (a 24-gon for circles)."""
    x1, y1, x2, y2 = obj.box
    cx, cy, r = obj.cx, obj.cy, obj.side / 2
    if obj.shape == "square":
        return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    if obj.shape == "triangle":
        return [(cx, y1), (x2, y2), (x1, y2)]
    if obj.shape == "diamond":
        return [(cx, y1), (x2, cy), (cx, y2), (x1, cy)]
    return [(cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24))
            for k in range(24)]


def draw_scene(width: int, height: int, objects: list[Shape], rng: random.Random) -> Image.Image:
    grey = rng.randint(70, 200)
    image = Image.new("RGB", (width, height), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        base = COLOURS[obj.colour]
        fill = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in base)
        # PIL includes the end pixel: pixels x1 .. x2 - 1 cover [x1, x2) in box coordinates.
        x1, y1, x2, y2 = (int(v) for v in obj.box)
        if obj.shape == "circle":
            draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
        else:
            draw.polygon([(min(px, x2 - 1), min(py, y2 - 1)) for px, py in outline(obj)],
                         fill=fill)
    return image


# ----------------------------------------------------------------------------- descriptions


Description = tuple[Optional[str], Optional[str], Optional[str]]  # size, colour, shape


def describe(obj: Shape, attributes: tuple[str, ...]) -> Description:
    return (obj.size if "size" in attributes else None,
            obj.colour if "colour" in attributes else None,
            obj.shape if "shape" in attributes else None)


def matches(obj: Shape, desc: Description) -> bool:
    size, colour, shape = desc
    return ((size is None or obj.size == size) and (colour is None or obj.colour == colour)
            and (shape is None or obj.shape == shape))


def noun_phrase(desc: Description, superlative: str = "") -> str:
    size, colour, shape = desc
    words = ["the", superlative, size or "", colour or "", shape or "shape"]
    return " ".join(w for w in words if w)


def _attribute_subsets() -> list[tuple[str, ...]]:
    subsets = [(), *((a,) for a in ATTRIBUTES)]
    subsets += [(a, b) for i, a in enumerate(ATTRIBUTES) for b in ATTRIBUTES[i + 1:]]
    return subsets + [ATTRIBUTES]


SUBSETS = _attribute_subsets()


def matching(objects: list[Shape], desc: Description) -> list[int]:
    return [i for i, o in enumerate(objects) if matches(o, desc)]


def unique_descriptions(objects: list[Shape], target: int) -> list[Description]:
    """The target's unique descriptions with the fewest attributes."""
    for count in (1, 2, 3):
        descs = [describe(objects[target], attrs) for attrs in SUBSETS if len(attrs) == count]
        found = [d for d in descs if matching(objects, d) == [target]]
        if found:
            return found
    return []


def _loosely(rel: str, o: Shape, a: Shape) -> bool:
    return {"left": o.cx < a.cx, "right": o.cx > a.cx, "above": o.cy < a.cy,
            "below": o.cy > a.cy}[rel]


def _strictly(rel: str, o: Shape, a: Shape) -> bool:
    return {"left": o.box[2] <= a.box[0], "right": o.box[0] >= a.box[2],
            "above": o.box[3] <= a.box[1], "below": o.box[1] >= a.box[3]}[rel]


def _beats(kind: str, t: Shape, o: Shape) -> bool:
    """Whether t is clearly more {kind} than o (positions by POS_MARGIN px, sides by SIZE_RATIO)."""
    if kind == "largest":
        return t.side >= SIZE_RATIO * o.side
    if kind == "smallest":
        return o.side >= SIZE_RATIO * t.side
    return {"leftmost": t.cx + POS_MARGIN <= o.cx, "rightmost": t.cx >= o.cx + POS_MARGIN,
            "topmost": t.cy + POS_MARGIN <= o.cy, "bottommost": t.cy >= o.cy + POS_MARGIN}[kind]


def attribute_expressions(objects: list[Shape], target: int) -> list[str]:
    return [noun_phrase(d) for d in unique_descriptions(objects, target)]


def superlative_expressions(objects: list[Shape], target: int) -> list[str]:
    t = objects[target]
    found = []
    for kind in SUPERLATIVES:
        for attrs in SUBSETS[:-1]:  # at most two attributes: "the leftmost red circle"
            if kind in ("largest", "smallest") and "size" in attrs:
                continue
            desc = describe(t, attrs)
            group = matching(objects, desc)
            if len(group) < 2:
                continue
            if all(_beats(kind, t, objects[o]) for o in group if o != target):
                found.append(noun_phrase(desc, kind))
    return found


def relational_expressions(objects: list[Shape], target: int) -> list[str]:
    t = objects[target]
    found = []
    for anchor, a in enumerate(objects):
        if anchor == target:
            continue
        anchor_descs = unique_descriptions(objects, anchor)
        if not anchor_descs:
            continue
        for rel, words in RELATIONS.items():
            if not _strictly(rel, t, a):
                continue
            for attrs in SUBSETS:
                desc = describe(t, attrs)
                group = [o for o in matching(objects, desc) if o != anchor]
                if len(group) < 2:  # the relation must be needed
                    continue
                if [o for o in group if _loosely(rel, objects[o], a)] == [target]:
                    for anchor_desc in anchor_descs:
                        found.append(f"{noun_phrase(desc)} {words} {noun_phrase(anchor_desc)}")
    return found


_GENERATORS = {"attribute": attribute_expressions, "relational": relational_expressions,
               "superlative": superlative_expressions}


def expression_for(objects: list[Shape], target: int, rng: random.Random) -> Optional[Expression]:
    types = list(TYPE_WEIGHTS)
    first = rng.choices(types, weights=list(TYPE_WEIGHTS.values()))[0]
    rest = [t for t in types if t != first]
    rng.shuffle(rest)
    for expr_type in [first, *rest]:
        options = _GENERATORS[expr_type](objects, target)
        if options:
            return Expression(target, rng.choice(options), expr_type)
    return None


def scene_expressions(objects: list[Shape], rng: random.Random) -> list[Expression]:
    targets = list(range(len(objects)))
    rng.shuffle(targets)
    found = []
    for target in targets:
        expr = expression_for(objects, target, rng)
        if expr is not None:
            found.append(expr)
        if len(found) == MAX_EXPRESSIONS_PER_IMAGE:
            break
    return found


# ----------------------------------------------------------------------------- files


def _image_rng(seed: int, split: str, index: int) -> random.Random:
    # String seeds hash with SHA-512: the same on every run and machine.
    return random.Random(f"hivg-synthetic/{seed}/{split}/{index}")


def generate_split(split: str, count: int, seed: int, images_dir: Path,
                   sidecar: dict) -> list[tuple]:
    """Draw images until `count` expressions; write the PNGs; return the RefCOCO tuples."""
    rows: list[tuple] = []
    expressions = sidecar["expressions"].setdefault(split, [])
    index = 0
    while len(rows) < count:
        rng = _image_rng(seed, split, index)
        width, height, objects = make_scene(rng)
        exprs = scene_expressions(objects, rng)[:count - len(rows)]
        index += 1
        if not exprs:
            continue
        name = f"{split}_{index - 1:05d}.png"
        draw_scene(width, height, objects, rng).save(images_dir / name, compress_level=1)
        sidecar["images"][name] = {"width": width, "height": height,
                                   "objects": [asdict(o) for o in objects]}
        for e in exprs:
            t = objects[e.target]
            x1, y1, x2, y2 = t.box
            polygon = [[round(v, 2) for point in outline(t) for v in point]]
            rows.append((name, {"height": height, "width": width}, [x1, y1, x2 - x1, y2 - y1],
                         e.text, polygon))
            expressions.append({"image": name, "target": e.target, "expr_type": e.expr_type})
    return rows


def generate(raw_dir: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write images, split files and the objects sidecar under raw_dir; return raw_dir."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    images_dir, splits_dir = raw_dir / "images", raw_dir / "splits"
    images_dir.mkdir(parents=True, exist_ok=True)
    splits_dir.mkdir(parents=True, exist_ok=True)
    sidecar: dict = {"version": GENERATOR_VERSION, "seed": seed, "sizes": sizes,
                     "images": {}, "expressions": {}}
    for split, count in sizes.items():
        rows = generate_split(split, count, seed, images_dir, sidecar)
        torch.save(rows, splits_dir / f"synthetic_{split}.pth")
    (raw_dir / "objects.json").write_text(json.dumps(sidecar))
    return raw_dir


def load_sidecar(raw_dir: Path) -> dict:
    return json.loads((Path(raw_dir) / "objects.json").read_text())
