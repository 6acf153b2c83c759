"""Configuration: nested dataclasses, validated at construction.

One `Config` describes a whole run. It round-trips through dicts and YAML, and every error
names the dotted key and what was expected. Builders (`hivg.model.build`, `hivg.data.dataset`,
`hivg.train.fit`) turn it into explicit constructor arguments; modules never receive a
config object. Every field carries its help text (`field(metadata={"help": ...})`).

Presets (`hivg/configs/*.yaml`) are the one place a model's values live: the fields a preset
decides (the CLIP model, its image size and text context, bridge layers, fusion shape, the
HiLoRA stages) have no default here, so a config starts from a preset or gives them all.

One grammar for dotted keys, used by the command line (`optim.lr=1e-4`), study files and
search points alike:
- `a.b.c` walks nested mappings; a list of named items is addressed by name or by position
  (`hilora.stages.stage1.rank`, `hilora.stages.1.rank`);
- `hilora.num_stages=N` keeps the first N stages (applied before the other keys, so a key of
  a dropped stage is an unknown key);
- keys print as a user types them (`hilora.stages.stage0.epochs`).
"""
from __future__ import annotations

import dataclasses
import math
import re
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from hivg.errors import UserError

PRESETS_DIR = Path(__file__).parent / "configs"
NUM_STAGES = "hilora.num_stages"  # keeps the first N stages; see apply_overrides


class ConfigError(UserError, ValueError):
    """A user error in configuration: the message names the key and what was expected."""


class UnknownKeyError(ConfigError):
    """A dotted key that addresses no field. `walked`: the key up to the part that failed;
    `choices`: what exists there; `list_name`: set when that part names a missing list item
    (`choices` are then the items' names)."""

    def __init__(self, walked: str, choices: list[str], list_name: str | None = None,
                 reason: str | None = None) -> None:
        self.walked, self.choices, self.list_name = walked, choices, list_name
        part = walked.rsplit(".", 1)[-1]
        if reason is None:
            reason = (f"expected an index < {len(choices)} or one of {', '.join(choices)}"
                      if list_name else f"expected one of {', '.join(choices)}")
        self.reason = reason
        what = f"no list item {part!r}" if list_name else "unknown key"
        super().__init__(f"{walked}: {what} ({reason})")


def _require(condition: bool, key: str, expected: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def _help(text: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text (no default: the field is required)."""
    return field(metadata={"help": text}, **kwargs)


# ----------------------------------------------------------------------------- model


@dataclass(kw_only=True)
class BridgeConfig:
    """The multi-layer adaptive cross-modal bridge (ablation axes)."""

    enabled: bool = _help("cross-attention from vision layers to text states", default=True)
    vision_layers: list[int] = _help(
        "0-based vision encoder layers that receive a cross-attention to text (also the "
        "fused visual taps)")
    text_levels: list[int] = _help(
        "1-based text layer outputs used as keys/values (released code: hidden_states[i])")
    adaptive_weights: bool = _help(
        "learned sample-agnostic position weights: t + w * t per text level", default=True)

    def __post_init__(self) -> None:
        _require(len(self.vision_layers) > 0 or not self.enabled, "model.bridge.vision_layers",
                 "at least one layer when the bridge is enabled", self.vision_layers)
        _require(all(v >= 0 for v in self.vision_layers), "model.bridge.vision_layers",
                 "non-negative layer indices", self.vision_layers)
        _require(len(set(self.vision_layers)) == len(self.vision_layers),
                 "model.bridge.vision_layers", "distinct layers", self.vision_layers)
        _require(len(self.text_levels) > 0, "model.bridge.text_levels", "at least one level",
                 self.text_levels)
        _require(all(t >= 1 for t in self.text_levels), "model.bridge.text_levels",
                 "1-based text layer indices (>= 1)", self.text_levels)
        self.vision_layers = sorted(self.vision_layers)
        self.text_levels = sorted(self.text_levels)


@dataclass(kw_only=True)
class VLEncoderConfig:
    """The visual-linguistic transformer on [REG] + visual tokens + text tokens."""

    layers: int = _help("transformer layers")
    dim: Optional[int] = _help("width; null: CLIP's embedding width (512 for B/16, 768 for "
                               "L/14)", default=None)
    heads: int = _help("attention heads")
    ffn_dim: int = _help("feed-forward width")
    dropout: float = _help("dropout in attention and feed-forward")

    def __post_init__(self) -> None:
        _require(self.layers >= 1, "model.vl_encoder.layers", "an integer >= 1", self.layers)
        _require(self.heads >= 1, "model.vl_encoder.heads", "an integer >= 1", self.heads)
        _require(self.dim is None or (self.dim >= 1 and self.dim % self.heads == 0),
                 "model.vl_encoder.dim", f"a positive multiple of heads={self.heads}", self.dim)
        _require(self.ffn_dim >= 1, "model.vl_encoder.ffn_dim", "an integer >= 1", self.ffn_dim)
        _require(0.0 <= self.dropout < 1.0, "model.vl_encoder.dropout", "a value in [0, 1)",
                 self.dropout)


@dataclass(kw_only=True)
class ModelConfig:
    clip: str = _help("open_clip model name: ViT-B-16-quickgelu, ViT-L-14-quickgelu, or a "
                      "registered tiny one (hivg-tiny)")
    weights: Optional[str] = _help(
        "local weights file; null: random init (tests); @synthetic-pretrained: the tiny CLIP "
        "pre-trained on synthetic captions, cached under {storage}/weights", default=None)
    weights_format: Literal["auto", "open_clip", "hf", "hivg_released"] = _help(
        "how to read model.weights (auto: guessed from its keys)", default="auto")
    image_size: int = _help("input canvas in pixels (the CLIP model's image size)")
    context_length: int = _help("text tokens (at most the CLIP model's context)")
    bridge: BridgeConfig = _help("the cross-modal bridge")
    vl_encoder: VLEncoderConfig = _help("the visual-linguistic fusion transformer")
    head_layers: int = _help("layers of the box MLP on [REG]", default=3)
    seg_head: Literal["full", "tapered"] = _help(
        "segmentation head: full (VL width in every upsampling) or tapered (halving "
        "channels)", default="full")
    attention: Literal["eager", "sdpa"] = _help(
        "eager (the released code's attention) or sdpa (fused kernels)", default="sdpa")
    # dense learns in far fewer samples, which the tiny CPU model needs (docs/results.md).
    box_head: Literal["reg", "dense"] = _help(
        "reg: the paper's box regressor on [REG]; dense: every patch regresses the box of the "
        "object it lies on and the alignment map picks the patch (needs the alignment loss)",
        default="reg")

    def __post_init__(self) -> None:
        _require(bool(self.clip), "model.clip", "an open_clip model name", self.clip)
        _require(self.image_size >= 16, "model.image_size", "an integer >= 16", self.image_size)
        _require(self.context_length >= 4, "model.context_length", "an integer >= 4",
                 self.context_length)
        _require(self.head_layers >= 1, "model.head_layers", "an integer >= 1", self.head_layers)


# ----------------------------------------------------------------------------- losses


@dataclass(kw_only=True)
class LossConfig:
    """Loss weights (the paper's); a weight of 0 switches the term off (and its head is not
    built)."""

    l1: float = _help("L1 on the box (cxcywh)", default=2.0)
    giou: float = _help("1 - GIoU on the box", default=2.0)
    contrastive: float = _help("symmetric in-batch CLIP contrastive loss", default=1.0)
    align_focal: float = _help("focal loss on the text-to-patch alignment map", default=20.0)
    align_dice: float = _help("Dice loss on the alignment map", default=2.0)
    # Not in the paper; it trains the choice the dense box head makes (argmax of the map).
    align_ce: float = _help("cross-entropy of a softmax over the patch grid, target: the cell "
                            "under the box centre", default=0.0)
    seg_focal: float = _help("focal loss on the segmentation map", default=20.0)
    seg_dice: float = _help("Dice loss on the segmentation map", default=2.0)
    focal_alpha: float = _help("focal loss alpha", default=0.25)
    focal_gamma: float = _help("focal loss gamma", default=2.0)
    contrastive_temperature: float = _help("temperature of the contrastive logits",
                                           default=0.07)

    def __post_init__(self) -> None:
        for f in ("l1", "giou", "contrastive", "align_focal", "align_dice", "align_ce",
                  "seg_focal", "seg_dice"):
            v = getattr(self, f)
            _require(v >= 0, f"loss.{f}", "a weight >= 0 (0 switches the term off)", v)
        _require(self.l1 + self.giou > 0, "loss.l1", "l1 or giou > 0 (the box must be trained)",
                 self.l1)
        _require(0 <= self.focal_alpha <= 1, "loss.focal_alpha", "a value in [0, 1]",
                 self.focal_alpha)
        _require(self.focal_gamma >= 0, "loss.focal_gamma", "a value >= 0", self.focal_gamma)
        _require(self.contrastive_temperature > 0, "loss.contrastive_temperature",
                 "a value > 0", self.contrastive_temperature)

    @property
    def use_align(self) -> bool:
        return self.align_focal > 0 or self.align_dice > 0 or self.align_ce > 0

    @property
    def use_seg(self) -> bool:
        return self.seg_focal > 0 or self.seg_dice > 0


# ----------------------------------------------------------------------------- HiLoRA stages


@dataclass(kw_only=True)
class StageConfig:
    """One HiLoRA stage. Stage 0 usually has no LoRA (CLIP frozen, bridge + head trained)."""

    name: str = _help("the stage's name: its key in overrides, its adapters' name")
    epochs: int = _help("epochs (0: the stage only evaluates its start)")
    lr: float = _help("learning rate (scaled with the global batch when optim.scale_lr)")
    batch_size: int = _help("batch per worker")
    vision_layers: Optional[list[int]] = _help(
        "inclusive [first, last] 0-based vision layers whose LoRA trains; null: none",
        default=None)
    text_layers: Optional[list[int]] = _help(
        "inclusive [first, last] 0-based text layers with LoRA; null: none", default=None)
    bridge_lora: bool = _help("LoRA on the bridge's cross-attention", default=False)
    rank: int = _help("LoRA rank", default=32)
    alpha: float = _help("LoRA alpha", default=16.0)
    dropout: float = _help("LoRA dropout", default=0.1)

    def __post_init__(self) -> None:
        key = f"hilora.stages.{self.name}"
        _require(bool(self.name) and "." not in self.name and not self.name.isdigit(),
                 f"{key}.name", "a name without '.' that is not a number (keys address "
                 "stages by name or position)", self.name)
        _require(self.epochs >= 0, f"{key}.epochs", "an integer >= 0", self.epochs)
        _require(self.lr > 0, f"{key}.lr", "a learning rate > 0", self.lr)
        _require(self.batch_size >= 1, f"{key}.batch_size", "an integer >= 1", self.batch_size)
        for attr in ("vision_layers", "text_layers"):
            rng = getattr(self, attr)
            if rng is None:
                continue
            _require(len(rng) == 2 and rng[0] >= 0, f"{key}.{attr}",
                     "an inclusive [first, last] pair of 0-based layers", rng)
            _require(rng[0] <= rng[1], f"{key}.{attr}", "a non-empty range (first <= last)", rng)
        _require(self.rank >= 1, f"{key}.rank", "a LoRA rank >= 1", self.rank)
        _require(self.alpha > 0, f"{key}.alpha", "a LoRA alpha > 0", self.alpha)
        _require(0.0 <= self.dropout < 1.0, f"{key}.dropout", "a value in [0, 1)", self.dropout)

    @property
    def has_lora(self) -> bool:
        return self.vision_layers is not None or self.text_layers is not None or self.bridge_lora


@dataclass(kw_only=True)
class HiLoRAConfig:
    policy: Literal["paper", "released"] = _help(
        "paper: a new adapter per stage, earlier ones frozen; released: one adapter per "
        "module, earlier ranges and text LoRA stay trainable", default="paper")
    stages: list[StageConfig] = _help("the stage schedule, trained in order")

    def __post_init__(self) -> None:
        _require(len(self.stages) >= 1, "hilora.stages", "at least one stage", self.stages)
        names = [s.name for s in self.stages]
        _require(len(set(names)) == len(names), "hilora.stages", "distinct stage names", names)


# ----------------------------------------------------------------------------- data / optim


@dataclass(kw_only=True)
class DataConfig:
    dataset: str = _help("dataset name (hivg.data.splits.DATASETS)", default="synthetic")
    data_dir: Optional[str] = _help(
        "folder of prepared manifests, {data_dir}/{dataset}/{split}.parquet; null: the "
        "pipelines use {storage}/data", default=None)
    train_split: str = _help("training split", default="train")
    val_split: str = _help("split that picks checkpoints (and that searchers see)",
                           default="val")
    test_splits: Optional[list[str]] = _help(
        "splits evaluated once at the end; null: every prepared split but train and val",
        default=None)
    augment: bool = _help("training augmentation (resize/crop, colour jitter, translation)",
                          default=True)
    num_workers: int = _help("DataLoader worker processes", default=0)
    max_train_samples: Optional[int] = _help(
        "cap on training expressions (quick experiments); null: all", default=None)
    max_eval_samples: Optional[int] = _help("cap on evaluated expressions; null: all",
                                            default=None)
    text_blind: bool = _help("control experiment: each sample gets another sample's phrase "
                             "(train and eval)", default=False)

    def __post_init__(self) -> None:
        _require(bool(self.dataset), "data.dataset", "a dataset name", self.dataset)
        _require(self.num_workers >= 0, "data.num_workers", "an integer >= 0", self.num_workers)
        for f in ("max_train_samples", "max_eval_samples"):
            v = getattr(self, f)
            _require(v is None or v >= 1, f"data.{f}", "None or an integer >= 1", v)


@dataclass(kw_only=True)
class OptimConfig:
    weight_decay: float = _help("AdamW weight decay", default=1e-4)
    warmup_epochs: float = _help("linear warm-up before the cosine schedule", default=0.0)
    grad_clip_norm: float = _help("gradient clipping by norm; 0: off", default=0.0)
    scale_lr: bool = _help("scale each stage's lr by global batch / reference global batch "
                           "(the linear rule)", default=True)
    reference_world_size: int = _help(
        "the recipe's GPUs: its global batch is this x the stage's batch", default=7)
    eval_batch_size: int = _help("batch of evaluation passes", default=64)

    def __post_init__(self) -> None:
        _require(self.weight_decay >= 0, "optim.weight_decay", "a value >= 0", self.weight_decay)
        _require(self.warmup_epochs >= 0, "optim.warmup_epochs", "a value >= 0",
                 self.warmup_epochs)
        _require(self.grad_clip_norm >= 0, "optim.grad_clip_norm", "a value >= 0 (0 = off)",
                 self.grad_clip_norm)
        _require(self.reference_world_size >= 1, "optim.reference_world_size",
                 "an integer >= 1", self.reference_world_size)
        _require(self.eval_batch_size >= 1, "optim.eval_batch_size", "an integer >= 1",
                 self.eval_batch_size)


@dataclass(kw_only=True)
class Config:
    model: ModelConfig = _help("the network")
    loss: LossConfig = _help("loss weights", default_factory=LossConfig)
    hilora: HiLoRAConfig = _help("the HiLoRA stage schedule")
    data: DataConfig = _help("the dataset and its loading", default_factory=DataConfig)
    optim: OptimConfig = _help("the optimiser", default_factory=OptimConfig)
    seed: int = _help("seed of initialisation, data order and augmentation", default=13)
    device: str = _help("auto | cpu | cuda | cuda:N", default="auto")
    precision: Literal["auto", "fp32", "bf16"] = _help(
        "auto: as the speed profile says (bf16 autocast on GPU, fp32 on CPU)", default="auto")
    profile: Literal["auto", "fast", "reference"] = _help(
        "speed profile (hivg.train.profile): reference = the released recipe (fp32, TF32 "
        "off, eager attention); fast = bf16 autocast, SDPA, fused AdamW; auto = fast on GPU, "
        "fp32 + sdpa on CPU", default="auto")
    variant: str = _help("a free-form label (the ablation's name); recorded, never changes "
                         "behaviour", default="baseline")
    preset: str = _help("the preset this config started from (recorded for reports)",
                        default="custom")

    def __post_init__(self) -> None:
        _require(re.fullmatch(r"auto|cpu|cuda|cuda:\d+", self.device) is not None,
                 "device", "auto, cpu, cuda or cuda:N", self.device)

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return _from_dict(cls, data, "")

    def replace(self, overrides: dict[str, Any] | list[str]) -> "Config":
        """A new config with dotted overrides applied (dict of key -> value or 'k=v' list)."""
        return apply_overrides(self, overrides)


# ----------------------------------------------------------------------------- encoder shape


def check_encoder_shape(config: "Config", *, vision_depth: int, text_depth: int,
                        image_size: int, context_length: int, embed_dim: Optional[int]) -> None:
    """The checks that need the CLIP towers' shape (layer choices within their depths, image
    size, text context, VL width). build_model passes a built model's shape; study files pass
    the open_clip config's, so a YAML file is validated without building any model."""
    m = config.model
    _require(m.image_size == image_size, "model.image_size",
             f"{image_size} (the image size of {m.clip})", m.image_size)
    _require(m.context_length <= context_length, "model.context_length",
             f"at most {context_length} (the text context of {m.clip})", m.context_length)
    layers = m.bridge.vision_layers
    _require(len(layers) > 0, "model.bridge.vision_layers",
             "at least one layer (they are also the fused visual taps)", layers)
    _require(all(v < vision_depth for v in layers), "model.bridge.vision_layers",
             f"layers < {vision_depth} (the vision encoder's depth)", layers)
    _require(all(t <= text_depth for t in m.bridge.text_levels), "model.bridge.text_levels",
             f"1-based levels <= {text_depth} (the text encoder's depth)", m.bridge.text_levels)
    _require(m.box_head != "dense" or config.loss.use_align, "model.box_head",
             "reg when the alignment loss is off (dense picks its box with the alignment map)",
             m.box_head)
    vl_dim = m.vl_encoder.dim or embed_dim
    if vl_dim:
        _require(vl_dim % m.vl_encoder.heads == 0, "model.vl_encoder.heads",
                 f"a divisor of the VL width {vl_dim}", m.vl_encoder.heads)
    for s in config.hilora.stages:
        key = f"hilora.stages.{s.name}"
        if s.vision_layers is not None:
            _require(s.vision_layers[1] < vision_depth, f"{key}.vision_layers",
                     f"layers < {vision_depth} (the vision encoder's depth)", s.vision_layers)
        if s.text_layers is not None:
            _require(s.text_layers[1] < text_depth, f"{key}.text_layers",
                     f"layers < {text_depth} (the text encoder's depth)", s.text_layers)


# ----------------------------------------------------------------------------- dict <-> dataclass


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(inner)}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Convert a plain value (from YAML/JSON/CLI) to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return [_convert(inner, v, f"{key}.{_item_label(v, i)}") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return _from_dict(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads "1e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _item_label(item: Any, index: int) -> str:
    """How a key names a list item: by its name when it has one (a stage), else its index."""
    name = item.get("name") if isinstance(item, dict) else None
    return name if isinstance(name, str) and name else str(index)


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (expected one of "
                          f"{', '.join(sorted(fields))})")
    for name, f in fields.items():
        if name not in data and f.default is dataclasses.MISSING and \
                f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: missing (expected {_type_name(hints[name])}; "
                              "a config file starts from a preset with `preset: NAME`)")
    kwargs = {k: _convert(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)  # __post_init__ raises ConfigError with the full dotted key


# ----------------------------------------------------------------------------- dotted keys


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=1e-4' -> ('optim.lr', 1e-4). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"{text}: expected an override of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{text}: expected an override of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _locate(tree: Any, key: str) -> tuple[Any, Any]:
    """(container, name or index) that the dotted `key` addresses in a config tree (a
    to_dict() or a config.yaml as read); UnknownKeyError naming where the walk failed."""
    if not key:
        raise ConfigError("expected a dotted config key, got ''")
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        walked = ".".join(parts[:i + 1])
        if isinstance(node, list):
            slot = _list_index(node, part, walked)
        elif isinstance(node, dict):
            if part not in node:
                raise UnknownKeyError(walked, sorted(node))
            slot = part
        else:
            raise UnknownKeyError(walked, [], reason=f"{'.'.join(parts[:i])} is a value, not a "
                                                     "mapping")
        if i == len(parts) - 1:
            return node, slot
        node = node[slot]
    raise AssertionError("unreachable")


def _list_index(node: list, part: str, walked: str) -> int:
    """Lists are addressed by position (hilora.stages.1.rank) or by item name (...stage1.rank)."""
    if part.isdigit() and int(part) < len(node):
        return int(part)
    names = [item.get("name") for item in node if isinstance(item, dict)]
    if part in names:
        return names.index(part)
    list_name = walked.split(".")[-2]
    if names and None not in names:
        raise UnknownKeyError(walked, [str(n) for n in names], list_name=list_name)
    raise UnknownKeyError(walked, [], list_name=list_name,
                          reason=f"expected an index < {len(node)}")


def check_key(config: Config, key: str) -> None:
    """UnknownKeyError unless `key` addresses a field of `config` (or is hilora.num_stages)."""
    if key != NUM_STAGES:
        _locate(config.to_dict(), key)


def get_value(tree: dict[str, Any], key: str) -> Any:
    """The value of a dotted key in a config tree (hilora.num_stages: the number of stages);
    UnknownKeyError when it addresses nothing."""
    if key == NUM_STAGES:
        return len(tree["hilora"]["stages"])
    container, slot = _locate(tree, key)
    return container[slot]


def stage_position(config: Config, key: str) -> Optional[int]:
    """The position in hilora.stages that a `hilora.stages.<name or index>...` key addresses;
    None for any other key."""
    parts = key.split(".")
    if parts[:2] != ["hilora", "stages"] or len(parts) < 3:
        return None
    return _locate(config.to_dict(), ".".join(parts[:3]))[1]


def apply_overrides(config: Config, overrides: dict[str, Any] | list[str]) -> Config:
    """A new Config: `hilora.num_stages` first (keep the first N stages), then every other
    dotted key. Nothing is shared with `config`."""
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    overrides = dict(overrides)
    tree = config.to_dict()
    if NUM_STAGES in overrides:
        n, stages = overrides.pop(NUM_STAGES), tree["hilora"]["stages"]
        _require(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= len(stages),
                 NUM_STAGES, f"an integer in 1..{len(stages)} (the config has {len(stages)} "
                 "stages)", n)
        tree["hilora"]["stages"] = stages[:n]
    for key, value in overrides.items():
        container, slot = _locate(tree, key)
        container[slot] = value
    return Config.from_dict(tree)


def field_reference(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) of every leaf of the schema, in order; a stage's fields as
    hilora.stages.NAME.field; the default of a field a preset decides is "(preset)"."""
    out: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        inner = (typing.get_args(tp) or (None,))[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            out += field_reference(tp, key + ".")
        elif dataclasses.is_dataclass(inner):
            out += field_reference(inner, key + ".NAME.")
        else:
            default = "(preset)" if f.default is dataclasses.MISSING else \
                yaml.safe_dump(f.default, default_flow_style=True).strip().removesuffix("...")
            out.append((key, default.strip(), f.metadata.get("help", "")))
    return out


def field_help() -> dict[str, str]:
    """Every leaf key of the schema and its help text."""
    return {key: text for key, _, text in field_reference()}


# ----------------------------------------------------------------------------- presets & files


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> Config:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset {name!r}: unknown (expected one of {', '.join(preset_names())})")
    return load_config(path)


def load_config(path: str | Path) -> Config:
    """A YAML config file; it may start from a preset with `preset: NAME` and override keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise yaml_error(path, e) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        base_name = data.get("preset")
        if base_name and (PRESETS_DIR / f"{base_name}.yaml").resolve() != path.resolve():
            base = load_preset(base_name).to_dict()
            merged = _deep_merge(base, data)
            return Config.from_dict(merged)
        return Config.from_dict(data)
    except ConfigError as e:
        raise ConfigError(with_position(f"{path}: {e}", path, text)) from None


def _deep_merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in delta.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def yaml_error(path: str | Path, error: yaml.YAMLError) -> ConfigError:
    """`FILE:LINE:COL: what is wrong` (1-based, as editors count), one line."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    what = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    what = " ".join(f"{what} ({context})".split()) if context else " ".join(what.split())
    if mark is None:
        return ConfigError(f"{path}: not valid YAML: {what}")
    return ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {what}")


def key_positions(text: str) -> dict[str, tuple[int, int]]:
    """Every key of a YAML text as the key grammar spells it (`optim.lr`; list items by their
    `name:`, else by index: `hilora.stages.stage0.epochs`) -> its (line, column), 1-based;
    {} when the text does not parse."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    found: dict[str, tuple[int, int]] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    found.setdefault(prefix + key.value,
                                     (key.start_mark.line + 1, key.start_mark.column + 1))
                    walk(value, f"{prefix}{key.value}.")
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                label = str(index)
                if isinstance(item, yaml.MappingNode):
                    label = next((v.value for k, v in item.value if isinstance(v, yaml.ScalarNode)
                                  and getattr(k, "value", None) == "name"), label)
                found.setdefault(prefix + label,
                                 (item.start_mark.line + 1, item.start_mark.column + 1))
                walk(item, f"{prefix}{label}.")

    walk(root, "")
    return found


def with_position(message: str, path: str | Path, text: str) -> str:
    """`PATH: KEY: what` -> `PATH:LINE:COL: KEY: what`, where KEY (or the longest part of it
    the file spells) stands in the file's text; the message unchanged otherwise."""
    head = f"{path}: "
    if not message.startswith(head):
        return message
    key = message[len(head):].split(": ", 1)[0]
    if not key or " " in key:
        return message
    positions = key_positions(text)
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        where = positions.get(".".join(parts[:end]))
        if where:
            return f"{path}:{where[0]}:{where[1]}: {message[len(head):]}"
    return message


def to_overrides(config: Config) -> list[str]:
    """The config as `key=value` overrides, keys and values as one types them on train.py
    (stages by name, values in YAML, shell-quoted where needed): pasted back after
    `--preset` they give the same config."""
    tree = config.to_dict()
    lines = [f"{NUM_STAGES}={len(tree['hilora']['stages'])}"]

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, list) and value and all(
                    isinstance(v, dict) and v.get("name") for v in value):
                for item in value:
                    walk({k: v for k, v in item.items() if k != "name"},
                         f"{prefix}{key}.{item['name']}.")
            else:
                lines.append(format_override(f"{prefix}{key}", value))

    walk(tree, "")
    return lines


def format_override(key: str, value: Any) -> str:
    """`key=value` as typed on a command line (YAML value, shell-quoted where needed)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return shlex.quote(f"{key}={text.strip().removesuffix('...').strip()}")
