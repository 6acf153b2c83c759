"""GPU energy from NVML's cumulative counter (hivg.train.energy). No GPU here: NVML is a
small fake module with the same four functions (a mock only for what cannot run here)."""
from __future__ import annotations

import pytest
import torch

from hivg.train.energy import MJ_PER_KWH, EnergyMeter, device_indices


class FakeNvml:
    """Counters in millijoules per device index; `step` is added at every read."""

    def __init__(self, start: dict[int, int], step: dict[int, int], fail_init: bool = False):
        self.counter, self.step, self.fail_init = dict(start), step, fail_init
        self.shutdowns = 0

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        value = self.counter[handle]
        self.counter[handle] += self.step[handle]
        return value

    def nvmlShutdown(self):
        self.shutdowns += 1


def test_kwh_is_the_counter_difference_summed_over_devices():
    nvml = FakeNvml({0: 5_000, 3: 7_000}, {0: int(MJ_PER_KWH), 3: int(MJ_PER_KWH // 2)})
    meter = EnergyMeter([0, 3], nvml=nvml).start()
    assert meter.stop() == pytest.approx(1.5)
    assert nvml.shutdowns == 1 and meter.stop() is None  # stopped once


@pytest.mark.parametrize("indices, nvml, reason", [
    ([], None, "no GPU"),
    ([0], FakeNvml({0: 0}, {0: 1}, fail_init=True), "NVML Shared Library Not Found"),
])
def test_nothing_measurable_is_none_with_a_reason_never_an_error(indices, nvml, reason):
    meter = EnergyMeter(indices, nvml=nvml).start()
    assert meter.stop() is None and reason in meter.reason


@pytest.mark.parametrize("device, visible, expected", [
    (torch.device("cpu"), None, []),
    (torch.device("cuda"), None, [0]),
    (torch.device("cuda", 1), None, [1]),
    (torch.device("cuda", 1), "3,5", [5]),   # NVML numbers every GPU, CUDA the visible ones
    (torch.device("cuda", 0), "GPU-uuid", [0]),
])
def test_nvml_index_of_a_torch_device(device, visible, expected, monkeypatch):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert device_indices(device) == expected
