"""The cross-modal bridge: no batch mixing (the released defect), phrase-sensitive, all trained."""
import pytest
import torch

from hivg.config import load_preset
from hivg.losses import build_criterion
from hivg.model.build import build_model
from helpers import make_tokens


def batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    pad = torch.zeros(n, 128, 128, dtype=torch.bool)
    pad[:, 96:] = True
    return torch.randn(n, 3, 128, 128, generator=g), pad, make_tokens(n, seed=seed)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(load_preset("tiny").replace({"model.weights": None})).eval()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_prediction_does_not_depend_on_the_rest_of_the_batch(model, attention):
    for m in model.modules():
        if hasattr(m, "impl"):
            m.impl = attention
    image, pad, tokens = batch(4, seed=1)
    other_image, other_pad, other_tokens = batch(4, seed=2)
    with torch.no_grad():
        alone = model(image[:1], pad[:1], tokens[:1])
        for companions in (slice(1, 4), slice(0, 4)):
            mixed = model(torch.cat([image[:1], other_image[companions]]),
                          torch.cat([pad[:1], other_pad[companions]]),
                          torch.cat([tokens[:1], other_tokens[companions]]))
            for key in ("pred_boxes", "align_logits", "seg_logits", "image_embed"):
                torch.testing.assert_close(mixed[key][0], alone[key][0], atol=1e-5, rtol=1e-4)


def test_prediction_changes_with_its_own_phrase(model):
    image, pad, tokens = batch(2, seed=3)
    with torch.no_grad():
        before = model(image, pad, tokens)
        tokens2 = tokens.clone()
        tokens2[0, 1] = (tokens2[0, 1] + 1234) % 49000 + 1
        after = model(image, pad, tokens2)
    assert (after["pred_boxes"][0] - before["pred_boxes"][0]).abs().max() > 1e-6
    # the image embedding depends on the phrase only through the bridge
    assert (after["image_embed"][0] - before["image_embed"][0]).abs().max() > 1e-6
    torch.testing.assert_close(after["pred_boxes"][1], before["pred_boxes"][1])


def test_every_bridge_parameter_receives_a_gradient():
    torch.manual_seed(0)
    config = load_preset("tiny").replace({"model.weights": None})
    model = build_model(config).train()
    image, pad, tokens = batch(3, seed=4)
    out = model(image, pad, tokens)
    targets = {"box": torch.tensor([[0.5, 0.4, 0.3, 0.2]] * 3), "pad_mask": pad}
    build_criterion(config.loss)(out, targets)["loss"].backward()
    params = dict(model.bridge.named_parameters())
    assert len(model.bridge) == 4 and params
    for name, p in params.items():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name


def test_bridge_can_be_disabled_and_taps_stay():
    config = load_preset("tiny").replace({"model.weights": None}).replace({"model.bridge.enabled": False})
    model = build_model(config).eval()
    assert len(model.bridge) == 0 and model.taps == [0, 1, 2, 3]
    image, pad, tokens = batch(2, seed=5)
    with torch.no_grad():
        a = model(image, pad, tokens)["image_embed"]
        tokens[0, 1] += 1
        b = model(image, pad, tokens)["image_embed"]
    torch.testing.assert_close(a, b)  # without a bridge the image tower ignores the phrase
