"""Local sources: a pipeline directory or ``.py`` file, and a local weights directory.

Reads bytes and records digests; decides nothing about trust. Symlinks and special files are
refused inside code directories (a signature manifest must describe regular files only), and the
module file is read exactly once: the bytes kept in ``CodeSource.source_bytes`` are the ones that
were hashed and the ones that will be compiled.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pipewarden.errors import InputError
from pipewarden.loader.code import MODULE_FILE, CodeSource
from pipewarden.loader.digests import sha256_bytes, sha256_file
from pipewarden.loader.snapshot import FileRecord, Snapshot

#: Largest pipeline source we read (diffusers' biggest community file is ~300 kB).
MAX_SOURCE_BYTES = 4 * 1024 * 1024
#: Directories never counted as part of a code directory's contents.
_IGNORED_DIRS = frozenset({"__pycache__", ".git"})


def _signature_file_name() -> str:
    try:
        from pipewarden.registry.signatures import SIGNATURE_FILE

        return SIGNATURE_FILE
    except ImportError:  # pragma: no cover - registry always ships with the package
        return "pipewarden.sig"


def resolve_local_code(path: str | os.PathLike[str]) -> CodeSource:
    """Read a local pipeline: a directory holding ``pipeline.py``, or a ``.py`` file."""
    p = Path(path).expanduser()
    try:
        st = os.stat(p)
    except OSError:
        raise InputError(
            f"custom_pipeline {str(path)!r} does not exist",
            rule="spec.custom-pipeline",
            fix="check the path",
        ) from None
    sig_name = _signature_file_name()
    if stat.S_ISDIR(st.st_mode):
        root = p.resolve()
        module = MODULE_FILE
        files = _walk_code_dir(root, exclude=sig_name)
        if not (root / module).is_file():
            raise InputError(
                f"{root} has no {MODULE_FILE}",
                rule="code.module-missing",
                fix=f"pass the .py file itself, or rename it to {MODULE_FILE}",
            )
    elif stat.S_ISREG(st.st_mode):
        if p.suffix != ".py":
            raise InputError(
                f"custom_pipeline {str(path)!r} is not a .py file",
                rule="code.not-python",
                fix="pass the pipeline's .py file or its directory",
            )
        root = p.resolve().parent
        module = p.name
        files = {}
    else:
        raise InputError(f"custom_pipeline {str(path)!r} is not a regular file or directory", rule="file.not-regular")
    source_bytes = _read_source(root / module)
    digest = sha256_bytes(source_bytes)
    files[module] = digest  # the digest of the bytes we keep, not of a second read
    sig_path = root / sig_name
    signature_bytes = _read_small(sig_path) if sig_path.is_file() else None
    return CodeSource(
        kind="local",
        source_id=f"local:{root / module}" if stat.S_ISREG(st.st_mode) else f"local:{root}",
        commit=None,
        module_relpath=module,
        source_bytes=source_bytes,
        sha256=digest,
        files=files,
        signature_bytes=signature_bytes,
        root=root,
    )


def _read_source(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise InputError(
            f"cannot read pipeline file {path}: {exc.strerror}",
            rule="file.not-regular",
            fix="check the path and permissions",
        ) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InputError(f"{path} is not a regular file", rule="file.not-regular")
        data = fh.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise InputError(
            f"pipeline file {path} is larger than {MAX_SOURCE_BYTES} bytes",
            rule="file.too-large",
            fix="a community pipeline is one reasonably sized .py file",
        )
    return data


def _read_small(path: Path, limit: int = 1024 * 1024) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{path} is larger than {limit} bytes", rule="file.too-large")
    return data


def _walk_code_dir(root: Path, *, exclude: str) -> dict[str, str]:
    """relpath -> sha256 of every regular file under ``root`` (symlinks/special files refused)."""
    files: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS)
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise InputError(
                    f"{os.path.join(dirpath, d)} is a symlink",
                    rule="file.not-regular",
                    fix="replace the link with the files it points to",
                )
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel == exclude:
                continue
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                raise InputError(
                    f"{full} is not a regular file",
                    rule="file.not-regular",
                    fix="remove it from the pipeline directory",
                )
            if rel == MODULE_FILE:
                continue  # hashed from the bytes we keep, by the caller
            files[rel] = sha256_file(full)
    return files


def resolve_local_weights(path: str | os.PathLike[str]) -> Snapshot:
    """A local weights directory. Digests are computed later, while the files are loaded."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(
            f"weights directory {str(path)!r} does not exist",
            rule="spec.weights",
            fix="check the path",
        )
    root = root.resolve()
    if not (root / "model_index.json").is_file():
        raise InputError(
            f"{root} has no model_index.json",
            rule="weights.file-missing",
            fix="point load_pipeline at a directory laid out like google/ddpm-cifar10-32",
        )
    files: dict[str, FileRecord] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS)
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            files[rel] = FileRecord(relpath=rel, sha256="", size=full.stat().st_size)
    return Snapshot(root=root, source=f"local:{root}", commit=None, files=files)
