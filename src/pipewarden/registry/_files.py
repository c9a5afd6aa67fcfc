"""Walk a directory into ``relpath -> sha256`` for signing, verifying and locking.

Decides which files a manifest covers: every regular file under the root, at any depth, hidden
files included, except directories named ``__pycache__`` or ``.git`` (at any depth; the loader
never reads them) and the top-level signature file. Symlinks, devices, sockets and FIFOs are
refused, never followed. File names must be UTF-8. The same rules as
``pipewarden.loader.local`` so that what is signed is exactly what the loader reports.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from pipewarden.errors import InputError
from pipewarden.loader.digests import sha256_stream

IGNORED_DIRS = frozenset({"__pycache__", ".git"})
#: Bound on the number of files in a signed or locked directory.
MAX_FILES = 100_000


def walk_files(root: str | os.PathLike[str], *, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """relpath (POSIX) -> sha256 of every regular file under ``root``; ``exclude`` are top-level relpaths."""
    base = Path(root)
    try:
        st = os.stat(base)
    except OSError as exc:
        raise InputError(
            f"cannot read directory {base}: {exc.strerror}", rule="file.unreadable"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{base} is not a directory", rule="file.not-directory")
    files: dict[str, str] = {}

    def onerror(exc: OSError) -> None:
        raise InputError(f"cannot read {exc.filename}: {exc.strerror}", rule="file.unreadable")

    for dirpath, dirnames, filenames in os.walk(base, onerror=onerror):
        kept = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if d in IGNORED_DIRS and not os.path.islink(full):
                continue
            if not stat.S_ISDIR(os.lstat(full).st_mode):
                raise InputError(
                    f"{full} is a symlink",
                    rule="file.not-regular",
                    fix="replace the link with the files it points to",
                )
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = Path(full).relative_to(base).as_posix()
            _check_name(rel)
            if rel in exclude:
                continue
            files[rel] = _hash_regular(full)
            if len(files) > MAX_FILES:
                raise InputError(f"{base} holds more than {MAX_FILES} files", rule="file.too-many")
    return files


def _check_name(rel: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"file name {rel!r} is not valid UTF-8",
            rule="file.name-not-utf8",
            fix="rename the file",
        ) from None


def _hash_regular(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if os.path.islink(path):
            raise InputError(
                f"{path} is a symlink",
                rule="file.not-regular",
                fix="replace the link with the file it points to",
            ) from None
        raise InputError(f"cannot read {path}: {exc.strerror}", rule="file.unreadable") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InputError(
                f"{path} is not a regular file",
                rule="file.not-regular",
                fix="remove it from the directory",
            )
        return sha256_stream(fh)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a fresh temp file in the same directory and a rename."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(
            f"cannot write {target}: {exc.strerror}", rule="file.unwritable"
        ) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise InputError(
                f"cannot write {target}: {exc.strerror}", rule="file.unwritable"
            ) from None
        raise
