"""Weights from local files: HF CLIPModel parity, the released LoRA layout, open_clip files,
and WeightsError naming the first bad key."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hivg.config import load_preset  # noqa: E402
from hivg.errors import WeightsError  # noqa: E402
from hivg.model import backbone as bb  # noqa: E402
from hivg.model.build import build_model  # noqa: E402
from hivg.model.convert import load_clip_state_dict, load_into_clip  # noqa: E402
from helpers import make_tokens


def tiny_hf_clip(seed: int = 0):
    """A random HF CLIPModel with hivg-tiny's shapes, built offline."""
    torch.manual_seed(seed)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=128, intermediate_size=512,
                         num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=24,
                         hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=0),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                           num_attention_heads=4, image_size=128, patch_size=16,
                           hidden_act="quick_gelu"),
        projection_dim=128)
    return transformers.CLIPModel(cfg).eval()


def hf_features(model, image, tokens):
    pooled = lambda r: r if isinstance(r, torch.Tensor) else r.pooler_output  # noqa: E731
    with torch.no_grad():
        return (pooled(model.get_image_features(pixel_values=image)),
                pooled(model.get_text_features(input_ids=tokens)))


def ours_features(path, fmt="auto"):
    clip = bb.create_clip("hivg-tiny").eval()
    load_into_clip(clip, load_clip_state_dict(path, fmt))
    image, tokens = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1)), make_tokens(3)
    with torch.no_grad():
        return bb.encode_image(clip, image), bb.encode_text(clip, tokens), image, tokens


@pytest.mark.parametrize("fmt", ["auto", "hf"])
def test_hf_clip_converts_to_the_same_embeddings(tmp_path, fmt):
    hf = tiny_hf_clip()
    torch.save(hf.state_dict(), tmp_path / "hf.pt")
    img, txt, image, tokens = ours_features(tmp_path / "hf.pt", fmt)
    want_img, want_txt = hf_features(hf, image, tokens)
    assert (img - want_img).abs().max() < 1e-4
    assert (txt - want_txt).abs().max() < 1e-4


def test_released_lora_layout_matches_a_hand_merged_reference(tmp_path):
    hf = tiny_hf_clip(seed=1)
    base = hf.state_dict()
    g = torch.Generator().manual_seed(2)
    alpha, rank = 16.0, 4
    reference = copy.deepcopy(hf)
    ref_sd = reference.state_dict()
    released = {}
    lora_modules = [f"{tower}_model.encoder.layers.{i}.self_attn.{p}"
                    for tower in ("vision", "text") for i in range(4)
                    for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    for key, value in base.items():
        # peft-0.3 nesting: some keys twice under base_model.model.
        prefix = "base_model.model." * (2 if "vision" in key else 1)
        released[prefix + key] = value.clone()
    for n, mod in enumerate(lora_modules):
        out_dim, in_dim = base[f"{mod}.weight"].shape
        A = torch.randn(rank, in_dim, generator=g) * 0.1
        B = torch.randn(out_dim, rank, generator=g) * 0.1
        with torch.no_grad():  # the hand-merged reference: W + (alpha / r) B A
            ref_sd[f"{mod}.weight"] += (alpha / rank) * B @ A
        name = "" if n % 2 else ".default"  # both peft naming forms: lora_A.weight, lora_A.default.weight
        released[f"base_model.model.{mod}.lora_A{name}.weight"] = A
        released[f"base_model.model.{mod}.lora_B{name}.weight"] = B
    reference.load_state_dict(ref_sd)
    torch.save(released, tmp_path / "released.pt")

    img, txt, image, tokens = ours_features(tmp_path / "released.pt")
    want_img, want_txt = hf_features(reference, image, tokens)
    assert (img - want_img).abs().max() < 1e-4
    assert (txt - want_txt).abs().max() < 1e-4
    unmerged_img, _ = hf_features(hf, image, tokens)  # the LoRA really mattered
    assert (img - unmerged_img).abs().max() > 1e-2


def test_open_clip_checkpoint_with_training_wrapper_loads(tmp_path):
    src = bb.create_clip("hivg-tiny")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}},
               tmp_path / "oc.pt")
    dst = bb.create_clip("hivg-tiny")
    load_into_clip(dst, load_clip_state_dict(tmp_path / "oc.pt"))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_missing_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_clip_state_dict(tmp_path / "nope.pt")
    cfg = load_preset("tiny").replace({"model.weights": None}).replace({"model.weights": str(tmp_path / "nope.pt")})
    with pytest.raises(WeightsError, match=r"^model\.weights: .*nope\.pt: weights file not found"):
        build_model(cfg)


def test_wrong_shape_names_the_first_bad_key(tmp_path):
    sd = bb.create_clip("hivg-tiny").state_dict()
    sd["visual.transformer.resblocks.2.mlp.c_fc.weight"] = torch.zeros(3, 3)
    sd["transformer.resblocks.3.ln_1.bias"] = torch.zeros(7)
    torch.save(sd, tmp_path / "bad.pt")
    cfg = load_preset("tiny").replace({"model.weights": None}).replace({"model.weights": str(tmp_path / "bad.pt")})
    with pytest.raises(WeightsError, match=r"shape mismatch for visual\.transformer\.resblocks\.2"
                                           r"\.mlp\.c_fc\.weight: file has \(3, 3\)"):
        build_model(cfg)  # the first bad key in the model's order (the vision tower comes first)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    hf = tiny_hf_clip().state_dict()
    del hf["vision_model.encoder.layers.1.self_attn.k_proj.bias"]
    torch.save(hf, tmp_path / "hf.pt")
    with pytest.raises(WeightsError, match=r"vision_model\.encoder\.layers\.1\.self_attn\.k_proj\.bias"):
        load_clip_state_dict(tmp_path / "hf.pt")
    sd = bb.create_clip("hivg-tiny").state_dict()
    del sd["visual.ln_post.weight"]
    sd["visual.extra"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"missing key visual\.ln_post\.weight"):
        load_into_clip(bb.create_clip("hivg-tiny"), sd)
    sd["visual.ln_post.weight"] = torch.ones(128)
    with pytest.raises(WeightsError, match=r"unexpected key visual\.extra"):
        load_into_clip(bb.create_clip("hivg-tiny"), sd)


def test_code_pickles_are_refused(tmp_path):
    torch.save({"w": torch.zeros(1), "obj": object()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="weights_only"):
        load_clip_state_dict(tmp_path / "evil.pt")


def test_build_model_loads_weights_into_clip(tmp_path):
    hf = tiny_hf_clip()
    torch.save(hf.state_dict(), tmp_path / "hf.pt")
    model = build_model(load_preset("tiny").replace({"model.weights": None}).replace({"model.weights": str(tmp_path / "hf.pt")}))
    torch.testing.assert_close(model.clip.token_embedding.weight,
                               hf.text_model.embeddings.token_embedding.weight)
    torch.testing.assert_close(model.visual_fuse.weight, model.clip.visual.proj.t().repeat(1, 4))
