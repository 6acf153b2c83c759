"""HiLoRA, table-driven over stages and both policies: where adapters go, what trains, that
every trainable adapter learns and matters, exact merging, and state-dict loading across stages."""
import copy

import pytest
import torch

from hivg.config import ConfigError, HiLoRAConfig, StageConfig, load_preset
from hivg.losses import build_criterion
from hivg.model.build import build_model
from hivg.model.lora import adapters, apply_stage, merge_lora, trainable_parameter_groups
from helpers import make_tokens

# What every stage needs beside its LoRA (irrelevant here: no stage trains).
RUN = {"epochs": 1, "lr": 1e-4, "batch_size": 8}
# Stage 2 widens the vision and text ranges and drops bridge LoRA, so the policies differ.
STAGES = [
    StageConfig(name="s0", **RUN),
    StageConfig(name="s1", **RUN, vision_layers=[0, 1], text_layers=[0, 1], bridge_lora=True,
                rank=4, alpha=8.0, dropout=0.1),
    StageConfig(name="s2", **RUN, vision_layers=[0, 3], text_layers=[2, 3], bridge_lora=False,
                rank=4, alpha=8.0, dropout=0.2),
]
CASES = [(policy, k) for policy in ("paper", "released") for k in range(len(STAGES))]
V = "clip.visual.transformer.resblocks.{}.attn"
T = "clip.transformer.resblocks.{}.attn"
BR = "bridge.{}.cross_attn"


def expected_adapters(policy: str, k: int) -> dict[str, set[str]]:
    """Written out by hand from STAGES."""
    s1 = {V.format(i) for i in (0, 1)} | {T.format(i) for i in (0, 1)} | {BR.format(i) for i in range(4)}
    s2 = {V.format(i) for i in range(4)} | {T.format(i) for i in (2, 3)}
    out: dict[str, set[str]] = {}
    for stage, mods in (("s1", s1), ("s2", s2))[:k]:
        for m in mods:
            out.setdefault(m, set()).add(stage if policy == "paper" else "hilora")
    return out


def inputs(seed: int = 0, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    pad = torch.zeros(n, 128, 128, dtype=torch.bool)
    pad[:, :, 112:] = True
    targets = {"box": torch.rand(n, 4, generator=g) * 0.4 + 0.3, "pad_mask": pad}
    return (torch.randn(n, 3, 128, 128, generator=g), pad, make_tokens(n, seed=seed)), targets


def config(policy: str):
    return load_preset("tiny").replace({"model.weights": None}).replace({}), HiLoRAConfig(policy=policy, stages=STAGES)


def prepared(policy: str, k: int, seed: int = 0):
    cfg, hilora = config(policy)
    torch.manual_seed(seed)
    model = build_model(cfg)
    apply_stage(model, hilora, k)
    return model, cfg, hilora


def train_step(model, cfg, lr: float = 1e-2, seed: int = 0):
    """One Adam step: every parameter with a non-zero gradient moves by about lr."""
    (x, targets) = inputs(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = build_criterion(cfg.loss)(model(*x), targets)["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("policy,k", CASES)
def test_exactly_the_intended_modules_carry_adapters(policy, k):
    model, _, _ = prepared(policy, k)
    got = {m: set(names) for m, names in adapters(model).items()}
    assert got == expected_adapters(policy, k)


@pytest.mark.parametrize("policy,k", CASES)
def test_exactly_the_intended_parameters_train(policy, k):
    model, _, _ = prepared(policy, k)
    current = STAGES[k].name
    for name, p in model.named_parameters():
        if ".lora." in name:
            adapter = name.split(".lora.")[1].split(".")[0]
            want = adapter == current if policy == "paper" else True
        else:
            want = not name.startswith("clip.")  # CLIP frozen; bridge, fusion, VL encoder, heads train
        assert p.requires_grad == want, name
    groups = {g["name"]: g["params"] for g in trainable_parameter_groups(model)}
    assert sum(p.numel() for g in groups.values() for p in g) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    assert ("lora" in groups) == (k > 0)


@pytest.mark.parametrize("policy,k", [c for c in CASES if c[1] > 0])
def test_every_trainable_adapter_learns_and_changes_the_output(policy, k):
    model, cfg, _ = prepared(policy, k)
    model.train()
    train_step(model, cfg)  # B starts at zero: after one step every trainable B has moved
    (x, targets) = inputs(seed=1)
    model.zero_grad()
    build_criterion(cfg.loss)(model(*x), targets)["loss"].backward()
    trainable = {}
    for mod, names in adapters(model).items():
        attn = model.get_submodule(mod)
        for name in names:
            adapter = attn.lora[name]
            for pname, p in adapter.named_parameters():
                if p.requires_grad:
                    assert p.grad is not None and p.grad.abs().sum() > 0, f"{mod}.lora.{name}.{pname}"
                    trainable[(mod, name)] = adapter
                else:
                    assert p.grad is None
    assert trainable
    model.eval()
    flat = lambda out: torch.cat([v.flatten() for v in out.values()])  # noqa: E731
    with torch.no_grad():
        ref = flat(model(*x))
        for (mod, name), adapter in trainable.items():
            saved = [m.B.clone() for m in (adapter.q, adapter.k, adapter.v, adapter.out)]
            for m in (adapter.q, adapter.k, adapter.v, adapter.out):
                m.B.zero_()
            assert (flat(model(*x)) - ref).abs().max() > 1e-4, f"{mod}.lora.{name}"
            for m, b in zip((adapter.q, adapter.k, adapter.v, adapter.out), saved):
                m.B.copy_(b)


@pytest.mark.parametrize("policy", ["paper", "released"])
def test_merge_equals_w_plus_scaled_ba_by_hand(policy):
    model, cfg, _ = prepared(policy, 2)
    with torch.no_grad():  # make every B non-zero, trainable or not
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.normal_(0, 0.05)
    expected = {}
    for mod, names in adapters(model).items():
        attn = model.get_submodule(mod)
        w_in, w_out = attn.in_proj_weight.detach().clone(), attn.out_proj.weight.detach().clone()
        for name in names:
            a, s = attn.lora[name], STAGES[1].alpha / STAGES[1].rank  # alpha / r, from the config
            w_in += torch.cat([s * a.q.B @ a.q.A, s * a.k.B @ a.k.A, s * a.v.B @ a.v.A]).detach()
            w_out += (s * a.out.B @ a.out.A).detach()
        expected[mod] = (w_in, w_out)
    (x, _) = inputs()
    model.eval()
    with torch.no_grad():
        before = model(*x)
    merge_lora(model)
    assert adapters(model) == {}
    for mod, (w_in, w_out) in expected.items():
        attn = model.get_submodule(mod)
        assert (attn.in_proj_weight - w_in).abs().max() < 1e-5, mod
        assert (attn.out_proj.weight - w_out).abs().max() < 1e-5, mod
    with torch.no_grad():
        after = model(*x)
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-4, rtol=1e-4)
    fresh = build_model(cfg)  # the merged export is the plain architecture
    fresh.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("policy,k", [c for c in CASES if c[1] > 0])
def test_previous_stage_weights_load_strictly_and_the_stage_starts_unchanged(policy, k):
    cfg, hilora = config(policy)
    trained, _, _ = prepared(policy, k - 1)
    train_step(trained, cfg)
    if k - 1 > 0:
        train_step(trained, cfg, seed=1)  # make the previous stage's adapters non-zero
    state = copy.deepcopy(trained.state_dict())
    # a fresh process: build, prepare for the previous stage, load strictly, next stage
    torch.manual_seed(123)
    fresh = build_model(cfg)
    apply_stage(fresh, hilora, k - 1)
    fresh.load_state_dict(state, strict=True)
    (x, _) = inputs(seed=2)
    fresh.eval()
    with torch.no_grad():
        before = fresh(*x)["pred_boxes"]
    apply_stage(fresh, hilora, k)
    apply_stage(fresh, hilora, k)  # idempotent
    assert {m: set(n) for m, n in adapters(fresh).items()} == expected_adapters(policy, k)
    with torch.no_grad():
        torch.testing.assert_close(fresh(*x)["pred_boxes"], before)
    # and the stage's own checkpoint loads strictly into build + apply_stage(k)
    again = build_model(cfg)
    apply_stage(again, hilora, k)
    again.load_state_dict(fresh.state_dict(), strict=True)


def test_adapter_dropout_is_applied_in_training():
    model, _, _ = prepared("paper", 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.normal_(0, 0.1)
    model.train()
    for m in model.modules():  # isolate the LoRA dropout from the VL encoder's
        if isinstance(m, torch.nn.Dropout) and m.p != 0.1:
            m.p = 0.0
    model.vl_encoder.eval()
    (x, _) = inputs()
    with torch.no_grad():
        assert not torch.allclose(model(*x)["pred_boxes"], model(*x)["pred_boxes"])


def test_released_policy_rejects_a_rank_change():
    stages = [StageConfig(name="s0", **RUN),
              StageConfig(name="s1", **RUN, vision_layers=[0, 1], rank=4),
              StageConfig(name="s2", **RUN, vision_layers=[0, 3], rank=8)]
    model = build_model(load_preset("tiny").replace({"model.weights": None}))
    with pytest.raises(ConfigError, match=r"hilora\.stages\.s2\.rank"):
        apply_stage(model, HiLoRAConfig(policy="released", stages=stages), 2)


def test_tiny_preset_stages_apply():
    cfg = load_preset("tiny").replace({"model.weights": None})
    model = build_model(cfg)
    for k in range(len(cfg.hilora.stages)):
        apply_stage(model, cfg.hilora, k)
    assert len(adapters(model)) == 4 + 4 + 4  # vision 0..3, text 0..3, the four bridge layers


def _nonzero_bs(model, std=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.copy_(torch.randn(p.shape, generator=g) * std)


def test_batched_qkv_delta_equals_the_three_branches_values_and_gradients():
    from hivg.model.adapters import AttentionLoRA

    torch.manual_seed(0)
    adapter = AttentionLoRA(16, rank=4, alpha=8.0, dropout=0.0)
    _nonzero_bs(adapter)
    x = torch.randn(2, 5, 16, requires_grad=True)
    fused = adapter.qkv_delta(x)
    (fused * torch.arange(48.0)).sum().backward()
    fused_grads = [x.grad.clone()] + [p.grad.clone() for p in adapter.parameters()
                                      if p.grad is not None]
    x.grad = None
    adapter.zero_grad()
    branches = torch.cat([adapter.q(x), adapter.k(x), adapter.v(x)], dim=-1)
    (branches * torch.arange(48.0)).sum().backward()
    torch.testing.assert_close(fused, branches)
    branch_grads = [x.grad] + [p.grad for p in adapter.parameters() if p.grad is not None]
    for a, b in zip(fused_grads, branch_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_batched_qkv_delta_draws_an_independent_dropout_mask_for_q_k_and_v():
    from hivg.model.adapters import AttentionLoRA

    adapter = AttentionLoRA(16, rank=16, alpha=16.0, dropout=0.5).train()
    with torch.no_grad():  # identity-like A and B: each third of the output is dropout(x)
        for m in (adapter.q, adapter.k, adapter.v):
            m.A.copy_(torch.eye(16))
            m.B.copy_(torch.eye(16))
    x = torch.ones(1, 64, 16)
    q, k, v = adapter.qkv_delta(x).chunk(3, dim=-1)
    kept = [t != 0 for t in (q, k, v)]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not torch.equal(kept[a], kept[b])
    share = torch.stack(kept).float().mean().item()
    assert 0.4 < share < 0.6  # p = 0.5


def test_frozen_earlier_stage_adapters_act_merged_without_dropout_in_training():
    """The paper's HiLoRA merges each finished stage into the weights: at stage 2 the frozen
    stage-1 adapters must act exactly like merged weights, dropout included (none)."""
    model, cfg, hilora = prepared("paper", 2)
    _nonzero_bs(model)
    model.train()
    for m in model.modules():  # only the LoRA dropout of frozen adapters could still fire
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.vl_encoder.eval()  # its attention dropout is not an nn.Dropout
    for mod, names in adapters(model).items():
        for name in names:
            if name == "s1":
                model.get_submodule(mod).lora[name].set_dropout(0.9)
    (x, _) = inputs()
    out = model(*x)["pred_boxes"]
    torch.testing.assert_close(model(*x)["pred_boxes"], out)  # no dropout fired

    merged = copy.deepcopy(model)
    with torch.no_grad():  # fold s1 by hand and remove it; s2 stays a live branch
        for mod, names in adapters(merged).items():
            attn = merged.get_submodule(mod)
            if "s1" in names:
                a = attn.lora["s1"]
                attn.in_proj_weight += torch.cat([a.q.delta_weight(), a.k.delta_weight(),
                                                  a.v.delta_weight()])
                attn.out_proj.weight += a.out.delta_weight()
                del attn.lora["s1"]
    torch.testing.assert_close(merged(*x)["pred_boxes"], out, atol=1e-5, rtol=1e-5)
    out.sum().backward()  # the live adapters still get gradients through the folded weights
    assert all(p.grad is not None for n, p in model.named_parameters() if ".lora.s2." in n)


def test_folded_weights_follow_an_in_place_change_of_a_frozen_adapter():
    model, _, _ = prepared("paper", 2)
    _nonzero_bs(model)
    model.eval()
    (x, _) = inputs()
    with torch.no_grad():
        before = model(*x)["pred_boxes"]
        state = copy.deepcopy(model.state_dict())
        for name, p in model.named_parameters():
            if ".lora.s1." in name and name.endswith(".B"):
                p.mul_(3.0)
        changed = model(*x)["pred_boxes"]
        assert (changed - before).abs().max() > 1e-4
        model.load_state_dict(state)
        torch.testing.assert_close(model(*x)["pred_boxes"], before)
        with torch.enable_grad():  # the branch path: the same function
            branch = model(*x)["pred_boxes"]
        torch.testing.assert_close(branch, before, atol=1e-5, rtol=1e-5)
    assert not any("folded" in k for k in model.state_dict())
