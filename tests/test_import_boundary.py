"""The layering rule: hivg.data, hivg.ops, hivg.model and hivg.train never import ray,
optuna or mlflow. Every module under them (found by walking the packages, so new modules
are covered) is imported in a fresh interpreter where those names are blocked."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("ray", "optuna", "mlflow")
PACKAGES = ("hivg.data", "hivg.ops", "hivg.model", "hivg.train")

SCRIPT = f"""
import importlib, pkgutil, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # any import of it (or a submodule) raises ImportError
for name in {BLOCKED!r}:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"blocking {{name}} did not work")
imported, failures = [], []
for package in {PACKAGES!r}:
    root = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
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


def test_library_imports_without_ray_optuna_mlflow():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    imported = result.stdout.split()
    data_modules = {f"hivg.data.{p.stem}" for p in (REPO / "hivg" / "data").glob("*.py")
                    if p.stem != "__init__"}
    assert data_modules <= set(imported)
