"""Peak memory of one training run, measured the same way for every method on a given device.

CUDA: `torch.cuda.max_memory_allocated` after a reset (tensors only, the allocator's own cache excluded),
plus the optimizer states bitsandbytes' paged optimizers keep in CUDA unified memory, which torch's allocator
never sees (they stay resident on the card while it has room, so they count against it).
CPU: the process's peak resident set (Linux VmHWM, reset through /proc/self/clear_refs) minus its
resident set when the measurement started (after memory freed earlier went back to the OS). That counts
every allocation of the run (model load, optimizer state, activations), torch's or not, without tracing
each one. `kind` says which of the two a number is.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _release_freed_heap() -> None:
    """Hand memory freed before the run back to the OS (glibc's malloc_trim), so the run's allocations cannot
    reuse still-resident freed pages unseen: the RSS delta would then undercount the run."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the delta may undercount after earlier large frees
        pass


class PeakMemory:
    """`start()` then `peak_bytes()`: the most memory this process held for the run since the start."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.kind = "cuda_max_allocated" if self.cuda else "cpu_peak_rss_delta"
        self.device = device
        self.start_bytes = 0

    def start(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            return self
        _release_freed_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        except OSError:
            self.kind = "cpu_peak_rss_delta_unreset"  # the peak may predate the run: an upper bound
        self.start_bytes = (_status_kib("VmRSS") or 0) * 1024
        return self

    def restart_peak(self) -> None:
        """Forget the peak so far and keep the start: peak_bytes() is then the most held from here on, still
        counted from start() (what is resident now, e.g. loaded weights, included). A load's transient peak
        (bf16 weights read then quantized, file pages) is not a training peak; CUDA's max_allocated is read the
        same way after torch.cuda.reset_peak_memory_stats."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _release_freed_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.kind = "cpu_peak_rss_delta_unreset"

    def peak_bytes(self, optimizer=None) -> int:
        """Peak since start(); on CUDA, `optimizer`'s paged states are added (see paged_optimizer_bytes)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            paged = paged_optimizer_bytes(optimizer) if optimizer is not None else 0
            return int(torch.cuda.max_memory_allocated(self.device) - self.start_bytes + paged)
        peak = _status_kib("VmHWM")
        return max(0, peak * 1024 - self.start_bytes) if peak is not None else 0


def paged_optimizer_bytes(optimizer) -> int:
    """Bytes of optimizer state held in bitsandbytes' paged (unified) memory, outside torch's allocator."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t) and getattr(t, "is_paged", False))


def folder_bytes(folder: str | Path) -> int:
    """Bytes on disk of what a method saved: the adapter, or the full weights for full-parameter methods."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
