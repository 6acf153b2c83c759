"""The merged export: a trained HiVG's CLIP, every LoRA adapter folded in, written as an open_clip
safetensors file that open_clip.create_model loads with its own code (nn.MultiheadAttention, no
adapters) and that computes the same embeddings as our model with its adapters live."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors import safe_open

from hivg.config import HiLoRAConfig, StageConfig, load_preset
from hivg.errors import UserError
from hivg.model import backbone as bb
from hivg.model.build import build_model
from hivg.model.lora import adapters, apply_stage
from hivg.train.checkpoint import save_checkpoint
from hivg.train.export import export_open_clip
from helpers import make_tokens

REPO = Path(__file__).resolve().parents[1]


def trained_checkpoint(path: Path):
    """A tiny HiVG at stage 2 (paper policy: stage1's adapters frozen, stage2's live), every
    adapter non-zero, saved as the trainer saves a checkpoint."""
    schedule = dict(epochs=1, lr=1e-4, batch_size=8)
    stages = [StageConfig(name="stage0", **schedule),
              StageConfig(name="stage1", vision_layers=[0, 1], text_layers=[0, 3], rank=4,
                          alpha=8, **schedule),
              StageConfig(name="stage2", vision_layers=[0, 3], text_layers=[2, 3], rank=4,
                          alpha=8, **schedule)]
    config = dataclasses.replace(load_preset("tiny").replace({"model.weights": "random"}),
                                 hilora=HiLoRAConfig(policy="paper", stages=stages))
    torch.manual_seed(0)
    model = build_model(config)
    apply_stage(model, config.hilora, 2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.normal_(std=0.05)
    assert adapters(model)
    save_checkpoint(path, {"model": model.state_dict(), "config": config.to_yaml(),
                           "stage_index": 2, "stage": "stage2"})
    return model.eval()


def test_exported_clip_loads_in_open_clip_and_matches_the_adapted_model(tmp_path):
    ours = trained_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "export" / "clip-merged.safetensors"
    result = subprocess.run([sys.executable, str(REPO / "pipelines" / "export.py"),
                             "--checkpoint", str(tmp_path / "best.pt"), "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "open_clip.create_model('hivg-tiny'" in result.stdout
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["open_clip_model"] == "hivg-tiny"
        assert not any(".lora." in k for k in f.keys())

    # open_clip's own model and loader (strict keys), nothing of ours but the tiny config.
    plain = open_clip.create_model("hivg-tiny", pretrained=str(out)).eval()
    assert all(isinstance(b.attn, torch.nn.MultiheadAttention)
               for b in plain.visual.transformer.resblocks)
    image = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    tokens = make_tokens(3)
    with torch.no_grad():
        want_img, want_txt = bb.encode_image(ours.clip, image), bb.encode_text(ours.clip, tokens)
        got_img, got_txt = plain.encode_image(image), plain.encode_text(tokens)
        assert (got_img - want_img).abs().max() < 1e-4
        assert (got_txt - want_txt).abs().max() < 1e-4
        # The adapters mattered: the same CLIP without them is another function.
        for _, attn in [(n, m) for n, m in ours.named_modules() if hasattr(m, "lora")]:
            attn.lora = torch.nn.ModuleDict()
        assert (bb.encode_image(ours.clip, image) - want_img).abs().max() > 1e-2


def test_export_refuses_a_file_that_is_not_a_training_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "clip.pt")
    with pytest.raises(UserError, match="not a HiVG training checkpoint"):
        export_open_clip(tmp_path / "clip.pt", tmp_path / "x.safetensors")
    with pytest.raises(UserError, match=r"--out .*x.pt: expected a .safetensors file name"):
        export_open_clip(tmp_path / "clip.pt", tmp_path / "x.pt")
    assert not list(tmp_path.glob("x.*"))
