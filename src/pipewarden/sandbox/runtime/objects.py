"""What sandboxed code holds instead of host objects: module facades, refused-name stubs, class
views and references, the sandbox logger, write proxies and the guarded str.format.

Decides: nothing beyond its own refusals (writing to a facade, calling a ClassRef, ...); the
attribute decisions for these objects are made in :mod:`.attributes`. Trusts: the Sandbox that
created it."""

from __future__ import annotations

import functools
import logging
import string
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipewarden.errors import PolicyViolation
from pipewarden.sandbox.runtime._common import _tname, _violation

if TYPE_CHECKING:
    from pipewarden.sandbox.runtime.facades import FacadeResolver
    from pipewarden.sandbox.runtime.hooks import GuardHooks

class Facade:
    """What ``import M`` gives sandboxed code: an object exposing M's allowlisted names only."""

    __slots__ = ("_pw_name", "_pw_box")

    def __init__(self, name: str, box: FacadeResolver) -> None:
        object.__setattr__(self, "_pw_name", name)
        object.__setattr__(self, "_pw_box", box)

    def __getattr__(self, name: str) -> Any:  # IMPORT_FROM (``from torch import nn``) lands here
        box: FacadeResolver = object.__getattribute__(self, "_pw_box")
        return box.facade_attr(self, name, for_import=True)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _violation(f"writing {name!r} on the sandbox facade of a module", "write.facade")

    def __delattr__(self, name: str) -> None:
        raise _violation(f"deleting {name!r} on the sandbox facade of a module", "write.facade")

    def __repr__(self) -> str:
        return f"<pipewarden facade of {object.__getattribute__(self, '_pw_name')}>"


class DeniedName:
    """Bound by ``from M import name`` for an existing but unlisted name: refuses when used."""

    __slots__ = ("_pw_qualname", "_pw_rule")

    def __init__(self, qualname: str, rule: str = "facade.not-allowlisted") -> None:
        object.__setattr__(self, "_pw_qualname", qualname)
        object.__setattr__(self, "_pw_rule", rule)

    def _refuse(self) -> PolicyViolation:
        q = object.__getattribute__(self, "_pw_qualname")
        rule = object.__getattribute__(self, "_pw_rule")
        return _violation(f"{q} is not available in the sandbox", rule, "pipelines may not use " + q)

    def __setattr__(self, name: str, value: Any) -> None:
        raise self._refuse()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse()

    def __getattr__(self, name: str) -> Any:
        raise self._refuse()

    def __repr__(self) -> str:
        return f"<refused {object.__getattribute__(self, '_pw_qualname')}>"


class ClassView:
    """What ``x.__class__`` gives sandboxed code for a host object: name, repr and comparisons."""

    __slots__ = ("_pw_cls",)

    def __init__(self, cls: type) -> None:
        object.__setattr__(self, "_pw_cls", cls)

    def __repr__(self) -> str:
        return repr(object.__getattribute__(self, "_pw_cls"))

    def __eq__(self, other: object) -> bool:
        cls = object.__getattribute__(self, "_pw_cls")
        if isinstance(other, ClassView):
            return cls is object.__getattribute__(other, "_pw_cls")
        return cls is other

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(object.__getattribute__(self, "_pw_cls"))

    def __setattr__(self, name: str, value: Any) -> None:
        raise _violation("writing to a class view", "write.host-object")


class _ClassStandIn:
    """What a class reference handed to sandboxed code shares: isinstance/issubclass, ``X | Y``
    annotations and repr work; writing to it is refused."""

    __slots__ = ()

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(obj, object.__getattribute__(self, "_pw_cls"))

    def __subclasscheck__(self, sub: Any) -> bool:
        return isinstance(sub, type) and issubclass(sub, object.__getattribute__(self, "_pw_cls"))

    def __or__(self, other: Any) -> Any:
        import typing

        return typing.Union[self, other]  # noqa: UP007

    def __ror__(self, other: Any) -> Any:
        import typing

        return typing.Union[other, self]  # noqa: UP007

    def __repr__(self) -> str:
        return repr(object.__getattribute__(self, "_pw_cls"))

    def __setattr__(self, name: str, value: Any) -> None:
        raise _violation("writing to a class reference", "write.host-class")


class ClassRef(_ClassStandIn):
    """A class the sandbox may name (annotations, isinstance) but never construct or subclass."""

    __slots__ = ("_pw_cls",)

    def __init__(self, cls: type) -> None:
        object.__setattr__(self, "_pw_cls", cls)

    def _refuse(self) -> PolicyViolation:
        cls = object.__getattribute__(self, "_pw_cls")
        return _violation(
            f"constructing or subclassing {_tname(cls)} in the sandbox (its constructor reads files by path)",
            "construct.file-reading-class",
            "pass the component to the pipeline ready-made",
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse()

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        raise self._refuse()



def _bad_key(key: Any) -> bool:
    return type(key) is not str or key.startswith("__")


def _check_attribute_keys(where: str, *values: Any) -> None:
    """Refuse mapping keys / names that host code would turn into attributes and that are dunders.

    Looks at mappings, (name, value) pairs and whitespace/comma separated name strings, one level
    down into lists and tuples (how FrozenDict, BaseOutput, BatchEncoding and the Enum functional API
    take their names).
    """
    for value in values:
        items: list[Any] = []
        if isinstance(value, Mapping):
            items = list(value.keys())
        elif isinstance(value, str):
            items = value.replace(",", " ").split()
        elif isinstance(value, (list, tuple)):
            for element in value[:100_000]:
                if isinstance(element, (list, tuple)) and element:
                    items.append(element[0])
                elif isinstance(element, str):
                    items.append(element)
                elif isinstance(element, Mapping):
                    items.extend(element.keys())
        for key in items:
            if isinstance(key, str) and key.startswith("__"):
                raise _violation(
                    f"{where} with the name {key!r} (it would become an attribute that host protocols read)",
                    "argument.dunder-key",
                )


class KeyCheckedClass(_ClassStandIn):
    """A class whose constructor turns mapping keys into attributes (FrozenDict, output dataclasses,
    BatchEncoding, Enum's functional API): constructing checks the keys; subclassing, isinstance and
    annotations work as with the class itself."""

    __slots__ = ("_pw_cls", "_pw_subclassable")

    def __init__(self, cls: type, subclassable: bool = True) -> None:
        object.__setattr__(self, "_pw_cls", cls)
        object.__setattr__(self, "_pw_subclassable", subclassable)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        cls = object.__getattribute__(self, "_pw_cls")
        where = _tname(cls)
        _check_attribute_keys(where, *args, *kwargs.values())
        for key in kwargs:
            if _bad_key(key):
                raise _violation(f"{where} with keyword {key!r}", "call.dunder-keyword")
        return cls(*args, **kwargs)

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        cls = object.__getattribute__(self, "_pw_cls")
        if not object.__getattribute__(self, "_pw_subclassable"):
            raise _violation(
                f"subclassing {_tname(cls)} (it forwards or copies keys into attributes)", "class.bases"
            )
        return (cls,)



class SandboxLogger:
    """The logger sandboxed code gets: formats with ``%`` itself and hands the host a plain string."""

    __slots__ = ("_pw_logger",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_pw_logger", logging.getLogger(f"pipewarden.sandboxed.{name}"))

    def _emit(self, level: int, msg: Any, args: tuple[Any, ...]) -> None:
        real: logging.Logger = object.__getattribute__(self, "_pw_logger")
        if not real.isEnabledFor(level):
            return
        text = str(msg)
        if args:
            try:
                text = text % args
            except Exception:  # noqa: BLE001 - a bad format must not break the pipeline
                text = f"{text} {args!r}"
        real.log(level, "%s", text)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(logging.DEBUG, msg, args)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(logging.INFO, msg, args)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(logging.WARNING, msg, args)

    warn = warning

    def warning_once(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(logging.WARNING, msg, args)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(logging.ERROR, msg, args)

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(logging.ERROR, msg, args)

    def critical(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._emit(logging.CRITICAL, msg, args)

    def setLevel(self, level: Any) -> None:  # noqa: N802 - logging's spelling
        return None

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802
        real: logging.Logger = object.__getattribute__(self, "_pw_logger")
        return bool(real.isEnabledFor(int(level)))


_LOGGER_METHODS = frozenset(
    {"debug", "info", "warning", "warn", "warning_once", "error", "exception", "critical", "setLevel", "isEnabledFor"}
)


class _WriteProxy:
    """``_write_`` result for tensors/arrays: item assignment and a few tensor attributes only."""

    __slots__ = ("_pw_obj",)
    _ATTRS = frozenset({"requires_grad", "grad", "data"})

    def __init__(self, obj: Any) -> None:
        object.__setattr__(self, "_pw_obj", obj)

    def __setitem__(self, key: Any, value: Any) -> None:
        object.__getattribute__(self, "_pw_obj")[key] = value

    def __delitem__(self, key: Any) -> None:
        del object.__getattribute__(self, "_pw_obj")[key]

    def __setattr__(self, name: str, value: Any) -> None:
        if type(name) is not str or name not in _WriteProxy._ATTRS:
            raise _violation(f"writing attribute {name!r} of a tensor", "write.tensor-attribute")
        setattr(object.__getattribute__(self, "_pw_obj"), name, value)


class _KeyCheckedWriter:
    """``_write_`` result for the sandbox's own output-dataclass / FrozenDict-like objects, whose
    ``obj[key] = v`` also sets an attribute named ``key``: dunder keys are refused."""

    __slots__ = ("_pw_obj",)

    def __init__(self, obj: Any) -> None:
        object.__setattr__(self, "_pw_obj", obj)

    def __setitem__(self, key: Any, value: Any) -> None:
        if _bad_key(key):
            raise _violation(f"setting item {key!r} (it would become an attribute)", "argument.dunder-key")
        object.__getattribute__(self, "_pw_obj")[key] = value

    def __delitem__(self, key: Any) -> None:
        del object.__getattribute__(self, "_pw_obj")[key]

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_pw_obj"), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(object.__getattribute__(self, "_pw_obj"), name)


class _SafeFormatter(string.Formatter):
    """str.format whose field lookups ("{0.attr[key]}") go through the sandbox guards."""

    def __init__(self, box: GuardHooks) -> None:
        super().__init__()
        self._box = box

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        import _string  # the parser str.format uses

        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            if is_attr:
                obj = self._box.guarded_getattr(obj, key)
            else:
                obj = self._box.guarded_getitem(obj, key)
        return obj, first



class _GradMode:
    """``torch.set_grad_enabled`` without the side effect of the call form: the mode changes only
    inside ``with`` (or around a decorated function), so host grad mode is restored afterwards."""

    def __init__(self, mode: Any) -> None:
        self._mode = bool(mode)
        self._prev: list[bool] = []

    def __enter__(self) -> None:
        import torch

        self._prev.append(torch.is_grad_enabled())
        torch._C._set_grad_enabled(self._mode)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch._C._set_grad_enabled(self._prev.pop())

    def __call__(self, fn: Any) -> Any:
        mode = self._mode

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with _GradMode(mode):
                return fn(*args, **kwargs)

        return run


class _MetaclassHook:
    """The ``metaclass=__metaclass__`` RestrictedPython puts on every class statement."""

    __slots__ = ("_pw_box",)

    def __init__(self, box: GuardHooks) -> None:
        self._pw_box = box

    def __prepare__(self, name: Any, bases: Any, **kwds: Any) -> Any:  # noqa: PLW3201
        return self._pw_box.prepare_class(name, bases, **kwds)

    def __call__(self, name: Any, bases: Any, ns: Any, **kwds: Any) -> type:
        return self._pw_box.build_class(name, bases, ns, **kwds)


