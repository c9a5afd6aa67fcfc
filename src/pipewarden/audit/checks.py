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
from pipewarden.audit.reach import PolicyView

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
# Builtins whose call has a rule (exec -> PW045, globals -> PW031, open -> PW042, ...): a reference
# to one of them that is not a call (``np.frompyfunc(exec, 2, 0)``, ``map(eval, ...)``, ``f = eval``)
# is reported with the same rule.
_BUILTIN_VALUE_RULES: dict[str, _rules.CallPattern] = {
    name.split(".", 1)[1]: next(p for p in patterns if p.rule)
    for name, patterns in _rules.EXACT_CALLS.items()
    if name.startswith("builtins.") and any(p.rule for p in patterns)
}


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
    view: PolicyView | None = None,
) -> list[RawFinding]:
    """All call/attribute/builtin/annotation findings of ``tree`` in source order (line, column, rule).

    ``benign_dunders``: dunder attributes not reported (the policy's reviewed idioms);
    ``sandbox_builtins``: builtin names the sandbox provides (None: PW021 is not checked);
    ``view``: the sandbox policy's module facades (None: PW023/PW024 are not checked).
    """
    benign = _rules.BENIGN_DUNDERS if benign_dunders is None else benign_dunders
    imports: list[ast.Import | ast.ImportFrom] = []
    calls: list[ast.Call] = []
    attributes: list[ast.Attribute] = []
    names: list[ast.Name] = []
    builtin_uses: list[ast.Name] = []
    bound: set[str] = set()
    loaded: dict[str, int] = {}
    annotations: list[ast.expr] = []
    assigns: list[ast.Assign] = []
    compares: list[ast.Compare] = []
    classes: list[ast.ClassDef] = []
    all_names: list[ast.Name] = []
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
            else:
                loaded[ident] = loaded.get(ident, 0) + 1
                all_names.append(node)  # type: ignore[arg-type]
                if ident in builtin_names:
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
            if node.annotation is not None:  # type: ignore[attr-defined]
                annotations.append(node.annotation)  # type: ignore[attr-defined]
        elif kind in _DEFINITIONS:
            bound.add(node.name)  # type: ignore[attr-defined]
            if kind is ast.ClassDef:
                classes.append(node)  # type: ignore[arg-type]
            elif node.returns is not None:  # type: ignore[attr-defined]
                annotations.append(node.returns)  # type: ignore[attr-defined]
        elif kind is ast.AnnAssign:
            annotations.append(node.annotation)  # type: ignore[attr-defined]
        elif kind is ast.Assign:
            assigns.append(node)  # type: ignore[arg-type]
        elif kind is ast.Compare:
            compares.append(node)  # type: ignore[arg-type]
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
    if any(use.id in _BUILTIN_VALUE_RULES for use in builtin_uses):
        called = {id(c.func) for c in calls}
        if any(use.id in _BUILTIN_VALUE_RULES and id(use) not in called for use in builtin_uses):
            out.extend(_builtin_value_findings(tree, calls))
    if view is not None:
        out.extend(_reach_findings(imports, attributes, calls, assigns, loaded, annotations, view,
                                   compares=compares, classes=classes, names=all_names))
        out.extend(_denied_attributes(attributes, calls, bound, bindings, view))
    if annotations:
        out.extend(_annotation_findings(annotations, _future_annotations(tree)))
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


_UNKNOWN = ast.Constant(value=Ellipsis)  # a value the call's ``*``/``**`` arguments may supply


def _keyword(call: ast.Call, name: str) -> ast.keyword | None:
    """The keyword ``name`` of ``call``: given by name, read from a literal ``**{...}``, or, when a
    ``**mapping`` the audit cannot read could carry it, a keyword whose value is unknown."""
    unknown = False
    for kw in call.keywords:
        if kw.arg == name:
            return kw
        if kw.arg is None:
            if isinstance(kw.value, ast.Dict) and all(k is not None for k in kw.value.keys):
                for key, value in zip(kw.value.keys, kw.value.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == name:
                        return ast.keyword(arg=name, value=value)
                    if not isinstance(key, ast.Constant):
                        unknown = True
            else:
                unknown = True  # **opts (may hold name=...), or a literal dict with a **spread
    return ast.keyword(arg=name, value=_UNKNOWN) if unknown else None


def _positional(call: ast.Call, index: int) -> ast.expr | None:
    """The ``index``-th positional argument, ``_UNKNOWN`` when a ``*args`` at or before it may supply it."""
    for position, arg in enumerate(call.args):
        if isinstance(arg, ast.Starred):
            return _UNKNOWN
        if position == index:
            return arg
    return None


def _no_weights_only(call: ast.Call) -> bool:
    kw = _keyword(call, "weights_only")
    return not (kw is not None and isinstance(kw.value, ast.Constant) and kw.value.value is True)


def _allow_pickle(call: ast.Call) -> bool:
    kw = _keyword(call, "allow_pickle")
    value = kw.value if kw is not None else _positional(call, 2)
    if value is None:
        return False
    return value is _UNKNOWN or not (isinstance(value, ast.Constant) and value.value in (False, None, 0))


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


# --- builtins used as values ------------------------------------------------------------------------

_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _function_bindings(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> frozenset[str]:
    """Names a function binds in its own scope (parameters, assignments, imports, nested defs, ...),
    less those it declares ``global``. Nested functions, lambdas and comprehensions are not entered
    (a walrus inside a comprehension is missed: the name then counts as unbound, i.e. reported)."""
    args = node.args
    names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
    names.update(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    declared_global: set[str] = set()
    stack: list[ast.AST] = [node.body] if isinstance(node, ast.Lambda) else list(node.body)
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is ast.Name:
            if type(item.ctx) is not ast.Load:  # type: ignore[attr-defined]
                names.add(item.id)  # type: ignore[attr-defined]
            continue
        if kind in _DEFINITIONS:
            names.add(item.name)  # type: ignore[attr-defined]
            continue
        if kind is ast.Lambda or kind in _COMPREHENSIONS:
            continue
        if kind is ast.Global:
            declared_global.update(item.names)  # type: ignore[attr-defined]
        elif kind is ast.Nonlocal:
            names.update(item.names)  # type: ignore[attr-defined]
        elif kind is ast.Import or kind is ast.ImportFrom:
            for alias in item.names:  # type: ignore[attr-defined]
                names.add(alias.asname or alias.name.split(".", 1)[0])
        elif kind is ast.ExceptHandler or kind is ast.MatchAs or kind is ast.MatchStar:
            if item.name:  # type: ignore[attr-defined]
                names.add(item.name)  # type: ignore[attr-defined]
        elif kind is ast.MatchMapping and item.rest:  # type: ignore[attr-defined]
            names.add(item.rest)  # type: ignore[attr-defined]
        stack.extend(ast.iter_child_nodes(item))
    return frozenset(names - declared_global)


def _builtin_value_findings(tree: ast.Module, calls: list[ast.Call]) -> list[RawFinding]:
    """References (not calls) to the builtins of ``_BUILTIN_VALUE_RULES`` that reach the builtin:
    no enclosing function scope binds the name. Module and class scopes never count as binding it
    (``exec = exec`` reads the builtin), so the check fails closed there."""
    called = {id(c.func) for c in calls if type(c.func) is ast.Name}
    out: list[RawFinding] = []
    scopes: dict[int, frozenset[str]] = {}
    stack: list[tuple[ast.AST, tuple[ast.AST, ...]]] = [(tree, ())]
    while stack:
        node, chain = stack.pop()
        kind = type(node)
        if kind is ast.Name:
            ident = node.id  # type: ignore[attr-defined]
            if ident in _BUILTIN_VALUE_RULES and type(node.ctx) is ast.Load and id(node) not in called:  # type: ignore[attr-defined]
                if not any(ident in _scope_names(fn, scopes) for fn in chain):
                    pattern = _BUILTIN_VALUE_RULES[ident]
                    out.append(RawFinding(
                        pattern.rule or "PW045", node.lineno, node.col_offset,  # type: ignore[attr-defined]
                        f"{ident} used as a value (passed, stored or returned, then called out of sight): "
                        f"{pattern.what}",
                    ))
            continue
        if kind in _FUNCTIONS or kind is ast.Lambda:
            args = node.args  # type: ignore[attr-defined]
            outer: list[ast.AST] = [*args.defaults, *(d for d in args.kw_defaults if d is not None)]
            if kind is not ast.Lambda:
                outer.extend(node.decorator_list)  # type: ignore[attr-defined]
                outer.extend(a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs,
                                                    args.vararg, args.kwarg) if a is not None and a.annotation)
                if node.returns is not None:  # type: ignore[attr-defined]
                    outer.append(node.returns)  # type: ignore[attr-defined]
                body = list(node.body)  # type: ignore[attr-defined]
            else:
                body = [node.body]  # type: ignore[attr-defined]
            stack.extend((n, chain) for n in outer)
            inner = (*chain, node)
            stack.extend((n, inner) for n in body)
            continue
        if kind in _COMPREHENSIONS:
            generators = node.generators  # type: ignore[attr-defined]
            stack.append((generators[0].iter, chain))  # the first iterable is evaluated outside
            inner = (*chain, node)
            parts: list[ast.AST] = [generators[0].target, *generators[0].ifs]
            for gen in generators[1:]:
                parts.extend((gen.target, gen.iter, *gen.ifs))
            parts.extend(getattr(node, f) for f in ("elt", "key", "value") if hasattr(node, f))
            stack.extend((n, inner) for n in parts)
            continue
        stack.extend((child, chain) for child in ast.iter_child_nodes(node))
    return out


def _scope_names(node: ast.AST, cache: dict[int, frozenset[str]]) -> frozenset[str]:
    hit = cache.get(id(node))
    if hit is None:
        if isinstance(node, _COMPREHENSIONS):
            hit = frozenset(
                n.id for gen in node.generators for n in ast.walk(gen.target) if isinstance(n, ast.Name)
            )
        else:
            hit = _function_bindings(node)  # type: ignore[arg-type]
        cache[id(node)] = hit
    return hit


# --- names and attributes of modules, against the sandbox policy ------------------------------------


def _reach_findings(
    imports: list[ast.Import | ast.ImportFrom],
    attributes: list[ast.Attribute],
    calls: list[ast.Call],
    assigns: list[ast.Assign],
    loaded: dict[str, int],
    annotations: list[ast.expr],
    view: PolicyView,
    *,
    compares: list[ast.Compare] = (),  # type: ignore[assignment]
    classes: list[ast.ClassDef] = (),  # type: ignore[assignment]
    names: list[ast.Name] = (),  # type: ignore[assignment]
) -> list[RawFinding]:
    """PW023/PW024: names taken from allowed modules (``from M import n``, ``alias.a.b``,
    ``getattr(alias, "a")``, ``x = alias.a`` then ``x.b``) that the policy's facades refuse."""
    policy = view.policy
    out: list[RawFinding] = []
    modules: dict[str, set[str]] = {}  # local name -> the modules it may hold
    used_in: list[set[str]] = []  # lazily: names loaded outside annotations
    for node in imports:
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name if alias.asname else alias.name.split(".", 1)[0]
                if policy.is_module_allowed(alias.name):
                    modules.setdefault(alias.asname or name, set()).add(policy.canonical_module(name))
            continue
        if node.level or not node.module or not policy.is_module_allowed(node.module):
            continue  # relative imports and modules outside the policy: the sandbox's scan and PW020
        module = policy.canonical_module(node.module)
        for alias in node.names:
            if alias.name == "*":
                continue
            local = alias.asname or alias.name
            reach = view.attribute(module, alias.name)
            line, col = getattr(alias, "lineno", node.lineno), getattr(alias, "col_offset", node.col_offset)
            if reach.kind == "module":
                modules.setdefault(local, set()).add(reach.path)
            elif reach.kind == "refused":
                shown = f"from {node.module} import {alias.name}"
                if reach.stub and (local not in loaded or local not in _used_outside(annotations, loaded, used_in)):
                    out.append(RawFinding("PW024", line, col, (
                        f"{shown}: {reach.path} is outside the sandbox policy ({reach.why}); the file uses the "
                        "name in annotations only, if at all (under pipewarden it binds a refusing stand-in)")))
                else:
                    out.append(RawFinding("PW023", line, col,
                                          f"{shown}: {reach.path} is outside the sandbox policy: {reach.why}"))
    if not modules:
        return out
    # ``x = alias.a`` (a module) makes ``x`` an alias too; two rounds cover ``y = x.b``. Not in a
    # class body: there the name becomes a class attribute, read as ``self.x`` (a module value).
    in_class = {id(stmt) for cls in classes for stmt in cls.body}
    aliasing: set[int] = set()
    candidates = [a for a in assigns if type(a.value) in (ast.Attribute, ast.Name) and id(a) not in in_class
                  and all(type(t) is ast.Name for t in a.targets)]
    for _ in range(2):
        for assign in candidates:
            if _root(assign.value) not in modules:
                continue
            targets = [t.id for t in assign.targets if type(t) is ast.Name]
            if targets:
                aliasing.add(id(assign.value))
                for module in _chain_modules(assign.value, modules, view):
                    for target in targets:
                        modules.setdefault(target, set()).add(module)
    seen: set[tuple[int, int, str]] = set()

    def report(node: ast.AST, root: str, parts: list[str], store: bool) -> None:
        for module in sorted(modules[root]):
            reach, used = view.chain(module, parts[:-1] if store else parts)
            if reach.kind == "refused":
                what = ".".join([root, *parts[:used]])
                shown = what if what == reach.path else f"{what} ({reach.path})"
                message = f"{shown} is outside the sandbox policy: {reach.why}"
            elif store and reach.kind == "module" and used == len(parts) - 1:
                what = ".".join([root, *parts])
                message = f"{what} = ...: writes an attribute of the module {reach.path} (module facades are read-only)"
            else:
                continue
            key = (node.lineno, node.col_offset, message)  # type: ignore[attr-defined]
            if key not in seen:
                seen.add(key)
                out.append(RawFinding("PW023", node.lineno, node.col_offset, message))  # type: ignore[attr-defined]

    on_modules = [(attr, _target(attr)[0]) for attr in attributes if _root(attr) in modules]
    for attr, parts in on_modules:
        report(attr, parts[0], parts[1:], type(attr.ctx) is not ast.Load)
    followed = {id(a.value) for a in attributes} | aliasing  # a module as the prefix of a name, or aliased
    for call in calls:
        func = call.func
        if type(func) is ast.Name and func.id in _rules.ATTRIBUTE_BUILTINS and call.args:
            followed.add(id(call.args[0]))  # a literal name is checked here, a computed one is PW032
            if len(call.args) >= 2 and type(call.args[0]) is ast.Name and call.args[0].id in modules:
                name_arg = call.args[1]
                if isinstance(name_arg, ast.Constant) and isinstance(name_arg.value, str):
                    report(call, call.args[0].id, [name_arg.value], func.id in ("setattr", "delattr"))
    out.extend(_module_values(on_modules, names, modules, followed, compares, annotations, view))
    return out


def _root(node: ast.expr) -> str | None:
    """The name at the root of an attribute chain (``a`` of ``a.b.c``), or None."""
    while type(node) is ast.Attribute:
        node = node.value  # type: ignore[attr-defined]
    return node.id if type(node) is ast.Name else None  # type: ignore[attr-defined]


def _denied_attributes(
    attributes: list[ast.Attribute],
    calls: list[ast.Call],
    bound: set[str],
    bindings: dict[str, str],
    view: PolicyView,
) -> list[RawFinding]:
    """PW023: an attribute name the policy's ``[deny]`` refuses on every host object
    (``x.save_pretrained``, ``arr.tofile``, ``unet.register_forward_hook``, ``t.data_ptr``), on any
    receiver. The sandbox lets the file's own objects use names the file itself defines; a name the
    file defines or binds anywhere (a method, an attribute it assigns, a keyword it passes) is left
    alone here for that reason. Chains on a module alias are PW023 through the facade check."""
    deny = view.policy.deny
    defined: set[str] | None = None
    out: list[RawFinding] = []
    for attr in attributes:
        name = attr.attr
        if type(attr.ctx) is not ast.Load or not deny.denies(name):
            continue
        if defined is None:
            defined = set(bound)
            defined.update(a.attr for a in attributes if type(a.ctx) is not ast.Load)
            for call in calls:
                defined.update(kw.arg for kw in call.keywords if kw.arg)
                if (type(call.func) is ast.Name and call.func.id in ("setattr", "getattr", "hasattr")
                        and len(call.args) >= 2 and isinstance(call.args[1], ast.Constant)):
                    defined.add(str(call.args[1].value))
        if name in defined:
            continue
        root = attr.value
        while type(root) is ast.Attribute:
            root = root.value  # type: ignore[attr-defined]
        if type(root) is ast.Name and root.id in bindings:  # type: ignore[attr-defined]
            continue  # through an import: the facade check (or the import's own finding) decides
        out.append(RawFinding("PW023", attr.lineno, attr.col_offset, (
            f".{name} is refused on every object by the sandbox policy ([deny]: files, network, "
            "processes, hooks, raw memory); under plain diffusers it runs")))
    return out


def _module_values(
    on_modules: list[tuple[ast.Attribute, list[str]]],
    names: list[ast.Name],
    modules: dict[str, set[str]],
    followed: set[int],
    compares: list[ast.Compare],
    annotations: list[ast.expr],
    view: PolicyView,
) -> list[RawFinding]:
    """PW032: a module facade used as a value (passed, stored, returned, put in a container): what is
    reached through it later (``vars(torch)["utils"]``, ``self.helper.collect_env``) cannot be
    checked here, so it fails closed. Compared (``type(x) is Image``) or annotated is no use."""
    candidates: list[tuple[ast.expr, str]] = [(n, n.id) for n in names if n.id in modules and id(n) not in followed]
    for attr, parts in on_modules:
        if type(attr.ctx) is ast.Load and id(attr) not in followed:
            for module in modules[parts[0]]:
                reach, used = view.chain(module, parts[1:])
                if reach.kind == "module" and used == len(parts) - 1:
                    candidates.append((attr, ".".join(parts)))
                    break
    if not candidates:
        return []
    harmless = {id(operand) for c in compares for operand in (c.left, *c.comparators)}
    for annotation in annotations:
        harmless.update(id(n) for n in ast.walk(annotation))
    out = []
    for node, shown in candidates:
        if id(node) not in harmless:
            out.append(RawFinding("PW032", node.lineno, node.col_offset, (  # type: ignore[attr-defined]
                f"the module {shown} is used as a value (passed, stored, returned or put in a container): "
                "what is reached through it later cannot be checked against the sandbox policy")))
    return out


def _used_outside(annotations: list[ast.expr], loaded: dict[str, int], cache: list[set[str]]) -> set[str]:
    """Names with a load outside every annotation: a name read only in annotations is evaluated as a
    type (or not at all), never called."""
    if not cache:
        inside: dict[str, int] = {}
        for annotation in annotations:
            for node in ast.walk(annotation):
                if type(node) is ast.Name:
                    inside[node.id] = inside.get(node.id, 0) + 1
        cache.append({name for name, count in loaded.items() if count > inside.get(name, 0)})
    return cache[0]


def _chain_modules(node: ast.expr, modules: dict[str, set[str]], view: PolicyView) -> set[str]:
    parts, rooted = _target(node)
    if not rooted or parts[0] not in modules:
        return set()
    found = set()
    for module in modules[parts[0]]:
        reach, used = view.chain(module, parts[1:])
        if reach.kind == "module" and used == len(parts) - 1:
            found.add(reach.path)
    return found


# --- annotations evaluated at load ------------------------------------------------------------------


def _future_annotations(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__" and any(
            a.name == "annotations" for a in node.names
        ):
            return True
    return False


def _annotation_findings(annotations: list[ast.expr], future: bool) -> list[RawFinding]:
    """PW047: annotations that ``typing.get_type_hints`` would evaluate as code. diffusers calls it on
    the pipeline's ``__init__`` while it loads the pipeline (``_get_signature_types``): a string
    annotation (every annotation under ``from __future__ import annotations``), and each string in a
    type position of an annotation (a forward reference), must be a plain type expression."""
    out: list[RawFinding] = []
    for annotation in annotations:
        problem = _annotation_problem(annotation, evaluated=future)
        if problem is not None:
            out.append(RawFinding("PW047", annotation.lineno, annotation.col_offset, (
                f"annotation {_short(annotation)} is not a plain type expression ({problem}): "
                "typing.get_type_hints evaluates it, and diffusers calls that on __init__ while it loads "
                "the pipeline")))
    return out


def _short(node: ast.expr) -> str:
    try:
        text = ast.unparse(node)
    except Exception:  # noqa: BLE001 - a description only
        text = type(node).__name__
    text = " ".join(text.split())
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _annotation_problem(node: ast.expr, *, evaluated: bool) -> str | None:
    """Why ``node`` is not a plain type expression, or None. ``evaluated``: the expression itself is
    evaluated by get_type_hints (a string's content, or any annotation under the future import);
    otherwise Python already ran it as code (other rules see its calls) and only its strings in type
    positions (forward references) are evaluated later."""
    kind = type(node)
    if kind is ast.Constant:
        value = node.value  # type: ignore[attr-defined]
        if isinstance(value, str):
            try:
                inner = ast.parse(value.strip(), mode="eval").body
            except (SyntaxError, ValueError):
                return "a string that is not a Python expression"
            return _annotation_problem(inner, evaluated=True)
        return None if value is None or value is Ellipsis or isinstance(value, (int, float, bool, bytes)) else "a constant"
    if kind is ast.Name:
        return None
    if kind is ast.Attribute:
        base = node
        while type(base) is ast.Attribute:
            base = base.value  # type: ignore[attr-defined]
        return None if type(base) is ast.Name else (f"an attribute of {type(base).__name__}" if evaluated else None)
    if kind is ast.Subscript:
        head = _annotation_problem(node.value, evaluated=evaluated)  # type: ignore[attr-defined]
        if head is not None:
            return head
        items = node.slice  # type: ignore[attr-defined]
        elements = list(items.elts) if type(items) is ast.Tuple else [items]
        last = node.value.attr if type(node.value) is ast.Attribute else getattr(node.value, "id", "")  # type: ignore[attr-defined]
        if last == "Literal":  # Literal["a", 1]: values, never evaluated as types
            bad = [e for e in elements if not _literal_value(e)]
            return "a Literal of something other than constants" if bad and evaluated else None
        if last == "Annotated" and elements:  # Annotated[T, meta...]: metadata is not a type
            meta = [e for e in elements[1:] if type(e) is not ast.Constant]
            elements = elements[:1] + meta
        for element in elements:
            if type(element) is ast.List:  # Callable[[int], str]
                for item in element.elts:
                    problem = _annotation_problem(item, evaluated=evaluated)
                    if problem is not None:
                        return problem
                continue
            problem = _annotation_problem(element, evaluated=evaluated)
            if problem is not None:
                return problem
        return None
    if kind is ast.BinOp and type(node.op) is ast.BitOr:  # type: ignore[attr-defined]
        return _annotation_problem(node.left, evaluated=evaluated) or _annotation_problem(node.right, evaluated=evaluated)  # type: ignore[attr-defined]
    if kind is ast.Tuple or kind is ast.List:  # tuple[()] and lists of types evaluate no code
        for item in node.elts:  # type: ignore[attr-defined]
            problem = _annotation_problem(item, evaluated=evaluated)
            if problem is not None:
                return problem
        return None
    if kind is ast.Starred:  # *Ts (TypeVarTuple)
        return _annotation_problem(node.value, evaluated=evaluated)  # type: ignore[attr-defined]
    if not evaluated:
        return None  # ordinary code Python already ran; the call rules see inside it
    return f"a {kind.__name__} expression"


def _literal_value(node: ast.expr) -> bool:
    if type(node) is ast.Constant:
        return True
    if type(node) is ast.UnaryOp and type(node.op) in (ast.USub, ast.UAdd):  # type: ignore[attr-defined]
        return type(node.operand) is ast.Constant  # type: ignore[attr-defined]
    return type(node) in (ast.Name, ast.Attribute) and _annotation_problem(node, evaluated=True) is None  # enum members
