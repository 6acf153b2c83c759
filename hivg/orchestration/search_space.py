"""Searches and ablation studies as data: `search_spaces/*.yaml` -> a validated `Study`.

A study file declares either a search `space:` (dotted config keys mapped to domains, sampled
by Optuna through Ray Tune) or named `variants:` (config deltas, every one trained on every
dataset with every seed). `load_study` checks all of it against the config schema before
anything starts; every problem is one `UserError` line naming the file, the key and what was
expected, e.g.

    search_spaces/x.yaml: space.hilora.stages.stage9.rank: unknown key (the base has stages stage0, stage1, stage2, stage3)

The format::

    # python pipelines/sweep.py search_spaces/hilora_ranks.yaml    <- first line: the command
    name: hilora-ranks            # optional; default: the file's stem. [A-Za-z0-9._+-]
    description: ...              # optional free text
    base: hivg-b16                # required: a preset (tiny, hivg-b16, hivg-l14) or a config
                                  #   YAML path, relative to this file
    overrides:                    # optional dotted overrides applied to the base first
      optim.scale_lr: false
    datasets: all                 # `all` = the five (refcoco, refcoco+, refcocog-umd, referit,
                                  #   flickr30k), or a list of dataset names (synthetic, mixup,
                                  #   ...); default: the base's data.dataset
    metric: val/acc50             # the default and, today, the only validation metric the
                                  #   trainer reports every epoch (test splits never reach
                                  #   the searcher)
    mode: max                     # max (default) | min
    seeds: [13]                   # default [13]; variants run with every seed, a
                                  #   search space's points with the first seed
    num_samples: 24               # spaces only: trials per dataset (the CLI may override);
                                  #   default 10
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}   # per trial (defaults);
                                  #   workers 0 trains in the trial's own process
    scheduler: {type: asha, grace_period: 1, reduction_factor: 3}
                                  # spaces only: default asha with these values; `none` runs
                                  #   every trial to the end; optional max_t. grace_period and
                                  #   max_t count global epochs (summed over stages, as
                                  #   metrics.jsonl's `global_epoch`). Variants: always none.
    space:                        # either space: ...
      hilora.stages.stage1.rank: {choice: [4, 8, 16, 32]}     # any YAML values, lists too
      model.bridge.vision_layers: {grid: [[0, 3, 7, 11], [11]]}
      optim.weight_decay: {loguniform: [1.0e-5, 1.0e-2]}      # 0 < low < high
      hilora.stages.stage0.lr: {uniform: [1.0e-4, 5.0e-4]}    # low < high
      hilora.stages.stage0.epochs: {int: [20, 60]}            # inclusive integer bounds
      hilora.num_stages: {choice: [2, 3, 4]}                  # see below
    variants:                     # ... or variants: (the first one is the baseline)
      baseline: {}
      no-bridge: {model.bridge.enabled: false}

Domains: `choice` (sampled), `grid` (an axis meant to be enumerated; Optuna samples it like
`choice`, `grid_points` enumerates a space of choice/grid/int domains exhaustively),
`uniform` / `loguniform` (floats), `int` (integers, bounds inclusive). Write floats with a dot
(`1.0e-5`): YAML reads `1e-5` as a string (accepted for bounds, but not for choices).

Keys follow hivg.config's one grammar (`hivg.config.apply_overrides`), the command line's:
`hilora.num_stages` keeps the first N stages of the base's `hilora.stages` (1 <= N <= their
number), in a space, in `overrides:` or in a variant as on `train.py`. In a space it is
sampled first, and a `hilora.stages.<stage>.*` key of a stage it drops is not sampled at all
(Optuna's define-by-run: conditional parameters).

Keys set by the study itself (`data.dataset`: use `datasets:`, `seed`: use `seeds:`,
`variant`: the variant's name) are refused in `overrides:`, `space:` and `variants:`.

What is checked: unknown top-level keys; exactly one of space/variants; metric, mode,
datasets, seeds, resources, scheduler, num_samples; every space key exists in the base
config; every value of a choice/grid domain and both bounds (plus one non-integer value) of a
numeric domain, applied alone to the base, give a valid Config; every variant (base + its
delta) is a valid Config; an all-discrete space of at most 1000 points is also checked point
by point; layer indices, image size and context length are checked against the open_clip
model's depths (open_clip's config of the model, none is built), as `build_model` does.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Optional, Union

import yaml

from hivg.config import (NUM_STAGES, Config, ConfigError, UnknownKeyError, apply_overrides,
                         check_key, key_positions, load_config, load_preset, preset_names,
                         stage_position, with_position, yaml_error)
from hivg.data.splits import DATASETS, FIVE_DATASETS
from hivg.errors import UserError
from hivg.orchestration.resources import Resources
from hivg.run_folder import SELECTION_METRIC

KINDS = ("choice", "grid", "uniform", "loguniform", "int")
DISCRETE_KINDS = ("choice", "grid", "int")
TOP_LEVEL_KEYS = ("name", "description", "base", "overrides", "datasets", "metric", "mode",
                  "seeds", "num_samples", "resources", "scheduler", "space", "variants")
# Keys the study sets per trial; users set them through the study's own fields.
RESERVED_KEYS = {"data.dataset": "use datasets:", "seed": "use seeds:",
                 "variant": "the variant name sets it"}
# What a searcher may optimise: the validation metrics the trainer reports every epoch.
EPOCH_METRICS = (SELECTION_METRIC,)
DEFAULT_NUM_SAMPLES = 10
DEFAULT_SCHEDULER = {"type": "asha", "grace_period": 1, "reduction_factor": 3}
SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor", "max_t")
SCHEDULER_TYPES = ("asha",)
JOINT_CHECK_LIMIT = 1000  # all-discrete spaces up to this many points are checked point by point
_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")

Number = Union[int, float]


# ----------------------------------------------------------------------------- data types


@dataclass
class Domain:
    """One search axis: `values` for choice/grid, `low`/`high` for uniform/loguniform (floats)
    and int (inclusive integers)."""

    kind: str
    values: Optional[list[Any]] = None
    low: Optional[Number] = None
    high: Optional[Number] = None

    @property
    def discrete(self) -> bool:
        return self.kind in DISCRETE_KINDS

    def points(self) -> list[Any]:
        """Every value of a discrete domain (int: the inclusive range)."""
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1))
        if self.values is None:
            raise ValueError(f"a {self.kind} domain has no finite set of values")
        return copy.deepcopy(self.values)

    # Optuna's categorical distributions take hashable primitives only (None, bool, int,
    # float, str) and record them in trial.params. A choice holding lists or mappings (e.g.
    # vision layer lists) is therefore offered to Optuna as the values' canonical JSON strings
    # ("[0, 3, 7, 11]": readable in Optuna's and Ray's tables) and decoded back by lookup, so
    # the config always receives the original YAML value. Primitive choices pass unchanged.
    def categorical(self) -> list[Any]:
        values = self.points() if self.kind == "int" else self.values
        if all(_is_primitive(v) for v in values):
            return list(values)
        return [_encode(v) for v in values]

    def decode(self, value: Any) -> Any:
        """The config value of what Optuna returned (or recorded in trial.params)."""
        if self.kind in ("uniform", "loguniform", "int") or \
                all(_is_primitive(v) for v in self.values):
            return value
        table = {_encode(v): v for v in self.values}
        if value not in table:
            raise ValueError(f"{value!r} is not one of the encoded choices {list(table)}")
        return copy.deepcopy(table[value])


@dataclass
class Study:
    """A validated study file. `base` already includes the file's `overrides:`."""

    name: str
    path: Path
    text: str                      # the YAML source, recorded with the study's results
    base: Config
    datasets: list[str]
    metric: str
    mode: str
    seeds: list[int]
    num_samples: Optional[int]     # spaces only
    resources: Resources           # per trial
    scheduler: Optional[dict[str, Any]]   # None: no early stopping (always for variants)
    space: Optional[dict[str, Domain]] = None
    variants: Optional[dict[str, dict[str, Any]]] = None
    base_ref: str = ""             # `base:` as written
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def kind(self) -> str:
        return "space" if self.space is not None else "variants"

    @property
    def baseline(self) -> Optional[str]:
        """The reference variant (the first one declared); None for a space."""
        return next(iter(self.variants)) if self.variants else None


@dataclass
class TrialSpec:
    """One trial of a variants study."""

    variant: str
    dataset: str
    seed: int
    overrides: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.variant}/{self.dataset}/seed{self.seed}"


# ----------------------------------------------------------------------------- public API


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (see the module docstring). Raises UserError, with the
    line and column of the key it names where the file spells that key."""
    path = Path(path)
    where = str(path)
    text, data = _read(where, path)
    try:
        return _study(where, path, text, data)
    except UserError as e:
        raise type(e)(with_position(str(e), where, text)) from None


def _study(where: str, path: Path, text: str, data: dict[str, Any]) -> Study:
    is_space = "space" in data
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        _fail(where, f"name: expected letters, digits and . _ + - only, got {name!r}")
    description = data.get("description") or ""
    if not isinstance(description, str):
        _fail(where, f"description: expected a string, got {description!r}")
    base, overrides = _base_with_overrides(where, path, data)
    metric = data.get("metric", SELECTION_METRIC)
    if metric not in EPOCH_METRICS:
        _fail(where, f"metric: expected a validation metric starting with 'val/' that the "
                     f"trainer reports every epoch ({', '.join(EPOCH_METRICS)}; test splits "
                     f"never reach the searcher), got {metric!r}")
    mode = data.get("mode", "max")
    if mode not in ("max", "min"):
        _fail(where, f"mode: expected max or min, got {mode!r}")
    num_samples, scheduler = _search_settings(where, data, is_space)
    study = Study(name=name, path=path, text=text, base=base,
                  datasets=_datasets(where, data.get("datasets", [base.data.dataset])),
                  metric=metric, mode=mode, seeds=_seeds(where, data.get("seeds", [13])),
                  num_samples=num_samples, resources=_resources(where, data.get("resources") or {}),
                  scheduler=scheduler, base_ref=str(data["base"]), overrides=overrides,
                  description=description)
    if is_space:
        study.space = _space(where, base, data["space"])
    else:
        study.variants = _variants(where, base, data["variants"])
    return study


def _read(where: str, path: Path) -> tuple[str, dict[str, Any]]:
    """The file's text and its mapping: known top-level keys, exactly one of space/variants."""
    if not path.is_file():
        _fail(where, "study file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise yaml_error(where, e) from None
    if not isinstance(data, dict):
        _fail(where, "expected a mapping at the top level (base:, datasets:, space: or "
                     "variants:, ...)")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            _fail(f"{where}:{_position(text, key)}", f"{key}: unknown key (expected one of {', '.join(TOP_LEVEL_KEYS)})")
    if ("space" in data) == ("variants" in data):
        got = "both" if "space" in data else "neither"
        _fail(where, f"space/variants: expected exactly one of space: (a search) or variants: "
                     f"(an ablation), got {got}")
    return text, data


def _base_with_overrides(where: str, path: Path, data: dict[str, Any]
                         ) -> tuple[Config, dict[str, Any]]:
    """`base:` with the file's `overrides:` applied (a valid config), and those overrides."""
    if "base" not in data:
        _fail(where, f"base: missing (expected a preset name ({', '.join(preset_names())}) or a "
                     "config YAML path relative to this file)")
    base = _load_base(where, path, data["base"])
    overrides = _mapping(where, "overrides", data.get("overrides") or {})
    for key in overrides:
        _check_key(where, "overrides", base, key)
    try:
        return _valid(apply_overrides(base, overrides)), overrides
    except ConfigError as e:
        _fail(where, f"overrides: the base with these overrides is not a valid config ({e})")


def _search_settings(where: str, data: dict[str, Any], is_space: bool
                     ) -> tuple[Optional[int], Optional[dict[str, Any]]]:
    """(num_samples, scheduler): a space's (defaults as documented); none for variants."""
    if is_space:
        num_samples = data.get("num_samples", DEFAULT_NUM_SAMPLES)
        if not _is_int(num_samples) or num_samples < 1:
            _fail(where, f"num_samples: expected an integer >= 1, got {num_samples!r}")
        return num_samples, _scheduler(where, data.get("scheduler", dict(DEFAULT_SCHEDULER)))
    if "num_samples" in data:
        _fail(where, "num_samples: only for a space (a variants study runs every variant x "
                     "dataset x seed)")
    if data.get("scheduler") not in (None, "none"):
        _fail(where, f"scheduler: expected none for variants (every variant runs to the end), "
                     f"got {data['scheduler']!r}")
    return None, None


def sample_space(study: Study, trial: Any) -> dict[str, Any]:
    """Suggest one point of the space through `trial` (an optuna.trial.Trial, or anything with
    suggest_categorical / suggest_float / suggest_int, such as Ray's define-by-run captor).

    `hilora.num_stages` is suggested first; then, in file order, every key that applies to the
    stages that exist (keys of dropped stages are not suggested). Returns the decoded config
    values by dotted key; returned as a define-by-run function's constants to Ray's
    OptunaSearch, they replace the encoded categorical values in the trial's config."""
    space = _require_space(study)
    point: dict[str, Any] = {}
    num_stages = None
    if NUM_STAGES in space:
        num_stages = point[NUM_STAGES] = _suggest(trial, NUM_STAGES, space[NUM_STAGES])
    for key, domain in space.items():
        if key != NUM_STAGES and _applies(study.base, key, num_stages):
            point[key] = _suggest(trial, key, domain)
    return point


def decode_params(study: Study, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's recorded trial.params (encoded categorical values) -> config values."""
    space = _require_space(study)
    return {k: space[k].decode(v) if k in space else v for k, v in params.items()}


def grid_points(study: Study) -> list[dict[str, Any]]:
    """Every point of a space made of choice/grid/int domains (int: each integer of the
    inclusive range), honouring `hilora.num_stages` (a point omits the keys of the stages it
    drops), without duplicates, in a stable order (num_stages values, then file order)."""
    space = _require_space(study)
    for key, domain in space.items():
        if not domain.discrete:
            _fail(str(study.path), f"space.{key}: a {domain.kind} domain has no grid points (grid "
                                   "search needs choice, grid or int domains only)")
    return _enumerate(study.base, space)


def apply_trial(study: Study, overrides: dict[str, Any]) -> Config:
    """The study's base with a point's (or a variant's) dotted overrides applied."""
    return apply_overrides(study.base, overrides)


def variant_trials(study: Study) -> list[TrialSpec]:
    """Every trial of a variants study: variants (baseline first) x datasets x seeds."""
    if study.variants is None:
        _fail(str(study.path), "variants: missing (this study is a search space; use the sweep "
                               "pipeline)")
    return [TrialSpec(variant, dataset, seed, copy.deepcopy(delta))
            for variant, delta in study.variants.items()
            for dataset in study.datasets for seed in study.seeds]


def config_for(study: Study, overrides: dict[str, Any], dataset: str, seed: int,
               variant: str) -> Config:
    """The config of one trial: base + overrides, on `dataset` with `seed`, labelled
    `variant` (Config.variant is recorded, never changes behaviour)."""
    return apply_trial(study, {**overrides, "data.dataset": dataset, "seed": seed,
                               "variant": variant})


# ----------------------------------------------------------------------------- applying


def _applies(base: Config, key: str, num_stages: Optional[int]) -> bool:
    pos = stage_position(base, key)
    return num_stages is None or pos is None or pos < num_stages


def _suggest(trial: Any, key: str, domain: Domain) -> Any:
    if domain.kind == "uniform":
        return trial.suggest_float(key, domain.low, domain.high)
    if domain.kind == "loguniform":
        return trial.suggest_float(key, domain.low, domain.high, log=True)
    if domain.kind == "int":
        return trial.suggest_int(key, domain.low, domain.high)
    return domain.decode(trial.suggest_categorical(key, domain.categorical()))


def _enumerate(base: Config, space: dict[str, Domain]) -> list[dict[str, Any]]:
    counts = space[NUM_STAGES].points() if NUM_STAGES in space else [None]
    points, seen = [], set()
    for n in counts:
        keys = [k for k in space if k != NUM_STAGES and _applies(base, k, n)]
        for combo in itertools.product(*(space[k].points() for k in keys)):
            point = ({NUM_STAGES: n} if n is not None else {}) | dict(zip(keys, combo))
            signature = _encode(point)
            if signature not in seen:
                seen.add(signature)
                points.append(copy.deepcopy(point))
    return points


def _require_space(study: Study) -> dict[str, Domain]:
    if study.space is None:
        _fail(str(study.path), "space: missing (this study declares variants; use the ablate "
                               "pipeline)")
    return study.space


# ----------------------------------------------------------------------------- validation


def _position(text: str, key: str) -> str:
    line, column = key_positions(text).get(key, (1, 1))
    return f"{line}:{column}"


def _fail(where: str, message: str) -> NoReturn:
    raise UserError(" ".join(f"{where}: {message}".split()))  # one line, always


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_primitive(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _encode(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def _mapping(where: str, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        _fail(where, f"{key}: expected a mapping of dotted config keys, got {value!r}")
    return dict(value)


def _load_base(where: str, path: Path, ref: Any) -> Config:
    presets = preset_names()
    expected = (f"a preset name ({', '.join(presets)}) or a config YAML path relative to this "
                "file")
    if not isinstance(ref, str) or not ref:
        _fail(where, f"base: expected {expected}, got {ref!r}")
    candidate = path.parent / ref
    if ref.endswith((".yaml", ".yml")) or "/" in ref or candidate.is_file():
        if not candidate.is_file():
            _fail(where, f"base: config file {candidate} not found (expected {expected})")
        loader = lambda: load_config(candidate)  # noqa: E731
    elif ref in presets:
        loader = lambda: load_preset(ref)  # noqa: E731
    else:
        _fail(where, f"base: expected {expected}, got {ref!r}")
    try:
        return _valid(loader())
    except ConfigError as e:
        _fail(where, f"base: {e}")


def _check_key(where: str, section: str, config: Config, key: str,
               listing: str = "the base has") -> None:
    """The key exists in `config` (hivg.config's grammar) and is not set by the study."""
    if key in RESERVED_KEYS:
        _fail(where, f"{section}.{key}: set per trial by the study ({RESERVED_KEYS[key]})")
    try:
        check_key(config, key)
    except UnknownKeyError as e:
        reason = f"{listing} {e.list_name} {', '.join(e.choices)}" if e.list_name and \
            e.choices else e.reason
        _fail(where, f"{section}.{key}: unknown key ({reason})")
    except ConfigError as e:
        _fail(where, f"{section}.{key}: {e}")


def _datasets(where: str, value: Any) -> list[str]:
    expected = f"all or a list of dataset names from {', '.join(DATASETS)}"
    if value == "all":
        return list(FIVE_DATASETS)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        _fail(where, f"datasets: expected {expected}, got {value!r}")
    for d in value:
        if d not in DATASETS:
            _fail(where, f"datasets: unknown dataset {d!r} (expected {expected})")
    if len(set(value)) != len(value):
        _fail(where, f"datasets: expected distinct names, got {value!r}")
    return list(value)


def _seeds(where: str, value: Any) -> list[int]:
    if _is_int(value):
        value = [value]
    if not isinstance(value, list) or not value or not all(_is_int(s) and s >= 0 for s in value):
        _fail(where, f"seeds: expected a non-empty list of integers >= 0, got {value!r}")
    if len(set(value)) != len(value):
        _fail(where, f"seeds: expected distinct seeds, got {value!r}")
    return list(value)


def _resources(where: str, value: Any) -> Resources:
    names = list(Resources.__dataclass_fields__)
    if not isinstance(value, dict):
        _fail(where, f"resources: expected a mapping with {', '.join(names)}, got {value!r}")
    for k in value:
        if k not in names:
            _fail(where, f"resources.{k}: unknown key (expected one of {', '.join(names)})")
    # workers 0 = train inside the trial's own process (no Ray Train worker group to start).
    workers = value.get("workers", Resources.workers)
    if not _is_int(workers) or workers < 0:
        _fail(where, f"resources.workers: expected an integer >= 0, got {workers!r}")
    cpus = value.get("cpus_per_worker", Resources.cpus_per_worker)
    if not _is_number(cpus) or cpus <= 0:
        _fail(where, f"resources.cpus_per_worker: expected a number > 0, got {cpus!r}")
    gpus = value.get("gpus_per_worker", Resources.gpus_per_worker)
    if not _is_number(gpus) or gpus < 0:
        _fail(where, f"resources.gpus_per_worker: expected a number >= 0, got {gpus!r}")
    return Resources(workers, float(cpus), float(gpus))


def _scheduler(where: str, value: Any) -> Optional[dict[str, Any]]:
    if value is None or value == "none":
        return None
    if value in SCHEDULER_TYPES:
        value = {"type": value}
    if not isinstance(value, dict):
        _fail(where, f"scheduler: expected none or a mapping {{type: asha, grace_period: N, "
                     f"reduction_factor: R}}, got {value!r}")
    for k in value:
        if k not in SCHEDULER_KEYS:
            _fail(where, f"scheduler.{k}: unknown key (expected one of "
                         f"{', '.join(SCHEDULER_KEYS)})")
    s = {**DEFAULT_SCHEDULER, **value}
    if s["type"] not in SCHEDULER_TYPES:
        _fail(where, f"scheduler.type: expected one of {', '.join(SCHEDULER_TYPES)} (or "
                     f"scheduler: none), got {s['type']!r}")
    if not _is_int(s["grace_period"]) or s["grace_period"] < 1:
        _fail(where, f"scheduler.grace_period: expected an integer >= 1 (global epochs), got "
                     f"{s['grace_period']!r}")
    if not _is_number(s["reduction_factor"]) or s["reduction_factor"] <= 1:
        _fail(where, f"scheduler.reduction_factor: expected a number > 1, got "
                     f"{s['reduction_factor']!r}")
    if "max_t" in s and (not _is_int(s["max_t"]) or s["max_t"] < s["grace_period"]):
        _fail(where, f"scheduler.max_t: expected an integer >= grace_period (global epochs), got "
                     f"{s['max_t']!r}")
    return s


def _domain(where: str, key: str, raw: Any) -> Domain:
    at = f"space.{key}"
    shapes = ("{choice: [...]}, {grid: [...]}, {uniform: [low, high]}, "
              "{loguniform: [low, high]} or {int: [low, high]} (constants go in overrides:)")
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in KINDS:
        _fail(where, f"{at}: expected one domain: {shapes}, got {raw!r}")
    kind, arg = next(iter(raw.items()))
    if kind in ("choice", "grid"):
        if not isinstance(arg, list) or not arg:
            _fail(where, f"{at}: {kind} expects a non-empty list of values, got {arg!r}")
        encoded = [_encode(v) for v in arg]
        if len(set(encoded)) != len(encoded):
            _fail(where, f"{at}: {kind} values must be distinct, got {arg!r}")
        return Domain(kind, values=list(arg))
    if not isinstance(arg, list) or len(arg) != 2:
        _fail(where, f"{at}: {kind} expects [low, high], got {arg!r}")
    if kind == "int":
        if not all(_is_int(v) for v in arg) or not arg[0] < arg[1]:
            _fail(where, f"{at}: int bounds must be integers low < high (inclusive), got {arg!r}")
        return Domain(kind, low=arg[0], high=arg[1])
    try:
        low, high = (float(v) for v in arg)
        ok = not any(isinstance(v, bool) for v in arg) and all(map(math.isfinite, (low, high)))
    except (TypeError, ValueError):
        ok = False
    if kind == "uniform" and not (ok and low < high):
        _fail(where, f"{at}: uniform bounds must be numbers low < high, got {arg!r}")
    if kind == "loguniform" and not (ok and 0 < low < high):
        _fail(where, f"{at}: loguniform bounds must be 0 < low < high, got {arg!r}")
    return Domain(kind, low=low, high=high)


def _space(where: str, base: Config, raw: Any) -> dict[str, Domain]:
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) for k in raw):
        _fail(where, f"space: expected a non-empty mapping of dotted config keys to domains, "
                     f"got {raw!r}")
    space = {}
    for key, spec in raw.items():
        _check_key(where, "space", base, key)
        space[key] = _domain(where, key, spec)
    # hilora.num_stages first: it decides which stage keys exist.
    n_stages = len(base.hilora.stages)
    max_kept = n_stages
    if NUM_STAGES in space:
        domain = space[NUM_STAGES]
        values = domain.points() if domain.discrete else None
        if values is None or not all(_is_int(v) and 1 <= v <= n_stages for v in values):
            shown = values if values is not None else f"a {domain.kind} domain"
            _fail(where, f"space.{NUM_STAGES}: expected integers in 1..{n_stages} (the base has "
                         f"{n_stages} stages) as choice, grid or int, got {shown}")
        if "hilora.stages" in space:
            _fail(where, f"space.hilora.stages: cannot be searched together with {NUM_STAGES} "
                         "(search per-stage keys instead)")
        max_kept = max(values)
    for key, domain in space.items():
        if key == NUM_STAGES:
            continue
        pos = stage_position(base, key)
        if pos is not None and pos >= max_kept:
            _fail(where, f"space.{key}: never applies ({NUM_STAGES} keeps at most {max_kept} "
                         f"stages: {', '.join(s.name for s in base.hilora.stages[:max_kept])})")
        for label, value in _probe_values(domain):
            try:
                _valid(apply_overrides(base, {key: value}))
            except ConfigError as e:
                hint = ""
                if domain.kind in ("uniform", "loguniform") and "expected an integer" in str(e):
                    hint = "; use {int: [low, high]} for an integer key"
                _fail(where, f"space.{key}: {domain.kind} {label} {value!r} is invalid "
                             f"({e}){hint}")
    _check_points_jointly(where, base, space)
    return space


def _probe_values(domain: Domain) -> list[tuple[str, Any]]:
    """The values of a domain that are applied to the base at load time."""
    if domain.kind in ("choice", "grid"):
        return [("value", v) for v in domain.values]
    probes = [("bound", domain.low), ("bound", domain.high)]
    if domain.kind != "int":  # a float strictly inside: catches a float domain on an int key
        probes.append(("value", math.nextafter(domain.low, domain.high)))
    return probes


def _check_points_jointly(where: str, base: Config, space: dict[str, Domain]) -> None:
    if not all(d.discrete for d in space.values()):
        return
    size = 0
    for n in (space[NUM_STAGES].points() if NUM_STAGES in space else [None]):
        size += math.prod(len(d.points()) for k, d in space.items()
                          if k != NUM_STAGES and _applies(base, k, n))
    if size > JOINT_CHECK_LIMIT:
        return
    for point in _enumerate(base, space):
        try:
            _valid(apply_overrides(base, point))
        except ConfigError as e:
            _fail(where, f"space: the point {_encode(point)} is not a valid config ({e})")


def _variants(where: str, base: Config, raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict) or not raw:
        _fail(where, f"variants: expected a non-empty mapping of variant names to config deltas "
                     f"(the first one is the baseline), got {raw!r}")
    variants = {}
    for name, delta in raw.items():
        at = f"variants.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            _fail(where, f"{at}: expected a variant name of letters, digits and . _ + - only")
        delta = _mapping(where, at, delta if delta is not None else {})
        target, listing = base, "the base has"
        if NUM_STAGES in delta:
            try:
                target = apply_overrides(base, {NUM_STAGES: delta[NUM_STAGES]})
            except ConfigError as e:
                _fail(where, f"{at}.{e}")
            listing = f"{NUM_STAGES}={delta[NUM_STAGES]} keeps"
        for key in delta:
            _check_key(where, at, target, key, listing)
        try:
            _valid(apply_overrides(base, delta))
        except ConfigError as e:
            _fail(where, f"{at}: the base with this delta is not a valid config ({e})")
        variants[name] = delta
    return variants


# ----------------------------------------------------------------------------- backbone shape


def _valid(config: Config) -> Config:
    """Layer indices, image size and context length against the open_clip model's config (no
    model is built; imported here so that reading a study's results needs no torch)."""
    from hivg.model.build import check_against_clip

    check_against_clip(config)
    return config
