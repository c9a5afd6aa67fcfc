"""Which components a load builds and which files it reads, decided like diffusers 0.42.

Part of ``pipewarden.loader.components`` (which re-exports these names): model_index.json is
validated into a ``ModelIndex``; ``plan_components`` / ``plan_from_keys`` decide from the
pipeline class's ``__init__`` signature (or, before download, from its source's AST:
``static_signature``) what is built, passed, set to None or given as an option; the variant
and weight-file rules pick the safetensors files; ``files_to_fetch`` / ``hub_selector`` list
what a hub load downloads. No class is resolved and no weight is read here.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pipewarden.errors import InputError, NotAllowedError, PipewardenError
from pipewarden.loader._reading import _parse_json
from pipewarden.loader.component_policy import ModelRule, ProcessorRule, TokenizerRule, component_policy

MODEL_INDEX = "model_index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_COMPONENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


# ---------------------------------------------------------------------------------------------
# model_index.json -> component specs


@dataclass(frozen=True)
class ModelIndex:
    """A validated model_index.json: the entries in order, components as (library, class) or None.

    ``entries`` maps every non-metadata key to its value as diffusers sees it: a component is a
    ``(library, class)`` tuple, an absent optional component (``null`` / ``[null, null]``) is
    ``None``, any other value (``"requires_safety_checker": true``) is a JSON scalar or list.
    """

    entries: Mapping[str, Any]

    @property
    def components(self) -> dict[str, tuple[str, str] | None]:
        return {k: v for k, v in self.entries.items() if v is None or _is_spec(v)}


def _is_spec(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _json_value(value: Any, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return len(value) <= 64 and all(_json_value(v, depth + 1) for v in value)
    return False


def read_model_index(data: bytes) -> ModelIndex:
    """Validate model_index.json into a ``ModelIndex`` (no class is resolved here)."""
    raw = _parse_json(data, MODEL_INDEX)
    entries: dict[str, Any] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or name.startswith("_"):
            continue  # _class_name, _diffusers_version, ...: metadata
        if not _COMPONENT_NAME.fullmatch(name):
            raise InputError(
                f"model_index.json names a component {name!r}",
                rule="components.bad-entry",
                fix="check the weights directory",
            )
        if value is None or (isinstance(value, list) and value == [None, None]):
            entries[name] = None
        elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
            entries[name] = (value[0], value[1])
        elif isinstance(value, list) and len(value) == 2 and value[0] is None:
            entries[name] = None  # [null, "ClassName"]: diffusers skips it too
        elif _json_value(value):
            entries[name] = value  # a pipeline option such as requires_safety_checker
        else:
            raise InputError(
                f"model_index.json entry {name!r} is {str(value)[:80]!r}",
                rule="components.bad-entry",
                fix="check the weights directory",
            )
    return ModelIndex(MappingProxyType(entries))


def parse_model_index(data: bytes) -> dict[str, tuple[str, str] | None]:
    """Component name -> (library, class) or None (absent optional); options are left out."""
    return read_model_index(data).components


# ---------------------------------------------------------------------------------------------
# Which components the pipeline takes (diffusers' from_pretrained rules)


@dataclass(frozen=True)
class LoadPlan:
    """What to build for one pipeline class, decided like diffusers 0.42's ``from_pretrained``.

    ``build``: component name -> (library, class) to build from the weights; ``passed``: names
    given by the caller (they override; built never); ``init_values``: non-component ``__init__``
    arguments (from model_index.json options and the caller); ``none``: components set to None.
    """

    build: Mapping[str, tuple[str, str]]
    passed: tuple[str, ...]
    init_values: Mapping[str, Any]
    none: tuple[str, ...]
    expected: tuple[str, ...]


def signature_keys(cls: type) -> tuple[list[str], list[str]] | None:
    """(expected modules, optional kwargs) as diffusers' ``_get_signature_keys``; None for ``**kwargs``."""
    try:
        params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    optional_components = list(getattr(cls, "_optional_components", None) or [])
    expected = {k for k, v in params.items() if v.default is inspect.Parameter.empty and k != "self"}
    expected -= {k for k, v in params.items() if v.kind is v.VAR_POSITIONAL}
    optional = {k for k, v in params.items() if v.default is not inspect.Parameter.empty}
    for name in list(optional):
        if name in optional_components:
            expected.add(name)
            optional.discard(name)
    return sorted(expected), sorted(optional)


def plan_components(
    cls: type | None, index: ModelIndex, passed: Mapping[str, Any] | frozenset[str] | set[str]
) -> LoadPlan:
    """Decide what to build. ``passed``: the caller's keyword arguments (components or options).

    Raises ``InputError`` for a keyword the pipeline does not take (diffusers would warn and
    ignore it; pipewarden never ignores a keyword) and for a required component that is neither
    in model_index.json nor passed.
    """
    keys = signature_keys(cls) if cls is not None else None
    optional_components = list(getattr(cls, "_optional_components", None) or []) if cls is not None else []
    return plan_from_keys(getattr(cls, "__name__", "the pipeline"), keys, optional_components, index, passed)


def plan_from_keys(
    cls_name: str,
    keys: tuple[list[str], list[str]] | None,
    optional_component_list: Iterable[str],
    index: ModelIndex,
    passed: Mapping[str, Any] | frozenset[str] | set[str],
) -> LoadPlan:
    """``plan_components`` from the signature keys alone (also used statically, before download)."""
    passed_names = set(passed)
    if keys is None:  # **kwargs (or no class): every named component, every passed keyword
        every = {k: v for k, v in index.entries.items() if _is_spec(v) and k not in passed_names}
        absent = tuple(k for k, v in index.entries.items() if v is None and k not in passed_names)
        values = {k: v for k, v in index.entries.items() if v is not None and not _is_spec(v) and k not in passed_names}
        return LoadPlan(MappingProxyType(every), tuple(sorted(passed_names)), MappingProxyType(values), absent, tuple(index.components))
    expected, optional = keys
    optional_components = set(optional_component_list)
    unknown = sorted(passed_names - set(expected) - set(optional))
    if unknown:
        name = cls_name
        raise InputError(
            f"{name} takes no argument {', '.join(repr(u) for u in unknown)} (it takes {', '.join(expected + optional)})",
            rule="components.unknown-keyword",
            fix=f"drop {', '.join(unknown)}, or check its spelling",
        )
    init_dict = {k: v for k, v in index.entries.items() if k in expected or k in optional}
    init_values = {k: init_dict.pop(k) for k in optional if k in init_dict and k not in optional_components}
    none: list[str] = []
    build: dict[str, tuple[str, str]] = {}
    for name, value in init_dict.items():
        if name in passed_names:
            continue
        if value is None:
            none.append(name)
            continue
        if not _is_spec(value):
            raise InputError(
                f"model_index.json gives component {name!r} the value {str(value)[:80]!r}",
                rule="components.bad-entry",
                fix="check the weights directory",
            )
        build[name] = value
    have = set(build) | passed_names | set(init_values)
    missing = set(expected) - have
    if missing and not missing <= (passed_names | optional_components):
        raise InputError(
            f"{cls_name} needs {', '.join(sorted(missing - optional_components))}, "
            "which model_index.json does not name",
            rule="components.missing",
            fix=f"pass {', '.join(f'{m}=...' for m in sorted(missing - optional_components))} to load_pipeline, or fix model_index.json",
        )
    none += [m for m in sorted(missing) if m not in passed_names]
    return LoadPlan(
        MappingProxyType(build), tuple(sorted(passed_names)), MappingProxyType(init_values), tuple(dict.fromkeys(none)), tuple(expected)
    )


def wanted_folders(plan: LoadPlan) -> frozenset[str]:
    """The folders of the weights repository this load reads (the components it builds)."""
    return frozenset(plan.build)


# ---------------------------------------------------------------------------------------------
# Which files: variants


def _weight_re(prefix: str, variant: str | None) -> re.Pattern[str]:
    p = re.escape(prefix)
    if variant is None:
        return re.compile(rf"{p}(-\d{{5}}-of-\d{{5}})?\.safetensors")
    v = re.escape(variant)
    return re.compile(rf"{p}\.({v}|{v}-\d{{5}}-of-\d{{5}})\.safetensors")


def folder_files(files: Iterable[str], folder: str) -> list[str]:
    prefix = folder + "/"
    return sorted(rel[len(prefix) :] for rel in files if rel.startswith(prefix) and "/" not in rel[len(prefix) :])


def model_variants(files: Iterable[str], folders: Iterable[str], variant: str | None) -> dict[str, str]:
    """Folders that have ``variant`` files (diffusers' ``_identify_model_variants`` rule).

    Raises ``InputError`` when a variant is asked for and no folder read by this load has one
    (diffusers raises for hub repos and silently loads the default files from a local folder;
    pipewarden never ignores ``variant=``).
    """
    if variant is None:
        return {}
    if not isinstance(variant, str) or not re.fullmatch(r"[A-Za-z0-9_\-]{1,32}", variant):
        raise ValueError(f"variant must be a short name such as 'fp16', got {variant!r}")
    files = list(files)
    found: dict[str, str] = {}
    folders = list(folders)
    for folder in folders:
        names = folder_files(files, folder)
        if any(len(n.split(".")) > 2 and n.split(".")[1].startswith(variant) for n in names):
            found[folder] = variant
    if not found and folders:
        raise InputError(
            f"variant={variant!r} was asked for, but none of {', '.join(sorted(folders))} has {variant} weight files",
            rule="weights.variant-missing",
            fix="drop variant=, or use a revision that has the variant files",
        )
    return found


def weight_files_for(files: Iterable[str], folder: str, prefix: str, variant: str | None) -> list[str]:
    """The safetensors files of one component (variant or default; sharded or single)."""
    names = folder_files(files, folder)
    pattern = _weight_re(prefix, variant)
    chosen = [n for n in names if pattern.fullmatch(n)]
    if not chosen:
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise NotAllowedError(
                f"{folder}/ holds only pickle weights ({', '.join(pickles)})",
                rule="weights.pickle-refused",
                fix="convert the weights to .safetensors (in an isolated environment) and pin the result",
            )
        want = f"{prefix}.{variant}.safetensors" if variant else f"{prefix}.safetensors"
        raise InputError(
            f"{folder}/ has no {want}" + (" (or its shards)" if True else ""),
            rule="weights.file-missing",
            fix="check the weights directory" + (", or drop variant=" if variant else ""),
        )
    single = f"{prefix}.{variant}.safetensors" if variant else f"{prefix}.safetensors"
    if single in chosen:
        return [f"{folder}/{single}"]
    return [f"{folder}/{n}" for n in chosen]


def files_to_fetch(
    listing: Iterable[str],
    index: ModelIndex,
    plan: LoadPlan | None,
    *,
    variant: str | None,
    extra: Iterable[str] = (),
) -> list[str]:
    """The repository files a load reads, decided before any weight is downloaded (hub loads).

    Only the folders of components the pipeline takes (``plan.build``), only their config and
    data files and the weight files of the chosen variant; no root checkpoints, no folders the
    pipeline does not take.
    """
    listing = list(listing)
    build = dict(plan.build) if plan is not None else {k: v for k, v in index.components.items() if v is not None}
    variants = model_variants(listing, [f for f, spec in build.items() if _is_model_spec(spec)], variant)
    out: list[str] = [MODEL_INDEX]
    policy = component_policy()
    for folder, (library, class_name) in build.items():
        names = folder_files(listing, folder)
        rule = policy.find(library, class_name)
        if isinstance(rule, TokenizerRule):
            out += [f"{folder}/{n}" for n in names if n in rule.files]
            continue
        if isinstance(rule, ProcessorRule):
            out += [f"{folder}/{n}" for n in names if n == rule.config_file]
            continue
        out += [f"{folder}/{n}" for n in names if n.endswith(".json") and not n.endswith(".index.json") and ".index." not in n]
        if library not in ("diffusers",) and rule is None:  # a class of the pipeline file: a model has weights
            try:
                out += weight_files_for(listing, folder, "diffusion_pytorch_model", variant if variant in variants.values() else None)
            except PipewardenError:
                pass
            continue
        if not _is_model_spec((library, class_name)):
            continue
        prefix = rule.weights_prefix if isinstance(rule, ModelRule) else "diffusion_pytorch_model"
        try:
            out += weight_files_for(listing, folder, prefix, variants.get(folder))
        except InputError:
            continue  # reported when the component is built (with the files actually present)
    out += list(extra)
    return sorted(dict.fromkeys(r for r in out if r in set(listing) or r == MODEL_INDEX))


def _is_custom_model(cls: type | None) -> bool:
    if cls is None:
        return False
    from diffusers import ModelMixin

    return issubclass(cls, ModelMixin)


def _is_model_spec(spec: tuple[str, str]) -> bool:
    library, class_name = spec
    rule = component_policy().find(library, class_name)
    if isinstance(rule, ModelRule):
        return True
    if rule is not None:
        return False
    if library != "diffusers":
        return False
    try:
        import diffusers

        cls = getattr(diffusers, class_name, None)
        return isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)
    except Exception:  # noqa: BLE001 - unknown classes are refused when built
        return False


# ---------------------------------------------------------------------------------------------
# Before download: the pipeline's signature read from its source (never executed)


def static_signature(source: bytes, *, filename: str = "pipeline.py") -> tuple[str, tuple[list[str], list[str]] | None, list[str]]:
    """(class name, signature keys or None, optional components) of the pipeline class, from its AST.

    Used to download only what the load will read. ``None`` keys (``**kwargs``, an inherited
    ``__init__``, anything unusual) mean "every component model_index.json names".
    """
    import ast

    from pipewarden.sandbox.scan import require_single_pipeline, scan_source

    result = scan_source(source, filename=filename)
    cand = require_single_pipeline(result, filename=filename)
    node = next(n for n in result.tree.body if isinstance(n, ast.ClassDef) and n.name == cand.name)
    optional: list[str] | None = None
    init = None
    for stmt in node.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
            init = stmt
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == "_optional_components" for t in targets) and stmt.value is not None:
                try:
                    value = ast.literal_eval(stmt.value)
                except ValueError:
                    value = None
                optional = [v for v in value if isinstance(v, str)] if isinstance(value, (list, tuple)) else None
    if optional is None:
        optional = _inherited_optional(cand.bases)
    if init is None or init.args.kwarg is not None or optional is None:
        return cand.name, None, optional or []
    args = init.args
    positional = [a.arg for a in args.posonlyargs + args.args][1:]
    n_defaults = len(args.defaults)
    required = positional[: len(positional) - n_defaults] if n_defaults else positional
    with_default = positional[len(positional) - n_defaults :] if n_defaults else []
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        (with_default if d is not None else required).append(a.arg)
    expected = set(required)
    opt = set(with_default)
    for name in list(opt):
        if name in optional:
            expected.add(name)
            opt.discard(name)
    return cand.name, (sorted(expected), sorted(opt)), optional


def _inherited_optional(bases: tuple[str, ...]) -> list[str] | None:
    import diffusers

    for base in bases:
        short = base.rsplit(".", 1)[-1]
        cls = getattr(diffusers, short, None)
        if isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline):
            return list(getattr(cls, "_optional_components", None) or [])
    return None


def hub_selector(
    source: bytes, *, filename: str, passed: Iterable[str], variant: str | None
) -> Any:
    """A function (listing, model_index bytes) -> the files to download, for ``hub.resolve_weights``."""
    cls_name, keys, optional = static_signature(source, filename=filename)
    passed = frozenset(passed)

    def select(listing: Iterable[str], index_bytes: bytes) -> list[str]:
        index = read_model_index(index_bytes)
        plan = plan_from_keys(cls_name, keys, optional, index, passed)
        return files_to_fetch(listing, index, plan, variant=variant)

    return select
