"""The HiLoRA stage chain in one process: setup, train every stage, evaluate, save.

`fit(config, run_dir, hooks, tracker)` is the whole recipe (`Trainer.run`: setup, then per
stage start_stage, train_epoch and end_stage, then finish), writing the run folder that
hivg.run_folder describes. It knows nothing of Ray or MLflow: distribution enters through
`hooks`, tracking through `tracker`.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from hivg.config import Config, ConfigError, StageConfig
from hivg.data.dataset import build_dataset
from hivg.data.manifest import list_splits
from hivg.errors import UserError, WeightsError
from hivg.losses import build_criterion
from hivg.model.build import build_model
from hivg.model.lora import apply_stage
from hivg.model.weights import RANDOM, WeightsSource, classify, weights_file
from hivg.run_folder import (PLACEMENT_KEYS, REUSED, SELECTION_METRIC, RunFolder, acc50, flatten,
                              identity_tree)
from hivg.train.energy import EnergyMeter
from hivg.train.energy import device_indices as energy_device_indices
from hivg.train.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from hivg.train.hooks import NullTracker, Tracker, TrainHooks
from hivg.train.loop import EvalResult, NonFiniteLossError, evaluate, train_one_epoch
from hivg.train.metrics import MetricsLog, accuracy_by_type, write_predictions
from hivg.train.optim import build_optimizer, cosine_with_warmup, scaled_lr
from hivg.train.profile import ResolvedProfile, apply_profile, autocast_dtype, resolve_profile

def seed_everything(seed: int) -> None:
    # Same seed on every rank: model init is identical, data order comes from the sampler.
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype_for(precision: str, device: torch.device,
                  profile: str = "auto") -> torch.dtype | None:
    """The autocast dtype (None = fp32) for `precision` under `profile` (hivg.train.profile)."""
    name = autocast_dtype(precision, profile, device.type)
    return None if name is None else getattr(torch, name)


def check_data(config: Config) -> list[str]:
    """Fail before training when the prepared dataset is missing; return the eval splits."""
    if not config.data.data_dir:
        raise ConfigError("data.data_dir: expected the folder of prepared datasets, got None")
    data_dir = Path(config.data.data_dir) / config.data.dataset
    splits = list_splits(config.data.data_dir, config.data.dataset)
    if not splits:
        raise ConfigError(f"data.data_dir: no prepared dataset {config.data.dataset!r} in "
                          f"{data_dir} (run pipelines/prepare_data.py --dataset "
                          f"{config.data.dataset})")
    for split in (config.data.train_split, config.data.val_split, *(config.data.test_splits or [])):
        if split not in splits:
            raise ConfigError(f"data: split {split!r} not prepared in {data_dir} "
                              f"(found {', '.join(splits)})")
    if config.data.test_splits is not None:
        return list(config.data.test_splits)
    return [s for s in splits if s not in (config.data.train_split, config.data.val_split)]


def preflight(config: Config, log: Callable[[str], None] | None = None) -> None:
    """Every check that needs no training: data prepared, starting weights found (an open_clip
    tag looked up in its cache, downloaded when missing), model buildable from the config."""
    check_data(config)
    source = check_starting_weights(config, log)
    # With the weights when they load: a checkpoint of another architecture fails here,
    # before any tracking run or worker starts.
    build_model(config if source.loads else config.replace({"model.weights": None}), log=log)


def check_starting_weights(config: Config, log: Callable[[str], None] | None = None
                           ) -> WeightsSource:
    """model.weights is set, and what it names exists (a tag: in open_clip's cache, downloaded
    when missing and allowed). One-line errors naming the value and the fix."""
    m = config.model
    if m.weights is None:
        raise ConfigError(f"model.weights: not set; expected an open_clip tag of {m.clip} "
                          f"(e.g. openai), a local file or folder, or {RANDOM} for random "
                          "initialisation")
    try:
        source = classify(m.weights, m.clip)
        if source.loads:
            weights_file(source, log)
    except WeightsError as e:
        raise WeightsError(f"model.weights: {e}") from None
    return source


@dataclass
class Setup:
    model: torch.nn.Module       # unwrapped
    criterion: torch.nn.Module
    train_set: Any
    eval_sets: dict[str, Any]
    test_splits: list[str]
    device: torch.device
    amp_dtype: torch.dtype | None
    profile: ResolvedProfile | None = None  # find_unused: for the DDP wrapper (Ray Train)


def setup(config: Config, hooks: TrainHooks) -> Setup:
    test_splits = check_data(config)
    seed_everything(config.seed)
    device = hooks.device(config.device)
    profile = resolve_profile(config, device.type)
    model = build_model(apply_profile(config, device.type)).to(device)
    criterion = build_criterion(config.loss).to(device)
    size, ctx = config.model.image_size, config.model.context_length
    train_set = build_dataset(config.data, config.data.train_split, size, ctx, train=True)
    eval_sets = {s: build_dataset(config.data, s, size, ctx, train=False)
                 for s in [config.data.val_split, *test_splits]}
    return Setup(model, criterion, train_set, eval_sets, test_splits, device,
                 profile.torch_amp_dtype, profile)


@dataclass
class StageRun:
    """One stage in progress: its loader and optimiser, and its best epoch so far."""

    index: int
    spec: StageConfig
    lr: float
    model: torch.nn.Module       # wrapped by the hooks (DDP on Ray)
    sampler: Any
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: Any
    first_epoch: int
    best: dict[str, Any]         # {val/acc50, epoch}
    started: float = field(default_factory=time.time)


class Trainer:
    """Holds the run's state across stages. `run()` is the recipe: setup, then per stage
    `start_stage`, `train_epoch` for each epoch and `end_stage`, then `finish`."""

    def __init__(self, config: Config, run_dir: Path, hooks: TrainHooks | None = None,
                 tracker: Tracker | None = None, log: Callable[[str], None] = print,
                 show_progress: bool = True, stage_cache: Any = None) -> None:
        self.config, self.folder = config, RunFolder(Path(run_dir))
        self.stage_cache = stage_cache
        self.hooks = hooks or TrainHooks()
        self.tracker = tracker if (tracker is not None and self.hooks.is_main) else NullTracker()
        self.log = log if self.hooks.is_main else (lambda _msg: None)
        self.show_progress = show_progress and self.hooks.is_main
        self.metrics = MetricsLog(self.folder.metrics_path)
        self.global_epoch = 0
        self.best: dict[str, Any] = {}   # the selected checkpoint so far: its stage and epoch

    # -- the recipe ----------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        start_time = time.time()
        self.folder.prepare(self.config.to_yaml(), resume, write=self.hooks.is_main)
        self.setup()
        position = self._restore() if resume else None
        keys = self._stage_keys()
        first = position["stage_index"] if position else 0
        for k in range(first, len(self.config.hilora.stages)):
            resuming = position if position is not None and k == first else None
            if resuming is None:
                # Each stage's random stream depends on (seed, stage) only, so a stage trained
                # after a cached prefix is the stage an uncached chain trains.
                seed_everything(self.config.seed + 7919 * k)
                apply_stage(self.model, self.config.hilora, k)
                cached = self._cached_stage(k, keys)
                if cached is not None:
                    self._reuse_stage(k, cached)
                    continue
            stage = self.start_stage(k, resuming)
            for epoch in range(stage.first_epoch, stage.spec.epochs + 1):
                self.train_epoch(stage, epoch)
            self.end_stage(stage, keys)
        return self.finish(time.time() - start_time)

    def setup(self) -> None:
        """Data, model and loss on this process's device; metering and tracking begin."""
        s = setup(self.config, self.hooks)
        self.model, self.criterion, self.device = s.model, s.criterion, s.device
        self.train_set, self.eval_sets, self.test_splits = s.train_set, s.eval_sets, s.test_splits
        self.amp_dtype, self.profile = s.amp_dtype, s.profile
        self.hooks.mark("setup_done")
        self.energy = EnergyMeter(energy_device_indices(self.device)).start()
        # Params: what trains (the run's identity, which MLflow keeps fixed). Where it lies
        # (data folder, weights path, device) may change when another machine resumes the
        # run: tags, which may change.
        config = self.config.to_dict()
        self.tracker.log_params(flatten(identity_tree(config)))
        flat = flatten(config)
        self.tracker.set_tags({f"placement.{k}": str(flat[k])
                               for k in (*PLACEMENT_KEYS, "model.weights") if k in flat})

    def start_stage(self, k: int, resuming: dict[str, Any] | None) -> StageRun:
        """Loader, optimiser and schedule of stage k; a new stage evaluates its start (it can
        only keep or improve on it), a resumed one restores its position."""
        spec, world = self.config.hilora.stages[k], self.hooks.world_size
        lr = scaled_lr(spec.lr, spec.batch_size, world, self.config.optim.scale_lr,
                       self.config.optim.reference_world_size)
        model = self.hooks.wrap_model(self.model)
        sampler = self.hooks.train_sampler(self.train_set, self.config.seed)
        loader = DataLoader(self.train_set, batch_size=spec.batch_size, sampler=sampler,
                            num_workers=self.config.data.num_workers, drop_last=True,
                            pin_memory=self.profile.pin_memory,
                            persistent_workers=self.config.data.num_workers > 0)
        if len(loader) == 0 and spec.epochs > 0:
            raise ConfigError(f"hilora.stages.{spec.name}.batch_size: expected at most "
                              f"{len(self.train_set) // world} per worker (the training set "
                              f"has {len(self.train_set)} rows), got {spec.batch_size}")
        optimizer = build_optimizer(self.model, lr, self.config.optim.weight_decay,
                                    fused=self.profile.fused_adamw)
        warmup = int(self.config.optim.warmup_epochs * len(loader))
        scheduler = cosine_with_warmup(optimizer, spec.epochs * len(loader), warmup)
        stage = StageRun(k, spec, lr, model, sampler, loader, optimizer, scheduler,
                         first_epoch=1, best={})
        if resuming:
            optimizer.load_state_dict(resuming["optimizer"])
            scheduler.load_state_dict(resuming["scheduler"])
            stage.first_epoch, stage.best = resuming["epoch"] + 1, resuming["stage_best"]
        else:
            val = self._evaluate(self.config.data.val_split, model)
            stage.best = {SELECTION_METRIC: val.acc50, "epoch": 0}
            if self.hooks.is_main:
                save_checkpoint(self.folder.stage_checkpoint(spec.name),
                                self._stage_payload(k, epoch=0, **{SELECTION_METRIC: val.acc50}))
            self._record(k, 0, self.global_epoch, {SELECTION_METRIC: val.acc50, "lr": lr})
            self.log(f"[{spec.name}] start: {SELECTION_METRIC} {val.acc50:.4f} "
                     f"(lr {lr:.3g}, batch {spec.batch_size} x {world} workers)")
        self.hooks.barrier()
        return stage

    def train_epoch(self, stage: StageRun, epoch: int) -> None:
        """One epoch, its validation, the checkpoints (best and last) and the report."""
        self.global_epoch += 1
        k, spec, world = stage.index, stage.spec, self.hooks.world_size
        if epoch == stage.first_epoch:
            self.hooks.mark("first_epoch")
        for epoch_aware in (stage.sampler, self.train_set):
            if hasattr(epoch_aware, "set_epoch"):
                epoch_aware.set_epoch(self.global_epoch)
        stats = train_one_epoch(
            stage.model, self.criterion, stage.loader, stage.optimizer, stage.scheduler,
            self.device, amp_dtype=self.amp_dtype, grad_clip_norm=self.config.optim.grad_clip_norm,
            stage_index=k, epoch=epoch, text_blind=self.config.data.text_blind,
            blind_seed=self.config.seed * 1000 + self.global_epoch,
            show_progress=self.show_progress, desc=f"{spec.name} {epoch}/{spec.epochs}")
        val = self._evaluate(self.config.data.val_split, stage.model)
        improved = val.acc50 > stage.best[SELECTION_METRIC]
        if improved:
            stage.best = {SELECTION_METRIC: val.acc50, "epoch": epoch}
        record = {"train/loss": self.hooks.all_reduce_mean(stats.loss),
                  **{f"train/{t}": self.hooks.all_reduce_mean(v) for t, v in stats.terms.items()},
                  SELECTION_METRIC: val.acc50, "time/epoch_s": stats.seconds,
                  "samples_per_s": stats.samples_per_s * world,
                  "lr": stage.scheduler.get_last_lr()[0]}
        self._record(k, epoch, self.global_epoch, record)
        if self.hooks.is_main:
            if improved:
                save_checkpoint(self.folder.stage_checkpoint(spec.name), self._stage_payload(
                    k, epoch=epoch, **{SELECTION_METRIC: val.acc50}))
            save_checkpoint(self.folder.last_checkpoint, {
                **self._stage_payload(k, epoch=epoch),
                "optimizer": stage.optimizer.state_dict(),
                "scheduler": stage.scheduler.state_dict(),
                "global_epoch": self.global_epoch, "stage_best": stage.best,
                "best": json.dumps(self.best)})
        self.hooks.report({**record, "stage_index": k, "epoch": epoch,
                           "global_epoch": self.global_epoch}, self.folder.last_checkpoint)
        self.log(f"[{spec.name}] epoch {epoch}/{spec.epochs}  loss {stats.loss:.4f}  "
                 f"{SELECTION_METRIC} {val.acc50:.4f}{' *' if improved else ''}  "
                 f"{stats.samples_per_s * world:.0f} img/s  {stats.seconds:.1f}s")

    def end_stage(self, stage: StageRun, keys: list[str] | None) -> None:
        """The next stage (and the final evaluation) starts from this stage's best; the stage
        goes to the stage cache."""
        self.hooks.barrier()
        path = self.folder.stage_checkpoint(stage.spec.name)
        load_model_weights(self.model, load_checkpoint(path, self.device)["model"], str(path))
        self.best = {"stage": stage.spec.name, "stage_index": stage.index,
                     "epoch": stage.best["epoch"], SELECTION_METRIC: stage.best[SELECTION_METRIC]}
        self._publish_stage(stage.index, keys, time.time() - stage.started)

    def finish(self, wall: float) -> dict[str, Any]:
        """Evaluate every split once with the selected checkpoint; write predictions/summary.
        `wall`: the run up to here; the final evaluation's own seconds are `final_eval_s`."""
        started = time.time()
        splits: dict[str, Any] = {}
        for split in [self.config.data.val_split, *self.test_splits]:
            result = self._evaluate(split, self.model)
            rows = self.eval_sets[split].rows
            types = [rows["expr_type"][i] for i in result.indices]
            splits[split] = {"acc50": result.acc50, "count": int(len(result.iou)),
                             "by_type": accuracy_by_type(result.hits, types)}
            if self.hooks.is_main:
                write_predictions(self.folder.prediction_path(split), result, rows)
        world = self.hooks.world_size
        last_stage = self.config.hilora.stages[-1]
        # Every worker meters its own GPU; the run's energy is their sum (None without NVML).
        energy = self.energy.stop()
        if world > 1:
            measured = self.hooks.gather(energy)
            energy = None if any(e is None for e in measured) else float(sum(measured))
        summary = {
            "name": self.folder.name,
            **{acc50(s): v["acc50"] for s, v in splits.items()},
            "splits": splits,
            "best": self.best,
            "epochs_trained": self.global_epoch,
            "wall_time_s": wall,
            "final_eval_s": time.time() - started,
            "starting_weights": self.config.model.weights or "random init",
            "dataset": self.config.data.dataset,
            "world_size": world,
            "per_worker_batch": last_stage.batch_size,
            "global_batch": last_stage.batch_size * world,
            "lr_scaling": self.config.optim.scale_lr,
            "device": self.device.type,
            "text_blind": self.config.data.text_blind,
            "energy_kwh": energy,
        }
        if self.hooks.is_main:
            shutil.copyfile(self.folder.stage_checkpoint(self.best["stage"]),
                            self.folder.best_checkpoint)
            self.folder.write_summary(summary)
            self.tracker.log_metrics({acc50(s): v["acc50"] for s, v in splits.items()
                                      if s != self.config.data.val_split and
                                      math.isfinite(v["acc50"])}, step=self.global_epoch)
            if energy is not None:
                self.tracker.log_metrics({"energy_kwh": energy}, step=self.global_epoch)
        return summary

    # -- evaluation and records --------------------------------------------------------------
    def _eval_loader(self, dataset) -> DataLoader:
        subset = Subset(dataset, list(self.hooks.eval_indices(len(dataset))))
        return DataLoader(subset, batch_size=self.config.optim.eval_batch_size, shuffle=False,
                          num_workers=self.config.data.num_workers,
                          pin_memory=self.device.type == "cuda")

    def _evaluate(self, split: str, model) -> EvalResult:
        # The bare module: shards differ in size by one row, and a DDP forward may talk to
        # the other ranks.
        model = getattr(model, "module", model)
        part = evaluate(model, self._eval_loader(self.eval_sets[split]), self.device,
                        amp_dtype=self.amp_dtype, canvas_size=self.config.model.image_size,
                        text_blind=self.config.data.text_blind, blind_seed=self.config.seed + 1)
        return EvalResult.merge(self.hooks.gather(part))

    def _stage_payload(self, stage_index: int, **extra) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "config": self.config.to_yaml(),
                "stage_index": stage_index, "stage": self.config.hilora.stages[stage_index].name,
                **extra}

    def _record(self, k: int, epoch: int, global_epoch: int, values: dict[str, float]) -> None:
        if not self.hooks.is_main:
            return
        stage = self.config.hilora.stages[k]
        self.metrics.append({"stage": stage.name, "stage_index": k, "epoch": epoch,
                             "global_epoch": global_epoch, **values})
        self.tracker.log_metrics({k2: v for k2, v in values.items() if k2 != REUSED and
                                  isinstance(v, (int, float)) and math.isfinite(v)},
                                 step=global_epoch)

    def _restore(self) -> dict[str, Any] | None:
        """Position of an interrupted run, with the model already restored; None to start over."""
        last = self.folder.last_checkpoint
        if not last.is_file():
            if self.hooks.is_main:
                self.metrics.path.unlink(missing_ok=True)
            return None
        state = load_checkpoint(last, self.device)
        k, epoch = int(state["stage_index"]), int(state["epoch"])
        # apply_stage(k) creates every adapter of stages <= k: the saved state dict's keys.
        apply_stage(self.model, self.config.hilora, k)
        load_model_weights(self.model, state["model"], str(last))
        if self.hooks.is_main:
            self.metrics.truncate_after(k, epoch)
        self.global_epoch, self.best = int(state["global_epoch"]), json.loads(state["best"])
        self.log(f"resuming {self.folder.name} at {self.config.hilora.stages[k].name} after "
                 f"epoch {epoch}")
        return {"stage_index": k, "epoch": epoch, "optimizer": state["optimizer"],
                "scheduler": state["scheduler"], "stage_best": state["stage_best"]}

    # -- the stage cache -------------------------------------------------------------------
    def _stage_keys(self) -> list[str] | None:
        if self.stage_cache is None:
            return None
        from hivg.train.stage_cache import code_fingerprint, data_fingerprint, stage_key

        data_hash = data_fingerprint(self.config.data.data_dir, self.config.data.dataset)
        code_hash = code_fingerprint()
        return [stage_key(self.config, k, data_hash, code_hash, self.device.type,
                          self.hooks.world_size) for k in range(len(self.config.hilora.stages))]

    def _cached_stage(self, k: int, keys: list[str] | None):
        """The cache entry of stage k, decided by rank 0 so every rank agrees."""
        if keys is None:
            return None
        hit = self.stage_cache.lookup(keys[k]) if self.hooks.is_main else None
        if not self.hooks.gather(hit is not None)[0]:
            return None
        if not self.hooks.is_main:
            hit = self.stage_cache.lookup(keys[k])
            if hit is None:
                raise RuntimeError(f"stage cache entry {keys[k]} vanished between ranks")
        return hit

    def _reuse_stage(self, k: int, cached) -> None:
        stage = self.config.hilora.stages[k]
        state = cached.load(self.device)
        load_model_weights(self.model, state["model"], str(cached.checkpoint))
        if self.hooks.is_main:
            self.folder.checkpoints.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached.checkpoint, self.folder.stage_checkpoint(stage.name))
        # Each epoch is recorded and reported as if trained, one by one: a searcher sees the
        # stream it would have seen, and a scheduler that stops the trial part-way stops the
        # record there too.
        for row in cached.metrics:
            values = {n: v for n, v in row.items()
                      if n not in ("stage", "stage_index", "epoch", "global_epoch", REUSED)}
            # metrics.jsonl marks the epoch as replayed (the study counts what the cache saved)
            self._record(k, row["epoch"], row["global_epoch"], {**values, REUSED: 1})
            if row["epoch"] >= 1:
                self.hooks.report({**values, "stage_index": k, "epoch": row["epoch"],
                                   "global_epoch": row["global_epoch"], "reused": 1}, None)
        info = cached.info
        self.log(f"[{stage.name}] reused from the stage cache ({cached.key}): {SELECTION_METRIC} "
                 f"{info[SELECTION_METRIC]:.4f} at epoch {info['epoch']}, saved "
                 f"{info.get('seconds', 0):.0f}s of training")
        self.hooks.barrier()
        self.global_epoch += stage.epochs
        self.best = {"stage": stage.name, "stage_index": k, "epoch": info["epoch"],
                     SELECTION_METRIC: info[SELECTION_METRIC]}

    def _publish_stage(self, k: int, keys: list[str] | None, seconds: float) -> None:
        if keys is None or not self.hooks.is_main:
            return
        from hivg.train.stage_cache import StageCacheError

        rows = [r for r in self.metrics.records() if r["stage_index"] == k]
        try:
            self.stage_cache.publish(keys[k], self.folder.stage_checkpoint(self.best["stage"]),
                                     rows, {**self.best, "seconds": seconds,
                                            "global_epoch": self.global_epoch})
        except (StageCacheError, OSError) as e:  # the run itself is fine; only sharing failed
            self.log(f"warning: stage {self.best['stage']} not published to the stage cache: {e}")


def fit(config: Config, run_dir: Path, hooks: TrainHooks | None = None,
        tracker: Tracker | None = None, resume: bool = False,
        log: Callable[[str], None] = print, show_progress: bool = True,
        stage_cache: Any = None) -> dict[str, Any]:
    """Train every HiLoRA stage of `config` into `run_dir`; return the summary.
    `stage_cache` (a hivg.train.stage_cache.StageCache) reuses finished stages."""
    return Trainer(config, run_dir, hooks, tracker, log, show_progress,
                   stage_cache).run(resume=resume)


__all__ = ["fit", "Trainer", "NonFiniteLossError", "setup", "preflight", "flatten"]
