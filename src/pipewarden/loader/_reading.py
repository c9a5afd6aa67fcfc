"""Reading weights-repository files: once, hashed while read, compared with the pins.

Part of ``pipewarden.loader.components`` (which re-exports these names). The bytes that are
parsed are the bytes that were hashed (no time-of-check/time-of-use gap); a digest that does
not match its pin raises before anything is built from them. JSON configs are parsed into plain
values and checked for keys that name code (``auto_map`` and similar); safetensors files are
read in parallel across cores and parsed only after their digest matched.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
from collections.abc import Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipewarden.errors import InputError, IntegrityError, NotAllowedError
from pipewarden.loader.records import RecordSource

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


def _boundary(root: Path) -> Path:
    """Links may stay inside the HF cache folder for a cache snapshot, else inside ``root``."""
    from pipewarden import fsaccess

    return fsaccess.hf_cache_boundary(root) or root


def _read_bytes(root: Path, relpath: str, *, max_bytes: int | None = None) -> bytes:
    from pipewarden import fsaccess

    try:
        return fsaccess.read_in(_boundary(root), relpath, root=root, max_bytes=max_bytes)
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


def _opener(root: Path, relpath: str):  # noqa: ANN202
    from pipewarden import fsaccess

    return lambda: fsaccess.open_fd_in(_boundary(root), relpath, root=root)


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
        got = read_verified_file(
            path, expected=expected.get(relpath), records=records or NoRecords(), where=relpath, open_fd=_opener(root, relpath)
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
            # Each job runs in a copy of this context: trusted reading stays trusted (in a worker,
            # a fresh thread would start with the process-wide tripwire armed).
            futures = {
                rel: pool.submit(contextvars.copy_context().run, _verify_and_parse, root, rel, expected=expected, records=records)
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

    def __init__(self, root: Path, relpaths: list[str], *, expected, digests_out, records) -> None:
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
                contextvars.copy_context().run, _verify_and_parse, root, rel, expected=expected, records=records
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
