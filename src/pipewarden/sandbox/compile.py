"""Restricted compilation of pipeline source (RestrictedPython 9, with reviewed relaxations).

Decides: which Python constructs the pipeline may use and how each is routed through the run-time
guards. Every RestrictedPython 9 rule is kept except these relaxations, each of which hands the
decision to a run-time per-type allowlist (see SECURITY.md, "Sandbox layers"):

* single-underscore names and attribute names (``self._guidance_scale``, ``def _encode_prompt``).
  Guard-hook shaped names (``_getattr_``, ``_write_``, ... anything ``_x_``), ``_print``, ``_tmpN`` and
  ``_pw...`` stay refused for binding and reading; attribute reads still go through ``_getattr_``,
  which admits ``_x`` only on the sandbox's own objects;
* the dunder methods in the policy's ``allowed_def_names`` (``__init__``, ``__call__``, ...);
* the dunder attribute idioms in the policy (``super().__init__``, ``x.__name__``,
  ``self.__class__.__name__``, ``f.__get__(obj)``), rewritten to sandbox helpers or ``_getattr_``;
* ``__name__``/``__doc__`` readable as names; annotated assignments;
* augmented assignment to attributes and items, rewritten through ``_getattr_``/``_getitem_`` and
  ``_write_``.

Every function and lambda gets the sandbox's function wrapper as innermost decorator, so its body
runs with the tripwire armed whoever calls it. ``print`` is an ordinary name (the sandbox's
logger-backed ``print``). ``try/except*`` stays refused.

Trusts: the policy object and RestrictedPython's transformer.
"""

from __future__ import annotations

import ast
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from RestrictedPython.transformer import (
    FORBIDDEN_FUNC_NAMES,
    INSPECT_ATTRIBUTES,
    IOPERATOR_TO_STR,
    RestrictingNodeTransformer,
    copy_locations,
)

from pipewarden.errors import PolicyViolation
from pipewarden.sandbox.policy import SandboxPolicy, default_policy
from pipewarden.sandbox.scan import decode_source, parse_source

__all__ = [
    "CompileIssue",
    "check_compile",
    "check_compile_tree",
    "compile_restricted_module",
    "FUNCTION_WRAPPER_NAME",
]

#: Names the transformer injects; user code can never bind or read them (they match _GUARD_SHAPE).
FUNCTION_WRAPPER_NAME = "_pw_fn_"
CLASS_OF_NAME = "_pw_class_"
BIND_NAME = "_pw_bind_"
CALL_RESULT_NAME = "_pw_result_"
DECORATE_NAME = "_pw_decorate_"
ENTER_NAME = "_pw_enter_"
VALUE_NAME = "_pw_value_"

_ONLY_UNDERSCORES = re.compile(r"^_+$")  # throwaway names: _, __, ____
_RESERVED = re.compile(r"^(_print|_tmp\d+|_pw.*|_apply|_getiter|_getattr|_getitem|_write|_inplacevar)$")
#: Guard hooks and helpers: never usable as attribute names either.
_HOOK_ATTRS = re.compile(
    r"^(_getattr_|_getitem_|_getiter_|_write_|_apply_|_inplacevar_|_unpack_sequence_|"
    r"_iter_unpack_sequence_|_print_|_print|_pw.*|_tmp\d+)$"
)


@dataclass(frozen=True)
class CompileIssue:
    """One refusal found while compiling: where, which rule, and a message."""

    lineno: int
    col_offset: int
    rule: str
    message: str


_BASE_RULES = (
    ('starts with "_"', "name.underscore"),
    ("__roles__", "name.roles"),
    ("reserved name", "name.reserved"),
    ("Exec calls", "call.exec"),
    ("Eval calls", "call.eval"),
    ("metaclass", "class.metaclass"),
    ('"*" imports', "import.star"),
    ("Lazy import", "import.lazy"),
    ("restricted name", "attribute.inspect"),
    ("Unpacking in comprehensions", "syntax.comprehension-unpacking"),
    ("Assignment expressions", "syntax.walrus-target"),
)


class PipewardenTransformer(RestrictingNodeTransformer):
    """RestrictedPython's transformer with pipewarden's reviewed relaxations (see module docstring)."""

    def __init__(self, policy: SandboxPolicy, *, for_code: bool = True) -> None:
        super().__init__()
        self.policy = policy
        self.issues: list[CompileIssue] = []
        #: False when only the issues are wanted: the locations of the nodes the transformer adds
        #: (needed only to build a code object) are then not filled in, and the ``_getattr_`` /
        #: ``_write_`` calls that route attribute access are not built. Decisions do not change
        #: (tests/sandbox/test_compile.py checks both modes find the same issues).
        self._for_code = for_code
        #: The nodes being visited, outermost first: each entry's parent in the parsed tree is the
        #: entry before it (the parent relation of the tree as parsed, kept without a separate pass).
        self._stack: list[ast.AST] = []
        self._visitors: dict[type, Callable[[Any], Any]] = {}

    # -- traversal --------------------------------------------------------------------------------

    def visit(self, node: ast.AST) -> Any:
        """``ast.NodeVisitor.visit`` (same ``visit_<ClassName>`` dispatch, looked up once per node
        class), keeping the stack of nodes being visited."""
        cls = node.__class__
        visitor = self._visitors.get(cls)
        if visitor is None:
            found: Callable[[Any], Any] = getattr(self, "visit_" + cls.__name__, self.generic_visit)
            if _is_passthrough_method(found):
                # ``return self.node_contents_visit(node)`` and nothing else: called directly
                found = self.node_contents_visit
            visitor = self._visitors[cls] = found
        stack = self._stack
        stack.append(node)
        try:
            return visitor(node)
        finally:
            stack.pop()

    def node_contents_visit(self, node: Any) -> Any:
        """``ast.NodeTransformer.generic_visit``, statement for statement, without its generator."""
        visit = self.visit
        for field in node._fields:
            try:
                old_value = getattr(node, field)
            except AttributeError:
                continue
            if isinstance(old_value, list):
                new_values = []
                for value in old_value:
                    if isinstance(value, ast.AST):
                        if value.__class__ in _PASSTHROUGH_CONTEXTS or (
                            value.__class__ is _CONSTANT and _inert_constant(value)
                        ):
                            new_values.append(value)  # visiting it would return it unchanged
                            continue
                        value = visit(value)
                        if value is None:
                            continue
                        elif not isinstance(value, ast.AST):
                            new_values.extend(value)
                            continue
                    new_values.append(value)
                old_value[:] = new_values
            elif isinstance(old_value, ast.AST):
                if old_value.__class__ in _PASSTHROUGH_CONTEXTS or (
                    old_value.__class__ is _CONSTANT and _inert_constant(old_value)
                ):
                    continue  # visiting it would return it unchanged, with no other effect
                new_node = visit(old_value)
                if new_node is None:
                    delattr(node, field)
                else:
                    setattr(node, field, new_node)
        return node

    def _copy_locations(self, new_node: Any, old_node: Any) -> None:
        """RestrictedPython's ``copy_locations``; when only checking, the locations of the new
        node's own new children are left unset (nothing reads them: no code object is built)."""
        if self._for_code:
            copy_locations(new_node, old_node)
            return
        new_node.lineno = old_node.lineno
        new_node.end_lineno = old_node.end_lineno
        new_node.col_offset = old_node.col_offset
        new_node.end_col_offset = old_node.end_col_offset

    # -- error bookkeeping ------------------------------------------------------------------------

    def error(self, node: ast.AST, info: str) -> None:
        rule = ""
        for needle, name in _BASE_RULES:
            if needle in info:
                rule = name
                break
        if not rule:
            m = re.match(r"(\w+) statements are not allowed", info)
            rule = f"syntax.{m.group(1)}" if m else "restricted"
        self._record(node, rule, info)

    def _record(self, node: ast.AST, rule: str, message: str) -> None:
        lineno = getattr(node, "lineno", 0) or 0
        col = getattr(node, "col_offset", 0) or 0
        self.errors.append(f"Line {lineno}: {message}")
        self.issues.append(CompileIssue(lineno, col, rule, message))

    def gen_tmp_name(self) -> str:
        name = f"_tmp{self._tmp_idx}"
        self._tmp_idx += 1
        return name

    # -- names ------------------------------------------------------------------------------------

    def check_name(self, node: Any, name: str | None, allow_magic_methods: bool = False) -> None:
        if name is None or _ONLY_UNDERSCORES.match(name):
            return
        if name.startswith("__") and name.endswith("__") and len(name) > 4:
            if allow_magic_methods and name in self.policy.allowed_def_names and node.col_offset != 0:
                return
            if name in self.policy.bindable_dunder_names:
                return
            self._record(
                node,
                "name.dunder",
                f'"{name}" is not allowed: dunder names are reserved (allowed method names: '
                f"{', '.join(sorted(self.policy.allowed_def_names))})",
            )
            return
        if name.startswith("_") and name != "_":
            if _HOOK_ATTRS.match(name) or _RESERVED.match(name) or name.startswith("__"):
                self._record(
                    node,
                    "name.guard-hook",
                    f'"{name}" is not allowed: names shaped like sandbox guard hooks are reserved',
                )
            return
        if name.endswith("__roles__"):
            self._record(node, "name.roles", f'"{name}" is an invalid name because it ends with "__roles__"')
        elif name in FORBIDDEN_FUNC_NAMES:
            self._record(node, "name.reserved", f'"{name}" is a reserved name')

    def visit_Name(self, node: ast.Name) -> Any:
        if node.ctx.__class__ not in _PASSTHROUGH_CONTEXTS:  # else node_contents_visit does nothing
            node = self.node_contents_visit(node)
        name = node.id
        if isinstance(node.ctx, ast.Load):
            self.used_names[name] = True
            if name in self.policy.readable_dunder_names:
                return node
            if name in ("print", "printed"):
                return node  # plain name: the sandbox's logger-backed print (``printed`` is undefined)
        if name[:1] != "_" and not name.endswith("__roles__") and name not in FORBIDDEN_FUNC_NAMES:
            return node  # check_name records nothing for it
        self.check_name(node, name)
        return node

    # -- attributes -------------------------------------------------------------------------------

    def _parent(self, node: ast.AST) -> ast.AST | None:
        """``node``'s parent in the parsed tree; ``node`` is being visited (it is on the stack)."""
        for ancestor in self._ancestors(node):
            return ancestor
        return None

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        attr = node.attr
        is_dunder = attr.startswith("__") and attr.endswith("__") and len(attr) > 4
        if attr.endswith("__roles__"):
            self._record(node, "name.roles", f'"{attr}" is an invalid attribute name')
            return node
        if attr in INSPECT_ATTRIBUTES:
            self._record(node, "attribute.inspect", f'"{attr}" is a restricted name (frames, code, tracebacks)')
            return node
        if is_dunder:
            return self._visit_dunder_attribute(node)
        if attr.startswith("_") and not _ONLY_UNDERSCORES.match(attr) and (
            _HOOK_ATTRS.match(attr) or attr.startswith("__")
        ):
            self._record(
                node,
                "attribute.guard-hook",
                f'"{attr}" is not allowed as an attribute name (guard-hook or name-mangled shape)',
            )
            return node
        return self._route_attribute(node)

    def _route_attribute(self, node: ast.Attribute) -> Any:
        if not self._for_code:
            # Only the issues are wanted: the guard call that replaces the node is built only for
            # a code object (no decision reads it: parents decide on the tree as parsed).
            return self.node_contents_visit(node)
        if isinstance(node.ctx, ast.Load):
            node = self.node_contents_visit(node)
            new_node = ast.Call(
                func=ast.Name("_getattr_", ast.Load()), args=[node.value, ast.Constant(node.attr)], keywords=[]
            )
            self._copy_locations(new_node, node)
            return new_node
        node = self.node_contents_visit(node)
        new_value = ast.Call(func=ast.Name("_write_", ast.Load()), args=[node.value], keywords=[])
        self._copy_locations(new_value, node.value)
        node.value = new_value
        return node

    def _visit_dunder_attribute(self, node: ast.Attribute) -> Any:
        attr = node.attr
        if attr not in self.policy.allowed_dunder_attrs:
            self._record(
                node,
                "attribute.dunder",
                f'"{attr}" is not allowed: dunder attributes are refused except the reviewed idioms '
                f"({', '.join(sorted(self.policy.allowed_dunder_attrs))})",
            )
            return node
        if not isinstance(node.ctx, ast.Load):
            self._record(node, "attribute.dunder-write", f'writing or deleting "{attr}" is not allowed')
            return node
        parent = self._parent(node)
        if attr == "__class__":
            receiver_is_self = isinstance(node.value, ast.Name) and node.value.id == "self"
            ok = (
                receiver_is_self
                or (isinstance(parent, ast.Attribute) and parent.attr in ("__name__", "__qualname__"))
                or isinstance(parent, (ast.FormattedValue, ast.Compare))
            )
            if not ok:
                self._record(
                    node,
                    "attribute.dunder-class",
                    "x.__class__ is only allowed as x.__class__.__name__, in an f-string, in a "
                    "comparison, or as self.__class__",
                )
                return node
            node = self.node_contents_visit(node)
            new_node = ast.Call(func=ast.Name(CLASS_OF_NAME, ast.Load()), args=[node.value], keywords=[])
            self._copy_locations(new_node, node)
            return new_node
        if attr == "__get__":
            if not (isinstance(parent, ast.Call) and parent.func is node):
                self._record(node, "attribute.dunder-get", "f.__get__ is only allowed as a call f.__get__(obj)")
                return node
            node = self.node_contents_visit(node)
            new_node = ast.Call(func=ast.Name(BIND_NAME, ast.Load()), args=[node.value], keywords=[])
            self._copy_locations(new_node, node)
            return new_node
        # __name__, __qualname__, __version__, __init__, __call__, __post_init__, __doc__: the
        # run-time _getattr_ decides per object.
        return self._route_attribute(node)

    # -- definitions ------------------------------------------------------------------------------

    def _wrap_decorator(self, node: ast.AST) -> ast.Name:
        deco = ast.Name(FUNCTION_WRAPPER_NAME, ast.Load())
        self._copy_locations(deco, node)
        return deco

    def _checked_decorators(self, new: Any) -> None:
        # ``@d`` is not a Call node: its application's result is checked like a call result
        # (``@functools.partial(next, iter(classes))`` would otherwise bind a raw host class).
        checked = []
        for deco in new.decorator_list:
            call = ast.Call(func=ast.Name(DECORATE_NAME, ast.Load()), args=[deco], keywords=[])
            self._copy_locations(call, deco)
            self._copy_locations(call.func, deco)
            checked.append(call)
        new.decorator_list = checked

    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        new: Any = super().visit_FunctionDef(node)
        self._checked_decorators(new)
        new.decorator_list.append(self._wrap_decorator(new))  # innermost: wraps the raw function
        return new

    def visit_Lambda(self, node: ast.Lambda) -> Any:
        new: Any = super().visit_Lambda(node)
        call = ast.Call(func=ast.Name(FUNCTION_WRAPPER_NAME, ast.Load()), args=[new], keywords=[])
        self._copy_locations(call, node)
        return call

    def check_function_argument_names(self, node: Any) -> None:
        super().check_function_argument_names(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> Any:
        for kw in node.keywords:
            if kw.arg is None:
                self._record(node, "class.keywords", "**kwargs in a class statement is not allowed")
        new: Any = super().visit_ClassDef(node)
        if isinstance(new, ast.ClassDef):
            self._checked_decorators(new)
        return new

    def visit_Call(self, node: ast.Call) -> Any:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in self.policy.statement_calls_refused:
            parent = self._parent(node)
            in_with = isinstance(parent, ast.withitem) and parent.context_expr is node
            as_decorator = isinstance(parent, (ast.FunctionDef, ast.ClassDef)) and node in parent.decorator_list
            if not (in_with or as_decorator):
                self._record(
                    node,
                    "call.global-state",
                    f"{name}(...) outside a with statement or decorator would change a process-wide mode",
                )
        new = super().visit_Call(node)
        if isinstance(new, ast.Call):
            # Call results are checked like attribute values (provenance travels with values): a
            # host call cannot hand sandboxed code a raw module, frame, builtin or class that the
            # attribute, item and iteration guards would not (``list.pop``, ``dict.get``, ``next``).
            # The call itself is unchanged (``super()`` still runs in its own frame).
            wrapped = ast.Call(func=ast.Name(CALL_RESULT_NAME, ast.Load()), args=[new], keywords=[])
            return ast.copy_location(wrapped, new)
        return new

    # -- values host code computes without a call expression ---------------------------------------
    #
    # Provenance travels with values: every value host code hands to sandboxed code is checked at
    # the point it arrives (attribute, item, iteration, unpacking, parameter, call result). Red team
    # round 9: ``with cm as v`` bound the value of ``cm.__enter__()`` with no check
    # (``contextlib.contextmanager(itertools.islice)(host_values, 0, 1)`` handed out any element of
    # any host iterable raw: the metaclass ``type``, then memory and ``os.system``). Every node
    # whose value host code computes is listed in ``VALUE_NODES`` (tests/sandbox/test_value_doors.py
    # fails on an expression node class nobody classified).

    def _checked(self, name: str, node: ast.expr, old: ast.AST) -> ast.expr:
        if not self._for_code:
            return node
        call = ast.Call(func=ast.Name(name, ast.Load()), args=[node], keywords=[])
        return ast.copy_location(call, old)

    def visit_withitem(self, node: ast.withitem) -> Any:
        new: Any = super().visit_withitem(node)
        if isinstance(new, ast.withitem) and new.optional_vars is not None:
            # ``with E as T``: T gets ``E.__enter__()`` checked like a call result
            new.context_expr = self._checked(ENTER_NAME, new.context_expr, node.context_expr)
        return new

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> Any:
        new: Any = super().visit_ExceptHandler(node)
        if isinstance(new, ast.ExceptHandler) and new.name and self._for_code:
            check = ast.Assign(
                targets=[ast.Name(new.name, ast.Store())],
                value=ast.Call(func=ast.Name(VALUE_NAME, ast.Load()), args=[ast.Name(new.name, ast.Load())], keywords=[]),
            )
            ast.copy_location(check, node)
            new.body.insert(0, check)
        return new

    def _value_used(self, node: ast.AST) -> bool:
        """Whether ``node``'s value reaches sandboxed code (not only its truth: an ``if``/``while``/
        ``assert`` test, a conditional's test, a comprehension filter, ``not``, an expression
        statement)."""
        parent = self._parent(node)
        if isinstance(parent, (ast.If, ast.While, ast.IfExp, ast.Assert)) and parent.test is node:
            return False
        if isinstance(parent, ast.comprehension) and node in parent.ifs:
            return False
        if isinstance(parent, ast.UnaryOp) and isinstance(parent.op, ast.Not):
            return False
        return not isinstance(parent, ast.Expr)

    def _checked_operator(self, node: ast.expr) -> Any:
        used = self._value_used(node)
        new: Any = self.node_contents_visit(node)
        if used and isinstance(new, ast.expr):
            return self._checked(VALUE_NAME, new, node)
        return new

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        return self._checked_operator(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        if isinstance(node.op, ast.Not):
            return self.node_contents_visit(node)  # always a bool
        return self._checked_operator(node)

    def visit_Compare(self, node: ast.Compare) -> Any:
        return self._checked_operator(node)

    def visit_keyword(self, node: ast.keyword) -> Any:
        # f(__array_interface__=...): host constructors turn keywords into attributes that host
        # protocols (numpy's array interface, copy's __reduce_ex__) read.
        if node.arg is not None and (node.arg.startswith("__") or _HOOK_ATTRS.match(node.arg)):
            self._record(node, "call.dunder-keyword", f'keyword argument "{node.arg}" is not allowed')
        return self.node_contents_visit(node)

    def _check_yield(self, node: ast.AST) -> None:
        # A generator suspended inside `with torch.no_grad()` / `inference_mode()` / `autocast()` /
        # `warnings.catch_warnings()` hands control back to the host with the sandbox's process-wide
        # mode still switched on (and forever, if never resumed).
        for ancestor in self._ancestors(node):
            if isinstance(ancestor, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.Module)):
                return
            if isinstance(ancestor, (ast.With, ast.AsyncWith)):
                self._record(node, "syntax.yield-in-with", "yield inside a with block is not allowed")
                return

    def _ancestors(self, node: ast.AST) -> Iterator[ast.AST]:
        """``node``'s ancestors in the parsed tree, innermost first (``node`` is being visited)."""
        stack = self._stack
        index = len(stack) - 1
        while index >= 0 and stack[index] is not node:
            index -= 1
        while index > 0:
            index -= 1
            yield stack[index]

    def visit_Yield(self, node: ast.Yield) -> Any:
        self._check_yield(node)
        used = self._value_used(node)
        new: Any = super().visit_Yield(node)
        # ``x = yield v``: what the resumer sends (host code driving the generator)
        return self._checked(VALUE_NAME, new, node) if used else new

    def visit_YieldFrom(self, node: ast.YieldFrom) -> Any:
        self._check_yield(node)
        used = self._value_used(node)
        new: Any = super().visit_YieldFrom(node)
        # ``r = yield from g``: g's return value, and what the resumer sends through
        return self._checked(VALUE_NAME, new, node) if used else new

    # -- assignments ------------------------------------------------------------------------------

    def visit_AnnAssign(self, node: ast.AnnAssign) -> Any:
        return self.node_contents_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        if isinstance(node.target, ast.Name):
            return super().visit_AugAssign(node)
        op = IOPERATOR_TO_STR[type(node.op)]
        target = node.target
        if isinstance(target, ast.Attribute):
            attr = target.attr
            if attr.startswith("__") or _HOOK_ATTRS.match(attr) or attr in INSPECT_ATTRIBUTES:  # noqa: SIM114
                self._record(node, "attribute.dunder-write", f'augmented assignment to "{attr}" is not allowed')
                return node
            obj_tmp = self.gen_tmp_name()
            w_tmp = self.gen_tmp_name()
            self._stack.append(target)  # target.value's parent is the target
            try:
                value = self.visit(target.value)
            finally:
                self._stack.pop()
            rhs = self.visit(node.value)
            # The write guard runs FIRST, so a refused target is never mutated in place.
            stmts: list[ast.stmt] = [
                ast.Assign(targets=[ast.Name(obj_tmp, ast.Store())], value=value),
                ast.Assign(
                    targets=[ast.Name(w_tmp, ast.Store())],
                    value=ast.Call(
                        func=ast.Name("_write_", ast.Load()), args=[ast.Name(obj_tmp, ast.Load())], keywords=[]
                    ),
                ),
            ]
            read = ast.Call(
                func=ast.Name("_getattr_", ast.Load()),
                args=[ast.Name(obj_tmp, ast.Load()), ast.Constant(attr)],
                keywords=[],
            )
            new_target: ast.expr = ast.Attribute(value=ast.Name(w_tmp, ast.Load()), attr=attr, ctx=ast.Store())
        elif isinstance(target, ast.Subscript):
            obj_tmp = self.gen_tmp_name()
            key_tmp = self.gen_tmp_name()
            w_tmp = self.gen_tmp_name()
            self._stack.append(target)  # target.value's and target.slice's parent is the target
            try:
                value = self.visit(target.value)
                key = self.visit(target.slice)
            finally:
                self._stack.pop()
            rhs = self.visit(node.value)
            stmts = [
                ast.Assign(targets=[ast.Name(obj_tmp, ast.Store())], value=value),
                ast.Assign(targets=[ast.Name(key_tmp, ast.Store())], value=key),
                ast.Assign(
                    targets=[ast.Name(w_tmp, ast.Store())],
                    value=ast.Call(
                        func=ast.Name("_write_", ast.Load()), args=[ast.Name(obj_tmp, ast.Load())], keywords=[]
                    ),
                ),
            ]
            read = ast.Call(
                func=ast.Name("_getitem_", ast.Load()),
                args=[ast.Name(obj_tmp, ast.Load()), ast.Name(key_tmp, ast.Load())],
                keywords=[],
            )
            new_target = ast.Subscript(value=ast.Name(w_tmp, ast.Load()), slice=ast.Name(key_tmp, ast.Load()), ctx=ast.Store())
        else:  # pragma: no cover - the grammar allows nothing else
            self._record(node, "syntax.augassign", "unsupported augmented assignment target")
            return node
        compute = ast.Call(
            func=ast.Name("_inplacevar_", ast.Load()), args=[ast.Constant(op), read, rhs], keywords=[]
        )
        stmts.append(ast.Assign(targets=[new_target], value=compute))
        for s in stmts:
            self._copy_locations(s, node)
        return stmts

    # -- module -----------------------------------------------------------------------------------

    def visit_Module(self, node: ast.Module) -> Any:
        return self.node_contents_visit(node)


def _passthrough(self: Any, node: Any) -> Any:
    return self.node_contents_visit(node)


def _is_passthrough_method(method: Any) -> bool:
    """Whether a (bound) visitor is exactly ``return self.node_contents_visit(node)``, as most of
    RestrictedPython's are (checked on the installed RestrictedPython's code, not assumed)."""
    code = getattr(getattr(method, "__func__", method), "__code__", None)
    if code is None:
        return False
    known = _PASSTHROUGH_CODE.get(code)
    if known is None:
        ref = _passthrough.__code__
        known = _PASSTHROUGH_CODE[code] = (code.co_code, code.co_names, code.co_argcount, code.co_varnames) == (
            ref.co_code, ref.co_names, ref.co_argcount, ref.co_varnames
        )
    return known


_PASSTHROUGH_CODE: dict[types.CodeType, bool] = {}


def _is_passthrough(cls: type[ast.AST]) -> bool:
    """Whether the transformer's visitor for ``cls`` (a node class without fields) is exactly
    RestrictedPython's ``return self.node_contents_visit(node)``, i.e. returns the node unchanged."""
    name = "visit_" + cls.__name__
    method = getattr(PipewardenTransformer, name, None)
    if cls._fields or method is None or method is not getattr(RestrictingNodeTransformer, name, None):
        return False
    return _is_passthrough_method(method)


def _leaf_classes() -> Iterator[type[ast.AST]]:
    for name in dir(ast):
        cls = getattr(ast, name)
        if isinstance(cls, type) and issubclass(cls, ast.AST) and not cls._fields and not cls.__subclasses__():
            yield cls


def _inert_constant(node: Any) -> bool:
    """A Constant whose fields hold no node: its (passthrough) visit would change nothing."""
    for field in node._fields:
        value = getattr(node, field, None)
        if isinstance(value, (list, ast.AST)):
            return False
    return True


#: ``ast.Constant`` when its visitor is RestrictedPython's passthrough (checked), else None.
_CONSTANT = ast.Constant if _is_passthrough_method(getattr(PipewardenTransformer, "visit_Constant", None)) else None


#: Node classes without fields (expression contexts Load/Store/Del, operators) whose visit is a
#: no-op (checked against the installed RestrictedPython): ``node_contents_visit`` does not
#: descend into them (about a third of all nodes).
_PASSTHROUGH_CONTEXTS = frozenset(cls for cls in _leaf_classes() if _is_passthrough(cls))


def _own_location(new_node: Any, old_node: Any) -> None:
    """``copy_locations`` for a check that builds no code object: the new node gets the old
    node's location, and the new node's new children (which nothing reads) are left as they
    are instead of being filled in by a walk of the whole new subtree (``fix_missing_locations``
    in RestrictedPython's ``copy_locations``; a third of the check's time)."""
    new_node.lineno = old_node.lineno
    new_node.end_lineno = old_node.end_lineno
    new_node.col_offset = old_node.col_offset
    new_node.end_col_offset = old_node.end_col_offset


def _rebound(cls: type, replace: dict[str, Any]) -> dict[str, Any]:
    """``cls``'s own functions, the very same code objects, with the globals they see replaced by
    ``replace`` (the decisions are RestrictedPython's, statement for statement)."""
    module_globals = sys.modules[cls.__module__].__dict__
    namespace = {**module_globals, **replace}
    out: dict[str, Any] = {}
    for name, value in vars(cls).items():
        if isinstance(value, types.FunctionType) and value.__globals__ is module_globals:
            fn = types.FunctionType(value.__code__, namespace, value.__name__, value.__defaults__, value.__closure__)
            fn.__kwdefaults__ = value.__kwdefaults__
            fn.__qualname__ = value.__qualname__
            fn.__doc__ = value.__doc__
            out[name] = fn
    return out


class _CheckingRestrictingTransformer(RestrictingNodeTransformer):
    """RestrictedPython's transformer methods as they are, except that the ``copy_locations``
    they call is ``_own_location``: used below PipewardenTransformer when only the issues are
    wanted."""


for _name, _function in _rebound(RestrictingNodeTransformer, {"copy_locations": _own_location}).items():
    setattr(_CheckingRestrictingTransformer, _name, _function)
del _name, _function


class _CheckingTransformer(PipewardenTransformer, _CheckingRestrictingTransformer):
    """PipewardenTransformer for ``check_compile``/``check_compile_tree``: the same decisions
    (PipewardenTransformer's methods, then RestrictedPython's code through ``super()``), no
    locations filled in for nodes only a code object would need."""


def _transform(
    tree: ast.Module, policy: SandboxPolicy, *, for_code: bool = True
) -> tuple[ast.Module, tuple[CompileIssue, ...]]:
    transformer = (PipewardenTransformer if for_code else _CheckingTransformer)(policy, for_code=for_code)
    new_tree = transformer.visit(tree)
    if for_code:
        ast.fix_missing_locations(new_tree)
    issues = tuple(sorted(transformer.issues, key=lambda i: (i.lineno, i.col_offset)))
    return new_tree, issues


def check_compile_tree(
    tree: ast.Module, *, filename: str = "pipeline.py", policy: SandboxPolicy | None = None
) -> tuple[CompileIssue, ...]:
    """The restricted-compilation refusals for an already parsed module (empty tuple: it compiles).

    The same transformer decides as for ``check_compile`` and ``compile_restricted_module``, but
    no code object is prepared. ``tree`` must come from ``ast.parse(..., mode="exec")`` of text
    that ``scan.decode_source`` accepts; it is transformed in place (do not use it afterwards).
    ``filename`` is accepted for symmetry with ``check_compile`` (nothing is parsed here).
    """
    if not isinstance(tree, ast.Module):
        raise TypeError(f"tree must be an ast.Module, not {type(tree).__name__}")
    del filename
    _, issues = _transform(tree, policy or default_policy(), for_code=False)
    return issues


def check_compile(
    source: str | bytes, *, filename: str = "pipeline.py", policy: SandboxPolicy | None = None
) -> tuple[CompileIssue, ...]:
    """The restricted-compilation refusals for ``source`` (empty tuple: it compiles).

    Undecodable or unparseable source raises ``ScanError`` (as ``scan_source`` does).
    """
    policy = policy or default_policy()
    text = decode_source(source, filename=filename)
    tree = parse_source(text, filename=filename)
    return check_compile_tree(tree, filename=filename, policy=policy)


def compile_restricted_module(
    source: str | bytes, *, filename: str = "pipeline.py", policy: SandboxPolicy | None = None
) -> Any:
    """Compile ``source`` under the restricted rules; ``PolicyViolation`` lists every refusal."""
    policy = policy or default_policy()
    text = decode_source(source, filename=filename)
    tree = parse_source(text, filename=filename)
    new_tree, issues = _transform(tree, policy)
    if issues:
        first = issues[0]
        listing = "; ".join(f"line {i.lineno}: {i.message} [{i.rule}]" for i in issues[:20])
        more = f" (and {len(issues) - 20} more)" if len(issues) > 20 else ""
        raise PolicyViolation(
            f"{filename} uses constructs the sandbox refuses: {listing}{more}",
            rule=f"compile.{first.rule}",
            fix="remove the refused constructs; see SECURITY.md for what pipelines may use",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return compile(new_tree, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        raise PolicyViolation(
            f"{filename} could not be compiled after restriction: {exc}",
            rule="compile.internal",
            fix="report this file to the pipewarden maintainers",
        ) from None
