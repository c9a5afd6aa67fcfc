"""The sandbox policy: what sandboxed pipeline code may import, read, call and define.

Decides nothing by itself: it parses the shipped, versioned data (``default.toml``; the generated
``torch_ops.toml``, ``diffusers_names.toml``, ``transformers_names.toml`` and ``diffusers_pipelines.toml``) once into frozen objects with frozensets for the
hot-path lookups the guards make. The schema is strict: an unknown key, a value of the wrong type or
outside the policy's vocabulary (the ``[implementations]`` tables, ``DYNAMIC_RULES``) raises
:class:`~pipewarden.errors.PolicyError`. Whether the class paths and modules it names exist is
checked by :mod:`pipewarden.sandbox.policy.resolve` (which imports the libraries) before any
sandboxed code runs. An organisation may extend a policy (``with_extras``: more modules, more import
aliases); the global deny list, the tripwire and the compile rules cannot be relaxed that way.

Trusts: only the files shipped inside this package. Never imports torch or diffusers.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from pipewarden.errors import PolicyError

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
    "ReviewedEntry",
    "default_policy",
    "diffusers_pipeline_names",
    "load_policy_bytes",
    "transformers_name_data",
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
    preload: tuple[str, ...] = ()
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
    #: non-library path prefixes host code may read while armed
    readable_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReviewedEntry:
    """One reviewed host class or function of ``[class_creation]``: why it may run, and the first
    Python version that has it (``since_python``; on an older interpreter it cannot be reached)."""

    reason: str
    since_python: tuple[int, int] | None = None


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
    #: ``[values]``: plain value type path -> the attributes readable on its values (exact type)
    value_types: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    builtin_bases: tuple[str, ...] = ()
    reviewed_getattr: tuple[str, ...] = ()
    argument_guards: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: ``[dunders]``: dunder attributes readable at run time (strings / host initialisers and call)
    string_dunders: frozenset[str] = frozenset()
    call_dunders: frozenset[str] = frozenset()
    #: ``[dunders] instance``: instance ``__dict__`` dunders host code itself stores
    instance_dunders: frozenset[str] = frozenset()
    #: ``[component_mutators] prefixes``: host method name families run only on owned components
    mutator_prefixes: tuple[str, ...] = ()
    #: ``[writes] tensor_attributes``: attributes sandboxed code may set on a tensor/array
    tensor_write_attributes: frozenset[str] = frozenset()
    #: ``[arrays]``: top-level packages whose callables are array entry points (and whose own
    #: classes implement the protocols), and the attribute protocols they read from arguments
    array_libraries: frozenset[str] = frozenset()
    array_protocols: frozenset[str] = frozenset()
    #: ``[bases] refused_protocols``: a sandbox class may not derive from a host class defining one
    base_protocols: frozenset[str] = frozenset()
    #: ``[implementations.replace]``: replacement name -> dotted path of its factory
    replacement_impls: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: ``[implementations.argument_guards]``: guard name -> dotted path of the guard
    argument_guard_impls: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: ``[class_creation.*]``: the reviewed host code a class statement may run, path -> entry
    init_subclass_hooks: Mapping[str, ReviewedEntry] = field(default_factory=lambda: MappingProxyType({}))
    set_name_types: Mapping[str, ReviewedEntry] = field(default_factory=lambda: MappingProxyType({}))
    enum_mixin_types: Mapping[str, ReviewedEntry] = field(default_factory=lambda: MappingProxyType({}))
    extras: tuple[str, ...] = ()
    #: ``[file_names]``: attribute -> reason, for class data host code joins onto a directory as
    #: one file name (``names``) or as a dict of file names (``maps``)
    file_name_attrs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    file_name_map_attrs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

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


#: The module whose functions the policy's ``[implementations]`` tables may name (nothing else: the
#: data cannot point a replacement or a guard at an arbitrary host function).
IMPLEMENTATIONS_MODULE = "pipewarden.sandbox.runtime.implementations"
#: Names computed from the object itself (``[types.*].dynamic``).
DYNAMIC_RULES = frozenset({"config-keys", "submodules", "dataclass-fields", "instance-public", "instance-data"})


def _dunder_names(names: frozenset[str], where: str) -> None:
    """Every name of a policy list that names protocol methods is a ``__dunder__`` name."""
    for name in names:
        if not (name.startswith("__") and name.endswith("__") and name[2:-2].isidentifier()):
            raise _fail(f"policy: {where}: {name!r} is not a dunder name")


def _fail(what: str, fix: str = "fix the policy file (see the comments in default.toml)") -> PolicyError:
    return PolicyError(what, rule="policy.malformed", fix=fix)


class _Table:
    """One TOML table read key by key; ``done()`` refuses the keys nobody read (strict schema)."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise _fail(f"policy: [{where}] must be a table")
        self._d: dict[str, object] = value
        self._where = where
        self._used: set[str] = set()

    def _get(self, key: str, required: bool) -> object:
        self._used.add(key)
        if key not in self._d:
            if required:
                raise _fail(f"policy: [{self._where}] lacks the key {key!r}")
            return None
        return self._d[key]

    def strs(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        value = self._get(key, required)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(f"policy: {self._where}.{key} must be a list of strings")
        return tuple(value)

    def flag(self, key: str) -> bool:
        value = self._get(key, False)
        if value is None:
            return False
        if type(value) is not bool:
            raise _fail(f"policy: {self._where}.{key} must be true or false")
        return value

    def integer(self, key: str) -> int:
        value = self._get(key, True)
        if type(value) is not int or value < 1:
            raise _fail(f"policy: {self._where}.{key} must be a positive integer")
        return value

    def str_map(self, key: str, values: frozenset[str] | None = None) -> dict[str, str]:
        value = self._get(key, False)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise _fail(f"policy: {self._where}.{key} must be a table of strings")
        if values is not None:
            for k, v in value.items():
                if v not in values:
                    raise _fail(f"policy: {self._where}.{key}.{k} = {v!r} is not one of {sorted(values)}")
        return dict(value)

    def table(self, key: str, *, required: bool = False) -> _Table:
        value = self._get(key, required)
        return _Table({} if value is None else value, f"{self._where}.{key}" if self._where else key)

    def tables(self, key: str) -> dict[str, _Table]:
        value = self._get(key, False)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _fail(f"policy: [{key}] must be a table of tables")
        return {name: _Table(spec, f"{key}.{name}") for name, spec in value.items()}

    def done(self) -> None:
        unknown = sorted(set(self._d) - self._used)
        if unknown:
            where = f"[{self._where}]" if self._where else "the top level"
            raise _fail(f"policy: unknown key(s) {', '.join(map(repr, unknown))} in {where}")


def _dotted(name: str, where: str) -> str:
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise _fail(f"policy: {where} {name!r} is not a dotted Python name")
    return name


def _impl_table(impls: _Table, key: str) -> dict[str, str]:
    """``[implementations.<key>]``: name -> a function of :data:`IMPLEMENTATIONS_MODULE`."""
    table = impls.str_map(key)
    if not table:
        raise _fail(f"policy: [implementations.{key}] must list at least one implementation")
    for name, path in table.items():
        module, _, attr = _dotted(path, f"implementations.{key}.{name}").rpartition(".")
        if module != IMPLEMENTATIONS_MODULE or attr.startswith("_"):
            raise _fail(
                f"policy: implementations.{key}.{name} = {path!r} is not a public function of {IMPLEMENTATIONS_MODULE}"
            )
    return table


#: ``[class_creation]`` sub-tables: the host hooks ``type.__new__`` may run on a sandbox class.
CLASS_CREATION_TABLES = ("init_subclass", "set_name", "enum_mixins")


def _reviewed_table(parent: _Table, key: str) -> dict[str, ReviewedEntry]:
    """``[class_creation.<key>]``: dotted path -> a non-empty reason, or
    ``{ reason = "...", since_python = "3.N" }``."""
    where = f"class_creation.{key}"
    table = parent.table(key, required=True)
    found: dict[str, ReviewedEntry] = {}
    for path in list(table._d):
        _dotted(path, where)
        if key == "init_subclass" and not path.endswith(".__init_subclass__"):
            raise _fail(f"policy: {where} {path!r} must name an __init_subclass__ (Class.__init_subclass__)")
        value = table._get(path, True)
        since: tuple[int, int] | None = None
        if isinstance(value, dict):
            entry = _Table(value, f"{where}.{path}")
            reason = entry._get("reason", True)
            version = entry._get("since_python", False)
            entry.done()
            if version is not None:
                major, dot, minor = str(version).partition(".")
                if type(version) is not str or not dot or not major.isdigit() or not minor.isdigit():
                    raise _fail(f"policy: {where}.{path}.since_python must be a \"3.N\" string")
                since = (int(major), int(minor))
        else:
            reason = value
        if type(reason) is not str or not reason.strip():
            raise _fail(f"policy: {where}.{path} needs a reason (a non-empty string): why may it run?")
        found[path] = ReviewedEntry(reason, since)
    table.done()
    return found


def load_policy_bytes(data: bytes) -> SandboxPolicy:
    """Parse policy TOML bytes into a frozen :class:`SandboxPolicy`.

    Strict: an unknown key, a value of the wrong type or a value outside the policy's vocabulary
    raises :class:`~pipewarden.errors.PolicyError` (a ``ValueError``). Imports nothing: whether the
    class paths and modules it names resolve is checked by :func:`resolve_policy`.
    """
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _fail(f"policy: not valid UTF-8 TOML ({exc})") from None
    top = _Table(doc, "")
    version = top._get("version", True)
    if type(version) is not int or version < 1:
        raise _fail("policy: `version` must be a positive integer")
    imports = top.table("imports")
    aliases = imports.str_map("aliases")
    imports.done()
    deny = top.table("deny", required=True)
    deny_rule = DenyRule(
        names=frozenset(deny.strs("names", required=True)),
        prefixes=deny.strs("prefixes", required=True),
        suffixes=deny.strs("suffixes", required=True),
        allow=frozenset(deny.strs("allow")),
    )
    deny.done()
    no_construct = top.table("no_construct")
    no_construct_bases = tuple(_dotted(p, "no_construct.bases") for p in no_construct.strs("bases"))
    no_construct.done()
    attribute_keys = top.table("attribute_keys")
    key_bases = tuple(_dotted(p, "attribute_keys.bases") for p in attribute_keys.strs("bases"))
    key_subclassable = tuple(_dotted(p, "attribute_keys.subclassable") for p in attribute_keys.strs("subclassable"))
    attribute_keys.done()
    values = top.table("values", required=True)
    value_types = {_dotted(path, "values"): frozenset(values.strs(path, required=True)) for path in list(values._d)}
    if not value_types:
        raise _fail("policy: [values] must list at least one plain value type")
    values.done()
    classes = top.table("classes", required=True)
    builtin_bases = tuple(_dotted(p, "classes.builtin_bases") for p in classes.strs("builtin_bases", required=True))
    classes.done()
    getattr_ = top.table("getattr", required=True)
    reviewed_getattr = tuple(_dotted(p, "getattr.reviewed") for p in getattr_.strs("reviewed", required=True))
    getattr_.done()
    impls = top.table("implementations", required=True)
    replacement_impls = _impl_table(impls, "replace")
    argument_guard_impls = _impl_table(impls, "argument_guards")
    impls.done()
    argument_guards = top.str_map("argument_guards", frozenset(argument_guard_impls))
    creation = top.table("class_creation", required=True)
    init_subclass_hooks, set_name_types, enum_mixin_types = (
        _reviewed_table(creation, key) for key in CLASS_CREATION_TABLES
    )
    creation.done()
    builtins_ = top.table("builtins", required=True)
    builtin_names = frozenset(builtins_.strs("names", required=True))
    refused_builtins = frozenset(builtins_.strs("refused"))
    max_range = builtins_.integer("max_range")
    builtins_.done()
    dunders = top.table("dunders", required=True)
    string_dunders = frozenset(dunders.strs("strings", required=True))
    call_dunders = frozenset(dunders.strs("calls", required=True))
    instance_dunders = frozenset(dunders.strs("instance", required=True))
    dunders.done()
    mutators = top.table("component_mutators", required=True)
    mutator_prefixes = mutators.strs("prefixes", required=True)
    mutators.done()
    if not mutator_prefixes or not all(p.endswith("_") and p[:-1].isidentifier() and not p.startswith("_") for p in mutator_prefixes):
        raise _fail("policy: component_mutators.prefixes must list public name prefixes ending in '_' (e.g. 'enable_')")
    arrays = top.table("arrays", required=True)
    array_libraries = frozenset(arrays.strs("libraries", required=True))
    array_protocols = frozenset(arrays.strs("protocols", required=True))
    arrays.done()
    for name in array_libraries:
        _dotted(name, "arrays.libraries")
        if "." in name:
            raise _fail(f"policy: arrays.libraries: {name!r} is not a top-level package")
    _dunder_names(array_protocols, "arrays.protocols")
    bases = top.table("bases", required=True)
    base_protocols = frozenset(bases.strs("refused_protocols", required=True))
    bases.done()
    _dunder_names(base_protocols, "bases.refused_protocols")
    writes = top.table("writes", required=True)
    tensor_write_attributes = frozenset(writes.strs("tensor_attributes", required=True))
    writes.done()
    for name in tensor_write_attributes:
        if not name.isidentifier() or name.startswith("_"):
            raise _fail(f"policy: writes.tensor_attributes: {name!r} is not a public attribute name")
    _dunder_names(string_dunders | call_dunders | instance_dunders, "dunders")
    fnames = top.table("file_names", required=True)
    file_name_attrs = fnames.str_map("names")
    file_name_map_attrs = fnames.str_map("maps")
    fnames.done()
    for name in (*file_name_attrs, *file_name_map_attrs):
        if not name.isidentifier() or name.startswith("__"):
            raise _fail(f"policy: file_names: {name!r} is not an attribute name")
    both = sorted(set(file_name_attrs) & set(file_name_map_attrs))
    if both:
        raise _fail(f"policy: file_names: {both} listed under both `names` and `maps`")
    comp = top.table("compile", required=True)
    allowed_def_names = frozenset(comp.strs("allowed_def_names", required=True))
    allowed_dunder_attrs = frozenset(comp.strs("allowed_dunder_attrs", required=True))
    readable_dunder_names = frozenset(comp.strs("readable_dunder_names", required=True))
    bindable_dunder_names = frozenset(comp.strs("bindable_dunder_names"))
    statement_calls_refused = frozenset(comp.strs("statement_calls_refused"))
    comp.done()
    trip = top.table("tripwire", required=True)
    tripwire = TripwireRule(
        events=frozenset(trip.strs("events", required=True)),
        event_prefixes=trip.strs("event_prefixes", required=True),
        host_import_top_levels=frozenset(trip.strs("host_import_top_levels", required=True)),
        deny_imports=frozenset(trip.strs("deny_imports", required=True)),
        readable_paths=trip.strs("readable_paths", required=True),
    )
    for prefix in tripwire.readable_paths:
        if not prefix.startswith("/") or ".." in prefix.split("/"):
            raise _fail(f"policy: tripwire.readable_paths: {prefix!r} is not an absolute path")
    trip.done()
    modules: dict[str, ModuleRule] = {}
    for name, spec in top.tables("modules").items():
        _dotted(name, "module")
        modules[name] = ModuleRule(
            name=name,
            attrs=frozenset(spec.strs("attrs")),
            classes_from=tuple(_dotted(p, f"modules.{name}.classes_from") for p in spec.strs("classes_from")),
            functions=spec.strs("functions"),
            constants=spec.flag("constants"),
            any_submodule=spec.flag("any_submodule"),
            stub_denied=spec.flag("stub_denied"),
            variable_functions=spec.flag("variable_functions"),
            suspend_tripwire=frozenset(spec.strs("suspend_tripwire")),
            preload=tuple(_dotted(p, f"modules.{name}.preload") for p in spec.strs("preload")),
            replace=MappingProxyType(spec.str_map("replace", frozenset(replacement_impls))),
        )
        spec.done()
        _check_callable_arguments(name, modules[name].replace)
    types: list[TypeRule] = []
    by_path: dict[str, TypeRule] = {}
    for path, spec in top.tables("types").items():
        dynamic = spec.strs("dynamic")
        unknown = sorted(set(dynamic) - DYNAMIC_RULES)
        if unknown:
            raise _fail(f"policy: types.{path}.dynamic has unknown rule(s) {unknown}; known: {sorted(DYNAMIC_RULES)}")
        rule = TypeRule(
            type_path=_dotted(path, "type"),
            attrs=frozenset(spec.strs("attrs")),
            dynamic=frozenset(dynamic),
            class_methods_from=tuple(
                _dotted(p, f"types.{path}.class_methods_from") for p in spec.strs("class_methods_from")
            ),
            tensor_ops=spec.flag("tensor_ops"),
        )
        # `extends`: a rule for a subclass adds names to the rule of a base type written ABOVE it
        # (only the most specific matching rule applies to an object, so it repeats the base's)
        base_paths = spec.strs("extends")
        for base_path in base_paths:
            base = by_path.get(base_path)
            if base is None:
                raise _fail(f"policy: types.{path}.extends names {base_path!r}, which is not a [types] table above it")
            rule = replace(
                rule,
                attrs=rule.attrs | base.attrs,
                dynamic=rule.dynamic | base.dynamic,
                class_methods_from=rule.class_methods_from
                + tuple(p for p in base.class_methods_from if p not in rule.class_methods_from),
                tensor_ops=rule.tensor_ops or base.tensor_ops,
            )
        types.append(rule)
        by_path[path] = rule
        spec.done()
    top.done()
    return SandboxPolicy(
        version=version,
        import_aliases=MappingProxyType(aliases),
        modules=MappingProxyType(modules),
        deny=deny_rule,
        builtin_names=builtin_names,
        refused_builtins=refused_builtins,
        max_range=max_range,
        allowed_def_names=allowed_def_names,
        allowed_dunder_attrs=allowed_dunder_attrs,
        readable_dunder_names=readable_dunder_names,
        bindable_dunder_names=bindable_dunder_names,
        statement_calls_refused=statement_calls_refused,
        tripwire=tripwire,
        types=tuple(types),
        no_construct_bases=no_construct_bases,
        attribute_key_bases=key_bases,
        attribute_key_subclassable=key_subclassable,
        value_types=MappingProxyType(value_types),
        builtin_bases=builtin_bases,
        reviewed_getattr=reviewed_getattr,
        argument_guards=MappingProxyType(argument_guards),
        string_dunders=string_dunders,
        call_dunders=call_dunders,
        instance_dunders=instance_dunders,
        mutator_prefixes=mutator_prefixes,
        tensor_write_attributes=tensor_write_attributes,
        array_libraries=array_libraries,
        array_protocols=array_protocols,
        base_protocols=base_protocols,
        replacement_impls=MappingProxyType(replacement_impls),
        argument_guard_impls=MappingProxyType(argument_guard_impls),
        init_subclass_hooks=MappingProxyType(init_subclass_hooks),
        set_name_types=MappingProxyType(set_name_types),
        enum_mixin_types=MappingProxyType(enum_mixin_types),
        file_name_attrs=MappingProxyType(file_name_attrs),
        file_name_map_attrs=MappingProxyType(file_name_map_attrs),
    )


def _check_callable_arguments(module: str, replace: Mapping[str, str]) -> None:
    """A ``callable-arguments`` replacement needs the position of the callable it checks
    (``implementations.CALLABLE_ARGUMENTS``): without one the policy refuses to load."""
    from pipewarden.sandbox.runtime.implementations import CALLABLE_ARGUMENTS

    for attr, impl in replace.items():
        if impl == "callable-arguments" and f"{module}.{attr}" not in CALLABLE_ARGUMENTS:
            raise _fail(
                f"[modules.{module}].replace: {attr} = \"callable-arguments\" names no callable argument",
                "add the function's callable parameter to CALLABLE_ARGUMENTS (sandbox/runtime/implementations.py)",
            )


def _strs(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(f"policy: {where} must be a list of strings")
    return tuple(value)


@functools.lru_cache(maxsize=1)
def default_policy() -> SandboxPolicy:
    """The shipped default policy (``default.toml``), parsed once."""
    data = _read_data("default.toml")
    return load_policy_bytes(data)


def _read_data(name: str) -> bytes:
    """A data file shipped in this package, read through the package's own loader (what
    ``importlib.resources`` does for it, without importing that and what it pulls in: start-up
    time counts in ``pipewarden audit``'s throughput)."""
    loader = __spec__.loader
    if loader is None or not hasattr(loader, "get_data"):  # pragma: no cover - not a file-backed package
        raise _fail(f"cannot read the shipped policy file {name}: the package has no data loader")
    data: bytes = loader.get_data(os.path.join(os.path.dirname(__file__), name))
    return data


@functools.lru_cache(maxsize=1)
def _pipeline_data() -> tuple[str, frozenset[str], frozenset[str], frozenset[str]]:
    data = _read_data("diffusers_pipelines.toml")
    doc = tomllib.loads(data.decode("utf-8"))
    return (
        str(doc["diffusers_version"]),
        frozenset(_strs(doc["pipelines"], "pipelines")),
        frozenset(_strs(doc.get("not_pipelines", []), "not_pipelines"))
        | frozenset(_strs(doc.get("unavailable_pipelines", []), "unavailable_pipelines")),
        frozenset(_strs(doc.get("unavailable_pipelines", []), "unavailable_pipelines")),
    )


@functools.lru_cache(maxsize=1)
def torch_operator_data() -> tuple[str, frozenset[str]]:
    """(torch version, operator names) from the generated ``torch_ops.toml`` (see _gen_torch_ops)."""
    data = _read_data("torch_ops.toml")
    top = _Table(tomllib.loads(data.decode("utf-8")), "")
    if top._get("version", True) != 1:
        raise _fail("torch_ops.toml: unknown `version`")
    torch_version = top._get("torch_version", True)
    if not isinstance(torch_version, str):
        raise _fail("torch_ops.toml: `torch_version` must be a string")
    names = frozenset(top.strs("operators", required=True))
    top.done()
    return torch_version, names


@dataclass(frozen=True)
class GeneratedNames:
    """Names a rule of the policy admits, generated from one library version (see _gen_diffusers_names)."""

    package: str
    library_version: str
    #: the ``class_methods_from`` prefixes the member lists cover
    member_prefixes: frozenset[str]
    #: public classes defined in the package (``classes_from``): class names, or ``module.qualname``
    #: paths when ``qualified``
    classes: frozenset[str]
    #: class qualname -> public names its body defines (``class_methods_from``)
    members: Mapping[str, frozenset[str]]
    qualified: bool = False

    def admits_class(self, cls: type) -> bool:
        """Does the list admit ``cls`` (a class defined in the package)?"""
        if self.qualified:
            return f"{cls.__module__}.{cls.__qualname__}" in self.classes
        return cls.__name__ in self.classes


@functools.lru_cache(maxsize=1)
def diffusers_name_data() -> GeneratedNames:
    """The generated ``diffusers_names.toml``, parsed strictly."""
    data = _read_data("diffusers_names.toml")
    top = _Table(tomllib.loads(data.decode("utf-8")), "")
    if top._get("version", True) != 1:
        raise _fail("diffusers_names.toml: unknown `version`")
    library_version = top._get("diffusers_version", True)
    if not isinstance(library_version, str):
        raise _fail("diffusers_names.toml: `diffusers_version` must be a string")
    prefixes = frozenset(top.strs("class_methods_from_prefixes", required=True))
    classes = frozenset(top.strs("classes", required=True))
    members_table = top.table("members", required=True)
    members = {name: frozenset(members_table.strs(name)) for name in list(members_table._d)}
    members_table.done()
    top.done()
    return GeneratedNames("diffusers", library_version, prefixes, classes, MappingProxyType(members))


def parse_transformers_names(data: bytes) -> GeneratedNames:
    """Parse ``transformers_names.toml`` bytes strictly (see _gen_transformers_names)."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _fail(f"transformers_names.toml: not valid UTF-8 TOML ({exc})") from None
    top = _Table(doc, "")
    if top._get("version", True) != 1:
        raise _fail("transformers_names.toml: unknown `version`")
    library_version = top._get("transformers_version", True)
    if not isinstance(library_version, str):
        raise _fail("transformers_names.toml: `transformers_version` must be a string")
    classes = frozenset(_dotted(p, "transformers_names.toml classes") for p in top.strs("classes", required=True))
    top.done()
    return GeneratedNames(
        "transformers", library_version, frozenset(), classes, MappingProxyType({}), qualified=True
    )


@functools.lru_cache(maxsize=1)
def transformers_name_data() -> GeneratedNames:
    """The generated ``transformers_names.toml``, parsed strictly."""
    return parse_transformers_names(_read_data("transformers_names.toml"))


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
