"""Peak-memory probe of verl's worker processes, for the teacher-pass benchmark.

Enabled by ``SGSD_PROBE_MEMORY=1``. The trainer asks each worker of a worker group for
its PID (Ray's ``__ray_call__``), resets the kernel's peak-RSS counter of that process
(``/proc/PID/clear_refs`` <- 5) before a phase and reads ``VmHWM`` after it. On CPU the
model, activations and logits all live in that RSS, so ``VmHWM - VmRSS(before)`` is the
phase's peak extra memory. On a CUDA worker it reports the allocator's peak instead.
Linux only; returns ``None`` where the counters cannot be read.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray


def _worker_info(_actor) -> dict:
    import torch

    info = {"pid": os.getpid(), "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        torch.cuda.reset_peak_memory_stats()
        info["cuda_allocated"] = torch.cuda.memory_allocated()
    return info


def _cuda_peak(_actor) -> int:
    import torch

    return torch.cuda.max_memory_allocated()


def _status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemoryProbe:
    """``with probe.phase(): ...`` then ``probe.last_extra_mb`` (max over the group's workers)."""

    def __init__(self, worker_group) -> None:
        self.workers = list(getattr(worker_group, "_workers", []))
        self.last_extra_mb: float | None = None

    def start(self) -> None:
        infos = ray.get([w.__ray_call__.remote(_worker_info) for w in self.workers])
        self._infos = infos
        self._before = {}
        for info in infos:
            if info["cuda"]:
                self._before[info["pid"]] = info["cuda_allocated"] / 2**20
                continue
            try:
                Path(f"/proc/{info['pid']}/clear_refs").write_text("5")
            except OSError:
                self._before[info["pid"]] = None
                continue
            rss = _status_kib(info["pid"], "VmRSS")
            self._before[info["pid"]] = None if rss is None else rss / 1024

    def stop(self) -> float | None:
        extras = []
        for worker, info in zip(self.workers, self._infos):
            before = self._before.get(info["pid"])
            if before is None:
                continue
            if info["cuda"]:
                peak = ray.get(worker.__ray_call__.remote(_cuda_peak)) / 2**20
            else:
                hwm = _status_kib(info["pid"], "VmHWM")
                if hwm is None:
                    continue
                peak = hwm / 1024
            extras.append(peak - before)
        self.last_extra_mb = max(extras) if extras else None
        return self.last_extra_mb


def enabled() -> bool:
    return os.environ.get("SGSD_PROBE_MEMORY", "0") == "1"
