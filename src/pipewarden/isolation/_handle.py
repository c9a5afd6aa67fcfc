"""``PipelineHandle``: what the user holds for a pipeline that runs in a worker.

Behaves like the pipeline for the common uses: ``pipe(...)`` (JSON-able arguments, tensors,
numpy arrays, PIL images, ``torch.Generator`` whose state is sent and updated afterwards),
``pipe.to(device)``, read-only ``pipe.config`` and ``pipe.<component>.config``, ``close()`` and
``with``. Outputs come back as new host objects (tensors on the CPU). Holds no object of the
worker; everything it knows came through ``_messages.parse``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from pipewarden.errors import PipewardenError, WorkerError
from pipewarden.isolation._client import WorkerProcess
from pipewarden.isolation.layers.apply import LayerStatus
from pipewarden.isolation.wire import messages as _messages
from pipewarden.isolation.wire import rng as _rng
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


_RELOAD_FIX = "pipe.reload() starts a fresh worker for this handle (pipe.reload(limits=Limits(...)) to change limits)"


class PipelineView:
    """The read-only stand-in a host-side ``callback_on_step_end`` receives as its ``pipe``.

    The pipeline itself lives in the worker; the callback sees its class name, config,
    components' configs and device, and cannot change or call it.
    """

    __slots__ = ("_handle",)

    def __init__(self, handle: PipelineHandle) -> None:
        object.__setattr__(self, "_handle", handle)

    @property
    def class_name(self) -> str:
        return self._handle.class_name

    @property
    def config(self) -> _messages.FrozenConfig:
        return self._handle.config

    @property
    def components(self) -> Mapping[str, ComponentView]:
        return self._handle.components

    @property
    def device(self) -> str:
        return self._handle.device

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name in self._handle._loaded.components:
            return getattr(self._handle, name)
        raise AttributeError(
            f"the pipeline stand-in given to callback_on_step_end has no attribute {name!r} "
            "(the pipeline runs in an isolated worker: class_name, config, components, device only)"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the pipeline stand-in given to callback_on_step_end is read-only")

    def __repr__(self) -> str:
        return f"<read-only view of isolated {self._handle.class_name}>"


class _HostBars:
    """Draws on the host the progress bars the pipeline opens in the worker (tqdm)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = dict(config)
        self._bars: dict[int, Any] = {}

    def update(self, msg: _messages.Progress) -> None:
        from pipewarden._progress import progress_bar

        bar = self._bars.get(msg.bar)
        if bar is None:
            if msg.closed:
                return
            bar = self._bars[msg.bar] = progress_bar(total=msg.total, **self._config)
        if msg.total is not None and bar.total != msg.total:
            bar.total = msg.total
        if msg.n > bar.n:
            bar.update(msg.n - bar.n)
        if msg.closed:
            bar.close()
            del self._bars[msg.bar]

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


class PipelineHandle:
    """A vetted pipeline running in a locked-down worker process (``isolation="process"``)."""

    def __init__(
        self,
        worker: WorkerProcess,
        loaded: _messages.Loaded,
        *,
        request: Any = None,
        limits: Any = None,
    ) -> None:
        self._worker = worker
        self._loaded = loaded
        self._device = "cpu"
        self._request = request  # the verified WorkerLoadRequest, kept for reload()
        self._limits = limits
        self._to_args: tuple[list, dict] | None = None
        self._progress_bar_config: dict[str, Any] = {}
        if request is not None:
            worker.reload_fix = _RELOAD_FIX

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
        if loaded is not None and name in loaded.methods:
            return functools.partial(self._invoke, name)
        raise AttributeError(
            f"isolated pipeline has no attribute {name!r} (config, components, to, set_progress_bar_config, "
            "reload, close, calling it, and the methods "
            f"{', '.join(loaded.methods) if loaded is not None and loaded.methods else '(none)'})"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        """``pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)``, the diffusers way.

        A component is sent to the worker as data (``wire.components``) and replaces the
        worker's; the handle's configs are updated from the worker's answer. Any other
        attribute is refused: nothing is accepted and then ignored.
        """
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        loaded = self.__dict__.get("_loaded")
        if loaded is None or name not in loaded.components:
            from pipewarden.errors import NotAllowedError

            raise NotAllowedError(
                f"cannot set {name!r} on an isolated pipeline (it runs in the worker)",
                rule="worker.object-component",
                fix="set one of its components ("
                + ", ".join(sorted(loaded.components if loaded else ()))
                + "), pass options to the call, or load with isolation=\"inprocess\"",
            )
        from pipewarden.isolation.wire.components import encode_component

        enc = Encoder(allow_generators=False)
        node = encode_component(name, value, enc)
        msg = self._worker.request({"op": "set_component", "name": name, "component": node}, enc.payload(), what=f"setting {name}")
        if not isinstance(msg, _messages.Loaded):
            self._worker.kill()
            raise WorkerError("the worker answered a component change with the wrong message", rule="worker.protocol", fix="reload")
        object.__setattr__(self, "_loaded", msg)
        self.__dict__.setdefault("_swaps", {})[name] = value  # replayed by reload()

    @property
    def methods(self) -> tuple[str, ...]:
        """Public methods of the pipeline callable through this handle besides ``__call__``."""
        return self._loaded.methods

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"worker pid {self._worker.pid}"
        return f"<PipelineHandle {self._loaded.class_name} ({state})>"

    # ---------------------------------------------------------------------------- actions

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._invoke("__call__", *args, **kwargs)

    def _invoke(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        import torch

        callback = kwargs.pop("callback_on_step_end", None)
        if callback is not None:
            if not callable(callback):
                raise TypeError(f"callback_on_step_end must be callable, got {type(callback).__name__}")
            inputs = getattr(callback, "tensor_inputs", None)  # PipelineCallback / MultiPipelineCallbacks
            if inputs is not None and kwargs.get("callback_on_step_end_tensor_inputs") is None:
                kwargs["callback_on_step_end_tensor_inputs"] = list(inputs)
        enc = Encoder(allow_generators=True)
        tree_args = enc.encode(list(args))
        tree_kwargs = enc.encode(kwargs)
        rng = enc.tensor_ref(torch.get_rng_state())
        bars = _HostBars(self._progress_bar_config)
        failed: list[BaseException] = []
        view = PipelineView(self)

        def on_event(event: _messages.WorkerMessage) -> tuple[dict, bytes] | None:
            if isinstance(event, _messages.Progress):
                try:
                    bars.update(event)
                except Exception as exc:  # pipewarden's own drawing of what the worker reported
                    self._worker.kill()
                    raise WorkerError(
                        f"the worker's progress report could not be drawn ({type(exc).__name__}); the worker was stopped",
                        rule="worker.protocol",
                        fix="the worker is broken or compromised; reload the pipeline",
                    ) from None
                return None
            if not isinstance(event, _messages.CallbackRequest) or callback is None or failed:
                return {"op": "callback_abort"}, b""
            try:
                out = callback(view, event.step, event.timestep, dict(event.tensors))
                reply = Encoder(allow_generators=False)
                tree = reply.encode(out)
            except Exception as exc:  # raised here once the worker has unwound the call
                failed.append(exc)
                return {"op": "callback_abort"}, b""
            return {"op": "callback_result", "value": tree}, reply.payload()

        header = {"op": "call", "method": method, "args": tree_args, "kwargs": tree_kwargs, "rng": rng,
                  "pyrng": _rng.capture().to_json(), "callback": callback is not None, "progress": True}
        what = "the pipeline call" if method == "__call__" else f"the pipeline's {method}()"
        try:
            msg = self._worker.request(header, enc.payload(), what=what, on_event=on_event)
        except PipewardenError:
            if failed:
                raise failed[0] from None
            raise
        finally:
            bars.close()
        if failed:  # the pipeline caught our abort and finished anyway: the user's error wins
            raise failed[0]
        if not isinstance(msg, _messages.Result):
            self._worker.kill()
            raise WorkerError("the worker answered a call with the wrong message", rule="worker.protocol", fix="reload")
        if len(msg.generator_states) != len(enc.generators):
            self._worker.kill()
            raise WorkerError("the worker returned the wrong number of generator states", rule="worker.protocol", fix="reload")
        for gen, state in zip(enc.generators, msg.generator_states, strict=True):
            try:
                gen.set_state(state)
            except (RuntimeError, TypeError, ValueError):
                self._worker.kill()
                raise WorkerError("the worker returned an invalid generator state", rule="worker.protocol", fix="reload") from None
        if msg.rng_state is not None:
            try:
                torch.set_rng_state(msg.rng_state)
            except (RuntimeError, TypeError, ValueError):
                self._worker.kill()
                raise WorkerError("the worker returned an invalid RNG state", rule="worker.protocol", fix="reload") from None
        if msg.py_rng is not None:
            try:
                msg.py_rng.apply()
            except (TypeError, ValueError, OverflowError):
                self._worker.kill()
                raise WorkerError("the worker returned an invalid RNG state", rule="worker.protocol", fix="reload") from None
        return msg.value

    def to(self, *args: Any, **kwargs: Any) -> PipelineHandle:
        """Move the pipeline inside the worker (which owns the CUDA context); returns self."""
        enc = Encoder(allow_generators=False)
        msg = self._worker.request(
            {"op": "to", "args": enc.encode(list(args)), "kwargs": enc.encode(kwargs)}, enc.payload(), what="to()"
        )
        if isinstance(msg, _messages.Ack) and msg.detail:
            self._device = msg.detail
        self._to_args = (list(args), dict(kwargs))
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Like ``DiffusionPipeline.set_progress_bar_config``: tqdm options for the denoising bar.

        The pipeline runs in the worker, its bar is drawn here on the host: on a terminal only
        (tqdm's ``disable=None``), never with ``PIPEWARDEN_QUIET`` or
        ``HF_HUB_DISABLE_PROGRESS_BARS`` set; ``disable=True`` turns it off.
        """
        self._progress_bar_config = dict(kwargs)

    def reload(self, limits: Any = None) -> PipelineHandle:
        """Start a fresh worker for this pipeline (e.g. after a limit stopped the old one).

        Reuses the verified source and weight digests of the original load (the new worker
        re-verifies every file), ``limits`` if given (else the original ones) and the last
        ``.to(...)``. Returns self.
        """
        from pipewarden.isolation import _start

        if self._request is None:
            raise WorkerError("this handle cannot be reloaded", rule="worker.closed",
                              fix="load the pipeline again with pipewarden.load_pipeline")
        new_limits = limits if limits is not None else self._limits
        self._worker.close()
        worker, loaded = _start(self._request, new_limits)
        worker.reload_fix = _RELOAD_FIX
        self._worker, self._loaded, self._limits, self._device = worker, loaded, new_limits, "cpu"
        for name, value in dict(self.__dict__.get("_swaps") or {}).items():
            setattr(self, name, value)  # components swapped on this handle, in the same order
        if self._to_args is not None:
            self.to(*self._to_args[0], **self._to_args[1])
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
