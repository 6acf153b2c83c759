"""build_model: shapes, validation against the encoder depths, heads that follow the loss
switches, and the DDP-style check that every trainable parameter gets a gradient."""
import pytest
import torch

from hivg.config import ConfigError, load_preset
from hivg.losses import build_criterion
from hivg.model.build import build_model
from hivg.model.lora import apply_stage
from helpers import make_tokens


def inputs(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pad = torch.zeros(n, 128, 128, dtype=torch.bool)
    pad[0, 80:] = True
    pad[1, :, :40] = True
    targets = {"box": torch.rand(n, 4, generator=g) * 0.4 + 0.3, "pad_mask": pad}
    return (torch.randn(n, 3, 128, 128, generator=g), pad, make_tokens(n, seed=seed)), targets


def test_forward_shapes_and_box_range():
    model = build_model(load_preset("tiny").replace({"model.weights": None})).eval()
    (x, _) = inputs()
    with torch.no_grad():
        out = model(*x)
    assert out["pred_boxes"].shape == (3, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert out["image_embed"].shape == out["text_embed"].shape == (3, 128)
    assert out["align_logits"].shape == (3, 8, 8)  # the 8x8 patch grid
    assert out["seg_logits"].shape == (3, 64, 64)  # three 2x upsamplings
    with pytest.raises(ValueError, match="length 24"):
        model(x[0], x[1], x[2][:, :20])


def test_eager_and_sdpa_agree():
    torch.manual_seed(0)
    a = build_model(load_preset("tiny").replace({"model.weights": None}).replace({"model.attention": "eager"})).eval()
    b = build_model(load_preset("tiny").replace({"model.weights": None}).replace({"model.attention": "sdpa"})).eval()
    b.load_state_dict(a.state_dict())
    (x, _) = inputs()
    with torch.no_grad():
        oa, ob = a(*x), b(*x)
    for k in oa:
        torch.testing.assert_close(oa[k], ob[k], atol=1e-4, rtol=1e-4)


def test_padded_patches_are_masked_only_where_fully_padded():
    model = build_model(load_preset("tiny").replace({"model.weights": None}))
    pad = torch.zeros(1, 128, 128, dtype=torch.bool)
    pad[0, 120:] = True  # half of the last patch row: still image content
    assert not model.patch_padding(pad).any()
    pad[0, 112:] = True  # the whole last row
    assert model.patch_padding(pad).view(8, 8)[7].all() and model.patch_padding(pad).sum() == 8


@pytest.mark.parametrize("override,message", [
    ({"model.bridge.vision_layers": [0, 7]},
     "model.bridge.vision_layers: expected layers < 4 (the vision encoder's depth), got [0, 7]"),
    ({"model.bridge.text_levels": [2, 5]},
     "model.bridge.text_levels: expected 1-based levels <= 4 (the text encoder's depth), got [2, 5]"),
    ({"hilora.stages.stage2.vision_layers": [0, 4]},
     "hilora.stages.stage2.vision_layers: expected layers < 4 (the vision encoder's depth), got [0, 4]"),
    ({"hilora.stages.stage1.text_layers": [0, 12]},
     "hilora.stages.stage1.text_layers: expected layers < 4 (the text encoder's depth), got [0, 12]"),
    ({"model.image_size": 224}, "model.image_size: expected 128 (the image size of hivg-tiny), got 224"),
    ({"model.context_length": 77}, "model.context_length: expected at most 24"),
    ({"model.clip": "ViT-Nope"}, "model.clip: expected an open_clip model name"),
    ({"model.vl_encoder.heads": 3}, "model.vl_encoder.dim: expected a positive multiple of heads=3"),
    ({"loss.align_focal": 0, "loss.align_dice": 0},
     "model.box_head: expected reg when the alignment loss is off"),
])
def test_config_is_validated_against_the_encoders(override, message):
    with pytest.raises(ConfigError) as e:
        build_model(load_preset("tiny").replace({"model.weights": None}).replace(override))
    assert message in str(e.value)


SWITCHES = {
    "all": {},
    "no_contrastive": {"loss.contrastive": 0},
    # the dense box head picks its box with the alignment map: no alignment, [REG] boxes
    "no_align": {"loss.align_focal": 0, "loss.align_dice": 0, "model.box_head": "reg"},
    "reg_box_head": {"model.box_head": "reg"},
    "align_ce_only": {"loss.align_focal": 0, "loss.align_dice": 0, "loss.align_ce": 1},
    "align_ce_and_all": {"loss.align_ce": 1},
    "no_seg": {"loss.seg_focal": 0, "loss.seg_dice": 0},
    "box_only": {"loss.contrastive": 0, "loss.align_focal": 0, "loss.align_dice": 0,
                 "loss.seg_focal": 0, "loss.seg_dice": 0, "model.box_head": "reg"},
    "l1_only_dice_only": {"loss.giou": 0, "loss.align_focal": 0, "loss.seg_focal": 0},
    "full_width_seg_head": {"model.seg_head": "full"},
    "no_bridge": {"model.bridge.enabled": False},
    "no_adaptive_weights": {"model.bridge.adaptive_weights": False},
    # taps end before the last vision layer; without contrastive those layers are not run
    "early_taps_no_contrastive": {"model.bridge.vision_layers": [0, 2], "loss.contrastive": 0},
}


@pytest.mark.parametrize("variant", list(SWITCHES))
@pytest.mark.parametrize("stage", [0, 2])
def test_every_trainable_parameter_gets_a_gradient(variant, stage):
    """What DDP without find_unused_parameters needs, for every loss-switch variant."""
    cfg = load_preset("tiny").replace({"model.weights": None}).replace(SWITCHES[variant])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    apply_stage(model, cfg.hilora, stage)
    if stage:  # LoRA B starts at 0 (A gets no gradient then): give B a value first
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".B"):
                    p.normal_(0, 0.01)
    (x, targets) = inputs()
    out = model(*x)
    losses = build_criterion(cfg.loss)(out, targets)
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert missing == []

    loss = cfg.loss
    assert (model.align_head is not None) == loss.use_align == ("align_logits" in out)
    assert (model.seg_head is not None) == loss.use_seg == ("seg_logits" in out)
    assert ("image_embed" in out) == (loss.contrastive > 0)
    terms = {k for k in losses if k != "loss"}
    weights = {k: getattr(loss, k) for k in ("l1", "giou", "contrastive", "align_focal",
                                             "align_dice", "align_ce", "seg_focal", "seg_dice")}
    assert terms == {k for k, w in weights.items() if w > 0}


def test_dense_box_head_returns_the_box_of_the_patch_the_alignment_map_picks():
    cfg = load_preset("tiny").replace({"model.weights": None, "model.box_head": "dense"})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    (x, _targets) = inputs()
    with torch.no_grad():
        out = model(*x)
    B, N, _ = out["dense_boxes"].shape
    assert N == model.grid ** 2
    pick = out["align_logits"].flatten(1).argmax(1)
    assert torch.equal(out["pred_boxes"], out["dense_boxes"][torch.arange(B), pick])
    # Each patch's box centre stays within two cells of the patch centre.
    G = model.grid
    centres = torch.stack(torch.meshgrid((torch.arange(G) + 0.5) / G, (torch.arange(G) + 0.5) / G,
                                         indexing="ij")[::-1], -1).reshape(-1, 2)
    assert ((out["dense_boxes"][..., :2] - centres).abs() <= 2 / G + 1e-6).all()
    assert ((out["dense_boxes"] >= 0) & (out["dense_boxes"] <= 1)).all()
