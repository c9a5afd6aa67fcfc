"""Resolve a parsed policy against the installed libraries, failing closed.

Every class path the policy names (``[types.*]``, ``[no_construct]``, ``[attribute_keys]``,
``[values]``, ``[classes]``, ``[getattr]``, ``[class_creation.*]``), every implementation
(``[implementations.*]``), every reviewed ``__init_subclass__`` and every module table must resolve, or
:func:`resolve_policy` raises :class:`~pipewarden.errors.PolicyError` naming each one that did not.
A protection can therefore not vanish silently after a library upgrade renames a class.

One exception, stated here and in default.toml: entries under a top-level package that is not
installed at all (``transformers`` is optional) are skipped -- nothing from an absent package can
reach sandboxed code, so there is nothing for them to allow or deny. Likewise a ``[class_creation]``
entry marked ``since_python`` newer than the running interpreter.

Trusted code: imports the host libraries the policy names (tripwire suspended). Run before any
sandboxed code (every :class:`~pipewarden.sandbox.runtime.Sandbox` does on construction).
"""

from __future__ import annotations

import builtins
import functools
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pipewarden.errors import PolicyError
from pipewarden.sandbox.policy import (
    GeneratedNames,
    ReviewedEntry,
    SandboxPolicy,
    TypeRule,
    diffusers_name_data,
    torch_operator_data,
    transformers_name_data,
)
from pipewarden.sandbox.policy._gen_torch_ops import base_version

_LOG = logging.getLogger("pipewarden.sandbox")

__all__ = ["ResolvedPolicy", "ReviewedClassHooks", "resolve_class_path", "resolve_optional_class_path", "resolve_policy"]


class _Unresolved(Exception):
    pass


@functools.lru_cache(maxsize=64)
def _installed(top: str) -> bool:
    if top == "builtins":
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _suspended() -> Any:
    from pipewarden.sandbox import tripwire

    return tripwire.suspended()


@functools.lru_cache(maxsize=512)
def _lookup(path: str) -> object:
    """'torch.nn.Module' -> the object, importing the longest importable module prefix."""
    parts = path.split(".")
    if len(parts) == 1:
        if hasattr(builtins, path):
            return getattr(builtins, path)
        raise _Unresolved(path)
    for cut in range(len(parts) - 1, 0, -1):
        mod_name = ".".join(parts[:cut])
        try:
            with _suspended():
                obj: Any = importlib.import_module(mod_name)
        except ImportError:
            continue
        try:
            with _suspended():
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
        except Exception:  # noqa: BLE001 - a lazy attribute failing to import: unresolved
            raise _Unresolved(path) from None
        return obj
    raise _Unresolved(path)


def _optional_absent(path: str) -> bool:
    top = path.split(".")[0]
    return "." in path and not _installed(top)


def resolve_class_path(path: str) -> type:
    """The class a policy path names; raises PolicyError if it does not resolve to a class."""
    try:
        obj = _lookup(path)
    except _Unresolved:
        obj = None
    if not isinstance(obj, type):
        raise PolicyError(
            f"the sandbox policy names the class {path!r}, which does not resolve in the installed libraries",
            rule="policy.unresolved",
            fix="install the library versions the policy was reviewed for (constraints.txt), or update the "
            "policy entry to the class's new path and review what it allows",
        )
    return obj


def resolve_optional_class_path(path: str) -> type | None:
    """Like :func:`resolve_class_path`, but None when the path's top-level package is not installed."""
    if _optional_absent(path):
        return None
    return resolve_class_path(path)


@dataclass(frozen=True)
class ReviewedClassHooks:
    """``[class_creation]`` resolved: the host code a sandbox class statement may run."""

    #: the reviewed ``__init_subclass__`` functions (the function objects their classes define)
    init_subclass: frozenset[Any]
    #: types whose ``__set_name__`` may run (the class in the value's MRO that defines it)
    set_name: frozenset[type]
    #: types an Enum may mix in
    enum_mixins: frozenset[type]


@dataclass(frozen=True)
class ResolvedPolicy:
    """The classes a policy names, resolved. Built only by :func:`resolve_policy`."""

    policy: SandboxPolicy
    type_rules: tuple[tuple[type, TypeRule], ...]
    no_construct: tuple[type, ...]
    attribute_key_bases: tuple[type, ...]
    attribute_key_subclassable: tuple[type, ...]
    #: ``[values]`` resolved: plain value type -> the attributes readable on its values
    value_types: Mapping[type, frozenset[str]]
    builtin_bases: frozenset[type]
    reviewed_getattr: frozenset[type]
    #: The generated torch operator names (torch_ops.toml) that the installed torch also has.
    torch_operators: frozenset[str]
    #: generated name lists by top-level package (diffusers_names.toml): classes_from and
    #: class_methods_from admit only names listed here for these packages.
    generated: Mapping[str, GeneratedNames]
    #: ``[implementations.replace]`` resolved: replacement name -> factory
    replacements: Mapping[str, Callable[..., Any]]
    #: ``[implementations.argument_guards]`` resolved: guard name -> guard
    argument_guards: Mapping[str, Callable[..., Any]]
    #: ``[class_creation.*]`` resolved
    class_hooks: ReviewedClassHooks


def _classes(paths: tuple[str, ...], where: str, missing: list[str]) -> tuple[type, ...]:
    found: list[type] = []
    for path in paths:
        if _optional_absent(path):
            continue
        try:
            found.append(resolve_class_path(path))
        except PolicyError:
            missing.append(f"{where}: {path}")
    return tuple(found)


def _functions(table: Mapping[str, str], where: str, missing: list[str]) -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {}
    for name, path in table.items():
        try:
            obj = _lookup(path)
        except _Unresolved:
            obj = None
        if not callable(obj) or isinstance(obj, type):
            missing.append(f"{where}.{name}: {path}")
        else:
            found[name] = obj
    return found


def _applies(path: str, entry: ReviewedEntry) -> bool:
    if entry.since_python is not None and sys.version_info[:2] < entry.since_python:
        return False
    return not _optional_absent(path)


def _defined_at(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}".removeprefix("builtins.")


def _class_hooks(policy: SandboxPolicy, missing: list[str]) -> ReviewedClassHooks:
    """Resolve ``[class_creation]``: each __init_subclass__ to the Python function its class defines
    (not one inherited), each set_name type to a class that defines __set_name__, each at the path it
    is defined at (the old review does not silently carry over to something else)."""
    init_subclass: set[Any] = set()
    for path, entry in policy.init_subclass_hooks.items():
        if not _applies(path, entry):
            continue
        owner_path = path.rpartition(".")[0]
        try:
            owner = _lookup(owner_path)
        except _Unresolved:
            owner = None
        hook = owner.__dict__.get("__init_subclass__") if isinstance(owner, type) else None
        fn = getattr(hook, "__func__", hook)
        if not hasattr(fn, "__code__"):
            missing.append(f"class_creation.init_subclass: {path}")
        elif _defined_at(fn) != path:
            missing.append(f"class_creation.init_subclass: {path} (now defined as {_defined_at(fn)})")
        else:
            init_subclass.add(fn)
    found: dict[str, set[type]] = {"set_name": set(), "enum_mixins": set()}
    for key, table in (("set_name", policy.set_name_types), ("enum_mixins", policy.enum_mixin_types)):
        for path, entry in table.items():
            if not _applies(path, entry):
                continue
            try:
                cls = resolve_class_path(path)
            except PolicyError:
                missing.append(f"class_creation.{key}: {path}")
                continue
            if _defined_at(cls) != path:
                missing.append(f"class_creation.{key}: {path} (now defined as {_defined_at(cls)})")
            elif key == "set_name" and "__set_name__" not in cls.__dict__:
                missing.append(f"class_creation.set_name: {path} (defines no __set_name__)")
            else:
                found[key].add(cls)
    return ReviewedClassHooks(frozenset(init_subclass), frozenset(found["set_name"]), frozenset(found["enum_mixins"]))


def _check_modules(policy: SandboxPolicy, missing: list[str]) -> None:
    for name, rule in policy.modules.items():
        if _optional_absent(name) or (not _installed(name.split(".")[0])):
            continue
        for what, module in (("modules", name), *((f"modules.{name}.preload", p) for p in rule.preload)):
            try:
                with _suspended():
                    importlib.import_module(module)
            except Exception:  # noqa: BLE001 - any failure to import: the table names nothing
                missing.append(f"{what}: {module}")


@functools.lru_cache(maxsize=1)
def _torch_operators() -> frozenset[str]:
    """The shipped operator list, restricted to what the installed torch has: never a name the
    reviewed list lacks. A different torch version is logged (regenerate and review the diff)."""
    shipped_version, shipped = torch_operator_data()
    if not _installed("torch"):
        return frozenset()
    with _suspended():
        import torch

    installed = frozenset(n for n in dir(torch._C._VariableFunctions) if not n.startswith("_"))
    found = base_version(str(torch.__version__))
    if found != shipped_version:
        _LOG.warning(
            "pipewarden: torch %s is installed but the sandbox's operator list was generated for torch %s; "
            "only operators in both are available (%d new operators are not; regenerate torch_ops.toml "
            "with python -m pipewarden.sandbox.policy._gen_torch_ops and review the diff)",
            found, shipped_version, len(installed - shipped),
        )
    return shipped & installed


def _generated_names(policy: SandboxPolicy, missing: list[str]) -> dict[str, GeneratedNames]:
    """The generated name lists of the installed packages, checked to cover every rule of the policy
    that relies on them (a classes_from package without a list refuses to load: no rule without data)."""
    found: dict[str, GeneratedNames] = {}
    for names, generator in (
        (diffusers_name_data(), "_gen_diffusers_names"),
        (transformers_name_data(), "_gen_transformers_names"),
    ):
        if not _installed(names.package):
            continue
        for rule in policy.types:
            for prefix in rule.class_methods_from:
                if prefix.split(".")[0] == names.package and prefix not in names.member_prefixes:
                    missing.append(
                        f"types.{rule.type_path}.class_methods_from: {prefix} (not in {names.package}_names.toml)"
                    )
        if names.qualified:
            # each listed path must still name the class defined there (fail closed: a class that
            # moved or vanished in an upgrade is named, not silently dropped)
            for path in sorted(names.classes):
                try:
                    cls = resolve_class_path(path)
                except PolicyError:
                    missing.append(f"{names.package}_names.toml: {path}")
                    continue
                if f"{cls.__module__}.{cls.__qualname__}" != path:
                    missing.append(f"{names.package}_names.toml: {path} (now defined as {cls.__module__}.{cls.__qualname__})")
        with _suspended():
            module = importlib.import_module(names.package)
        installed = base_version(str(module.__version__))
        if installed != names.library_version:
            _LOG.warning(
                "pipewarden: %s %s is installed but the sandbox's %s name lists were generated for %s %s; "
                "classes and methods they do not list are refused (regenerate %s_names.toml with "
                "python -m pipewarden.sandbox.policy.%s and review the diff)",
                names.package, installed, names.package, names.package, names.library_version,
                names.package, generator,
            )
        found[names.package] = names
    for module_rule in policy.modules.values():
        for package in module_rule.classes_from:
            top = package.split(".")[0]
            if _installed(top) and top not in found:
                missing.append(f"modules.{module_rule.name}.classes_from: {package} (no generated name list)")
    for type_rule in policy.types:
        for prefix in type_rule.class_methods_from:
            top = prefix.split(".")[0]
            if _installed(top) and top not in found:
                missing.append(f"types.{type_rule.type_path}.class_methods_from: {prefix} (no generated name list)")
    return found


_CACHE: dict[int, ResolvedPolicy] = {}


def resolve_policy(policy: SandboxPolicy) -> ResolvedPolicy:
    """Resolve every class path and module ``policy`` names; PolicyError listing all that do not."""
    hit = _CACHE.get(id(policy))
    if hit is not None and hit.policy is policy:
        return hit
    missing: list[str] = []
    type_rules: list[tuple[type, TypeRule]] = []
    for rule in policy.types:
        for cls in _classes((rule.type_path,), "types", missing):
            type_rules.append((cls, rule))
    no_construct = _classes(policy.no_construct_bases, "no_construct.bases", missing)
    key_bases = _classes(policy.attribute_key_bases, "attribute_keys.bases", missing)
    key_subclassable = _classes(policy.attribute_key_subclassable, "attribute_keys.subclassable", missing)
    value_types: dict[type, frozenset[str]] = {}
    for path, attrs in policy.value_types.items():
        for cls in _classes((path,), "values", missing):
            value_types[cls] = attrs
    builtin_bases = _classes(policy.builtin_bases, "classes.builtin_bases", missing)
    reviewed_getattr = _classes(policy.reviewed_getattr, "getattr.reviewed", missing)
    replacements = _functions(policy.replacement_impls, "implementations.replace", missing)
    argument_guards = _functions(policy.argument_guard_impls, "implementations.argument_guards", missing)
    class_hooks = _class_hooks(policy, missing)
    _check_modules(policy, missing)
    generated = _generated_names(policy, missing)
    if missing:
        raise PolicyError(
            "the sandbox policy names classes or modules that do not resolve in the installed libraries "
            f"(it fails closed): {'; '.join(missing)}",
            rule="policy.unresolved",
            fix="install the library versions the policy was reviewed for (constraints.txt), or update these "
            "entries to the new paths and review what they allow",
        )
    resolved = ResolvedPolicy(
        policy=policy,
        type_rules=tuple(type_rules),
        no_construct=no_construct,
        attribute_key_bases=key_bases,
        attribute_key_subclassable=key_subclassable,
        value_types=MappingProxyType(value_types),
        builtin_bases=frozenset(builtin_bases),
        reviewed_getattr=frozenset(reviewed_getattr),
        torch_operators=_torch_operators(),
        generated=MappingProxyType(generated),
        replacements=MappingProxyType(replacements),
        argument_guards=MappingProxyType(argument_guards),
        class_hooks=class_hooks,
    )
    if len(_CACHE) > 16:
        _CACHE.clear()
    _CACHE[id(policy)] = resolved
    return resolved
