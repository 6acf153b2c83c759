"""The tiny CLIP shipped with hivg: the default recipe's output, packed, found by its settings
key, unpacked into a fresh storage without pre-training, loaded by the normal loader."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file

from hivg.config import load_preset
from hivg.model.backbone import create_open_clip
from hivg.model.build import build_model
from hivg.train import pretrain, shipped_weights
from hivg.train.pretrain import PretrainSettings, ensure_pretrained, resolve_weights
from tools.pack_tiny_clip import benchmark_texts, missing_tokens, parity


def _tiny_recipe() -> PretrainSettings:
    m = load_preset("tiny").model
    return PretrainSettings(m.clip, m.image_size, m.context_length)


def _shipped() -> tuple:
    settings = _tiny_recipe()
    path = shipped_weights.shipped_file(settings.clip, settings.key())
    assert path is not None, f"no shipped weights for the tiny recipe's key {settings.key()} " \
        "(remake them: python -m hivg.train.pretrain, then python -m tools.pack_tiny_clip)"
    return settings, path, json.loads(path.with_suffix(".json").read_text())


def test_the_shipped_file_is_the_tiny_presets_default_recipe():
    settings, path, info = _shipped()
    assert info["settings"] == asdict(settings) and info["key"] == settings.key()
    assert info["sha256"] == shipped_weights.sha256(path)
    assert set(info["held_out_accuracy"]) == {"size", "colour", "shape", "all"}
    assert path.stat().st_size < 8e6  # a few MB, not the full 27 MB checkpoint
    assert [p.name for p in shipped_weights.SHIPPED_DIR.glob("*.safetensors")] == [path.name]


def test_a_fresh_storage_gets_the_shipped_weights_without_pretraining(tmp_path, monkeypatch):
    def no_pretraining(*_args, **_kwargs):
        raise AssertionError("pre-training ran although the weights are shipped")

    monkeypatch.setattr(pretrain, "pretrain_clip", no_pretraining)
    settings, path, info = _shipped()
    messages = []
    config = resolve_weights(load_preset("tiny"), tmp_path, log=messages.append)
    cached = tmp_path / "weights" / f"hivg-tiny-synthetic-{settings.key()}.pt"
    assert config.model.weights == str(cached.resolve()) and cached.is_file()
    assert messages == [f"tiny CLIP weights: shipped with hivg (settings {settings.key()}, "
                        "held-out object patches named right: " + "  ".join(
                            f"{k} {v:.3f}" for k, v in info["held_out_accuracy"].items())
                        + f") -> {cached}"]
    report = json.loads(pretrain.report_path(cached).read_text())
    assert report["held_out_accuracy"] == info["held_out_accuracy"]
    # The normal weight loader (weights_only) reads it into the tiny HiVG model.
    model = build_model(config)
    packed = load_file(str(path))
    own = model.clip.state_dict()
    embedding = own[shipped_weights.EMBEDDING]
    rows = packed[shipped_weights.ROWS]
    assert torch.equal(embedding[rows], packed[shipped_weights.PACKED].float())
    unused = torch.ones(len(embedding), dtype=torch.bool)
    unused[rows] = False
    assert not embedding[unused].any()
    for key, value in packed.items():
        if key not in (shipped_weights.ROWS, shipped_weights.PACKED):
            assert torch.equal(own[key], value.float()), key
    # Cached now: a second call neither unpacks nor pre-trains.
    assert ensure_pretrained(settings, tmp_path, log=messages.append) == cached
    assert messages[-1].endswith("(cached)")


def test_other_settings_are_not_served_the_shipped_weights(tmp_path):
    other = PretrainSettings("hivg-tiny", 128, 24, steps=2399)
    assert shipped_weights.shipped_file(other.clip, other.key()) is None
    assert not shipped_weights.materialize(other.clip, other.key(), tmp_path / "w.pt", print)


def test_packing_keeps_every_token_of_the_benchmark_and_its_outputs():
    """Random weights, so every embedding row differs: a row the benchmark's texts use but
    the packed file left out would change their features."""
    settings = PretrainSettings("hivg-tiny", 128, 24)
    torch.manual_seed(0)
    full = create_open_clip(settings.clip).state_dict()
    rows = shipped_weights.vocabulary_ids(settings.context_length)
    texts = benchmark_texts(60)
    assert not missing_tokens(texts, rows, settings.context_length)
    assert len(rows) < 100
    unpacked = shipped_weights.unpack(shipped_weights.pack(full, rows), len(full[
        shipped_weights.EMBEDDING]))
    similarity = parity(full, unpacked, settings, texts, images=8)
    assert min(similarity.values()) > 0.999, similarity


def test_a_damaged_shipped_file_is_one_line_error(tmp_path, monkeypatch):
    _settings, path, _info = _shipped()
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes()[:-1] + b"\0")
    copy.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(shipped_weights.WeightsError, match="sha256 differs"):
        shipped_weights.load_shipped(copy)
