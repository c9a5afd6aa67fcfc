"""Shared by the runtime modules: the refusal constructor, the type tables the guards consult
and the resolution of dotted class paths named in the policy. Decides nothing itself."""

from __future__ import annotations

import functools
import logging
import operator
import types
from collections.abc import Callable
from typing import Any

from pipewarden.errors import PolicyViolation
from pipewarden.sandbox import tripwire
from pipewarden.sandbox.policy.resolve import resolve_optional_class_path

_LOG = logging.getLogger("pipewarden.sandbox")
_PRINT_LOG = logging.getLogger("pipewarden.sandbox.print")

_MISSING = object()

# Types whose values are never handed to sandboxed code.
_FORBIDDEN_VALUE_TYPES: frozenset[type] = frozenset(
    {
        types.ModuleType,
        types.FrameType,
        types.CodeType,
        types.TracebackType,
        types.CellType,
    }
)
_WRITABLE_CONTAINERS: frozenset[type] = frozenset({list, dict, set, bytearray})
_CLASS_NS_DUNDERS = frozenset(
    {"__module__", "__qualname__", "__classcell__", "__doc__", "__annotations__", "__orig_bases__", "__slots__"}
)
_INPLACE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "<<=": operator.ilshift,
    ">>=": operator.irshift,
    "|=": operator.ior,
    "^=": operator.ixor,
    "&=": operator.iand,
    "//=": operator.ifloordiv,
    "@=": operator.imatmul,
}





def _violation(what: str, rule: str, fix: str = "") -> PolicyViolation:
    return PolicyViolation(what, rule=rule, fix=fix or "see SECURITY.md for what sandboxed pipelines may use")


def _tname(obj: object) -> str:
    t = obj if isinstance(obj, type) else type(obj)
    try:
        return f"{t.__module__}.{t.__qualname__}"
    except Exception:  # pragma: no cover
        return "object"


def _is_type_hint(value: Any) -> bool:
    """typing constructs such as ``PipelineImageInput = Union[PIL.Image.Image, np.ndarray, ...]``."""
    import typing

    return isinstance(value, (types.GenericAlias, types.UnionType)) or type(value).__module__ == "typing" and (
        type(value).__name__ in ("_GenericAlias", "_UnionGenericAlias", "_LiteralGenericAlias", "_CallableGenericAlias")
    ) or value is typing.Any


def _static_lookup(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


def _is_unbound_method(cls: type, name: str) -> bool:
    raw = _static_lookup(cls, name)
    return isinstance(raw, (types.FunctionType, types.MethodDescriptorType, types.WrapperDescriptorType))


def _suspending(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Host functions that legitimately generate code (dataclass, namedtuple)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with tripwire.suspended():
            return fn(*args, **kwargs)

    return call


def _resolve_type_path(path: str) -> type | None:
    """'torch.nn.Module' -> the class; None only when its top-level package is not installed at all.

    A path under an installed package that does not resolve raises PolicyError (fail closed)."""
    return resolve_optional_class_path(path)
