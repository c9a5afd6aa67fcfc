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

from pipewarden import fsaccess
from pipewarden.errors import InputError
from pipewarden.loader.code import MODULE_FILE, CodeSource
from pipewarden.loader.digests import sha256_bytes
from pipewarden.loader.snapshot import FileRecord, Snapshot

#: Largest pipeline source we read (diffusers' biggest community file is ~300 kB).
MAX_SOURCE_BYTES = 4 * 1024 * 1024


def _signature_file_name() -> str:
    try:
        from pipewarden.registry.signatures import SIGNATURE_FILE

        return SIGNATURE_FILE
    except ImportError:  # pragma: no cover - registry always ships with the package
        return "pipewarden.sig"


def _is_signature_file(relpath: str) -> bool:
    from pipewarden.registry.signatures import is_signature_file

    return is_signature_file(relpath)


def _is_model_signature_file(relpath: str) -> bool:
    from pipewarden.registry.modelsign import is_model_signature_file

    return is_model_signature_file(relpath)


MAX_MODEL_SIGNATURE_BYTES = 4 * 1024 * 1024
MAX_MODEL_SIGNATURE_FILES = 16


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
        files, model_sig_names = _walk_code_dir(root, exclude=sig_name)
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
        real = p.resolve()  # the user named this file; a link they made is theirs to follow
        root = real.parent
        module = real.name
        files = {}
        model_sig_names = ()
    else:
        raise InputError(f"custom_pipeline {str(path)!r} is not a regular file or directory", rule="file.not-regular")
    source_bytes = _read_source(root / module)
    digest = sha256_bytes(source_bytes)
    files[module] = digest  # the digest of the bytes we keep, not of a second read
    sig_path = root / sig_name
    signature_bytes = _read_small(sig_path) if os.path.lexists(sig_path) else None
    if len(model_sig_names) > MAX_MODEL_SIGNATURE_FILES:
        raise InputError(
            f"{root} holds {len(model_sig_names)} model-signing signature files (at most {MAX_MODEL_SIGNATURE_FILES})",
            rule="file.too-large",
            fix="keep one model.sig / NAME.model.sig per signer",
        )
    model_signatures = {rel: _read_small(root / rel, MAX_MODEL_SIGNATURE_BYTES) for rel in model_sig_names}
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
        model_signatures=model_signatures,
    )


def _read_source(path: Path) -> bytes:
    try:
        data = fsaccess.read_in(path.parent, path.name, links=False, max_bytes=MAX_SOURCE_BYTES)
    except InputError as exc:
        if "larger than" in exc.what:
            raise InputError(
                f"pipeline file {path} is larger than {MAX_SOURCE_BYTES} bytes",
                rule="file.too-large",
                fix="a community pipeline is one reasonably sized .py file",
            ) from None
        raise
    return data


def _read_small(path: Path, limit: int = 1024 * 1024) -> bytes:
    return fsaccess.read_in(path.parent, path.name, links=False, max_bytes=limit)


def _walk_code_dir(root: Path, *, exclude: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """(relpath -> sha256 of every regular file under ``root`` but the module and the signature
    files, model-signing signature files). Symlinks/special files are refused, signature files too."""
    entries = fsaccess.walk(root, exclude=frozenset({exclude}), what="pipeline code directory")
    files = {
        rel: fsaccess.hash_in(root, e.real)
        for rel, e in entries.items()
        if rel != MODULE_FILE and not _is_signature_file(rel)
    }
    return files, tuple(sorted(rel for rel in entries if _is_model_signature_file(rel)))


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
    boundary = fsaccess.hf_cache_boundary(root)
    entries = fsaccess.walk(root, boundary=boundary, links=True, what="weights directory")
    if "model_index.json" not in entries:
        raise InputError(
            f"{root} has no model_index.json",
            rule="weights.file-missing",
            fix="point load_pipeline at a directory laid out like google/ddpm-cifar10-32",
        )
    files = {rel: FileRecord(relpath=rel, sha256="", size=e.size) for rel, e in entries.items()}
    return Snapshot(root=root, source=f"local:{root}", commit=None, files=files, boundary=boundary)
