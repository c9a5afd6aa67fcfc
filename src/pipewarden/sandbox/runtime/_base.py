"""The sandbox's state and the ownership test: which classes and functions the sandboxed module
created, and the check every value handed to sandboxed code passes (no module, frame, code
object, raw builtin or metaclass).

Decides: ``owns(obj)`` (is it an instance of a class the sandbox defined) and ``check_value``.
Trusts: the policy object it is given."""

from __future__ import annotations

import builtins as _builtins
import types
import weakref
from typing import TYPE_CHECKING, Any, cast

from pipewarden.sandbox.policy import SandboxPolicy, TypeRule
from pipewarden.sandbox.policy.resolve import resolve_policy
from pipewarden.sandbox.runtime._common import _FORBIDDEN_VALUE_TYPES, _resolve_type_path, _violation
from pipewarden.sandbox.runtime.arrays import ArrayArguments
from pipewarden.sandbox.runtime.objects import Facade, _SafeFormatter

if TYPE_CHECKING:
    from pipewarden.sandbox.runtime.hooks import GuardHooks


class _IdentityWeakMap:
    """Objects by identity (never by ``==``/hash: configs are dicts), held weakly, each with a value."""

    def __init__(self) -> None:
        self._refs: dict[int, tuple[weakref.ref[Any], Any]] = {}

    def put(self, obj: Any, value: Any = True) -> None:
        key = id(obj)
        refs = self._refs

        def gone(r: weakref.ref[Any], key: int = key) -> None:
            hit = refs.get(key)
            if hit is not None and hit[0] is r:
                del refs[key]

        refs[key] = (weakref.ref(obj, gone), value)  # TypeError: not weak-referenceable

    def get(self, obj: Any, default: Any = None) -> Any:
        hit = self._refs.get(id(obj))
        if hit is None or hit[0]() is not obj:
            return default
        return hit[1]

    def __contains__(self, obj: Any) -> bool:
        hit = self._refs.get(id(obj))
        return hit is not None and hit[0]() is obj

    def __bool__(self) -> bool:
        return bool(self._refs)


class LoadBuilt:
    """What belongs to this pipeline besides the sandbox's own objects: the components pipewarden
    built for one load from verified bytes (never objects a caller passed), all their submodules,
    and their diffusers configs (``FrozenDict``), tracked by identity
    (weak references) from the moment they are built. Attention processors may be installed only
    on these, and sandboxed code may set public attributes on them (``module.forward = ...``,
    ``self.unet.config.x = ...``): see :mod:`pipewarden.sandbox.runtime.ownwrites`.

    In the worker every component is the worker's own (the caller's objects were rebuilt there
    from data), so everything is adopted; in-process, only what the loader built."""

    def __init__(self) -> None:
        self._objs = _IdentityWeakMap()
        #: the caller's objects (and everything reached from them): never adopted later either
        self._excluded = _IdentityWeakMap()
        #: per adopted object, the attribute names sandboxed code has set on it
        self._written = _IdentityWeakMap()

    @staticmethod
    def _reach(components: Any) -> list[Any]:
        """Each component, its submodules and their configs (what one component consists of)."""
        import torch

        found: list[Any] = []
        for comp in components:
            parts = list(comp.modules()) if isinstance(comp, torch.nn.Module) else [comp]
            for part in parts:
                found.append(part)
                d = getattr(part, "__dict__", None)
                if isinstance(d, dict):
                    cfg = d.get("_internal_dict")
                    if cfg is not None and _is_config(cfg):
                        found.append(cfg)
        return found

    def exclude(self, passed: Any) -> None:
        """Objects the caller passed: never adopted, whatever holds them."""
        for obj in self._reach(passed):
            try:
                self._excluded.put(obj)
            except TypeError:
                pass

    def adopt(self, components: Any) -> None:
        for obj in self._reach(components):
            if not _adoptable(obj):
                continue
            if obj not in self._excluded:
                try:
                    self._objs.put(obj)
                except TypeError:
                    pass

    def adopt_config(self, owner: Any, config: Any) -> bool:
        """The config of an object this pipeline owns (a sandbox-defined model's own registered
        config): adopted unless a caller's object holds it. True if it is (now) the pipeline's."""
        if config in self:
            return True
        d = getattr(owner, "__dict__", None)
        if not isinstance(d, dict) or d.get("_internal_dict") is not config or not _is_config(config):
            return False
        if config in self._excluded:
            return False
        try:
            self._objs.put(config)
        except TypeError:
            return False
        return True

    def __contains__(self, obj: object) -> bool:
        return obj in self._objs

    # ------------------------------------------------------------------ what the sandbox wrote

    @property
    def has_written(self) -> bool:
        return bool(self._written)

    def written(self, obj: object) -> set[str] | None:
        names: set[str] | None = self._written.get(obj)
        return names

    def record_write(self, obj: object, name: str) -> None:
        names = self._written.get(obj)
        if names is None:
            names = set()
            self._written.put(obj, names)
        names.add(name)

    def forget_write(self, obj: object, name: str) -> None:
        names = self.written(obj)
        if names is not None:
            names.discard(name)


def _is_config(value: Any) -> bool:
    """A diffusers config (``FrozenDict``). Transformers configs are not adopted: their attributes
    are their data, which ``save_pretrained`` writes out (an ``auto_map`` set here would persist);
    a ``FrozenDict``'s attributes never reach a saved config (``_internal_dict`` items do)."""
    from pipewarden.sandbox.runtime.snapshots import _is_frozen_config

    return _is_frozen_config(value)


def _writable(obj: Any) -> bool:
    """Attribute writes: modules, diffusers config holders (schedulers) and configs -- never
    tokenizers or processors (native-backed objects whose attributes host code reads)."""
    import torch

    if isinstance(obj, type):
        return False
    if isinstance(obj, torch.nn.Module) or _is_config(obj):
        return True
    mixin = _resolve_type_path("diffusers.configuration_utils.ConfigMixin")
    return mixin is not None and isinstance(obj, mixin)


def _adoptable(obj: Any) -> bool:
    """Components and their parts: never classes or plain values (tokenizers and processors are
    adopted for the component-mutator guards, not for attribute writes: ``_writable``)."""
    return not isinstance(obj, (type, str, bytes, int, float, bool, list, tuple, dict)) or _is_config(obj)


class SandboxBase:
    """State of one sandboxed module (the first layer of :class:`~pipewarden.sandbox.runtime.Sandbox`)."""

    def __init__(self, policy: SandboxPolicy, module_name: str) -> None:
        self.policy = policy
        # Every class path and module the policy names resolves, or PolicyError (fail closed).
        self.resolved = resolve_policy(policy)
        self.module_name = module_name
        self._facades: dict[str, Facade] = {}
        self._real_modules: dict[str, types.ModuleType] = {}
        self._facade_cache: dict[tuple[str, str, bool], Any] = {}
        self._decisions: dict[tuple[type, str], Any] = {}
        self._rules_for_type: dict[type, tuple[TypeRule, ...]] = {}
        self._classes: weakref.WeakSet[type] = weakref.WeakSet()
        self._owned_type_cache: dict[type, bool] = {}
        self._functions: weakref.WeakSet[Any] = weakref.WeakSet()
        self._snapshot_cache: dict[int, tuple[Any, Any]] = {}
        self._type_results: dict[type, Any] = {}  # class values: see FacadeResolver.class_as_seen
        self._stand_ins: dict[tuple[type, type], Any] = {}  # one facade stand-in per class
        self.load_built = LoadBuilt()  # replaced by load_class(load_built=...) for a load
        self._formatter = _SafeFormatter(cast("GuardHooks", self))  # SandboxBase is only ever a Sandbox's first layer
        self._deny = policy.deny
        #: ``_private`` attribute names the vetted file defines (set by sandbox._load from its AST):
        #: readable on the sandbox's own objects unless a host class defines or declares the name.
        self.file_private_names: frozenset[str] = frozenset()
        self._builtin_module = _builtins
        self._array_arguments: ArrayArguments | None = None

    @property
    def array_arguments(self) -> ArrayArguments:
        """The argument check of the numpy/torch/PIL entry points (built on first use, once the
        libraries are imported)."""
        if self._array_arguments is None:
            self._array_arguments = ArrayArguments(self.owns_type, self.policy)
        return self._array_arguments

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
