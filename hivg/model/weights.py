"""`model.weights`: where CLIP's starting weights come from, in every form a user has.

    random                      random initialisation, only when asked for by name
    openai, laion2b_s34b_b88k   an open_clip pretrained tag of model.clip (hivg.model.open_clip_tags)
    PATH.safetensors            open_clip or HF CLIPModel keys
    PATH.pt / .bin / .pth       open_clip, HF or the authors' keys (weights_only), or OpenAI's
                                TorchScript archives (ViT-B-16.pt)
    FOLDER                      a Hugging Face model folder (config.json + model.safetensors or
                                pytorch_model.bin), or one with open_clip's own files
    @synthetic-pretrained       symbolic: resolved to a file by hivg.train.pretrain
    None                        nothing loaded here: the caller restores a checkpoint over it

A tag is tried before a path, as open_clip does. Key layouts are converted by
hivg.model.convert; files are read by hivg.model.weight_files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

from torch import nn

from hivg.errors import WeightsError
from hivg.model import open_clip_tags
from hivg.model.convert import load_clip_state_dict, load_into_clip
from hivg.model.weight_files import folder_weights_file, hf_folder_config

RANDOM = "random"

Kind = Literal["none", "random", "symbolic", "tag", "file", "folder"]


@dataclass(frozen=True)
class WeightsSource:
    kind: Kind
    value: Optional[str]
    clip: str

    @property
    def loads(self) -> bool:
        """Whether weights are read into CLIP (not random, not left to the caller)."""
        return self.kind in ("tag", "file", "folder")


def classify(value: Optional[str], clip: str) -> WeightsSource:
    """What a `model.weights` value is, without reading or downloading anything."""
    if value is None:
        return WeightsSource("none", None, clip)
    if value == RANDOM:
        return WeightsSource("random", value, clip)
    if value.startswith("@"):
        return WeightsSource("symbolic", value, clip)
    path = Path(value).expanduser()
    if open_clip_tags.is_tag(clip, value) or not (path.exists() or _looks_like_path(value)):
        open_clip_tags.check_tag(clip, value)  # an unknown word: names the architecture's tags
        return WeightsSource("tag", value, clip)
    if path.is_dir():
        return WeightsSource("folder", value, clip)
    if path.is_file():
        return WeightsSource("file", value, clip)
    raise WeightsError(f"{value}: weights file not found")


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or bool(Path(value).suffix)


def weights_file(source: WeightsSource, log: Callable[[str], None] | None = None) -> Path:
    """The local file (or folder) that holds a loading source's weights; a tag is looked up in
    open_clip's cache and downloaded when missing (see hivg.model.open_clip_tags)."""
    if source.kind == "tag":
        return open_clip_tags.resolve_tag(source.clip, source.value, log)
    if source.kind == "folder":
        folder = Path(source.value).expanduser()
        check_hf_activation(folder, source.clip)
        folder_weights_file(folder)  # WeightsError now when the folder has no weights file
        return folder
    if source.kind == "file":
        return Path(source.value).expanduser()
    raise ValueError(f"{source.kind} weights have no file")


def load_weights(clip: nn.Module, value: Optional[str], clip_name: str, fmt: str = "auto",
                 log: Callable[[str], None] | None = None) -> WeightsSource:
    """Load `model.weights` into a CLIP built from `clip_name` (random and None: nothing to
    load). WeightsError naming the value, the file or the first bad key."""
    source = classify(value, clip_name)
    if source.kind == "symbolic":
        raise WeightsError(f"{value}: a symbolic name; resolve it to a file first "
                           "(hivg.train.pretrain.resolve_weights)")
    if source.loads:
        path = weights_file(source, log)
        load_into_clip(clip, load_clip_state_dict(path, fmt, log=log), source=str(path))
    return source


def check_hf_activation(folder: Path, clip: str) -> None:
    """A transformers CLIP folder says its activation in config.json; loading GELU weights into
    a QuickGELU architecture (or the reverse) would fit every shape and be silently wrong."""
    import open_clip

    config = hf_folder_config(folder)
    if config is None:
        return
    if config.get("model_type") not in (None, "clip"):
        raise WeightsError(f"{folder}/config.json: model_type {config.get('model_type')!r}, "
                           "expected a CLIPModel ('clip')")
    acts = {part.get("hidden_act") for part in (config.get("vision_config"),
                                                config.get("text_config"))
            if isinstance(part, dict) and part.get("hidden_act")}
    if not acts:
        return
    quick = (open_clip.get_model_config(clip) or {}).get("quick_gelu", False)
    wanted = "quick_gelu" if quick else "gelu"
    if acts != {wanted}:
        hint = (f"set model.clip={clip}-quickgelu" if not quick and acts == {"quick_gelu"}
                else f"set model.clip={clip.removesuffix('-quickgelu')}" if quick else "")
        raise WeightsError(f"{folder}/config.json: hidden_act {', '.join(sorted(acts))}, but "
                           f"{clip} uses {wanted}" + (f" ({hint})" if hint else ""))
