"""Resource limits for running a vetted pipeline: typed configuration with safe defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

#: Used when the machine's memory cannot be read.
_FALLBACK_MEMORY_MB = 16384


def default_memory_mb() -> int:
    """The default ``Limits.memory_mb``: three quarters of this machine's physical memory.

    Enough for any pipeline the machine can run at all, and a runaway worker still leaves the
    host a quarter of the memory to stop it. Read when a ``Limits()`` is created.
    """
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return _FALLBACK_MEMORY_MB
    if total <= 0:
        return _FALLBACK_MEMORY_MB
    return max(1024, int(total * 3 // 4) // (1024 * 1024))


@dataclass(frozen=True)
class Limits:
    """Limits enforced on an isolated worker (``isolation="process"``).

    Per request (a load, a call, a ``.to()``): ``wall_s`` (enforced by the host, which kills the
    worker) and ``cpu_s`` (CPU seconds of all the worker's threads: an rlimit the worker moves
    before each request, and a budget the host checks from outside), so a long-lived service is
    never ended by its total. For the worker's life: ``memory_mb`` (address space and data;
    default three quarters of the machine's memory), ``file_size_mb``, ``open_files`` and
    ``processes`` (rlimits), ``scratch_mb`` (all the files the worker writes together: its
    scratch dir is a tmpfs of that size, memory-backed and counted apart from ``memory_mb``);
    ``max_message_mb`` bounds every message the host accepts from the worker;
    ``gpu_memory_fraction`` caps the worker's CUDA allocator when it uses a GPU. A worker stopped
    by a limit is gone; its handle's
    ``reload()`` starts a fresh one.
    """

    wall_s: float = 600.0
    memory_mb: int = field(default_factory=default_memory_mb)
    cpu_s: int = 3600
    file_size_mb: int = 64
    scratch_mb: int = 512
    open_files: int = 256
    processes: int = 64
    max_message_mb: int = 512
    gpu_memory_fraction: float | None = None

    def __post_init__(self) -> None:
        for name in ("wall_s", "memory_mb", "cpu_s", "file_size_mb", "scratch_mb", "open_files", "processes", "max_message_mb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise ValueError(f"Limits.{name} must be a positive finite number, got {value!r}")
        frac = self.gpu_memory_fraction
        if frac is not None and not (0.0 < float(frac) <= 1.0):
            raise ValueError(f"Limits.gpu_memory_fraction must be in (0, 1], got {frac!r}")
