"""The tiny CLIP's synthetic pre-training: captions, hard negatives, caching, loading."""
from __future__ import annotations

import json
import random

import torch

from hivg.config import load_preset
from hivg.data import synthetic
from hivg.model.build import build_model
from hivg.model.convert import load_clip_state_dict
from hivg.data.transforms import eval_placement
from hivg.train.pretrain import (NO_OBJECT, OBJECT_PHRASES, OPPOSITE_RELATION, OPPOSITE_SUPERLATIVE, PretrainSettings, captions,
                                 clip_loss, ensure_pretrained, patch_labels, phrase_attributes,
                                 place_captions, region_phrase_loss, relation_captions,
                                 report_path)


def test_hard_negative_changes_exactly_one_attribute_of_one_object():
    rng = random.Random(0)
    for _ in range(50):
        w, h, objects = synthetic.make_scene(rng)
        positive, negative = place_captions(objects, w, h, rng)
        pos, neg = positive.split(), negative.split()
        assert len(pos) == len(neg) == 5 * min(4, len(objects))
        diff = [i for i, (a, b) in enumerate(zip(pos, neg)) if a != b]
        assert len(diff) == 1 and diff[0] % 5 in (0, 1, 2)  # size, colour or shape; never place


def _name(o) -> str:
    return f"{o.size} {o.colour} {o.shape}"


def _holds(caption: str, objects: list) -> bool:
    """Whether a relation caption is true of a scene whose objects have distinct names."""
    words, true = caption.split(), True
    if "is" in words:                           # "... the KIND is SIZE COLOUR SHAPE"
        i = words.index("is")
        target = [o for o in objects if _name(o) == " ".join(words[i + 1:])]
        true = len(target) == 1 and all(synthetic._beats(words[i - 1], target[0], o)
                                        for o in objects if o is not target[0])
        words = words[:i - 2]
    if words:                                   # "A to the left of B"
        text = " ".join(words)
        true = true and any(text == f"{_name(a)} {phrase} {_name(b)}" and
                            synthetic._strictly(rel, a, b)
                            for rel, phrase in synthetic.RELATIONS.items()
                            for a in objects for b in objects if a is not b)
    return true


def test_relation_captions_are_true_and_their_negatives_flip_one_word_to_its_opposite():
    rng = random.Random(3)
    seen = set()
    for _ in range(300):
        w, h, objects = synthetic.make_scene(rng)
        made = relation_captions(objects, rng)
        if made is None:
            continue
        positive, negative = made
        pos, neg = positive.split(), negative.split()
        diff = [(a, b) for a, b in zip(pos, neg) if a != b]
        assert len(pos) == len(neg) and len(diff) == 1, (positive, negative)
        word, opposite = diff[0]
        assert opposite in (OPPOSITE_RELATION.get(word), OPPOSITE_SUPERLATIVE.get(word))
        seen.add(word)
        if len({_name(o) for o in objects}) == len(objects):
            assert _holds(positive, objects) and not _holds(negative, objects), positive
    # Every relation and superlative word is taught.
    assert seen == set(OPPOSITE_RELATION) | set(OPPOSITE_SUPERLATIVE)


def test_captions_mix_places_and_relations():
    rng = random.Random(4)
    kinds = []
    for _ in range(200):
        w, h, objects = synthetic.make_scene(rng)
        positive, _ = captions(objects, w, h, rng)
        kinds.append(bool({"of", "above", "below", "is"} & set(positive.split())))
    assert 0.3 < sum(kinds) / len(kinds) < 0.7


def test_hard_negatives_raise_the_loss_when_they_match_the_image_best():
    img = torch.nn.functional.one_hot(torch.arange(4), 8).float()
    text = img.clone()
    scale = torch.tensor(2.0)
    easy = clip_loss(img, text, scale, negative_features=-img)
    hard = clip_loss(img, text, scale, negative_features=img + 0.01)
    assert hard > easy > clip_loss(img, text, scale) - 1e-6


def test_pretraining_is_cached_and_loads_through_the_weight_loader(tmp_path, capsys):
    settings = PretrainSettings("hivg-tiny", 128, 24, scenes=24, steps=2, batch_size=8)
    messages = []
    path = ensure_pretrained(settings, tmp_path, log=messages.append, progress=True)
    assert path.is_file() and path.parent == tmp_path / "weights"
    # On a terminal a progress bar with rate and ETA stands for the every-50-steps lines.
    bar = capsys.readouterr().err
    assert "pre-training" in bar and "2/2" in bar and ("step/s" in bar or "s/step" in bar)
    assert "<" in bar  # tqdm's [elapsed<remaining]
    assert not any("step 2/2" in m for m in messages)
    assert any("held-out object patches named right" in m for m in messages)
    again = ensure_pretrained(settings, tmp_path, log=messages.append)
    assert again == path and "cached" in messages[-1]
    state = load_clip_state_dict(path)  # the same path as real CLIP weights (weights_only)
    assert "visual.conv1.weight" in state
    model = build_model(load_preset("tiny").replace({"model.weights": str(path)}))
    assert torch.equal(model.clip.visual.conv1.weight, state["visual.conv1.weight"])
    # Another setting is another cache entry.
    other = PretrainSettings("hivg-tiny", 128, 24, scenes=24, steps=3, batch_size=8)
    assert other.key() != settings.key()


def test_phrase_attributes_decode_every_object_phrase():
    sizes, colours = sorted(synthetic.SIZE_RANGES), sorted(synthetic.COLOURS)
    decoded = phrase_attributes(torch.arange(len(OBJECT_PHRASES)))
    assert len(OBJECT_PHRASES) == len(set(OBJECT_PHRASES)) == 40
    for phrase, (size, colour, shape) in zip(OBJECT_PHRASES, decoded.tolist()):
        assert phrase == f"{sizes[size]} {colours[colour]} {synthetic.SHAPES[shape]}"


def test_patch_labels_name_the_object_under_each_patch_and_nothing_elsewhere():
    rng = random.Random(1)
    for _ in range(30):
        w, h, objects = synthetic.make_scene(rng)
        placement = eval_placement(w, h, 128)
        labels = patch_labels(objects, placement, 128, 8)
        (dx, dy), scale = placement.offset, placement.scale
        named = set()
        for o in objects:
            cx, cy = (o.cx * scale + dx) / 16, (o.cy * scale + dy) / 16
            centre = int(cy) * 8 + int(cx)
            assert OBJECT_PHRASES[labels[centre]] == f"{o.size} {o.colour} {o.shape}"
            named.add(centre)
        for cell in (labels != NO_OBJECT).nonzero().flatten().tolist():
            x, y = (cell % 8 + 0.5) * 16, (cell // 8 + 0.5) * 16   # the cell's centre, canvas px
            inside = [o for o in objects
                      if o.box[0] * scale + dx <= x <= o.box[2] * scale + dx
                      and o.box[1] * scale + dy <= y <= o.box[3] * scale + dy]
            assert inside or cell in named
        assert set(labels.tolist()) - {NO_OBJECT} <= {
            OBJECT_PHRASES.index(f"{o.size} {o.colour} {o.shape}") for o in objects}


def test_region_phrase_loss_prefers_patches_that_match_their_phrase_and_skips_empty_ones():
    phrases = torch.nn.functional.one_hot(torch.arange(4), 8).float()
    labels = torch.tensor([[0, 1, NO_OBJECT], [2, NO_OBJECT, 3]])
    right = phrases[labels.clamp(min=0)]                       # (2, 3, 8)
    wrong = phrases[(labels.clamp(min=0) + 1) % 4]
    scale = torch.tensor(2.0)
    assert region_phrase_loss(right, phrases, labels, scale) < region_phrase_loss(
        wrong, phrases, labels, scale)
    # What sits on a patch without an object does not count.
    garbage = right.clone()
    garbage[labels == NO_OBJECT] = torch.randn(2, 8)
    assert torch.allclose(region_phrase_loss(garbage, phrases, labels, scale),
                          region_phrase_loss(right, phrases, labels, scale))
    empty = torch.full((1, 3), NO_OBJECT)
    assert region_phrase_loss(right[:1], phrases, empty, scale) == 0


def test_a_short_pretraining_teaches_the_patches_colour_and_reports_it(tmp_path):
    """40 steps are enough for colour (chance 0.2); the held-out report sits beside the
    weights."""
    settings = PretrainSettings("hivg-tiny", 128, 24, scenes=256, steps=40, batch_size=32,
                                lr=2e-3)
    messages = []
    path = ensure_pretrained(settings, tmp_path, log=messages.append)
    assert any(m.startswith("  step 40/40  caption loss") for m in messages)  # no terminal
    report = json.loads(report_path(path).read_text())
    assert report["settings"]["steps"] == 40
    accuracy = report["held_out_accuracy"]
    assert set(accuracy) == {"size", "colour", "shape", "all"}
    assert accuracy["colour"] > 0.5, accuracy
