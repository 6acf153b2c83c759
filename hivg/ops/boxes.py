"""IoU/GIoU of matched boxes, clamping and rasterising. Boxes are (..., 4) tensors; xyxy =
(x1, y1, x2, y2). Conversions and pairwise IoU are torchvision.ops' (box_convert, box_iou,
generalized_box_iou); the elementwise forms here are what the losses and metrics need, and
stay finite on degenerate boxes (torchvision's GIoU loss divides by union + eps instead)."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert


def _box_area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = _box_area(a) + _box_area(b) - inter
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
    x1, y1, x2, y2 = box_convert(boxes, "cxcywh", "xyxy")[:, :, None, None].unbind(1)
    ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height
    xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width
    ys, xs = ys[None, :, None], xs[None, None, :]
    inside = (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
    cx = (boxes[:, 0] * width).floor().clamp(0, width - 1).long()
    cy = (boxes[:, 1] * height).floor().clamp(0, height - 1).long()
    inside[torch.arange(boxes.shape[0], device=boxes.device), cy, cx] = True
    return inside.to(boxes.dtype)
