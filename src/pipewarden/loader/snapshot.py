"""Typed, frozen records of what the loader read: files with the digests of the bytes read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType


@dataclass(frozen=True)
class FileRecord:
    """One file of a snapshot: its path relative to the snapshot root, sha256 and size."""

    relpath: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Snapshot:
    """A set of files resolved from one source at one commit (``commit`` is None for local dirs).

    ``files`` maps relpath -> FileRecord for every file considered; each digest was computed from
    the bytes actually read. Holding a Snapshot says nothing about trust: pins and signatures are
    checked against ``files`` by the registry, and the bytes are re-hashed when they are used.
    """

    root: Path
    source: str
    commit: str | None
    files: Mapping[str, FileRecord] = field(default_factory=dict)
    #: The directory links may stay inside while files are read (``pipewarden.fsaccess``): the
    #: HF cache repo folder for cache snapshots (entries link into its ``blobs/``), else ``root``.
    boundary: Path | None = None

    @property
    def link_boundary(self) -> Path:
        return Path(self.boundary) if self.boundary is not None else Path(self.root)

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))

    def digests(self) -> Mapping[str, str]:
        return MappingProxyType({k: v.sha256 for k, v in self.files.items()})

    def path(self, relpath: str) -> Path:
        if relpath not in self.files:
            raise KeyError(relpath)
        return self.root / relpath
