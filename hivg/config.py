"""Configuration: nested dataclasses, validated at construction.

One `Config` describes a whole run. It round-trips through dicts and YAML, accepts
`a.b.c=value` overrides, and every error names the dotted key and what was expected.
Builders (`hivg.model.build`, `hivg.data.dataset`, `hivg.train.fit`) turn it into explicit
constructor arguments; modules never receive a config object.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from hivg.errors import UserError

PRESETS_DIR = Path(__file__).parent / "configs"


class ConfigError(UserError, ValueError):
    """A user error in configuration: the message names the key and what was expected."""


def _require(condition: bool, key: str, expected: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


# ----------------------------------------------------------------------------- model


@dataclass
class BridgeConfig:
    """The multi-layer adaptive cross-modal bridge (ablation axes)."""

    enabled: bool = True
    # 0-based vision encoder layers that receive a cross-attention to text.
    vision_layers: list[int] = field(default_factory=lambda: [0, 3, 7, 11])
    # 1-based text layer outputs used as keys/values (released code: hidden_states[i]).
    text_levels: list[int] = field(default_factory=lambda: [12])
    # Learned sample-agnostic position weights: t + w * t per text level.
    adaptive_weights: bool = True

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


@dataclass
class VLEncoderConfig:
    """The visual-linguistic transformer on [REG] + visual tokens + text tokens."""

    layers: int = 6
    dim: Optional[int] = None  # None: CLIP's embedding dim (512 for B/16, 768 for L/14)
    heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1

    def __post_init__(self) -> None:
        _require(self.layers >= 1, "model.vl_encoder.layers", "an integer >= 1", self.layers)
        _require(self.heads >= 1, "model.vl_encoder.heads", "an integer >= 1", self.heads)
        _require(self.dim is None or (self.dim >= 1 and self.dim % self.heads == 0),
                 "model.vl_encoder.dim", f"a positive multiple of heads={self.heads}", self.dim)
        _require(self.ffn_dim >= 1, "model.vl_encoder.ffn_dim", "an integer >= 1", self.ffn_dim)
        _require(0.0 <= self.dropout < 1.0, "model.vl_encoder.dropout", "a value in [0, 1)",
                 self.dropout)


@dataclass
class ModelConfig:
    # open_clip model name: ViT-B-16-quickgelu, ViT-L-14-quickgelu, or a registered tiny one.
    clip: str = "ViT-B-16-quickgelu"
    # Local weights file; None = random init (tests, or the tiny model before pre-training).
    weights: Optional[str] = None
    # auto | open_clip | hf | hivg_released
    weights_format: Literal["auto", "open_clip", "hf", "hivg_released"] = "auto"
    image_size: int = 224
    context_length: int = 77
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    vl_encoder: VLEncoderConfig = field(default_factory=VLEncoderConfig)
    head_layers: int = 3
    # Segmentation head: full (VL width in every upsampling) or tapered (halving channels).
    seg_head: Literal["full", "tapered"] = "full"
    # eager (the released code's attention) or sdpa (fused kernels).
    attention: Literal["eager", "sdpa"] = "sdpa"
    # reg: the paper's box regressor on [REG]. dense: every patch regresses the box of the
    # object it lies on and the alignment map picks the patch (needs the alignment loss on);
    # it learns in far fewer samples, which the tiny CPU model needs (README, "learning").
    box_head: Literal["reg", "dense"] = "reg"

    def __post_init__(self) -> None:
        _require(bool(self.clip), "model.clip", "an open_clip model name", self.clip)
        _require(self.image_size >= 16, "model.image_size", "an integer >= 16", self.image_size)
        _require(self.context_length >= 4, "model.context_length", "an integer >= 4",
                 self.context_length)
        _require(self.head_layers >= 1, "model.head_layers", "an integer >= 1", self.head_layers)


# ----------------------------------------------------------------------------- losses


@dataclass
class LossConfig:
    """Loss weights; a weight of 0 switches the term off (and its head is not built)."""

    l1: float = 2.0
    giou: float = 2.0
    contrastive: float = 1.0
    align_focal: float = 20.0
    align_dice: float = 2.0
    # Softmax over the patch grid, target: the cell under the box centre. Not in the paper;
    # it trains the choice the dense box head makes (argmax of the map) directly.
    align_ce: float = 0.0
    seg_focal: float = 20.0
    seg_dice: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    contrastive_temperature: float = 0.07

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


@dataclass
class StageConfig:
    """One HiLoRA stage. Stage 0 usually has no LoRA (CLIP frozen, bridge + head trained)."""

    name: str = "stage0"
    epochs: int = 1
    lr: float = 2.5e-4
    batch_size: int = 80  # per worker
    # Inclusive [first, last] 0-based vision layers whose LoRA trains; None = no vision LoRA.
    vision_layers: Optional[list[int]] = None
    # Inclusive [first, last] 0-based text layers with LoRA; None = no text LoRA.
    text_layers: Optional[list[int]] = None
    # LoRA on the bridge's cross-attention.
    bridge_lora: bool = False
    rank: int = 32
    alpha: float = 16.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        key = f"hilora.stages[{self.name}]"
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


def _default_stages() -> list[StageConfig]:
    return [
        StageConfig(name="stage0", epochs=60, lr=2.5e-4, batch_size=80),
        StageConfig(name="stage1", epochs=20, lr=1e-4, batch_size=60, vision_layers=[0, 4],
                    text_layers=[0, 11], bridge_lora=True),
        StageConfig(name="stage2", epochs=20, lr=5e-5, batch_size=60, vision_layers=[0, 7],
                    text_layers=[0, 11], bridge_lora=True),
        StageConfig(name="stage3", epochs=20, lr=2.5e-5, batch_size=40, vision_layers=[0, 11],
                    text_layers=[0, 11], bridge_lora=True),
    ]


@dataclass
class HiLoRAConfig:
    # paper: a new adapter per stage, earlier ones frozen.
    # released: one adapter per module; earlier ranges and text LoRA stay trainable.
    policy: Literal["paper", "released"] = "paper"
    stages: list[StageConfig] = field(default_factory=_default_stages)

    def __post_init__(self) -> None:
        _require(len(self.stages) >= 1, "hilora.stages", "at least one stage", self.stages)
        names = [s.name for s in self.stages]
        _require(len(set(names)) == len(names), "hilora.stages", "distinct stage names", names)


# ----------------------------------------------------------------------------- data / optim


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    # Folder holding prepared manifests: {data_dir}/{dataset}/{split}.parquet.
    # None: the pipelines use {storage}/data.
    data_dir: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    # None: every prepared split other than train and val.
    test_splits: Optional[list[str]] = None
    augment: bool = True
    num_workers: int = 0
    # Cap on training expressions (quick experiments); None = all.
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    # Control experiment: each sample is given another sample's phrase (train and eval).
    text_blind: bool = False

    def __post_init__(self) -> None:
        _require(bool(self.dataset), "data.dataset", "a dataset name", self.dataset)
        _require(self.num_workers >= 0, "data.num_workers", "an integer >= 0", self.num_workers)
        for f in ("max_train_samples", "max_eval_samples"):
            v = getattr(self, f)
            _require(v is None or v >= 1, f"data.{f}", "None or an integer >= 1", v)


@dataclass
class OptimConfig:
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    grad_clip_norm: float = 0.0  # 0 = off
    # Scale each stage's lr by global_batch / reference_global_batch (linear rule).
    scale_lr: bool = True
    # The recipe's global batch is 7 GPUs x the stage's per-GPU batch.
    reference_world_size: int = 7
    eval_batch_size: int = 64

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


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    hilora: HiLoRAConfig = field(default_factory=HiLoRAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 13
    # auto | cpu | cuda
    device: str = "auto"
    # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Speed profile (hivg.train.profile): reference = the released recipe (fp32, TF32 off,
    # eager attention, unfused AdamW, DDP unused-parameter search); fast = bf16 autocast,
    # SDPA, fused AdamW, no unused-parameter search; auto = fast on GPU, fp32 + sdpa on CPU.
    profile: Literal["auto", "fast", "reference"] = "auto"
    # A free-form variant label (ablation name); recorded, never changes behaviour.
    variant: str = "baseline"
    # Which preset this config started from (recorded for reports).
    preset: str = "custom"

    def __post_init__(self) -> None:
        _require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
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
    the open_clip JSON config's, so a YAML file is validated without building any model."""
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
        key = f"hilora.stages[{s.name}]"
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
        return [_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (expected one of "
                          f"{', '.join(sorted(names))})")
    kwargs = {k: _convert(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)  # __post_init__ raises ConfigError with the full dotted key


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


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = tree
    walked = []
    for part in parts[:-1]:
        walked.append(part)
        if isinstance(node, list):
            node = node[_list_index(node, part, ".".join(walked))]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise ConfigError(f"{'.'.join(walked)}: unknown key")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    elif isinstance(node, dict):
        if last not in node:
            raise ConfigError(f"{key}: unknown key (expected one of {', '.join(sorted(node))})")
        node[last] = value
    else:
        raise ConfigError(f"{key}: unknown key")


def _list_index(node: list, part: str, key: str) -> int:
    """Lists are addressed by position (hilora.stages.1.rank) or by item name (...stage1.rank)."""
    if part.isdigit() and int(part) < len(node):
        return int(part)
    for i, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    raise ConfigError(f"{key}: no list item {part!r} (expected an index < {len(node)} or a name)")


def apply_overrides(config: Config, overrides: dict[str, Any] | list[str]) -> Config:
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    tree = config.to_dict()
    for key, value in overrides.items():
        _set_dotted(tree, key, value)
    return Config.from_dict(tree)


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
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
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
        raise ConfigError(f"{path}: {e}") from None


def _deep_merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in delta.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(config.to_yaml())
