"""scan -> restricted compile -> restricted exec: verified source text in, vetted class out.

Decides: whether a pipeline source becomes a class the host may instantiate. Trusts: the policy and
the caller's promise that ``source`` is the verified text (the loader hashes and pins it before
calling; this module never reads files or the network).
"""

from __future__ import annotations

import ast
import re
import weakref
from collections.abc import Mapping
from typing import Any

from pipewarden.errors import PipewardenError, PolicyViolation, ScanError
from pipewarden.sandbox import tripwire
from pipewarden.sandbox.compile import compile_restricted_module
from pipewarden.sandbox.policy import SandboxPolicy, default_policy
from pipewarden.sandbox.scan import decode_source, require_single_pipeline, scan_tree

__all__ = ["companion_classes", "load_class"]


def _module_name(filename: str) -> str:
    stem = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    if stem.endswith(".py"):
        stem = stem[:-3]
    stem = re.sub(r"[^0-9A-Za-z_]", "_", stem) or "pipeline"
    return f"pipewarden_sandboxed.{stem}"


def load_class(
    source: str | bytes,
    *,
    filename: str = "pipeline.py",
    policy: SandboxPolicy | None = None,
    import_aliases: Mapping[str, str] | None = None,
    load_built: Any = None,
) -> type:
    """Scan, compile under the restricted rules, execute in restricted globals; return the class.

    The returned class is the file's single ``DiffusionPipeline`` subclass. All functions the file
    defines (``__init__``, ``__call__``, helpers, lambdas) run with the audit-hook tripwire armed and
    read attributes through the per-type allowlists, whoever calls them.
    """
    if not isinstance(filename, str):
        raise TypeError("filename must be a str")
    policy = policy or default_policy()
    if import_aliases:
        policy = policy.with_extras(import_aliases=import_aliases)

    # 1. Scan (ast only): decodable, parseable, exactly one pipeline class.
    text = decode_source(source, filename=filename)
    from pipewarden.sandbox.scan import parse_source

    tree = parse_source(text, filename=filename)
    result = scan_tree(tree, import_aliases=policy.import_aliases)
    candidate = require_single_pipeline(result, filename=filename)

    # 2. Restricted compile (raises PolicyViolation listing every refused construct).
    code = compile_restricted_module(text, filename=filename, policy=policy)
    # Arm by code origin: a frame running any of this code arms the tripwire, whoever called it.
    tripwire.register_code(code)

    # 3. Host libraries are imported before anything runs armed (trusted, outside the tripwire).
    import diffusers  # noqa: F401
    import torch  # noqa: F401
    from diffusers import DiffusionPipeline

    from pipewarden.sandbox.runtime import Sandbox
    from pipewarden.sandbox.runtime.hooks import host_modes_kept

    tripwire.install(policy.tripwire)
    module_name = _module_name(filename)
    _register_placeholder(module_name)
    box = Sandbox(policy, module_name)
    box.file_private_names = private_attribute_names(tree)
    if load_built is not None:  # the components pipewarden builds for this load (LoadBuilt)
        box.load_built = load_built
    glb = box.make_globals()

    # 4. Restricted exec of the module body, tripwire armed.
    try:
        with host_modes_kept(), tripwire.armed(), tripwire.permit_exec(code):
            exec(code, glb)  # noqa: S102 - the restricted, vetted code object
    except PipewardenError:
        raise
    except (KeyboardInterrupt, SystemExit):  # pragma: no cover - cannot come from sandboxed code
        raise
    except RecursionError:
        raise PolicyViolation(
            f"{filename} recursed too deeply at import time", rule="exec.recursion", fix="simplify the module body"
        ) from None
    except BaseException as exc:  # noqa: BLE001 - wrap at the seam; never leak the object-carrying exception
        line = _failing_line(exc, filename)
        raise ScanError(
            f"{filename} failed while its module body ran in the sandbox{line}: {type(exc).__name__}: {_short(exc)}",
            rule="exec.module-body",
            fix="the file must import and define its classes without errors under the sandbox policy",
        ) from None

    cls = glb.get(candidate.name)
    _remember_companions(cls, glb, box, filename)
    if not isinstance(cls, type) or not box.owns(cls) or not issubclass(cls, DiffusionPipeline):
        raise ScanError(
            f"{filename}: {candidate.name} (line {candidate.lineno}) is not a DiffusionPipeline subclass "
            "once executed",
            rule="scan.one-pipeline-class",
            fix="define exactly one class deriving from DiffusionPipeline at module level",
        )
    return cls


def private_attribute_names(tree: ast.AST) -> frozenset[str]:
    """The ``_private`` attribute names the vetted file itself defines: targets of attribute
    assignments and deletions (``self._cache = ...``), ``setattr(x, "_name", ...)`` with a literal
    name, and names bound in its class bodies. On the sandbox's own objects these are readable; any
    other private name is host state, decided by the host class's allowlist (runtime/attributes.py)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.attr)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                names.add(node.args[1].value)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(item.name)
                elif isinstance(item, ast.Assign):
                    names.update(t.id for t in item.targets if isinstance(t, ast.Name))
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
    return frozenset(n for n in names if n.startswith("_") and not n.startswith("__") and not n.endswith("_"))


def _register_placeholder(module_name: str) -> None:
    """An EMPTY module under the sandboxed module's name, for host code that looks a class's module up
    in ``sys.modules`` (dataclasses does). It holds nothing: the sandbox globals are never published."""
    import sys
    import types

    parent = module_name.split(".")[0]
    if parent not in sys.modules:
        pkg = types.ModuleType(parent, "Placeholder parent of sandboxed pipeline modules (empty).")
        pkg.__path__ = []
        sys.modules[parent] = pkg
    if module_name not in sys.modules:
        sys.modules[module_name] = types.ModuleType(module_name, "Placeholder for a sandboxed module (empty).")


def _failing_line(exc: BaseException, filename: str) -> str:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line else ""


def _short(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001
        text = "<unprintable>"
    return text if len(text) <= 300 else text[:297] + "..."


#: vetted pipeline class -> the component classes its file defines, keyed as diffusers names
#: custom components in model_index.json: (module name = the file's stem, class name).
_COMPANIONS: weakref.WeakKeyDictionary[type, dict[tuple[str, str], type]] = weakref.WeakKeyDictionary()


def _remember_companions(cls: object, glb: Mapping[str, object], box: object, filename: str) -> None:
    if not isinstance(cls, type):
        return
    from diffusers.configuration_utils import ConfigMixin

    stem = filename.rsplit("/", 1)[-1].removesuffix(".py")
    found: dict[tuple[str, str], type] = {}
    for name, value in list(glb.items()):
        if (
            isinstance(value, type)
            and value is not cls
            and not name.startswith("_")
            and box.owns(value)  # type: ignore[attr-defined]  # defined by this file, not imported
            and issubclass(value, ConfigMixin)
        ):
            found[(stem, name)] = value
    _COMPANIONS[cls] = found


def companion_classes(cls: type) -> dict[tuple[str, str], type]:
    """Classes the vetted pipeline's file defines besides the pipeline (issue 11 part 6).

    Only diffusers ``ConfigMixin`` subclasses (schedulers, models) the sandbox itself made from
    the file; keyed ``(file stem, class name)``, the ``[<module>, <ClassName>]`` form diffusers
    uses for custom components in model_index.json. Built from their config like any component,
    their methods run sandboxed.
    """
    return dict(_COMPANIONS.get(cls, {}))
