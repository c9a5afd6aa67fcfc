"""Pipeline code as bytes: resolve ``custom_pipeline`` to the exact bytes that will be executed.

Decides nothing about trust. Reads each file once; the digest recorded is of the bytes kept in
``CodeSource.source_bytes``, and those very bytes are what the sandbox compiles (no re-read).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

CodeKind = Literal["local", "hub", "community"]

#: The module file diffusers loads from a code repo or directory.
MODULE_FILE = "pipeline.py"


@dataclass(frozen=True)
class CodeSource:
    """Unverified pipeline code, read once.

    ``files`` maps relpath -> sha256 of every file in the code directory/repo at ``commit`` (what a
    signature manifest must cover); ``module_relpath`` names the file that will be executed and
    ``sha256`` is the digest of ``source_bytes`` (== ``files[module_relpath]``).
    """

    kind: CodeKind
    source_id: str
    commit: str | None
    module_relpath: str
    source_bytes: bytes
    sha256: str
    files: Mapping[str, str] = field(default_factory=dict)
    signature_bytes: bytes | None = None
    root: Path | None = None
    #: OpenSSF model-signing signature files (``model.sig``, ``NAME.model.sig``): relpath -> bytes.
    model_signatures: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))
        object.__setattr__(self, "model_signatures", MappingProxyType(dict(self.model_signatures)))
