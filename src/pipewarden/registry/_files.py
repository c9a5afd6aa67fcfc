"""Walk a directory into ``relpath -> sha256`` for signing, verifying and locking.

Decides which files a manifest covers: every regular file under the root, at any depth, hidden
files included, except directories named ``__pycache__`` or ``.git`` (at any depth; the loader
never reads them) and the top-level signature file. Symlinks, devices, sockets and FIFOs are
refused, never followed. File names must be UTF-8. The rules live in the one walker of
``pipewarden.fsaccess``, which the loader uses too, so what is signed is exactly what the loader
reports.
"""

from __future__ import annotations

import os

from pipewarden import fsaccess
from pipewarden.fsaccess import IGNORED_DIRS, MAX_FILES

__all__ = ["IGNORED_DIRS", "MAX_FILES", "atomic_write", "walk_files"]


def walk_files(root: str | os.PathLike[str], *, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """relpath (POSIX) -> sha256 of every regular file under ``root``; ``exclude`` are top-level relpaths."""
    entries = fsaccess.walk(root, exclude=exclude, what="signed or locked directory")
    return {rel: fsaccess.hash_in(root, e.real) for rel, e in entries.items()}


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Atomically rewrite ``path`` (through a symlink to the real file; see ``fsaccess.write_through``)."""
    fsaccess.write_through(path, data, mode=mode)
