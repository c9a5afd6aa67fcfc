"""``PipelineHandle``: what the user holds for a pipeline that runs in a worker.

Behaves like the pipeline for the common uses: ``pipe(...)`` (JSON-able arguments, tensors,
numpy arrays, PIL images, ``torch.Generator`` whose state is sent and updated afterwards),
``pipe.to(device)``, read-only ``pipe.config`` and ``pipe.<component>.config``, ``close()`` and
``with``. Outputs come back as new host objects (tensors on the CPU). Holds no object of the
worker; everything it knows came through ``_messages.parse``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipewarden.errors import WorkerError
from pipewarden.isolation._client import WorkerProcess
from pipewarden.isolation.layers.apply import LayerStatus
from pipewarden.isolation.wire import messages as _messages
from pipewarden.isolation.wire.codec import Encoder


class ComponentView:
    """Read-only view of one component of an isolated pipeline (its class name and config)."""

    __slots__ = ("_name", "_type", "_config")

    def __init__(self, name: str, type_name: str, config: _messages.FrozenConfig | None) -> None:
        self._name = name
        self._type = type_name
        self._config = config

    @property
    def config(self) -> _messages.FrozenConfig | None:
        return self._config

    @property
    def class_name(self) -> str:
        return self._type

    def __repr__(self) -> str:
        return f"<isolated {self._type} {self._name!r}>"


class PipelineHandle:
    """A vetted pipeline running in a locked-down worker process (``isolation="process"``)."""

    def __init__(self, worker: WorkerProcess, loaded: _messages.Loaded) -> None:
        self._worker = worker
        self._loaded = loaded
        self._device = "cpu"

    # ------------------------------------------------------------------------- inspection

    @property
    def config(self) -> _messages.FrozenConfig:
        return self._loaded.config

    @property
    def components(self) -> Mapping[str, ComponentView]:
        return {
            name: ComponentView(name, self._loaded.component_types.get(name, "?"), cfg)
            for name, cfg in self._loaded.components.items()
        }

    @property
    def layers(self) -> tuple[LayerStatus, ...]:
        """The confinement layers of this pipeline's worker, as it reported them at start."""
        return self._worker.layers

    @property
    def worker_pid(self) -> int:
        return self._worker.pid

    @property
    def device(self) -> str:
        return self._device

    @property
    def class_name(self) -> str:
        return self._loaded.class_name

    @property
    def closed(self) -> bool:
        return self._worker.closed

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        loaded = self.__dict__.get("_loaded")
        if loaded is not None and name in loaded.components:
            return ComponentView(name, loaded.component_types.get(name, "?"), loaded.components[name])
        raise AttributeError(f"isolated pipeline has no attribute {name!r} (only config, components, to, close, call)")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"worker pid {self._worker.pid}"
        return f"<PipelineHandle {self._loaded.class_name} ({state})>"

    # ---------------------------------------------------------------------------- actions

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        enc = Encoder(allow_generators=True)
        tree_args = enc.encode(list(args))
        tree_kwargs = enc.encode(kwargs)
        rng = enc.tensor_ref(torch.get_rng_state())
        msg = self._worker.request(
            {"op": "call", "args": tree_args, "kwargs": tree_kwargs, "rng": rng}, enc.payload(), what="the pipeline call"
        )
        if not isinstance(msg, _messages.Result):
            self._worker.kill()
            raise WorkerError("the worker answered a call with the wrong message", rule="worker protocol", fix="reload")
        if len(msg.generator_states) != len(enc.generators):
            self._worker.kill()
            raise WorkerError("the worker returned the wrong number of generator states", rule="worker protocol", fix="reload")
        for gen, state in zip(enc.generators, msg.generator_states, strict=True):
            try:
                gen.set_state(state)
            except (RuntimeError, TypeError, ValueError):
                self._worker.kill()
                raise WorkerError("the worker returned an invalid generator state", rule="worker protocol", fix="reload") from None
        if msg.rng_state is not None:
            try:
                torch.set_rng_state(msg.rng_state)
            except (RuntimeError, TypeError, ValueError):
                self._worker.kill()
                raise WorkerError("the worker returned an invalid RNG state", rule="worker protocol", fix="reload") from None
        return msg.value

    def to(self, *args: Any, **kwargs: Any) -> PipelineHandle:
        """Move the pipeline inside the worker (which owns the CUDA context); returns self."""
        enc = Encoder(allow_generators=False)
        msg = self._worker.request(
            {"op": "to", "args": enc.encode(list(args)), "kwargs": enc.encode(kwargs)}, enc.payload(), what="to()"
        )
        if isinstance(msg, _messages.Ack) and msg.detail:
            self._device = msg.detail
        return self

    def close(self) -> None:
        """Stop the worker. Idempotent; the handle is unusable afterwards."""
        self._worker.close()

    def __enter__(self) -> PipelineHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._worker.close()
        except Exception:  # noqa: S110 - interpreter shutdown
            pass
