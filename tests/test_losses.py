"""Losses and box ops against torchvision.ops, including degenerate boxes."""
import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tvo

from hivg.config import LossConfig
from hivg.losses import build_criterion, contrastive_loss, dice_loss, sigmoid_focal_loss
from hivg.ops.boxes import elementwise_giou, elementwise_iou, rasterize_boxes


def random_xyxy(n: int, seed: int, degenerate: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g)
    wh = torch.rand(n, 2, generator=g) * 0.5
    if degenerate:  # zero width, zero height, points, and exact duplicates
        wh[0::4, 0] = 0
        wh[1::4, 1] = 0
        wh[2::4] = 0
    return torch.cat([xy, xy + wh], dim=1).double()


def test_iou_and_giou_match_torchvision_on_regular_boxes():
    a, b = random_xyxy(50, 1), random_xyxy(50, 2)
    torch.testing.assert_close(elementwise_iou(a, b), tvo.box_iou(a, b).diag())
    torch.testing.assert_close(elementwise_giou(a, b), tvo.generalized_box_iou(a, b).diag())


def test_giou_loss_matches_torchvision_on_degenerate_boxes():
    a, b = random_xyxy(64, 3, degenerate=True), random_xyxy(64, 4, degenerate=True)
    b[2::4] = a[2::4]  # identical points: union and hull are 0
    ours = 1 - elementwise_giou(a, b)
    assert torch.isfinite(ours).all()
    want = tvo.generalized_box_iou_loss(a, b, reduction="none", eps=1e-7)
    # torchvision divides by (union + eps), we by max(union, eps): ~eps/union apart
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)
    regular = (a[:, 2:] > a[:, :2]).all(1) & (b[:, 2:] > b[:, :2]).all(1)
    torch.testing.assert_close(ours[regular], 1 - tvo.generalized_box_iou(a, b).diag()[regular])


def test_rasterize_matches_nearest_downsampling_and_keeps_tiny_boxes():
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.25], [0.3, 0.7, 0.26, 0.4], [0.51, 0.52, 0.01, 0.01]])
    full = rasterize_boxes(boxes, 512, 512)
    small = rasterize_boxes(boxes, 8, 8)
    nearest = full[:, 32::64, 32::64]  # the pixel at each cell centre
    torch.testing.assert_close(small[:2], nearest[:2])
    assert small[2].sum() == 1 and small[2, 4, 4] == 1  # a sub-cell box keeps its centre cell


def test_focal_and_dice_losses():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 8, 8, generator=g)
    targets = (torch.rand(4, 8, 8, generator=g) > 0.7).float()
    want = tvo.sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="mean")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, 0.25, 2.0), want)
    assert dice_loss(torch.full((2, 16), 20.0), torch.ones(2, 16)) < 1e-3
    assert dice_loss(torch.full((2, 16), -20.0), torch.ones(2, 16)) > 0.9


def test_contrastive_prefers_matching_pairs():
    e = F.normalize(torch.randn(6, 32), dim=-1)
    assert contrastive_loss(e, e, 0.07) < contrastive_loss(e, e.roll(1, 0), 0.07)


def fake_outputs(B=3, grid=8, size=128):
    g = torch.Generator().manual_seed(0)
    return ({"pred_boxes": torch.rand(B, 4, generator=g) * 0.5 + 0.25,
             "image_embed": torch.randn(B, 16, generator=g),
             "text_embed": torch.randn(B, 16, generator=g),
             "align_logits": torch.randn(B, grid, grid, generator=g),
             "seg_logits": torch.randn(B, 8 * grid, 8 * grid, generator=g)},
            {"box": torch.rand(B, 4, generator=g) * 0.4 + 0.3,
             "pad_mask": torch.zeros(B, size, size, dtype=torch.bool)})


TERMS = ["l1", "giou", "contrastive", "align_focal", "align_dice", "seg_focal", "seg_dice"]


@pytest.mark.parametrize("off", [None] + TERMS)
def test_each_term_switches_off_and_the_total_is_the_weighted_sum(off):
    kwargs = {} if off is None else {off: 0.0}
    if off == "l1":
        kwargs["giou"] = 3.0
    cfg = LossConfig(**kwargs)
    outputs, targets = fake_outputs()
    if off == "contrastive":
        del outputs["image_embed"], outputs["text_embed"]  # the model does not produce them
    losses = build_criterion(cfg)(outputs, targets)
    active = [t for t in TERMS if getattr(cfg, t) > 0]
    assert set(losses) == {"loss", *active}
    total = sum(getattr(cfg, t) * losses[t] for t in active)
    torch.testing.assert_close(losses["loss"], total)


def test_box_terms_by_hand():
    outputs, targets = fake_outputs()
    losses = build_criterion(LossConfig())(outputs, targets)
    p, t = outputs["pred_boxes"], targets["box"]
    torch.testing.assert_close(losses["l1"], (p - t).abs().sum(1).mean())
    want = tvo.generalized_box_iou_loss(tvo.box_convert(p, "cxcywh", "xyxy"),
                                        tvo.box_convert(t, "cxcywh", "xyxy"), reduction="mean")
    torch.testing.assert_close(losses["giou"], want)


def test_dense_boxes_are_trained_at_the_patch_under_the_target_centre():
    grid, B = 4, 2
    gt = torch.tensor([[0.30, 0.60, 0.2, 0.1], [0.90, 0.10, 0.1, 0.1]])
    dense = torch.rand(B, grid * grid, 4)
    cells = [int(0.60 * grid) * grid + int(0.30 * grid), int(0.10 * grid) * grid + int(0.90 * grid)]
    for b, c in enumerate(cells):
        dense[b, c] = gt[b]
    crit = build_criterion(LossConfig(contrastive=0, align_focal=0, align_dice=0, seg_focal=0,
                                      seg_dice=0))
    out = crit({"pred_boxes": torch.rand(B, 4), "dense_boxes": dense}, {"box": gt})
    assert out["l1"].item() == pytest.approx(0, abs=1e-6)
    assert out["giou"].item() == pytest.approx(0, abs=1e-6)
    dense[0, cells[0], 0] += 0.1
    assert crit({"pred_boxes": gt, "dense_boxes": dense}, {"box": gt})["l1"].item() > 0.04


def test_align_ce_is_a_softmax_over_the_grid_aimed_at_the_cell_under_the_box_centre():
    grid, B = 4, 2
    gt = torch.tensor([[0.30, 0.60, 0.2, 0.1], [0.90, 0.10, 0.1, 0.1]])
    cells = torch.tensor([int(0.60 * grid) * grid + int(0.30 * grid),
                          int(0.10 * grid) * grid + int(0.90 * grid)])
    logits = torch.randn(B, grid, grid, generator=torch.Generator().manual_seed(1))
    crit = build_criterion(LossConfig(contrastive=0, align_focal=0, align_dice=0, align_ce=1.5,
                                      seg_focal=0, seg_dice=0))
    out = crit({"pred_boxes": gt, "align_logits": logits}, {"box": gt})
    assert set(out) == {"loss", "l1", "giou", "align_ce"}
    torch.testing.assert_close(out["align_ce"], F.cross_entropy(logits.flatten(1), cells))
    torch.testing.assert_close(out["loss"], 1.5 * out["align_ce"] + 2 * out["l1"] + 2 * out["giou"])
    # A map peaked at the target's centre cell costs less than one peaked at a neighbour.
    peaked = torch.zeros(B, grid * grid)
    peaked[torch.arange(B), cells] = 5.0
    elsewhere = torch.zeros(B, grid * grid)
    elsewhere[torch.arange(B), (cells + 1) % (grid * grid)] = 5.0
    at = crit({"pred_boxes": gt, "align_logits": peaked.view(B, grid, grid)}, {"box": gt})
    off = crit({"pred_boxes": gt, "align_logits": elsewhere.view(B, grid, grid)}, {"box": gt})
    assert at["align_ce"] < 0.1 < off["align_ce"]
    assert LossConfig(align_focal=0, align_dice=0, align_ce=1).use_align  # the head is built
