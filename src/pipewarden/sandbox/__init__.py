"""sandbox: verified source -> vetted class (scan, restricted compile, restricted exec, guarded run).

Public entry point: :func:`load_class`. Importing this package imports neither torch nor diffusers.

Decides: whether a pipeline source may run at all and, while it runs, what it may import, read,
write, call and define. Trusts: the registry's verdict that the bytes are the admitted ones (it does
not re-check signatures), the shipped policy data, and the host libraries that data names; never
the pipeline code nor any object it hands back.

Modules, in the order a load uses them:

- ``scan``: ``ast`` only (no torch import): exactly one pipeline class, no refused syntax;
- ``compile``: the RestrictedPython transformer and the compile-time rules of the policy;
- ``policy``: the data (``default.toml`` and the generated ``torch_ops.toml``,
  ``diffusers_pipelines.toml``), parsed strictly into frozen objects; ``policy.resolve`` resolves
  every class path and module it names against the installed libraries or refuses (fail closed);
- ``runtime``: the guard hooks the compiled code calls (facades, ``decide_attribute``, writes,
  class creation, builtins);
- ``tripwire``: the audit hook that refuses process, file and network events while armed;
- ``_load``: the pipeline of the above, behind :func:`load_class`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipewarden.sandbox.policy import SandboxPolicy

__all__ = ["load_class"]


def load_class(
    source: str | bytes,
    *,
    filename: str = "pipeline.py",
    policy: SandboxPolicy | None = None,
    import_aliases: Mapping[str, str] | None = None,
    load_built: Any = None,
) -> type:
    """Scan + restricted compile + restricted exec; return the vetted DiffusionPipeline subclass.

    ``load_built``: a ``pipewarden.sandbox.runtime.LoadBuilt`` the loader fills with the components
    it builds for this load (attention processors may be installed on those only)."""
    from pipewarden.sandbox._load import load_class as _load_class

    return _load_class(source, filename=filename, policy=policy, import_aliases=import_aliases, load_built=load_built)
