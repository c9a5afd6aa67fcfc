"""Run-time side of the sandbox: facades, guard hooks, reviewed builtins, class creation.

Decides, for sandboxed code: what an import returns (a facade, never a module), which attribute of
which object may be read (per-type allowlists + the global deny list), which object may be written
(the sandbox's own objects only), and how classes and functions the sandbox defines are created
(every function runs with the tripwire armed).

Trusts: the policy, the host libraries named in it (torch, diffusers, ...), and nothing the sandboxed
code hands it: names are checked with ``type(name) is str`` and every refusal is a fresh
``PolicyViolation`` that carries strings only.

Modules (one :class:`Sandbox` built in layers, each a class in its own module):

- ``_base``: the sandbox's state, the resolved policy (``policy.resolve``: fails closed), ownership
  (``owns``) and ``check_value``;
- ``facades``: imports, module facades and the sandbox replacements of host functions;
- ``attributes``: ``guarded_getattr`` and ``decide_attribute`` (-> :class:`Verdict`), the one
  attribute decision;
- ``hooks``: items, iteration, writes, in-place operators, function wrapping, class creation,
  builtins and the globals the compiled module runs with;
- ``objects``: the stand-ins sandboxed code holds (Facade, DeniedName, ClassView, ClassRef, ...);
- ``snapshots``: read-only copies of host containers; ``argguards``: argument checks on host calls;
- ``_common``: the refusal constructor, shared type tables and class-path resolution.
"""

from __future__ import annotations

from pipewarden.sandbox.runtime._base import LoadBuilt
from pipewarden.sandbox.runtime.attributes import Verdict
from pipewarden.sandbox.runtime.hooks import GuardHooks
from pipewarden.sandbox.runtime.objects import (
    ClassRef,
    ClassView,
    DeniedName,
    Facade,
    KeyCheckedClass,
    SandboxLogger,
)

__all__ = [
    "ClassRef", "ClassView", "DeniedName", "Facade", "KeyCheckedClass", "LoadBuilt", "Sandbox", "SandboxLogger", "Verdict",
]


class Sandbox(GuardHooks):
    """One sandboxed module: its facades, guard hooks and the classes/functions it created."""
