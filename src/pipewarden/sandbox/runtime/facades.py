"""Imports and module facades: what ``import M`` and ``M.name`` give sandboxed code.

Decides: which modules may be imported (the policy's module rules), which names of a module a
facade exposes (listed names, generated name sets, class rules, plain constants), which classes
are handed out as ClassRef / KeyCheckedClass, and the sandbox replacements of host functions
that would write host state. Trusts: the host libraries the policy names (imported with the
tripwire suspended)."""

from __future__ import annotations

import enum
import importlib
import importlib.util
import types
from typing import Any

from pipewarden.errors import PolicyViolation
from pipewarden.sandbox import tripwire
from pipewarden.sandbox.policy import ModuleRule
from pipewarden.sandbox.runtime._base import SandboxBase
from pipewarden.sandbox.runtime._common import (
    _MISSING,
    _is_type_hint,
    _suspending,
    _tname,
    _violation,
)
from pipewarden.sandbox.runtime.objects import (
    ClassRef,
    ClassView,
    DeniedName,
    Facade,
    KeyCheckedClass,
    SandboxLogger,
    _ClassStandIn,
)
from pipewarden.sandbox.runtime.snapshots import _CONTAINER_TYPES, _private_copy


def _is_c_level_import(fromlist: Any) -> bool:
    """CPython's PyImport_Import passes a *list* as fromlist (empty; ``['__doc__']`` before 3.x);
    sandboxed import statements pass None or a tuple of names (and importing ``__doc__`` by name
    is refused when the file is compiled)."""
    return type(fromlist) is list and (fromlist == [] or fromlist == ["__doc__"])


#: Classes ``type(x)`` (and any class value reaching sandboxed code) gives as themselves: builtins
#: the sandbox names anyway.
TYPE_AS_IS = frozenset(
    {str, bytes, int, float, bool, complex, list, tuple, dict, set, frozenset, range, slice, type(None), bytearray}
)


class FacadeResolver(SandboxBase):
    """Imports, facades and replacements (second layer of :class:`~pipewarden.sandbox.runtime.Sandbox`)."""

    def _import_real(self, name: str) -> types.ModuleType:
        mod = self._real_modules.get(name)
        if mod is None:
            with tripwire.suspended():
                mod = importlib.import_module(name)
                rule = self.policy.modules.get(name)  # [modules.*] preload: imported with it, unarmed
                for lazy in rule.preload if rule is not None else ():
                    try:
                        importlib.import_module(lazy)
                    except ImportError:  # pragma: no cover - optional parts of a library
                        pass
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
            if _is_c_level_import(fromlist) and self.policy.module_rule(parts[0]) is not None and all(
                p.isidentifier() for p in parts
            ):
                # A C method called from a sandboxed frame (ndarray.max -> numpy._core._methods)
                # imports through the frame's __import__ and then reads sys.modules itself: the
                # library's own module, imported as trusted code; the sandbox gets only a stub.
                with tripwire.suspended():
                    importlib.import_module(canonical)
                return DeniedName(canonical, rule="import.private-module")
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
        """torch operators (generated data, ``policy/torch_ops.toml``) the installed torch also has."""
        return self.resolved.torch_operators

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
        bases = self.resolved.no_construct
        try:
            return bool(bases) and issubclass(cls, bases)
        except TypeError:
            return False

    def _key_class_subclassable(self, cls: type) -> bool:
        allowed = self.resolved.attribute_key_subclassable
        forwarding = tuple(t for t in self.resolved.attribute_key_bases if t not in allowed)
        return bool(allowed) and issubclass(cls, allowed) and not issubclass(cls, forwarding)

    def _keys_become_attributes(self, cls: type) -> bool:
        bases = self.resolved.attribute_key_bases
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
        if not any(mod == p or mod.startswith(p + ".") for p in rule.classes_from):
            return False
        generated = self.resolved.generated.get(mod.split(".")[0])
        # generated, versioned data (diffusers_names.toml, transformers_names.toml): only the classes
        # they list (a classes_from package without a list refuses to load: policy.resolve)
        return generated is not None and generated.admits_class(value)

    def facade_attr(self, facade: Facade, name: Any, *, for_import: bool = False) -> Any:
        if type(name) is not str:
            raise _violation("attribute lookup with a non-string name", "attribute.name-type")
        mod_name: str = object.__getattribute__(facade, "_pw_name")
        key = (mod_name, name, for_import)
        hit = self._facade_cache.get(key, _MISSING)
        if hit is _MISSING:
            hit = self._resolve_facade_attr(mod_name, name, for_import)
            if isinstance(hit, _ClassStandIn):
                # one stand-in per class, whichever module path names it (identity holds across
                # `transformers.CLIPTokenizer` and an annotation's `...tokenization_clip.CLIPTokenizer`)
                cls = object.__getattribute__(hit, "_pw_cls")
                hit = self._stand_ins.setdefault((cls, type(hit)), hit)
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

    def class_as_seen(self, t: type) -> Any:
        """What a class is to sandboxed code, however it arrives (``type(x)``, an attribute or item
        holding a class -- an annotation, ``Parameter.default``, ``scheduler.compatibles``,
        ``typing.get_args`` --, iteration, a parameter): the class itself where the sandbox could
        name it anyway (its own classes, builtin value types, a class a module facade hands out as
        is), the facade's stand-in where the facade wraps it ([no_construct], private memory,
        attribute keys), else one ``ClassView`` per class (identity and name only). A raw host
        class never becomes constructible by another door than its module's facade."""
        if t in self._classes or t in TYPE_AS_IS:
            return t
        hit = self._type_results.get(t)
        if hit is None:
            hit = ClassView(t)
            mod, name = getattr(t, "__module__", None), getattr(t, "__name__", None)
            if isinstance(mod, str) and isinstance(name, str) and self.policy.module_rule(mod) is not None:
                try:
                    value = self._resolve_facade_attr(mod, name, False)
                except (PolicyViolation, AttributeError, ImportError):
                    value = None
                if isinstance(value, _ClassStandIn) and object.__getattribute__(value, "_pw_cls") is t:
                    hit = self._stand_ins.setdefault((t, type(value)), value)
                elif value is t:
                    hit = value
            self._type_results[t] = hit
        return hit

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
        if callable(value) and not isinstance(value, type) and mod_name.partition(".")[0] in self.policy.array_libraries:
            # numpy/torch/PIL functions and ufuncs: array entry points (runtime/arrays.py)
            return self.array_arguments.guard(value, f"{mod_name}.{name}")
        return value

    def _replacement(self, impl: str, real: types.ModuleType, mod_name: str, name: str) -> Any:
        """What sandboxed code gets instead of ``mod_name.name``: the implementation the policy data
        names for ``impl`` (``[implementations.replace]``, resolved when the policy loaded)."""
        factory = self.resolved.replacements[impl]  # every `replace` value has one (checked at load)
        with tripwire.suspended():
            target = getattr(real, name, None)
        return factory(self, f"{mod_name}.{name}", target)

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
