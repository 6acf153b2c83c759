"""Letterbox, augmentation and the inverse box mapping; tokenisation."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from hivg.data.tokens import get_tokenizer, tokenize
from hivg.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, LetterboxTransform,
                                  canvas_to_image_boxes, eval_placement, has_spatial_word,
                                  map_box, render, train_placement)

BACKGROUND, TARGET = (40, 40, 40), (250, 30, 30)
W, H = 160, 120

# Boxes touching each border, the corners, and the whole image.
BORDER_BOXES = [
    (0, 0, 20, 15), (140, 0, 160, 15), (0, 105, 20, 120), (140, 105, 160, 120),
    (0, 40, 10, 80), (150, 40, 160, 80), (60, 0, 100, 5), (60, 115, 100, 120),
    (0, 0, 160, 120), (159, 119, 160, 120),
]


def picture(box) -> Image.Image:
    image = Image.new("RGB", (W, H), BACKGROUND)
    x1, y1, x2, y2 = (int(v) for v in box)
    image.paste(TARGET, (x1, y1, x2, y2))
    return image


def unnormalise(pixels: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((pixels * std + mean) * 255).permute(1, 2, 0).numpy()


def test_eval_letterbox_mask_box_and_padding():
    out = LetterboxTransform(64)(picture((0, 0, 160, 120)), (W, H), (0, 0, 160, 120))
    # long side 160 -> 64: scale 0.4, image 64 x 48 centred, 8 rows of padding above and below
    assert out["scale"].item() == pytest.approx(0.4)
    assert out["offset"].tolist() == pytest.approx([0.0, 8.0])
    expected_mask = torch.ones(64, 64, dtype=torch.bool)
    expected_mask[8:56, :] = False
    assert torch.equal(out["pad_mask"], expected_mask)
    assert out["box"].tolist() == pytest.approx([0.5, 0.5, 1.0, 0.75])
    assert torch.all(out["image"][:, out["pad_mask"]] == 0)  # padding is 0 after normalisation
    assert unnormalise(out["image"])[30, 30] == pytest.approx(TARGET, abs=1)
    assert out["image"].dtype == torch.float32 and out["image"].shape == (3, 64, 64)


@pytest.mark.parametrize("box", BORDER_BOXES)
@pytest.mark.parametrize("train", [False, True])
def test_border_boxes_follow_the_image(box, train):
    """The mapped box lies on the target's pixels, inside the unpadded region, and maps back
    onto the original box; over many random train placements (crop, scale, translation)."""
    transform = LetterboxTransform(64, train=train, jitter_p=0.0)
    image = picture(box)
    for seed in range(40 if train else 1):
        out = transform(image, (W, H), box, "the thing", rng=random.Random(seed))
        cx, cy, bw, bh = out["box"].tolist()
        x1, y1, x2, y2 = (cx - bw / 2) * 64, (cy - bh / 2) * 64, (cx + bw / 2) * 64, (cy + bh / 2) * 64
        assert bw > 0 and bh > 0
        inside = ~out["pad_mask"]
        rows, cols = torch.nonzero(inside, as_tuple=True)
        # inside the image's canvas region, up to the one floored pixel at the right/bottom
        assert cols.min() <= x1 + 1e-4 and x2 <= cols.max() + 2 + 1e-4
        assert rows.min() <= y1 + 1e-4 and y2 <= rows.max() + 2 + 1e-4
        # a pixel well inside the box shows the target colour (when the box is big enough)
        if x2 - x1 >= 3 and y2 - y1 >= 3:
            pixel = unnormalise(out["image"])[int((y1 + y2) / 2), int((x1 + x2) / 2)]
            assert pixel == pytest.approx(TARGET, abs=3)
        back = canvas_to_image_boxes(out["box"][None], out["scale"][None], out["offset"][None],
                                     torch.tensor([[W, H]], dtype=torch.float32), 64)[0]
        assert back.tolist() == pytest.approx(list(box), abs=1e-3)


def test_canvas_to_image_boxes_inverts_the_letterbox_for_a_batch():
    sizes = [(160, 120), (120, 160), (640, 427), (33, 200)]
    boxes = [(10.5, 20.25, 90.0, 100.0), (5, 7, 30, 150), (100, 50, 400, 300), (1, 100, 32, 199)]
    preds, scales, offsets = [], [], []
    for (w, h), box in zip(sizes, boxes):
        p = eval_placement(w, h, 224)
        x1, y1, x2, y2 = map_box(box, p, 224)
        preds.append([(x1 + x2) / 448, (y1 + y2) / 448, (x2 - x1) / 224, (y2 - y1) / 224])
        scales.append(p.scale)
        offsets.append(p.offset)
    back = canvas_to_image_boxes(torch.tensor(preds), torch.tensor(scales), torch.tensor(offsets),
                                 torch.tensor(sizes, dtype=torch.float32), 224)
    assert torch.allclose(back, torch.tensor(boxes, dtype=torch.float32), atol=1e-3)
    # a prediction spilling over the padding is clamped to the image
    full = canvas_to_image_boxes(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), torch.tensor([0.4]),
                                 torch.tensor([[0.0, 8.0]]), torch.tensor([[160.0, 120.0]]), 64)
    assert full.tolist() == [[0.0, 0.0, 160.0, 120.0]]


@pytest.mark.parametrize("phrase,spatial", [
    ("the leftmost circle", True), ("man on the right", True), ("top-left corner", True),
    ("the bottom shelf", True), ("the middle one", True), ("the square above the cup", True),
    ("the largest dog", True), ("stop sign", False), ("a red circle", False),
    ("mid-size car", False), ("bright light", False),
])
def test_spatial_words(phrase, spatial):
    assert has_spatial_word(phrase) is spatial


def test_random_crop_never_happens_for_spatial_phrases():
    box = (60, 40, 90, 70)
    crops = [train_placement(W, H, box, "a red circle", 64, random.Random(s), crop_p=1.0).crop
             for s in range(30)]
    assert any(c[0] > 0 or c[1] > 0 for c in crops)  # crops happen...
    for c in crops:  # ...and always keep the whole box
        assert c[0] <= box[0] and c[1] <= box[1] and box[2] <= c[2] + 1e-6 and box[3] <= c[3] + 1e-6
    for s in range(30):
        p = train_placement(W, H, box, "the circle left of the cup", 64, random.Random(s), crop_p=1.0)
        assert p.crop[:2] == (0.0, 0.0)


def test_training_varies_scale_and_position_but_never_flips():
    placements = [train_placement(W, H, (10, 10, 30, 30), "a cup", 64, random.Random(s))
                  for s in range(40)]
    assert len({p.scale for p in placements}) > 3
    assert len({p.paste for p in placements}) > 10
    for p in placements:  # left stays left: the mapping is a positive scale plus a shift
        assert p.scale > 0
        left, right = map_box((0, 50, 10, 60), p, 64), map_box((150, 50, 160, 60), p, 64)
        assert left[0] < right[0]
    assert all(eval_placement(W, H, 64) == eval_placement(W, H, 64) for _ in range(3))


def test_colour_jitter_changes_pixels_not_geometry():
    box = (40, 30, 100, 90)
    plain = LetterboxTransform(64, train=True, jitter_p=0.0)(picture(box), (W, H), box, "x",
                                                             rng=random.Random(1))
    jittered = LetterboxTransform(64, train=True, jitter_p=1.0)(picture(box), (W, H), box, "x",
                                                                rng=random.Random(1))
    for key in ("box", "scale", "offset", "pad_mask"):
        assert torch.equal(plain[key], jittered[key])
    assert not torch.equal(plain["image"], jittered["image"])


def test_a_pre_resized_image_maps_like_the_original():
    box = (40, 30, 100, 90)
    image = picture(box)
    small = image.resize((80, 60), Image.BICUBIC)
    p = eval_placement(W, H, 64)
    full_pixels, full_mask = render(image, (W, H), p, 64)
    small_pixels, small_mask = render(small, (W, H), p, 64)
    assert torch.equal(full_mask, small_mask)
    assert (full_pixels - small_pixels).abs().mean() < 0.1


def test_tokens():
    tokens = tokenize("The  RED circle", 24)
    assert tokens.shape == (1, 24) and tokens.dtype == torch.int64
    assert torch.equal(tokens, tokenize("the red circle", 24))
    sot, eot = tokens[0, 0].item(), tokens[0].max().item()
    assert (sot, eot) == (49406, 49407)
    assert tokenize(["a", "b c"], 77).shape == (2, 77)
    long = tokenize(" ".join(["word"] * 40), 8)
    assert long.shape == (1, 8) and long[0, -1].item() == 49407  # truncated, end token kept
    assert get_tokenizer(24) is get_tokenizer(24)
