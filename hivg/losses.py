"""HiVG's losses. Each term has a weight in LossConfig; weight 0 switches it off (and the
model does not build the head it needs). Per-sample terms are averaged over the local batch.

    l1           |pred - gt| summed over (cx, cy, w, h)
    giou         1 - GIoU(pred, gt)
    contrastive  symmetric in-batch InfoNCE: CLIP text EOS vs the bridged image CLS
    align_*      focal / dice on the text-to-patch map vs the box rasterised at the patch grid
    align_ce     softmax cross-entropy over the map's cells, target: the cell under the box
                 centre (the cell whose box the dense head trains)
    seg_*        focal / dice on the segmentation map, upsampled to the image, vs the box mask
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

from hivg.config import LossConfig
from hivg.ops.boxes import elementwise_giou, rasterize_boxes


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> Tensor:
    """RetinaNet's focal loss; (B, ...) -> mean over elements, then over the batch."""
    logits, targets = logits.flatten(1), targets.flatten(1)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).mean()


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """1 - soft Dice (smoothed by 1), mean over the batch."""
    p, targets = logits.sigmoid().flatten(1), targets.flatten(1)
    num = 2 * (p * targets).sum(1) + 1
    den = p.sum(1) + targets.sum(1) + 1
    return (1 - num / den).mean()


def contrastive_loss(image_embed: Tensor, text_embed: Tensor, temperature: float) -> Tensor:
    logits = F.normalize(text_embed, dim=-1) @ F.normalize(image_embed, dim=-1).t() / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def centre_cell(box: Tensor, grid_h: int, grid_w: int) -> Tensor:
    """(B, 4) cxcywh in [0, 1] -> (B,) row-major index of the grid cell under each centre."""
    col = (box[:, 0] * grid_w).long().clamp(0, grid_w - 1)
    row = (box[:, 1] * grid_h).long().clamp(0, grid_h - 1)
    return row * grid_w + col


class HiVGCriterion(nn.Module):
    def __init__(self, *, l1: float, giou: float, contrastive: float, align_focal: float,
                 align_dice: float, seg_focal: float, seg_dice: float, align_ce: float = 0.0,
                 focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, temperature: float = 0.07):
        super().__init__()
        self.weights = {"l1": l1, "giou": giou, "contrastive": contrastive,
                        "align_focal": align_focal, "align_dice": align_dice,
                        "align_ce": align_ce, "seg_focal": seg_focal, "seg_dice": seg_dice}
        self.focal_alpha, self.focal_gamma, self.temperature = focal_alpha, focal_gamma, temperature

    def forward(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """outputs: the model's dict; targets: `box` (B, 4) cxcywh on the canvas in [0, 1],
        `pad_mask` (B, S, S). Returns `loss` (weighted sum) and each active term (unweighted)."""
        w = self.weights
        gt = targets["box"].float()
        pred = outputs["pred_boxes"].float()
        if "dense_boxes" in outputs:  # train the box of the patch under the target's centre
            dense = outputs["dense_boxes"].float()
            grid = int(round(dense.shape[1] ** 0.5))
            pred = dense[torch.arange(len(gt), device=gt.device), centre_cell(gt, grid, grid)]
        terms: dict[str, Tensor] = {}
        if w["l1"] > 0:
            terms["l1"] = F.l1_loss(pred, gt, reduction="none").sum(-1).mean()
        if w["giou"] > 0:
            terms["giou"] = (1 - elementwise_giou(box_convert(pred, "cxcywh", "xyxy"),
                                                    box_convert(gt, "cxcywh", "xyxy"))).mean()
        if w["contrastive"] > 0:
            terms["contrastive"] = contrastive_loss(outputs["image_embed"].float(),
                                                    outputs["text_embed"].float(), self.temperature)
        if w["align_focal"] > 0 or w["align_dice"] > 0:
            logits = outputs["align_logits"].float()
            mask = rasterize_boxes(gt, logits.shape[-2], logits.shape[-1])
            self._mask_terms(terms, "align", logits, mask)
        if w["align_ce"] > 0:
            logits = outputs["align_logits"].float()
            cells = centre_cell(gt, logits.shape[-2], logits.shape[-1])
            terms["align_ce"] = F.cross_entropy(logits.flatten(1), cells)
        if w["seg_focal"] > 0 or w["seg_dice"] > 0:
            size = targets["pad_mask"].shape[-2:]
            logits = F.interpolate(outputs["seg_logits"].float()[:, None], size=size,
                                   mode="bilinear", align_corners=False)[:, 0]
            self._mask_terms(terms, "seg", logits, rasterize_boxes(gt, *size))
        terms = {k: v for k, v in terms.items() if w[k] > 0}
        total = sum(w[k] * v for k, v in terms.items())
        return {"loss": total, **terms}

    def _mask_terms(self, terms: dict, prefix: str, logits: Tensor, mask: Tensor) -> None:
        terms[f"{prefix}_focal"] = sigmoid_focal_loss(logits, mask, self.focal_alpha, self.focal_gamma)
        terms[f"{prefix}_dice"] = dice_loss(logits, mask)


def build_criterion(loss: LossConfig) -> HiVGCriterion:
    return HiVGCriterion(l1=loss.l1, giou=loss.giou, contrastive=loss.contrastive,
                         align_focal=loss.align_focal, align_dice=loss.align_dice,
                         seg_focal=loss.seg_focal, seg_dice=loss.seg_dice, align_ce=loss.align_ce,
                         focal_alpha=loss.focal_alpha, focal_gamma=loss.focal_gamma,
                         temperature=loss.contrastive_temperature)
