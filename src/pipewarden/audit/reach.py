"""What a name reaches through the sandbox's module facades, decided statically from the policy.

The sandbox hands pipeline code a facade per allowed module; a facade answers a name only when the
policy admits it (``sandbox.runtime.facades``: private names, ``[deny]``, ``replace``, ``attrs``,
submodules with their own rule, the generated torch operator and class-name lists, function
patterns, plain constants). This module asks the same questions of the same policy data for
``from M import name`` and for attribute chains on a module alias (``np.lib.npyio``), without
importing the libraries: the generated name lists stand in for the classes the facade would look
at, and a submodule of an ``any_submodule`` package is recognised by its file on disk.

Two things the facade decides from the value, which a static reading cannot see, are decided here
by the name alone: an ``UPPER_CASE`` name under a ``constants`` rule counts as a possible plain
constant (the facade still refuses it at run time unless it is one), and a name a function
pattern (``is_*_available``) admits counts as that function. Everything else not admitted is
outside the policy (fail closed).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["PolicyView", "Reach"]

_CONSTANT_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class Reach:
    """What ``module.name`` is to sandboxed code.

    ``kind``: ``"module"`` (a facade of ``path``), ``"value"`` (an admitted value: function,
    class, constant; what it has is up to the per-type rules) or ``"refused"`` (``why`` says by
    which part of the policy). ``stub``: a refused name that ``from M import name`` binds to a
    refusing stand-in (the module's rule has ``stub_denied``), so only its use fails.
    """

    kind: str
    path: str
    why: str = ""
    stub: bool = False


@functools.lru_cache(maxsize=4096)
def _submodule_on_disk(dotted: str) -> bool:
    """Is ``dotted`` (``diffusers.utils.testing_utils``) a module file or package of the installed
    top-level package? Finds the top-level package without importing it and looks at its files."""
    top, _, rest = dotted.partition(".")
    if not rest:
        return False
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    locations = list(getattr(spec, "submodule_search_locations", None) or ()) if spec is not None else []
    parts = rest.split(".")
    for base in locations:
        path = os.fspath(base)
        for part in parts[:-1]:
            path = os.path.join(path, part)
        last = os.path.join(path, parts[-1])
        if os.path.isfile(last + ".py") or os.path.isfile(os.path.join(last, "__init__.py")):
            return True
    return False


class PolicyView:
    """Static answers of one sandbox policy's module facades (cached per module and name)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self._cache: dict[tuple[str, str], Reach] = {}
        self._operators: frozenset[str] | None = None
        self._class_names: dict[str, frozenset[str]] = {}

    # -- the generated lists ------------------------------------------------------------------
    def _torch_operators(self) -> frozenset[str]:
        if self._operators is None:
            from pipewarden.sandbox.policy import torch_operator_data

            self._operators = torch_operator_data()[1]
        return self._operators

    def _classes_of(self, package: str) -> frozenset[str]:
        """Class names the generated list of ``package`` admits (last component of each path)."""
        hit = self._class_names.get(package)
        if hit is None:
            from pipewarden.sandbox.policy import diffusers_name_data, transformers_name_data

            hit = frozenset()
            for data in (diffusers_name_data, transformers_name_data):
                names = data()
                if names.package == package:
                    hit = frozenset(c.rsplit(".", 1)[-1] for c in names.classes)
            self._class_names[package] = hit
        return hit

    # -- the question ---------------------------------------------------------------------------
    def attribute(self, module: str, name: str) -> Reach:
        """What ``module.name`` is (``module``: an allowed module, aliases already applied)."""
        key = (module, name)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._attribute(module, name)
        return hit

    def _attribute(self, module: str, name: str) -> Reach:
        policy = self.policy
        path = f"{module}.{name}"
        rule = policy.module_rule(module)
        if rule is None:
            return Reach("refused", path, f"the module {module} is outside the sandbox policy")
        if name == "__name__":
            return Reach("value", path)
        if name.startswith("_") and name != "__version__":
            return Reach("refused", path, "a private or dunder name of a module",
                         stub=rule.stub_denied and not name.startswith("__"))
        if policy.deny.denies(name):
            return Reach("refused", path, "a name [deny] refuses on every object", stub=rule.stub_denied)
        if name in rule.replace:
            return Reach("value", path)
        child = policy.modules.get(path)
        if child is not None and name in rule.attrs:
            return Reach("module", path)
        if rule.any_submodule and _submodule_on_disk(policy.canonical_module(path)):
            return Reach("module", path)
        if name in rule.attrs:
            return Reach("value", path)
        if rule.variable_functions and name in self._torch_operators():
            return Reach("value", path)
        if rule.functions and rule.matches_function_pattern(name):
            return Reach("value", path)
        if rule.classes_from and any(name in self._classes_of(p.split(".")[0]) for p in rule.classes_from):
            return Reach("value", path)
        if rule.constants and _CONSTANT_NAME.fullmatch(name):
            return Reach("value", path)
        if rule.constants and name in self._type_aliases(policy.canonical_module(module)):
            return Reach("value", path)
        return Reach("refused", path, f"not a name the sandbox's {module} exposes", stub=rule.stub_denied)

    def _type_aliases(self, module: str) -> frozenset[str]:
        """Module-level type aliases the module's source defines (``PipelineImageInput = Union[...]``):
        the facade admits these as type hints under a ``constants`` rule. Read from the file, never
        imported."""
        typing_rule = self.policy.modules.get("typing")
        return _type_aliases_in(module, typing_rule.attrs if typing_rule is not None else frozenset())

    def chain(self, module: str, names: list[str]) -> tuple[Reach, int]:
        """Follow ``module.names[0].names[1]...`` while it names modules: the first refused step
        (or the last step resolved) and how many names were followed."""
        current = self.policy.canonical_module(module)
        reach = Reach("module", current)
        for index, name in enumerate(names):
            reach = self.attribute(current, name)
            if reach.kind != "module":
                return reach, index + 1
            current = reach.path
        return reach, len(names)


_CONTAINERS = frozenset({"list", "dict", "tuple", "set", "frozenset", "type"})


@functools.lru_cache(maxsize=256)
def _type_aliases_in(module: str, typing_names: frozenset[str]) -> frozenset[str]:
    import ast

    top, _, rest = module.partition(".")
    if not rest:
        return frozenset()
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return frozenset()
    parts = rest.split(".")
    for base in list(getattr(spec, "submodule_search_locations", None) or ()) if spec is not None else []:
        stem = os.path.join(os.fspath(base), *parts)
        for candidate in (stem + ".py", os.path.join(stem, "__init__.py")):
            if os.path.isfile(candidate):
                try:
                    with open(candidate, "rb") as handle:
                        tree = ast.parse(handle.read(4 << 20))
                except (OSError, SyntaxError, ValueError, RecursionError):
                    return frozenset()
                found = set()
                for node in tree.body:
                    target, value = None, None
                    if isinstance(node, ast.Assign) and len(node.targets) == 1:
                        target, value = node.targets[0], node.value
                    elif isinstance(node, ast.AnnAssign) and node.value is not None:
                        target, value = node.target, node.value
                    if isinstance(target, ast.Name) and value is not None and _is_type_form(value, typing_names):
                        found.add(target.id)
                return frozenset(found)
    return frozenset()


def _is_type_form(node: Any, typing_names: frozenset[str]) -> bool:
    import ast

    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_type_form(node.left, typing_names) or _is_type_form(node.right, typing_names)
    if isinstance(node, ast.Subscript):
        head = node.value
        last = head.attr if isinstance(head, ast.Attribute) else head.id if isinstance(head, ast.Name) else ""
        return last in typing_names or last in _CONTAINERS
    return False
