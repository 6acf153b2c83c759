"""The layering rule: the library's lower layers (hivg.data, hivg.ops, hivg.model, hivg.train
and the modules beside them: config, losses, run_folder) never import ray, optuna or mlflow,
nor the layers above them (hivg.orchestration, hivg.tracking, hivg.bench, hivg.cli); the
analysis of finished studies (hivg.analysis) needs neither Ray nor MLflow, and no torch.
Every module under those packages (found by walking them, so new modules are covered) is
imported in a fresh interpreter where the forbidden names are blocked."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THIRD_PARTY = ("ray", "optuna", "mlflow")
UPPER_LAYERS = ("hivg.orchestration", "hivg.tracking", "hivg.bench", "hivg.cli")
LIBRARY = ("hivg.data", "hivg.ops", "hivg.model", "hivg.train", "hivg.config", "hivg.losses",
           "hivg.run_folder", "hivg.errors")
ANALYSIS = ("hivg.analysis", "hivg.run_folder")

SCRIPT = """
import importlib, pkgutil, sys
blocked, packages = {blocked!r}, {packages!r}
for name in blocked:
    sys.modules[name] = None  # any import of it (or a submodule) raises ImportError
for name in blocked:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"blocking {{name}} did not work")
imported, failures = [], []
for package in packages:
    root = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(getattr(root, "__path__", []),
                                                               package + ".")]
    for name in names:
        try:
            importlib.import_module(name)
            imported.append(name)
        except Exception as e:
            failures.append(f"{{name}}: {{type(e).__name__}}: {{e}}")
print("imported", len(imported), " ".join(imported))
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def import_all(packages: tuple[str, ...], blocked: tuple[str, ...]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(blocked=blocked,
                                                                 packages=packages)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split()


def test_library_imports_without_ray_optuna_mlflow_or_the_layers_above():
    imported = import_all(LIBRARY, THIRD_PARTY + UPPER_LAYERS)
    data_modules = {f"hivg.data.{p.stem}" for p in (REPO / "hivg" / "data").glob("*.py")
                    if p.stem != "__init__"}
    assert data_modules <= set(imported)
    assert {"hivg.train.fit", "hivg.model.build", "hivg.run_folder"} <= set(imported)


def test_analysis_needs_no_ray_mlflow_orchestration_or_torch():
    imported = import_all(ANALYSIS, THIRD_PARTY + UPPER_LAYERS + ("torch",))
    assert {f"hivg.analysis.{p.stem}" for p in (REPO / "hivg" / "analysis").glob("*.py")
            if p.stem != "__init__"} <= set(imported)


# A study's driver and its trial processes (the path of a trial up to `fit`) load no torch:
# 1,000 no-op trials 32 at a time fit in memory (each trial process ~0.3 GB, not ~1 GB).
TRIAL_PATH = ("hivg.orchestration.tune", "hivg.orchestration.run",
              "hivg.orchestration.remote_stage_cache", "hivg.tracking", "hivg.train.hooks",
              "hivg.train.metrics", "hivg.train.stage_cache", "hivg.bench.orchestration_scale")


def test_a_study_driver_and_its_trial_path_import_no_torch():
    imported = import_all(TRIAL_PATH, ("torch", "torchvision", "open_clip"))
    assert set(TRIAL_PATH) <= set(imported)


@pytest.mark.parametrize("blocked", ["hivg.orchestration", "hivg.tracking"])
def test_the_check_fails_on_an_upward_import(tmp_path, blocked):
    """The script reports a module that imports a blocked layer (so the tests above can
    fail): a scratch package that imports `blocked` does not pass."""
    package = tmp_path / "scratch_layer"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "upward.py").write_text(f"import {blocked}\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(
        blocked=UPPER_LAYERS, packages=("scratch_layer",))], capture_output=True, text=True,
        env=env, cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert f"scratch_layer.upward: ModuleNotFoundError: import of {blocked}" in result.stdout
