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
    from PIL import Image

    from hivg.data.tokens import tokenize
    from hivg.data.transforms import LetterboxTransform, canvas_to_image_boxes
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
    sync = sync_for(device)
    amp = prof.torch_amp_dtype
    size, ctx = cfg.model.image_size, cfg.model.context_length
    transform = LetterboxTransform(size, train=False)
    jpeg = jpeg_640x480()

    def hivg_forward(b):
        with torch.no_grad(), autocast_context(device, amp):  # no_grad: the flop counter hooks autograd
            return model(b["image"], b["pad_mask"], b["tokens"])

    def towers_forward(b):
        with torch.no_grad(), autocast_context(device, amp):  # no_grad: the flop counter hooks autograd
            return bb.encode_image(clip, b["image"]), bb.encode_text(clip, b["tokens"])

    def end_to_end():
        image = Image.open(io.BytesIO(jpeg))
        image.draft("RGB", (size, size))
        sample = transform(image.convert("RGB"), (640, 480), [0, 0, 1, 1])
        b = {"image": sample["image"][None].to(device), "pad_mask": sample["pad_mask"][None]
             .to(device), "tokens": tokenize(PHRASE, ctx).to(device)}
        out = hivg_forward(b)
        return canvas_to_image_boxes(out["pred_boxes"].float(), sample["scale"][None].to(device),
                                     sample["offset"][None].to(device),
                                     torch.tensor([[640.0, 480.0]], device=device), size).cpu()

    one = {k: v.to(device) for k, v in random_batch(cfg, 1, torch.Generator().manual_seed(1))
           .items()}
    many = {k: v.to(device) for k, v in random_batch(cfg, batch, torch.Generator().manual_seed(2))
            .items()}
    rows = []
    for what, fn, b in (("HiVG", hivg_forward, one), ("bare towers", towers_forward, one)):
        times = timed(lambda: fn(b), steps * 4, warmup * 2, sync)
        rows.append({"model": what, "mode": "batch 1, model only", "batch": 1,
                     "median_ms": 1e3 * statistics.median(times), "p99_ms": 1e3 * p99(times),
                     "images_per_s": 1 / statistics.median(times)})
    times = timed(end_to_end, steps * 4, warmup * 2, sync)
    rows.append({"model": "HiVG", "mode": "batch 1, one 640x480 JPEG end to end", "batch": 1,
                 "median_ms": 1e3 * statistics.median(times), "p99_ms": 1e3 * p99(times),
                 "images_per_s": 1 / statistics.median(times)})
    for what, fn in (("HiVG", hivg_forward), ("bare towers", towers_forward)):
        times = timed(lambda: fn(many), steps, warmup, sync)
        flops = count_flops(lambda: fn(many))
        step_s = statistics.median(times)
        tflops = flops / step_s / 1e12
        rows.append({"model": what, "mode": f"batch {batch}, throughput", "batch": batch,
                     "median_ms": 1e3 * step_s, "p99_ms": 1e3 * p99(times),
                     "images_per_s": batch / step_s, "tflops": tflops,
                     "mfu": tflops / peak_tflops if peak_tflops else None})
    for r in rows:
        r["settings"] = {"amp_dtype": prof.amp_dtype or "fp32", "attention": prof.attention,
                         "compiled": compile_model}
    return rows
