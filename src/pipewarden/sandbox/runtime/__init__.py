"""Run-time side of the sandbox: facades, guard hooks, reviewed builtins, class creation.

Decides, for sandboxed code: what an import returns (a facade, never a module), which attribute of
which object may be read (per-type allowlists + the global deny list), which object may be written
(the sandbox's own objects only), and how classes and functions the sandbox defines are created
(every function runs with the tripwire armed).

Trusts: the policy, the host libraries named in it (torch, diffusers, ...), and nothing the sandboxed
code hands it: names are checked with ``type(name) is str`` and every refusal is a fresh
``PolicyViolation`` that carries strings only.
"""

from __future__ import annotations

import builtins as _builtins
import collections
import copy
import enum
import functools
import importlib
import importlib.util
import inspect
import logging
import operator
import string
import types
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence

from pipewarden.errors import PolicyViolation
from pipewarden.sandbox import tripwire
from pipewarden.sandbox.policy import ModuleRule, SandboxPolicy, TypeRule

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
# Plain value types: their public methods are pure. str.format/format_map are replaced.
_VALUE_TYPES: frozenset[type] = frozenset(
    {
        str, bytes, int, float, bool, complex, list, tuple, dict, set, frozenset, range, slice, type(None),
        bytearray, types.MappingProxyType,  # read-only views (inspect.Signature.parameters)
    }
)
_WRITABLE_CONTAINERS: frozenset[type] = frozenset({list, dict, set, bytearray})
# Dunder attribute reads admitted at run time (compile time admits only the policy's idioms).
_STR_DUNDERS = frozenset({"__name__", "__qualname__", "__doc__", "__version__", "__module__"})
_CALL_DUNDERS = frozenset({"__init__", "__call__", "__post_init__"})
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


#: Host classes whose __getattr__ only looks up the object's own data (submodules, config values).
_REVIEWED_GETATTR = frozenset(
    {"torch.nn.modules.module.Module", "diffusers.configuration_utils.ConfigMixin"}
)

_DENIED = object()
_DYN_OWNED = object()
_DYN_HOST = object()


def _violation(what: str, rule: str, fix: str = "") -> PolicyViolation:
    return PolicyViolation(what, rule=rule, fix=fix or "see SECURITY.md for what sandboxed pipelines may use")


def _tname(obj: object) -> str:
    t = obj if isinstance(obj, type) else type(obj)
    try:
        return f"{t.__module__}.{t.__qualname__}"
    except Exception:  # pragma: no cover
        return "object"


class Facade:
    """What ``import M`` gives sandboxed code: an object exposing M's allowlisted names only."""

    __slots__ = ("_pw_name", "_pw_box")

    def __init__(self, name: str, box: Sandbox) -> None:
        object.__setattr__(self, "_pw_name", name)
        object.__setattr__(self, "_pw_box", box)

    def __getattr__(self, name: str) -> Any:  # IMPORT_FROM (``from torch import nn``) lands here
        box: Sandbox = object.__getattribute__(self, "_pw_box")
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

    def __init__(self, box: Sandbox) -> None:
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


class Sandbox:
    """One sandboxed module: its facades, guard hooks and the classes/functions it created."""

    def __init__(self, policy: SandboxPolicy, module_name: str) -> None:
        self.policy = policy
        self.module_name = module_name
        self._facades: dict[str, Facade] = {}
        self._real_modules: dict[str, types.ModuleType] = {}
        self._facade_cache: dict[tuple[str, str, bool], Any] = {}
        self._decisions: dict[tuple[type, str], Any] = {}
        self._rules_for_type: dict[type, tuple[TypeRule, ...]] = {}
        self._resolved_rules: list[tuple[type, TypeRule]] | None = None
        self._classes: weakref.WeakSet[type] = weakref.WeakSet()
        self._owned_type_cache: dict[type, bool] = {}
        self._functions: weakref.WeakSet[Any] = weakref.WeakSet()
        self._variable_functions: frozenset[str] | None = None
        self._no_construct_types: tuple[type, ...] | None = None
        self._attribute_key_types: tuple[type, ...] | None = None
        self._snapshot_cache: dict[int, tuple[Any, Any]] = {}
        self._formatter = _SafeFormatter(self)
        self._deny = policy.deny
        self._builtin_module = _builtins

    # ------------------------------------------------------------------ ownership

    def owns_type(self, t: type) -> bool:
        hit = self._owned_type_cache.get(t)
        if hit is None:
            hit = any(c in self._classes for c in t.__mro__)
            self._owned_type_cache[t] = hit
        return hit

    def owns(self, obj: object) -> bool:
        if isinstance(obj, type):
            return obj in self._classes
        return self.owns_type(type(obj))

    # ------------------------------------------------------------------ modules & facades

    def _import_real(self, name: str) -> types.ModuleType:
        mod = self._real_modules.get(name)
        if mod is None:
            with tripwire.suspended():
                mod = importlib.import_module(name)
            self._real_modules[name] = mod
        return mod

    def facade(self, policy_name: str, real: types.ModuleType | None = None) -> Facade:
        f = self._facades.get(policy_name)
        if f is None:
            if real is not None:
                self._real_modules[policy_name] = real
            f = Facade(policy_name, self)
            self._facades[policy_name] = f
        return f

    def _installed(self, top: str) -> bool:
        with tripwire.suspended():
            try:
                return importlib.util.find_spec(top) is not None
            except (ImportError, ValueError):
                return False

    def guarded_import(
        self, name: Any, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        if type(name) is not str or not name:
            raise _violation("an import with a non-string module name", "import.name-type")
        if level:
            raise ImportError(f"relative import of {name!r} is not available in the sandbox")
        canonical = self.policy.canonical_module(name)
        parts = canonical.split(".")
        if canonical != "__future__" and any(not p.isidentifier() or p.startswith("_") for p in parts):
            raise _violation(f"import of {name!r}", "import.private-module", "private modules cannot be imported")
        rule = self.policy.module_rule(canonical)
        if rule is None:
            top = parts[0]
            if not self._installed(top):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            raise _violation(
                f"import of {name!r} is not allowed in the sandbox",
                "import.not-allowlisted",
                "the sandbox policy lists the importable modules; an organisation allowlist can add one",
            )
        # Import the real module (trusted host libraries), then hand back facades.
        try:
            real = self._import_real(canonical)
        except ModuleNotFoundError:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name) from None
        except ImportError as exc:
            raise ImportError(f"cannot import {name!r}: {type(exc).__name__}") from None
        facade = self.facade(canonical, real)
        if fromlist:
            return facade
        # ``import a.b.c`` binds ``a``: make sure every level is allowed and hand back the top facade.
        top_name = parts[0]
        for cut in range(1, len(parts)):
            sub = ".".join(parts[:cut])
            if self.policy.module_rule(sub) is None:
                raise _violation(f"import of {sub!r} is not allowed", "import.not-allowlisted")
        return self.facade(top_name, self._import_real(top_name))

    def _vf_names(self) -> frozenset[str]:
        if self._variable_functions is None:
            import torch

            self._variable_functions = frozenset(
                n for n in dir(torch._C._VariableFunctions) if not n.startswith("_")
            )
        return self._variable_functions

    def _is_plain_constant(self, value: Any, rule: ModuleRule, depth: int = 0) -> bool:
        if depth > 4:
            return False
        t = type(value)
        if t in (str, bytes, int, float, bool, complex, type(None)):
            return True
        if isinstance(value, enum.Enum):
            return True
        if t in (tuple, list, set, frozenset):
            return len(value) <= 1000 and all(self._is_plain_constant(v, rule, depth + 1) for v in value)
        if t is dict:
            return len(value) <= 1000 and all(
                self._is_plain_constant(k, rule, depth + 1) and self._is_plain_constant(v, rule, depth + 1)
                for k, v in value.items()
            )
        if isinstance(value, type):
            return self._is_allowed_class(value, rule, in_constant=True)
        return False

    def _no_construct(self, cls: type) -> bool:
        bases = self._no_construct_types
        if bases is None:
            bases = tuple(
                t for t in (_resolve_type_path(p) for p in self.policy.no_construct_bases) if t is not None
            )
            self._no_construct_types = bases
        try:
            return bool(bases) and issubclass(cls, bases)
        except TypeError:
            return False

    def _key_class_subclassable(self, cls: type) -> bool:
        allowed = tuple(
            t for t in (_resolve_type_path(p) for p in self.policy.attribute_key_subclassable) if t is not None
        )
        forwarding = tuple(
            t
            for t in (_resolve_type_path(p) for p in self.policy.attribute_key_bases)
            if t is not None and t not in allowed
        )
        return bool(allowed) and issubclass(cls, allowed) and not issubclass(cls, forwarding)

    def _keys_become_attributes(self, cls: type) -> bool:
        bases = self._attribute_key_types
        if bases is None:
            bases = tuple(
                t for t in (_resolve_type_path(p) for p in self.policy.attribute_key_bases) if t is not None
            )
            self._attribute_key_types = bases
        try:
            return bool(bases) and issubclass(cls, bases)
        except TypeError:
            return False

    def _is_allowed_class(self, value: type, rule: ModuleRule, *, in_constant: bool = False) -> bool:
        if issubclass(value, type):  # metaclasses (type, ABCMeta, DummyObject, ...)
            return False
        if in_constant and self._no_construct(value):
            return False
        mod = getattr(value, "__module__", "") or ""
        if not isinstance(mod, str):
            return False
        name = getattr(value, "__name__", "")
        if not isinstance(name, str) or name.startswith("_"):
            return False
        return any(mod == p or mod.startswith(p + ".") for p in rule.classes_from)

    def facade_attr(self, facade: Facade, name: Any, *, for_import: bool = False) -> Any:
        if type(name) is not str:
            raise _violation("attribute lookup with a non-string name", "attribute.name-type")
        mod_name: str = object.__getattribute__(facade, "_pw_name")
        key = (mod_name, name, for_import)
        hit = self._facade_cache.get(key, _MISSING)
        if hit is _MISSING:
            hit = self._resolve_facade_attr(mod_name, name, for_import)
            self._facade_cache[key] = hit
        if type(hit) in _CONTAINER_TYPES:
            return _private_copy(hit)  # module constants are shared host state: hand out a copy
        return hit

    def _refuse_facade(self, mod_name: str, name: str, for_import: bool, rule: ModuleRule) -> Any:
        if for_import and rule.stub_denied and not name.startswith("_"):
            return DeniedName(f"{mod_name}.{name}")
        raise _violation(
            f"{mod_name}.{name} is not available in the sandbox",
            "facade.not-allowlisted",
            f"the sandbox's {mod_name} exposes only the names its policy lists",
        )

    def _resolve_facade_attr(self, mod_name: str, name: str, for_import: bool) -> Any:
        rule = self.policy.module_rule(mod_name)
        if rule is None:  # pragma: no cover - facades exist only for allowed modules
            raise _violation(f"{mod_name} is not allowed", "import.not-allowlisted")
        if name in ("__name__",):
            return mod_name
        if name.startswith("_") and name != "__version__":
            if for_import and rule.stub_denied and not name.startswith("__"):
                return DeniedName(f"{mod_name}.{name}")
            raise _violation(
                f"{mod_name}.{name} is not available in the sandbox (private or dunder name)",
                "facade.private-name",
            )
        if self._deny.denies(name):
            return self._refuse_facade(mod_name, name, for_import, rule)
        impl = rule.replace.get(name)
        if impl == "sandbox-logger":
            return self._get_logger
        real = self._real_modules.get(mod_name) or self._import_real(mod_name)
        if impl is not None:
            return self._replacement(impl, real, mod_name, name)
        try:
            with tripwire.suspended():
                value = getattr(real, name)
        except AttributeError:
            # Maybe a submodule not imported yet (``import diffusers.pipelines.x``).
            child = f"{mod_name}.{name}"
            if self.policy.module_rule(child) is not None and (name in rule.attrs or rule.any_submodule):
                try:
                    value = self._import_real(child)
                except ImportError:
                    raise AttributeError(f"module {mod_name!r} has no attribute {name!r}") from None
            else:
                raise AttributeError(f"module {mod_name!r} has no attribute {name!r}") from None
        except Exception as exc:  # a lazy module failing to import an optional dependency
            raise ImportError(f"{mod_name}.{name} is not available: {type(exc).__name__}") from None
        if isinstance(value, types.ModuleType):
            child = f"{mod_name}.{name}"
            child_rule = self.policy.modules.get(child)
            if name in rule.attrs and child_rule is not None:
                return self.facade(child, value)
            if rule.any_submodule and getattr(value, "__name__", None) == f"{real.__name__}.{name}":
                return self.facade(child, value)
            real_name = getattr(value, "__name__", None)
            if name in rule.attrs and isinstance(real_name, str) and real_name in self.policy.modules:
                return self.facade(real_name, value)
            return self._refuse_facade(mod_name, name, for_import, rule)
        allowed = name in rule.attrs
        if not allowed and rule.variable_functions and name in self._vf_names():
            allowed = True
        if not allowed and rule.functions and callable(value) and not isinstance(value, type):
            allowed = rule.matches_function_pattern(name)
        if not allowed and rule.classes_from and isinstance(value, type):
            allowed = self._is_allowed_class(value, rule)
        if not allowed and rule.constants and not callable(value) and self._is_plain_constant(value, rule):
            allowed = True
        if not allowed and rule.constants and _is_type_hint(value):
            allowed = True
        if not allowed:
            return self._refuse_facade(mod_name, name, for_import, rule)
        self.check_value(value, f"{mod_name}.{name}")
        if isinstance(value, type) and issubclass(value, type):
            return self._refuse_facade(mod_name, name, for_import, rule)
        if isinstance(value, type) and self._no_construct(value):
            return ClassRef(value)
        if isinstance(value, type) and self._keys_become_attributes(value):
            return KeyCheckedClass(value, self._key_class_subclassable(value))
        if name in rule.suspend_tripwire and callable(value):
            return _suspending(value)
        return value

    def _replacement(self, impl: str, real: types.ModuleType, mod_name: str, name: str) -> Any:
        """Sandbox versions of host functions that would otherwise write host state."""
        with tripwire.suspended():
            target = getattr(real, name)
        where = f"{mod_name}.{name}"
        box = self
        if impl == "owned-first-argument":
            # decorators that set attributes on what they decorate: only on the sandbox's own
            def guarded(*args: Any, **kwargs: Any) -> Any:
                _no_custom_attribute_lists(where, args, kwargs)
                if args and (isinstance(args[0], type) or callable(args[0])):
                    box.require_owned(args[0], where)
                    with tripwire.suspended():
                        return target(*args, **kwargs)
                with tripwire.suspended():
                    decorator = target(*args, **kwargs)  # factory form: @dataclass(frozen=True)
                return box._owned_decorator(decorator, where)

            return functools.update_wrapper(guarded, target, assigned=("__name__", "__qualname__", "__doc__"))
        if impl == "owned-decorator-result":
            # factories whose result decorates (sets attributes on) its argument: wraps(...), ...
            def factory(*args: Any, **kwargs: Any) -> Any:
                _no_custom_attribute_lists(where, args, kwargs)
                return box._owned_decorator(target(*args, **kwargs), where)

            return factory
        if impl == "format-checked":
            signature = _signature_naming(target, "bar_format")
            leading = (None,) if isinstance(target, type) else ()

            def checked(*args: Any, **kwargs: Any) -> Any:
                # bar_format may come by keyword or by position (tqdm's 16th parameter)
                bound: dict[str, Any] = dict(kwargs)
                if signature is None and args:
                    raise _violation(f"{where} with positional arguments", "argument.format-traversal")
                if signature is not None:
                    try:
                        bound = dict(signature.bind_partial(*leading, *args, **kwargs).arguments)
                    except TypeError:
                        raise _violation(f"{where} with arguments that do not match its signature",
                                         "argument.format-traversal") from None
                    for param in signature.parameters.values():
                        if param.kind is inspect.Parameter.VAR_KEYWORD and isinstance(bound.get(param.name), dict):
                            bound.update(bound.pop(param.name))
                _check_bar_format(bound, where)
                return target(*args, **kwargs)

            return checked
        if impl == "grad-mode":
            return _GradMode
        if impl == "deepcopy-no-memo":
            def deepcopy(x: Any, *args: Any, **kwargs: Any) -> Any:
                if args or kwargs:
                    raise _violation(f"{where} with a memo dict (it would hold the originals' state)", "argument.memo")
                return target(x)

            return deepcopy
        if impl == "deprecate-checked":
            # diffusers.utils.deprecate(take_from=x) does getattr(x, name) / x.pop(name) with names
            # the caller chooses: only a plain dict (the pipeline's own kwargs) may be given.
            def deprecate(*args: Any, take_from: Any = None, **kwargs: Any) -> Any:
                if take_from is not None and type(take_from) is not dict:
                    raise _violation(
                        f"{where}(take_from=<{_tname(take_from)}>) would read attributes outside the guards",
                        "argument.take-from",
                        "pass take_from=kwargs (a dict) or nothing",
                    )
                for item in args:
                    if isinstance(item, tuple) and item and (
                        type(item[0]) is not str or item[0].startswith("_")
                    ):
                        raise _violation(f"{where} with attribute name {item[0]!r}", "argument.take-from")
                return target(*args, take_from=take_from, **kwargs)

            return deprecate
        raise _violation(f"{where} has an unknown sandbox replacement {impl!r}", "policy.replace")

    def require_owned(self, obj: Any, where: str) -> None:
        if obj in self._functions or (isinstance(obj, type) and obj in self._classes) or (
            not isinstance(obj, type) and self.owns(obj)
        ):
            return
        raise _violation(
            f"{where} applied to {_tname(obj)}, which the sandbox did not create (it would modify it)",
            "call.modifies-host-object",
        )

    def _owned_decorator(self, decorator: Any, where: str) -> Any:
        if not callable(decorator):
            return decorator
        box = self

        def apply(obj: Any, *args: Any, **kwargs: Any) -> Any:
            box.require_owned(obj, where)
            with tripwire.suspended():
                return decorator(obj, *args, **kwargs)

        return apply

    def _get_logger(self, name: Any = None) -> SandboxLogger:
        return SandboxLogger(str(name) if name is not None else self.module_name)

    # ------------------------------------------------------------------ values

    def check_value(self, value: Any, where: str) -> Any:
        t = type(value)
        if t in _FORBIDDEN_VALUE_TYPES:
            raise _violation(f"{where} is a {t.__name__}, which sandboxed code may never hold", "value.forbidden-type")
        if t is types.BuiltinFunctionType and getattr(value, "__self__", None) is _builtins:
            raise _violation(f"{where} is a raw Python builtin", "value.raw-builtin")
        if isinstance(value, type) and issubclass(value, type):
            raise _violation(f"{where} is a metaclass (it would build classes around the checks)", "value.metaclass")
        return value

    # ------------------------------------------------------------------ per-type attribute rules

    def _resolve_rules(self) -> list[tuple[type, TypeRule]]:
        if self._resolved_rules is None:
            resolved: list[tuple[type, TypeRule]] = []
            for rule in self.policy.types:
                cls = _resolve_type_path(rule.type_path)
                if cls is not None:
                    resolved.append((cls, rule))
            self._resolved_rules = resolved
        return self._resolved_rules

    def rules_for(self, t: type) -> tuple[TypeRule, ...]:
        hit = self._rules_for_type.get(t)
        if hit is None:
            # Only the most specific matching rule(s): a FrozenDict is an OrderedDict, but the
            # OrderedDict rule (written for the sandbox's own containers) must not apply to it.
            try:
                matching = [(cls, rule) for cls, rule in self._resolve_rules() if issubclass(t, cls)]
                mro = t.__mro__
                if matching:
                    best = min(mro.index(cls) if cls in mro else len(mro) for cls, _ in matching)
                    hit = tuple(rule for cls, rule in matching if (mro.index(cls) if cls in mro else len(mro)) == best)
                else:
                    hit = ()
            except TypeError:
                hit = ()
            self._rules_for_type[t] = hit
        return hit

    def _class_method_from(self, t: type, name: str, prefixes: tuple[str, ...]) -> bool:
        for klass in t.__mro__:
            if name in klass.__dict__:
                mod = getattr(klass, "__module__", "") or ""
                return isinstance(mod, str) and any(mod == p or mod.startswith(p + ".") for p in prefixes)
        return False

    def _static_allowed(self, t: type, name: str, *, on_class: bool) -> bool:
        """Allowed by the type rules alone (cacheable); dynamic rules are checked separately."""
        for rule in self.rules_for(t):
            if name in rule.attrs:
                return True
            if rule.tensor_ops and not name.startswith("_"):
                base = name[:-1] if name.endswith("_") else name
                if base in self._vf_names() or name in self._vf_names():
                    return True
            if rule.class_methods_from and not name.startswith("_"):
                if self._class_method_from(t, name, rule.class_methods_from):
                    return True
        return False

    def _dynamic_allowed(self, obj: Any, t: type, name: str) -> bool:
        if name.startswith("_"):
            return False
        for rule in self.rules_for(t):
            dyn = rule.dynamic
            if not dyn:
                continue
            if "submodules" in dyn:
                d = getattr(obj, "__dict__", None)
                if isinstance(d, dict):
                    for key in ("_modules", "_parameters", "_buffers"):
                        sub = d.get(key)
                        if isinstance(sub, dict) and name in sub:
                            return True
            if "config-keys" in dyn:
                cfg = obj if "config-keys" in dyn and isinstance(obj, dict) else None
                if cfg is None:
                    d = getattr(obj, "__dict__", None)
                    cfg = d.get("_internal_dict") if isinstance(d, dict) else None
                if isinstance(cfg, dict) and name in cfg:
                    return True
            if "dataclass-fields" in dyn:
                fields = getattr(t, "__dataclass_fields__", None)
                if isinstance(fields, dict) and name in fields:
                    return True
                if isinstance(obj, dict) and name in obj:
                    return True
            if "instance-public" in dyn:
                d = getattr(obj, "__dict__", None)
                if isinstance(d, dict) and name in d:
                    return True
        return False

    @staticmethod
    def _owned_name_verdict(name: str) -> bool | None:
        """The name-only part of the rules for the sandbox's own objects (None: undecided)."""
        if name.startswith("__"):
            return name in _STR_DUNDERS or name in _CALL_DUNDERS
        if name.endswith("_") and name.startswith("_"):
            return False
        return None

    def _owned_type_verdict(self, klass_t: type, name: str, *, on_class: bool) -> bool | None:
        """The class-level part: True/False when the class decides, None when only the
        instance's dynamic rules can still allow the name."""
        defined = False
        for klass in klass_t.__mro__:
            if name in klass.__dict__:
                if klass in self._classes:
                    return True
                defined = True
                break
        if self._deny.denies(name) or self._deny.denies(name.lstrip("_")):
            return False
        if not defined:
            # Not defined anywhere: the lookup raises a fresh AttributeError (or reads the config
            # through ConfigMixin.__getattr__), so ``hasattr(self, "x")`` idioms keep working.
            return self._fallback_getattr_reviewed(klass_t)
        return True if self._static_allowed(klass_t, name, on_class=on_class) else None

    def _owned_allowed(self, obj: Any, t: type, name: str) -> bool:
        """Attribute of an object whose class the sandbox defined (the pipeline, its helpers)."""
        by_name = self._owned_name_verdict(name)
        if by_name is not None:
            return by_name
        d = getattr(obj, "__dict__", None) if not isinstance(obj, type) else None
        if isinstance(d, dict) and name in d:
            return not self._deny.denies(name.lstrip("_"))
        on_class = isinstance(obj, type)
        verdict = self._owned_type_verdict(obj if on_class else t, name, on_class=on_class)
        if verdict is None:
            return self._dynamic_allowed(obj, t, name)
        return verdict

    def guarded_getattr(self, obj: Any, name: Any) -> Any:
        if type(name) is not str:
            raise _violation("attribute lookup with a non-string name", "attribute.name-type")
        t = type(obj)
        if t is Facade:
            return self.facade_attr(obj, name)
        decision = self._decisions.get((t, name))
        if decision is None:
            decision = self._decide(obj, t, name)
        if decision is not True:
            if decision is _DYN_OWNED:
                d = getattr(obj, "__dict__", None)
                ok = type(d) is dict and name in d
            elif decision is _DYN_HOST:
                ok = self._dynamic_allowed(obj, t, name)
            elif decision is _DENIED:
                raise _violation(
                    f"{_tname(obj)}.{name} is refused on every object (files, network, process or hooks)",
                    "attribute.denied",
                )
            else:
                ok = bool(decision)
            if not ok:
                raise _violation(
                    f"reading {name!r} of a {_tname(obj)} is not allowed in the sandbox",
                    "attribute.not-allowlisted",
                    "the per-type attribute allowlists in the sandbox policy list what pipelines may read",
                )
        if t is str and name in ("format", "format_map"):
            return self._safe_format(obj, name)
        if obj is str and name in ("format", "format_map"):
            return self._safe_format_unbound(name)
        try:
            value = getattr(obj, name)
        except AttributeError:
            raise AttributeError(f"{_tname(obj)!r} object has no attribute {name!r}") from None
        t_value = type(value)
        if t_value in _FORBIDDEN_VALUE_TYPES or t_value is types.BuiltinFunctionType:
            self.check_value(value, f"{_tname(obj)}.{name}")
        if name in _STR_DUNDERS and not isinstance(value, (str, type(None))):
            raise _violation(f"{name} of a {_tname(obj)} is not a string", "attribute.dunder")
        if name in _ARGUMENT_GUARDS and callable(value):
            return _ARGUMENT_GUARDS[name](self, value, f"{_tname(obj)}.{name}")
        if (t_value in _WRITABLE_CONTAINERS or t_value in _SNAPSHOT_MAPPINGS or _is_frozen_config(value)) and (
            t not in _WRITABLE_CONTAINERS and self._held_by_host(obj, name)
        ):
            # A list/dict/set/config held by a host object or a host class (a component's config, a
            # default argument, DiffusionPipeline._optional_components) is host state: the sandbox
            # gets a read-only snapshot, so writes cannot reach the host.
            return self._snapshot(value)
        if name == "__post_init__" and t is super and self._keys_become_attributes(type(obj.__self__)):
            target_self = obj.__self__
            _first_field_check(target_self, f"{_tname(target_self)}.__post_init__")
        if isinstance(obj, type) and not self.owns(obj):
            if name in _CALL_DUNDERS and t is not super:
                return self._owned_self_only(value, f"{_tname(obj)}.{name}")
            if _is_unbound_method(obj, name):
                return self._unbound_guard(obj, name, value)
        return value

    def _held_by_host(self, obj: Any, name: str) -> bool:
        """Is ``obj.name`` state of a host object or host class (not the sandbox's own)?"""
        if not self.owns(obj):
            return True
        d = getattr(obj, "__dict__", None)
        if not isinstance(obj, type) and isinstance(d, dict) and name in d:
            return False
        klass_t = obj if isinstance(obj, type) else type(obj)
        for klass in klass_t.__mro__:
            if name in klass.__dict__:
                return klass not in self._classes
        return False

    def _unbound_guard(self, cls: type, name: str, fn: Any) -> Callable[..., Any]:
        """``HostClass.method(x, ...)``: only where ``x.method(...)`` would be the same call and allowed.

        Refuses calling a parent implementation on a host object whose class overrides it
        (``dict.update(frozen_config, ...)`` bypassing FrozenDict's refusal) and calling a method the
        per-type rules do not give ``x``. The sandbox's own objects may call their parents' methods.
        """
        box = self
        raw = _static_lookup(cls, name)
        where = f"{_tname(cls)}.{name}"

        def call(self_obj: Any, *args: Any, **kwargs: Any) -> Any:
            if not box.owns(self_obj):
                if _static_lookup(type(self_obj), name) is not raw:
                    raise _violation(
                        f"{where} applied to a {_tname(self_obj)} that overrides or lacks it",
                        "call.unbound-host-method",
                    )
                box.guarded_getattr(self_obj, name)  # the same per-type decision as self_obj.name
            return fn(self_obj, *args, **kwargs)

        return call

    def _snapshot(self, value: Any) -> Any:
        """Read-only snapshot of host state, cached per object while it is alive (configs are read
        every denoising step)."""
        key = id(value)
        hit = self._snapshot_cache.get(key)
        if hit is not None:
            ref, snap = hit
            if ref() is value:
                return snap
        snap = _private_copy(value)
        try:
            self._snapshot_cache[key] = (weakref.ref(value), snap)
        except TypeError:  # plain dict/list: not weak-referenceable, not cached
            pass
        return snap

    def _owned_self_only(self, fn: Any, where: str) -> Callable[..., Any]:
        """``HostClass.__init__(self, ...)``: only to initialise the sandbox's own objects."""
        box = self

        def call(self_obj: Any, *args: Any, **kwargs: Any) -> Any:
            if not box.owns(self_obj):
                raise _violation(f"{where} called on an object the sandbox did not create", "call.host-init")
            if box._keys_become_attributes(type(self_obj)):
                _first_field_check(self_obj, where)
                _check_attribute_keys(where, *args, *kwargs.values())
            return fn(self_obj, *args, **kwargs)

        return call

    def _decide(self, obj: Any, t: type, name: str) -> Any:
        """Decide; cache the answer when it depends on the type and name only.

        Returns True, False, _DENIED, or a marker for the part that depends on the object:
        _DYN_OWNED (allowed iff it is an attribute of the sandbox object itself) or _DYN_HOST
        (the dynamic per-type rules: config keys, submodules, dataclass fields).
        """
        if self._deny.denies(name):
            self._decisions[(t, name)] = _DENIED
            return _DENIED
        cacheable = True
        ok: Any
        if t is ClassView:
            ok = name in ("__name__", "__qualname__", "__module__")
        elif t is ClassRef or t is KeyCheckedClass:
            ok = False
        elif t is SandboxLogger:
            ok = name in _LOGGER_METHODS
        elif t is DeniedName:
            raise object.__getattribute__(obj, "_refuse")()
        elif self.owns(obj):
            if isinstance(obj, type):
                ok = self._owned_allowed(obj, t, name)
                cacheable = False
            else:
                ok = self._owned_allowed_static(t, name)
                if ok is not True:
                    ok = _DYN_OWNED if self._instance_name_ok(name) else False
        elif t is super:
            # super().__init__ / super().__call__ / super().method inside a sandboxed class; never
            # super(HostClass, host_object) (that would re-run host initialisers on host objects).
            self_obj = obj.__self__
            if self_obj is None or not self.owns(self_obj):
                ok = False
            elif name in _CALL_DUNDERS:
                ok = True
            else:
                ok = self._owned_allowed(self_obj, type(self_obj), name)
            cacheable = False
        elif name.startswith("__"):
            if name in _STR_DUNDERS:
                ok = True
            elif name in _CALL_DUNDERS:
                ok = isinstance(obj, type) or name == "__call__"
            else:
                ok = False
        elif name.startswith("_"):
            ok = False
        elif t in _VALUE_TYPES or t in _READONLY_TYPES:
            ok = True
        elif isinstance(obj, type):
            # Class-level access: value types' methods, enum members, the rules of the class itself.
            if obj in _VALUE_TYPES:
                ok = True
            elif issubclass(obj, enum.Enum):
                ok = name in obj.__members__ or name in ("name", "value")
            else:
                ok = self._static_allowed(obj, name, on_class=True)
        elif isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial)):
            ok = isinstance(obj, functools.partial) and name in ("func", "args", "keywords")
        elif isinstance(obj, types.GeneratorType):
            ok = name in ("send", "close")
        elif isinstance(obj, tuple) and (
            name in (getattr(t, "_fields", None) or ()) or name in (getattr(t, "__match_args__", None) or ())
        ):
            ok = True  # named fields of a namedtuple / torch.return_types structseq
        else:
            ok = self._static_allowed(t, name, on_class=False)
            if not ok and not name.startswith("_") and any(rule.dynamic for rule in self.rules_for(t)):
                ok = _DYN_HOST
        if cacheable:
            self._decisions[(t, name)] = ok
        return ok

    def _instance_name_ok(self, name: str) -> bool:
        """May an attribute of this name be read from the sandbox object's own __dict__?"""
        if name.startswith("__"):
            return name in _STR_DUNDERS or name in _CALL_DUNDERS
        if name.startswith("_") and name.endswith("_") and len(name) > 1:
            return False
        return not self._deny.denies(name.lstrip("_"))

    def _owned_allowed_static(self, t: type, name: str) -> bool:
        """The type-level part of ``_owned_allowed`` for an instance of a sandbox class."""
        by_name = self._owned_name_verdict(name)
        if by_name is not None:
            return by_name
        return bool(self._owned_type_verdict(t, name, on_class=False))

    def _fallback_getattr_reviewed(self, t: type) -> bool:
        """A name no class defines reaches ``__getattr__``: only the reviewed ones (nn.Module's
        submodule/parameter lookup, ConfigMixin's config lookup, the sandbox's own)."""
        for klass in t.__mro__:
            if "__getattr__" in klass.__dict__:
                if klass in self._classes:
                    return True
                qual = f"{getattr(klass, '__module__', '')}.{getattr(klass, '__qualname__', '')}"
                return qual in _REVIEWED_GETATTR
        return True

    def _safe_format(self, s: str, name: str) -> Callable[..., str]:
        fmt = self._formatter
        if name == "format":
            return lambda *a, **k: fmt.vformat(s, a, k)
        return lambda mapping: fmt.vformat(s, (), mapping)

    def _safe_format_unbound(self, name: str) -> Callable[..., str]:
        fmt = self._formatter
        if name == "format":
            return lambda s, *a, **k: fmt.vformat(str(s), a, k)
        return lambda s, mapping: fmt.vformat(str(s), (), mapping)

    # ------------------------------------------------------------------ other guard hooks

    def guarded_getitem(self, obj: Any, key: Any) -> Any:
        t = type(obj)
        if t is Facade or t is DeniedName:
            raise _violation("subscripting a module facade", "item.facade")
        value = obj[key]
        if type(value) in _FORBIDDEN_VALUE_TYPES:
            self.check_value(value, f"an item of a {_tname(obj)}")
        if _is_snapshot_type(value) and t not in _WRITABLE_CONTAINERS and t not in _READONLY_TYPES and not self.owns(obj):
            return self._snapshot(value)  # e.g. a list inside a host FrozenDict config
        return value

    def guarded_getiter(self, obj: Any) -> Any:
        if type(obj) is Facade:
            raise _violation("iterating over a module facade", "iter.facade")
        return iter(obj)

    def guarded_write(self, obj: Any) -> Any:
        t = type(obj)
        if t in _WRITABLE_CONTAINERS:
            return obj
        if t in (Facade, DeniedName, ClassView, ClassRef, KeyCheckedClass) or isinstance(obj, types.ModuleType):
            raise _violation("writing to a module facade", "write.facade", "module attributes are shared host state")
        if self.owns(obj):
            if self._keys_become_attributes(t):
                return _KeyCheckedWriter(obj)
            return obj
        tensor_types = self._tensor_types()
        if isinstance(obj, tensor_types):
            return _WriteProxy(obj)
        if isinstance(obj, type):
            raise _violation(f"writing to the host class {_tname(obj)}", "write.host-class")
        raise _violation(
            f"writing to a {_tname(obj)} (an object the sandbox did not create)",
            "write.host-object",
            "a pipeline may change its own attributes and objects it created, not host objects",
        )

    _tensor_types_cache: tuple[type, ...] | None = None

    def _tensor_types(self) -> tuple[type, ...]:
        if self._tensor_types_cache is None:
            found: list[type] = []
            for path in ("torch.Tensor", "numpy.ndarray"):
                cls = _resolve_type_path(path)
                if cls is not None:
                    found.append(cls)
            self._tensor_types_cache = tuple(found)
        return self._tensor_types_cache

    def inplacevar(self, op: Any, x: Any, y: Any) -> Any:
        fn = _INPLACE_OPS.get(op) if type(op) is str else None
        if fn is None:
            raise _violation(f"unknown in-place operator {op!r}", "syntax.augassign")
        return fn(x, y)

    def apply(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        # ``f(**mapping)``: a key chosen at run time becomes a keyword; host constructors turn
        # keywords into attributes (SimpleNamespace, PretrainedConfig, FrozenDict), and a
        # ``__array_interface__`` or ``__reduce_ex__`` attribute would be read by numpy or copy.
        for key in kwargs:
            if type(key) is not str or key.startswith("__"):
                raise _violation(f"a call with keyword {key!r}", "call.dunder-keyword")
        return f(*args, **kwargs)

    # ------------------------------------------------------------------ classes and functions

    def wrap_function(self, fn: Any) -> Any:
        """Every function the sandbox defines: runs with the tripwire armed, whoever calls it."""
        if not isinstance(fn, types.FunctionType):
            raise _violation("the sandbox function wrapper got a non-function", "internal.wrap")
        armed_var = tripwire.ARMED
        suspended_var = tripwire._SUSPENDED
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                gen = fn(*args, **kwargs)
                to_send: Any = None
                while True:
                    t1 = armed_var.set(True)
                    t2 = suspended_var.set(False)
                    try:
                        value = gen.send(to_send)
                    except StopIteration as stop:
                        return stop.value
                    finally:
                        suspended_var.reset(t2)
                        armed_var.reset(t1)
                    to_send = yield value

            self._functions.add(gen_wrapper)
            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t1 = armed_var.set(True)
            t2 = suspended_var.set(False)
            try:
                return fn(*args, **kwargs)
            finally:
                suspended_var.reset(t2)
                armed_var.reset(t1)

        self._functions.add(wrapper)
        return wrapper

    def class_of(self, obj: Any) -> Any:
        t = type(obj)
        if t in self._classes:
            return t
        if t is Facade:
            raise _violation("__class__ of a module facade", "attribute.dunder-class")
        return ClassView(t)

    def bind(self, fn: Any) -> Callable[..., Any]:
        if fn not in self._functions:
            raise _violation("__get__ of an object that is not a sandboxed function", "attribute.dunder-get")

        def binder(obj: Any, owner: Any = None) -> Any:
            if obj is None:
                return fn
            return types.MethodType(fn, obj)

        return binder

    def _check_bases(self, name: str, bases: tuple[Any, ...]) -> type:
        """Refuse dangerous bases; return the most derived metaclass."""
        for base in bases:
            if not isinstance(base, type):
                raise _violation(f"class {name} has a base that is not a class ({_tname(base)})", "class.bases")
            if issubclass(base, type):
                raise _violation(f"class {name} derives from a metaclass", "class.metaclass")
            if issubclass(base, (str, bytes, Facade, DeniedName, ClassView, ClassRef, SandboxLogger, types.ModuleType)):
                raise _violation(f"class {name} derives from {_tname(base)}", "class.bases")
            if base.__module__ == "builtins" and base not in (object, dict, list, tuple, set, int, float) and not (
                issubclass(base, BaseException)
            ):
                raise _violation(f"class {name} derives from the builtin {base.__name__}", "class.bases")
            if issubclass(base, BaseException) and not issubclass(base, Exception):
                raise _violation(
                    f"class {name} derives from {base.__name__} (it would escape the host's `except Exception`)",
                    "class.bases",
                )
        meta: type = type
        for base in bases:
            bt = type(base)
            if issubclass(bt, meta):
                meta = bt
            elif not issubclass(meta, bt):
                raise TypeError("metaclass conflict")
        return meta

    def prepare_class(self, name: Any, bases: Any, **kwds: Any) -> Any:
        """``__metaclass__.__prepare__``: the real metaclass's namespace (Enum needs its own)."""
        if type(name) is not str or type(bases) is not tuple:
            raise _violation("a class statement with an invalid name or bases", "class.name")
        meta = self._check_bases(name, bases)
        with tripwire.suspended():
            return meta.__prepare__(name, bases, **kwds)

    def build_class(self, name: Any, bases: Any, ns: Any, **kwds: Any) -> type:
        """``__metaclass__``: create a class the sandbox defines (checked namespace and bases)."""
        if type(name) is not str or not name.isidentifier():
            raise _violation("a class with an invalid name", "class.name")
        if type(bases) is not tuple:
            raise _violation("class bases must be a tuple", "class.bases")
        if not isinstance(ns, dict):
            raise _violation("a class namespace that is not a dict", "class.namespace")
        for key in list(ns):
            if type(key) is not str:
                raise _violation("a class attribute with a non-string name", "class.namespace")
            if key.startswith("__") and key.endswith("__"):
                if (
                    key not in _CLASS_NS_DUNDERS
                    and key not in self.policy.allowed_def_names
                    and key not in self.policy.bindable_dunder_names
                ):
                    raise _violation(f"class {name} defines {key}", "class.dunder")
        meta = self._check_bases(name, bases)
        for kw in kwds:
            if type(kw) is not str or kw.startswith("_"):
                raise _violation(f"class {name} passes keyword {kw!r}", "class.keywords")
        with tripwire.suspended():
            cls = meta(name, bases, ns, **kwds)
        if self._keys_become_attributes(cls):
            if not self._key_class_subclassable(cls):
                raise _violation(f"class {name} derives from a class that turns keys into attributes", "class.bases")
            if isinstance(cls, enum.EnumMeta) and not cls.__members__:
                raise _violation(
                    f"enum {name} has no members (its functional API would set arbitrary class attributes)",
                    "class.enum-without-members",
                )
            if not isinstance(cls, enum.EnumMeta):
                _install_checked_post_init(cls)
        self._classes.add(cls)
        self._owned_type_cache.clear()
        self._decisions.clear()
        return cls

    # ------------------------------------------------------------------ builtins

    def make_builtins(self) -> dict[str, Any]:
        box = self
        policy = self.policy

        def guarded_getattr_builtin(obj: Any, name: Any, default: Any = _MISSING) -> Any:
            if default is _MISSING:
                return box.guarded_getattr(obj, name)
            try:
                return box.guarded_getattr(obj, name)
            except AttributeError:
                return default

        def guarded_hasattr(obj: Any, name: Any) -> bool:
            # Probing for a capability refused on every object (hooks, save_*, ...) is a refusal;
            # an attribute that is missing or merely not allowlisted reads as absent.
            try:
                box.guarded_getattr(obj, name)
            except AttributeError:
                return False
            except PolicyViolation as exc:
                if exc.rule in ("attribute.denied", "attribute.name-type"):
                    raise
                return False
            return True

        def guarded_setattr(obj: Any, name: Any, value: Any) -> None:
            if type(name) is not str or not name.isidentifier():
                raise _violation("setattr with a non-identifier name", "attribute.name-type")
            if name.startswith("__") or (name.startswith("_") and name.endswith("_")):
                raise _violation(f"setattr of {name!r}", "attribute.dunder-write")
            setattr(box.guarded_write(obj), name, value)

        def guarded_iter(obj: Any, *sentinel: Any) -> Any:
            if sentinel:
                return iter(obj, *sentinel)
            return box.guarded_getiter(obj)

        def bounded_range(*args: Any) -> range:
            r = range(*args)
            try:
                n = len(r)
            except OverflowError:
                n = policy.max_range + 1
            if n > policy.max_range:
                raise _violation(f"range of {n} elements", "builtins.range-bound")
            return r

        def sandbox_print(*args: Any, sep: Any = " ", end: Any = "\n", **_ignored: Any) -> None:
            _PRINT_LOG.info("%s", str(sep).join(str(a) for a in args))

        def sandbox_format(value: Any, spec: Any = "") -> str:
            return format(value, str(spec))

        impl: dict[str, Any] = {
            "getattr": guarded_getattr_builtin,
            "hasattr": guarded_hasattr,
            "setattr": guarded_setattr,
            "iter": guarded_iter,
            "range": bounded_range,
            "print": sandbox_print,
            "format": sandbox_format,
        }
        result: dict[str, Any] = {}
        for name in policy.builtin_names:
            if name in impl:
                result[name] = impl[name]
            elif hasattr(_builtins, name):
                result[name] = getattr(_builtins, name)
        for name in policy.refused_builtins:
            if name not in result:
                result[name] = DeniedName(f"builtins.{name}", rule="builtins.refused")
        result["__build_class__"] = _builtins.__build_class__
        result["__import__"] = self.guarded_import
        return result

    def make_globals(self) -> dict[str, Any]:
        from pipewarden.sandbox.compile import BIND_NAME, CLASS_OF_NAME, FUNCTION_WRAPPER_NAME

        return {
            "__builtins__": self.make_builtins(),
            "__name__": self.module_name,
            "__doc__": None,
            "__metaclass__": _MetaclassHook(self),
            "_getattr_": self.guarded_getattr,
            "_getitem_": self.guarded_getitem,
            "_getiter_": self.guarded_getiter,
            "_write_": self.guarded_write,
            "_unpack_sequence_": guarded_unpack_sequence,
            "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
            "_inplacevar_": self.inplacevar,
            "_apply_": self.apply,
            FUNCTION_WRAPPER_NAME: self.wrap_function,
            CLASS_OF_NAME: self.class_of,
            BIND_NAME: self.bind,
        }


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

    def __init__(self, box: Sandbox) -> None:
        self._pw_box = box

    def __prepare__(self, name: Any, bases: Any, **kwds: Any) -> Any:  # noqa: PLW3201
        return self._pw_box.prepare_class(name, bases, **kwds)

    def __call__(self, name: Any, bases: Any, ns: Any, **kwds: Any) -> type:
        return self._pw_box.build_class(name, bases, ns, **kwds)


def _is_type_hint(value: Any) -> bool:
    """typing constructs such as ``PipelineImageInput = Union[PIL.Image.Image, np.ndarray, ...]``."""
    import typing

    return isinstance(value, (types.GenericAlias, types.UnionType)) or type(value).__module__ == "typing" and (
        type(value).__name__ in ("_GenericAlias", "_UnionGenericAlias", "_LiteralGenericAlias", "_CallableGenericAlias")
    ) or value is typing.Any


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


def _readonly_type(base: type, mutators: tuple[str, ...]) -> type:
    ns: dict[str, Any] = {name: _refuse_host_mutation for name in mutators}
    ns["__reduce_ex__"] = lambda self, protocol: (base, (base(self),))
    ns["__copy__"] = lambda self: base(self)
    ns["__deepcopy__"] = lambda self, memo: copy.deepcopy(base(self), memo)
    ns["__slots__"] = ()
    return type(f"HostOwned{base.__name__.capitalize()}", (base,), ns)


#: Read-only snapshots of host containers: reading works as usual, any mutation is a PolicyViolation.
_HostList = _readonly_type(
    list, ("append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse", "__setitem__",
           "__delitem__", "__iadd__", "__imul__")
)
_HostDict = _readonly_type(
    dict, ("update", "pop", "popitem", "clear", "setdefault", "__setitem__", "__delitem__", "__ior__")
)


def _host_dict_getattr(self: Any, name: str) -> Any:
    # configs are read as attributes (``self.unet.config.sample_size``)
    if not name.startswith("_"):
        try:
            return self[name]
        except KeyError:
            pass
    raise AttributeError(name)


_HostDict.__getattr__ = _host_dict_getattr  # type: ignore[attr-defined]
_HostSet = _readonly_type(
    set, ("add", "discard", "remove", "pop", "clear", "update", "difference_update", "intersection_update",
          "symmetric_difference_update", "__ior__", "__iand__", "__isub__", "__ixor__")
)
_READONLY: dict[type, type] = {list: _HostList, dict: _HostDict, set: _HostSet}
_READONLY_TYPES = frozenset(_READONLY.values())


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
    if t in _SNAPSHOT_MAPPINGS or _is_frozen_config(value):
        return _HostDict(
            {k: _private_copy(v, depth + 1) if _is_snapshot_type(v) else v for k, v in value.items()}
        )
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


def _no_custom_attribute_lists(where: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """functools.update_wrapper/wraps copy the attributes named in ``assigned``/``updated``."""
    if "assigned" in kwargs or "updated" in kwargs or (where.endswith("update_wrapper") and len(args) > 2) or (
        where.endswith(".wraps") and len(args) > 1
    ):
        raise _violation(f"{where} with custom assigned/updated attribute lists", "argument.attribute-list")


def _signature_naming(target: Any, param: str) -> inspect.Signature | None:
    """The signature that names ``param`` explicitly: tqdm.auto's class takes ``*args`` and passes
    them on to tqdm.std.tqdm.__init__, whose parameters decide where a positional argument lands."""
    candidates = [c.__init__ for c in target.__mro__] if isinstance(target, type) else [target]  # type: ignore[misc]
    for fn in candidates:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            continue
        if param in sig.parameters:
            return sig
    return None


def _first_field_check(obj: Any, where: str) -> None:
    fields = getattr(type(obj), "__dataclass_fields__", None)
    if isinstance(fields, dict) and fields:
        first = next(iter(fields))
        _check_attribute_keys(where, getattr(obj, first, None))


def _install_checked_post_init(cls: type) -> None:
    """``__post_init__`` of a sandbox subclass of BaseOutput/ModelOutput: the base spreads a dict
    first field into attributes, so its keys are checked first (and again at super().__post_init__)."""
    own = cls.__dict__.get("__post_init__")
    where = f"{cls.__name__}(...)"

    def __post_init__(self: Any) -> None:
        _first_field_check(self, where)
        if own is not None:
            own(self)
        else:
            super(cls, self).__post_init__()  # type: ignore[arg-type]

    type.__setattr__(cls, "__post_init__", __post_init__)


def _static_lookup(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


def _is_unbound_method(cls: type, name: str) -> bool:
    raw = _static_lookup(cls, name)
    return isinstance(raw, (types.FunctionType, types.MethodDescriptorType, types.WrapperDescriptorType))


def _simple_format_string(fmt: Any) -> bool:
    """A format string whose fields are plain names (no ``.attr`` or ``[key]`` traversal)."""
    if not isinstance(fmt, str):
        return fmt is None
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return False
    for _literal, field, spec, _conv in parsed:
        if field is None:
            continue
        if field and not (field.isidentifier() or field.isdigit()):
            return False
        if spec and not _simple_format_string(spec):
            return False
    return True


def _check_bar_format(kwargs: Mapping[str, Any], where: str) -> None:
    if type(kwargs) is not dict:
        raise _violation(f"{where} with a {_tname(kwargs)} as its configuration", "argument.format-traversal")
    if not _simple_format_string(dict.get(kwargs, "bar_format")):
        raise _violation(
            f"{where} with a bar_format that traverses attributes or items (host-side str.format)",
            "argument.format-traversal",
            "use plain {field} names in bar_format",
        )


def _progress_bar_config_guard(box: Sandbox, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    def set_progress_bar_config(*args: Any, **kwargs: Any) -> Any:
        _check_bar_format(kwargs, where)
        return fn(*args, **kwargs)

    return set_progress_bar_config


def _progress_bar_guard(box: Sandbox, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    owner = getattr(fn, "__self__", None)

    def progress_bar(*args: Any, **kwargs: Any) -> Any:
        d = getattr(owner, "__dict__", None)
        config = d.get("_progress_bar_config") if isinstance(d, dict) else None
        if config is not None:
            _check_bar_format(config, where)
        return fn(*args, **kwargs)

    return progress_bar


def _register_modules_guard(box: Sandbox, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    """register_modules(**kw) does setattr(self, name, module) for every name: public names only."""

    def register_modules(**kwargs: Any) -> Any:
        for name in kwargs:
            if type(name) is not str or not name.isidentifier() or name.startswith("_"):
                raise _violation(f"{where} with component name {name!r}", "argument.component-name")
        return fn(**kwargs)

    return register_modules


def _config_dict_only(box: Sandbox, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    """``from_config`` given a str loads a file or downloads it: only an in-memory config is allowed."""

    def from_config(config: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(config, dict):
            raise _violation(
                f"{where} with a {type(config).__name__} (a path or repo id would read files or the network)",
                "argument.config-path",
                "pass an in-memory config such as self.scheduler.config",
            )
        _check_attribute_keys(where, config)
        return fn(config, *args, **kwargs)

    return from_config


#: Methods whose arguments decide between pure computation and I/O (or host-side format
#: traversal): wrapped when read, on every object.
_ARGUMENT_GUARDS: dict[str, Callable[[Sandbox, Callable[..., Any], str], Callable[..., Any]]] = {
    "from_config": _config_dict_only,
    "set_progress_bar_config": _progress_bar_config_guard,
    "progress_bar": _progress_bar_guard,
    "register_modules": _register_modules_guard,
}


def _suspending(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Host functions that legitimately generate code (dataclass, namedtuple)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with tripwire.suspended():
            return fn(*args, **kwargs)

    return call


@functools.lru_cache(maxsize=256)
def _resolve_type_path(path: str) -> type | None:
    """'torch.nn.Module' -> the class, importing the longest importable module prefix; None if absent."""
    if path == "BaseException":
        return BaseException
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        mod_name = ".".join(parts[:cut])
        try:
            with tripwire.suspended():
                obj: Any = importlib.import_module(mod_name)
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
        except Exception:  # noqa: BLE001 - optional library missing or renamed: no rule
            continue
        return obj if isinstance(obj, type) else None
    return None
