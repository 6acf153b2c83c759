"""model.weights in every form a user has, each made here as a small file (hivg-tiny shapes):
safetensors (open_clip and HF keys), HF model folders (safetensors, .bin, sharded), OpenAI's
TorchScript archives, open_clip tags through open_clip's own cache code (a cache folder filled
here; the hub is offline), the authors' debiased CLIP and HiVG training checkpoints. Each loads
to exactly the CLIP the file holds; bad values fail with one line naming the value and the fix."""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

transformers = pytest.importorskip("transformers")
from huggingface_hub import constants as hub  # noqa: E402
from open_clip import pretrained as oc_pretrained  # noqa: E402

from hivg.config import load_preset  # noqa: E402
from hivg.errors import UserError, WeightsError  # noqa: E402
from hivg.model import backbone as bb  # noqa: E402
from hivg.model.build import build_model  # noqa: E402
from hivg.model.convert import hf_to_open_clip  # noqa: E402
from hivg.model.open_clip_tags import resolve_tag  # noqa: E402
from hivg.model.weights import classify, load_weights  # noqa: E402
from hivg.train.fit import check_starting_weights  # noqa: E402

TINY = "hivg-tiny"


def tiny_open_clip(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return bb.create_open_clip(TINY).state_dict()


def tiny_hf_clip(seed: int = 0, act: str = "quick_gelu"):
    torch.manual_seed(seed)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=128, intermediate_size=512,
                         num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=24,
                         hidden_act=act, bos_token_id=49406, eos_token_id=49407, pad_token_id=0),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                           num_attention_heads=4, image_size=128, patch_size=16, hidden_act=act),
        projection_dim=128)
    return transformers.CLIPModel(cfg).eval()


def hub_cache_put(cache: Path, repo_id: str, filename: str, source: Path) -> Path:
    """A file in the Hugging Face hub cache layout (models--ORG--NAME/refs/main ->
    snapshots/COMMIT/FILE), as a download would leave it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "3f1c1a7e0c9d4b2e8a6f5d4c3b2a19081726354f"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    target = repo / "snapshots" / commit / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return target


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    return cache


# -- each form, written from known tensors -------------------------------------------------------

def open_clip_safetensors(tmp: Path):
    sd = tiny_open_clip(1)
    save_file(sd, tmp / "tiny.safetensors")
    return str(tmp / "tiny.safetensors"), sd


def hf_safetensors(tmp: Path):
    sd = tiny_hf_clip(2).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp / "hf.safetensors")
    return str(tmp / "hf.safetensors"), hf_to_open_clip(sd)


def hf_folder_safetensors(tmp: Path):
    hf = tiny_hf_clip(3)
    hf.save_pretrained(tmp / "clip-vit-tiny")
    assert (tmp / "clip-vit-tiny" / "model.safetensors").is_file()
    return str(tmp / "clip-vit-tiny"), hf_to_open_clip(hf.state_dict())


def hf_folder_bin(tmp: Path):
    hf = tiny_hf_clip(4)
    folder = tmp / "clip-vit-tiny-bin"
    hf.config.save_pretrained(folder)
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    return str(folder), hf_to_open_clip(hf.state_dict())


def hf_folder_sharded(tmp: Path):
    hf = tiny_hf_clip(5)
    hf.save_pretrained(tmp / "sharded", max_shard_size="2MB")
    assert (tmp / "sharded" / "model.safetensors.index.json").is_file()
    return str(tmp / "sharded"), hf_to_open_clip(hf.state_dict())


def openai_torchscript(tmp: Path):
    """A scripted open_clip model saved as TorchScript, with the settings entries OpenAI's
    archives carry in their state dict."""
    torch.manual_seed(6)
    model = bb.create_open_clip(TINY)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    for name, value in (("input_resolution", 128), ("context_length", 24), ("vocab_size", 49408)):
        if hasattr(model, name):  # open_clip keeps two of them as plain ints
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    with pytest.warns(FutureWarning):  # torch marks torch.jit deprecated
        torch.jit.save(torch.jit.script(model), tmp / "ViT-tiny.pt")
    with pytest.raises(RuntimeError, match="weights_only"), pytest.warns(UserWarning):
        torch.load(tmp / "ViT-tiny.pt", weights_only=True)  # why torch.jit.load is needed
    return str(tmp / "ViT-tiny.pt"), want


def open_clip_tag(tmp: Path, monkeypatch=None):
    """An open_clip tag of hivg-tiny, registered like open_clip's own (its cfg names a hub repo),
    resolved by open_clip's download code from a hub cache filled here."""
    sd = tiny_open_clip(7)
    save_file(sd, tmp / "src.safetensors")
    cache = tmp / "hub-cache"
    hub_cache_put(cache, "hivg-test/tiny-clip", "open_clip_model.safetensors",
                  tmp / "src.safetensors")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setitem(oc_pretrained._PRETRAINED, TINY,
                        {"testtag": oc_pretrained._pcfg(hf_hub="hivg-test/tiny-clip/")})
    return "testtag", sd


def debiased_clip(tmp: Path):
    """The authors' debiased CLIP: HF keys under peft's base_model.model., LoRA beside."""
    hf = tiny_hf_clip(8)
    base = hf.state_dict()
    merged = {k: v.clone() for k, v in base.items()}
    released = {f"base_model.model.{k.replace('q_proj.weight', 'q_proj.base_layer.weight')}": v
                for k, v in base.items()}
    g = torch.Generator().manual_seed(9)
    for i in range(4):
        mod = f"vision_model.encoder.layers.{i}.self_attn.q_proj"
        A, B = torch.randn(4, 128, generator=g) * 0.1, torch.randn(128, 4, generator=g) * 0.1
        released[f"base_model.model.{mod}.lora_A.default.weight"] = A
        released[f"base_model.model.{mod}.lora_B.default.weight"] = B
        merged[f"{mod}.weight"] += (16.0 / 4) * B @ A
    torch.save({"model": released}, tmp / "clip_b_ml_cascade_maskrcnn_model_224.pth")
    return str(tmp / "clip_b_ml_cascade_maskrcnn_model_224.pth"), hf_to_open_clip(merged)


def authors_hivg_checkpoint(tmp: Path):
    """Their best_checkpoint.pth: {"model": the whole HiVG, "args": argparse.Namespace, ...};
    the CLIP sits under clip.base_model.model. with their bridge inside the vision layers."""
    hf = tiny_hf_clip(10)
    model = {f"clip.base_model.model.{k}": v for k, v in hf.state_dict().items()}
    for i in (0, 3):  # their bridge in two vision layers, and some of their head
        layer = f"clip.base_model.model.vision_model.encoder.layers.{i}"
        model[f"{layer}.cross_attn.q_proj.weight"] = torch.randn(128, 128)
        model[f"{layer}.cross_attn.q_proj.lora_A.default.weight"] = torch.randn(4, 128)
        model[f"{layer}.cross_attn.q_proj.lora_B.default.weight"] = torch.randn(128, 4)
        model[f"{layer}.cross_norm.weight"] = torch.ones(128)
        model[f"{layer}.cross_gate.weight"] = torch.randn(128, 128)
        model[f"{layer}.cross_adaptive_weights.0.weight"] = torch.randn(77, 128)
    model["bbox_embed.layers.0.weight"] = torch.randn(128, 128)
    model["vl_transformer.layers.0.linear1.weight"] = torch.randn(256, 128)
    args = argparse.Namespace(model="ViT-B/16", dataset="unc", lr=2.5e-4, adapt_layer=[0, 3])
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                "epoch": 3, "args": args, "val_accu": 0.5}, tmp / "best_checkpoint.pth")
    return str(tmp / "best_checkpoint.pth"), hf_to_open_clip(hf.state_dict())


FORMS = {
    "open_clip safetensors": open_clip_safetensors,
    "HF CLIPModel safetensors": hf_safetensors,
    "HF folder, model.safetensors": hf_folder_safetensors,
    "HF folder, pytorch_model.bin": hf_folder_bin,
    "HF folder, sharded safetensors": hf_folder_sharded,
    "OpenAI TorchScript archive": openai_torchscript,
    "open_clip tag from the hub cache": open_clip_tag,
    "authors' debiased CLIP": debiased_clip,
    "authors' HiVG training checkpoint": authors_hivg_checkpoint,
}


@pytest.mark.parametrize("form", FORMS)
def test_every_form_loads_exactly_the_clip_it_holds(form, tmp_path, monkeypatch):
    maker = FORMS[form]
    value, want = maker(tmp_path, monkeypatch) if form.startswith("open_clip tag") \
        else maker(tmp_path)
    notes: list[str] = []
    clip = bb.create_clip(TINY)
    source = load_weights(clip, value, TINY, log=notes.append)
    assert source.loads
    got = clip.state_dict()
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor.to(got[key].dtype)), key
    if form == "authors' HiVG training checkpoint":
        assert any("left out" in n for n in notes), notes


def test_a_built_model_starts_from_the_tag_and_random_only_by_name(tmp_path, monkeypatch):
    value, want = open_clip_tag(tmp_path, monkeypatch)
    config = load_preset("tiny").replace({"model.weights": value})
    model = build_model(config)
    assert torch.equal(model.clip.visual.conv1.weight, want["visual.conv1.weight"])
    random = build_model(config.replace({"model.weights": "random"}))
    assert not torch.equal(random.clip.visual.conv1.weight, want["visual.conv1.weight"])
    assert classify("random", TINY).kind == "random" and not classify("random", TINY).loads


def test_the_openai_tag_resolves_where_open_clip_caches_it(empty_hub_cache, tmp_path):
    """The published tag of ViT-B-16-quickgelu, resolved by open_clip's code: the file is the
    one this cache holds under the hub repo open_clip names (no download: the hub is offline)."""
    save_file(tiny_open_clip(), tmp_path / "stand-in.safetensors")
    placed = hub_cache_put(empty_hub_cache, "timm/vit_base_patch16_clip_224.openai",
                           "open_clip_model.safetensors", tmp_path / "stand-in.safetensors")
    assert resolve_tag("ViT-B-16-quickgelu", "openai") == placed


@pytest.mark.parametrize("clip, value, message", [
    ("ViT-B-16-quickgelu", "openia",
     r"^openia: not a local file or folder, nor an open_clip tag of ViT-B-16-quickgelu "
     r"\(its tags: openai, "),
    ("ViT-B-16-quickgelu", "laion2b_s34b_b88k",
     r"laion2b_s34b_b88k is a tag of ViT-B-16 \(set model.clip=ViT-B-16\)$"),
    ("ViT-B-16", "openai", r"trained with QuickGELU; ViT-B-16 uses GELU \(set "
                           r"model.clip=ViT-B-16-quickgelu\)"),
    ("ViT-B-16-quickgelu", "/nowhere/ViT-B-16.pt", r"^/nowhere/ViT-B-16.pt: weights file not found"),
])
def test_values_that_name_nothing_fail_in_one_line(clip, value, message):
    with pytest.raises(WeightsError, match=message):
        classify(value, clip)


def test_a_missing_cache_without_network_says_the_tag_and_the_fix_at_once(empty_hub_cache):
    config = load_preset("hivg-b16")
    assert config.model.weights == "openai" and load_preset("hivg-l14").model.weights == "openai"
    start = time.perf_counter()
    with pytest.raises(WeightsError) as caught:
        check_starting_weights(config)
    message = str(caught.value)
    assert time.perf_counter() - start < 5  # no network retries, no model built
    assert "\n" not in message
    assert message.startswith("model.weights: openai: the open_clip weights of "
                              "ViT-B-16-quickgelu are not in the Hugging Face cache")
    assert "open_clip.create_model('ViT-B-16-quickgelu', pretrained='openai')" in message
    assert "or pass a local file or folder as model.weights" in message


def test_unset_weights_are_refused_before_anything_runs():
    with pytest.raises(UserError, match=r"^model.weights: not set; expected an open_clip tag "
                                        r"of hivg-tiny \(e.g. openai\), a local file or folder, "
                                        r"or random"):
        check_starting_weights(load_preset("tiny").replace({"model.weights": None}))


def test_an_hf_folder_with_the_other_activation_is_refused(tmp_path):
    tiny_hf_clip(act="gelu").save_pretrained(tmp_path / "gelu-clip")
    with pytest.raises(WeightsError, match=r"config.json: hidden_act gelu, but hivg-tiny uses "
                                           r"quick_gelu"):
        load_weights(bb.create_clip(TINY), str(tmp_path / "gelu-clip"), TINY)


def test_a_folder_without_weights_names_what_it_expected(tmp_path):
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "empty-model" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(WeightsError, match=r"no weights file in the folder \(expected "
                                           r"config.json with model.safetensors or "
                                           r"pytorch_model.bin"):
        load_weights(bb.create_clip(TINY), str(tmp_path / "empty-model"), TINY)
