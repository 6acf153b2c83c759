"""Inference rows of `benchmark.py --training-step`: batch-1 latency of HiVG and of the bare
towers, one 640x480 JPEG end to end, and throughput at a batch."""
from __future__ import annotations

import io
import random
import statistics
from typing import Any

import torch

from hivg.bench.timing import PHRASE, count_flops, p99, random_batch, sync_for, timed


def jpeg_640x480(seed: int = 0) -> bytes:
    """A 640x480 JPEG of a synthetic scene (with noise, so it compresses like a photo)."""
    from PIL import Image

    from hivg.data import synthetic

    rng = random.Random(seed)
    w, h, objects = synthetic.make_scene(rng)
    picture = synthetic.draw_scene(w, h, objects, rng).resize((640, 480))
    noise = Image.effect_noise((640, 480), 24).convert("RGB")
    buffer = io.BytesIO()
    Image.blend(picture, noise, 0.15).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def inference_rows(config, batch: int, steps: int, warmup: int, device,
                   peak_tflops: float | None, compile_model: bool = False) -> list[dict[str, Any]]:
    """HiVG and the bare towers under the `auto` profile (what training uses: `fast`, bf16,
    on a GPU; fp32 on a CPU, where bf16 is slower), eval mode: batch-1 latency (median, p99)
    of the model alone and of one 640x480 JPEG end to end (decode, letterbox, tokenize,
    forward, box back to pixels), and throughput at `batch`."""
    from hivg.model import backbone as bb
    from hivg.model.build import build_model
    from hivg.train.loop import autocast_context
    from hivg.train.profile import apply_profile, resolve_profile

    cfg = config.replace({"profile": "auto"})
    prof = resolve_profile(cfg, device.type)
    torch.manual_seed(0)
    model = build_model(apply_profile(cfg, device.type)).to(device).eval()
    clip = bb.create_clip(cfg.model.clip, prof.attention).to(device).eval()
    if compile_model:  # CUDA graphs on a GPU: batch-1 latency is kernel-launch bound there
        model = torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)
    sync, amp = sync_for(device), prof.torch_amp_dtype

    # no_grad: the flop counter hooks autograd
    def hivg_forward(b):
        with torch.no_grad(), autocast_context(device, amp):
            return model(b["image"], b["pad_mask"], b["tokens"])

    def towers_forward(b):
        with torch.no_grad(), autocast_context(device, amp):
            return bb.encode_image(clip, b["image"]), bb.encode_text(clip, b["tokens"])

    def on_device(n: int, seed: int) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in
                random_batch(cfg, n, torch.Generator().manual_seed(seed)).items()}

    one, many = on_device(1, 1), on_device(batch, 2)
    rows = [_row(what, "batch 1, model only", 1, timed(lambda: fn(one), steps * 4, warmup * 2,
                                                          sync))
            for what, fn in (("HiVG", hivg_forward), ("bare towers", towers_forward))]
    rows.append(_row("HiVG", "batch 1, one 640x480 JPEG end to end", 1,
                     timed(_end_to_end(hivg_forward, cfg, device), steps * 4, warmup * 2, sync)))
    for what, fn in (("HiVG", hivg_forward), ("bare towers", towers_forward)):
        row = _row(what, f"batch {batch}, throughput", batch,
                   timed(lambda: fn(many), steps, warmup, sync))
        tflops = count_flops(lambda: fn(many)) / (row["median_ms"] / 1e3) / 1e12
        rows.append({**row, "tflops": tflops,
                     "mfu": tflops / peak_tflops if peak_tflops else None})
    for r in rows:
        r["settings"] = {"amp_dtype": prof.amp_dtype or "fp32", "attention": prof.attention,
                         "compiled": compile_model}
    return rows


def _row(model: str, mode: str, batch: int, times: list[float]) -> dict[str, Any]:
    median = statistics.median(times)
    return {"model": model, "mode": mode, "batch": batch, "median_ms": 1e3 * median,
            "p99_ms": 1e3 * p99(times), "images_per_s": batch / median}


def _end_to_end(hivg_forward, config, device):
    """One 640x480 JPEG to a box in its pixels: decode, letterbox, tokenize, forward."""
    from PIL import Image

    from hivg.data.tokens import tokenize
    from hivg.data.transforms import LetterboxTransform, canvas_to_image_boxes

    size, ctx = config.model.image_size, config.model.context_length
    transform = LetterboxTransform(size, train=False)
    jpeg = jpeg_640x480()

    def run():
        image = Image.open(io.BytesIO(jpeg))
        image.draft("RGB", (size, size))
        sample = transform(image.convert("RGB"), (640, 480), [0, 0, 1, 1])
        b = {"image": sample["image"][None].to(device),
             "pad_mask": sample["pad_mask"][None].to(device),
             "tokens": tokenize(PHRASE, ctx).to(device)}
        out = hivg_forward(b)
        return canvas_to_image_boxes(out["pred_boxes"].float(), sample["scale"][None].to(device),
                                     sample["offset"][None].to(device),
                                     torch.tensor([[640.0, 480.0]], device=device), size).cpu()

    return run
