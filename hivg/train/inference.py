"""Evaluate a saved checkpoint on a prepared dataset: rebuild, restore, predict, score."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from hivg.config import Config, ConfigError
from hivg.data.dataset import build_dataset
from hivg.data.manifest import list_splits
from hivg.errors import UserError
from hivg.model.build import build_model
from hivg.train.checkpoint import load_checkpoint, load_model_weights
from hivg.model.lora import apply_stage
from hivg.train.fit import amp_dtype_for
from hivg.train.profile import apply_profile
from hivg.train.hooks import TrainHooks
from hivg.train.loop import evaluate
from hivg.train.metrics import accuracy_by_type, localisation, write_predictions


def load_trained_model(checkpoint: Path, device: torch.device) -> tuple[torch.nn.Module, Config]:
    """The model a checkpoint was saved from, with its weights (strict, shapes checked)."""
    state = load_checkpoint(checkpoint, device)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{checkpoint}: not a HiVG training checkpoint (no model/config inside)")
    # train.py stores the config as YAML text; a mapping (a hand-made checkpoint) is read too.
    tree = state["config"]
    if isinstance(tree, str):
        try:
            tree = yaml.safe_load(tree)
        except yaml.YAMLError:
            tree = None
    if not isinstance(tree, dict):
        raise UserError(f"{checkpoint}: its config is neither YAML text nor a mapping "
                        f"(got {type(state['config']).__name__})")
    config = Config.from_dict(tree)
    if not isinstance(state.get("stage_index"), int):
        raise UserError(f"{checkpoint}: not a HiVG training checkpoint (no stage_index)")
    # Weights come from the checkpoint; the starting weights file need not exist any more.
    model = build_model(apply_profile(config.replace({"model.weights": None}),
                                      device.type)).to(device)
    apply_stage(model, config.hilora, int(state["stage_index"]))
    load_model_weights(model, state["model"], str(checkpoint))
    return model, config


def evaluate_checkpoint(checkpoint: Path, dataset: str, data_dir: Path, splits: list[str] | None,
                        out_dir: Path, device: str = "auto", batch_size: int | None = None,
                        max_samples: int | None = None) -> dict[str, Any]:
    """Evaluate a training checkpoint on `splits` (default: every prepared split but train),
    writing predictions to `out_dir`; `max_samples` caps each split as the run's
    data.max_eval_samples did (None: every row)."""
    dev = TrainHooks().device(device)
    model, config = load_trained_model(checkpoint, dev)
    available = list_splits(data_dir, dataset)
    if not available:
        raise ConfigError(f"--dataset: no prepared dataset {dataset!r} in {data_dir}")
    splits = splits or [s for s in available if s != config.data.train_split]
    for split in splits:
        if split not in available:
            raise ConfigError(f"--split: {split!r} is not prepared for {dataset} "
                              f"(found {', '.join(available)})")
    data = dataclasses.replace(config.data, dataset=dataset, data_dir=str(data_dir),
                               max_eval_samples=max_samples)
    results: dict[str, Any] = {}
    for split in splits:
        ds = build_dataset(data, split, config.model.image_size, config.model.context_length,
                           train=False)
        loader = DataLoader(ds, batch_size=batch_size or config.optim.eval_batch_size)
        result = evaluate(model, loader, dev,
                          amp_dtype=amp_dtype_for(config.precision, dev, config.profile),
                          canvas_size=config.model.image_size, show_progress=True, desc=split)
        types = [ds.rows["expr_type"][i] for i in result.indices]
        write_predictions(out_dir / f"{split}.parquet", result, ds.rows)
        results[split] = {"acc50": result.acc50, "count": int(len(result.iou)),
                          "by_type": accuracy_by_type(result.hits, types),
                          **localisation(result.boxes, ds.boxes[result.indices])}
    return results
