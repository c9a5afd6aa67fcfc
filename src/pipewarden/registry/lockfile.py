"""Lock files (``pipewarden.lock``): the exact bytes a pipeline load may use.

What it decides: whether the files a load is about to use are exactly those recorded (same
relpaths, same sha256, same commit). What it trusts: nothing in the file until it is parsed into
frozen :class:`Lockfile` / :class:`LockEntry` objects; any malformed lock is an ``InputError``.
The top-level signature file of a directory is never part of a lock (signatures may accumulate
without changing what runs).

Format (TOML; see README "Lock file")::

    format = "pipewarden-lock/1"

    [[entries]]
    source = "local:weights"             # local: relative to the lock file's directory;
                                         # or "org/repo" for hub sources
    role = "weights"                     # "weights" or "code"
    commit = "0123...abcd"               # optional: resolved commit (hub sources)
    [entries.files]
    "model_index.json" = "<sha256>"
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipewarden.errors import InputError, IntegrityError
from pipewarden.loader.digests import is_commit_hex, is_sha256_hex
from pipewarden.registry import _toml
from pipewarden.registry._files import atomic_write
from pipewarden.registry.signatures import SIGNATURE_FILE, is_signature_file, walk_signed_dir

__all__ = ["LOCK_FILE", "LOCK_FORMAT", "LockEntry", "Lockfile", "write_lock", "ROLES"]

LOCK_FILE = "pipewarden.lock"
LOCK_FORMAT = "pipewarden-lock/1"
ROLES = ("code", "weights")
MAX_LOCK_BYTES = 16 * 1024 * 1024
_HEADER = (
    "pipewarden.lock: the exact files (sha256) and commits a pipeline load may use.\n"
    "Written by `pipewarden lock`; loads with lockfile= refuse any difference. Do not edit by hand."
)


def _drop_signature(files: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in files.items() if not is_signature_file(k)}


@dataclass(frozen=True)
class LockEntry:
    """One source as locked: its id, role, resolved commit (None for local dirs) and files."""

    source: str
    role: str
    files: Mapping[str, str]
    commit: str | None = None
    #: The source as written in the file when it differs from ``source``: a local path relative
    #: to the lock file's directory (``local:weights``), so a lock committed on one machine
    #: matches a checkout anywhere else. ``source`` is always the absolute form the loader uses.
    stored: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source or len(self.source) > 4096:
            raise ValueError("LockEntry.source must be a non-empty str")
        if self.role not in ROLES:
            raise ValueError(f"LockEntry.role must be one of {ROLES}")
        if self.commit is not None and not is_commit_hex(self.commit):
            raise ValueError("LockEntry.commit must be 40 lowercase hex digits or None")
        files = _drop_signature(self.files)
        for rel, digest in files.items():
            if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in rel.split("/"):
                raise ValueError(f"LockEntry file {rel!r} is not a relative path")
            if not is_sha256_hex(digest):
                raise ValueError(f"LockEntry digest for {rel!r} is not sha256 hex")
        object.__setattr__(self, "files", MappingProxyType(dict(sorted(files.items()))))

    def check_commit(self, commit: str | None, *, what: str) -> None:
        """Refuse a resolved commit other than the locked one (when the lock records one)."""
        if self.commit is not None and commit != self.commit:
            raise IntegrityError(
                f"{what} {self.source!r} resolved to commit {commit}, but the lock file pins {self.commit}",
                rule="lock.commit-mismatch",
                fix="load the locked revision, or re-run `pipewarden lock` if the change is intended",
            )

    def check_files(self, actual: Mapping[str, str], *, what: str = "files") -> None:
        """Refuse any missing, extra or changed file; names the file and both hashes."""
        present = _drop_signature(actual)
        problems: list[str] = []
        for rel in sorted(set(self.files) | set(present)):
            locked, got = self.files.get(rel), present.get(rel)
            if locked == got:
                continue
            if got is None:
                problems.append(f"{rel} is locked (sha256 {locked}) but missing")
            elif locked is None:
                problems.append(f"{rel} (sha256 {got}) is not in the lock file")
            else:
                problems.append(f"{rel}: lock file has sha256 {locked}, found sha256 {got}")
        if problems:
            shown = "; ".join(problems[:10]) + (
                f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
            )
            raise IntegrityError(
                f"{what} of {self.source!r} differ from the lock file: {shown}",
                rule="lock.digest-mismatch",
                fix="restore the locked files, or re-run `pipewarden lock` if the change is intended",
            )

    def check_names(self, present: Iterable[str], *, what: str = "files") -> None:
        """Refuse a file present in the source that the lock does not name (an *extra* file).

        The digests of the files that are read are compared while they are read; this catches the
        files the load would not read (a planted ``unet/extra.safetensors``, a new config), so a
        locked directory holds exactly the locked files, as a signature manifest does.
        """
        names = set(_drop_signature(dict.fromkeys(present, "")))
        problems = [f"{rel} is not in the lock file" for rel in sorted(names - set(self.files))]
        if problems:
            shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise IntegrityError(
                f"{what} of {self.source!r} differ from the lock file: {shown}",
                rule="lock.digest-mismatch",
                fix="remove the extra files, or re-run `pipewarden lock` if they are meant to be there",
            )

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"source": self.stored or self.source, "role": self.role}
        if self.commit is not None:
            doc["commit"] = self.commit
        doc["files"] = dict(self.files)
        return doc


@dataclass(frozen=True)
class Lockfile:
    """A parsed lock file: entries, unique per (source, role)."""

    entries: tuple[LockEntry, ...] = ()
    origin: str = "<lockfile>"
    sha256: str = ""
    _index: Mapping[tuple[str, str], LockEntry] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], LockEntry] = {}
        for e in self.entries:
            if (e.source, e.role) in index:
                raise ValueError(f"two lock entries for {e.source!r} ({e.role})")
            index[(e.source, e.role)] = e
        object.__setattr__(self, "_index", MappingProxyType(index))

    def entry_for(self, source: str, role: str | None = None) -> LockEntry | None:
        """The entry for ``source`` (and ``role``, needed when one repo is locked as both)."""
        if role is not None:
            return self._index.get((source, role))
        found = [e for e in self.entries if e.source == source]
        if len(found) > 1:
            raise ValueError(f"{source!r} is locked as both code and weights: pass role=")
        return found[0] if found else None

    @classmethod
    def from_bytes(cls, data: bytes, *, origin: str = "<lockfile>", base_dir: str | os.PathLike[str] | None = None) -> Lockfile:
        """Parse a lock; relative ``local:`` sources are resolved against ``base_dir`` (the lock
        file's directory; the current directory when None)."""
        from pipewarden.loader.digests import sha256_bytes

        doc = _toml.loads(data, what=f"lock file {origin}", limit=MAX_LOCK_BYTES)
        base = Path(base_dir if base_dir is not None else ".").resolve()
        lock = cls(entries=_parse(doc, origin, base), origin=origin, sha256=sha256_bytes(bytes(data)))
        # Lock files are machine-written: any other byte layout (a hand edit, a changed comment,
        # converted line endings) is refused, so every byte of the file is meaningful.
        if lock.to_toml().encode("utf-8") != bytes(data):
            raise _bad(f"lock file {origin} is not in the layout `pipewarden lock` writes (hand-edited?)")
        return lock

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Lockfile:
        p = Path(path)
        from pipewarden.fsaccess import open_user_file

        try:
            fh = open_user_file(p, what="lock file")
        except InputError as exc:
            raise InputError(
                exc.what, rule=exc.rule, fix="check the path, or create it with `pipewarden lock`"
            ) from None
        with fh:
            data = fh.read(MAX_LOCK_BYTES + 1)
        return cls.from_bytes(data, origin=str(p), base_dir=p.resolve().parent)

    def merged(self, entries: Iterable[LockEntry]) -> Lockfile:
        """A new lock with ``entries`` replacing those of the same (source, role)."""
        new = list(entries)
        keys = {(e.source, e.role) for e in new}
        kept = [e for e in self.entries if (e.source, e.role) not in keys]
        return Lockfile(entries=tuple(kept + new), origin=self.origin)

    def to_toml(self) -> str:
        return _toml.dumps(
            {"format": LOCK_FORMAT, "entries": [e.to_document() for e in self.entries]}, header=_HEADER
        )


def write_lock(path: str | os.PathLike[str], entries: Iterable[LockEntry], *, merge: bool = True) -> Lockfile:
    """Write ``entries`` to ``path`` atomically; with ``merge`` keep other entries already there."""
    p = Path(path)
    base_dir = p.resolve().parent
    base = Lockfile.load(p) if merge and p.exists() else Lockfile(origin=str(p))
    lock = base.merged(_relative_to(e, base_dir) for e in entries)
    text = lock.to_toml()
    Lockfile.from_bytes(text.encode("utf-8"), origin=str(p), base_dir=base_dir)  # must parse back
    atomic_write(p, text.encode("utf-8"))
    return lock


_LOCAL = "local:"


def _relative_to(entry: LockEntry, base_dir: Path) -> LockEntry:
    """The entry as written in a lock in ``base_dir``: local paths relative to it (POSIX)."""
    import dataclasses

    if entry.stored is not None or not entry.source.startswith(_LOCAL + "/"):
        return entry
    rel = os.path.relpath(entry.source[len(_LOCAL):], base_dir)
    return dataclasses.replace(entry, stored=_LOCAL + Path(rel).as_posix())


def _absolute(source: str, base_dir: Path) -> str:
    """A stored source as the loader names it: ``local:<rel>`` -> ``local:<base_dir/rel, resolved>``.

    Absolute ``local:/...`` entries (written by older versions) are kept as they are.
    """
    if not source.startswith(_LOCAL) or source.startswith(_LOCAL + "/"):
        return source
    return _LOCAL + str((base_dir / source[len(_LOCAL):]).resolve())


def _bad(what: str) -> InputError:
    return InputError(
        what,
        rule="lock.malformed",
        fix="re-create it with `pipewarden lock`",
    )


def _parse(doc: Mapping[str, Any], origin: str, base_dir: Path) -> tuple[LockEntry, ...]:
    where = f"lock file {origin}"
    if set(doc) - {"format", "entries"}:
        raise _bad(f"{where}: unknown key(s) {sorted(set(doc) - {'format', 'entries'})}")
    if doc.get("format") != LOCK_FORMAT:
        raise _bad(f"{where}: format is not {LOCK_FORMAT!r}")
    raw_entries = doc.get("entries", [])
    if not isinstance(raw_entries, list) or len(raw_entries) > 10_000:
        raise _bad(f"{where}: entries is not an array of tables")
    entries = []
    seen: set[tuple[str, str]] = set()
    for i, raw in enumerate(raw_entries):
        w = f"{where}: entries[{i}]"
        if not isinstance(raw, dict):
            raise _bad(f"{w} is not a table")
        if set(raw) - {"source", "role", "commit", "files"} or not {"source", "role", "files"} <= set(raw):
            raise _bad(f"{w} must have source, role, files and optionally commit (nothing else)")
        files = raw["files"]
        if not isinstance(files, dict) or len(files) > 100_000:
            raise _bad(f"{w}.files is not a table")
        if any(is_signature_file(k) for k in files if isinstance(k, str)):
            raise _bad(f"{w}.files lists a signature file ({SIGNATURE_FILE}, model.sig), which is never locked")
        if not all(isinstance(v, str) for v in files.values()):
            raise _bad(f"{w}.files values must be sha256 strings")
        try:
            stored = raw["source"]
            source = _absolute(stored, base_dir) if isinstance(stored, str) and stored else stored
            entry = LockEntry(source=source, role=raw["role"], files=files, commit=raw.get("commit"),
                              stored=stored if source != stored else None)
        except (ValueError, TypeError) as exc:
            raise _bad(f"{w}: {exc}") from None
        if (entry.source, entry.role) in seen:
            raise _bad(f"{w}: {entry.source!r} ({entry.role}) is locked twice")
        seen.add((entry.source, entry.role))
        entries.append(entry)
    return tuple(entries)


def entry_for_local_code(path: str | os.PathLike[str]) -> LockEntry:
    """Lock entry for a local pipeline directory or ``.py`` file, with the loader's source id.

    A directory is ``local:<resolved dir>`` with every file (same rules as signing); a single
    ``.py`` file is ``local:<resolved file>`` with just that file.
    """
    import stat

    from pipewarden.loader.digests import sha256_file

    p = Path(path).expanduser()
    try:
        st = os.stat(p)
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc.strerror}", rule="file.unreadable") from None
    root = p.resolve()
    if stat.S_ISDIR(st.st_mode):
        files, _ = walk_signed_dir(root)
        if "pipeline.py" not in files:
            raise InputError(
                f"{root} has no pipeline.py", rule="code.module-missing"
            )
        return LockEntry(source=f"local:{root}", role="code", files=files)
    if stat.S_ISREG(st.st_mode) and p.suffix == ".py":
        return LockEntry(source=f"local:{root}", role="code", files={root.name: sha256_file(root)})
    raise InputError(f"{p} is not a pipeline directory or .py file", rule="spec.custom-pipeline")


def entry_for_local_weights(path: str | os.PathLike[str]) -> LockEntry:
    """Lock entry for a local weights directory: sha256 of every file the loader considers.

    Each file is hashed as the loader reads it (``fsaccess.open_in`` from the snapshot's link
    boundary: links only where the loader follows them, never a FIFO), not through ``open()``.
    """
    from pipewarden import fsaccess
    from pipewarden.loader.digests import sha256_stream
    from pipewarden.loader.local import resolve_local_weights

    snap = resolve_local_weights(path)
    files = {}
    for rel in snap.files:
        with fsaccess.open_in(snap.link_boundary, rel, root=snap.root) as fh:
            files[rel] = sha256_stream(fh)
    return LockEntry(source=snap.source, role="weights", files=files, commit=snap.commit)
