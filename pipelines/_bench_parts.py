"""Rows of `benchmark.py --training-step` beyond the HiVG training step itself: the bare
frozen-backbone step (DESIGN.md's anchor), inference latency and throughput, and the input
pipeline per loader worker. Each function returns plain dicts; benchmark.py prints and saves.
"""
from __future__ import annotations

import io
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

PHRASE = "the small red circle to the left of the blue square"


def timed(fn: Callable[[], Any], steps: int, warmup: int, sync: Callable[[], None]
           ) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def sync_for(device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def _p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def random_batch(config, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random images and token rows (start, random ids, end at half length, padding)."""
    size, ctx = config.model.image_size, config.model.context_length
    image = torch.randn(batch, 3, size, size, generator=generator)
    tokens = torch.randint(1, 49000, (batch, ctx), generator=generator)
    tokens[:, 0], tokens[:, ctx // 2] = 49406, 49407
    tokens[:, ctx // 2 + 1:] = 0
    return {"image": image, "pad_mask": torch.zeros(batch, size, size, dtype=torch.bool),
            "tokens": tokens}


# -- the bare backbone ---------------------------------------------------------------------
def backbone_step_row(config, profile_name: str, batch: int, steps: int, warmup: int, device,
                      peak_tflops: float | None) -> dict[str, Any]:
    """One training step of the bare open_clip towers, frozen (LoRA-like: the backward pass
    runs through every activation, no weight gradients): a CLIP contrastive loss on the two
    embeddings, and AdamW on one trainable input scale so the backward has somewhere to go."""
    from hivg.model import backbone as bb
    from hivg.train.loop import autocast_context
    from hivg.train.profile import apply_profile, resolve_profile

    cfg = config.replace({"profile": profile_name})
    prof = resolve_profile(cfg, device.type)
    cfg = apply_profile(cfg, device.type)
    torch.manual_seed(0)
    clip = bb.create_clip(cfg.model.clip, prof.attention).to(device).train()
    clip.requires_grad_(False)
    scale = torch.nn.Parameter(torch.ones((), device=device))
    optimizer = torch.optim.AdamW([scale], lr=1e-4, fused=prof.fused_adamw or None)
    host = random_batch(cfg, batch, torch.Generator().manual_seed(0))

    def step():
        image = host["image"].to(device, non_blocking=prof.pin_memory)
        tokens = host["tokens"].to(device, non_blocking=prof.pin_memory)
        with autocast_context(device, prof.torch_amp_dtype):
            img = bb.encode_image(clip, image * scale)
            txt = bb.encode_text(clip, tokens)
            logits = torch.nn.functional.normalize(img.float(), dim=-1) @ \
                torch.nn.functional.normalize(txt.float(), dim=-1).t() * 100
            labels = torch.arange(batch, device=device)
            loss = (torch.nn.functional.cross_entropy(logits, labels)
                    + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = timed(step, steps, warmup, sync_for(device))
    flops = count_flops(step)
    step_s = statistics.median(times)
    tflops = flops / step_s / 1e12
    return {"profile": profile_name, "stage": "bare backbone (frozen)", "batch": batch,
            "images_per_s": batch / step_s, "step_ms": step_s * 1e3,
            "peak_memory_mb": peak_memory_mb(device), "gflop_per_step": flops / 1e9,
            "tflops": tflops, "mfu": tflops / peak_tflops if peak_tflops else None,
            "settings": {"amp_dtype": prof.amp_dtype or "fp32", "attention": prof.attention,
                         "fused_adamw": prof.fused_adamw, "tf32": prof.tf32,
                         "pin_memory": prof.pin_memory, "find_unused": False}}


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- inference -----------------------------------------------------------------------------
def _jpeg_640x480(seed: int = 0) -> bytes:
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
    jpeg = _jpeg_640x480()

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
                     "median_ms": 1e3 * statistics.median(times), "p99_ms": 1e3 * _p99(times),
                     "images_per_s": 1 / statistics.median(times)})
    times = timed(end_to_end, steps * 4, warmup * 2, sync)
    rows.append({"model": "HiVG", "mode": "batch 1, one 640x480 JPEG end to end", "batch": 1,
                 "median_ms": 1e3 * statistics.median(times), "p99_ms": 1e3 * _p99(times),
                 "images_per_s": 1 / statistics.median(times)})
    for what, fn in (("HiVG", hivg_forward), ("bare towers", towers_forward)):
        times = timed(lambda: fn(many), steps, warmup, sync)
        flops = count_flops(lambda: fn(many))
        step_s = statistics.median(times)
        tflops = flops / step_s / 1e12
        rows.append({"model": what, "mode": f"batch {batch}, throughput", "batch": batch,
                     "median_ms": 1e3 * step_s, "p99_ms": 1e3 * _p99(times),
                     "images_per_s": batch / step_s, "tflops": tflops,
                     "mfu": tflops / peak_tflops if peak_tflops else None})
    for r in rows:
        r["settings"] = {"amp_dtype": prof.amp_dtype or "fp32", "attention": prof.attention,
                         "compiled": compile_model}
    return rows


# -- the input pipeline --------------------------------------------------------------------
def input_pipeline_rows(config, images: int, passes: int = 2) -> list[dict[str, Any]]:
    """Decode + letterbox + training augmentations + tokenize, per loader worker: a small
    RefCOCO-format dataset of 640x480 JPEGs, prepared twice (loose files; packed shards),
    read through a DataLoader with one worker process, batch 32. Worker start-up and the
    first batch are not timed."""
    from torch.utils.data import DataLoader

    from hivg.config import DataConfig
    from hivg.data.dataset import build_dataset
    from hivg.data.prepare import prepare_dataset
    from hivg.data.splits import get_spec

    size, ctx = config.model.image_size, config.model.context_length
    rows = []
    with tempfile.TemporaryDirectory(prefix="hivg-input-bench-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "splits").mkdir()
        records = []
        for i in range(images):
            name = f"{i:05d}.jpg"
            (root / "images" / name).write_bytes(_jpeg_640x480(i))
            x, y = 40 + (i * 37) % 400, 40 + (i * 53) % 300
            records.append((name, {"height": 480, "width": 640}, [x, y, 120.0, 90.0],
                            PHRASE, []))
        torch.save(records, get_spec("refcoco").split_file(root / "splits", "train"))
        for layout, pack in (("loose JPEG files", False), ("packed shards", True)):
            storage = root / ("packed" if pack else "loose")
            prepare_dataset("refcoco", root / "splits", root / "images", storage,
                            pack_images=pack)
            ds = build_dataset(DataConfig(dataset="refcoco", data_dir=str(storage / "data")),
                               "train", size, ctx, train=True)
            loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=1,
                                persistent_workers=True, drop_last=False)
            iterator = iter(loader)
            next(iterator)  # worker start-up and the first batch
            t0, count = time.perf_counter(), 0
            for _ in range(passes):
                for b in iterator:
                    count += len(b["image"])
                iterator = iter(loader)
            seconds = time.perf_counter() - t0
            rows.append({"layout": layout, "images": count, "seconds": seconds,
                         "images_per_s_per_worker": count / seconds})
            del iterator, loader
    return rows
