"""GPU energy of a training run from NVML's cumulative energy counter (Volta and newer).

`EnergyMeter.start()` before training, `.stop()` after: kWh used by the GPUs this process
trained on, or None where it cannot be measured (no CUDA, no `pynvml` / nvidia-ml-py, a GPU
without the counter). Never raises: energy is a figure beside the result, not a reason to
lose it.
"""
from __future__ import annotations

from typing import Any, Optional

MJ_PER_KWH = 3.6e9  # millijoules in a kilowatt-hour


class EnergyMeter:
    def __init__(self, device_indices: list[int], nvml: Any = None) -> None:
        """device_indices: NVML indices of the GPUs to meter (empty: measure nothing).
        nvml: the pynvml module (imported on start() when None)."""
        self.device_indices = list(device_indices)
        self._nvml = nvml
        self._handles: list[Any] = []
        self._start: list[int] = []
        self.reason: Optional[str] = None  # why nothing was measured

    def start(self) -> "EnergyMeter":
        if not self.device_indices:
            self.reason = "no GPU"
            return self
        try:
            if self._nvml is None:
                import pynvml as nvml
                self._nvml = nvml
            self._nvml.nvmlInit()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in self.device_indices]
            self._start = [int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h))
                           for h in self._handles]
        except Exception as e:  # no library, no driver, no counter on this GPU
            self.reason = f"NVML energy counter unavailable: {type(e).__name__}: {e}"
            self._handles, self._start = [], []
        return self

    def stop(self) -> Optional[float]:
        """kWh since start(), summed over the metered GPUs; None when not measured."""
        if not self._handles:
            return None
        try:
            used = sum(int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h)) - s
                       for h, s in zip(self._handles, self._start))
        except Exception as e:
            self.reason = f"NVML energy counter unavailable: {type(e).__name__}: {e}"
            return None
        finally:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._handles = []
        return used / MJ_PER_KWH


def device_indices(device: Any) -> list[int]:
    """The NVML index of a torch device: [index] for CUDA, [] otherwise. CUDA_VISIBLE_DEVICES
    renumbers CUDA devices; NVML sees all of them, so the visible list is translated."""
    import os

    if getattr(device, "type", str(device)) != "cuda":
        return []
    index = device.index if getattr(device, "index", None) is not None else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if index < len(ids) and ids[index].isdigit():
            return [int(ids[index])]
    return [index]
