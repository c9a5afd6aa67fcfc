"""The one file-access layer for host reads and writes (issue 12, flaw 7).

Every path the host touches is hostile: a weights directory, a cache snapshot, a repository under
audit, an allowlist named on the command line. This module is the only place that turns such a
path into bytes, a directory listing, a written file or a removed file, and it keeps four rules:

* **Within a root.** A path inside a directory (weights dir, HF cache, code dir) is resolved
  component by component from a directory descriptor. A symlink is followed only when the caller
  allows links *and* the link stays inside the root; a link that leaves it, dangles or loops is
  refused with a clean error. The one exception is the HF cache layout, and then only the exact
  hops huggingface_hub makes (``snapshots/<commit>/x -> ../../blobs/<etag>``, and a blob into
  the cache-wide Xet store), never "anywhere in the folder that looks like a cache". The file is then opened with ``O_NOFOLLOW`` on every component
  (``openat``), so a link swapped in after the check is refused, never followed.
* **Never block.** Every open uses ``O_NONBLOCK`` and checks ``S_ISREG`` on the descriptor before
  reading: a FIFO, socket or device named as an allowlist, key, lock file or weight is refused.
* **Bounded.** Reads take a byte limit; walks take a file-count and depth limit.
* **Never delete or replace what it did not create.** Removal happens only by name inside a
  directory descriptor of the boundary (``unlinkat``), never through a link; writes to a file the
  user named either go through the link to the real file (``write_through``) or refuse a link
  (``write_new_or_regular``), and temp files are created ``O_EXCL`` next to the real target.

The one directory walker (:func:`walk`) is used for manifests (sign/verify), lock files, local
pipeline code and local weights, so the rules (UTF-8 names, file limit, no links, ignored dirs)
are the same everywhere.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipewarden.errors import InputError

__all__ = [
    "IGNORED_DIRS",
    "MAX_FILES",
    "MAX_DEPTH",
    "MAX_LINK_HOPS",
    "WalkEntry",
    "check_name",
    "hf_cache_boundary",
    "make_output_dir",
    "open_in",
    "open_user_file",
    "read_in",
    "read_user_file",
    "resolve_in",
    "remove_in",
    "walk",
    "write_in",
    "write_new_or_regular",
    "write_through",
]

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_PATH = getattr(os, "O_PATH", 0)
_DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK
# Directories only walked through (never listed) are opened O_PATH where the OS has it: that
# needs no read access, so it works inside the worker's Landlock domain, where only the files
# themselves are readable.
_PASS_FLAGS = (_O_PATH | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC) if _O_PATH else _DIR_FLAGS
_FILE_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK

#: Directories never part of a walked directory's contents (the loader never reads them).
IGNORED_DIRS = frozenset({"__pycache__", ".git"})
#: Bound on the number of files in one walked directory (manifests, locks, weights, code).
MAX_FILES = 100_000
#: Bound on the nesting depth of a walked directory.
MAX_DEPTH = 64
#: Bound on symlinks followed while resolving one path inside a boundary (Linux uses 40).
MAX_LINK_HOPS = 40

_LINK_RULE = "file.link-outside"
_REGULAR_RULE = "file.not-regular"


def _link_error(shown: str, boundary: str | os.PathLike[str], why: str) -> InputError:
    return InputError(
        f"{shown} {why} (outside {os.fspath(boundary)})",
        rule=_LINK_RULE,
        fix="replace the link with the file it points to, or point pipewarden at the real directory",
    )


def _cache_link_error(shown: str, why: str) -> InputError:
    return InputError(
        f"{shown} {why}: in an HF cache snapshot, links may lead only to the repo's own blobs/",
        rule=_LINK_RULE,
        fix="replace the link with the file it points to, or download the snapshot again with huggingface_hub",
    )


def _not_regular(shown: str) -> InputError:
    return InputError(
        f"{shown} is not a regular file",
        rule=_REGULAR_RULE,
        fix="replace it with a regular file",
    )


def _missing(shown: str, where: str | os.PathLike[str]) -> InputError:
    return InputError(
        f"{shown} is missing from {os.fspath(where)}",
        rule="file.unreadable",
        fix="check the directory",
    )


def _split(relpath: str) -> list[str]:
    if "\x00" in relpath:
        raise InputError(f"path {relpath!r} holds a NUL byte", rule="file.unreadable")
    if relpath.startswith("/"):
        raise InputError(f"path {relpath!r} is absolute", rule="file.unreadable")
    return [p for p in relpath.split("/") if p not in ("", ".")]


@contextmanager
def _dir_fd(path: str | os.PathLike[str], *, listable: bool = False) -> Iterator[int]:
    """A descriptor of a directory the user (or the code) named; the boundary's own path may be a link."""
    flags = os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC | _O_NONBLOCK
    if _O_PATH and not listable:
        flags = _O_PATH | _O_DIRECTORY | _O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputError(
            f"cannot open directory {os.fspath(path)}: {exc.strerror}",
            rule="file.not-directory",
            fix="check the path",
        ) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _relative_parts(boundary: Path, root: Path) -> list[str]:
    try:
        rel = os.path.relpath(os.path.abspath(root), os.path.abspath(boundary))
    except ValueError:  # pragma: no cover - other drive
        raise InputError(f"{root} is not inside {boundary}", rule=_LINK_RULE) from None
    if rel == ".":
        return []
    if rel == ".." or rel.startswith("../"):
        raise InputError(f"{root} is not inside {boundary}", rule=_LINK_RULE)
    return _split(rel)


def _resolve_parts(
    bfd: int, boundary: Path, parts: list[str], *, links: bool, shown: str, root_len: int = 0
) -> list[str]:
    """Resolve ``parts`` from the boundary's descriptor: the link-free components inside it.

    ``root_len``: the first ``root_len`` parts name the root the caller reads from, below the
    boundary. That is only ever an HF cache snapshot, and its links follow the cache layout
    (:func:`_resolve_snapshot`), not the boundary: the boundary is where the descriptors start,
    never a widening of what a link may reach.
    """
    if root_len:
        return _resolve_snapshot(bfd, boundary, parts[:root_len], parts[root_len:], links=links, shown=shown)
    real_boundary: str | None = None
    out: list[str] = []
    todo = list(reversed(parts))
    hops = 0
    while todo:
        comp = todo.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if not out:
                raise _link_error(shown, boundary, "leads above its directory")
            out.pop()
            continue
        cur = "/".join([*out, comp])
        st = _lstat_in(bfd, [*out, comp], shown, boundary)
        if not stat.S_ISLNK(st.st_mode):
            out.append(comp)
            continue
        if not links:
            raise _link_error(shown, boundary, "is a symlink")
        hops += 1
        if hops > MAX_LINK_HOPS:
            raise _link_error(shown, boundary, "is a symlink loop")
        try:
            target = os.readlink(cur, dir_fd=bfd)
        except OSError as exc:  # pragma: no cover - raced away
            raise InputError(f"cannot read link {shown}: {exc.strerror}", rule="file.unreadable") from None
        if target.startswith("/"):
            if real_boundary is None:
                real_boundary = os.path.realpath(boundary)
            norm = os.path.normpath(target)
            if norm != real_boundary and not norm.startswith(real_boundary.rstrip("/") + "/"):
                raise _link_error(shown, boundary, f"is a symlink to {target}")
            out = []
            target = os.path.relpath(norm, real_boundary)
        todo.extend(reversed(_split(target)))
    return out


# The HF cache layout (huggingface_hub's file_download / utils/_shared_blobs):
#   <cache>/<type>s--<owner>--<name>/snapshots/<commit>/<relpath>  ->  ../../(../)*blobs/<etag>
#   <cache>/<type>s--<owner>--<name>/blobs/<etag>                 ->  ../../blobs/<xx>/<xet hash>
# (the second hop only for Xet files in the cache-wide shared store; <xx> = the hash's first two
# hex digits). Nothing else in a snapshot is a link: its folders are real folders.
_REPO_FOLDER = re.compile(r"(?:models|datasets|spaces)--.+")
_XET_HASH = re.compile(r"[0-9a-f]{64}")


def _snapshot_storage(root_parts: list[str]) -> list[str] | None:
    """The storage folder (relative to the boundary) of a snapshot root: ``<repo>/snapshots/<c>``
    below the cache folder, or ``snapshots/<c>`` below the storage folder itself."""
    if len(root_parts) == 3 and root_parts[1] == "snapshots" and _REPO_FOLDER.fullmatch(root_parts[0]):
        return root_parts[:1]
    if len(root_parts) == 2 and root_parts[0] == "snapshots":
        return []
    return None


def _lstat_in(bfd: int, parts: list[str], shown: str, boundary: Path) -> os.stat_result:
    try:
        return os.stat("/".join(parts) or ".", dir_fd=bfd, follow_symlinks=False)
    except FileNotFoundError:
        raise _missing(shown, boundary) from None
    except NotADirectoryError:
        raise InputError(f"{shown}: a component of the path is not a directory", rule="file.unreadable") from None
    except OSError as exc:
        raise InputError(f"cannot read {shown}: {exc.strerror}", rule="file.unreadable") from None


def _real_folders(bfd: int, parts: list[str], shown: str, boundary: Path) -> None:
    """Every prefix of ``parts`` is a real folder below the boundary (no link, nothing else)."""
    for i in range(1, len(parts) + 1):
        st = _lstat_in(bfd, parts[:i], shown, boundary)
        if stat.S_ISLNK(st.st_mode):
            raise _cache_link_error(shown, f"lies below a symlinked folder ({'/'.join(parts[:i])})")
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{shown}: a component of the path is not a directory", rule="file.unreadable")


def _link_parts(bfd: int, at: list[str], boundary: Path, shown: str) -> list[str] | None:
    """Where the link ``at`` (parts below the boundary) points, as parts below the boundary, or None.

    A relative target may only climb (``..``) before it names anything: ``../../blobs/x`` is the
    cache's own spelling, ``x/../y`` is not (``..`` after a name would be resolved lexically
    here but physically by the kernel, through whatever ``x`` is). An absolute target must name
    the boundary (as given or fully resolved) and is read the same way below it.
    """
    try:
        target = os.readlink("/".join(at), dir_fd=bfd)
    except OSError as exc:  # pragma: no cover - raced away
        raise InputError(f"cannot read link {shown}: {exc.strerror}", rule="file.unreadable") from None
    if "\x00" in target or not target:
        return None
    if target.startswith("/"):
        norm = os.path.normpath(target)
        for base in dict.fromkeys((os.path.abspath(boundary), os.path.realpath(boundary))):
            prefix = base.rstrip("/") + "/"
            if norm.startswith(prefix):
                return [p for p in norm[len(prefix):].split("/") if p not in ("", ".")]
        return None
    out = at[:-1]
    named = False
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if named or not out:
                return None
            out = out[:-1]
            continue
        named = True
        out = [*out, comp]
    return out


def _resolve_snapshot(
    bfd: int, boundary: Path, root_parts: list[str], rel_parts: list[str], *, links: bool, shown: str
) -> list[str]:
    """Resolve ``rel_parts`` inside an HF cache snapshot ``root_parts`` (below the boundary).

    The snapshot's folders, and the folders down to it, must be real folders. A file may be a
    link, and then it must lead to this repo's own ``blobs/<name>``; that blob may in turn be a
    link only into the cache-wide shared store (``<cache>/blobs/<xx>/<64 hex>``, and only when
    the boundary is the cache folder above the repo). Any other link -- to a sibling repo, the
    cache folder, another snapshot, a folder, anything outside -- is refused, whatever the
    folders are named: the names are chosen by whoever shipped the folder.
    """
    storage = _snapshot_storage(root_parts)
    if storage is None:
        raise _cache_link_error(shown, "is not inside a cache snapshot folder")
    _real_folders(bfd, root_parts, shown, boundary)
    rel = [p for p in rel_parts if p not in ("", ".")]
    out = list(root_parts)
    for i, comp in enumerate(rel):
        if comp == "..":
            if len(out) <= len(root_parts):
                raise _cache_link_error(shown, "leads above its directory")
            out.pop()
            continue
        cur = [*out, comp]
        st = _lstat_in(bfd, cur, shown, boundary)
        if not stat.S_ISLNK(st.st_mode):
            out = cur
            continue
        if not links:
            raise _cache_link_error(shown, "is a symlink")
        if i != len(rel) - 1:
            raise _cache_link_error(shown, f"lies below a symlinked folder ({'/'.join(rel[: i + 1])})")
        return _snapshot_blob(bfd, boundary, storage, cur, shown)
    return out


def _snapshot_blob(bfd: int, boundary: Path, storage: list[str], link: list[str], shown: str) -> list[str]:
    """The link-free blob a snapshot entry ``link`` leads to (see :func:`_resolve_snapshot`)."""
    blobs = [*storage, "blobs"]
    blob = _link_parts(bfd, link, boundary, shown)
    if blob is None or len(blob) != len(blobs) + 1 or blob[:-1] != blobs or blob[-1] == "..":
        raise _cache_link_error(shown, "is a symlink that does not lead to its repo's blobs/ folder")
    _real_folders(bfd, blobs, shown, boundary)
    st = _lstat_in(bfd, blob, shown, boundary)
    if not stat.S_ISLNK(st.st_mode):
        return blob
    store = _link_parts(bfd, blob, boundary, shown) if storage else None
    if (
        store is None
        or len(store) != 3
        or store[0] != "blobs"
        or _XET_HASH.fullmatch(store[2]) is None
        or store[1] != store[2][:2]
    ):
        raise _cache_link_error(shown, "leads to a blob that is a symlink out of the cache's shared blob store")
    _real_folders(bfd, store[:2], shown, boundary)
    if stat.S_ISLNK(_lstat_in(bfd, store, shown, boundary).st_mode):
        raise _cache_link_error(shown, "leads to a shared store blob that is itself a symlink")
    return store


def resolve_in(
    boundary: str | os.PathLike[str], relpath: str, *, root: str | os.PathLike[str] | None = None, links: bool = True
) -> str:
    """The link-free path of ``root/relpath`` relative to ``boundary`` (links must stay inside it)."""
    b = Path(boundary)
    parts = _relative_parts(b, Path(root)) if root is not None else []
    with _dir_fd(b) as bfd:
        return "/".join(
            _resolve_parts(bfd, b, parts + _split(relpath), links=links, shown=relpath, root_len=len(parts))
        )


@contextmanager
def _descend(bfd: int, dirs: list[str]) -> Iterator[int]:
    """The descriptor of the directory ``dirs`` below ``bfd``, each component opened with
    O_NOFOLLOW (a component that is a link fails: ELOOP/ENOTDIR); closed on exit (``bfd`` is not)."""
    cur = bfd
    try:
        for comp in dirs:
            nxt = os.open(comp, _PASS_FLAGS, dir_fd=cur)
            if cur != bfd:
                os.close(cur)
            cur = nxt
        yield cur
    finally:
        if cur != bfd:
            os.close(cur)


def _blocking_regular(
    fd: int, refuse: Callable[[], InputError], check: Callable[[os.stat_result], None] | None = None
) -> int:
    """``fd`` (opened non-blocking) switched to blocking once it is known to be a regular file
    (``refuse()`` raised otherwise) that ``check`` accepts; closed if anything raises."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse()
        if check is not None:
            check(st)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_parts(bfd: int, parts: list[str], *, shown: str, where: str | os.PathLike[str]) -> int:
    """Open ``parts`` below ``bfd`` with O_NOFOLLOW on every component; a regular file, never blocking."""
    try:
        with _descend(bfd, parts[:-1]) as cur:
            fd = os.open(parts[-1] if parts else ".", _FILE_FLAGS, dir_fd=cur)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise InputError(
                f"{shown} changed into a symlink while it was opened",
                rule=_LINK_RULE,
                fix="make sure nothing else modifies the directory during the load",
            ) from None
        if exc.errno == errno.ENOENT:
            raise _missing(shown, where) from None
        raise InputError(f"cannot read {shown}: {exc.strerror}", rule="file.unreadable") from None
    return _blocking_regular(fd, lambda: _not_regular(shown))


def open_in(
    boundary: str | os.PathLike[str],
    relpath: str,
    *,
    root: str | os.PathLike[str] | None = None,
    links: bool = True,
) -> BinaryIO:
    """Open ``root/relpath`` for reading; links are followed only inside ``boundary``.

    ``root`` (default: the boundary) is a directory inside the boundary, e.g. a snapshot folder
    of the HF cache whose entries link into the cache's ``blobs/``.
    """
    fd = open_fd_in(boundary, relpath, root=root, links=links)
    return os.fdopen(fd, "rb", buffering=0)  # type: ignore[return-value]


def open_fd_in(
    boundary: str | os.PathLike[str],
    relpath: str,
    *,
    root: str | os.PathLike[str] | None = None,
    links: bool = True,
) -> int:
    """Like :func:`open_in`, but the raw descriptor (blocking, regular file); the caller closes it."""
    b = Path(boundary)
    parts = _relative_parts(b, Path(root)) if root is not None else []
    with _dir_fd(b) as bfd:
        resolved = _resolve_parts(bfd, b, parts + _split(relpath), links=links, shown=relpath, root_len=len(parts))
        if not resolved:
            raise _not_regular(relpath)
        return _open_parts(bfd, resolved, shown=relpath, where=root if root is not None else b)


def _read_limited(fh: BinaryIO, limit: int | None, shown: str) -> bytes:
    if limit is None:
        return fh.read()
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{shown} is larger than {limit} bytes", rule="file.too-large")
    return data


def read_in(
    boundary: str | os.PathLike[str],
    relpath: str,
    *,
    root: str | os.PathLike[str] | None = None,
    links: bool = True,
    max_bytes: int | None = None,
) -> bytes:
    """All bytes of ``root/relpath`` (see :func:`open_in`), at most ``max_bytes``."""
    with open_in(boundary, relpath, root=root, links=links) as fh:
        return _read_limited(fh, max_bytes, relpath)


def open_user_file(path: str | os.PathLike[str], *, what: str = "file", private_writes: bool = False) -> BinaryIO:
    """Open a file the user named (allowlist, key, lock file): links the user made are followed,
    but the open never blocks and the result must be a regular file.

    ``private_writes``: refuse a file that another (non-root) user may change -- its group or
    everyone may write it, another user owns it (the owner can chmod and rewrite it at will,
    red team 9H F11), or it sits in a folder another user may write without the sticky bit
    (they can rename a file of their own over it), or in a folder another user owns -- a trust file anyone on the machine can edit
    is no trust file, as a readable private key is refused. The same rule as the digest store's
    (``loader.records.writable_by_others``); root-owned files (mounted ConfigMaps) are fine.
    """
    shown = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NONBLOCK)
    except IsADirectoryError:
        raise InputError(f"{what} {shown} is a directory", rule="file.not-regular", fix="check the path") from None
    except OSError as exc:
        raise InputError(
            f"cannot read {what} {shown}: {exc.strerror}", rule="file.unreadable", fix="check the path"
        ) from None

    def writable_by_others(st: os.stat_result) -> None:
        if not private_writes:
            return
        if st.st_mode & 0o022:
            raise InputError(
                f"{what} {shown} may be written by others (mode {stat.S_IMODE(st.st_mode):04o})",
                rule="allowlist.writable",
                fix=f"chmod go-w {shown}",
            )
        me = os.geteuid()
        if st.st_uid not in (me, 0):
            raise InputError(
                f"{what} {shown} may be written by others (owned by uid {st.st_uid}, not by you or root)",
                rule="allowlist.writable",
                fix=f"review it, copy it into a folder only you may write (e.g. cp {shown} "
                f"~/{os.path.basename(shown)}) and pass the copy, or have root own it",
            )
        folder = os.path.dirname(os.path.realpath(shown))
        try:
            dst = os.stat(folder)
        except OSError as exc:
            raise InputError(f"cannot read the folder of {what} {shown}: {exc.strerror}", rule="file.unreadable") from None
        sticky = bool(dst.st_mode & stat.S_ISVTX)
        if dst.st_uid not in (me, 0) or (dst.st_mode & 0o022 and not sticky):
            raise InputError(
                f"{what} {shown} may be replaced by others: its folder {folder} "
                f"(mode {stat.S_IMODE(dst.st_mode):04o}, uid {dst.st_uid}) lets another user rename a file over it",
                rule="allowlist.writable",
                fix=f"keep it in a folder only you (or root) may write, e.g. chmod go-w {folder}",
            )

    def not_regular() -> InputError:
        return InputError(
            f"{what} {shown} is not a regular file", rule=_REGULAR_RULE, fix="pass the path of a regular file"
        )

    fd = _blocking_regular(fd, not_regular, writable_by_others)
    return os.fdopen(fd, "rb", buffering=0)  # type: ignore[return-value]


def read_user_file(
    path: str | os.PathLike[str], *, limit: int, what: str = "file", private_writes: bool = False
) -> bytes:
    """All bytes of a user-named file (see :func:`open_user_file`), at most ``limit``."""
    with open_user_file(path, what=what, private_writes=private_writes) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise InputError(
            f"{what} {os.fspath(path)} is larger than {limit} bytes", rule="file.too-large"
        )
    return data


# ------------------------------------------------------------------------------------- walking


@dataclass(frozen=True)
class WalkEntry:
    """One regular file found by :func:`walk`: its relpath (POSIX) and the link-free relpath."""

    relpath: str
    real: str  # relative to the walk's boundary; == relpath when no link was followed
    size: int


def check_name(rel: str) -> None:
    """File names must be UTF-8 (and printable enough to show): manifests and locks hold them."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"file name {rel!r} is not valid UTF-8",
            rule="file.name-not-utf8",
            fix="rename the file",
        ) from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rel):
        raise InputError(f"file name {rel!r} holds control characters", rule="file.name-not-utf8", fix="rename the file")


def walk(
    root: str | os.PathLike[str],
    *,
    boundary: str | os.PathLike[str] | None = None,
    links: bool = False,
    list_links: bool = False,
    exclude: frozenset[str] = frozenset(),
    ignored_dirs: frozenset[str] = IGNORED_DIRS,
    max_files: int = MAX_FILES,
    what: str = "directory",
) -> dict[str, WalkEntry]:
    """Every regular file under ``root``, at any depth, hidden files included (sorted by relpath).

    Directories named in ``ignored_dirs`` are skipped (only real directories: a link with such a
    name is still refused). ``exclude`` are top-level relpaths left out. Devices, sockets and
    FIFOs are refused. Symlinks are refused unless ``links`` is true, and then must resolve to a
    regular file inside ``boundary`` (default: ``root``); directories reached through a link are
    not descended. Names must be UTF-8; at most ``max_files`` files and ``MAX_DEPTH`` levels.
    ``list_links``: a link is listed by name, unresolved (``real`` empty, ``size`` 0), for a caller
    that opens and checks every entry itself (HF cache snapshots: each entry is verified, and a
    bad one evicted, by ``loader._hf.verify_entry``).
    """
    base = Path(root)
    b = Path(boundary) if boundary is not None else base
    base_parts = _relative_parts(b, base) if boundary is not None else []
    out: dict[str, WalkEntry] = {}
    with _dir_fd(b) as bfd, _dir_fd(base, listable=True) as rfd:
        st = os.fstat(rfd)
        if not stat.S_ISDIR(st.st_mode):  # pragma: no cover - O_DIRECTORY
            raise InputError(f"{base} is not a directory", rule="file.not-directory")

        def visit(dfd: int, prefix: str, depth: int) -> None:
            if depth > MAX_DEPTH:
                raise InputError(f"{base}/{prefix} is nested more than {MAX_DEPTH} levels", rule="file.too-many")
            try:
                with os.scandir(dfd) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                raise InputError(f"cannot read {base}/{prefix}: {exc.strerror}", rule="file.unreadable") from None
            for entry in entries:
                rel = prefix + entry.name
                check_name(rel)
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    raise InputError(f"cannot read {base}/{rel}: {exc.strerror}", rule="file.unreadable") from None
                if stat.S_ISDIR(est.st_mode):
                    if entry.name in ignored_dirs:
                        continue
                    try:
                        sub = os.open(entry.name, _DIR_FLAGS, dir_fd=dfd)
                    except OSError as exc:
                        raise InputError(f"cannot read {base}/{rel}: {exc.strerror}", rule="file.unreadable") from None
                    try:
                        visit(sub, rel + "/", depth + 1)
                    finally:
                        os.close(sub)
                    continue
                if rel in exclude:
                    continue
                if stat.S_ISREG(est.st_mode):
                    out[rel] = WalkEntry(relpath=rel, real="/".join([*base_parts, rel]), size=est.st_size)
                elif stat.S_ISLNK(est.st_mode) and list_links:
                    out[rel] = WalkEntry(relpath=rel, real="", size=0)
                elif stat.S_ISLNK(est.st_mode):
                    if not links:
                        raise InputError(
                            f"{base}/{rel} is a symlink",
                            rule="file.link-outside",
                            fix="replace the link with the file it points to",
                        )
                    real = _resolve_parts(
                        bfd, b, [*base_parts, *rel.split("/")], links=True, shown=f"{base}/{rel}", root_len=len(base_parts)
                    )
                    try:
                        rst = os.stat("/".join(real), dir_fd=bfd, follow_symlinks=False)
                    except OSError as exc:  # pragma: no cover - raced away
                        raise InputError(f"cannot read {base}/{rel}: {exc.strerror}", rule="file.unreadable") from None
                    if stat.S_ISDIR(rst.st_mode):
                        raise InputError(
                            f"{base}/{rel} is a symlink to a directory",
                            rule="file.link-outside",
                            fix="replace the link with the folder it points to",
                        )
                    if not stat.S_ISREG(rst.st_mode):
                        raise _not_regular(f"{base}/{rel}")
                    out[rel] = WalkEntry(relpath=rel, real="/".join(real), size=rst.st_size)
                else:
                    raise InputError(
                        f"{base}/{rel} is not a regular file",
                        rule="file.not-regular",
                        fix="remove it from the directory",
                    )
                if len(out) > max_files:
                    raise InputError(f"{base} holds more than {max_files} files", rule="file.too-many")

        visit(rfd, "", 0)
    return dict(sorted(out.items()))


def hash_in(boundary: str | os.PathLike[str], real: str) -> str:
    """sha256 of the link-free file ``real`` (relative to ``boundary``), opened without following links."""
    from pipewarden.loader.digests import sha256_stream

    with open_in(boundary, real, links=False) as fh:
        return sha256_stream(fh)


def hf_cache_boundary(path: str | os.PathLike[str]) -> Path | None:
    """The folder reads of ``path`` start from when it is laid out like an HF cache snapshot.

    For ``<cache>/<repo>/snapshots/<commit>`` (``<repo>`` = ``models--owner--name`` and the like,
    next to a real ``blobs/`` folder) that is ``<cache>``; for ``<storage>/snapshots/<commit>``
    under any other name, ``<storage>``. The layout is only a *shape*, chosen by whoever made the
    folder, so it widens nothing by itself: with a root below the boundary, the readers here
    (:func:`open_in`, :func:`resolve_in`, :func:`walk`) follow a snapshot entry's link only to
    that repo's own ``blobs/<name>``, and a blob's link only into the cache-wide shared store
    ``<cache>/blobs/<xx>/<64 hex>`` (huggingface_hub's Xet store), see :func:`_resolve_snapshot`.
    """
    p = Path(os.path.abspath(path))
    storage = p.parent.parent
    if p.parent.name != "snapshots" or not os.path.isdir(storage / "blobs") or os.path.islink(storage / "blobs"):
        return None
    if _REPO_FOLDER.fullmatch(storage.name):
        return storage.parent
    return storage


# ------------------------------------------------------------------------------------- removing


def remove_in(boundary: str | os.PathLike[str], relpath: str) -> bool:
    """Unlink ``boundary/relpath`` by name (never through a link: a link loses itself, not its target).

    Every directory component is opened with O_NOFOLLOW, so a folder swapped for a link to
    elsewhere makes this a no-op. Returns whether something was removed.
    """
    parts = _split(relpath)
    if not parts:
        return False
    try:
        bfd = os.open(boundary, (_O_PATH | _O_DIRECTORY | _O_CLOEXEC) if _O_PATH else (os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC))
    except OSError:
        return False
    try:
        if ".." in parts:
            return False
        with _descend(bfd, parts[:-1]) as cur:
            os.unlink(parts[-1], dir_fd=cur)
        return True
    except OSError:
        return False
    finally:
        os.close(bfd)


# ------------------------------------------------------------------------------------- writing


def _atomic_replace(target: Path, data: bytes, mode: int, shown: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot write {shown}: {exc.strerror}", rule="file.unwritable") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)  # our own temp file, created O_EXCL by mkstemp
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {shown}: {exc.strerror}", rule="file.unwritable") from None
        raise


def write_through(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> Path:
    """Atomically rewrite the file the user named, *through* any symlink to it.

    An allowlist mounted as a link (Kubernetes ConfigMaps) is edited where it really lives: the
    temp file is created next to the real file and renamed over it, so the link stays a link and
    the real file changes (or the write fails clearly, e.g. on a read-only mount). An existing
    target keeps its permission bits; a target that exists but is not a regular file is refused.
    Returns the real path written.
    """
    shown = os.fspath(path)
    target = Path(os.path.realpath(path))
    try:
        st = os.stat(target)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(
                f"{shown} is a symlink to {target}, which does not exist",
                rule="file.unwritable",
                fix="fix the link, or pass the real path",
            ) from None
        st = None
    except OSError as exc:
        raise InputError(f"cannot write {shown}: {exc.strerror}", rule="file.unwritable") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(shown)
        mode = stat.S_IMODE(st.st_mode)
    _atomic_replace(target, data, mode, shown)
    return target


def _dir_key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _cwd_chain() -> tuple[tuple[int, int] | None, frozenset[tuple[int, int]]]:
    """(device, inode) of the current directory, and of every folder strictly above it (empty if
    the current directory cannot be read: then no link is followed at all)."""
    flags = (_O_PATH or os.O_RDONLY) | _O_DIRECTORY | _O_CLOEXEC
    out: set[tuple[int, int]] = set()
    try:
        fd = os.open(".", flags)
    except OSError:
        return None, frozenset()
    try:
        here = prev = _dir_key(fd)
        for _ in range(4096):
            up = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = up
            key = _dir_key(fd)
            if key == prev:  # "/": its ".." is itself
                break
            out.add(key)
            prev = key
    except OSError:
        return None, frozenset()
    finally:
        os.close(fd)
    return here, frozenset(out)


def _output_folder(path: str, shown: str, *, create: bool = False) -> tuple[int, str]:
    """A descriptor of the folder a report named ``path`` goes into (caller closes it), and the name.

    The rule, the same for every spelling of the path (relative, absolute, ``$PWD/...``, with
    ``..``): a symlinked folder is followed only on the way *down to* the current directory,
    i.e. a link in a folder above the current directory that leads to the current directory or
    another folder above it (``/home -> /usr/home`` when you work under ``/usr/home/you``). Every
    other folder on the path must be a real folder: the current directory and everything below it
    (the tree under audit, which whoever wrote it controls) and every folder off the way to it.
    Each folder is opened from its parent's descriptor, so a link swapped in meanwhile is refused.
    ``create``: missing folders are made (``mkdirat``, never through a link).
    """
    if "\x00" in path:
        raise InputError(f"{shown!r} holds a NUL byte", rule="cli.output-unwritable", fix="choose another output path")
    comps = path.split("/")
    name = comps[-1]
    if name in ("", ".", ".."):
        raise InputError(
            f"{shown} names a folder, not a file", rule="cli.output-unwritable", fix="add a file name to the path"
        )
    here, above = _cwd_chain()
    pass_flags = (_O_PATH or os.O_RDONLY) | _O_DIRECTORY | _O_CLOEXEC
    try:
        fd = os.open("/" if path.startswith("/") else ".", pass_flags)
    except OSError as exc:
        raise InputError(f"cannot write {shown}: {exc.strerror}", rule="file.unwritable") from None
    walked: list[str] = ["/"] if path.startswith("/") else []
    try:
        for comp in comps[:-1]:
            if comp in ("", "."):
                continue
            walked.append(comp)
            folder = os.path.join(*walked)
            try:
                try:
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create or comp == "..":
                        raise
                    try:
                        os.mkdir(comp, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    if _dir_key(fd) not in above:
                        raise _output_link(shown, folder)
                    nxt = os.open(comp, pass_flags, dir_fd=fd)  # follows the link: checked next
                    if here is None or (_dir_key(nxt) not in above and _dir_key(nxt) != here):
                        os.close(nxt)
                        raise _output_link(shown, folder)
                else:
                    nxt = os.open(comp, pass_flags | _O_NOFOLLOW, dir_fd=fd)
                    if not stat.S_ISDIR(os.fstat(nxt).st_mode):  # pragma: no cover - O_DIRECTORY
                        os.close(nxt)
                        raise InputError(f"cannot write {shown}: {folder} is not a folder", rule="file.unwritable")
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK):
                    raise _output_link(shown, folder) from None
                raise InputError(f"cannot write {shown}: {folder}: {exc.strerror}", rule="file.unwritable") from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def _output_link(shown: str, folder: str) -> InputError:
    return InputError(
        f"{shown}: the folder {folder} is a symlink (to {os.path.realpath(folder)})",
        rule="cli.output-unwritable",
        fix="choose an output path whose folders below the current directory are real folders, "
        "or a path outside the tree under audit",
    )


def make_output_dir(path: str | os.PathLike[str]) -> None:
    """Make the folder ``path`` (and missing parents) for files a command writes, e.g. ``demo --out``.

    The same folder rule as :func:`write_new_or_regular` (no symlinked folder in or below the
    current directory, nor off the way down to it); missing folders are created from their
    parent's descriptor, never through a link.
    """
    shown = os.fspath(path)
    fd, _ = _output_folder(os.path.join(shown, "_"), shown, create=True)
    os.close(fd)


def write_new_or_regular(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write a report (e.g. ``audit --output``) to a path inside a possibly hostile tree.

    The file is created, or an existing *regular* file is overwritten; a symlink is refused, never
    followed, and a FIFO never blocks. Folders: the same rule for a relative and an absolute
    spelling of the same place (:func:`_output_folder`): no symlinked folder in or below the
    current directory, nor anywhere off the way down to it.
    """
    shown = os.fspath(path)
    dfd, name = _output_folder(shown, shown)
    flags = os.O_WRONLY | os.O_CREAT | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC
    try:
        try:
            fd = os.open(name, flags, mode, dir_fd=dfd)
        except OSError as exc:
            try:
                is_link = stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
            except OSError:
                is_link = False
            if exc.errno in (errno.ELOOP, errno.EMLINK) or is_link:
                raise InputError(
                    f"{shown} is a symlink",
                    rule="cli.output-unwritable",
                    fix="remove the link or choose another output path",
                ) from None
            if exc.errno == errno.ENXIO:
                raise _not_regular(shown) from None
            raise InputError(f"cannot write {shown}: {exc.strerror}", rule="file.unwritable") from None
    finally:
        os.close(dfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_regular(shown)
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as exc:
        raise InputError(f"cannot write {shown}: {exc.strerror}", rule="file.unwritable") from None
    finally:
        os.close(fd)


def write_in(boundary: str | os.PathLike[str], relpath: str, data: bytes, *, mode: int = 0o644) -> None:
    """Atomically write ``boundary/relpath`` (a file pipewarden owns, e.g. an HF cache ref).

    Missing folders are created; every folder is opened from its parent's descriptor with
    ``O_NOFOLLOW`` (a symlinked folder is refused, never followed), the temp file is created
    ``O_EXCL|O_NOFOLLOW`` beside the target and renamed over it by name inside that folder, so a
    link at the target is replaced, never written through.
    """
    parts = _split(relpath)
    if not parts or ".." in parts:
        raise InputError(f"cannot write {relpath!r} inside {os.fspath(boundary)}", rule="file.unwritable")
    flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
    try:
        fd = os.open(boundary, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"cannot write {relpath}: {exc.strerror}", rule="file.unwritable") from None
    try:
        for comp in parts[:-1]:
            try:
                os.mkdir(comp, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                nxt = os.open(comp, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _link_error(relpath, boundary, f"lies below a symlinked folder ({comp})") from None
                raise
            os.close(fd)
            fd = nxt
        name = parts[-1]
        tmp = f".{name}.{os.urandom(6).hex()}.tmp"
        tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, mode, dir_fd=fd)
        try:
            with os.fdopen(tfd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=fd)
            except OSError:
                pass
            raise
    except OSError as exc:
        raise InputError(f"cannot write {relpath}: {exc.strerror}", rule="file.unwritable") from None
    finally:
        os.close(fd)


def replace_regular(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Atomically replace a file that lives in a possibly hostile directory (a signature file).

    An existing entry must be a regular file: a symlink is refused (never written through, never
    silently replaced by a file), and so is a FIFO or device.
    """
    shown = os.fspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InputError(f"cannot write {shown}: {exc.strerror}", rule="file.unwritable") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise InputError(
                f"{shown} is a symlink",
                rule="file.link-outside",
                fix="remove the link, then sign again",
            )
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(shown)
    _atomic_replace(Path(path), data, mode, shown)
