"""build_model(config): the one place a Config becomes explicit constructor arguments."""
from __future__ import annotations

from typing import Callable

import open_clip

from hivg.config import Config, ConfigError, check_encoder_shape
from hivg.errors import WeightsError
from hivg.model import backbone as bb
from hivg.model.hivg import HiVG
from hivg.model.weights import load_weights


def build_model(config: Config, log: Callable[[str], None] | None = None) -> HiVG:
    """A HiVG from config.model and config.loss (heads only for the losses that are on), with
    config.model.weights loaded into CLIP (hivg.model.weights: random and None load nothing),
    and CLIP frozen (stage 0's trainability; hivg.model.lora.apply_stage prepares later stages). Layer choices in config.model and
    config.hilora are checked against the encoder depths (ConfigError naming the key). `log`
    hears what loading the weights has to say (a download, parts of a checkpoint left out)."""
    m, loss = config.model, config.loss
    _clip_spec(m.clip)  # a known open_clip name, or one line naming model.clip
    clip = bb.create_clip(m.clip, attention=m.attention)
    validate(config, clip)
    try:
        load_weights(clip, m.weights, m.clip, m.weights_format, log=log)
    except WeightsError as e:
        raise WeightsError(f"model.weights: {e}") from None

    model = HiVG(
        clip,
        taps=m.bridge.vision_layers,
        bridge=m.bridge.enabled,
        text_levels=m.bridge.text_levels,
        adaptive_weights=m.bridge.adaptive_weights,
        context_length=m.context_length,
        vl_dim=m.vl_encoder.dim or bb.embed_dim(clip),
        vl_layers=m.vl_encoder.layers,
        vl_heads=m.vl_encoder.heads,
        vl_ffn_dim=m.vl_encoder.ffn_dim,
        vl_dropout=m.vl_encoder.dropout,
        head_layers=m.head_layers,
        attention=m.attention,
        contrastive=loss.contrastive > 0,
        align=loss.use_align,
        seg=loss.use_seg,
        seg_tapered=m.seg_head == "tapered",
        box_head=m.box_head,
    )
    model.clip.requires_grad_(False)
    return model


def _clip_spec(name: str) -> dict:
    """open_clip's config of model `name` (ours are registered by hivg.model.backbone)."""
    spec = open_clip.get_model_config(name)
    if spec is None:
        raise ConfigError(f"model.clip: expected an open_clip model name (e.g. ViT-B-16-quickgelu, "
                          f"ViT-L-14-quickgelu, hivg-tiny), got {name!r}")
    return spec


def check_against_clip(config: Config) -> None:
    """validate() against open_clip's config of model.clip instead of a built model: study
    files check every probed value this way (building ViT-L/14 takes seconds a value)."""
    spec = _clip_spec(config.model.clip)
    vision, text = spec.get("vision_cfg", {}), spec.get("text_cfg", {})
    if not isinstance(vision.get("layers"), int):  # a ResNet tower: build_model decides
        return
    size = vision.get("image_size", 224)
    check_encoder_shape(config, vision_depth=vision["layers"], text_depth=text.get("layers", 12),
                        image_size=size if isinstance(size, int) else size[0],
                        context_length=text.get("context_length", 77),
                        embed_dim=spec.get("embed_dim"))


def validate(config: Config, clip) -> None:
    check_encoder_shape(config, vision_depth=len(bb.vision_blocks(clip)),
                        text_depth=len(bb.text_blocks(clip)), image_size=bb.image_size(clip),
                        context_length=clip.positional_embedding.shape[0],
                        embed_dim=bb.embed_dim(clip))
