"""The open_clip backbone with our Attention: same keys, same outputs, eager == sdpa."""
import json

import open_clip
import pytest
import torch
from torch import nn

from hivg.model import backbone as bb
from hivg.model.attention import Attention
from helpers import make_tokens

TINY = json.loads((bb.CONFIG_DIR / "hivg-tiny.json").read_text())


def test_tiny_config_is_registered_and_matches_its_json():
    assert "hivg-tiny" in open_clip.list_models()
    clip = bb.create_clip("hivg-tiny")
    v, t = TINY["vision_cfg"], TINY["text_cfg"]
    assert len(bb.vision_blocks(clip)) == v["layers"] and bb.vision_width(clip) == v["width"]
    assert len(bb.text_blocks(clip)) == t["layers"] and bb.text_width(clip) == t["width"]
    assert bb.image_size(clip) == v["image_size"] and bb.patch_size(clip) == v["patch_size"]
    assert clip.positional_embedding.shape[0] == t["context_length"]
    assert bb.embed_dim(clip) == TINY["embed_dim"]
    assert isinstance(bb.vision_blocks(clip)[0].mlp.gelu, open_clip.transformer.QuickGELU)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_swap_keeps_keys_and_outputs(impl):
    torch.manual_seed(0)
    ref = open_clip.create_model("hivg-tiny", pretrained=None).eval()
    image, tokens = torch.randn(2, 3, 128, 128), make_tokens(2)
    with torch.no_grad():
        want_img, want_txt = ref.encode_image(image), ref.encode_text(tokens)
    keys = set(ref.state_dict())
    bb.swap_attention(ref, impl)
    assert set(ref.state_dict()) == keys  # open_clip checkpoints load unchanged
    assert all(isinstance(b.attn, Attention) for b in bb.vision_blocks(ref))
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_image(ref, image), want_img, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bb.encode_text(ref, tokens), want_txt, atol=1e-5, rtol=1e-5)


def test_attention_matches_multihead_attention_with_masks():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    ours = Attention.from_mha(mha, "eager").eval()
    q, kv = torch.randn(3, 5, 32), torch.randn(3, 7, 32)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 4:] = True
    pad[2, 1:] = True
    want = mha(q, kv, kv, key_padding_mask=pad, need_weights=False)[0]
    torch.testing.assert_close(ours(q, kv, key_padding_mask=pad), want, atol=1e-5, rtol=1e-5)
    causal = torch.full((5, 5), float("-inf")).triu(1)
    want = mha(q, q, q, attn_mask=causal, need_weights=False)[0]
    torch.testing.assert_close(ours(q, attn_mask=causal), want, atol=1e-5, rtol=1e-5)


def test_eager_equals_sdpa_and_dropout_only_in_training():
    torch.manual_seed(0)
    a = Attention(32, 4, dropout=0.5, impl="eager")
    b = Attention(32, 4, dropout=0.5, impl="sdpa")
    b.load_state_dict(a.state_dict())
    x, kv = torch.randn(2, 6, 32), torch.randn(2, 9, 32)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 5:] = True
    a.eval(), b.eval()
    torch.testing.assert_close(a(x, kv, key_padding_mask=pad), b(x, kv, key_padding_mask=pad))
    a.train()
    assert not torch.allclose(a(x), a(x))  # attention dropout is real in training


def test_text_padding_mask_follows_end_of_text():
    tokens = torch.tensor([[49406, 0, 5, 49407, 0, 0], [49406, 7, 8, 9, 10, 49407]])
    # token id 0 before the end of text is a real token ("!"), not padding
    assert bb.text_padding_mask(tokens).tolist() == [[False] * 4 + [True] * 2, [False] * 6]
