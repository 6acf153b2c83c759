"""LoRA adapters for our attention module: low-rank deltas on q, k, v (rows of the fused
in_proj) and out_proj. Why our own and not peft's MultiheadAttention path: see hivg.model.lora.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LowRank(nn.Module):
    """delta(x) = (alpha / rank) * B A dropout(x); B starts at zero so a new adapter is a no-op."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float, dropout: float,
                 device=None, dtype=None):
        super().__init__()
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, in_dim, device=device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(out_dim, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # peft's / nn.Linear's default for A
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(self.dropout(x), self.A), self.B) * self.scale

    def delta_weight(self) -> Tensor:
        return (self.B @ self.A) * self.scale


class AttentionLoRA(nn.Module):
    """One adapter of one attention module: independent rank-r deltas for q, k, v and out,
    as peft gives HF CLIP's separate q_proj/k_proj/v_proj/out_proj (the released setup)."""

    def __init__(self, dim: int, rank: int, alpha: float, dropout: float, device=None, dtype=None):
        super().__init__()
        kw = dict(rank=rank, alpha=alpha, dropout=dropout, device=device, dtype=dtype)
        self.q = LowRank(dim, dim, **kw)
        self.k = LowRank(dim, dim, **kw)
        self.v = LowRank(dim, dim, **kw)
        self.out = LowRank(dim, dim, **kw)

    @property
    def rank(self) -> int:
        return self.q.rank

    @property
    def alpha(self) -> float:
        return self.q.alpha

    def qkv_delta(self, x: Tensor) -> Tensor:
        """[q(x), k(x), v(x)] concatenated on the last dim, as three batched matrix products
        instead of three branches: the same function (three independent dropout masks), a
        third of the ops. Self-attention's case, where q, k and v read the same input."""
        n, d = x.shape[:-1], x.shape[-1]
        drop = self.q.dropout
        xs = F.dropout(x.unsqueeze(0).expand(3, *x.shape), drop.p, drop.training)
        A = torch.stack([self.q.A, self.k.A, self.v.A])  # (3, r, d)
        B = torch.stack([self.q.B, self.k.B, self.v.B])  # (3, d_out, r)
        z = torch.bmm(xs.reshape(3, -1, d), A.transpose(1, 2))
        y = torch.bmm(z, B.transpose(1, 2)) * self.q.scale  # (3, N, d_out)
        return y.permute(1, 0, 2).reshape(*n, 3 * y.shape[-1])

    def set_dropout(self, p: float) -> None:
        for m in (self.q, self.k, self.v, self.out):
            m.dropout.p = p
