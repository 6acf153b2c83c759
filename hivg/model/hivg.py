"""HiVG: CLIP with a multi-layer cross-modal bridge, multi-level visual fusion, a VL encoder
with a [REG] token, and box / alignment / segmentation heads. Read top to bottom:

    text tower  -> every layer's output (bridge keys), projected last layer (VL text tokens)
    vision tower, block by block; in a bridged block: self-attn -> bridge -> MLP
    taps (the bridged layers' outputs, CLS included) -> concat -> fuse -> VL visual tokens
    [REG] + visual + text -> VL encoder -> box head on [REG] (sigmoid cxcywh on the canvas)
    optional: CLIP image/text embeddings (contrastive), alignment and segmentation logits

Only the heads whose losses are on are built and run, so every trainable parameter takes part
in the loss (DDP needs no unused-parameter search).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hivg.model import backbone as bb
from hivg.model.bridge import BridgeLayer
from hivg.model.head import MLP, AlignHead, DenseBoxHead, SegHead
from hivg.model.vl_encoder import VLEncoder


class HiVG(nn.Module):
    def __init__(self, clip: nn.Module, *, taps: list[int], bridge: bool, text_levels: list[int],
                 adaptive_weights: bool, context_length: int, vl_dim: int, vl_layers: int,
                 vl_heads: int, vl_ffn_dim: int, vl_dropout: float, head_layers: int,
                 attention: str = "sdpa", contrastive: bool = True, align: bool = True,
                 seg: bool = True, seg_tapered: bool = False, box_head: str = "reg"):
        """clip: from backbone.create_clip (weights already loaded). taps: 0-based vision layers
        fused into the visual tokens; with bridge=True each also gets a BridgeLayer.
        text_levels: 1-based text layers whose outputs are the bridge's keys/values."""
        super().__init__()
        self.clip = clip
        self.taps = sorted(taps)
        self.text_levels = sorted(text_levels)
        self.context_length = context_length
        self.grid = bb.image_size(clip) // bb.patch_size(clip)
        self.use_contrastive, self.use_align, self.use_seg = contrastive, align, seg
        # Vision layers after the last tap only matter for CLIP's image embedding.
        depth = len(bb.vision_blocks(clip))
        self.vision_depth = depth if contrastive else self.taps[-1] + 1

        wv, wt, emb = bb.vision_width(clip), bb.text_width(clip), bb.embed_dim(clip)
        self.bridge = nn.ModuleDict({
            str(i): BridgeLayer(wv, wt, len(text_levels), context_length, bb.vision_heads(clip),
                                adaptive_weights, attention)
            for i in (self.taps if bridge else [])})

        # Multi-level fusion: concat taps -> CLIP's visual projection repeated -> VL width.
        self.visual_fuse = nn.Linear(len(self.taps) * wv, emb)
        with torch.no_grad():
            self.visual_fuse.weight.copy_(clip.visual.proj.t().repeat(1, len(self.taps)))
        self.visual_proj = nn.Linear(emb, vl_dim)
        self.text_proj = nn.Linear(emb, vl_dim)

        n_tokens = 1 + (1 + self.grid ** 2) + context_length  # [REG] + CLS + patches + text
        self.reg_token = nn.Parameter(torch.randn(1, 1, vl_dim))
        self.vl_pos = nn.Parameter(torch.randn(n_tokens, vl_dim))
        self.vl_encoder = VLEncoder(vl_dim, vl_layers, vl_heads, vl_ffn_dim, vl_dropout, attention)
        # reg: one box from [REG]. dense: a box per patch, chosen by the alignment map.
        self.dense_boxes = box_head == "dense"
        self.box_head = (DenseBoxHead(vl_dim, head_layers, self.grid) if self.dense_boxes
                         else MLP(vl_dim, vl_dim, 4, head_layers))
        # 6 x dim hidden: 3072 for HiVG-B (d=512) as released.
        self.align_head = AlignHead(vl_dim, 6 * vl_dim) if align else None
        self.seg_head = SegHead(vl_dim, seg_tapered) if seg else None

    def forward(self, image: Tensor, pad_mask: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        """image (B, 3, S, S) normalised; pad_mask (B, S, S) True = padding; tokens (B, L)."""
        B, N = image.shape[0], self.grid ** 2
        if tokens.shape[1] != self.context_length:
            raise ValueError(f"tokens: expected length {self.context_length}, got {tokens.shape[1]}")
        batch = torch.arange(B, device=image.device)
        eot = bb.eot_index(tokens)

        # Text tower: every layer's output; the bridge reads the selected levels.
        text_states = bb.text_layers(self.clip, tokens)
        text_padding = bb.text_padding_mask(tokens)
        levels = [text_states[i - 1] for i in self.text_levels]
        text_tokens = bb.project_text(self.clip, text_states[-1])  # (B, L, E)

        # Vision tower with the bridge inside the selected blocks.
        x = bb.embed_image(self.clip, image)
        taps = []
        for i, block in enumerate(bb.vision_blocks(self.clip)[:self.vision_depth]):
            x = bb.block_attention(block, x)
            if str(i) in self.bridge:
                x = self.bridge[str(i)](x, levels, text_padding)
            x = bb.block_mlp(block, x)
            if i in self.taps:
                taps.append(x)

        # [REG] + fused visual tokens + text tokens through the VL encoder.
        visual = self.visual_proj(self.visual_fuse(torch.cat(taps, dim=-1)))
        text = self.text_proj(text_tokens)
        seq = torch.cat([self.reg_token.expand(B, -1, -1).to(visual.dtype), visual, text], dim=1)
        padding = torch.cat([torch.zeros(B, 2, dtype=torch.bool, device=image.device),
                             self.patch_padding(pad_mask), text_padding], dim=1)
        out = self.vl_encoder(seq, self.vl_pos.to(seq.dtype), padding)

        outputs = {} if self.dense_boxes else {"pred_boxes": self.box_head(out[:, 0]).sigmoid()}
        if self.use_contrastive:
            outputs["image_embed"] = bb.project_image(self.clip, x)
            outputs["text_embed"] = text_tokens[batch, eot]
        if self.use_align or self.use_seg:
            patches = out[:, 2:2 + N]
            phrase = F.normalize(out[:, 2 + N:][batch, eot], dim=-1)
            if self.use_align:
                outputs["align_logits"] = self.align_head(patches, phrase).view(B, self.grid, self.grid)
            if self.use_seg:
                outputs["seg_logits"] = self.seg_head(patches, self.grid, phrase)
        if self.dense_boxes:
            boxes = self.box_head(out[:, 2:2 + N])  # (B, N, 4) cxcywh on the canvas
            outputs["dense_boxes"] = boxes
            outputs["pred_boxes"] = boxes[batch, outputs["align_logits"].flatten(1).argmax(1)]
        return outputs

    def patch_padding(self, pad_mask: Tensor) -> Tensor:
        """(B, S, S) pixel padding -> (B, G*G): a patch is padding only if all its pixels are."""
        p = pad_mask.shape[-1] // self.grid
        frac = F.avg_pool2d(pad_mask[:, None].float(), kernel_size=p)
        return (frac > 1 - 1e-6).flatten(1)
