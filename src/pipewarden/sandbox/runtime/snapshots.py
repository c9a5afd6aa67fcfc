"""Read-only snapshots of host state (configs, lists, dicts held by host objects): what the
sandbox gets instead of the host's own container, so writes cannot reach the host.

Decides: which containers are copied; trusts nothing the sandbox hands it."""

from __future__ import annotations

import collections
import copy
import weakref
from typing import Any

from pipewarden.sandbox.runtime._common import _WRITABLE_CONTAINERS, _resolve_type_path, _violation

_CONTAINER_TYPES: frozenset[type] = frozenset({list, dict, set, bytearray, tuple})
#: Host mappings handed to the sandbox as read-only snapshots (configs are FrozenDicts).
_SNAPSHOT_MAPPINGS: frozenset[type] = frozenset({dict, collections.OrderedDict, collections.defaultdict})
_PLAIN_SCALARS = (str, bytes, int, float, bool, complex, type(None))


def t_value_is_container(value: Any) -> bool:
    return type(value) in _WRITABLE_CONTAINERS


def _refuse_host_mutation(*_args: Any, **_kwargs: Any) -> Any:
    raise _violation(
        "modifying a list/dict/set that belongs to a host object or class",
        "write.host-state",
        "copy it first (list(x), dict(x)) and change the copy",
    )


def _readonly_type(base: type, mutators: tuple[str, ...], slots: tuple[str, ...] = (), name: str = "") -> type:
    ns: dict[str, Any] = {name: _refuse_host_mutation for name in mutators}
    ns["__reduce_ex__"] = lambda self, protocol: (base, (base(self),))
    ns["__copy__"] = lambda self: base(self)
    ns["__deepcopy__"] = lambda self, memo: copy.deepcopy(base(self), memo)
    ns["__slots__"] = slots
    return type(name or f"HostOwned{base.__name__.capitalize()}", (base,), ns)


#: Read-only snapshots of host containers: reading works as usual, any mutation is a PolicyViolation.
_HostList = _readonly_type(
    list, ("append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse", "__setitem__",
           "__delitem__", "__iadd__", "__imul__")
)
_DICT_MUTATORS = ("update", "pop", "popitem", "clear", "setdefault", "__setitem__", "__delitem__", "__ior__")
_HostDict = _readonly_type(dict, _DICT_MUTATORS)


def _host_dict_getattr(self: Any, name: str) -> Any:
    # configs are read as attributes (``self.unet.config.sample_size``)
    if not name.startswith("_"):
        try:
            return self[name]
        except KeyError:
            pass
    raise AttributeError(name)


_HostDict.__getattr__ = _host_dict_getattr  # type: ignore[attr-defined]


#: Read-only snapshot of a diffusers config (``FrozenDict``). diffusers keeps a config's values
#: twice, as items and as attributes, and ``config.x = v`` changes only the attribute: the snapshot
#: keeps the attributes that differ from the items (``_pw_attrs``) so that attribute reads answer
#: what they answer on the real config, and a weak reference to the real config (``_pw_source``;
#: underscore names are never readable by sandboxed code) so that a write to a config this
#: pipeline owns reaches it (:mod:`pipewarden.sandbox.runtime.ownwrites`).
_HostConfig = _readonly_type(dict, _DICT_MUTATORS, slots=("_pw_attrs", "_pw_source"), name="HostOwnedConfig")


def _host_config_getattr(self: Any, name: str) -> Any:
    if not name.startswith("_"):
        attrs = object.__getattribute__(self, "_pw_attrs")
        if name in attrs:
            return attrs[name]
    return _host_dict_getattr(self, name)


_HostConfig.__getattr__ = _host_config_getattr  # type: ignore[attr-defined]
_HostSet = _readonly_type(
    set, ("add", "discard", "remove", "pop", "clear", "update", "difference_update", "intersection_update",
          "symmetric_difference_update", "__ior__", "__iand__", "__isub__", "__ixor__")
)
_READONLY: dict[type, type] = {list: _HostList, dict: _HostDict, set: _HostSet}
_READONLY_TYPES = frozenset((*_READONLY.values(), _HostConfig))


def absent_on_snapshot(obj: Any, name: str) -> bool:
    """``getattr(scheduler.config, "steps_offset", 1)`` on a read-only snapshot of a host dict or
    config: a public name that is not one of its keys, not an attribute the real config had
    (``_pw_attrs``) and not defined by the snapshot's class (dict methods keep their per-type
    rules) reads as missing (AttributeError), as on diffusers' FrozenDict in plain Python. Only the
    absence is answered, which ``name in obj`` answers anyway; nothing is read from the snapshot."""
    t = type(obj)
    if t not in _READONLY_TYPES or not issubclass(t, dict) or type(name) is not str or name.startswith("_"):
        return False
    if dict.__contains__(obj, name):
        return False
    if t is _HostConfig and name in object.__getattribute__(obj, "_pw_attrs"):
        return False
    return not any(name in klass.__dict__ for klass in t.__mro__)


def _private_copy(value: Any, depth: int = 0) -> Any:
    """A read-only snapshot of host state: lists/dicts/sets (nested ones too) become read-only
    copies, tuples are rebuilt around them; other objects (tensors, ...) are shared, not copied."""
    t = type(value)
    if depth > 32:
        raise _violation("a host container nested more than 32 levels deep", "value.nesting")
    if t is tuple:
        return tuple(_private_copy(v, depth + 1) if type(v) in _CONTAINER_TYPES else v for v in value)
    if t is bytearray:
        return bytes(value)
    if t in _SNAPSHOT_MAPPINGS:
        return _HostDict(
            {k: _private_copy(v, depth + 1) if _is_snapshot_type(v) else v for k, v in value.items()}
        )
    if _is_frozen_config(value):
        snap = _HostConfig(
            {k: _private_copy(v, depth + 1) if _is_snapshot_type(v) else v for k, v in value.items()}
        )
        attrs: dict[str, Any] = {}
        own = getattr(value, "__dict__", None)
        if isinstance(own, dict):
            for k, v in own.items():
                if type(k) is str and not k.startswith("_") and (k not in value or value[k] is not v):
                    attrs[k] = _private_copy(v, depth + 1) if _is_snapshot_type(v) else v
        object.__setattr__(snap, "_pw_attrs", attrs)
        object.__setattr__(snap, "_pw_source", weakref.ref(value))
        return snap
    ro = _READONLY.get(t)
    if ro is None:
        return value
    return ro(_private_copy(v, depth + 1) if _is_snapshot_type(v) else v for v in value)


def _is_frozen_config(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    frozen = _resolve_type_path("diffusers.configuration_utils.FrozenDict")
    return frozen is not None and isinstance(value, frozen)


def _is_snapshot_type(value: Any) -> bool:
    t = type(value)
    return t in _CONTAINER_TYPES or t in _SNAPSHOT_MAPPINGS or _is_frozen_config(value)


