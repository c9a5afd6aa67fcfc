"""Build pipeline components from a weights snapshot: data in, safetensors only.

What this module decides:

* which components are built: only those the vetted pipeline class's ``__init__`` takes, as
  diffusers 0.42 decides them (``plan_components``): absent / ``[null, null]`` optional
  components become None, options in model_index.json (``requires_safety_checker``) are passed,
  the caller's keyword arguments override, an unknown keyword is refused;
* which classes may be built: diffusers models (``ModelMixin``) and schedulers
  (``SchedulerMixin``), the reviewed transformers classes of ``loader/policy/components.toml``
  (text encoders, tokenizers, image processors, the safety checker) and classes the vetted
  pipeline file itself defines (``custom_classes``); anything else (``["os", "system"]``) is
  refused with ``NotAllowedError``;
* which files are read: configs (JSON, bounded, ``auto_map`` refused), weights from
  ``*.safetensors`` only (the ``variant=`` files where a folder has them), tokenizer data files
  listed in the policy. A pickle format (``.bin``, ``.pt``, ``.ckpt``, ``.pth``, ``.pkl``) is
  refused and never opened, let alone given to ``torch.load``; a folder holding Python files is
  refused;
* that every file is read once and hashed while it is loaded: the bytes that are parsed are the
  bytes that were hashed (no time-of-check/time-of-use gap), and a digest that does not match
  ``expected`` discards everything built from them. Tokenizers are built by transformers from a
  private copy of exactly the verified bytes, with ``local_files_only=True``.

What it trusts: nothing in the snapshot. JSON is parsed into plain values and validated here;
tensors come from ``safetensors`` (which cannot run code).
"""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipewarden.errors import InputError, IntegrityError, NotAllowedError, PipewardenError
from pipewarden.loader.component_policy import ModelRule, ProcessorRule, TokenizerRule, component_policy
from pipewarden.loader.records import RecordSource
from pipewarden.loader.snapshot import Snapshot

MODEL_INDEX = "model_index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_COMPONENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
#: Biggest JSON config we parse (model_index.json, config.json, scheduler_config.json).
MAX_JSON_BYTES = 4 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Reading: once, hashed, compared


def read_verified(
    root: Path,
    relpath: str,
    *,
    expected: Mapping[str, str] | None,
    digests_out: MutableMapping[str, str] | None,
    max_bytes: int | None = None,
    boundary: Path | None = None,
) -> bytes:
    """Read ``root/relpath`` once, hash the bytes, compare with ``expected[relpath]`` if pinned.

    Links are followed only while they stay inside ``boundary`` (default: ``root``); the file
    must be a regular file and is opened without blocking (``pipewarden.fsaccess``).
    """
    data = _read_bytes(root, relpath, max_bytes=max_bytes, boundary=boundary)
    digest = hashlib.sha256(data).hexdigest()
    _compare(relpath, digest, expected)
    if digests_out is not None:
        digests_out[relpath] = digest
    return data


def _read_bytes(root: Path, relpath: str, *, max_bytes: int | None = None, boundary: Path | None = None) -> bytes:
    from pipewarden import fsaccess

    try:
        return fsaccess.read_in(boundary or root, relpath, root=root, max_bytes=max_bytes)
    except InputError as exc:
        if "is missing from" in exc.what:
            raise InputError(
                f"{relpath} is missing from {root}",
                rule="weights.file-missing",
                fix="point load_pipeline at a directory laid out like google/ddpm-cifar10-32",
            ) from None
        if "larger than" in exc.what and max_bytes is not None:
            raise InputError(
                f"{relpath} is larger than {max_bytes} bytes",
                rule="file.too-large",
                fix="check that the weights directory is what you expect",
            ) from None
        raise


def _opener(root: Path, relpath: str, boundary: Path | None) -> Callable[[], int]:
    from pipewarden import fsaccess

    return lambda: fsaccess.open_fd_in(boundary or root, relpath, root=root)


def _compare(relpath: str, digest: str, expected: Mapping[str, str] | None) -> None:
    """Compare with the pin. With any pins given, a file without one is refused too (strict)."""
    if not expected:
        return
    want = expected.get(relpath)
    if want is None:
        raise IntegrityError(
            f"{relpath} (sha256 {digest}) is used by the load but has no pin",
            rule="weights.unpinned-file",
            fix="re-lock the weights (`pipewarden lock --weights ...`) if this file is meant to be used",
        )
    if want != digest:
        raise IntegrityError(
            f"{relpath} has sha256 {digest}, but its pin says {want}",
            rule="weights.digest-mismatch",
            fix="restore the pinned file, or re-pin (update the lock file) if the change is intended",
        )


def _parse_json(data: bytes, relpath: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError(
            f"{relpath} is not valid UTF-8 JSON",
            rule="weights.bad-json",
            fix="check the weights directory",
        ) from None
    if not isinstance(value, dict):
        raise InputError(f"{relpath} must hold a JSON object", rule="weights.bad-json")
    return value


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
# Building


@dataclass
class _Ctx:
    root: Path
    files: tuple[str, ...]
    expected: Mapping[str, str]
    digests_out: MutableMapping[str, str] | None
    torch_dtype: Any
    variants: Mapping[str, str]
    custom_classes: Mapping[tuple[str, str], type]
    preloaded: dict[str, dict[str, Any]]
    boundary: Path | None = None  # links may stay inside it (pipewarden.fsaccess)


def _resolve_diffusers_class(component: str, library: str, class_name: str) -> type:
    if not _IDENT.fullmatch(class_name) or class_name.startswith("_"):
        raise NotAllowedError(
            f"model_index.json names class {class_name!r} for {component!r}",
            rule="components.bad-entry",
            fix="check the weights directory",
        )
    import diffusers
    from diffusers import ModelMixin, SchedulerMixin

    try:
        cls = getattr(diffusers, class_name)
    except AttributeError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, (ModelMixin, SchedulerMixin))):
        raise _not_allowed(component, library, class_name)
    return cls


def _not_allowed(component: str, library: str, class_name: str) -> NotAllowedError:
    return NotAllowedError(
        f"model_index.json asks for component {component!r} as {library}.{class_name}, which is not on the component allowlist",
        rule="components.class-not-allowed",
        fix=f"pass {component}=... to load_pipeline yourself (isolation='inprocess') if you trust that class, "
        "or ask for the class to be reviewed and added to the component policy",
    )


def _resolve_class(component: str, library: str, class_name: str) -> type:
    """Back-compatible: the diffusers model/scheduler class for an entry (others refused)."""
    if library != "diffusers":
        raise _not_allowed(component, library, class_name)
    return _resolve_diffusers_class(component, library, class_name)


def load_components(
    snapshot: Snapshot,
    *,
    torch_dtype: Any = None,
    expected: Mapping[str, str] | None = None,
    digests_out: MutableMapping[str, str] | None = None,
    skip: frozenset[str] | set[str] = frozenset(),
    pipeline_class: type | None = None,
    passed: Mapping[str, Any] | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    custom_classes: Mapping[tuple[str, str], type] | None = None,
    records: RecordSource | None = None,
) -> dict[str, Any]:
    """Build the components of ``snapshot`` that the pipeline takes; return the ``__init__`` kwargs.

    ``expected`` maps relpath -> sha256 pins (lock file, hub metadata); each file read is hashed
    and compared. ``digests_out`` receives relpath -> sha256 of every file read. With
    ``pipeline_class``, what is built follows diffusers' rules (``plan_components``): only the
    components its ``__init__`` takes, absent optional ones as None, options from
    model_index.json, and ``passed`` (the caller's keyword arguments) overriding. Without it,
    every component named in model_index.json is built (minus ``skip``). Files are hashed while
    read, or vouched for by a verified-digest record from ``records`` (none given = hash every
    byte); all configs are read before any weight byte, then the weight files in parallel.
    """
    if use_safetensors is False:
        raise NotAllowedError(
            "use_safetensors=False asks for pickle weights",
            rule="weights.pickle-refused",
            fix="drop use_safetensors=False (or pass True)",
        )
    root = Path(snapshot.root)
    if expected is None:
        expected = {k: v.sha256 for k, v in snapshot.files.items() if v.sha256}
    else:
        expected = {k: v for k, v in expected.items() if v}  # "" = hash and record only
    boundary = snapshot.link_boundary
    data = read_verified(
        root, MODEL_INDEX, expected=expected, digests_out=digests_out, max_bytes=MAX_JSON_BYTES, boundary=boundary
    )
    index = read_model_index(data)
    passed = dict(passed or {})
    if pipeline_class is None:
        for name in skip:
            passed.setdefault(name, None)
    plan = plan_components(pipeline_class, index, passed)
    files = tuple(snapshot.files)
    custom_map = dict(custom_classes or {})
    model_folders = [f for f, spec in plan.build.items() if _is_model_spec(spec) or _is_custom_model(custom_map.get(spec))]
    ctx = _Ctx(
        boundary=boundary,
        root=root,
        files=files,
        expected=expected,
        digests_out=digests_out,
        torch_dtype=torch_dtype,
        variants=model_variants(files, model_folders, variant),
        custom_classes=custom_map,
        preloaded={},
    )
    weight_files: list[str] = []
    from diffusers import ModelMixin

    for name, spec in plan.build.items():
        custom = ctx.custom_classes.get((spec[0], spec[1]))
        if custom is not None and not issubclass(custom, ModelMixin):
            continue
        if custom is None and not _is_model_spec(spec):
            continue
        rule = component_policy().find(*spec)
        prefix = rule.weights_prefix if isinstance(rule, ModelRule) else "diffusion_pytorch_model"
        weight_files += weight_files_for(files, name, prefix, ctx.variants.get(name))
    # The weight files are read (and hashed, unless a record vouches) in background threads while
    # the components are built here from their verified configs (on the meta device); each
    # model waits for its own files, whose digests were compared before any tensor existed.
    reads = _PendingReads(root, weight_files, expected=expected, digests_out=digests_out, records=records, boundary=boundary)
    ctx.preloaded = reads  # type: ignore[assignment]
    out: dict[str, Any] = {}
    if pipeline_class is None:
        out.update({k: None for k in plan.none})
        out.update({k: v for k, v in passed.items() if k not in skip})
    try:
        for name, (library, class_name) in plan.build.items():
            out[name] = build_component(ctx, name, library, class_name)
        reads.finish()  # every file read (and every digest compared), used or not
    finally:
        reads.close()
    if pipeline_class is not None:
        out.update(plan.init_values)
        out.update({k: None for k in plan.none})
        out.update(passed)
    _warm_processors(out.values())
    flush = getattr(records, "flush", None)
    if flush is not None:
        flush()
    return out


def _warm_processors(components: Iterable[Any]) -> None:
    """Run each image processor once on a blank image, here, in trusted loader code.

    transformers validates processor keyword arguments through huggingface_hub, which on first
    use per processor class tries ``import annotationlib`` (Python >= 3.14 only); made later
    from a pipeline's frame, that lazy import is refused by the tripwire (both modes). The
    validation class is cached after the first call, so calling once here is enough.
    """
    try:
        from transformers.image_processing_utils import ImageProcessingMixin
    except ImportError:  # pragma: no cover - transformers is optional
        return
    for comp in components:
        if isinstance(comp, ImageProcessingMixin) and callable(comp):
            try:
                from PIL import Image

                comp(Image.new("RGB", (8, 8)), return_tensors="pt")
            except Exception:  # noqa: BLE001, S110 - a warm-up only; the real call reports errors
                pass


def build_component(ctx: _Ctx, name: str, library: str, class_name: str) -> Any:
    custom = ctx.custom_classes.get((library, class_name))
    if custom is not None:
        return _build_custom(ctx, name, custom)
    rule = component_policy().find(library, class_name)
    if isinstance(rule, ModelRule):
        return _build_transformers_model(ctx, name, rule)
    if isinstance(rule, TokenizerRule):
        return _build_tokenizer(ctx, name, rule)
    if isinstance(rule, ProcessorRule):
        return _build_processor(ctx, name, rule)
    if library != "diffusers":
        raise _not_allowed(name, library, class_name)
    cls = _resolve_diffusers_class(name, library, class_name)
    return _build(cls, ctx, name)


def _require_folder(ctx: _Ctx, sub: str) -> list[str]:
    names = folder_files(ctx.files, sub)
    if not names:
        raise InputError(
            f"component folder {sub}/ is missing from {ctx.root}",
            rule="weights.file-missing",
            fix="check the weights directory",
        )
    return names


def _read_json(ctx: _Ctx, relpath: str) -> dict[str, Any]:
    data = read_verified(
        ctx.root, relpath, expected=ctx.expected, digests_out=ctx.digests_out, max_bytes=MAX_JSON_BYTES, boundary=ctx.boundary
    )
    value = _parse_json(data, relpath)
    _refuse_code_keys(value, relpath)
    return value


def _refuse_code_keys(value: Any, relpath: str, depth: int = 0) -> None:
    """``auto_map`` (and ``trust_remote_code``) name code to import: refused wherever they appear."""
    if depth > 8:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _CODE_KEYS:
                raise NotAllowedError(
                    f"{relpath} has {key!r}, which asks the library to import code from the repository",
                    rule="components.code-reference",
                    fix=f"remove {key!r} from {relpath}; the allowlisted class is built without it",
                )
            _refuse_code_keys(item, relpath, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _refuse_code_keys(item, relpath, depth + 1)


_CODE_KEYS = frozenset({"auto_map", "trust_remote_code", "custom_pipelines"})


def _refuse_code_files(ctx: _Ctx, sub: str, names: list[str]) -> None:
    code = [n for n in names if n.endswith(_CODE_SUFFIXES) or n.endswith(PICKLE_SUFFIXES)]
    if code:
        raise NotAllowedError(
            f"{sub}/ holds code or pickle files ({', '.join(code)})",
            rule="components.code-file",
            fix=f"remove {', '.join(code)} from {sub}/",
        )


_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".pyd", ".dylib")


def _load_weights(ctx: _Ctx, sub: str, prefix: str) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for rel in weight_files_for(ctx.files, sub, prefix, ctx.variants.get(sub)):
        loaded = ctx.preloaded.pop(rel, None)  # drop our reference once it is built
        if loaded is None:
            loaded = _load_safetensors(ctx.root, rel, expected=ctx.expected, digests_out=ctx.digests_out, boundary=ctx.boundary)
        for key, tensor in loaded.items():
            if key in state:
                raise InputError(f"{rel} repeats tensor {key!r}", rule="components.weights-mismatch")
            state[key] = tensor
    return state


def _build(cls: Any, ctx: _Ctx, sub: str) -> Any:
    from diffusers import ModelMixin, SchedulerMixin

    _require_folder(ctx, sub)
    if issubclass(cls, SchedulerMixin):
        cfg_name = getattr(cls, "config_name", None) or "scheduler_config.json"
        return _build_scheduler(cls, _read_json(ctx, f"{sub}/{cfg_name}"), where=f"{sub}/")
    assert issubclass(cls, ModelMixin)
    config = _read_json(ctx, f"{sub}/config.json")
    return _instantiate_model(
        cls, config, lambda: _load_weights(ctx, sub, "diffusion_pytorch_model"), torch_dtype=ctx.torch_dtype, where=f"{sub}/"
    )


def _build_custom(ctx: _Ctx, sub: str, cls: type) -> Any:
    """A class the vetted pipeline file defines (e.g. its own scheduler): built from its config.

    Its ``__init__`` is sandboxed code (the class came out of the sandbox), so building it runs
    under the same policy as the pipeline. A model class gets its safetensors weights as well.
    """
    from diffusers import ModelMixin

    names = _require_folder(ctx, sub)
    cfg_name = getattr(cls, "config_name", None)
    if not isinstance(cfg_name, str) or cfg_name not in names:
        cfg_name = next((n for n in ("scheduler_config.json", "config.json") if n in names), None)
    if cfg_name is None:
        raise InputError(
            f"{sub}/ has no config file for {cls.__name__}",
            rule="weights.file-missing",
            fix=f"save the component's config in {sub}/ (scheduler_config.json or config.json)",
        )
    config = _read_json(ctx, f"{sub}/{cfg_name}")
    if issubclass(cls, ModelMixin):
        state = _load_weights(ctx, sub, "diffusion_pytorch_model")
        return _instantiate_model(cls, config, state, torch_dtype=ctx.torch_dtype, where=f"{sub}/")
    from_config = getattr(cls, "from_config", None)
    if from_config is None:  # pragma: no cover - companions are ConfigMixin subclasses
        raise NotAllowedError(
            f"{cls.__name__} (defined by the pipeline file) has no from_config",
            rule="components.class-not-allowed",
            fix="derive the class from a diffusers scheduler or ConfigMixin",
        )
    return from_config(config)


def _build_transformers_model(ctx: _Ctx, sub: str, rule: ModelRule) -> Any:
    import importlib

    import transformers

    _require_folder(ctx, sub)
    cls = getattr(importlib.import_module(rule.module), rule.class_name)
    config_cls = getattr(transformers, rule.config_class)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise NotAllowedError(f"{rule.module}.{rule.class_name} is not a transformers model", rule="components.class-not-allowed")
    raw = _read_json(ctx, f"{sub}/config.json")
    try:
        config = config_cls.from_dict(raw)
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(
            f"{sub}/config.json does not build a {rule.config_class}: {exc}",
            rule="components.bad-config",
            fix="check the weights directory",
        ) from None
    state = _load_weights(ctx, sub, rule.weights_prefix)
    return _transformers_model(cls, config, state, dtype=ctx.torch_dtype, where=sub, rule=rule)


def transformers_model_from_state(rule: ModelRule, raw_config: dict[str, Any], state: dict[str, Any], *, dtype: Any, where: str) -> Any:
    """An allowlisted transformers model from a config dict and tensors (a component sent as data)."""
    import importlib

    import transformers

    _refuse_code_keys(raw_config, where)
    cls = getattr(importlib.import_module(rule.module), rule.class_name)
    config_cls = getattr(transformers, rule.config_class)
    try:
        config = config_cls.from_dict(raw_config)
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f"{where}: config does not build a {rule.config_class}: {exc}", rule="components.bad-config") from None
    return _transformers_model(cls, config, state, dtype=dtype, where=where, rule=rule)


def _transformers_model(cls: Any, config: Any, state: dict[str, Any], *, dtype: Any, where: str, rule: ModelRule) -> Any:
    model: Any
    info: dict[str, Any]
    try:
        # transformers' own loader, given the verified tensors: it applies the same dtype rules
        # (dtype=None -> the config's dtype), tied weights and fp32-kept modules as from_pretrained
        # on a folder, and reads no file (no path is given).
        loaded: Any = cls.from_pretrained(
            None, config=config, state_dict=state, dtype=dtype, output_loading_info=True, local_files_only=True
        )
        model, info = loaded
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        raise InputError(
            f"{where}/ weights do not fit the {rule.class_name} config ({str(exc).splitlines()[0][:300]})",
            rule="components.weights-mismatch",
            fix="check the weights directory",
        ) from None
    bad = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        first = next(v for v in bad.values() if v)[0]
        raise InputError(
            f"{where}/ weights do not fit the {rule.class_name} config: "
            f"{len(bad['missing_keys'])} missing, {len(bad['unexpected_keys'])} unexpected, "
            f"{len(bad['mismatched_keys'])} mismatched tensors (first: {first})",
            rule="components.weights-mismatch",
            fix="check the weights directory",
        )
    model.eval()
    return model


def _build_tokenizer(ctx: _Ctx, sub: str, rule: TokenizerRule) -> Any:
    names = _require_folder(ctx, sub)
    _refuse_code_files(ctx, sub, names)
    policy = component_policy()
    blobs: dict[str, bytes] = {}
    for name in rule.files:
        if name not in names:
            continue
        rel = f"{sub}/{name}"
        limit = policy.max_json_bytes if name.endswith(".json") and name != "tokenizer.json" else policy.max_data_file_bytes
        data = read_verified(
            ctx.root, rel, expected=ctx.expected, digests_out=ctx.digests_out, max_bytes=limit, boundary=ctx.boundary
        )
        if name.endswith(".json"):
            _refuse_code_keys(_parse_json(data, rel) if name != "added_tokens.json" else {}, rel)
        blobs[name] = data
    if not blobs:
        raise InputError(f"{sub}/ has none of the tokenizer files {', '.join(rule.files)}", rule="weights.file-missing")
    return tokenizer_from_files(rule, blobs, where=sub)


def tokenizer_from_files(rule: TokenizerRule, blobs: Mapping[str, bytes], *, where: str) -> Any:
    """Build an allowlisted tokenizer from verified data files (name -> bytes), reading nothing else.

    transformers reads a private copy of exactly these bytes (``local_files_only``, no remote code).
    """
    import shutil
    import tempfile

    import transformers

    cls = getattr(transformers, rule.class_name)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedTokenizerBase)):
        raise NotAllowedError(f"transformers.{rule.class_name} is not a tokenizer", rule="components.class-not-allowed")
    for name, data in blobs.items():
        if name not in rule.files:
            raise NotAllowedError(f"{where}: {name} is not a {rule.class_name} data file", rule="components.code-file")
        if name.endswith(".json") and name != "added_tokens.json":
            _refuse_code_keys(_parse_json(data, f"{where}/{name}"), f"{where}/{name}")
    tmp = tempfile.mkdtemp(prefix="pipewarden-tok-", dir=os.environ.get("TMPDIR") or None)
    try:
        for name, data in blobs.items():
            fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        try:
            return cls.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise InputError(
                f"{where}/ does not build a {rule.class_name}: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}",
                rule="components.bad-config",
                fix="check the weights directory",
            ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_processor(ctx: _Ctx, sub: str, rule: ProcessorRule) -> Any:

    names = _require_folder(ctx, sub)
    _refuse_code_files(ctx, sub, names)
    if rule.config_file not in names:
        raise InputError(f"{sub}/ has no {rule.config_file}", rule="weights.file-missing")
    config = _read_json(ctx, f"{sub}/{rule.config_file}")
    return processor_from_config(rule, config, where=sub)


def processor_from_config(rule: ProcessorRule, config: dict[str, Any], *, where: str) -> Any:
    import transformers

    cls = getattr(transformers, rule.build_as)
    if not (isinstance(cls, type) and issubclass(cls, transformers.image_processing_utils.ImageProcessingMixin)):
        raise NotAllowedError(f"transformers.{rule.build_as} is not an image processor", rule="components.class-not-allowed")
    try:
        return cls.from_dict(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(
            f"{where}/{rule.config_file} does not build a {rule.build_as}: {exc}",
            rule="components.bad-config",
            fix="check the weights directory",
        ) from None


def _load_safetensors(
    root: Path, relpath: str, *, expected, digests_out, records: RecordSource | None = None, boundary: Path | None = None
) -> dict[str, Any]:
    """Read once (hashing while reading unless a record vouches), compare the digest, then parse.

    The tensors are views of a private buffer holding exactly the bytes that were verified; they
    are only created after the digest matched its pin.
    """
    tensors, digest = _verify_and_parse(root, relpath, expected=expected, records=records, boundary=boundary)
    if digests_out is not None:
        digests_out[relpath] = digest
    return tensors


def _verify_and_parse(
    root: Path, relpath: str, *, expected, records: RecordSource | None, boundary: Path | None = None
) -> tuple[dict[str, Any], str]:
    from pipewarden.loader._safetensors import parse
    from pipewarden.loader.records import NoRecords, read_verified_file

    path = root / relpath
    try:
        got = read_verified_file(
            path,
            expected=expected.get(relpath),
            records=records or NoRecords(),
            where=relpath,
            open_fd=_opener(root, relpath, boundary),
        )
    except FileNotFoundError:
        raise InputError(f"{relpath} is missing from {root}", rule="weights.file-missing") from None
    except OSError as exc:
        raise InputError(
            f"cannot read {path}: {exc.strerror}",
            rule="file.unreadable",
            fix="check the weights directory",
        ) from None
    _compare(relpath, got.sha256, expected)  # raises before any tensor exists
    return parse(got.data, where=relpath), got.sha256  # type: ignore[arg-type]


def read_weight_files(
    root: Path,
    relpaths: list[str],
    *,
    expected: Mapping[str, str],
    digests_out: MutableMapping[str, str] | None,
    records: RecordSource | None,
    boundary: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Read, verify and parse several safetensors files, in parallel across cores.

    Each file is read once; files without a trusted record are hashed while they are read
    (hashlib and file reads release the GIL, so threads use every core). Every digest is
    compared with its pin before any of its tensors exists; the first failure is raised.
    """
    if not relpaths:
        return {}
    jobs = sorted(dict.fromkeys(relpaths), key=lambda rel: -_size_or_zero(root / rel))  # biggest first
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    done: dict[str, tuple[dict[str, Any], str]] = {}
    if workers == 1:
        for rel in jobs:
            done[rel] = _verify_and_parse(root, rel, expected=expected, records=records, boundary=boundary)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pipewarden-read") as pool:
            # Each job runs in a copy of this context: trusted reading stays trusted (in a worker,
            # a fresh thread would start with the process-wide tripwire armed).
            futures = {
                rel: pool.submit(
                    contextvars.copy_context().run, _verify_and_parse, root, rel, expected=expected, records=records, boundary=boundary
                )
                for rel in jobs
            }
            try:
                for rel in jobs:
                    done[rel] = futures[rel].result()
            except BaseException:
                for f in futures.values():
                    f.cancel()
                raise
    if digests_out is not None:
        for rel in relpaths:
            digests_out[rel] = done[rel][1]
    return {rel: tensors for rel, (tensors, _) in done.items()}


class _PendingReads:
    """``read_weight_files`` started in the background; ``pop(rel)`` waits for that file.

    Used as ``_Ctx.preloaded``: the main thread builds components while the files are read and
    verified in parallel (reads and hashlib release the GIL). A failed read raises from ``pop``
    (or from ``finish`` for a file no component took); ``close`` cancels what has not started.
    """

    def __init__(self, root: Path, relpaths: list[str], *, expected, digests_out, records, boundary: Path | None = None) -> None:
        self._root = root
        self._expected = expected
        self._digests_out = digests_out
        self._order = list(dict.fromkeys(relpaths))
        self._futures: dict[str, Any] = {}
        self._pool: ThreadPoolExecutor | None = None
        if not self._order:
            return
        jobs = sorted(self._order, key=lambda rel: -_size_or_zero(root / rel))  # biggest first
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1)), thread_name_prefix="pipewarden-read")
        for rel in jobs:
            # each job runs in a copy of this context (a worker's fresh thread would otherwise
            # start with the process-wide tripwire armed)
            self._futures[rel] = self._pool.submit(
                contextvars.copy_context().run, _verify_and_parse, root, rel, expected=expected, records=records,
                boundary=boundary,
            )

    def pop(self, rel: str, default: Any = None) -> Any:
        future = self._futures.pop(rel, None)
        if future is None:
            return default
        tensors, digest = future.result()
        if self._digests_out is not None:
            self._digests_out[rel] = digest
        return tensors

    def finish(self) -> None:
        for rel in [r for r in self._order if r in self._futures]:
            self.pop(rel)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


#: Largest ``num_train_timesteps`` a scheduler config may ask for (diffusers' schedulers allocate
#: arrays of that length when built; real ones use 1000).
MAX_SCHEDULER_TIMESTEPS = 1_000_000
#: Non-persistent buffers (recomputed by ``__init__``, not in the weights) may add at most this
#: many elements beyond the weights themselves when a model is rebuilt on the CPU.
MAX_EXTRA_BUFFER_ELEMENTS = 1 << 26


def _config_error(cls: Any, where: str, exc: BaseException, name: str = "config.json") -> InputError:
    detail = " ".join(str(exc).split())[:300] or type(exc).__name__
    return InputError(
        f"{where}{name} does not build a {cls.__name__}: {type(exc).__name__}: {detail}",
        rule="components.bad-config",
        fix="check the weights directory",
    )


def _build_scheduler(cls: Any, config: dict[str, Any], *, where: str) -> Any:
    """``cls.from_config`` with the config's failures as clean errors and its sizes bounded."""
    steps = config.get("num_train_timesteps")
    if steps is not None and (type(steps) is not int or not 0 < steps <= MAX_SCHEDULER_TIMESTEPS):
        raise InputError(
            f"{where}scheduler config asks for num_train_timesteps={steps!r}",
            rule="components.bad-config",
            fix=f"num_train_timesteps is a positive integer of at most {MAX_SCHEDULER_TIMESTEPS}; check the weights directory",
        )
    try:
        return cls.from_config(config)
    except (KeyboardInterrupt, SystemExit, MemoryError, PipewardenError):
        raise
    except Exception as exc:  # noqa: BLE001 - third-party validation (NotImplementedError, ...): input error
        raise _config_error(cls, where, exc, "scheduler config") from None


def _numel(tensors: Iterable[Any]) -> int:
    return sum(int(t.numel()) for t in tensors)


def _instantiate_model(
    cls: Any,
    config: dict[str, Any],
    state: dict[str, Any] | Callable[[], dict[str, Any]],
    *,
    torch_dtype,
    where: str,
    keep_dtypes: bool = False,
) -> Any:
    """Build the model from its config on the meta device, then assign the loaded tensors.

    Same parameters and dtypes as diffusers' ``from_pretrained`` (which also skips random init):
    floating tensors take ``torch_dtype`` (default: float32, the dtype diffusers builds the model
    in), except the class's ``_keep_in_fp32_modules``; the model is put in eval mode.
    """
    import torch

    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except (KeyboardInterrupt, SystemExit, MemoryError, PipewardenError):
        raise
    except Exception as exc:  # noqa: BLE001 - ZeroDivisionError (norm_num_groups: 0), ...: input error
        raise _config_error(cls, where, exc) from None
    if callable(state):  # the tensors, once their file is read and verified (see _PendingReads)
        state = state()
    # Nothing is built at the config's size before its parameter count matched the tensors: an
    # enormous config with small weights is refused here, on the meta device.
    extra_buffers = _numel(b for n, b in model.named_buffers() if n not in model.state_dict())
    wanted = _numel(model.parameters()) + _numel(model.buffers()) - extra_buffers
    have = _numel(state.values())
    if wanted > have:
        raise InputError(
            f"{where}config.json describes {wanted} weight elements but the safetensors files hold {have}",
            rule="components.weights-mismatch",
            fix="check the weights directory (checked before anything is allocated)",
        )
    keep = list(getattr(cls, "_keep_in_fp32_modules", None) or [])
    target = torch_dtype if torch_dtype is not None else torch.get_default_dtype()
    for key, tensor in list(state.items()):
        if keep_dtypes or not tensor.is_floating_point():
            continue
        want = torch.float32 if keep and any(m in key.split(".") for m in keep) else target
        if tensor.dtype != want:
            state[key] = tensor.to(want)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise InputError(
            f"{where} weights do not fit the {cls.__name__} config ({str(exc).splitlines()[0]})",
            rule="components.weights-mismatch",
            fix="check the weights directory",
        ) from None
    if missing or unexpected:
        raise InputError(
            f"{where} weights do not fit the {cls.__name__} config: "
            f"{len(missing)} missing, {len(unexpected)} unexpected tensors"
            f" (first: {(list(missing) + list(unexpected))[0]})",
            rule="components.weights-mismatch",
            fix="check the weights directory",
        )
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:  # non-persistent buffers: rebuild on the CPU and copy the weights in
        if extra_buffers > MAX_EXTRA_BUFFER_ELEMENTS:
            raise InputError(
                f"{where}config.json asks for {extra_buffers} elements of computed buffers",
                rule="components.bad-config",
                fix=f"computed (non-persistent) buffers are bounded ({MAX_EXTRA_BUFFER_ELEMENTS} elements); check the weights directory",
            )
        try:
            model = cls.from_config(config)
        except (KeyboardInterrupt, SystemExit, MemoryError, PipewardenError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise _config_error(cls, where, exc) from None
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        model.load_state_dict(state, strict=True)
    model.eval()
    return model


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


def planned_weight_files(
    snapshot: Snapshot,
    *,
    expected: Mapping[str, str] | None = None,
    skip: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    """The diffusers weight files a full load would read (default variant; no weights read)."""
    root = Path(snapshot.root)
    index = read_verified(
        root, MODEL_INDEX, expected=_pins(snapshot, expected), digests_out=None, max_bytes=MAX_JSON_BYTES,
        boundary=snapshot.link_boundary,
    )
    out: list[str] = []
    for name, spec in parse_model_index(index).items():
        if spec is None or name in skip or not _is_model_spec(spec):
            continue
        rule = component_policy().find(*spec)
        prefix = rule.weights_prefix if isinstance(rule, ModelRule) else "diffusion_pytorch_model"
        out += weight_files_for(snapshot.files, name, prefix, None)
    return out


def _pins(snapshot: Snapshot, expected: Mapping[str, str] | None) -> dict[str, str]:
    if expected is None:
        return {k: v.sha256 for k, v in snapshot.files.items() if v.sha256}
    return {k: v for k, v in expected.items() if v}  # "" = hash and record only


def worker_records(
    snapshot: Snapshot,
    *,
    expected: Mapping[str, str] | None,
    records: RecordSource,
    skip: frozenset[str] | set[str] = frozenset(),
    variant: str | None = None,
) -> list[list[object]]:
    """Host side of a process-mode load: records vouching for the weight files the worker reads.

    Files without a trusted record are hashed here (streaming, in parallel across cores) and
    recorded in the host's store; the worker gets the records (never the store) and still
    checks each against the fstat of its own descriptor. Anything that goes wrong here only
    means the worker hashes that file itself.
    """
    from pipewarden.loader.records import verify_file_digest

    root = Path(snapshot.root)
    pins = _pins(snapshot, expected)
    try:  # without importing diffusers: which folders hold weights (a guess only costs speed)
        index = read_verified(
            root, MODEL_INDEX, expected=pins, digests_out=None, max_bytes=MAX_JSON_BYTES, boundary=snapshot.link_boundary
        )
        folders = [
            name
            for name, spec in parse_model_index(index).items()
            if spec is not None and name not in skip and any(rel.endswith(".safetensors") for rel in folder_files(snapshot.files, name))
        ]
        variants = model_variants(snapshot.files, folders, variant) if variant else {}
        files = []
        for name in folders:
            spec = parse_model_index(index)[name]
            rule = component_policy().find(*spec) if spec is not None else None
            prefix = rule.weights_prefix if isinstance(rule, ModelRule) else "diffusion_pytorch_model"
            try:
                files += weight_files_for(snapshot.files, name, prefix, variants.get(name))
            except PipewardenError:
                continue
    except Exception:  # the worker's own load reports the problem with the usual error
        return []
    if not files:
        return []
    files.sort(key=lambda rel: -_size_or_zero(root / rel))
    workers = max(1, min(len(files), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pipewarden-verify") as pool:
        found = list(pool.map(lambda rel: verify_file_digest(
                    root / rel, expected=pins.get(rel), records=records, open_fd=_opener(root, rel, snapshot.link_boundary)
                ), files))
    flush = getattr(records, "flush", None)
    if flush is not None:
        flush()
    return [r.to_json() for r in found if r is not None]
