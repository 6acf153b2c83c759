"""A run folder: the one definition of its layout and the one reader of its files.

    {storage}/{name}/
        config.yaml                  the resolved config
        metrics.jsonl                one object per (stage, epoch): validation metrics only
        checkpoints/last.pt          resume state (model, optimizer, schedule, position)
        checkpoints/STAGE_best.pt    best-on-val weights of each stage
        checkpoints/best.pt          the selected checkpoint (the last stage's best)
        predictions/SPLIT.parquet    one row per expression: id, box, IoU, hit
        summary.json                 final acc50 of every split, best stage and epoch, ...
        identity.json                a study trial's identity: the hash of its config
                                     without paths or placement (written when it finishes)

The trainer (hivg.train.fit) writes it, the driver (hivg.orchestration.run) prepares it, and
studies, reports and benchmarks read it back through `RunFolder` and `load_trials` (a study
keeps its trials' run folders under `{storage}/{study}/trials/`). Plain Python: no torch.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from hivg.config import UnknownKeyError, get_value
from hivg.data.splits import split_sort_key
from hivg.errors import UserError

YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in
# The per-epoch metric that picks each stage's checkpoint: the only one a searcher sees.
SELECTION_METRIC = "val/acc50"
REUSED = "reused"  # metrics.jsonl: an epoch replayed from the stage cache, not trained
CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
IDENTITY = "identity.json"
CHECKPOINTS, PREDICTIONS = "checkpoints", "predictions"
BEST, LAST = "best.pt", "last.pt"
# What tables and reports read from a trial (with predictions/); checkpoints stay put.
RESULT_FILES = (SUMMARY, CONFIG, METRICS, IDENTITY)
TRIALS = "trials"  # {study}/trials/{trial}/: a study's run folders
# Where a run finds its inputs and how it is placed, not what it computes: left out of its
# identity, so moving the data or running on other hardware reuses a finished trial.
PLACEMENT_KEYS = ("data.data_dir", "data.num_workers", "device")


def safe_name(text: str) -> str:
    """A trial key (`variant/dataset/seed13`) as one folder name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def config_digest(config) -> str:
    """Six hex digits of a config (a hivg.config.Config) without its data folder: the end of
    a run folder's default name and of its MLflow run's name."""
    tree = config.to_dict()
    tree["data"].pop("data_dir")  # where the data lives does not change the run
    return hashlib.sha1(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:6]


def acc50(split: str) -> str:
    """The metric name of a split's Acc@0.5 (MLflow rejects '@')."""
    return f"{split}/acc50"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    # -- layout --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def identity_path(self) -> Path:
        return self.path / IDENTITY

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / BEST

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST

    def stage_checkpoint(self, stage: str) -> Path:
        return self.checkpoints / f"{stage}_best.pt"

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    def prediction_path(self, split: str) -> Path:
        return self.predictions / f"{split}.parquet"

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> "RunFolder":
        """The run folder a checkpoint file belongs to (its checkpoints/ folder's parent)."""
        checkpoint = Path(checkpoint)
        folder = checkpoint.parent
        return cls(folder.parent if folder.name == CHECKPOINTS else folder)

    # -- starting or resuming ------------------------------------------------------------
    def has_results(self) -> bool:
        return self.metrics_path.exists() or self.summary_path.exists()

    def prepare(self, config_yaml: str, resume: bool, write: bool = True) -> None:
        """Refuse to overwrite results, or to resume with another config; write config.yaml
        for a new run (`write`: only the process that owns the folder)."""
        if resume:
            if not self.config_path.is_file():
                raise UserError(f"{self.path}: nothing to resume (no {CONFIG})")
            stored = self.config_path.read_text()
            if stored != config_yaml and not same_identity(stored, config_yaml):
                raise UserError(f"{self.config_path}: the run was started with another config; "
                                "resume it without overrides or pick another --name")
            if stored != config_yaml and write:  # only paths differ: this machine's are kept
                self.config_path.write_text(config_yaml)
            return
        if self.has_results():
            raise UserError(f"{self.path}: run folder already holds results; pass --resume or "
                            "choose another --name")
        if write:
            self.path.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(config_yaml)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.summary_path.write_text(json.dumps(summary, indent=2))

    def write_identity(self, identity: "Identity") -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # Written whole or not at all: a driver killed mid-write must not leave half a file.
        part = self.identity_path.with_name(IDENTITY + ".part")
        part.write_text(json.dumps(
            {"hash": identity.hash, "config": identity.config}, indent=1, sort_keys=True))
        os.replace(part, self.identity_path)

    # -- reading -------------------------------------------------------------------------
    def read_config(self) -> Optional[dict[str, Any]]:
        """config.yaml as a plain tree (None: not started)."""
        if not self.config_path.is_file():
            return None
        # libyaml's loader when built in: pure-Python parsing was most of a 1,000-trial
        # study's table time (docs/results.md, orchestration at scale)
        return yaml.load(self.config_path.read_text(), Loader=YAML_LOADER) or {}

    def read_summary(self) -> Optional[dict[str, Any]]:
        """summary.json (None: not finished: running, stopped early or failed)."""
        if not self.summary_path.is_file():
            return None
        return json.loads(self.summary_path.read_text())

    def read_identity(self) -> Optional["Identity"]:
        """The identity the run was stored with: identity.json, else (a run that stopped
        before writing it, or one from before identities) its config.yaml's; None: not
        started."""
        if self.identity_path.is_file():
            try:
                data = json.loads(self.identity_path.read_text())
                return Identity(str(data["hash"]), data.get("config") or {})
            except (ValueError, KeyError, TypeError):
                pass  # unreadable (an older, torn write): the config.yaml's identity below
        config = self.read_config()
        return None if config is None else Identity.of(config)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines()
                if line.strip()]

    def read_predictions(self, split: str) -> Optional[tuple[Any, Any]]:
        """(expression ids, hits) of `split` as numpy arrays; None without the file."""
        path = self.prediction_path(split)
        if not path.is_file():
            return None
        import numpy as np
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["id", "hit"])
        ids = np.asarray(table.column("id").to_pylist(), dtype=str)
        hits = np.asarray(table.column("hit").to_numpy(zero_copy_only=False), dtype=bool)
        return ids, hits


@dataclass(frozen=True)
class Identity:
    """What a trial is: its resolved config without paths or placement, and that tree's
    hash. Two trials with the same hash train the same thing."""

    hash: str
    config: dict[str, Any]

    @classmethod
    def of(cls, config: dict[str, Any]) -> "Identity":
        """From a resolved config as a plain tree (Config.to_dict(), or config.yaml)."""
        tree = identity_tree(config)
        text = json.dumps(tree, sort_keys=True, default=str)
        return cls(hashlib.sha256(text.encode()).hexdigest()[:16], tree)

    def differences(self, other: "Identity") -> list[str]:
        """The dotted config keys whose values differ between the two."""
        mine, theirs = _flatten(self.config), _flatten(other.config)
        return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))


def same_identity(config_yaml: str, other_yaml: str) -> bool:
    """Whether two config.yaml texts train the same thing (they may differ in paths and
    placement: a resume from another machine, whose mirror lies elsewhere)."""
    return Identity.of(yaml.safe_load(config_yaml) or {}) == \
        Identity.of(yaml.safe_load(other_yaml) or {})


def identity_tree(config: dict[str, Any]) -> dict[str, Any]:
    """A config tree without PLACEMENT_KEYS; model.weights reduced to its file name (which
    weights, not where they lie)."""
    tree = json.loads(json.dumps(config, default=str))  # a copy; tuples -> lists
    for key in PLACEMENT_KEYS:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    model = tree.get("model")
    if isinstance(model, dict) and isinstance(model.get("weights"), str):
        model["weights"] = Path(model["weights"]).name
    return tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config tree as MLflow params: dotted keys to values; a list of mappings by each
    one's `name` (hilora.stages.stage1.rank), else by position."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, item in enumerate(v):
                out.update(flatten(item, f"{key}.{item.get('name', i)}."))
        else:
            out[key] = v
    return out


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values; a list of named mappings (hilora.stages) by name, as the
    config's own key grammar spells them."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) and "name" in v
                                               for v in tree):
        out = {}
        for v in tree:
            out.update(_flatten(v, f"{prefix}{v['name']}."))
        return out
    return {prefix.rstrip("."): json.dumps(tree, sort_keys=True)}


@dataclass
class Trial:
    """One run of a study (or any run), read back: its config as a plain tree (a run of an
    older schema still reads), its summary (None until it finishes) and its epochs."""

    folder: RunFolder
    config: dict[str, Any]
    summary: Optional[dict[str, Any]]
    metrics: list[dict[str, Any]]
    _predictions: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, folder: RunFolder) -> Optional["Trial"]:
        """None for a folder without config.yaml (not a run that started)."""
        config = folder.read_config()
        if config is None:
            return None
        return cls(folder, config, folder.read_summary(), folder.read_metrics())

    @property
    def key(self) -> str:
        return self.folder.name

    @property
    def variant(self) -> str:
        return str(self.config.get("variant", self.key))

    @property
    def dataset(self) -> str:
        return str((self.config.get("data") or {}).get("dataset", "?"))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def val_split(self) -> str:
        return (self.config.get("data") or {}).get("val_split") or "val"

    @property
    def splits(self) -> list[str]:
        """The evaluated splits, val first."""
        if not self.summary:
            return []
        names = list(self.summary.get("splits") or {})
        if not names:
            names = [k[:-len("/acc50")] for k in self.summary if k.endswith("/acc50")]
        return sorted(names, key=lambda s: (s != self.val_split, split_sort_key(s)))

    @property
    def test_splits(self) -> list[str]:
        return [s for s in self.splits if s != self.val_split]

    def acc(self, split: str) -> Optional[float]:
        """acc50 of `split` as a fraction (None: not evaluated)."""
        if not self.summary:
            return None
        value = (self.summary.get("splits") or {}).get(split, {}).get("acc50")
        if value is None:
            value = self.summary.get(acc50(split))
        return float(value) if _finite(value) else None

    def headline_acc(self) -> Optional[float]:
        """Mean acc50 over the test splits (val when there are none)."""
        values = [v for v in (self.acc(s) for s in self.test_splits) if v is not None]
        return statistics.fmean(values) if values else self.acc(self.val_split)

    def best_value(self, metric: str = SELECTION_METRIC, mode: str = "max") -> Optional[float]:
        """The best `metric` this run reached: its summary's record of the selected
        checkpoint when it has one, else the best of its epochs."""
        if self.summary:
            best = self.summary.get("best") or {}
            for value in (best.get(metric), self.summary.get(metric)):
                if _finite(value):
                    return float(value)
        values = [r[metric] for r in self.metrics if _finite(r.get(metric))]
        if not values:
            return None
        return float(max(values) if mode == "max" else min(values))

    @property
    def epochs(self) -> int:
        """Global epochs trained (a finished run's count, else the last one it logged)."""
        if self.summary and "epochs_trained" in self.summary:
            return int(self.summary["epochs_trained"])
        return max((int(r.get("global_epoch", 0)) for r in self.metrics), default=0)

    @property
    def epochs_reported(self) -> int:
        """Epochs it reported (the rows of trained epochs; stage-start evaluations are 0)."""
        return sum(1 for r in self.metrics if r.get("epoch", 0) >= 1)

    def predictions(self, split: str) -> Optional[tuple[Any, Any]]:
        if split not in self._predictions:
            self._predictions[split] = self.folder.read_predictions(split)
        return self._predictions[split]

    def config_value(self, key: str) -> Any:
        """A dotted config key as the run had it (hivg.config's grammar); None where the
        key does not apply (a stage this run did not have)."""
        try:
            return get_value(self.config, key)
        except (UnknownKeyError, KeyError, TypeError):
            return None


def load_trials(study_dir: str | Path) -> list[Trial]:
    """Every run folder under `{study_dir}/trials` that started (has config.yaml), in path
    order."""
    root = Path(study_dir) / TRIALS
    paths = sorted(root.glob(f"**/{CONFIG}")) if root.is_dir() else []
    return [t for t in (Trial.read(RunFolder(p.parent)) for p in paths) if t is not None]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


__all__ = ["RunFolder", "Trial", "Identity", "load_trials", "acc50", "SELECTION_METRIC", "RESULT_FILES"]
