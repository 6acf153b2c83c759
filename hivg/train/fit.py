"""The HiLoRA stage chain in one process: setup, train every stage, evaluate, save.

`fit(config, run_dir, hooks, tracker)` is the whole recipe. It knows nothing of Ray or
MLflow: distribution enters through `hooks`, tracking through `tracker`.

Run folder ({storage}/{name}):
    config.yaml              resolved config
    metrics.jsonl            one object per (stage, epoch): validation metrics only
    checkpoints/last.pt      resume state (model, optimizer, schedule, position)
    checkpoints/STAGE_best.pt   best-on-val weights of each stage
    checkpoints/best.pt      the selected checkpoint (the last stage's best)
    predictions/SPLIT.parquet   one row per expression: id, box, IoU, hit
    summary.json             final acc50 of every split, best stage and epoch, wall time
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from hivg.config import Config, ConfigError
from hivg.data.dataset import build_dataset
from hivg.data.manifest import list_splits
from hivg.errors import UserError, WeightsError
from hivg.losses import build_criterion
from hivg.model.build import build_model
from hivg.model.lora import apply_stage
from hivg.model.weights import RANDOM, WeightsSource, classify, weights_file
from hivg.train.energy import EnergyMeter
from hivg.train.energy import device_indices as energy_device_indices
from hivg.train.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from hivg.train.hooks import NullTracker, Tracker, TrainHooks
from hivg.train.loop import EvalResult, NonFiniteLossError, evaluate, train_one_epoch
from hivg.train.metrics import MetricsLog, accuracy_by_type, write_predictions
from hivg.train.optim import build_optimizer, cosine_with_warmup, scaled_lr
from hivg.train.profile import ResolvedProfile, apply_profile, resolve_profile

METRIC = "val/acc50"


def seed_everything(seed: int) -> None:
    # Same seed on every rank: model init is identical, data order comes from the sampler.
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype_for(precision: str, device: torch.device,
                  profile: str = "auto") -> torch.dtype | None:
    """The autocast dtype (None = fp32) for `precision` under `profile` (hivg.train.profile)."""
    config = Config(precision=precision, profile=profile)
    return resolve_profile(config, device.type).torch_amp_dtype


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
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


class Trainer:
    """Holds the run's state across stages; `run()` is the recipe."""

    def __init__(self, config: Config, run_dir: Path, hooks: TrainHooks | None = None,
                 tracker: Tracker | None = None, log: Callable[[str], None] = print,
                 show_progress: bool = True, stage_cache: Any = None) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        self.stage_cache = stage_cache
        self.hooks = hooks or TrainHooks()
        self.tracker = tracker if (tracker is not None and self.hooks.is_main) else NullTracker()
        self.log = log if self.hooks.is_main else (lambda _msg: None)
        self.show_progress = show_progress and self.hooks.is_main
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")

    # -- helpers -------------------------------------------------------------------------
    def _eval_loader(self, dataset) -> DataLoader:
        subset = Subset(dataset, list(self.hooks.eval_indices(len(dataset))))
        return DataLoader(subset, batch_size=self.config.optim.eval_batch_size, shuffle=False,
                          num_workers=self.config.data.num_workers,
                          pin_memory=self.s.device.type == "cuda")

    def _evaluate(self, split: str, model) -> EvalResult:
        # The bare module: shards differ in size by one row, and a DDP forward may talk to
        # the other ranks.
        model = getattr(model, "module", model)
        part = evaluate(model, self._eval_loader(self.s.eval_sets[split]), self.s.device,
                        amp_dtype=self.s.amp_dtype, canvas_size=self.config.model.image_size,
                        text_blind=self.config.data.text_blind, blind_seed=self.config.seed + 1)
        return EvalResult.merge(self.hooks.gather(part))

    def _stage_payload(self, stage_index: int, **extra) -> dict[str, Any]:
        return {"model": self.s.model.state_dict(), "config": self.config.to_yaml(),
                "stage_index": stage_index, "stage": self.config.hilora.stages[stage_index].name,
                **extra}

    # -- the recipe ----------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        start_time = time.time()
        self._prepare_run_dir(resume)
        self.s = setup(self.config, self.hooks)
        self.hooks.mark("setup_done")
        self.energy = EnergyMeter(energy_device_indices(self.s.device)).start()
        stages = self.config.hilora.stages
        world = self.hooks.world_size
        self.tracker.log_params(flatten(self.config.to_dict()))
        position = self._restore() if resume else None
        first_stage = position["stage_index"] if position else 0
        global_epoch = position["global_epoch"] if position else 0
        best: dict[str, Any] = position["best"] if position else {}

        keys = self._stage_keys()
        for k in range(first_stage, len(stages)):
            stage = stages[k]
            stage_start = time.time()
            resuming_here = position is not None and k == first_stage
            if not resuming_here:
                # Each stage's random stream depends on (seed, stage) only, so a stage trained
                # after a cached prefix is the stage an uncached chain trains.
                seed_everything(self.config.seed + 7919 * k)
                apply_stage(self.s.model, self.config.hilora, k)
                cached = self._cached_stage(k, keys)
                if cached is not None:
                    global_epoch, best = self._reuse_stage(k, cached, global_epoch)
                    continue
            lr = scaled_lr(stage.lr, stage.batch_size, world, self.config.optim.scale_lr,
                           self.config.optim.reference_world_size)
            model = self.hooks.wrap_model(self.s.model)
            sampler = self.hooks.train_sampler(self.s.train_set, self.config.seed)
            loader = DataLoader(self.s.train_set, batch_size=stage.batch_size, sampler=sampler,
                                num_workers=self.config.data.num_workers, drop_last=True,
                                pin_memory=self.s.profile.pin_memory,
                                persistent_workers=self.config.data.num_workers > 0)
            if len(loader) == 0 and stage.epochs > 0:
                raise ConfigError(f"hilora.stages[{stage.name}].batch_size: expected at most "
                                  f"{len(self.s.train_set) // world} per worker (the training "
                                  f"set has {len(self.s.train_set)} rows), got {stage.batch_size}")
            optimizer = build_optimizer(self.s.model, lr, self.config.optim.weight_decay,
                                        fused=self.s.profile.fused_adamw)
            steps = stage.epochs * len(loader)
            warmup = int(self.config.optim.warmup_epochs * len(loader))
            scheduler = cosine_with_warmup(optimizer, steps, warmup)
            first_epoch = 1
            if resuming_here:
                optimizer.load_state_dict(position["optimizer"])
                scheduler.load_state_dict(position["scheduler"])
                first_epoch = position["epoch"] + 1
                stage_best = position["stage_best"]
            else:
                # Evaluate at stage start: the stage can only keep or improve on this.
                val = self._evaluate(self.config.data.val_split, model)
                stage_best = {"val/acc50": val.acc50, "epoch": 0}
                if self.hooks.is_main:
                    save_checkpoint(self._best_path(stage.name), self._stage_payload(
                        k, epoch=0, **{"val/acc50": val.acc50}))
                self._record(k, 0, global_epoch, {"val/acc50": val.acc50, "lr": lr})
                self.log(f"[{stage.name}] start: val/acc50 {val.acc50:.4f} "
                         f"(lr {lr:.3g}, batch {stage.batch_size} x {world} workers)")
            self.hooks.barrier()

            for epoch in range(first_epoch, stage.epochs + 1):
                global_epoch += 1
                if epoch == first_epoch:
                    self.hooks.mark("first_epoch")
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(global_epoch)
                if hasattr(self.s.train_set, "set_epoch"):
                    self.s.train_set.set_epoch(global_epoch)
                stats = train_one_epoch(
                    model, self.s.criterion, loader, optimizer, scheduler, self.s.device,
                    amp_dtype=self.s.amp_dtype, grad_clip_norm=self.config.optim.grad_clip_norm,
                    stage_index=k, epoch=epoch, text_blind=self.config.data.text_blind,
                    blind_seed=self.config.seed * 1000 + global_epoch,
                    show_progress=self.show_progress,
                    desc=f"{stage.name} {epoch}/{stage.epochs}")
                val = self._evaluate(self.config.data.val_split, model)
                improved = val.acc50 > stage_best["val/acc50"]
                if improved:
                    stage_best = {"val/acc50": val.acc50, "epoch": epoch}
                record = {"train/loss": self.hooks.all_reduce_mean(stats.loss),
                          **{f"train/{t}": self.hooks.all_reduce_mean(v)
                             for t, v in stats.terms.items()},
                          "val/acc50": val.acc50, "time/epoch_s": stats.seconds,
                          "samples_per_s": stats.samples_per_s * world,
                          "lr": scheduler.get_last_lr()[0]}
                self._record(k, epoch, global_epoch, record)
                if self.hooks.is_main:
                    if improved:
                        save_checkpoint(self._best_path(stage.name), self._stage_payload(
                            k, epoch=epoch, **{"val/acc50": val.acc50}))
                    save_checkpoint(self.ckpt_dir / "last.pt", {
                        **self._stage_payload(k, epoch=epoch),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "global_epoch": global_epoch, "stage_best": stage_best,
                        "best": json.dumps(best)})
                self.hooks.report({**record, "stage_index": k, "epoch": epoch,
                                   "global_epoch": global_epoch}, self.ckpt_dir / "last.pt")
                self.log(f"[{stage.name}] epoch {epoch}/{stage.epochs}  loss {stats.loss:.4f}  "
                         f"val/acc50 {val.acc50:.4f}{' *' if improved else ''}  "
                         f"{stats.samples_per_s * world:.0f} img/s  {stats.seconds:.1f}s")
            self.hooks.barrier()
            # The next stage (and the final evaluation) starts from this stage's best.
            state = load_checkpoint(self._best_path(stage.name), self.s.device)
            load_model_weights(self.s.model, state["model"], str(self._best_path(stage.name)))
            best = {"stage": stage.name, "stage_index": k, "epoch": stage_best["epoch"],
                    "val/acc50": stage_best["val/acc50"]}
            self._publish_stage(k, keys, best, global_epoch, time.time() - stage_start)
            position = None

        return self._finish(best, global_epoch, time.time() - start_time)

    # -- the stage cache -------------------------------------------------------------------
    def _stage_keys(self) -> list[str] | None:
        if self.stage_cache is None:
            return None
        from hivg.train.stage_cache import code_fingerprint, data_fingerprint, stage_key

        data_hash = data_fingerprint(self.config.data.data_dir, self.config.data.dataset)
        code_hash = code_fingerprint()
        return [stage_key(self.config, k, data_hash, code_hash, self.s.device.type,
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

    def _reuse_stage(self, k: int, cached, global_epoch: int) -> tuple[int, dict[str, Any]]:
        stage = self.config.hilora.stages[k]
        state = cached.load(self.s.device)
        load_model_weights(self.s.model, state["model"], str(cached.checkpoint))
        if self.hooks.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached.checkpoint, self._best_path(stage.name))
        # Each epoch is recorded and reported as if trained, one by one: a searcher sees the
        # stream it would have seen, and a scheduler that stops the trial part-way stops the
        # record there too.
        for row in cached.metrics:
            values = {n: v for n, v in row.items()
                      if n not in ("stage", "stage_index", "epoch", "global_epoch")}
            self._record(k, row["epoch"], row["global_epoch"], values)
            if row["epoch"] >= 1:
                self.hooks.report({**values, "stage_index": k, "epoch": row["epoch"],
                                   "global_epoch": row["global_epoch"], "reused": 1}, None)
        info = cached.info
        self.log(f"[{stage.name}] reused from the stage cache ({cached.key}): val/acc50 "
                 f"{info['val/acc50']:.4f} at epoch {info['epoch']}, saved "
                 f"{info.get('seconds', 0):.0f}s of training")
        self.hooks.barrier()
        best = {"stage": stage.name, "stage_index": k, "epoch": info["epoch"],
                "val/acc50": info["val/acc50"]}
        return global_epoch + stage.epochs, best

    def _publish_stage(self, k: int, keys: list[str] | None, best: dict[str, Any],
                       global_epoch: int, seconds: float) -> None:
        if keys is None or not self.hooks.is_main:
            return
        from hivg.train.stage_cache import StageCacheError

        rows = [r for r in self.metrics.records() if r["stage_index"] == k]
        try:
            self.stage_cache.publish(keys[k], self._best_path(best["stage"]), rows,
                                     {**best, "seconds": seconds, "global_epoch": global_epoch})
        except (StageCacheError, OSError) as e:  # the run itself is fine; only sharing failed
            self.log(f"warning: stage {best['stage']} not published to the stage cache: {e}")

    # -- pieces --------------------------------------------------------------------------
    def _best_path(self, stage_name: str) -> Path:
        return self.ckpt_dir / f"{stage_name}_best.pt"

    def _record(self, k: int, epoch: int, global_epoch: int, values: dict[str, float]) -> None:
        if not self.hooks.is_main:
            return
        stage = self.config.hilora.stages[k]
        self.metrics.append({"stage": stage.name, "stage_index": k, "epoch": epoch,
                             "global_epoch": global_epoch, **values})
        self.tracker.log_metrics({k2: v for k2, v in values.items()
                                  if isinstance(v, (int, float)) and math.isfinite(v)},
                                 step=global_epoch)

    def _prepare_run_dir(self, resume: bool) -> None:
        config_path = self.run_dir / "config.yaml"
        if resume:
            if not config_path.is_file():
                raise UserError(f"{self.run_dir}: nothing to resume (no config.yaml)")
            if config_path.read_text() != self.config.to_yaml():
                raise UserError(f"{config_path}: the run was started with another config; "
                                "resume it without overrides or pick another --name")
            return
        if (self.run_dir / "metrics.jsonl").exists() or (self.run_dir / "summary.json").exists():
            raise UserError(f"{self.run_dir}: run folder already holds results; pass --resume "
                            "or choose another --name")
        if self.hooks.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config_path.write_text(self.config.to_yaml())

    def _restore(self) -> dict[str, Any] | None:
        """Position of an interrupted run, with the model already restored; None to start over."""
        last = self.ckpt_dir / "last.pt"
        if not last.is_file():
            if self.hooks.is_main:
                self.metrics.path.unlink(missing_ok=True)
            return None
        state = load_checkpoint(last, self.s.device)
        k, epoch = int(state["stage_index"]), int(state["epoch"])
        stages = self.config.hilora.stages
        # apply_stage(k) creates every adapter of stages <= k: the saved state dict's keys.
        apply_stage(self.s.model, self.config.hilora, k)
        load_model_weights(self.s.model, state["model"], str(last))
        if self.hooks.is_main:
            self.metrics.truncate_after(k, epoch)
        position = {"stage_index": k, "epoch": epoch, "optimizer": state["optimizer"],
                    "scheduler": state["scheduler"], "global_epoch": int(state["global_epoch"]),
                    "stage_best": state["stage_best"], "best": json.loads(state["best"])}
        self.log(f"resuming {self.run_dir.name} at {stages[k].name} after epoch {epoch}")
        return position

    def _finish(self, best: dict[str, Any], global_epoch: int, wall: float) -> dict[str, Any]:
        """Evaluate every split once with the selected checkpoint; write predictions/summary."""
        model = self.s.model
        splits: dict[str, Any] = {}
        for split in [self.config.data.val_split, *self.s.test_splits]:
            result = self._evaluate(split, model)
            rows = self.s.eval_sets[split].rows
            types = [rows["expr_type"][i] for i in result.indices]
            splits[split] = {"acc50": result.acc50, "count": int(len(result.iou)),
                             "by_type": accuracy_by_type(result.hits, types)}
            if self.hooks.is_main:
                write_predictions(self.run_dir / "predictions" / f"{split}.parquet", result, rows)
        world = self.hooks.world_size
        last_stage = self.config.hilora.stages[-1]
        # Every worker meters its own GPU; the run's energy is their sum (None without NVML).
        energy = self.energy.stop()
        if world > 1:
            measured = self.hooks.gather(energy)
            energy = None if any(e is None for e in measured) else float(sum(measured))
        summary = {
            "name": self.run_dir.name,
            **{f"{s}/acc50": v["acc50"] for s, v in splits.items()},
            "splits": splits,
            "best": best,
            "epochs_trained": global_epoch,
            "wall_time_s": wall,
            "starting_weights": self.config.model.weights or "random init",
            "dataset": self.config.data.dataset,
            "world_size": world,
            "per_worker_batch": last_stage.batch_size,
            "global_batch": last_stage.batch_size * world,
            "lr_scaling": self.config.optim.scale_lr,
            "device": self.s.device.type,
            "text_blind": self.config.data.text_blind,
            "energy_kwh": energy,
        }
        if self.hooks.is_main:
            shutil.copyfile(self._best_path(best["stage"]), self.ckpt_dir / "best.pt")
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            self.tracker.log_metrics({f"{s}/acc50": v["acc50"] for s, v in splits.items()
                                      if s != self.config.data.val_split and
                                      math.isfinite(v["acc50"])}, step=global_epoch)
            if energy is not None:
                self.tracker.log_metrics({"energy_kwh": energy}, step=global_epoch)
        return summary


def fit(config: Config, run_dir: Path, hooks: TrainHooks | None = None,
        tracker: Tracker | None = None, resume: bool = False,
        log: Callable[[str], None] = print, show_progress: bool = True,
        stage_cache: Any = None) -> dict[str, Any]:
    """Train every HiLoRA stage of `config` into `run_dir`; return the summary.
    `stage_cache` (a hivg.train.stage_cache.StageCache) reuses finished stages."""
    return Trainer(config, run_dir, hooks, tracker, log, show_progress,
                   stage_cache).run(resume=resume)


__all__ = ["fit", "Trainer", "NonFiniteLossError", "setup", "preflight", "flatten"]
