"""Worker -> host messages, parsed at one boundary into frozen typed objects.

Decides the message kinds the host accepts and validates every field; trusts nothing in a
frame. Anything unexpected raises ``WorkerError`` (the host then stops the worker).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pipewarden.errors import WorkerError
from pipewarden.isolation.layers.apply import LAYER_NAMES, LayerStatus
from pipewarden.isolation.wire.codec import Decoder, load_tensors
from pipewarden.isolation.wire.framing import Frame
from pipewarden.rules import is_registered

_MAX_TEXT = 4000


def _bad(what: str) -> WorkerError:
    return WorkerError(
        f"the worker sent a malformed message: {what}",
        rule="wire.malformed-message",
        fix="the worker is broken or compromised; it was stopped",
    )


def _text(value: object, field: str, *, limit: int = _MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise _bad(f"{field} is not a string")
    return value[:limit]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_tensor(value: object) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def freeze(value: Any) -> Any:
    """JSON -> read-only: dicts become ``FrozenConfig``, lists tuples."""
    if isinstance(value, dict):
        return FrozenConfig({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


class FrozenConfig(dict):
    """A read-only config mapping with attribute access (like diffusers' FrozenDict).

    A ``dict`` (as diffusers' ``FrozenDict`` is), so ``DDIMScheduler.from_config(handle.scheduler.config)``
    accepts it; every mutating method raises.
    """

    __slots__ = ()

    def __init__(self, data: Mapping[str, Any]) -> None:
        super().__init__(data)

    def __getattr__(self, name: str) -> Any:
        # Worker-chosen keys never become protocol attributes (e.g. "__array_interface__",
        # which numpy would use to read raw host memory): underscore names stay item-only.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the config of an isolated pipeline is read-only")

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("the config of an isolated pipeline is read-only")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _read_only  # type: ignore[assignment]

    def copy(self) -> dict[str, Any]:  # type: ignore[override]
        return dict(self)

    def __repr__(self) -> str:
        return f"FrozenConfig({dict(self)!r})"


@dataclass(frozen=True)
class Ready:
    pid: int
    layers: tuple[LayerStatus, ...]


@dataclass(frozen=True)
class Loaded:
    class_name: str
    config: FrozenConfig
    components: Mapping[str, FrozenConfig | None]
    component_types: Mapping[str, str]


@dataclass(frozen=True)
class Result:
    value: Any
    generator_states: tuple[Any, ...]
    rng_state: Any = None  # the worker's global CPU RNG state after the call (a uint8 tensor)


@dataclass(frozen=True)
class Ack:
    detail: str


@dataclass(frozen=True)
class Failure:
    error_class: str
    what: str
    rule: str
    fix: str


@dataclass(frozen=True)
class CallbackRequest:
    """Mid-call: the pipeline called ``callback_on_step_end``; the host runs the real one."""

    step: int
    timestep: Any  # a tensor, int or float, as the pipeline passed it
    tensors: Mapping[str, Any]  # the names in callback_on_step_end_tensor_inputs -> values


@dataclass(frozen=True)
class Progress:
    """Mid-call: a progress bar of the pipeline moved (the host draws it)."""

    bar: int
    n: int
    total: int | None
    closed: bool


WorkerMessage = Ready | Loaded | Result | Ack | Failure | CallbackRequest | Progress
_MAX_BARS = 1024


def parse(frame: Frame) -> WorkerMessage:
    h = frame.header
    kind = h.get("kind")
    if kind == "error":
        name = _text(h.get("error"), "error", limit=64)
        if not name.isidentifier():
            raise _bad("error class is not a name")
        rule = _text(h.get("rule", ""), "rule", limit=128)
        if not is_registered(rule):
            raise _bad("error rule is not a registered rule id")
        return Failure(name, _text(h.get("what"), "what"), rule, _text(h.get("fix", ""), "fix"))
    if kind == "ready":
        pid = h.get("pid")
        layers = h.get("layers")
        if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(layers, list) or len(layers) > 64:
            raise _bad("ready")
        parsed = []
        for item in layers:
            if not isinstance(item, dict) or item.get("name") not in LAYER_NAMES or not isinstance(item.get("active"), bool):
                raise _bad("layer status")
            parsed.append(LayerStatus(str(item["name"]), bool(item["active"]), _text(item.get("detail", ""), "detail", limit=300)))
        return Ready(pid, tuple(parsed))
    if kind == "loaded":
        cfg = h.get("config")
        comps = h.get("components")
        types = h.get("types")
        if not isinstance(cfg, dict) or not isinstance(comps, dict) or not isinstance(types, dict):
            raise _bad("loaded")
        components: dict[str, FrozenConfig | None] = {}
        for name, value in comps.items():
            if not str(name).isidentifier() or not (value is None or isinstance(value, dict)):
                raise _bad("component config")
            components[name] = None if value is None else freeze(value)
        return Loaded(
            _text(h.get("class_name"), "class_name", limit=128),
            freeze(cfg),
            MappingProxyType(components),
            MappingProxyType({str(k): _text(v, "type", limit=128) for k, v in types.items()}),
        )
    if kind == "result":
        if "value" not in h:
            raise _bad("result without value")
        tensors = load_tensors(frame.payload)
        dec = Decoder(tensors, allow_generators=False)
        value = dec.decode(h["value"])
        states = h.get("generators", [])
        if not isinstance(states, list) or len(states) > 64:
            raise _bad("generator states")
        gen_states = tuple(dec.decode({"__pw__": "tensor", "ref": ref}) for ref in states)
        rng = h.get("rng")
        rng_state = None if rng is None else dec.decode({"__pw__": "tensor", "ref": rng})
        return Result(value, gen_states, rng_state)
    if kind == "ok":
        return Ack(_text(h.get("detail", ""), "detail"))
    if kind == "callback":
        step = h.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise _bad("callback step")
        dec = Decoder(load_tensors(frame.payload), allow_generators=False)
        timestep = dec.decode(h.get("timestep"))
        if not (_is_int(timestep) or isinstance(timestep, float) or _is_tensor(timestep)):
            raise _bad("callback timestep")
        tensors = dec.decode(h.get("tensors"))
        if not isinstance(tensors, dict):
            raise _bad("callback tensors")
        return CallbackRequest(step, timestep, MappingProxyType(tensors))
    if kind == "progress":
        bar, n, total = h.get("bar"), h.get("n"), h.get("total")
        if not (isinstance(bar, int) and _is_int(bar) and 0 <= bar < _MAX_BARS and isinstance(n, int) and _is_int(n) and n >= 0):
            raise _bad("progress")
        if total is not None and not (isinstance(total, int) and _is_int(total) and total >= 0):
            raise _bad("progress total")
        return Progress(bar, n, total, h.get("closed") is True)
    raise _bad(f"unknown kind {str(kind)[:40]!r}")
