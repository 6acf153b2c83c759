"""The CLIP backbone: open_clip towers with our Attention in place of nn.MultiheadAttention.

Parameter names stay open_clip's (`visual.transformer.resblocks.3.attn.in_proj_weight`, ...),
so open_clip checkpoints load as they are. We walk the towers ourselves (HiVG needs every
text layer's output and a hook inside each vision block), with the functions below; open_clip's
own `encode_image` / `encode_text` are not used after the swap.
"""
from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch
from torch import Tensor, nn

from hivg.model.attention import Attention

CONFIG_DIR = Path(__file__).parent / "configs"


def register_configs() -> None:
    """Make our tiny open_clip configs (hivg/model/configs/*.json) known to open_clip."""
    if not all(p.stem in open_clip.list_models() for p in CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(CONFIG_DIR)


register_configs()


def create_open_clip(name: str) -> nn.Module:
    """open_clip's own random-init model (nothing downloaded, no warning about it)."""
    quiet = _DropMessage("No pretrained weights loaded")  # random init is the intent here
    logging.getLogger().addFilter(quiet)
    try:
        return open_clip.create_model(name, pretrained=None)
    finally:
        logging.getLogger().removeFilter(quiet)


def create_clip(name: str, attention: str = "sdpa") -> nn.Module:
    """A random-init open_clip CLIP (nothing downloaded) with our Attention in every block."""
    model = create_open_clip(name)
    swap_attention(model, attention)
    return model


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def swap_attention(model: nn.Module, impl: str) -> None:
    for block in [*model.visual.transformer.resblocks, *model.transformer.resblocks]:
        if isinstance(block.attn, nn.MultiheadAttention):
            block.attn = Attention.from_mha(block.attn, impl)
        elif isinstance(block.attn, Attention):
            block.attn.impl = impl


# -- shapes ------------------------------------------------------------------------------------

def vision_blocks(clip: nn.Module) -> nn.ModuleList:
    return clip.visual.transformer.resblocks


def text_blocks(clip: nn.Module) -> nn.ModuleList:
    return clip.transformer.resblocks


def vision_width(clip: nn.Module) -> int:
    return clip.visual.conv1.out_channels


def text_width(clip: nn.Module) -> int:
    return clip.token_embedding.embedding_dim


def embed_dim(clip: nn.Module) -> int:
    return clip.visual.proj.shape[1]


def patch_size(clip: nn.Module) -> int:
    return clip.visual.conv1.kernel_size[0]


def image_size(clip: nn.Module) -> int:
    return clip.visual.image_size[0]


def vision_heads(clip: nn.Module) -> int:
    return vision_blocks(clip)[0].attn.heads


# -- towers ------------------------------------------------------------------------------------

def embed_image(clip: nn.Module, image: Tensor) -> Tensor:
    """(B, 3, S, S) -> (B, 1 + G*G, W): patch embedding, CLS, positions, ln_pre."""
    v = clip.visual
    x = v.conv1(image).flatten(2).transpose(1, 2)
    cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
    return v.ln_pre(x)


def block_attention(block: nn.Module, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """The first half of an open_clip residual block: x + attn(ln_1(x))."""
    return x + block.ls_1(block.attn(block.ln_1(x), attn_mask=attn_mask))


def block_mlp(block: nn.Module, x: Tensor) -> Tensor:
    """The second half: x + mlp(ln_2(x))."""
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def text_layers(clip: nn.Module, tokens: Tensor) -> list[Tensor]:
    """(B, L) token ids -> the output of every text layer, (B, L, W) each (causal attention).
    L may be shorter than CLIP's context: causal attention makes the first L positions exact."""
    L = tokens.shape[1]
    x = clip.token_embedding(tokens) + clip.positional_embedding[:L]
    mask = clip.attn_mask[:L, :L]
    outs = []
    for block in text_blocks(clip):
        x = block_mlp(block, block_attention(block, x, attn_mask=mask))
        outs.append(x)
    return outs


def eot_index(tokens: Tensor) -> Tensor:
    """Position of the end-of-text token: CLIP's is the largest id (open_clip's argmax pooling)."""
    return tokens.argmax(dim=-1)


def text_padding_mask(tokens: Tensor) -> Tensor:
    """(B, L) bool, True after the end-of-text token (robust to a real token with id 0)."""
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    return pos[None, :] > eot_index(tokens)[:, None]


def _project(x: Tensor, proj) -> Tensor:
    return proj(x) if isinstance(proj, nn.Module) else x @ proj


def project_text(clip: nn.Module, last: Tensor) -> Tensor:
    """Last text layer output -> CLIP's joint space, every token: ln_final + text_projection."""
    return _project(clip.ln_final(last), clip.text_projection)


def project_image(clip: nn.Module, last: Tensor) -> Tensor:
    """Last vision layer output -> CLIP's image embedding: ln_post on CLS + proj."""
    return _project(clip.visual.ln_post(last[:, 0]), clip.visual.proj)


def encode_image(clip: nn.Module, image: Tensor) -> Tensor:
    """CLIP's image embedding (unnormalised), through our walk of the tower."""
    x = embed_image(clip, image)
    for block in vision_blocks(clip):
        x = block_mlp(block, block_attention(block, x))
    return project_image(clip, x)


def encode_text(clip: nn.Module, tokens: Tensor) -> Tensor:
    """CLIP's text embedding (unnormalised): the end-of-text token of the projected last layer."""
    tokens_out = project_text(clip, text_layers(clip, tokens)[-1])
    return tokens_out[torch.arange(tokens.shape[0], device=tokens.device), eot_index(tokens)]
