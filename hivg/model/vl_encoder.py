"""The visual-linguistic encoder: a pre-norm transformer over [REG] + visual + text tokens.
Learned positions are added to queries and keys only (DETR style); ReLU FFN; final LayerNorm."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hivg.model.attention import Attention


class VLEncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, attention: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout=dropout, impl=attention)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor, key_padding_mask: Tensor) -> Tensor:
        h = self.norm1(x)
        qk = h + pos
        x = x + self.dropout(self.attn(qk, qk, h, key_padding_mask=key_padding_mask))
        h = self.norm2(x)
        return x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(h)))))


class VLEncoder(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, ffn_dim: int, dropout: float,
                 attention: str = "sdpa"):
        super().__init__()
        self.layers = nn.ModuleList(
            [VLEncoderLayer(dim, heads, ffn_dim, dropout, attention) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        for p in self.parameters():  # the released (DETR) init
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: Tensor, pos: Tensor, key_padding_mask: Tensor) -> Tensor:
        """x (B, T, D), pos (T, D), key_padding_mask (B, T) bool True = padding."""
        for layer in self.layers:
            x = layer(x, pos, key_padding_mask)
        return self.norm(x)
