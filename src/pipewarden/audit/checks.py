"""The audit's own AST checks: calls, dunder and frame-introspection attributes.

Decides which calls and attribute accesses of an already parsed module are reported, using the
pattern tables of ``audit_rules``. Trusts nothing in the tree: it only reads it (never executes,
never imports what the file names) and walks it iteratively, so a deeply nested tree cannot
exhaust the recursion limit here. Class detection, the module allowlist and the restricted
compile check are the sandbox's (``sandbox.scan``, ``sandbox.policy``, ``sandbox.compile``).
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pipewarden.audit import rules as _rules

_BUILTIN_NAMES = frozenset(dir(builtins))
_HEX40 = re.compile(r"[0-9a-f]{40}")
_PREFIX_CALLS = dict(_rules.PREFIX_CALLS)
_ATTRIBUTE_BUILTINS = frozenset(f"builtins.{n}" for n in _rules.ATTRIBUTE_BUILTINS)
# Builtins the call rules already report (open, eval, ...): no second finding from PW021.
_BUILTINS_WITH_CALL_RULES = frozenset(
    name.split(".", 1)[1] for name, patterns in _rules.EXACT_CALLS.items()
    if name.startswith("builtins.") and any(p.rule for p in patterns)
)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True)
class RawFinding:
    """A finding before columns are converted: ``col_offset`` is ast's 0-based UTF-8 byte offset."""

    rule: str
    lineno: int
    col_offset: int
    message: str


def check_tree(
    tree: ast.Module,
    benign_dunders: frozenset[str] | None = None,
    sandbox_builtins: frozenset[str] | None = None,
) -> list[RawFinding]:
    """All call/attribute/builtin findings of ``tree`` in source order (line, column, rule).

    ``benign_dunders``: dunder attributes not reported (the policy's reviewed idioms);
    ``sandbox_builtins``: builtin names the sandbox provides (None: PW021 is not checked).
    """
    benign = _rules.BENIGN_DUNDERS if benign_dunders is None else benign_dunders
    imports: list[ast.Import | ast.ImportFrom] = []
    calls: list[ast.Call] = []
    attributes: list[ast.Attribute] = []
    names: list[ast.Name] = []
    builtin_uses: list[ast.Name] = []
    bound: set[str] = set()
    load = ast.Load
    name_type, constant_type = ast.Name, ast.Constant
    builtin_names = _BUILTIN_NAMES
    # Every node of the tree (any order), with an explicit stack: no recursion, no generator.
    stack: list[ast.AST] = [tree]
    pop, push = stack.pop, stack.append
    fields_of = _CHILD_FIELDS
    node_type = ast.AST
    while stack:
        node = pop()
        kind = type(node)
        if kind is name_type:  # a leaf (its ctx is a singleton)
            ident = node.id  # type: ignore[attr-defined]
            if type(node.ctx) is not load:  # type: ignore[attr-defined]
                bound.add(ident)
            elif ident in builtin_names:
                builtin_uses.append(node)  # type: ignore[arg-type]
            if ident[:2] == "__":
                names.append(node)  # type: ignore[arg-type]
            continue
        if kind is constant_type:  # a leaf
            continue
        fields = fields_of.get(kind)
        if fields is None:
            fields = fields_of[kind] = tuple(f for f in kind._fields if f not in _NO_NODES)
        for field in fields:
            value = getattr(node, field, None)
            if type(value) is list:
                for item in value:
                    if isinstance(item, node_type):
                        push(item)
            elif isinstance(value, node_type):
                push(value)
        if kind is ast.Call:
            calls.append(node)  # type: ignore[arg-type]
        elif kind is ast.Attribute:
            attributes.append(node)  # type: ignore[arg-type]
        elif kind is ast.arg:
            bound.add(node.arg)  # type: ignore[attr-defined]
        elif kind in _DEFINITIONS:
            bound.add(node.name)  # type: ignore[attr-defined]
        elif kind is ast.ExceptHandler or kind is ast.MatchAs or kind is ast.MatchStar:
            if node.name:  # type: ignore[attr-defined]
                bound.add(node.name)  # type: ignore[attr-defined]
        elif kind is ast.Global or kind is ast.Nonlocal:
            bound.update(node.names)  # type: ignore[attr-defined]
        elif kind is ast.Import or kind is ast.ImportFrom:
            imports.append(node)  # type: ignore[arg-type]

    bindings = _import_bindings(imports)
    bound.update(bindings)
    shadowed = _module_level_names(tree)
    out: list[RawFinding] = []
    if sandbox_builtins is not None:
        # One finding per builtin name, at its first use, with the number of uses (an idiom such
        # as ``type(a) is not type(b)`` would otherwise flood the report).
        refused: dict[str, list[ast.Name]] = {}
        for use in builtin_uses:
            ident = use.id
            if ident not in sandbox_builtins and ident not in bound and ident not in _BUILTINS_WITH_CALL_RULES:
                refused.setdefault(ident, []).append(use)
        for ident, uses in refused.items():
            first = min(uses, key=lambda n: (n.lineno, n.col_offset))
            more = f" ({len(uses)} uses in this file; first shown)" if len(uses) > 1 else ""
            out.append(RawFinding("PW021", first.lineno, first.col_offset,
                                  f"builtin {ident!r} is not provided inside the sandbox{more}"))
        if "type" in sandbox_builtins and "type" not in bound:
            # The sandbox's type() answers one argument only; the three-argument form builds a class.
            for call in calls:
                func = call.func
                if isinstance(func, ast.Name) and func.id == "type" and (len(call.args) != 1 or call.keywords):
                    out.append(RawFinding("PW021", call.lineno, call.col_offset,
                                          "type() with three arguments builds a class; refused inside the sandbox"))
    introspection = _rules.INTROSPECTION_ATTRIBUTES
    for attr in attributes:
        attr_name = attr.attr
        if attr_name[:2] == "__" or attr_name in introspection:  # else _attribute_finding finds nothing
            finding = _attribute_finding(attr_name, attr, benign)
            if finding is not None:
                out.append(finding)
    for name in names:
        if name.id in _rules.INTROSPECTION_ATTRIBUTES and name.id != "__import__":
            out.append(RawFinding("PW031", name.lineno, name.col_offset, f"use of {name.id}"))
    for call in calls:
        out.extend(_call_findings(call, bindings, shadowed, benign))
    out.sort(key=lambda f: (f.lineno, f.col_offset, f.rule, f.message))
    return out


_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}
_NO_NODES = frozenset({"ctx", "type_ignores"})  # expression contexts: singletons, never interesting


def _attribute_finding(attr: str, node: ast.AST, benign: frozenset[str]) -> RawFinding | None:
    lineno = getattr(node, "lineno", 1)
    col = getattr(node, "col_offset", 0)
    if attr in _rules.INTROSPECTION_ATTRIBUTES:
        return RawFinding("PW031", lineno, col, f"access to attribute {attr}")
    if len(attr) > 4 and attr.startswith("__") and attr.endswith("__") and attr not in benign:
        return RawFinding("PW030", lineno, col, f"access to dunder attribute {attr}")
    return None


def _import_bindings(imports: Iterable[ast.Import | ast.ImportFrom]) -> dict[str, str]:
    """Local name -> dotted module path, from every import statement in the file (any scope)."""
    bindings: dict[str, str] = {}
    for node in imports:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bindings[alias.asname] = alias.name
                else:
                    top = alias.name.split(".", 1)[0]
                    bindings[top] = top
        elif node.level == 0 and node.module:
            for alias in node.names:
                if alias.name != "*":
                    bindings[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bindings


def _module_level_names(tree: ast.Module) -> frozenset[str]:
    """Names the module itself defines at top level (they shadow builtins such as ``open``)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return frozenset(names)


def _target(func: ast.expr) -> tuple[list[str], bool]:
    """Dotted parts of a call target, and whether its root is a plain name (iterative)."""
    parts: list[str] = []
    node = func
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    rooted = isinstance(node, ast.Name)
    if rooted:
        parts.append(node.id)  # type: ignore[attr-defined]
    parts.reverse()
    return parts, rooted


def _resolve(parts: list[str], rooted: bool, bindings: dict[str, str], shadowed: frozenset[str]) -> str | None:
    if not rooted or not parts:
        return None
    root = parts[0]
    if root in bindings:
        return ".".join([bindings[root], *parts[1:]])
    if root in _BUILTIN_NAMES and root not in shadowed:
        return ".".join(["builtins", *parts])
    return None


def _call_findings(
    call: ast.Call, bindings: dict[str, str], shadowed: frozenset[str], benign: frozenset[str]
) -> list[RawFinding]:
    parts, rooted = _target(call.func)
    if not parts:
        return []
    qualified = _resolve(parts, rooted, bindings, shadowed)
    if qualified is None:
        display = ".".join(parts if rooted else ["...", *parts])
    elif qualified.startswith("builtins."):
        display = qualified[len("builtins.") :]
    else:
        display = qualified
    found: list[RawFinding] = []

    # getattr(obj, "__globals__") is attribute access in disguise.
    if qualified in _ATTRIBUTE_BUILTINS and len(call.args) >= 2:
        name_arg = call.args[1]
        if isinstance(name_arg, ast.Constant) and isinstance(name_arg.value, str):
            finding = _attribute_finding(name_arg.value, call, benign)
            if finding is not None:
                found.append(finding)

    # getattr(os, name) with a computed name: which function is used is hidden from review.
    if qualified in _ATTRIBUTE_BUILTINS and len(call.args) >= 2 and qualified != "builtins.hasattr":
        obj, name_arg = call.args[0], call.args[1]
        if not (isinstance(name_arg, ast.Constant) and isinstance(name_arg.value, str)) and (
            isinstance(obj, ast.Name) and obj.id in bindings
        ):
            found.append(RawFinding(
                "PW032", call.lineno, call.col_offset,
                f"{display}() of {bindings[obj.id]!r} with an attribute name computed at run time",
            ))

    # Nested custom code: custom_pipeline=..., trust_remote_code=<anything but False>.
    for kw in call.keywords:
        keys: list[tuple[str, ast.expr]] = []
        if kw.arg is not None:
            keys.append((kw.arg, kw.value))
        elif isinstance(kw.value, ast.Dict):  # f(**{"trust_remote_code": True})
            keys.extend(
                (k.value, v) for k, v in zip(kw.value.keys, kw.value.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            )
        for key, value in keys:
            if key not in _rules.NESTED_CODE_KEYWORDS:
                continue
            if isinstance(value, ast.Constant) and value.value in (None, False):
                continue
            found.append(RawFinding(
                "PW046", call.lineno, call.col_offset, f"{display}({key}=...) loads further custom or remote code",
            ))
    last_name = qualified.rsplit(".", 1)[-1] if qualified is not None else parts[-1]
    if last_name in _rules.DOWNLOAD_LAST_NAMES:
        found.append(RawFinding("PW044", call.lineno, call.col_offset, f"{display} downloads files from the network"))

    patterns = None
    if qualified is not None:
        patterns = _rules.EXACT_CALLS.get(qualified)
    if patterns is None:
        last = qualified.rsplit(".", 1)[-1] if qualified is not None else parts[-1]
        patterns = _rules.LAST_NAME_CALLS.get(last)
    if patterns is None and qualified is not None:
        # The longest prefix of dotted parts (``a.b.c``, ``a.b``, ``a``) that has patterns.
        end = len(qualified)
        while end > 0:
            patterns = _PREFIX_CALLS.get(qualified[:end])
            if patterns is not None:
                break
            end = qualified.rfind(".", 0, end)
    if patterns:
        for pattern in patterns:
            if pattern.condition is None or _CONDITIONS[pattern.condition](call):
                if pattern.rule is not None and not (pattern.rule == "PW044" and last_name in _rules.DOWNLOAD_LAST_NAMES):
                    message = pattern.what.replace("{name}", display)
                    found.append(RawFinding(pattern.rule, call.lineno, call.col_offset, message))
                break
    return found


def _keyword(call: ast.Call, name: str) -> ast.keyword | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw
    return None


def _no_weights_only(call: ast.Call) -> bool:
    kw = _keyword(call, "weights_only")
    return not (kw is not None and isinstance(kw.value, ast.Constant) and kw.value.value is True)


def _allow_pickle(call: ast.Call) -> bool:
    kw = _keyword(call, "allow_pickle")
    value = kw.value if kw is not None else (call.args[2] if len(call.args) > 2 else None)
    if value is None:
        return False
    return not (isinstance(value, ast.Constant) and value.value in (False, None, 0))


def _unpinned(call: ast.Call) -> bool:
    kw = _keyword(call, "revision")
    if kw is None:
        return True
    value = kw.value
    return not (isinstance(value, ast.Constant) and isinstance(value.value, str) and _HEX40.fullmatch(value.value))


_CONDITIONS = {
    "no_weights_only": _no_weights_only,
    "allow_pickle": _allow_pickle,
    "unpinned": _unpinned,
}


_IMPORT_ERROR_HANDLERS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def conditional_imports(tree: ast.Module) -> dict[tuple[int, int], str]:
    """(lineno, col_offset) of each import statement that does not run unconditionally when the
    module body runs -> why (``inside if``, ``inside a function``, ``guarded by except ImportError``, ...).

    Walks statements only (iteratively); class and ``with`` bodies run with the module body.
    """
    out: dict[tuple[int, int], str] = {}
    stack: list[tuple[ast.stmt, str | None]] = [(stmt, None) for stmt in tree.body]
    while stack:
        stmt, why = stack.pop()
        kind = type(stmt)
        if kind is ast.Import or kind is ast.ImportFrom:
            if why is not None:
                out[(stmt.lineno, stmt.col_offset)] = why
            continue
        if kind is ast.If:
            inner = why or "inside an if statement"
            stack.extend((s, inner) for s in stmt.body + stmt.orelse)  # type: ignore[attr-defined]
        elif kind in (ast.For, ast.AsyncFor, ast.While):
            inner = why or "inside a loop"
            stack.extend((s, inner) for s in stmt.body + stmt.orelse)  # type: ignore[attr-defined]
        elif kind in _DEFINITIONS[:2]:
            stack.extend((s, why or "inside a function") for s in stmt.body)  # type: ignore[attr-defined]
        elif kind is ast.ClassDef or kind is ast.With or kind is ast.AsyncWith:
            stack.extend((s, why) for s in stmt.body)  # type: ignore[attr-defined]
        elif kind is ast.Try or kind.__name__ == "TryStar":
            handlers = stmt.handlers  # type: ignore[attr-defined]
            caught = any(_catches_import_error(h.type) for h in handlers)
            body_why = why or ("guarded by an except clause that catches ImportError" if caught else None)
            stack.extend((s, body_why) for s in stmt.body)  # type: ignore[attr-defined]
            for handler in handlers:
                stack.extend((s, why or "inside an except clause") for s in handler.body)
            stack.extend((s, why) for s in stmt.orelse + stmt.finalbody)  # type: ignore[attr-defined]
        elif kind is ast.Match:
            for case in stmt.cases:  # type: ignore[attr-defined]
                stack.extend((s, why or "inside a match case") for s in case.body)
    return out


def _catches_import_error(node: ast.expr | None) -> bool:
    if node is None:
        return True  # bare except
    names = node.elts if isinstance(node, ast.Tuple) else [node]
    for name in names:
        ident = name.id if isinstance(name, ast.Name) else name.attr if isinstance(name, ast.Attribute) else ""
        if ident in _IMPORT_ERROR_HANDLERS:
            return True
    return False
