"""Perception or reasoning: what limits grounding on the synthetic benchmark?

Two probes on frozen features (no fine-tuning of CLIP):
  linear      can a linear read-out of CLIP's patch tokens tell the colour, shape and size of
              the object under a patch? (test split, cells that hold an object)
  selection   the same small VL transformer (the tiny preset's fusion: 2 layers, 128 wide)
              trained to pick the target's cell (cross-entropy over the patch grid), fed
              CLIP's frozen text tokens and either CLIP's patch tokens or the generator's
              ground truth for each cell (hivg.data.oracle: colour, shape, size and box of the
              object there); a third row replaces CLIP's text tokens by a learned embedding
              of the token ids. If ground truth makes selection easy, the limit is what CLIP
              sees; if a learned embedding beats CLIP's text, the text tower limits too.
Selection is scored as in `pipelines/evaluate.py`'s breakdown: the picked cell belongs to the
target. `run_probes` prints the results and writes {storage}/probes/perception.json.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hivg.config import Config, ConfigError, DataConfig


@torch.no_grad()
def frozen_features(clip, dataset, batch_size: int = 200) -> dict[str, torch.Tensor]:
    """Every vision layer's patch tokens (concatenated) and the projected text tokens."""
    from torch.utils.data import DataLoader

    from hivg.model import backbone as bb

    vision, text, pad, eot, ids = [], [], [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        x = bb.embed_image(clip, batch["image"])
        taps = []
        for block in bb.vision_blocks(clip):
            x = bb.block_mlp(block, bb.block_attention(block, x))
            taps.append(x[:, 1:])
        vision.append(torch.cat(taps, -1).half())
        tokens = batch["tokens"]
        text.append(bb.project_text(clip, bb.text_layers(clip, tokens)[-1]).half())
        pad.append(bb.text_padding_mask(tokens))
        eot.append(bb.eot_index(tokens))
        ids.append(tokens)
    return {"vision": torch.cat(vision), "text": torch.cat(text), "pad": torch.cat(pad),
            "eot": torch.cat(eot), "tokens": torch.cat(ids)}


def linear_probe(x_train, y_train, x_test, y_test, steps: int = 300) -> float:
    """Test accuracy of a softmax regression on standardised features (full-batch Adam)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    head = nn.Linear(x_train.shape[1], int(y_train.max()) + 1)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(head(x_train), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (head(x_test).argmax(1) == y_test).float().mean().item()


class SelectionProbe(nn.Module):
    """Patch features + text tokens -> a small transformer -> one score per cell. The text
    is CLIP's frozen token features, or (`vocab`) token ids through a learned embedding."""

    def __init__(self, vision_dim: int, text_dim: int, cells: int, text_len: int,
                 width: int = 128, layers: int = 2, heads: int = 4, vocab: int | None = None):
        super().__init__()
        self.cells = cells
        self.vision_in = nn.Linear(vision_dim, width)
        self.text_in = nn.Embedding(vocab, width) if vocab else nn.Linear(text_dim, width)
        self.position = nn.Parameter(torch.randn(cells + text_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, 0.1, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.cell_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))

    def forward(self, vision, text, pad, eot):
        text = text if isinstance(self.text_in, nn.Embedding) else text.float()
        x = torch.cat([self.vision_in(vision.float()), self.text_in(text)], 1)
        mask = torch.cat([torch.zeros(len(x), self.cells, dtype=torch.bool), pad], 1)
        out = self.encoder(x + self.position, src_key_padding_mask=mask)
        phrase = out[torch.arange(len(x)), self.cells + eot]
        return (self.cell_head(out[:, :self.cells]) * phrase[:, None]).sum(-1) / x.shape[-1] ** 0.5


def selection_scores(logits, truth) -> dict[str, float]:
    picked = truth.owned[torch.arange(len(logits)), logits.argmax(1)].float()
    scores = {"all": picked.mean().item()}
    for kind in sorted(set(truth.types)):
        rows = torch.tensor([i for i, t in enumerate(truth.types) if t == kind])
        scores[kind] = picked[rows].mean().item()
    return scores


def train_selection(vision_train, vision_test, text_train, text_test, truth_train, truth_test,
                    epochs: int, seed: int, label: str, batch_size: int = 32,
                    learned_text: bool = False) -> list[dict]:
    torch.manual_seed(seed)
    probe = SelectionProbe(vision_train.shape[-1], text_train["text"].shape[-1],
                           vision_train.shape[1], text_train["text"].shape[1],
                           vocab=int(text_train["tokens"].max()) + 1 if learned_text else None)
    key = "tokens" if learned_text else "text"
    if learned_text:  # ids unseen in training map to a row that stays at its init
        text_test = {**text_test, "tokens": text_test["tokens"].clamp(max=probe.text_in.num_embeddings - 1)}
    steps = epochs * max(1, len(vision_train) // batch_size)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.05)
    history = []
    for epoch in range(1, epochs + 1):
        probe.train()
        start = time.perf_counter()
        order = torch.randperm(len(vision_train))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            j = order[i:i + batch_size]
            logits = probe(vision_train[j], text_train[key][j], text_train["pad"][j],
                           text_train["eot"][j])
            loss = F.cross_entropy(logits, truth_train.target_cell[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        probe.eval()
        with torch.no_grad():
            logits = probe(vision_test, text_test[key], text_test["pad"], text_test["eot"])
        scores = selection_scores(logits, truth_test)
        history.append({"epoch": epoch, **scores})
        print(f"  {label:<26} epoch {epoch}: test selection {scores['all']:.3f} "
              + " ".join(f"{k} {v:.3f}" for k, v in scores.items() if k != "all")
              + f"  ({time.perf_counter() - start:.0f}s)", flush=True)
    return history


def run_probes(config: Config, storage: Path, epochs: int, train_samples: int | None,
               seed: int) -> Path:
    """Both probes on `config`'s CLIP (the tiny preset's by default) over the synthetic
    benchmark under `storage`; returns the JSON file written."""
    from hivg.data.manifest import list_splits
    from hivg.data.prepare import ensure_synthetic
    from hivg.train.pretrain import resolve_weights

    if config.data.dataset != "synthetic":
        raise ConfigError(f"data.dataset {config.data.dataset!r}: the probes need the "
                          "synthetic benchmark's ground truth (expected synthetic)")
    torch.manual_seed(seed)
    if not list_splits(config.data.data_dir, "synthetic"):
        ensure_synthetic(storage, seed=0, log=print)
    config = resolve_weights(config, storage, log=print)
    clip, grid, feats, truth = _features_and_truth(config, train_samples)
    result: dict = {"weights": config.model.weights, "clip": config.model.clip, "grid": grid,
                    "linear": _linear_probes(clip, feats, truth), "selection": {}}
    print(f"selection probe, {epochs} epochs, the same fusion for every row:")
    clip_patches = {s: feats[s]["vision"] for s in feats}
    ground_truth = {s: truth[s].features for s in truth}
    for label, vision, learned_text in (("CLIP patches", clip_patches, False),
                                        ("ground truth", ground_truth, False),
                                        ("ground truth, learned text", ground_truth, True)):
        result["selection"][label] = train_selection(
            vision["train"], vision["test"], feats["train"], feats["test"], truth["train"],
            truth["test"], epochs, seed, label, learned_text=learned_text)
    out = storage / "probes" / "perception.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"written: {out}")
    return out


def _features_and_truth(config: Config, train_samples: int | None):
    """(CLIP, patch grid, frozen features per split, per-cell ground truth per split)."""
    from hivg.data import oracle
    from hivg.data.dataset import build_dataset
    from hivg.data.manifest import dataset_dir
    from hivg.model import backbone as bb
    from hivg.model.weights import load_weights

    m = config.model
    clip = bb.create_clip(m.clip)
    load_weights(clip, m.weights, m.clip, m.weights_format, log=print)
    clip.eval()
    size, grid = bb.image_size(clip), bb.image_size(clip) // bb.patch_size(clip)
    start = time.perf_counter()
    feats = {}
    for split, limit in (("train", train_samples), ("test", None)):
        data = DataConfig(dataset="synthetic", data_dir=config.data.data_dir,
                          max_eval_samples=limit)  # eval transform: no augmentation
        feats[split] = frozen_features(clip, build_dataset(data, split, size, m.context_length,
                                                           train=False))
    folder = dataset_dir(config.data.data_dir, "synthetic")
    truth = {split: oracle.cell_truth(folder, split, size, grid) for split in ("train", "test")}
    if train_samples:  # the first N training expressions
        n, t = train_samples, truth["train"]
        truth["train"] = oracle.CellTruth(t.features[:n], t.owned[:n], t.target_cell[:n],
                                          t.types[:n])
    print(f"frozen features of {m.clip} ({grid}x{grid} patches) and cell truth: "
          f"{time.perf_counter() - start:.0f}s", flush=True)
    return clip, grid, feats, truth


def _linear_probes(clip, feats: dict, truth: dict) -> dict:
    """Per attribute: a linear read-out of the last layer's and of all layers' patch tokens."""
    from hivg.data import oracle
    from hivg.model import backbone as bb

    width = feats["train"]["vision"].shape[-1] // len(bb.vision_blocks(clip))
    layer_sets = {"last layer": slice(-width, None), "all layers": slice(None)}
    print("linear read-out of the object under a patch (test cells with an object):")
    result = {}
    for name in oracle.ATTRIBUTE_VALUES:
        sl = oracle.attribute_slice(name)
        row = {}
        for label, cols in layer_sets.items():
            xs, ys = [], []
            for split in ("train", "test"):
                has = truth[split].has_object()
                xs.append(feats[split]["vision"][has][:, cols].float())
                ys.append(truth[split].features[has][:, sl].argmax(1))
            keep = min(len(xs[0]), 60_000)  # full-batch regression: bound the memory
            row[label] = linear_probe(xs[0][:keep], ys[0][:keep], xs[1], ys[1])
        chance = 1 / len(oracle.ATTRIBUTE_VALUES[name])
        result[name] = {**row, "chance": chance}
        print(f"  {name:<7} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items())
              + f"  (chance {chance:.2f})", flush=True)
    return result
