"""Build pipeline components from a weights snapshot: diffusers classes, safetensors only.

What this module decides:

* which component classes may be built: ``model_index.json`` entries must name the library
  ``diffusers`` and a class that is a diffusers model (``ModelMixin``) or scheduler
  (``SchedulerMixin``) — see ``_resolve_class``; anything else (``["os", "system"]``,
  ``["transformers", ...]``) is refused with ``NotAllowedError`` (pass such components to
  ``load_pipeline`` as keyword arguments instead);
* which weight formats are read: ``*.safetensors`` only. A pickle format (``.bin``, ``.pt``,
  ``.ckpt``, ``.pth``, ``.pkl``) is refused and never opened, let alone given to ``torch.load``;
* that every file is read once and hashed while it is loaded: the bytes that are parsed are the
  bytes that were hashed (no time-of-check/time-of-use gap), and a digest that does not match
  ``expected`` discards everything built from them.

What it trusts: nothing in the snapshot. JSON is parsed into plain values and validated here;
tensors come from ``safetensors`` (which cannot run code).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipewarden.errors import InputError, IntegrityError, NotAllowedError
from pipewarden.loader.records import RecordSource
from pipewarden.loader.snapshot import Snapshot

MODEL_INDEX = "model_index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ALLOWED_LIBRARIES = ("diffusers",)
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
) -> bytes:
    """Read ``root/relpath`` once, hash the bytes, compare with ``expected[relpath]`` if pinned."""
    data = _read_bytes(root, relpath, max_bytes=max_bytes)
    digest = hashlib.sha256(data).hexdigest()
    _compare(relpath, digest, expected)
    if digests_out is not None:
        digests_out[relpath] = digest
    return data


def _read_bytes(root: Path, relpath: str, *, max_bytes: int | None = None) -> bytes:
    path = root / relpath
    try:
        with open(path, "rb") as fh:
            if max_bytes is not None:
                data = fh.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise InputError(
                        f"{relpath} is larger than {max_bytes} bytes",
                        rule="config files are bounded in size",
                        fix="check that the weights directory is what you expect",
                    )
                return data
            return fh.read()
    except FileNotFoundError:
        raise InputError(
            f"{relpath} is missing from {root}",
            rule="a diffusers weights directory needs model_index.json and each component's files",
            fix="point load_pipeline at a directory laid out like google/ddpm-cifar10-32",
        ) from None
    except IsADirectoryError:
        raise InputError(f"{relpath} in {root} is a directory, not a file", rule="expected a file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", rule="files must be readable") from None


def _compare(relpath: str, digest: str, expected: Mapping[str, str] | None) -> None:
    """Compare with the pin. With any pins given, a file without one is refused too (strict)."""
    if not expected:
        return
    want = expected.get(relpath)
    if want is None:
        raise IntegrityError(
            f"{relpath} (sha256 {digest}) is used by the load but has no pin",
            rule="when weights are pinned (lock file, hub metadata), every file used must be pinned",
            fix="re-lock the weights (`pipewarden lock --weights ...`) if this file is meant to be used",
        )
    if want != digest:
        raise IntegrityError(
            f"{relpath} has sha256 {digest}, but its pin says {want}",
            rule="every file is re-hashed on every load and must match its pin",
            fix="restore the pinned file, or re-pin (update the lock file) if the change is intended",
        )


def _parse_json(data: bytes, relpath: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError(
            f"{relpath} is not valid UTF-8 JSON",
            rule="configs are JSON objects",
            fix="check the weights directory",
        ) from None
    if not isinstance(value, dict):
        raise InputError(f"{relpath} must hold a JSON object", rule="configs are JSON objects")
    return value


# ---------------------------------------------------------------------------------------------
# model_index.json -> component specs


def parse_model_index(data: bytes) -> dict[str, tuple[str, str] | None]:
    """Validate model_index.json: component name -> (library, class) or None (absent optional)."""
    raw = _parse_json(data, MODEL_INDEX)
    specs: dict[str, tuple[str, str] | None] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or name.startswith("_"):
            continue  # _class_name, _diffusers_version, ...: metadata
        if not _COMPONENT_NAME.fullmatch(name):
            raise InputError(
                f"model_index.json names a component {name!r}",
                rule="component names are identifiers",
                fix="check the weights directory",
            )
        if value is None or (isinstance(value, list) and value == [None, None]):
            specs[name] = None
            continue
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, str) for v in value)
        ):
            raise InputError(
                f"model_index.json entry {name!r} is {value!r}",
                rule='each component is ["library", "ClassName"]',
                fix="check the weights directory",
            )
        library, class_name = value
        specs[name] = (library, class_name)
    return specs


def _resolve_class(component: str, library: str, class_name: str) -> type:
    if library not in ALLOWED_LIBRARIES:
        raise NotAllowedError(
            f"model_index.json asks for component {component!r} from library {library!r} ({class_name})",
            rule="components are built only from diffusers model and scheduler classes",
            fix=f"pass {component}=... to load_pipeline yourself if you trust that class",
        )
    if not _IDENT.fullmatch(class_name) or class_name.startswith("_"):
        raise NotAllowedError(
            f"model_index.json names class {class_name!r} for {component!r}",
            rule="component classes are public diffusers class names",
            fix="check the weights directory",
        )
    import diffusers
    from diffusers import ModelMixin, SchedulerMixin

    try:
        cls = getattr(diffusers, class_name)
    except AttributeError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, (ModelMixin, SchedulerMixin))):
        raise NotAllowedError(
            f"model_index.json names {library}.{class_name} for {component!r}, which is not a "
            "diffusers model or scheduler class",
            rule="components are built only from diffusers model and scheduler classes",
            fix=f"pass {component}=... to load_pipeline yourself if you trust that class",
        )
    return cls


# ---------------------------------------------------------------------------------------------
# Building


def load_components(
    snapshot: Snapshot,
    *,
    torch_dtype: Any = None,
    expected: Mapping[str, str] | None = None,
    digests_out: MutableMapping[str, str] | None = None,
    skip: frozenset[str] | set[str] = frozenset(),
    records: RecordSource | None = None,
) -> dict[str, Any]:
    """Build every component listed in the snapshot's model_index.json.

    ``expected`` maps relpath -> sha256 pins (lock file, hub metadata); each file read is hashed
    (or vouched for by a verified-digest record from ``records``; none given = hash every byte)
    and compared. ``digests_out`` receives relpath -> sha256 of every file read. Components named
    in ``skip`` (given by the caller directly) are not built. All configs are read and checked
    before any weight byte; the weight files are then read in parallel.
    """
    root = Path(snapshot.root)
    expected = _pins(snapshot, expected)
    plans = _plan(root, expected=expected, digests_out=digests_out, skip=skip)
    files = [rel for plan in plans for rel in plan.weight_files or ()]
    loaded = read_weight_files(root, files, expected=expected, digests_out=digests_out, records=records)
    out: dict[str, Any] = {}
    for plan in plans:
        if plan.cls is None:
            out[plan.name] = None
        elif plan.weight_files is None:
            out[plan.name] = plan.cls.from_config(plan.config)
        else:
            state: dict[str, Any] = {}
            for rel in plan.weight_files:
                state.update(loaded.pop(rel, {}))  # drop our reference once it is built
            out[plan.name] = _instantiate_model(plan.cls, plan.config, state, torch_dtype=torch_dtype, where=f"{plan.name}/")
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
    """The weight files ``load_components`` would read (configs read and checked, no weights)."""
    root = Path(snapshot.root)
    plans = _plan(root, expected=_pins(snapshot, expected), digests_out=None, skip=skip)
    return [rel for plan in plans for rel in plan.weight_files or ()]


def _pins(snapshot: Snapshot, expected: Mapping[str, str] | None) -> dict[str, str]:
    if expected is None:
        return {k: v.sha256 for k, v in snapshot.files.items() if v.sha256}
    return {k: v for k, v in expected.items() if v}  # "" = hash and record only


@dataclass(frozen=True)
class _Plan:
    name: str
    cls: Any  # None: an absent optional component
    config: dict[str, Any]
    weight_files: list[str] | None  # None: built from its config alone (schedulers)


def _plan(root: Path, *, expected, digests_out, skip) -> list[_Plan]:
    index = read_verified(root, MODEL_INDEX, expected=expected, digests_out=digests_out, max_bytes=MAX_JSON_BYTES)
    specs = parse_model_index(index)
    plans: list[_Plan] = []
    for name, spec in specs.items():
        if name in skip:
            continue
        if spec is None:
            plans.append(_Plan(name, None, {}, []))
            continue
        cls = _resolve_class(name, *spec)
        plans.append(_plan_one(cls, root, name, expected=expected, digests_out=digests_out))
    return plans


def _plan_one(cls: Any, root: Path, sub: str, *, expected, digests_out) -> _Plan:
    from diffusers import ModelMixin, SchedulerMixin

    if not (root / sub).is_dir():
        raise InputError(
            f"component folder {sub}/ is missing from {root}",
            rule="each component in model_index.json has its own folder",
            fix="check the weights directory",
        )
    if issubclass(cls, SchedulerMixin):
        cfg_name = getattr(cls, "config_name", None) or "scheduler_config.json"
        data = read_verified(root, f"{sub}/{cfg_name}", expected=expected, digests_out=digests_out, max_bytes=MAX_JSON_BYTES)
        return _Plan(sub, cls, _parse_json(data, f"{sub}/{cfg_name}"), None)
    assert issubclass(cls, ModelMixin)
    data = read_verified(root, f"{sub}/config.json", expected=expected, digests_out=digests_out, max_bytes=MAX_JSON_BYTES)
    config = _parse_json(data, f"{sub}/config.json")
    return _Plan(sub, cls, config, _weight_files(root, sub))


def read_weight_files(
    root: Path,
    relpaths: list[str],
    *,
    expected: Mapping[str, str],
    digests_out: MutableMapping[str, str] | None,
    records: RecordSource | None,
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
            done[rel] = _verify_and_parse(root, rel, expected=expected, records=records)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pipewarden-read") as pool:
            futures = {rel: pool.submit(_verify_and_parse, root, rel, expected=expected, records=records) for rel in jobs}
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


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _weight_files(root: Path, sub: str) -> list[str]:
    """The safetensors files of one component (sharded via an index, or a single file)."""
    folder = root / sub
    names = sorted(os.listdir(folder))
    safetensors = [n for n in names if n.endswith(".safetensors")]
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if not safetensors:
        if pickles:
            raise NotAllowedError(
                f"{sub}/ holds only pickle weights ({', '.join(pickles)})",
                rule="weights are read through safetensors only; pickle files are never opened",
                fix="convert the weights to .safetensors (in an isolated environment) and pin the result",
            )
        raise InputError(
            f"{sub}/ has no .safetensors weights",
            rule="model components need safetensors weights",
            fix="check the weights directory",
        )
    # Prefer the default diffusers name and its sharded form; variants (fp16) are not chosen implicitly.
    default = "diffusion_pytorch_model.safetensors"
    if default in safetensors:
        return [f"{sub}/{default}"]
    shards = [n for n in safetensors if re.fullmatch(r"diffusion_pytorch_model-\d+-of-\d+\.safetensors", n)]
    if shards:
        return [f"{sub}/{n}" for n in shards]
    plain = [n for n in safetensors if n.count(".") == 1]
    return [f"{sub}/{n}" for n in (plain or safetensors)[:1]]


def _load_safetensors(root: Path, relpath: str, *, expected, digests_out, records: RecordSource | None = None) -> dict[str, Any]:
    """Read once (hashing while reading unless a record vouches), compare the digest, then parse.

    The tensors are views of a private buffer holding exactly the bytes that were verified; they
    are only created after the digest matched its pin.
    """
    tensors, digest = _verify_and_parse(root, relpath, expected=expected, records=records)
    if digests_out is not None:
        digests_out[relpath] = digest
    return tensors


def _verify_and_parse(root: Path, relpath: str, *, expected, records: RecordSource | None) -> tuple[dict[str, Any], str]:
    from pipewarden.loader._safetensors import parse
    from pipewarden.loader.records import NoRecords, read_verified_file

    path = root / relpath
    try:
        got = read_verified_file(path, expected=expected.get(relpath), records=records or NoRecords(), where=relpath)
    except FileNotFoundError:
        raise InputError(f"{relpath} is missing from {root}", rule="each component needs its weights") from None
    except OSError as exc:
        raise InputError(
            f"cannot read {path}: {exc.strerror}",
            rule="weights must be readable regular files",
            fix="check the weights directory",
        ) from None
    _compare(relpath, got.sha256, expected)  # raises before any tensor exists
    return parse(got.data, where=relpath), got.sha256  # type: ignore[arg-type]


def _instantiate_model(cls: Any, config: dict[str, Any], state: dict[str, Any], *, torch_dtype, where: str) -> Any:
    """Build the model from its config on the meta device, then assign the loaded tensors.

    Same parameters as diffusers' ``from_pretrained`` (which also skips random init), and the
    model is put in eval mode as diffusers does.
    """
    import torch

    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{where}config.json does not build a {cls.__name__}: {exc}",
            rule="component configs must be valid for their class",
            fix="check the weights directory",
        ) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise InputError(
            f"{where} weights do not fit the {cls.__name__} config ({str(exc).splitlines()[0]})",
            rule="weights must match the component config",
            fix="check the weights directory",
        ) from None
    if missing or unexpected:
        raise InputError(
            f"{where} weights do not fit the {cls.__name__} config: "
            f"{len(missing)} missing, {len(unexpected)} unexpected tensors"
            f" (first: {(list(missing) + list(unexpected))[0]})",
            rule="weights must match the component config",
            fix="check the weights directory",
        )
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:  # non-persistent buffers: rebuild on the CPU and copy the weights in
        model = cls.from_config(config)
        model.load_state_dict(state, strict=True)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    model.eval()
    return model


def worker_records(
    snapshot: Snapshot,
    *,
    expected: Mapping[str, str] | None,
    records: RecordSource,
    skip: frozenset[str] | set[str] = frozenset(),
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
        files = [
            rel
            for name, spec in parse_model_index(index).items()
            if spec is not None and name not in skip and any(p.suffix == ".safetensors" for p in (root / name).iterdir())
            for rel in _weight_files(root, name)
        ]
    except Exception:  # the worker's own load reports the problem with the usual error
        return []
    if not files:
        return []
    files.sort(key=lambda rel: -_size_or_zero(root / rel))
    workers = max(1, min(len(files), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pipewarden-verify") as pool:
        found = list(pool.map(lambda rel: verify_file_digest(root / rel, expected=pins.get(rel), records=records), files))
    flush = getattr(records, "flush", None)
    if flush is not None:
        flush()
    return [r.to_json() for r in found if r is not None]
