"""The sandbox policy: what sandboxed pipeline code may import, read, call and define.

Decides nothing by itself: it parses the shipped, versioned data (``default.toml``; the generated
``diffusers_pipelines.toml``) once into frozen objects with frozensets for the hot-path lookups the
guards make. An organisation may extend a policy (``with_extras``: more modules, more import aliases);
the global deny list, the tripwire and the compile rules cannot be relaxed that way.

Trusts: only the files shipped inside this package. Never imports torch or diffusers.
"""

from __future__ import annotations

import fnmatch
import functools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from types import MappingProxyType

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "SandboxPolicy",
    "ModuleRule",
    "TypeRule",
    "DenyRule",
    "TripwireRule",
    "default_policy",
    "diffusers_pipeline_names",
    "load_policy_bytes",
]


@dataclass(frozen=True)
class DenyRule:
    """Attribute names refused on every object."""

    names: frozenset[str]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    allow: frozenset[str]

    def denies(self, name: str) -> bool:
        if name in self.allow:
            return False
        if name in self.names:
            return True
        return name.startswith(self.prefixes) or name.endswith(self.suffixes)


@dataclass(frozen=True)
class ModuleRule:
    """What the facade of one importable module exposes (see default.toml for the meaning)."""

    name: str
    attrs: frozenset[str]
    classes_from: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    constants: bool = False
    any_submodule: bool = False
    stub_denied: bool = False
    variable_functions: bool = False
    suspend_tripwire: frozenset[str] = frozenset()
    replace: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def matches_function_pattern(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pat) for pat in self.functions)


@dataclass(frozen=True)
class TypeRule:
    """Attribute allowlist for host objects of one type (matched with isinstance)."""

    type_path: str
    attrs: frozenset[str]
    dynamic: frozenset[str] = frozenset()
    class_methods_from: tuple[str, ...] = ()
    tensor_ops: bool = False


@dataclass(frozen=True)
class TripwireRule:
    events: frozenset[str]
    event_prefixes: tuple[str, ...]
    host_import_top_levels: frozenset[str]
    deny_imports: frozenset[str]


@dataclass(frozen=True)
class SandboxPolicy:
    """A parsed, frozen sandbox policy. Build with :func:`default_policy` or :func:`load_policy_bytes`."""

    version: int
    import_aliases: Mapping[str, str]
    modules: Mapping[str, ModuleRule]
    deny: DenyRule
    builtin_names: frozenset[str]
    refused_builtins: frozenset[str]
    max_range: int
    allowed_def_names: frozenset[str]
    allowed_dunder_attrs: frozenset[str]
    readable_dunder_names: frozenset[str]
    bindable_dunder_names: frozenset[str]
    statement_calls_refused: frozenset[str]
    tripwire: TripwireRule
    types: tuple[TypeRule, ...]
    no_construct_bases: tuple[str, ...] = ()
    attribute_key_bases: tuple[str, ...] = ()
    attribute_key_subclassable: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()

    @property
    def allowed_modules(self) -> frozenset[str]:
        """Names of the modules sandboxed code may import (each yields a facade)."""
        return frozenset(self.modules)

    def canonical_module(self, name: str) -> str:
        """Apply import aliases to the top-level package of ``name``."""
        head, sep, rest = name.partition(".")
        target = self.import_aliases.get(head)
        if target is None:
            return name
        return target + sep + rest

    def module_rule(self, name: str) -> ModuleRule | None:
        """The rule for module ``name`` (after aliasing), or None when it may not be imported."""
        name = self.canonical_module(name)
        rule = self.modules.get(name)
        if rule is not None:
            return rule
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            parent = self.modules.get(".".join(parts[:cut]))
            if parent is not None and parent.any_submodule:
                return replace(parent, name=name)
        return None

    def is_module_allowed(self, name: str) -> bool:
        if type(name) is not str or not name or name.startswith("."):
            return False
        if name != "__future__" and any(part.startswith("_") for part in name.split(".")):
            return False
        return self.module_rule(name) is not None

    def with_extras(
        self,
        extra_modules: Mapping[str, Sequence[str]] | None = None,
        import_aliases: Mapping[str, str] | None = None,
    ) -> SandboxPolicy:
        """A policy that also admits ``extra_modules`` (module -> attribute names) and more aliases.

        Additions only: an existing module gains attributes, the deny list still applies to them,
        and an alias may not shadow a module the policy already knows.
        """
        modules = dict(self.modules)
        added: list[str] = []
        for mod, attrs in (extra_modules or {}).items():
            if type(mod) is not str or not mod or any(p.startswith("_") or not p.isidentifier() for p in mod.split(".")):
                raise ValueError(f"invalid module name in extra_modules: {mod!r}")
            if isinstance(attrs, str):
                raise TypeError("extra_modules values must be sequences of attribute names, not str")
            names = frozenset(str(a) for a in attrs)
            bad = [a for a in names if a.startswith("_") or not a.isidentifier()]
            if bad:
                raise ValueError(f"invalid attribute names for {mod}: {sorted(bad)}")
            old = modules.get(mod)
            if old is None:
                modules[mod] = ModuleRule(name=mod, attrs=names)
            else:
                modules[mod] = replace(old, attrs=old.attrs | names)
            added.append(mod)
        aliases = dict(self.import_aliases)
        for alias, target in (import_aliases or {}).items():
            if type(alias) is not str or not alias.isidentifier() or alias.startswith("_"):
                raise ValueError(f"invalid import alias: {alias!r}")
            if type(target) is not str or target.split(".")[0] not in {m.split(".")[0] for m in modules}:
                raise ValueError(f"import alias {alias!r} must point to an allowed module, not {target!r}")
            if alias in {m.split(".")[0] for m in modules} and alias != target:
                raise ValueError(f"import alias {alias!r} would shadow an allowed module")
            aliases[alias] = target
            added.append(f"alias:{alias}")
        return replace(
            self,
            modules=MappingProxyType(modules),
            import_aliases=MappingProxyType(aliases),
            extras=self.extras + tuple(added),
        )


def _strs(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"policy: {where} must be a list of strings")
    return tuple(value)


def load_policy_bytes(data: bytes) -> SandboxPolicy:
    """Parse policy TOML bytes into a frozen :class:`SandboxPolicy` (raises ValueError if malformed)."""
    doc = tomllib.loads(data.decode("utf-8"))
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise ValueError("policy: `version` must be a positive integer")
    imports = doc.get("imports", {})
    deny = doc["deny"]
    builtins_ = doc["builtins"]
    comp = doc["compile"]
    trip = doc["tripwire"]
    modules: dict[str, ModuleRule] = {}
    for name, spec in doc.get("modules", {}).items():
        modules[name] = ModuleRule(
            name=name,
            attrs=frozenset(_strs(spec.get("attrs", []), f"modules.{name}.attrs")),
            classes_from=_strs(spec.get("classes_from", []), f"modules.{name}.classes_from"),
            functions=_strs(spec.get("functions", []), f"modules.{name}.functions"),
            constants=bool(spec.get("constants", False)),
            any_submodule=bool(spec.get("any_submodule", False)),
            stub_denied=bool(spec.get("stub_denied", False)),
            variable_functions=bool(spec.get("variable_functions", False)),
            suspend_tripwire=frozenset(_strs(spec.get("suspend_tripwire", []), f"modules.{name}.suspend")),
            replace=MappingProxyType(dict(spec.get("replace", {}))),
        )
    types = tuple(
        TypeRule(
            type_path=path,
            attrs=frozenset(_strs(spec.get("attrs", []), f"types.{path}.attrs")),
            dynamic=frozenset(_strs(spec.get("dynamic", []), f"types.{path}.dynamic")),
            class_methods_from=_strs(spec.get("class_methods_from", []), f"types.{path}.class_methods_from"),
            tensor_ops=bool(spec.get("tensor_ops", False)),
        )
        for path, spec in doc.get("types", {}).items()
    )
    return SandboxPolicy(
        version=version,
        import_aliases=MappingProxyType(dict(imports.get("aliases", {}))),
        modules=MappingProxyType(modules),
        deny=DenyRule(
            names=frozenset(_strs(deny["names"], "deny.names")),
            prefixes=_strs(deny["prefixes"], "deny.prefixes"),
            suffixes=_strs(deny["suffixes"], "deny.suffixes"),
            allow=frozenset(_strs(deny.get("allow", []), "deny.allow")),
        ),
        builtin_names=frozenset(_strs(builtins_["names"], "builtins.names")),
        refused_builtins=frozenset(_strs(builtins_.get("refused", []), "builtins.refused")),
        max_range=int(builtins_["max_range"]),
        allowed_def_names=frozenset(_strs(comp["allowed_def_names"], "compile.allowed_def_names")),
        allowed_dunder_attrs=frozenset(_strs(comp["allowed_dunder_attrs"], "compile.allowed_dunder_attrs")),
        readable_dunder_names=frozenset(_strs(comp["readable_dunder_names"], "compile.readable_dunder_names")),
        bindable_dunder_names=frozenset(_strs(comp.get("bindable_dunder_names", []), "compile.bindable")),
        statement_calls_refused=frozenset(_strs(comp.get("statement_calls_refused", []), "compile.statement_calls")),
        tripwire=TripwireRule(
            events=frozenset(_strs(trip["events"], "tripwire.events")),
            event_prefixes=_strs(trip["event_prefixes"], "tripwire.event_prefixes"),
            host_import_top_levels=frozenset(_strs(trip["host_import_top_levels"], "tripwire.host_imports")),
            deny_imports=frozenset(_strs(trip["deny_imports"], "tripwire.deny_imports")),
        ),
        types=types,
        no_construct_bases=_strs(doc.get("no_construct", {}).get("bases", []), "no_construct.bases"),
        attribute_key_bases=_strs(doc.get("attribute_keys", {}).get("bases", []), "attribute_keys.bases"),
        attribute_key_subclassable=_strs(
            doc.get("attribute_keys", {}).get("subclassable", []), "attribute_keys.subclassable"
        ),
    )


@functools.lru_cache(maxsize=1)
def default_policy() -> SandboxPolicy:
    """The shipped default policy (``default.toml``), parsed once."""
    data = resources.files(__name__).joinpath("default.toml").read_bytes()
    return load_policy_bytes(data)


@functools.lru_cache(maxsize=1)
def _pipeline_data() -> tuple[str, frozenset[str], frozenset[str], frozenset[str]]:
    data = resources.files(__name__).joinpath("diffusers_pipelines.toml").read_bytes()
    doc = tomllib.loads(data.decode("utf-8"))
    return (
        str(doc["diffusers_version"]),
        frozenset(_strs(doc["pipelines"], "pipelines")),
        frozenset(_strs(doc.get("not_pipelines", []), "not_pipelines"))
        | frozenset(_strs(doc.get("unavailable_pipelines", []), "unavailable_pipelines")),
        frozenset(_strs(doc.get("unavailable_pipelines", []), "unavailable_pipelines")),
    )


def diffusers_pipeline_names() -> frozenset[str]:
    """Names of diffusers' DiffusionPipeline subclasses (generated list; see _gen_diffusers_pipelines)."""
    return _pipeline_data()[1]


def diffusers_non_pipeline_names() -> frozenset[str]:
    """Names ending in ``Pipeline`` that are not DiffusionPipeline subclasses in the installed diffusers
    (modular pipelines, and pipelines whose optional dependencies are missing: dummy objects)."""
    return _pipeline_data()[2]


def diffusers_unavailable_pipeline_names() -> frozenset[str]:
    """Pipelines that are dummy objects in the environment the list was generated in."""
    return _pipeline_data()[3]


def diffusers_list_version() -> str:
    """The diffusers version the shipped pipeline-name list was generated from."""
    return _pipeline_data()[0]
