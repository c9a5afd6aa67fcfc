"""What sandboxed code holds instead of host objects: module facades, refused-name stubs, class
views and references, the sandbox logger, write proxies and the guarded str.format.

Decides: nothing beyond its own refusals (writing to a facade, calling a ClassRef, ...); the
attribute decisions for these objects are made in :mod:`.attributes`. Trusts: the Sandbox that
created it."""

from __future__ import annotations

import collections
import functools
import logging
import string
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pipewarden.errors import PolicyViolation
from pipewarden.sandbox.runtime._common import _tname, _violation
from pipewarden.sandbox.runtime.names import check_attribute_name, check_attribute_names

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
        if name.startswith("__") and name.endswith("__"):
            # a protocol probe (typing's __typing_subst__ in Optional[X], ...): the stub has none, so
            # the name can still appear in an annotation; any real use is refused
            raise AttributeError(name)
        raise self._refuse()

    def __instancecheck__(self, obj: Any) -> bool:
        raise self._refuse()

    def __subclasscheck__(self, sub: Any) -> bool:
        raise self._refuse()

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        raise self._refuse()

    def __repr__(self) -> str:
        return f"<refused {object.__getattribute__(self, '_pw_qualname')}>"


class SameClassComparisons:
    """Equality and hash by the wrapped class (``_pw_cls``): a view or stand-in equals the class
    itself and any other view or stand-in of it (``x.__class__ == torch.Tensor``)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        cls = object.__getattribute__(self, "_pw_cls")
        if isinstance(other, (ClassView, _ClassStandIn)):
            return cls is object.__getattribute__(other, "_pw_cls")
        return cls is other

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(object.__getattribute__(self, "_pw_cls"))


class ClassView(SameClassComparisons):
    """What ``x.__class__`` gives sandboxed code for a host object: name, repr and comparisons."""

    __slots__ = ("_pw_cls",)

    def __init__(self, cls: type) -> None:
        object.__setattr__(self, "_pw_cls", cls)

    # the names the attribute rules allow on a view (``type(exc).__name__``): str values only
    @property
    def __name__(self) -> str:  # type: ignore[override]
        return str(object.__getattribute__(self, "_pw_cls").__name__)

    def __getattr__(self, name: str) -> Any:
        if name == "__qualname__":  # a class body cannot define it as a property
            return str(object.__getattribute__(self, "_pw_cls").__qualname__)
        raise AttributeError(name)

    @property
    def __module__(self) -> str:  # type: ignore[override]
        return str(object.__getattribute__(self, "_pw_cls").__module__)

    def __repr__(self) -> str:
        return repr(object.__getattribute__(self, "_pw_cls"))

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
    return type(key) is not str or str.startswith(key, "__")


def _is_module_class(cls: Any) -> bool:
    """nn.Module and its subclasses: names given to them land in registries (``_modules``,
    ``_parameters``) or in ``__dict__`` beside the module's private machinery."""
    torch = sys.modules.get("torch")
    nn = getattr(torch, "nn", None) if torch is not None else None
    module = getattr(nn, "Module", None) if nn is not None else None
    return isinstance(cls, type) and module is not None and issubclass(cls, module)


def _private_names_ok(cls: Any) -> bool:
    return not _is_module_class(cls)


#: Values that are data, never (name, value) sources: passed to key-taking constructors as they are.
_OPAQUE_VALUE_TYPES: tuple[type, ...] = (str, bytes, bytearray, int, float, complex, bool, type(None))


def _opaque(value: Any) -> bool:
    if isinstance(value, _OPAQUE_VALUE_TYPES) or _is_module_class(type(value)):
        return True
    mod = type(value).__module__ or ""
    # tensors, arrays, images: an output's first field is data, not a mapping of names
    return mod.split(".")[0] in ("torch", "numpy", "PIL")


def _materialise_keys(where: str, value: Any, private: bool = True) -> Any:
    """The value a key-taking host constructor will really see, with its names checked.

    Mappings (dict subclasses included, whatever their ``keys()`` says) become a plain dict of
    what they actually store; any other iterable (dict views, zip, map, generators, the sandbox's
    own iterables) is read ONCE into a list (tuples stay tuples), so the check and the host read
    the same elements. Names are checked on the materialised value: mapping keys, the first item of
    (name, value) pairs, bare names, whitespace/comma separated name strings.
    """
    if isinstance(value, str):
        _check_names(where, value.replace(",", " ").split(), private)
        return value
    if _opaque(value):
        return value
    if type(value) is collections.OrderedDict:
        value = collections.OrderedDict(value)  # nn.Sequential wants one; exact host type, its own order
    elif isinstance(value, dict):
        value = dict(dict.items(value))
    elif isinstance(value, Mapping):
        value = {k: value[k] for k in list(value.keys())}
    elif type(value) is tuple:
        value = tuple(_materialise_pair(where, e, private) for e in value)
    elif isinstance(value, (list, tuple)) or _iterable(value):
        value = [_materialise_pair(where, e, private) for e in _bounded(value)]
    else:
        return value
    if isinstance(value, dict):
        _check_names(where, list(dict.keys(value)), private)
    else:
        names: list[Any] = []
        for element in value:
            if isinstance(element, (list, tuple)) and element:
                names.append(element[0])
            elif isinstance(element, str):
                names.append(element)
            elif isinstance(element, dict):
                names.extend(element)
        _check_names(where, names, private)
    return value


def _materialise_pair(where: str, element: Any, private: bool = True) -> Any:
    if isinstance(element, dict) or (isinstance(element, Mapping) and not _opaque(element)):
        return _materialise_keys(where, element, private)
    if isinstance(element, (list, tuple)) and type(element) not in (list, tuple):
        return tuple(element)  # a tuple/list subclass could answer [0] differently later
    return element


def _iterable(value: Any) -> bool:
    try:
        iter_method = type(value).__iter__  # type: ignore[attr-defined]
    except AttributeError:
        return False
    return iter_method is not None


def _bounded(value: Any) -> list[Any]:
    out: list[Any] = []
    for element in value:
        out.append(element)
        if len(out) > 100_000:
            raise _violation("an iterable of more than 100000 names", "argument.dunder-key")
    return out


def _check_names(where: str, names: list[Any], private: bool = True) -> None:
    check_attribute_names(where, names, private=private)


def _check_attribute_keys(where: str, *values: Any) -> None:
    """Refuse names that host code would turn into attributes and that are dunders (the values are
    materialised to check them; callers that pass the values on use :func:`_checked_arguments`)."""
    for value in values:
        _materialise_keys(where, value)


def _checked_arguments(
    where: str, args: tuple[Any, ...], kwargs: dict[str, Any], private: bool = True
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Arguments for a key-taking host constructor: materialised and checked (what is checked is
    what the host reads). ``private=False``: names must be public identifiers (nn.Module registries)."""
    for key in kwargs:
        if _bad_key(key):
            raise _violation(f"{where} with keyword {key!r}", "call.dunder-keyword")
        check_attribute_name(where, key, private=private)
    return (
        tuple(_materialise_keys(where, a, private) for a in args),
        {k: _materialise_keys(where, v, private) for k, v in kwargs.items()},
    )


def _no_dunder_keys_stored(where: str, result: Any) -> None:
    """After the host built it: no dunder attribute or key was stored, whatever the route."""
    d = getattr(result, "__dict__", None) if not isinstance(result, type) else None
    keys: list[Any] = list(d) if isinstance(d, dict) else []
    if isinstance(result, dict):
        keys.extend(dict.keys(result))
    data = d.get("data") if isinstance(d, dict) else None
    if isinstance(data, dict):  # UserDict / BatchEncoding forward attribute lookups to .data
        keys.extend(dict.keys(data))
    if isinstance(d, dict) and _is_module_class(type(result)):
        for registry in ("_modules", "_parameters", "_buffers"):  # Module.__getattr__ answers these
            reg = d.get(registry)
            if isinstance(reg, dict):
                keys.extend(dict.keys(reg))
    if isinstance(result, type):
        members = getattr(result, "__members__", None)
        if isinstance(members, Mapping):
            keys.extend(members)
    for key in keys:
        if isinstance(key, str) and key.startswith("__") and key != "__orig_class__":
            raise _violation(f"{where} stored the name {key!r} as an attribute", "argument.dunder-key")


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
        args, kwargs = _checked_arguments(where, args, kwargs, _private_names_ok(cls))
        result = cls(*args, **kwargs)
        _no_dunder_keys_stored(where, result)
        return result

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


class _WriteProxy:
    """``_write_`` result for tensors/arrays: item assignment and a few tensor attributes only."""

    __slots__ = ("_pw_obj", "_pw_check", "_pw_attrs")

    def __init__(self, obj: Any, check: Any, attrs: frozenset[str]) -> None:
        object.__setattr__(self, "_pw_obj", obj)
        object.__setattr__(self, "_pw_check", check)  # ArrayArguments.check: the value becomes array data
        object.__setattr__(self, "_pw_attrs", attrs)  # the policy's [writes] tensor_attributes

    def __setitem__(self, key: Any, value: Any) -> None:
        check = object.__getattribute__(self, "_pw_check")
        check("an item write into an array", key)
        check("an item write into an array", value)
        object.__getattribute__(self, "_pw_obj")[key] = value

    def __delitem__(self, key: Any) -> None:
        del object.__getattribute__(self, "_pw_obj")[key]

    def __setattr__(self, name: str, value: Any) -> None:
        if type(name) is not str or name not in object.__getattribute__(self, "_pw_attrs"):
            raise _violation(f"writing attribute {name!r} of a tensor", "write.tensor-attribute")
        setattr(object.__getattribute__(self, "_pw_obj"), name, value)


class _KeyCheckedWriter:
    """``_write_`` result for the sandbox's own output-dataclass / FrozenDict-like objects, whose
    ``obj[key] = v`` also sets an attribute named ``key``: dunder keys are refused."""

    __slots__ = ("_pw_obj",)

    def __init__(self, obj: Any) -> None:
        object.__setattr__(self, "_pw_obj", obj)

    def __setitem__(self, key: Any, value: Any) -> None:
        obj = object.__getattribute__(self, "_pw_obj")
        if type(key) is not str and not (type(key) is int and _is_module_class(type(obj))):
            raise _violation(f"setting item {key!r} (it would become an attribute)", "argument.dunder-key")
        if type(key) is str:
            check_attribute_name(f"setting item {key!r}", key, private=_private_names_ok(type(obj)))
        obj[key] = value

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



class _TypeBuiltin:
    """The sandbox's ``type``: one argument only (see ``GuardHooks.type_of``); never a class
    builder, a base class or a metaclass. ``isinstance(x, type)`` still answers."""

    __slots__ = ("_pw_box",)

    def __init__(self, box: Any) -> None:
        object.__setattr__(self, "_pw_box", box)

    @staticmethod
    def _refuse(what: str) -> PolicyViolation:
        return _violation(f"{what} (it builds a class around the sandbox's checks)", "builtins.refused",
                          "define the class with a class statement")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) != 1 or kwargs:
            raise self._refuse("type() with three arguments")
        return object.__getattribute__(self, "_pw_box").type_of(args[0])

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        raise self._refuse("a class deriving from type")

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(obj, type)

    def __subclasscheck__(self, sub: Any) -> bool:
        return isinstance(sub, type) and issubclass(sub, type)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _violation("writing to the type builtin", "write.host-class")

    def __repr__(self) -> str:
        return "<class 'type'>"


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


class _FreshModeContext:
    """A host mode context manager (``torch.no_grad``, ``enable_grad``, ``inference_mode``,
    ``autocast``) that may be entered again while it is entered (red team rounds 6 and 7).

    The host classes keep the previous mode on the instance: the same object entered twice
    (``with cm: with cm:``), or torch's ``@autocast`` decorator on a function that recurses (it
    reuses one instance), restores the inner entry's mode on the outer exit and leaves it switched
    for the host. Here every entry, and every call of a decorated function (every step of a
    decorated generator), uses a new host instance built with the same arguments."""

    __slots__ = ("_pw_make", "_pw_entered")

    def __init__(self, make: Callable[[], Any]) -> None:
        self._pw_make = make
        self._pw_entered: list[Any] = []

    def __enter__(self) -> Any:
        cm = self._pw_make()
        result = cm.__enter__()
        self._pw_entered.append(cm)
        return self if result is cm else None  # autocast returns itself; never the host instance

    def __exit__(self, *exc: Any) -> Any:
        if not self._pw_entered:
            raise RuntimeError("exited a mode context that was not entered")
        return self._pw_entered.pop().__exit__(*exc)

    def __call__(self, fn: Any) -> Any:
        from torch.utils._contextlib import context_decorator

        return context_decorator(self._pw_make, fn)  # a new instance per call (per generator step)


class _MetaclassHook:
    """The ``metaclass=__metaclass__`` RestrictedPython puts on every class statement."""

    __slots__ = ("_pw_box",)

    def __init__(self, box: GuardHooks) -> None:
        self._pw_box = box

    def __prepare__(self, name: Any, bases: Any, **kwds: Any) -> Any:  # noqa: PLW3201
        return self._pw_box.prepare_class(name, bases, **kwds)

    def __call__(self, name: Any, bases: Any, ns: Any, **kwds: Any) -> type:
        return self._pw_box.build_class(name, bases, ns, **kwds)


