"""open_clip pretrained tags (`openai`, `laion2b_s34b_b88k`, ...) as `model.weights`.

A tag is resolved by open_clip's own code (`open_clip.pretrained.download_pretrained`), into
its own cache: the Hugging Face hub cache for tags published there (all tags of
ViT-B-16-quickgelu and ViT-L-14-quickgelu: `HF_HUB_CACHE`, default ~/.cache/huggingface/hub),
~/.cache/clip for the few published only as URLs. The cache is looked up first with the hub
offline, so a cached file is used without touching the network; only a missing file is
downloaded, and never when `HF_HUB_OFFLINE=1` (the hub's own switch, which the tests set).
Every node resolves the tag through its own cache (each downloads once).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

import open_clip
from open_clip import pretrained as oc_pretrained

from hivg.errors import WeightsError


def pretrained_tags(clip: str) -> list[str]:
    """The tags open_clip lists for this architecture."""
    return list(oc_pretrained.list_pretrained_tags_by_model(clip))


def is_tag(clip: str, value: str) -> bool:
    return bool(oc_pretrained.get_pretrained_cfg(clip, value))


def predownload_command(clip: str, tag: str) -> str:
    return (f"python -c \"import open_clip; open_clip.create_model('{clip}', "
            f"pretrained='{tag}')\"")


def check_tag(clip: str, tag: str) -> None:
    """WeightsError unless `tag` is a tag of `clip` whose activation matches: open_clip lists
    QuickGELU-trained tags (openai) under the -quickgelu names too, and building the GELU
    architecture with them would silently change every MLP."""
    cfg = oc_pretrained.get_pretrained_cfg(clip, tag)
    if not cfg:
        others = oc_pretrained.list_pretrained_models_by_tag(tag)
        sibling = clip.removesuffix("-quickgelu") if clip.endswith("-quickgelu") \
            else f"{clip}-quickgelu"
        if sibling in others:  # the same architecture with the other activation
            hint = f"; {tag} is a tag of {sibling} (set model.clip={sibling})"
        else:
            hint = f"; {tag} is a tag of {', '.join(others[:4])} (set model.clip)" if others else ""
        raise WeightsError(f"{tag}: not a local file or folder, nor an open_clip tag of {clip} "
                           f"(its tags: {', '.join(pretrained_tags(clip)) or 'none'}){hint}")
    model_cfg = open_clip.get_model_config(clip) or {}
    if cfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
        raise WeightsError(f"{tag}: these weights were trained with QuickGELU; {clip} uses GELU "
                           f"(set model.clip={clip}-quickgelu)")


def resolve_tag(clip: str, tag: str, log: Callable[[str], None] | None = None,
                cache_dir: str | None = None) -> Path:
    """The local file of an open_clip tag: from the cache, else downloaded by open_clip
    (unless the hub is offline). WeightsError naming the tag and the fix otherwise."""
    check_tag(clip, tag)
    cfg = oc_pretrained.get_pretrained_cfg(clip, tag)
    via_hub = bool(cfg.get("hf_hub")) and oc_pretrained.has_hf_hub()
    if via_hub:
        with contextlib.suppress(Exception), _hub_offline():
            return Path(oc_pretrained.download_pretrained(cfg, cache_dir=cache_dir))
        if _offline_requested():
            raise WeightsError(
                f"{tag}: the open_clip weights of {clip} are not in the Hugging Face cache "
                f"({cache_dir or _hub_cache()}) and HF_HUB_OFFLINE is set; pre-download them "
                f"where there is network ({predownload_command(clip, tag)}), or pass a local "
                "file or folder as model.weights")
    where = cfg.get("hf_hub") or cfg.get("url")
    if log:
        log(f"model.weights: downloading {clip} {tag} through open_clip ({where})")
    try:
        path = oc_pretrained.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as e:  # no network, a gated repo, a checksum mismatch
        reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"{tag}: could not download the open_clip weights of {clip} ({reason}); "
            f"pre-download them where there is network ({predownload_command(clip, tag)}), "
            "or pass a local file or folder as model.weights") from None
    if not path or not Path(path).is_file():
        raise WeightsError(f"{tag}: open_clip gave no weights file for {clip}")
    return Path(path)


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _offline_requested() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or env


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """The hub's offline mode for one lookup: hf_hub_download then answers from the cache or
    fails at once, instead of retrying a missing network for a minute (measured: 54 s)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
