"""The tiny CLIP's synthetic pre-training: captions, hard negatives, caching, loading."""
from __future__ import annotations

import random

import torch

from hivg.config import load_preset
from hivg.data import synthetic
from hivg.model.build import build_model
from hivg.model.convert import load_clip_state_dict
from hivg.train.pretrain import PretrainSettings, captions, clip_loss, ensure_pretrained


def test_hard_negative_changes_exactly_one_attribute_of_one_object():
    rng = random.Random(0)
    for _ in range(50):
        w, h, objects = synthetic.make_scene(rng)
        positive, negative = captions(objects, w, h, rng)
        pos, neg = positive.split(), negative.split()
        assert len(pos) == len(neg) == 5 * min(4, len(objects))
        diff = [i for i, (a, b) in enumerate(zip(pos, neg)) if a != b]
        assert len(diff) == 1 and diff[0] % 5 in (0, 1, 2)  # size, colour or shape; never place


def test_hard_negatives_raise_the_loss_when_they_match_the_image_best():
    img = torch.nn.functional.one_hot(torch.arange(4), 8).float()
    text = img.clone()
    scale = torch.tensor(2.0)
    easy = clip_loss(img, text, scale, negative_features=-img)
    hard = clip_loss(img, text, scale, negative_features=img + 0.01)
    assert hard > easy > clip_loss(img, text, scale) - 1e-6


def test_pretraining_is_cached_and_loads_through_the_weight_loader(tmp_path):
    settings = PretrainSettings("hivg-tiny", 128, 24, scenes=24, steps=2, batch_size=8)
    messages = []
    path = ensure_pretrained(settings, tmp_path, log=messages.append)
    assert path.is_file() and path.parent == tmp_path / "weights"
    again = ensure_pretrained(settings, tmp_path, log=messages.append)
    assert again == path and "cached" in messages[-1]
    state = load_clip_state_dict(path)  # the same path as real CLIP weights (weights_only)
    assert "visual.conv1.weight" in state
    model = build_model(load_preset("tiny").replace({"model.weights": str(path)}))
    assert torch.equal(model.clip.visual.conv1.weight, state["visual.conv1.weight"])
    # Another setting is another cache entry.
    other = PretrainSettings("hivg-tiny", 128, 24, scenes=24, steps=3, batch_size=8)
    assert other.key() != settings.key()
