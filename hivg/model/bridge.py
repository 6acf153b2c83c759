"""The multi-layer adaptive cross-modal bridge: one BridgeLayer per bridged vision layer.

Inside a bridged vision block, after its self-attention:
    t   = concat_levels(t_l + w_l * t_l)      # w_l: learned, per position, shared by all samples
    kv  = gate(t)                             # text width * levels -> vision width
    x   = x + mlp(cross_attn(norm(x), kv))    # queries: vision tokens; keys/values: own text
Everything is batch-first, so sample b's keys and values are sample b's tokens. (The released
code permutes the text to (L, B, H) before a batch-first attention, mixing samples.)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hivg.model.attention import Attention


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class BridgeLayer(nn.Module):
    def __init__(self, vision_width: int, text_width: int, levels: int, context_length: int,
                 heads: int, adaptive_weights: bool = True, attention: str = "sdpa"):
        super().__init__()
        self.norm = nn.LayerNorm(vision_width)
        # The released code uses nn.Embedding(77, width) per level (N(0, 1) init); same here.
        self.level_weights = (nn.Parameter(torch.randn(levels, context_length, text_width))
                              if adaptive_weights else None)
        self.gate = nn.Linear(text_width * levels, vision_width)
        self.cross_attn = Attention(vision_width, heads, impl=attention)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(vision_width, 4 * vision_width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * vision_width, vision_width))

    def forward(self, x: Tensor, text_levels: list[Tensor], text_padding: Tensor) -> Tensor:
        """x (B, N, Wv) vision tokens; text_levels: (B, L, Wt) per level; text_padding (B, L)."""
        if self.level_weights is not None:
            L = text_levels[0].shape[1]
            text_levels = [t + w[:L] * t for t, w in zip(text_levels, self.level_weights)]
        kv = self.gate(torch.cat(text_levels, dim=-1))
        # Padding after end-of-text is masked (the released code attends to it; docs/design.md).
        y = self.cross_attn(self.norm(x), kv, key_padding_mask=text_padding)
        return x + self.mlp(y)
