"""peft as the reference oracle for our LoRA (hivg.model.lora says why we do not use peft's
nn.MultiheadAttention path). On nn.Linear, peft's LoRA layer is the reference: for the same A,
B, r and alpha with dropout 0, our low-rank branch agrees with it in the forward pass, in every
gradient, and in the merged weight, within 1e-6 (fp32). The same holds for our attention
adapter against peft on HF-style separate q/k/v/out projections (the released setup), within
1e-6 relative to the values' size: its q/k/v deltas are one batched product, another order of
float operations (gradients of size ~10 differ by ~3e-6 there, 2.4e-7 relative)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")

from hivg.model.adapters import LowRank  # noqa: E402
from hivg.model.attention import Attention  # noqa: E402

TOL = 1e-6


def peft_lora(layers: dict[str, nn.Linear], r: int, alpha: float,
              AB: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """peft's LoRA on each named nn.Linear of a plain module, with the given A and B."""
    holder = nn.Module()
    for name, layer in layers.items():
        holder.add_module(name, layer)
    model = peft.get_peft_model(holder, peft.LoraConfig(
        target_modules=list(layers), r=r, lora_alpha=alpha, lora_dropout=0.0))
    with torch.no_grad():
        for name, (A, B) in AB.items():
            wrapped = getattr(model.base_model.model, name)
            wrapped.lora_A["default"].weight.copy_(A)
            wrapped.lora_B["default"].weight.copy_(B)
    return model


def close(ours: torch.Tensor, reference: torch.Tensor) -> bool:
    """Within TOL, relative to the reference's size when that is above 1."""
    return (ours - reference).abs().max() <= TOL * max(1.0, reference.abs().max().item())


def random_AB(r: int, d_in: int, d_out: int, g: torch.Generator):
    return torch.randn(r, d_in, generator=g) * 0.1, torch.randn(d_out, r, generator=g) * 0.1


@pytest.mark.parametrize("d_in, d_out, r, alpha, bias", [
    (16, 16, 4, 8.0, True),
    (32, 12, 8, 16.0, False),
    (24, 40, 1, 1.0, True),
    (64, 64, 32, 16.0, True),   # HiVG's rank and alpha
])
def test_our_lora_on_a_linear_equals_peft(d_in, d_out, r, alpha, bias):
    g = torch.Generator().manual_seed(r * 100 + d_in)
    base = nn.Linear(d_in, d_out, bias=bias)
    A, B = random_AB(r, d_in, d_out, g)
    reference = peft_lora({"proj": nn.Linear(d_in, d_out, bias=bias)}, r, alpha, {"proj": (A, B)})
    reference.base_model.model.proj.base_layer.load_state_dict(base.state_dict())
    ours = LowRank(d_in, d_out, r, alpha, dropout=0.0)
    with torch.no_grad():
        ours.A.copy_(A)
        ours.B.copy_(B)

    x = torch.randn(5, 7, d_in, generator=g)
    upstream = torch.randn(5, 7, d_out, generator=g)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours = base(x_ours) + ours(x_ours)
    y_ref = reference.base_model.model.proj(x_ref)
    assert (y_ours - y_ref).abs().max() <= TOL
    (y_ours * upstream).sum().backward()
    (y_ref * upstream).sum().backward()
    wrapped = reference.base_model.model.proj
    assert (ours.A.grad - wrapped.lora_A["default"].weight.grad).abs().max() <= TOL
    assert (ours.B.grad - wrapped.lora_B["default"].weight.grad).abs().max() <= TOL
    assert (x_ours.grad - x_ref.grad).abs().max() <= TOL

    merged = reference.merge_and_unload().proj.weight
    assert (base.weight + ours.delta_weight() - merged).abs().max() <= TOL


def test_our_attention_adapter_equals_peft_on_separate_qkv_out_projections():
    """Our fused in_proj with one rank-r delta per q, k, v (computed batched) and one on
    out_proj, against peft on four nn.Linear layers holding the same weights: projections,
    gradients of every A and B, and the merged weights."""
    d, heads, r, alpha = 32, 4, 8, 16.0
    g = torch.Generator().manual_seed(0)
    attn = Attention(d, heads, impl="eager")
    adapter = attn.add_adapter("stage1", r, alpha, dropout=0.0)
    AB = {name: random_AB(r, d, d, g) for name in ("q", "k", "v", "out")}
    with torch.no_grad():
        for name, (A, B) in AB.items():
            getattr(adapter, name).A.copy_(A)
            getattr(adapter, name).B.copy_(B)
        attn.in_proj_bias.normal_(generator=g)
    linears = {}
    for i, name in enumerate(("q", "k", "v")):
        linears[name] = nn.Linear(d, d)
        with torch.no_grad():
            linears[name].weight.copy_(attn.in_proj_weight[i * d:(i + 1) * d])
            linears[name].bias.copy_(attn.in_proj_bias[i * d:(i + 1) * d])
    linears["out"] = nn.Linear(d, d)
    linears["out"].load_state_dict(attn.out_proj.state_dict())
    reference = peft_lora(linears, r, alpha, AB)
    ref = reference.base_model.model

    x = torch.randn(3, 10, d, generator=g)
    upstream = torch.randn(3, 10, 3 * d, generator=g)
    # q, k, v: our batched self-attention path (qkv_delta) against peft's three layers.
    qkv_ours = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias) \
        + adapter.qkv_delta(x)
    qkv_ref = torch.cat([ref.q(x), ref.k(x), ref.v(x)], dim=-1)
    assert close(qkv_ours, qkv_ref)
    (qkv_ours * upstream).sum().backward()
    (qkv_ref * upstream).sum().backward()
    for name in ("q", "k", "v"):
        wrapped = getattr(ref, name)
        assert close(getattr(adapter, name).A.grad, wrapped.lora_A["default"].weight.grad), name
        assert close(getattr(adapter, name).B.grad, wrapped.lora_B["default"].weight.grad), name
    o = torch.randn(3, 10, d, generator=g)
    out_ours = attn.out_proj(o) + adapter.out(o)
    assert close(out_ours, ref.out(o))

    attn.merge_adapters()
    merged = reference.merge_and_unload()
    assert close(attn.in_proj_weight,
                 torch.cat([merged.q.weight, merged.k.weight, merged.v.weight]))
    assert close(attn.out_proj.weight, merged.out.weight)
