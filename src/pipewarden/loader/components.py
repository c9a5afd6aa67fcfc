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

Where it lives: this module holds the load itself (``load_components``) and the host side of a
process-mode load (``worker_records``); ``_reading`` reads and verifies files, ``_selection``
decides what is built and which files are read, ``_building`` builds each component. Their
public names (and the private ones other modules use) are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipewarden.errors import NotAllowedError, PipewardenError
from pipewarden.loader._building import (
    _build,
    _build_custom,
    _build_processor,
    _build_tokenizer,
    _build_transformers_model,
    _Ctx,
    _instantiate_model,
    _load_weights,
    _not_allowed,
    _read_json,
    _refuse_code_files,
    _require_folder,
    _resolve_class,
    _resolve_diffusers_class,
    _transformers_model,
    _warm_processors,
    build_component,
    processor_from_config,
    tokenizer_from_files,
    transformers_model_from_state,
)
from pipewarden.loader._reading import (
    MAX_JSON_BYTES,
    _compare,
    _load_safetensors,
    _opener,
    _parse_json,
    _PendingReads,
    _read_bytes,
    _refuse_code_keys,
    _size_or_zero,
    _verify_and_parse,
    read_verified,
    read_weight_files,
)
from pipewarden.loader._selection import (
    MODEL_INDEX,
    PICKLE_SUFFIXES,
    LoadPlan,
    ModelIndex,
    _is_custom_model,
    _is_model_spec,
    _is_spec,
    files_to_fetch,
    folder_files,
    hub_selector,
    model_variants,
    parse_model_index,
    plan_components,
    plan_from_keys,
    read_model_index,
    signature_keys,
    static_signature,
    wanted_folders,
    weight_files_for,
)
from pipewarden.loader.component_policy import ModelRule, ProcessorRule, TokenizerRule, component_policy
from pipewarden.loader.records import RecordSource
from pipewarden.loader.snapshot import Snapshot

__all__ = [
    "MAX_JSON_BYTES",
    "MODEL_INDEX",
    "PICKLE_SUFFIXES",
    "LoadPlan",
    "ModelIndex",
    "ModelRule",
    "ProcessorRule",
    "TokenizerRule",
    "_Ctx",
    "_PendingReads",
    "_build",
    "_build_custom",
    "_build_processor",
    "_build_tokenizer",
    "_build_transformers_model",
    "_compare",
    "_instantiate_model",
    "_is_custom_model",
    "_is_model_spec",
    "_is_spec",
    "_load_safetensors",
    "_load_weights",
    "_not_allowed",
    "_parse_json",
    "_read_bytes",
    "_read_json",
    "_refuse_code_files",
    "_refuse_code_keys",
    "_require_folder",
    "_resolve_class",
    "_resolve_diffusers_class",
    "_size_or_zero",
    "_transformers_model",
    "_verify_and_parse",
    "_warm_processors",
    "build_component",
    "component_policy",
    "files_to_fetch",
    "folder_files",
    "hub_selector",
    "load_components",
    "model_variants",
    "parse_model_index",
    "planned_weight_files",
    "plan_components",
    "plan_from_keys",
    "processor_from_config",
    "read_model_index",
    "read_verified",
    "read_weight_files",
    "signature_keys",
    "static_signature",
    "tokenizer_from_files",
    "transformers_model_from_state",
    "wanted_folders",
    "weight_files_for",
    "worker_records",
]


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
    data = read_verified(root, MODEL_INDEX, expected=expected, digests_out=digests_out, max_bytes=MAX_JSON_BYTES)
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
    reads = _PendingReads(root, weight_files, expected=expected, digests_out=digests_out, records=records)
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


def planned_weight_files(
    snapshot: Snapshot,
    *,
    expected: Mapping[str, str] | None = None,
    skip: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    """The diffusers weight files a full load would read (default variant; no weights read)."""
    root = Path(snapshot.root)
    index = read_verified(root, MODEL_INDEX, expected=_pins(snapshot, expected), digests_out=None, max_bytes=MAX_JSON_BYTES)
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
        index = read_verified(root, MODEL_INDEX, expected=pins, digests_out=None, max_bytes=MAX_JSON_BYTES)
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
        found = list(pool.map(lambda rel: verify_file_digest(root / rel, expected=pins.get(rel), records=records, open_fd=_opener(root, rel)), files))
    flush = getattr(records, "flush", None)
    if flush is not None:
        flush()
    return [r.to_json() for r in found if r is not None]
