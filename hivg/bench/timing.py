"""Timing helpers of the benchmarks: timed steps, FLOP counts, peak memory, the bf16 peak."""
from __future__ import annotations

import math
import time
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


def p99(times: list[float]) -> float:
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


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bf16_matmul_peak_tflops(device) -> float:
    """Achieved bf16 TFLOP/s of a large square matmul on this GPU (the MFU denominator)."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    reps, best = 20, float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * n ** 3 / best / 1e12
