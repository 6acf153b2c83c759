"""`benchmark.py --step-breakdown` (a training step's time by part, from torch's profiler) and
the compiled training step of `--training-step --compile-step`, on the tiny preset on CPU."""
from __future__ import annotations

import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from hivg.bench.step_breakdown import (PARTS, PREFIX, attribute, build_step, event_parts,
                                       labelled_model, run_step_breakdown, step_breakdown)
from hivg.bench.training_step import compiled_forward
from hivg.config import load_preset
from hivg.model import backbone as bb

CPU = torch.device("cpu")


def tiny():
    return load_preset("tiny").replace({"model.weights": None, "profile": "fast"})


def test_last_stage_breakdown_is_printed_and_written(tmp_path, capsys):
    out = tmp_path / "breakdown.json"
    run_step_breakdown("tiny", None, 2, 1, 0, str(out))
    data = json.loads(out.read_text())
    assert data["stage"] == tiny().hilora.stages[-1].name and data["batch"] == 2
    parts = data["parts_ms"]
    assert set(parts) == set(PARTS)
    for part in ("adapters", "attention", "bridge", "vision tower", "text tower",
                 "heads and VL encoder", "loss", "optimizer"):
        assert parts[part] > 0, part
    # backward ops find the forward op that made their node: almost none left over
    assert parts["backward, unattributed"] + parts["other"] < 0.05 * data["attributed_ms"]
    assert data["attributed_ms"] == pytest.approx(sum(parts.values()))
    printed = capsys.readouterr().out
    assert "by part:" in printed and "adapters" in printed
    assert printed.strip().splitlines()[-1] == f"JSON: {out}"


def test_stage_0_has_no_adapter_time_and_the_model_is_left_unpatched():
    r = step_breakdown(tiny(), 0, 2, 1, 0, CPU)
    assert r["parts_ms"]["adapters"] == 0 and r["parts_ms"]["attention"] > 0

    model, step = build_step(tiny(), 2, 2, CPU)
    before = {name: getattr(bb, name) for name in ("embed_image", "block_attention",
                                                   "block_mlp", "text_layers")}
    with labelled_model(model):
        assert any("forward" in m.__dict__ for m in model.modules())
        assert bb.block_mlp is not before["block_mlp"]
    assert not any("forward" in m.__dict__ or "_weights" in m.__dict__ or
                   "qkv_delta" in m.__dict__ for m in model.modules())
    assert {name: getattr(bb, name) for name in before} == before


def test_backward_ops_take_the_part_of_their_forward_op():
    """Backward ops run outside every scope; each takes the part of the forward op that made
    its autograd node (matched by sequence number): the two matmuls' and the relu's backward
    go to `bridge`, the unscoped loss ops' backward stays unattributed."""
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(32, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function(PREFIX + "bridge"):
            y = (x @ w).relu() @ w
        y.square().mean().backward()
    nodes = {e.name.split(": ")[1]: part for e, part in event_parts(prof.events())
             if e.name.startswith("autograd::engine::evaluate_function")}
    assert {n: p for n, p in nodes.items() if n.startswith(("Mm", "Relu"))} == {
        "MmBackward0": "bridge", "ReluBackward0": "bridge"}
    assert nodes["MeanBackward0"] == nodes["PowBackward0"] == "backward, unattributed"
    ms, _ = attribute(prof.events(), "cpu")
    assert ms["bridge"] > 0 and ms["other"] > 0  # the loss's forward ops: outside every scope


@pytest.mark.slow
def test_compiled_step_matches_the_eager_step():
    """The last stage (frozen earlier adapters act through folded weights, uncached under
    compile) compiled with aot_eager: the same loss and the same gradients as eager (dropout
    off so both runs draw nothing)."""
    from hivg.losses import build_criterion
    from hivg.model.build import build_model
    from hivg.model.lora import apply_stage
    from hivg.bench.timing import random_batch

    config = tiny().replace({"profile": "reference"})
    torch.manual_seed(0)
    model = build_model(config)
    apply_stage(model, config.hilora, len(config.hilora.stages) - 1)
    model.eval()  # dropout off; grad on, so the live adapters still run as branches
    criterion = build_criterion(config.loss)
    g = torch.Generator().manual_seed(0)
    batch = random_batch(config, 2, g)
    batch["box"] = torch.rand(2, 4, generator=g) * 0.4 + 0.3
    with torch.no_grad():  # give every adapter a non-zero delta
        for name, p in model.named_parameters():
            if ".lora." in name and name.endswith(".B"):
                p.normal_(0, 0.02, generator=g)

    def forward_loss(b):
        return criterion(model(b["image"], b["pad_mask"], b["tokens"]), b)["loss"]

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        loss = fn(batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                               if p.grad is not None}

    eager_loss, eager_grads = loss_and_grads(forward_loss)
    compiled_loss, compiled_grads = loss_and_grads(compiled_forward(forward_loss, CPU, "aot_eager"))
    assert compiled_loss == pytest.approx(eager_loss.item(), rel=1e-5)
    assert set(compiled_grads) == set(eager_grads) and any(".lora." in n for n in eager_grads)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
