"""Multi-head attention with nn.MultiheadAttention's parameter layout (fused `in_proj_weight`,
`in_proj_bias`, `out_proj`), so open_clip checkpoints load unchanged, plus:
- separate query / key / value inputs (cross-attention, DETR-style position on q and k only),
- boolean key-padding masks and additive masks (open_clip's causal text mask),
- `eager` (explicit softmax, the released code's path) or `sdpa` (fused kernels),
- any number of LoRA adapters (`self.lora[name]`), each with real dropout and trainable on
  its own; the base weights are never modified by a forward pass.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hivg.model.adapters import AttentionLoRA


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0, impl: str = "sdpa"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        if impl not in ("eager", "sdpa"):
            raise ValueError(f"attention impl must be eager or sdpa, got {impl!r}")
        self.dim, self.heads, self.dropout, self.impl = dim, heads, dropout, impl
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.lora = nn.ModuleDict()  # adapter name -> AttentionLoRA; empty = plain attention
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's init
        nn.init.zeros_(self.out_proj.bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention, impl: str) -> "Attention":
        """Take over an nn.MultiheadAttention's weights (open_clip's towers)."""
        if not mha._qkv_same_embed_dim or mha.in_proj_bias is None or mha.bias_k is not None:
            raise ValueError("only fused-projection MultiheadAttention with bias is supported")
        new = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, impl=impl)
        new.to(device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        with torch.no_grad():
            new.in_proj_weight.copy_(mha.in_proj_weight)
            new.in_proj_bias.copy_(mha.in_proj_bias)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            new.out_proj.bias.copy_(mha.out_proj.bias)
        return new

    # -- adapters ---------------------------------------------------------------------------
    def add_adapter(self, name: str, rank: int, alpha: float, dropout: float) -> AttentionLoRA:
        w = self.in_proj_weight
        self.lora[name] = AttentionLoRA(self.dim, rank, alpha, dropout, device=w.device, dtype=w.dtype)
        return self.lora[name]

    @torch.no_grad()
    def merge_adapters(self) -> None:
        """Fold every adapter into the base weights (W += alpha/r * B A) and drop them."""
        d = self.dim
        for a in self.lora.values():
            self.in_proj_weight[:d] += a.q.delta_weight()
            self.in_proj_weight[d:2 * d] += a.k.delta_weight()
            self.in_proj_weight[2 * d:] += a.v.delta_weight()
            self.out_proj.weight += a.out.delta_weight()
        self.lora = nn.ModuleDict()

    # -- forward ----------------------------------------------------------------------------
    def forward(self, query: Tensor, key: Optional[Tensor] = None, value: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        """query (B, Lq, D); key/value (B, Lk, D), default: the query (self-attention).
        key_padding_mask (B, Lk) bool, True = ignore that key. attn_mask (Lq, Lk) additive."""
        key = query if key is None else key
        value = key if value is None else value
        d = self.dim
        folded, live = [], []
        for a in self.lora.values():
            (folded if self._folds(a) else live).append(a)
        W, W_out = self._weights(folded)
        b = self.in_proj_bias
        if query is key and key is value:
            qkv = F.linear(query, W, b)
            for a in live:  # q, k and v deltas in one batched pass, each with its own mask
                qkv = qkv + a.qkv_delta(query)
            q, k, v = qkv.chunk(3, dim=-1)
        else:
            q = F.linear(query, W[:d], b[:d])
            k = F.linear(key, W[d:2 * d], b[d:2 * d])
            v = F.linear(value, W[2 * d:], b[2 * d:])
            for a in live:  # each delta sees its own input and its own dropout mask
                q = q + a.q(query)
                k = k + a.k(key)
                v = v + a.v(value)

        B, Lq, Lk, H = query.shape[0], query.shape[1], key.shape[1], self.heads
        q = q.view(B, Lq, H, d // H).transpose(1, 2)
        k = k.view(B, Lk, H, d // H).transpose(1, 2)
        v = v.view(B, Lk, H, d // H).transpose(1, 2)
        mask = _additive_mask(attn_mask, key_padding_mask, q.dtype)
        p = self.dropout if self.training else 0.0
        if self.impl == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            w = (q @ k.transpose(-2, -1)) * (d // H) ** -0.5
            if mask is not None:
                w = w + mask
            w = F.dropout(w.softmax(dim=-1), p=p, training=self.training)
            o = w @ v
        o = o.transpose(1, 2).reshape(B, Lq, d)
        out = F.linear(o, W_out, self.out_proj.bias)
        for a in live:
            out = out + a.out(o)
        return out

    # -- folded adapters --------------------------------------------------------------------
    def _folds(self, adapter: AttentionLoRA) -> bool:
        """Whether `adapter` is applied through the folded weights instead of its own branches:
        a frozen adapter (an earlier HiLoRA stage under the paper policy, which merges each
        finished stage into the weights: no dropout on it), or any adapter in an eval-mode
        forward without autograd (dropout is off there, so folding is exact). Dozens of
        branches of a few small ops each otherwise dominate a GPU step: measured on an H200,
        HiVG-B/16's last stage ran at 246 images/s vs 904 at stage 0, with 3x the ops."""
        if not self.training and not torch.is_grad_enabled():
            return True
        return not any(p.requires_grad for p in adapter.parameters())

    def _weights(self, folded: list[AttentionLoRA]) -> tuple[Tensor, Tensor]:
        """(in_proj weight, out_proj weight) with the folded adapters added: W + (alpha/r) B A.
        Cached while neither the base weights nor the folded adapters change (every in-place
        update, a load_state_dict or an optimizer step, bumps a tensor's version); rebuilt with
        autograd when the base weights train."""
        W, W_out = self.in_proj_weight, self.out_proj.weight
        if not folded:
            return W, W_out
        base_trains = W.requires_grad or W_out.requires_grad
        if torch.compiler.is_compiling():  # a compiled step folds in-graph: no Python cache
            return self._fold(W, W_out, folded)
        tensors = [W, W_out] + [t for a in folded for t in a.parameters()]
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        cache = self.__dict__.get("_folded_cache")
        if not base_trains and cache is not None and cache[0] == key:
            return cache[1], cache[2]
        with torch.set_grad_enabled(base_trains and torch.is_grad_enabled()):
            W_in, W_o = self._fold(W, W_out, folded)
        if not base_trains:  # a plain attribute: never in the state dict
            self.__dict__["_folded_cache"] = (key, W_in, W_o)
        return W_in, W_o

    @staticmethod
    def _fold(W: Tensor, W_out: Tensor, folded: list[AttentionLoRA]) -> tuple[Tensor, Tensor]:
        W_in = W + torch.cat([sum(a.q.delta_weight().detach() for a in folded),
                              sum(a.k.delta_weight().detach() for a in folded),
                              sum(a.v.delta_weight().detach() for a in folded)])
        return W_in, W_out + sum(a.out.delta_weight().detach() for a in folded)


def _additive_mask(attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                   dtype: torch.dtype) -> Optional[Tensor]:
    """Combine an additive (Lq, Lk) mask and a boolean (B, Lk) padding mask -> (B|1, 1, Lq, Lk)."""
    mask = None
    if attn_mask is not None:
        mask = attn_mask.to(dtype)[None, None]
    if key_padding_mask is not None:
        pad = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
        pad = pad.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]
        mask = pad if mask is None else mask + pad
    return mask
