"""Hub metadata parsed once into frozen records (``RemoteFile``, ``RepoListing``).

Split out of ``pipewarden.loader._hf`` (which re-exports every name): a listing without per-file
metadata, with unsafe paths or with a malformed commit is refused here, before any byte is fetched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any

from pipewarden.errors import FetchError, InputError, IntegrityError
from pipewarden.loader.digests import is_commit_hex, is_sha256_hex

_SAFE_SEGMENT = re.compile(r"[^\x00-\x1f\\]+")
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}|[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at one commit, as the hub describes it."""

    relpath: str
    size: int
    git_oid: str  # git blob id (of the LFS pointer for LFS files)
    lfs_sha256: str | None = None

    @property
    def is_lfs(self) -> bool:
        return self.lfs_sha256 is not None

    @property
    def etag(self) -> str:
        """The name huggingface_hub gives the cache blob of this file."""
        return self.lfs_sha256 if self.lfs_sha256 is not None else self.git_oid


@dataclass(frozen=True)
class RepoListing:
    """Every file of a repo at exactly one commit (one hub answer, never merged across answers)."""

    repo_id: str
    repo_type: str
    commit: str
    files: Mapping[str, RemoteFile] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))


def check_relpath(relpath: object, *, what: str = "file name") -> str:
    """A repo-relative POSIX path that cannot leave its directory."""
    if not isinstance(relpath, str) or not relpath or len(relpath) > 1024:
        raise FetchError(
            f"the hub listed an invalid {what} {relpath!r}", rule="hub.bad-path"
        )
    p = PurePosixPath(relpath)
    if (
        p.is_absolute()
        or relpath != p.as_posix()
        or any(part in ("", ".", "..") for part in relpath.split("/"))
        or not all(_SAFE_SEGMENT.fullmatch(part) for part in p.parts)
    ):
        raise FetchError(
            f"the hub listed an unsafe {what} {relpath!r}",
            rule="hub.bad-path",
            fix="do not load from this repository",
        )
    return relpath


_REVISION_RE = re.compile(r"[A-Za-z0-9._+\-/]{1,256}")


def check_revision(revision: object) -> str:
    """A branch, tag or commit name that is safe to use as a path below ``refs/`` and in a URL.

    Refused with ``InputError`` (a clean error, never a traceback): empty names, ``..`` or ``.``
    segments, absolute paths, control characters, spaces and the characters git forbids in refs.
    """
    if not isinstance(revision, str):
        raise TypeError(f"revision must be a str, got {type(revision).__name__}")
    if (
        not _REVISION_RE.fullmatch(revision)
        or revision.startswith(("/", "-"))
        or revision.endswith((".lock", "/"))
        or ".." in revision
        or any(part in ("", ".") for part in revision.split("/"))
    ):
        raise InputError(
            f"invalid revision {revision!r}",
            rule="hub.bad-revision",
            fix="pass a branch, tag or 40-hex commit as the hub shows it: letters, digits and . _ + - / "
            "(no '..', no control characters, at most 256 characters)",
        )
    return revision


def _parse_sibling(sib: Any) -> RemoteFile:
    relpath = check_relpath(getattr(sib, "rfilename", None))
    size, oid, lfs = getattr(sib, "size", None), getattr(sib, "blob_id", None), getattr(sib, "lfs", None)
    if not isinstance(size, int) or size < 0 or not is_commit_hex(oid):
        raise FetchError(
            f"the hub's listing has no usable metadata for {relpath!r} (size={size!r}, blob id={oid!r})",
            rule="hub.metadata-missing",
            fix="retry; if it persists the endpoint is not a Hugging Face Hub",
        )
    lfs_sha = None
    if lfs is not None:
        lfs_sha = getattr(lfs, "sha256", None)
        lfs_size = getattr(lfs, "size", None)
        if not is_sha256_hex(lfs_sha) or lfs_size != size:
            raise FetchError(
                f"the hub's LFS metadata for {relpath!r} is malformed (sha256={lfs_sha!r}, size={lfs_size!r})",
                rule="hub.metadata-missing",
            )
    return RemoteFile(relpath=relpath, size=size, git_oid=str(oid), lfs_sha256=lfs_sha)


def parse_listing(repo_id: str, repo_type: str, info: Any, *, requested: str | None) -> RepoListing:
    commit = getattr(info, "sha", None)
    if not is_commit_hex(commit):
        raise FetchError(
            f"the hub answered for {repo_id} without a commit id (got {commit!r})",
            rule="hub.bad-commit",
            fix="retry; if it persists the endpoint is not a Hugging Face Hub",
        )
    if requested is not None and is_commit_hex(requested) and requested.lower() != commit:
        raise IntegrityError(
            f"asked {repo_id} for commit {requested} but the hub answered for commit {commit}",
            rule="hub.commit-changed",
            fix="check the pin; do not load from this endpoint",
        )
    files: dict[str, RemoteFile] = {}
    for sib in getattr(info, "siblings", None) or ():
        rf = _parse_sibling(sib)
        if rf.relpath in files:
            raise FetchError(
                f"the hub listed {rf.relpath!r} twice", rule="hub.bad-listing"
            )
        files[rf.relpath] = rf
    return RepoListing(repo_id=canonical_id(repo_id, info), repo_type=repo_type, commit=str(commit), files=files)


def canonical_id(asked: str, info: Any) -> str:
    """The repo id as the hub spells it (``model_info(...).id``).

    The hub resolves ids case-insensitively (and follows renames), so trust decisions (allowlist
    rules, signature sources, lock entries) use the hub's spelling, never the caller's: asking for
    ``acme/Critical`` must meet the rules written for ``acme/critical``.
    """
    got = getattr(info, "id", None)
    if isinstance(got, str) and _REPO_ID_RE.fullmatch(got):
        return got
    return asked


def parse_path_info(entry: Any) -> RemoteFile:
    """A ``RepoFile`` from ``get_paths_info`` (it has ``rfilename``/``size``/``blob_id``/``lfs`` too)."""
    return _parse_sibling(entry)
