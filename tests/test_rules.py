"""Stable rule ids (issue 13 part 6): every raise site names a registered id, ids are unique, and
SECURITY.md's tables are the registry's."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import pipewarden.errors as errors
from pipewarden import rules
from pipewarden.audit import rules as audit_rules
from pipewarden.errors import PipewardenError, PolicyViolation

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "pipewarden"

# Helpers whose n-th positional argument is a rule id (name -> index); tripwire's ``_refuse``
# takes the event, which becomes ``tripwire.<event>``.
_POSITIONAL_RULE = {"_violation": 1, "_record": 1, "_refuse": 0, "refuse": 1, "DeniedName": 1}
_PREFIX = {"_refuse": "tripwire."}
# Files where the helper named above does not take a rule at that position.
_HELPER_FILES = {
    "_violation": {"runtime"},
    "_record": {"compile.py"},
    "_refuse": {"tripwire.py"},
    "refuse": {"_hf.py"},
    "DeniedName": {"runtime"},
}


def _error_class_names() -> set[str]:
    names = {n for n, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, PipewardenError)}
    # subclasses defined elsewhere in the package
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id in names for b in node.bases
            ):
                names.add(node.name)
    return names


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _rule_sites() -> list[tuple[str, int, ast.expr | None]]:  # noqa: C901
    """Every expression given as a rule in src: ``rule=...`` keywords, the positional rule of
    the known helpers, and error constructions that give no rule at all (None)."""
    err_names = _error_class_names()
    sites: list[tuple[str, int, ast.expr | None]] = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            kw = [k.value for k in node.keywords if k.arg == "rule"]
            sites += [(rel, node.lineno, v) for v in kw]
            idx = _POSITIONAL_RULE.get(name)
            if idx is not None and any(h in rel for h in _HELPER_FILES[name]) and len(node.args) > idx:
                arg = node.args[idx]
                if name in _PREFIX and isinstance(arg, ast.Constant):
                    arg = ast.Constant(_PREFIX[name] + str(arg.value))
                sites.append((rel, node.lineno, arg))
            if name in err_names and not kw and not any(k.arg is None for k in node.keywords):
                sites.append((rel, node.lineno, None))
    return sites


def test_every_raise_site_names_a_registered_rule() -> None:
    bad = []
    count = 0
    for rel, line, expr in _rule_sites():
        if expr is None:
            bad.append(f"{rel}:{line}: an error without rule=")
            continue
        if isinstance(expr, ast.Constant):
            count += 1
            if not rules.is_registered(expr.value):
                bad.append(f"{rel}:{line}: {expr.value!r} is not registered in pipewarden/rules.py")
        elif isinstance(expr, ast.JoinedStr):
            # only the registered families are built at run time: the literal head is the prefix
            head = expr.values[0]
            if not (isinstance(head, ast.Constant) and str(head.value) in rules.FAMILIES):
                bad.append(f"{rel}:{line}: f-string rule {ast.unparse(expr)} is not a registered family")
        elif not isinstance(expr, (ast.Name, ast.Attribute)):
            bad.append(f"{rel}:{line}: rule {ast.unparse(expr)} is neither an id nor a pass-through")
    assert not bad, "\n".join(bad)
    assert count > 150  # the scan really found the raise sites


def test_unregistered_rule_cannot_be_raised() -> None:
    with pytest.raises(ValueError, match="unregistered rule id"):
        PolicyViolation("x", rule="a sentence that is not an id")
    with pytest.raises(TypeError):
        PolicyViolation("x")  # type: ignore[call-arg]
    e = PolicyViolation("reading x", rule="attribute.not-allowlisted", fix="do not")
    assert e.rule == "attribute.not-allowlisted"
    assert "attribute.not-allowlisted" in str(e) and rules.RULES["attribute.not-allowlisted"].meaning in str(e)


def test_families_accept_only_identifier_suffixes() -> None:
    assert rules.is_registered("tripwire.open-write")
    assert rules.is_registered("compile.name.guard-hook")
    assert rules.is_registered("syntax.TryStar")
    for bad in ("tripwire.", "tripwire.a b", "compile.x\n", "nope.thing", "", "PW020"):
        assert not rules.is_registered(bad), bad


def test_ids_unique_and_well_formed() -> None:
    ids = [r.id for r in rules.RULES.values()]
    audit = list(rules.audit_ids())
    assert len(set(ids)) == len(ids) == len(rules._TABLE)
    assert len(set(audit)) == len(audit)
    assert not set(ids) & set(audit)
    for i in ids:
        assert re.fullmatch(r"[a-z][a-z0-9]*(\.[a-z0-9][a-z0-9-]*)*", i), i
        assert not any(i.startswith(p) for p in rules.FAMILIES) or i in rules.RULES
    for i in audit:
        assert re.fullmatch(r"PW\d{3}", i), i


def test_audit_sandbox_rules_are_registered() -> None:
    """An audit finding's ``sandbox_rule`` is a compile rule: a registered refusal id."""
    from pipewarden.sandbox.compile import check_compile

    src = "import os\nclass P:\n    def f(self):\n        return self.__dict__, _getattr_\n"
    issues = check_compile(src)
    assert issues and all(rules.is_registered(i.rule) for i in issues)


def test_security_md_tables_are_the_registry() -> None:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- rule-ids:begin -->\n(.*?)<!-- rule-ids:end -->", text, re.S)
    assert m, "SECURITY.md has no generated rule-id section"
    assert m.group(1) == rules.markdown(), "regenerate with: python -m pipewarden.rules"
    for r in audit_rules.RULES:
        assert f"`{r.id}`" in m.group(1)
