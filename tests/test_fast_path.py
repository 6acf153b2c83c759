"""The `fast` path against the `reference` path, on CPU: SDPA vs eager attention (outputs and
gradients), fused vs unfused AdamW, the whole tiny model under both profiles, the profile
table, and the training-step benchmark as a smoke test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hivg.config import load_preset
from hivg.model.attention import Attention
from hivg.model.build import build_model
from hivg.train.optim import build_optimizer
from hivg.train.profile import ResolvedProfile, apply_profile, resolve_profile
from helpers import make_tokens

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- attention

@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_sdpa_matches_eager_outputs_and_gradients(masked, cross):
    """fp32, atol 1e-5 / rtol 1e-5 on outputs, input gradients and parameter gradients."""
    torch.manual_seed(0)
    eager = Attention(64, 4, impl="eager")
    sdpa = Attention(64, 4, impl="sdpa")
    sdpa.load_state_dict(eager.state_dict())
    q = torch.randn(3, 7, 64)
    kv = torch.randn(3, 11, 64) if cross else q
    mask = None
    if masked:
        mask = torch.zeros(3, kv.shape[1], dtype=torch.bool)
        mask[0, -3:] = True
        mask[2, 1:4] = True
    results = []
    for m in (eager, sdpa):
        qi = q.clone().requires_grad_(True)
        kvi = kv.clone().requires_grad_(True) if cross else qi
        out = m(qi, kvi, kvi, key_padding_mask=mask) if cross else m(qi, key_padding_mask=mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = [qi.grad] + ([kvi.grad] if cross else []) + [p.grad for p in m.parameters()]
        results.append((out.detach(), grads))
    (oa, ga), (ob, gb) = results
    torch.testing.assert_close(oa, ob, atol=1e-5, rtol=1e-5)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- AdamW

def test_fused_adamw_matches_unfused_on_cpu():
    """torch >= 2.4 has a fused AdamW for CPU tensors: 5 steps agree within 1e-6."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    models = [base, None]
    models[1] = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    models[1].load_state_dict(base.state_dict())
    opts = [build_optimizer(models[0], 1e-2, 1e-4, fused=False),
            build_optimizer(models[1], 1e-2, 1e-4, fused=True)]
    assert opts[1].defaults["fused"] and not opts[0].defaults.get("fused")
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)
        for m, o in zip(models, opts):
            o.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- whole model

def test_fast_forward_matches_reference_within_bf16_tolerance():
    """Tiny HiVG, random init, eval: reference (fp32, eager) vs fast (bf16 autocast, sdpa).
    Tolerance: max |fast - reference| <= 2e-2 x max(1, max |reference|) per output. The
    selected `pred_boxes` (argmax of the alignment map) is compared through `dense_boxes`
    and `align_logits`, since a near-tie may pick another patch under bf16."""
    base = load_preset("tiny").replace({"model.weights": None})
    ref_cfg = apply_profile(base.replace({"profile": "reference"}), "cpu")
    fast_cfg = apply_profile(base.replace({"profile": "fast"}), "cpu")
    assert ref_cfg.model.attention == "eager" and fast_cfg.model.attention == "sdpa"
    assert resolve_profile(fast_cfg, "cpu").torch_amp_dtype is torch.bfloat16
    torch.manual_seed(0)
    ref = build_model(ref_cfg).eval()
    fast = build_model(fast_cfg).eval()
    fast.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(0)
    pad = torch.zeros(3, 128, 128, dtype=torch.bool)
    pad[0, 80:] = True
    x = (torch.randn(3, 3, 128, 128, generator=g), pad, make_tokens(3))
    with torch.no_grad():
        out_ref = ref(*x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_fast = fast(*x)
    for k in ("dense_boxes", "align_logits", "seg_logits", "image_embed", "text_embed"):
        a, b = out_ref[k].float(), out_fast[k].float()
        scale = max(1.0, float(a.abs().max()))
        err = float((a - b).abs().max())
        assert err <= 2e-2 * scale, f"{k}: max abs error {err:.4g} > 2e-2 x {scale:.3g}"


# ----------------------------------------------------------------------------- profile table

BF16 = "bfloat16"


@pytest.mark.parametrize("profile,device,precision,expected", [
    # profile     device  precision  (amp, attention, fused, find_unused, tf32, pin)
    ("reference", "cpu",  "auto",    (None, "eager", False, True, False, False)),
    ("reference", "cuda", "auto",    (None, "eager", False, True, False, False)),
    ("fast",      "cpu",  "auto",    (BF16, "sdpa", False, False, False, False)),
    ("fast",      "cuda", "auto",    (BF16, "sdpa", True, False, True, True)),
    ("auto",      "cpu",  "auto",    (None, "sdpa", False, False, False, False)),
    ("auto",      "cuda", "auto",    (BF16, "sdpa", True, False, True, True)),
    # an explicit precision wins over the profile's autocast dtype
    ("fast",      "cuda", "fp32",    (None, "sdpa", True, False, True, True)),
    ("reference", "cuda", "bf16",    (BF16, "eager", False, True, False, False)),
    ("auto",      "cpu",  "bf16",    (BF16, "sdpa", False, False, False, False)),
])
def test_resolve_profile_table(profile, device, precision, expected):
    cfg = load_preset("tiny").replace({"profile": profile, "precision": precision})
    r = resolve_profile(cfg, device)
    assert isinstance(r, ResolvedProfile)
    assert (r.amp_dtype, r.attention, r.fused_adamw, r.find_unused, r.tf32, r.pin_memory) == expected


def test_auto_keeps_configured_attention_and_explicit_profiles_force_it():
    cfg = load_preset("tiny").replace({"model.attention": "eager"})
    assert apply_profile(cfg, "cpu").model.attention == "eager"
    assert apply_profile(cfg, "cuda").model.attention == "eager"
    assert apply_profile(cfg.replace({"profile": "fast"}), "cpu").model.attention == "sdpa"
    assert apply_profile(cfg.replace({"model.attention": "sdpa", "profile": "reference"}),
                         "cpu").model.attention == "eager"


def test_default_config_keeps_todays_cpu_behaviour():
    from hivg.train.fit import amp_dtype_for
    assert load_preset("tiny").profile == "auto"
    assert amp_dtype_for("auto", torch.device("cpu")) is None
    assert amp_dtype_for("auto", torch.device("cuda")) is torch.bfloat16
    assert amp_dtype_for("auto", torch.device("cuda"), "reference") is None


# ----------------------------------------------------------------------------- benchmark

@pytest.mark.slow
def test_training_step_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "benchmark.py"), "--training-step",
         "--steps", "1", "--warmup", "0", "--batch", "2", "--inference-batch", "2",
         "--pipeline-images", "40", "--compile-step", "aot_eager", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    rows = data["rows"]
    stages = load_preset("tiny").hilora.stages
    assert {(r["profile"], r["stage"]) for r in rows} == {
        (p, s) for p in ("reference", "fast")
        for s in (stages[0].name, stages[-1].name, "bare backbone (frozen)")} | {
        ("fast+compiled", stages[-1].name), ("fast+compiled", "bare backbone (frozen)")}
    compiled = [r for r in rows if r["profile"] == "fast+compiled"]
    assert all(r["settings"]["compiled"] == "aot_eager" for r in compiled)
    assert all(r["settings"]["compiled"] is None for r in rows if r not in compiled)
    # the compiled rows count the same step's FLOPs (on the eager step; plus folding the
    # frozen adapters, which a compiled step does in-graph every step: under 1% here)
    by_row = {(r["profile"], r["stage"]): r for r in rows}
    for stage in (stages[-1].name, "bare backbone (frozen)"):
        assert by_row[("fast+compiled", stage)]["gflop_per_step"] == pytest.approx(
            by_row[("fast", stage)]["gflop_per_step"], rel=0.01)
    assert "compiled last stage:" in proc.stdout and "target 3.5x" in proc.stdout
    for r in rows:
        assert r["images_per_s"] > 0 and r["step_ms"] > 0 and r["peak_memory_mb"] > 0
        assert r["tflops"] > 0 and r["mfu"] is None
    # The bare towers cost less per image than the whole HiVG step built on them.
    by = {(r["profile"], r["stage"]): r for r in rows}
    assert by[("reference", "bare backbone (frozen)")]["gflop_per_step"] < \
        by[("reference", stages[0].name)]["gflop_per_step"]

    modes = {(r["model"], r["mode"]) for r in data["inference"]}
    assert ("HiVG", "batch 1, model only") in modes
    assert ("HiVG", "batch 1, one 640x480 JPEG end to end") in modes
    assert ("bare towers", "batch 2, throughput") in modes
    for r in data["inference"]:
        assert 0 < r["median_ms"] <= r["p99_ms"] and r["images_per_s"] > 0

    layouts = {r["layout"]: r for r in data["input_pipeline"]}
    assert set(layouts) == {"loose JPEG files", "packed shards"}
    for r in layouts.values():
        assert r["images"] == 2 * 40 - 32  # two passes less the untimed first batch
        assert r["images_per_s_per_worker"] > 0
        assert r["workers_for_fast_last_stage"] >= 1
    # Tables last: the input pipeline's lines, then the JSON path.
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("JSON:") and "per worker" in lines[-2]


@pytest.mark.slow
def test_training_step_benchmark_inference_only_pass(tmp_path):
    """The second pass of a GPU session (--inference-only, there with --compile): only the
    inference rows are timed and written; the training table and the input pipeline are not."""
    out = tmp_path / "inference.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "benchmark.py"), "--training-step",
         "--inference-only", "--steps", "1", "--warmup", "0", "--inference-batch", "2",
         "--out", str(out)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["rows"] == [] and data["input_pipeline"] == []
    assert {r["model"] for r in data["inference"]} == {"HiVG", "bare towers"}
    assert "fast/ref" not in proc.stdout and "input pipeline" not in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("JSON:")


@pytest.mark.slow
def test_profile_accuracy_benchmark_trains_both_profiles_on_the_same_data(synthetic_storage,
                                                                          tmp_path):
    out = tmp_path / "acc.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "benchmark.py"), "--profile-accuracy",
         "--storage", str(synthetic_storage), "--train-samples", "40", "--epochs", "1",
         "--eval-samples", "8", "--random-init", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert [r["profile"] for r in data["rows"]] == ["reference", "fast"]
    ref, fast = data["rows"]
    assert data["fast_minus_reference"] == pytest.approx(fast["test/acc50"] - ref["test/acc50"])
    for r in data["rows"]:
        config = yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text())
        assert config["profile"] == r["profile"] and config["data"]["max_train_samples"] == 40
    assert "fast - reference" in proc.stdout.strip().splitlines()[-1]
