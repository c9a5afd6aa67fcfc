"""Digests of the bytes we use: sha256 (pins, manifests) and git blob SHA-1 (hub small files).

Trusts nothing; computes. ``Sha256Hex`` values are validated lowercase 64-hex strings.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import BinaryIO, NewType

Sha256Hex = NewType("Sha256Hex", str)

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SHA1_RE = re.compile(r"[0-9a-f]{40}")
CHUNK = 1 << 20


def is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


def is_commit_hex(value: object) -> bool:
    return isinstance(value, str) and _SHA1_RE.fullmatch(value) is not None


def parse_sha256(value: object, *, what: str = "sha256 pin") -> Sha256Hex:
    """Validate a pin given by a user (caller misuse -> ValueError/TypeError)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str of 64 hex digits, got {type(value).__name__}")
    v = value.strip().lower()
    if v.startswith("sha256:"):
        v = v[len("sha256:") :]
    if not _SHA256_RE.fullmatch(v):
        raise ValueError(f"{what} must be 64 hex digits, got {value!r}")
    return Sha256Hex(v)


def sha256_bytes(data: bytes | bytearray | memoryview) -> Sha256Hex:
    return Sha256Hex(hashlib.sha256(data).hexdigest())


def sha256_stream(fh: BinaryIO) -> Sha256Hex:
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(CHUNK), b""):
        h.update(chunk)
    return Sha256Hex(h.hexdigest())


def sha256_file(path: str | Path) -> Sha256Hex:
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def git_blob_sha1(data: bytes | bytearray | memoryview) -> str:
    """The git object id of a blob with these bytes (what the hub reports for non-LFS files)."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()
