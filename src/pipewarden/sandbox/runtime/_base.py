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
from pipewarden.sandbox.runtime._common import _FORBIDDEN_VALUE_TYPES, _violation
from pipewarden.sandbox.runtime.arrays import ArrayArguments
from pipewarden.sandbox.runtime.objects import Facade, _SafeFormatter

if TYPE_CHECKING:
    from pipewarden.sandbox.runtime.hooks import GuardHooks


class LoadBuilt:
    """The components pipewarden built for one load from verified bytes (never objects a caller
    passed), with all their submodules. Attention processors may be installed only on these."""

    def __init__(self) -> None:
        self._objs: weakref.WeakSet[Any] = weakref.WeakSet()

    def adopt(self, components: Any) -> None:
        import torch

        for comp in components:
            if isinstance(comp, torch.nn.Module):
                for module in comp.modules():
                    self._objs.add(module)

    def __contains__(self, obj: object) -> bool:
        try:
            return obj in self._objs
        except TypeError:
            return False


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
        self._type_results: dict[type, Any] = {}  # one-argument type(): see GuardHooks.type_of
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
            self._array_arguments = ArrayArguments(self.owns_type)
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
