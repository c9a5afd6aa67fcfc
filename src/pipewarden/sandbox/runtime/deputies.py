"""Guarded facades for the Python-level host helpers that reflect on what the sandbox hands them.

A host helper written in Python (``functools.update_wrapper``, ``dataclasses.replace``,
``copy.copy``, ``inspect.signature``, ``collections.namedtuple``, ...) runs with the host's full
powers on objects the sandbox chose: it can copy a host object's ``__dict__`` into a sandbox
object, construct a host class the sandbox may not construct, ``eval`` an annotation string,
honour a ``__reduce_ex__`` recipe, or call back into a sandbox-chosen callable while the tripwire
is suspended. Each such helper the policy exposes is replaced by one of these facades (policy
``replace = { name = "<impl>" }``), which does only the reviewed part of the job. The list of every
Python-level host function the policy exposes, and why each cannot act as a deputy, is generated
from the policy data and checked by ``tests/sandbox/test_deputies.py`` (see SECURITY.md).

Decides: whether one call of such a helper may go ahead, and with which (materialised) arguments.
Trusts: the wrapped host helper once its arguments passed.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipewarden.sandbox import tripwire
from pipewarden.sandbox.runtime._common import _tname, _violation
from pipewarden.sandbox.runtime.objects import (
    _check_attribute_keys,
    _materialise_keys,
    _no_dunder_keys_stored,
)

if TYPE_CHECKING:
    from pipewarden.sandbox.runtime.facades import FacadeResolver

#: Metadata update_wrapper may copy: plain strings only (never ``__dict__``, never annotations).
_WRAPPER_METADATA = ("__module__", "__name__", "__qualname__", "__doc__")
#: Reduction hooks copy/deepcopy honour: they must be host code, never the sandbox's.
_REDUCTION_HOOKS = ("__reduce_ex__", "__reduce__", "__copy__", "__deepcopy__", "__setstate__", "__getstate__")


def _update_wrapper(box: FacadeResolver, where: str) -> Callable[..., Any]:
    def update_wrapper(wrapper: Any, wrapped: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            raise _violation(f"{where} with custom assigned/updated attribute lists", "argument.attribute-list")
        box.require_owned(wrapper, where)
        for name in _WRAPPER_METADATA:
            try:
                value = getattr(wrapped, name)
            except AttributeError:
                continue
            if value is None or type(value) is str:
                try:
                    setattr(wrapper, name, value)
                except (AttributeError, TypeError):
                    pass
        if isinstance(wrapped, types.FunctionType) and wrapped in box._functions:
            # the sandbox's own function: its attributes are the sandbox's (set through the guards)
            for key, value in list(wrapped.__dict__.items()):
                if type(key) is str and not key.startswith("__"):
                    wrapper.__dict__.setdefault(key, value)
        try:
            wrapper.__wrapped__ = wrapped  # inspect.signature follows it; unreadable to the sandbox
        except (AttributeError, TypeError):
            pass
        return wrapper

    return update_wrapper


def _wraps(box: FacadeResolver, where: str) -> Callable[..., Any]:
    update = _update_wrapper(box, where)

    def wraps(wrapped: Any, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        if args or kwargs:
            raise _violation(f"{where} with custom assigned/updated attribute lists", "argument.attribute-list")
        return lambda wrapper: update(wrapper, wrapped)

    return wraps


def _signature(box: FacadeResolver, where: str, target: Any) -> Callable[..., Any]:
    def signature(obj: Any, *, follow_wrapped: bool = True, **kwargs: Any) -> Any:
        if kwargs.get("eval_str") or kwargs.get("globals") is not None or kwargs.get("locals") is not None:
            raise _violation(
                f"{where}(eval_str=True / globals / locals): the host would eval() annotation strings",
                "deputy.eval",
                "call inspect.signature(obj) without eval_str; annotations stay as written",
            )
        return target(obj, follow_wrapped=bool(follow_wrapped))

    return signature


def _construct_check(box: FacadeResolver, cls: type, where: str, values: list[Any]) -> None:
    """What the sandbox would be refused constructing itself, a host helper may not construct for it."""
    if box.owns(cls):
        return
    if box._no_construct(cls):
        raise _violation(f"{where} would construct {_tname(cls)}", "construct.file-reading-class")
    if box._keys_become_attributes(cls):
        _check_attribute_keys(where, *values)


def _dataclasses_replace(box: FacadeResolver, where: str, target: Any) -> Callable[..., Any]:
    import dataclasses

    def replace(obj: Any, /, **changes: Any) -> Any:
        for key in changes:
            if type(key) is not str or key.startswith("_"):
                raise _violation(f"{where} with field name {key!r}", "call.dunder-keyword")
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            raise TypeError("replace() should be called on dataclass instances")
        cls = type(obj)
        current = [getattr(obj, f.name, None) for f in dataclasses.fields(obj) if f.name not in changes]
        changes = {k: _materialise_keys(where, v) for k, v in changes.items()}
        _construct_check(box, cls, where, [*current, *changes.values()])
        result = target(obj, **changes)
        _no_dunder_keys_stored(where, result)
        return result

    return replace


def _dataclasses_export(box: FacadeResolver, where: str, target: Any) -> Callable[..., Any]:
    def export(obj: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise _violation(
                f"{where} with a custom factory (the host would call it on every level)", "deputy.factory"
            )
        _reduction_reviewed(box, obj, where, deep=True)
        return target(obj)

    return export


def _hook_is_sandbox_code(value: Any) -> bool:
    fn = getattr(value, "__func__", value)
    fn = getattr(fn, "__wrapped__", fn)
    code = getattr(fn, "__code__", None)
    return isinstance(code, types.CodeType) and code in tripwire._SANDBOX_CODE


def _reduction_reviewed(box: FacadeResolver, obj: Any, where: str, *, deep: bool) -> None:
    """copy/deepcopy/asdict honour __reduce_ex__/__setstate__/__deepcopy__: only host code may
    answer them (a reduction recipe from the sandbox would run host setattr on any object)."""
    todo = [obj]
    seen: set[int] = set()
    budget = 100_000
    while todo and budget:
        budget -= 1
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        t = type(x)
        d = x.__dict__ if not isinstance(x, type) and isinstance(getattr(x, "__dict__", None), dict) else None
        for name in _REDUCTION_HOOKS:
            if d is not None and name in d:
                raise _violation(f"{where} of an object carrying its own {name}", "deputy.reduction")
            for klass in t.__mro__:
                if name in klass.__dict__:
                    if _hook_is_sandbox_code(klass.__dict__[name]) or not isinstance(
                        klass.__dict__[name], (types.FunctionType, types.BuiltinFunctionType,
                                               types.WrapperDescriptorType, types.MethodDescriptorType,
                                               classmethod, staticmethod, types.MethodWrapperType)
                    ):
                        raise _violation(
                            f"{where} of a {_tname(x)} whose {name} is not host code", "deputy.reduction"
                        )
                    break
        if not deep:
            continue
        if t in (list, tuple, set, frozenset):
            todo.extend(x)
        elif isinstance(x, dict):
            todo.extend(dict.values(x))
            todo.extend(dict.keys(x))
        elif d is not None and (box.owns(x) or _is_dataclass_instance(x)):
            todo.extend(d.values())


def _is_dataclass_instance(x: Any) -> bool:
    return not isinstance(x, type) and hasattr(type(x), "__dataclass_fields__")


def _copy(box: FacadeResolver, where: str, target: Any, *, deep: bool) -> Callable[..., Any]:
    def copy(x: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            raise _violation(f"{where} with a memo dict (it would hold the originals' state)", "argument.memo")
        _reduction_reviewed(box, x, where, deep=deep)
        return target(x)

    return copy


def _namedtuple(box: FacadeResolver, where: str, target: Any) -> Callable[..., Any]:
    def namedtuple(typename: Any, field_names: Any, *, rename: Any = False, defaults: Any = None,
                   module: Any = None) -> Any:
        # Materialised here, armed: the host helper (which runs suspended to generate code) never
        # iterates or calls anything the sandbox supplied.
        if type(typename) is not str:
            raise _violation(f"{where} with a non-str type name", "argument.name-type")
        names = field_names if type(field_names) is str else list(field_names)
        if type(names) is list and any(type(n) is not str for n in names):
            raise _violation(f"{where} with non-str field names", "argument.name-type")
        if module is not None and type(module) is not str:
            raise _violation(f"{where} with a non-str module", "argument.name-type")
        plain_defaults = None if defaults is None else tuple(list(defaults))
        with tripwire.suspended():
            return target(typename, names, rename=bool(rename), defaults=plain_defaults,
                          module=module if module is not None else box.module_name)

    return namedtuple
