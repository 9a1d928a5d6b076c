"""Peak memory of a piece of work: process RAM (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) and
CUDA memory (``torch.cuda.max_memory_allocated``), for per-case figures of inference runs."""
from __future__ import annotations

import resource
from typing import Optional

import torch


def _vm_hwm_mb() -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_vm_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: reset the peak resident set size to the current one
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.ram_mb`` (peak resident memory of this process during the
    block; where the peak cannot be reset, the peak since the process started) and ``m.gpu_mb`` (peak CUDA memory
    allocated by torch during the block; None off CUDA)."""

    def __init__(self, device: Optional[torch.device] = None):
        self.device = device
        self.ram_mb: Optional[float] = None
        self.gpu_mb: Optional[float] = None
        self.ram_since_start = False

    def _cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda" and torch.cuda.is_available()

    def __enter__(self):
        self.ram_since_start = not _reset_vm_hwm()
        if self._cuda():
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        hwm = _vm_hwm_mb()
        self.ram_mb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        if self._cuda():
            torch.cuda.synchronize(self.device)
            self.gpu_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        return False
