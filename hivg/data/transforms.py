"""Letterbox onto a square canvas, training augmentation, and the inverse box mapping.

Every geometric step (crop, resize, translation) is a uniform scale plus a shift, so the
whole path from original image pixels to canvas pixels is one `Placement`:

    canvas = orig * scale + offset        (offset = paste - crop_top_left * scale)

The image is cropped and resized in ONE PIL resize with a source box, then pasted at an
integer position; the image's size on the canvas is floored so that the mapping is exact
(at most one canvas pixel of the original's right/bottom edge is dropped; boxes keep the
exact mapping, so one may reach into that sliver of padding). A shard that
holds a pre-resized image is mapped through the same Placement: the source box is scaled by
stored/original size, so boxes, scale and offset are identical to the loose-file path.

Evaluation: long side to S, centred (the released code's rounding). Training (docs/design.md,
the released recipe expressed as fractions of the canvas, which is 640 there):
  - with p=0.5, unless the phrase has a spatial word: resize the short side to
    {400, 500, 600}/640 S, crop a random {384..600}/640 S rectangle that keeps the whole
    box (20 tries, else no crop), then resize as below;
  - otherwise (or after the crop) resize the long side to S * k/7, k in 1..7 (the released
    `imsize - 32 i` at imsize 224);
  - colour jitter (brightness, contrast, saturation 0.4, random order) with p=0.8;
  - random translation: the image is pasted anywhere inside the canvas;
  - no horizontal flip (it would swap left and right in the phrase).
The spatial words are the released five plus above/below/largest/smallest: a crop can cut
the anchor of "the circle above the square" or a larger object out of view.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch import Tensor
from torchvision.ops import box_convert

from hivg.ops.boxes import clamp_to_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RELEASED_SPATIAL_WORDS = ("left", "right", "top", "bottom", "middle")
SPATIAL_WORDS = RELEASED_SPATIAL_WORDS + ("above", "below", "largest", "smallest")
# Word starts, so "leftmost" and "top-most" count and "stop" does not.
_SPATIAL_RE = re.compile(r"\b(" + "|".join(SPATIAL_WORDS) + r")")

RESIZE_FRACTIONS = tuple(k / 7 for k in range(7, 0, -1))
CROP_SHORT_SIDES = (400 / 640, 500 / 640, 600 / 640)
CROP_MIN, CROP_MAX = 384 / 640, 600 / 640
CROP_TRIES = 20


def has_spatial_word(phrase: str) -> bool:
    return _SPATIAL_RE.search(phrase) is not None


@dataclass(frozen=True)
class Placement:
    """Where the original image lands on the canvas."""

    crop: tuple[float, float, float, float]  # visible source rectangle, original pixels (xyxy)
    scale: float                             # canvas pixels per original pixel
    paste: tuple[int, int]                   # canvas pixel of the crop's top-left corner
    size: tuple[int, int]                    # (w, h) of the image on the canvas

    @property
    def offset(self) -> tuple[float, float]:
        return (self.paste[0] - self.crop[0] * self.scale, self.paste[1] - self.crop[1] * self.scale)


def _place(x0: float, y0: float, width: float, height: float, scale: float, canvas: int,
           paste: Optional[tuple[int, int]] = None,
           rng: Optional[random.Random] = None) -> Placement:
    """Scale the source rectangle, floor its canvas size, centre it or paste it at random."""
    nw = max(1, min(canvas, math.floor(width * scale + 1e-6)))
    nh = max(1, min(canvas, math.floor(height * scale + 1e-6)))
    if paste is None:
        if rng is None:  # the released code's centring
            paste = (round((canvas - nw) / 2 - 0.1), round((canvas - nh) / 2 - 0.1))
        else:  # the exact (unfloored) extent stays on the canvas, so boxes are never cut
            paste = (rng.randint(0, max(0, canvas - math.ceil(width * scale - 1e-6))),
                     rng.randint(0, max(0, canvas - math.ceil(height * scale - 1e-6))))
    crop = (x0, y0, x0 + nw / scale, y0 + nh / scale)
    return Placement(crop, scale, paste, (nw, nh))


def eval_placement(width: int, height: int, canvas: int) -> Placement:
    return _place(0.0, 0.0, width, height, canvas / max(width, height), canvas)


def _random_crop(width: int, height: int, box: Sequence[float], canvas: int,
                 rng) -> Optional[tuple[float, float, float, float]]:
    """A crop rectangle (x0, y0, w, h) in original pixels that contains the whole box."""
    r = rng.choice(CROP_SHORT_SIDES) * canvas / min(width, height)
    rw, rh = width * r, height * r
    lo, hi = CROP_MIN * canvas, CROP_MAX * canvas
    if min(rw, rh) < lo:
        return None
    for _ in range(CROP_TRIES):
        cw, ch = rng.uniform(lo, min(rw, hi)), rng.uniform(lo, min(rh, hi))
        x0, y0 = rng.uniform(0, rw - cw) / r, rng.uniform(0, rh - ch) / r
        cw, ch = cw / r, ch / r
        if x0 <= box[0] and y0 <= box[1] and box[2] <= x0 + cw and box[3] <= y0 + ch:
            return x0, y0, cw, ch
    return None


def train_placement(width: int, height: int, box: Sequence[float], phrase: str, canvas: int,
                    rng=None, *, crop_p: float = 0.5, translate: bool = True) -> Placement:
    rng = rng or random
    region = (0.0, 0.0, float(width), float(height))
    if not has_spatial_word(phrase) and rng.random() < crop_p:
        region = _random_crop(width, height, box, canvas, rng) or region
    long_side = rng.choice(RESIZE_FRACTIONS) * canvas
    scale = long_side / max(region[2], region[3])
    return _place(*region, scale, canvas, rng=rng if translate else None)


def map_box(box: Sequence[float], placement: Placement,
            canvas: int) -> tuple[float, float, float, float]:
    """Original-pixel xyxy box -> canvas-pixel xyxy, clipped to the canvas.

    Crops always keep the whole box, so the box is never cut; it may reach at most one
    canvas pixel into the padding where the image's canvas size was floored (clipping it
    to the image there would flatten a thin border box at small scales)."""
    s, (dx, dy) = placement.scale, placement.offset
    x1, y1, x2, y2 = (box[0] * s + dx, box[1] * s + dy, box[2] * s + dx, box[3] * s + dy)
    return (min(max(x1, 0.0), canvas), min(max(y1, 0.0), canvas),
            min(max(x2, 0.0), canvas), min(max(y2, 0.0), canvas))


def colour_jitter(image: Image.Image, rng, strength: float = 0.4) -> Image.Image:
    """Brightness, contrast and saturation by U(1 - strength, 1 + strength), random order."""
    enhancers = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    rng.shuffle(enhancers)
    for enhancer in enhancers:
        image = enhancer(image).enhance(rng.uniform(1 - strength, 1 + strength))
    return image


# Per-pixel work in numpy: torch's intra-op thread pool costs more than it saves on one
# small image (10x slower with 2 threads in the main process).
_MEAN_255 = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
_INV_STD_255 = 1.0 / (np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0)


def render(image: Image.Image, orig_size: tuple[int, int], placement: Placement, canvas: int,
           jitter_rng=None, jitter_strength: float = 0.4) -> tuple[Tensor, Tensor]:
    """The normalised (3, S, S) canvas (padding is 0 after normalisation) and the (S, S)
    bool pad mask (True = padding). `image` may be a pre-resized copy of the original."""
    fx, fy = image.width / orig_size[0], image.height / orig_size[1]
    c = placement.crop
    source = (max(0.0, c[0] * fx), max(0.0, c[1] * fy),
              min(float(image.width), c[2] * fx), min(float(image.height), c[3] * fy))
    region = image.convert("RGB").resize(placement.size, Image.BILINEAR, box=source)
    if jitter_rng is not None:
        region = colour_jitter(region, jitter_rng, jitter_strength)
    pixels = (np.asarray(region, dtype=np.float32) - _MEAN_255) * _INV_STD_255  # (h, w, 3)
    out = np.zeros((3, canvas, canvas), dtype=np.float32)
    mask = np.ones((canvas, canvas), dtype=bool)
    (px, py), (nw, nh) = placement.paste, placement.size
    out[:, py:py + nh, px:px + nw] = pixels.transpose(2, 0, 1)
    mask[py:py + nh, px:px + nw] = False
    return torch.from_numpy(out), torch.from_numpy(mask)


class LetterboxTransform:
    """Image + box (+ phrase) -> canvas tensors; augmentation only when `train`."""

    def __init__(self, canvas_size: int, train: bool = False, *, crop_p: float = 0.5,
                 jitter_p: float = 0.8, jitter_strength: float = 0.4,
                 translate: bool = True) -> None:
        self.canvas, self.train = canvas_size, train
        self.crop_p, self.jitter_p, self.jitter_strength = crop_p, jitter_p, jitter_strength
        self.translate = translate

    def placement(self, orig_size: tuple[int, int], box: Sequence[float], phrase: str,
                  rng=None) -> Placement:
        if not self.train:
            return eval_placement(orig_size[0], orig_size[1], self.canvas)
        return train_placement(orig_size[0], orig_size[1], box, phrase, self.canvas, rng,
                               crop_p=self.crop_p, translate=self.translate)

    def __call__(self, image: Image.Image, orig_size: tuple[int, int], box: Sequence[float],
                 phrase: str = "", rng=None) -> dict[str, Tensor]:
        rng = rng or random
        return self.apply(image, orig_size, box, self.placement(orig_size, box, phrase, rng), rng)

    def apply(self, image: Image.Image, orig_size: tuple[int, int], box: Sequence[float],
              placement: Placement, rng=None) -> dict[str, Tensor]:
        """Render a placement chosen beforehand (the dataset picks it before decoding, so a
        JPEG can be decoded at reduced size with PIL's draft mode)."""
        rng = rng or random
        jitter = rng if self.train and rng.random() < self.jitter_p else None
        pixels, mask = render(image, orig_size, placement, self.canvas, jitter,
                              self.jitter_strength)
        x1, y1, x2, y2 = map_box(box, placement, self.canvas)
        cxcywh = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        return {
            "image": pixels,
            "pad_mask": mask,
            "box": torch.tensor([min(max(v / self.canvas, 0.0), 1.0) for v in cxcywh],
                                dtype=torch.float32),
            "scale": torch.tensor(placement.scale, dtype=torch.float32),
            "offset": torch.tensor(placement.offset, dtype=torch.float32),
        }


def canvas_to_image_boxes(pred_cxcywh_norm: Tensor, scale: Tensor, offset: Tensor,
                          orig_size: Tensor, canvas_size: int) -> Tensor:
    """Predicted (N, 4) cxcywh in [0, 1] of the canvas -> (N, 4) xyxy pixels of the original
    image, clamped to it. scale (N,), offset (N, 2) and orig_size (N, 2) = (w, h) come from
    the batch: canvas = orig * scale + offset."""
    canvas_xyxy = box_convert(pred_cxcywh_norm, "cxcywh", "xyxy") * canvas_size
    shift = offset.to(canvas_xyxy).repeat(1, 2)
    orig = (canvas_xyxy - shift) / scale.to(canvas_xyxy).reshape(-1, 1)
    size = orig_size.to(canvas_xyxy)
    return clamp_to_image(orig, size[:, 0], size[:, 1])
