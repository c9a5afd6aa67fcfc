"""Resource limits for running a vetted pipeline: typed configuration with safe defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Limits enforced on an isolated worker (``isolation="process"``).

    ``wall_s`` is enforced by the host (it kills the worker); ``memory_mb`` (address space),
    ``cpu_s``, ``file_size_mb``, ``open_files`` and ``processes`` by rlimits in the worker;
    ``max_message_mb`` bounds every message the host accepts from the worker;
    ``gpu_memory_fraction`` caps the worker's CUDA allocator when it uses a GPU.
    """

    wall_s: float = 600.0
    memory_mb: int = 16384
    cpu_s: int = 3600
    file_size_mb: int = 64
    open_files: int = 256
    processes: int = 64
    max_message_mb: int = 512
    gpu_memory_fraction: float | None = None

    def __post_init__(self) -> None:
        for name in ("wall_s", "memory_mb", "cpu_s", "file_size_mb", "open_files", "processes", "max_message_mb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive number, got {value!r}")
        frac = self.gpu_memory_fraction
        if frac is not None and not (0.0 < float(frac) <= 1.0):
            raise ValueError(f"Limits.gpu_memory_fraction must be in (0, 1], got {frac!r}")
