"""Box conversions and IoU/GIoU. Boxes are (..., 4) tensors; xyxy = (x1, y1, x2, y2)."""
from __future__ import annotations

import torch
from torch import Tensor


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    return inter, union


def elementwise_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of a[i] with b[i] (same shapes), xyxy."""
    inter, union = _inter_union(a, b)
    return inter / union.clamp(min=eps)


def elementwise_giou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalised IoU of a[i] with b[i], xyxy; defined (finite) for degenerate boxes too."""
    inter, union = _inter_union(a, b)
    iou = inter / union.clamp(min=eps)
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull.clamp(min=eps)


def pairwise_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """(N, M) IoU matrix of xyxy boxes a (N, 4) and b (M, 4)."""
    return elementwise_iou(a[:, None, :], b[None, :, :], eps)


def pairwise_giou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    return elementwise_giou(a[:, None, :], b[None, :, :], eps)


def clamp_to_image(boxes: Tensor, width: Tensor | float, height: Tensor | float) -> Tensor:
    """Clamp xyxy pixel boxes to [0, width] x [0, height] (per-row sizes allowed)."""
    w = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)
    h = torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device)
    x1 = torch.minimum(boxes[..., 0].clamp(min=0), w)
    y1 = torch.minimum(boxes[..., 1].clamp(min=0), h)
    x2 = torch.minimum(boxes[..., 2].clamp(min=0), w)
    y2 = torch.minimum(boxes[..., 3].clamp(min=0), h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def rasterize_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """(B, 4) cxcywh boxes normalised to [0, 1] -> (B, height, width) float masks.
    A cell is inside when its centre is inside the box (nearest-neighbour downsampling of the
    box mask); the cell holding the box centre is always on, so a box smaller than a cell
    still has a target."""
    x1, y1, x2, y2 = cxcywh_to_xyxy(boxes)[:, :, None, None].unbind(1)
    ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height
    xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width
    ys, xs = ys[None, :, None], xs[None, None, :]
    inside = (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
    cx = (boxes[:, 0] * width).floor().clamp(0, width - 1).long()
    cy = (boxes[:, 1] * height).floor().clamp(0, height - 1).long()
    inside[torch.arange(boxes.shape[0], device=boxes.device), cy, cx] = True
    return inside.to(boxes.dtype)
