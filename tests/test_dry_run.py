"""--dry-run on train.py, ablate.py and sweep.py: the resolved config or the study's trials,
printed with Ray, Optuna and MLflow not even importable, and nothing written; --help shows
defaults."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from hivg.config import load_preset, preset_names, to_overrides

from cli_error_cases import REPO

HIDE = [str(REPO / "tests" / "hide_modules.py"), "ray,optuna,mlflow"]


def run(tmp_path, *argv, hide=True):
    env = {k: v for k, v in os.environ.items() if k not in ("HIVG_STORAGE", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, *(HIDE if hide else []),
                           str(REPO / "pipelines" / argv[0]), *argv[1:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("preset", preset_names())
def test_printed_overrides_give_back_the_config(preset):
    config = load_preset(preset).replace(["hilora.num_stages=2", "data.data_dir=/d"])
    typed = [shlex.split(line)[0] for line in to_overrides(config)]
    assert typed[0] == "hilora.num_stages=2"
    assert load_preset(preset).replace(typed) == config


def test_train_dry_run_prints_overrides_to_paste_back(tmp_path):
    storage = tmp_path / "runs"
    out = run(tmp_path, "train.py", "--dry-run", "--storage", str(storage),
              "hilora.num_stages=2", "seed=5", "hilora.stages.stage1.rank=4")
    lines = out.splitlines()
    assert lines[0] == "hilora.num_stages=2"
    assert "seed=5" in lines and "hilora.stages.stage1.rank=4" in lines
    assert f"data.data_dir={storage.resolve() / 'data'}" in lines
    again = load_preset("tiny").replace([shlex.split(line)[0] for line in lines])
    assert again.seed == 5 and len(again.hilora.stages) == 2
    assert not storage.exists()  # no data, weights or run folder


def test_ablate_dry_run_lists_each_trial_and_its_overrides(tmp_path):
    out = run(tmp_path, "ablate.py", "--dry-run", "--storage", str(tmp_path / "runs"))
    assert "study demo (variants" in out and "8 trials" in out
    assert "  baseline_synthetic_seed13: (the base)" in out
    assert "  no-bridge_synthetic_seed14: model.bridge.enabled=false" in out
    assert "  hilora.num_stages=2" in out  # the file's overrides of its base
    assert not (tmp_path / "runs").exists()


def test_sweep_dry_run_prints_the_space_and_num_samples(tmp_path):
    space = str(REPO / "search_spaces" / "hilora_ranks.yaml")
    out = run(tmp_path, "sweep.py", space, "--dry-run", "--num-samples", "5")
    assert "TPE search: 5 trials per dataset, 25 in all" in out
    assert "hilora.stages.stage1.rank: choice [4, 8, 16, 32, 64]" in out
    assert not (tmp_path / "runs").exists()


def test_grid_dry_run_lists_every_grid_point():
    from hivg.orchestration.search_space import load_study
    from hivg.orchestration.study_plan import print_study_plan

    lines = []
    print_study_plan(load_study(REPO / "search_spaces" / "hilora_ranks.yaml"), grid=True,
                     log=lines.append)
    assert "625 trials (name: overrides vs the base):" in lines
    assert ("  grid001_refcoco_seed13: hilora.stages.stage1.rank=4 hilora.stages.stage2.rank=4 "
            "hilora.stages.stage3.rank=8") in lines


def test_help_shows_defaults(tmp_path):
    out = run(tmp_path, "train.py", "--help", hide=False)
    assert "--max-failures" in out and "(default: 0)" in out and "(default: tiny)" in out
    assert "--tracking-uri" not in out  # the hidden old spelling of --mlflow-uri
