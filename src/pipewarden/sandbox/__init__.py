"""sandbox: verified source -> vetted class (scan, restricted compile, restricted exec, guarded run).

Public entry point: :func:`load_class`. Submodules: ``scan`` (ast only, no torch import),
``compile`` (RestrictedPython transformer), ``policy`` (the data), ``tripwire`` (audit hook).
Importing this package imports neither torch nor diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipewarden.sandbox.policy import SandboxPolicy

__all__ = ["load_class"]


def load_class(
    source: str | bytes,
    *,
    filename: str = "pipeline.py",
    policy: SandboxPolicy | None = None,
    import_aliases: Mapping[str, str] | None = None,
) -> type:
    """Scan + restricted compile + restricted exec; return the vetted DiffusionPipeline subclass."""
    from pipewarden.sandbox._load import load_class as _load_class

    return _load_class(source, filename=filename, policy=policy, import_aliases=import_aliases)
