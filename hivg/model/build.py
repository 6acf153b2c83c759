"""build_model(config): the one place a Config becomes explicit constructor arguments."""
from __future__ import annotations

import open_clip

from hivg.config import Config, ConfigError
from hivg.errors import WeightsError
from hivg.model import backbone as bb
from hivg.model.convert import load_clip_state_dict, load_into_clip
from hivg.model.hivg import HiVG


def build_model(config: Config) -> HiVG:
    """A HiVG from config.model and config.loss (heads only for the losses that are on), with
    config.model.weights loaded into CLIP when set, and CLIP frozen (stage 0's trainability;
    hivg.model.lora.apply_stage prepares later stages). Layer choices in config.model and
    config.hilora are checked against the encoder depths (ConfigError naming the key)."""
    m, loss = config.model, config.loss
    if m.clip not in open_clip.list_models():
        raise ConfigError(f"model.clip: expected an open_clip model name (e.g. ViT-B-16-quickgelu, "
                          f"ViT-L-14-quickgelu, hivg-tiny), got {m.clip!r}")
    clip = bb.create_clip(m.clip, attention=m.attention)
    validate(config, clip)
    if m.weights:
        try:
            load_into_clip(clip, load_clip_state_dict(m.weights, m.weights_format), source=m.weights)
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


def validate(config: Config, clip) -> None:
    m = config.model
    vdepth, tdepth = len(bb.vision_blocks(clip)), len(bb.text_blocks(clip))
    size, ctx = bb.image_size(clip), clip.positional_embedding.shape[0]

    def require(ok: bool, key: str, expected: str, value) -> None:
        if not ok:
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")

    require(m.image_size == size, "model.image_size", f"{size} (the image size of {m.clip})",
            m.image_size)
    require(m.context_length <= ctx, "model.context_length",
            f"at most {ctx} (the text context of {m.clip})", m.context_length)
    layers = m.bridge.vision_layers
    require(len(layers) > 0, "model.bridge.vision_layers",
            "at least one layer (they are also the fused visual taps)", layers)
    require(all(v < vdepth for v in layers), "model.bridge.vision_layers",
            f"layers < {vdepth} (the vision encoder's depth)", layers)
    require(all(t <= tdepth for t in m.bridge.text_levels), "model.bridge.text_levels",
            f"1-based levels <= {tdepth} (the text encoder's depth)", m.bridge.text_levels)
    require(m.box_head != "dense" or config.loss.use_align, "model.box_head",
            "reg when the alignment loss is off (dense picks its box with the alignment map)",
            m.box_head)
    vl_dim = m.vl_encoder.dim or bb.embed_dim(clip)
    require(vl_dim % m.vl_encoder.heads == 0, "model.vl_encoder.heads",
            f"a divisor of the VL width {vl_dim}", m.vl_encoder.heads)
    for s in config.hilora.stages:
        key = f"hilora.stages[{s.name}]"
        if s.vision_layers is not None:
            require(s.vision_layers[1] < vdepth, f"{key}.vision_layers",
                    f"layers < {vdepth} (the vision encoder's depth)", s.vision_layers)
        if s.text_layers is not None:
            require(s.text_layers[1] < tdepth, f"{key}.text_layers",
                    f"layers < {tdepth} (the text encoder's depth)", s.text_layers)
