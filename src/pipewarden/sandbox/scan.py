"""Static scan of untrusted pipeline source: parse with ``ast`` (never execute) and find the pipeline class.

Decides: whether the bytes are decodable, parseable Python, and which module-level classes inherit from
``DiffusionPipeline`` (directly, through a diffusers pipeline class, or through another pipeline class of
the same file). The answer must equal diffusers' ``find_pipeline_class`` (module members that are classes,
subclasses of ``DiffusionPipeline``, not named ``DiffusionPipeline``, not defined in ``diffusers``).

Trusts: only the shipped list of diffusers pipeline class names (``policy/diffusers_pipelines.toml``) and
the import aliases it is given. Never imports torch or diffusers (``audit`` starts fast).
"""

from __future__ import annotations

import ast
import functools
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pipewarden.errors import ScanError

__all__ = [
    "ClassCandidate",
    "ImportRef",
    "ScanResult",
    "scan_source",
    "require_single_pipeline",
    "decode_source",
    "known_pipeline_names",
]

_DIFFUSERS = "diffusers"
_ROOT_CLASS = "DiffusionPipeline"
_MAX_SOURCE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ClassCandidate:
    """A module-level class that inherits from ``DiffusionPipeline`` (directly or not)."""

    name: str
    lineno: int
    col_offset: int
    bases: tuple[str, ...]


@dataclass(frozen=True)
class ImportRef:
    """One imported name: ``import a.b`` -> (``a.b``, None); ``from a import b`` -> (``a``, ``b``)."""

    module: str
    name: str | None
    lineno: int
    col_offset: int


@dataclass(frozen=True)
class ScanResult:
    tree: ast.Module
    pipeline_class: str | None
    candidates: tuple[ClassCandidate, ...]
    imports: tuple[ImportRef, ...]


@functools.lru_cache(maxsize=1)
def known_pipeline_names() -> frozenset[str]:
    """Names of diffusers' own DiffusionPipeline subclasses (shipped data; see the generator script)."""
    from pipewarden.sandbox.policy import diffusers_pipeline_names

    return diffusers_pipeline_names()


def decode_source(source: str | bytes, *, filename: str = "pipeline.py") -> str:
    """Bytes -> text, refusing what Python would mis-handle or what hides code from reviewers."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
        if len(raw) > _MAX_SOURCE_BYTES:
            raise ScanError(
                f"{filename} is {len(raw)} bytes, larger than the {_MAX_SOURCE_BYTES}-byte limit",
                rule="scan.source-size",
                fix="community pipelines are far smaller; check that this is the right file",
            )
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise ScanError(
                f"{filename} is not valid UTF-8 (byte {exc.start}, line {line})",
                rule="scan.utf8",
                fix="save the file as UTF-8",
            ) from None
    elif isinstance(source, str):
        text = source
        if len(text) > _MAX_SOURCE_BYTES:
            raise ScanError(
                f"{filename} is longer than the {_MAX_SOURCE_BYTES}-character limit",
                rule="scan.source-size",
                fix="community pipelines are far smaller; check that this is the right file",
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            line = text[: exc.start].count("\n") + 1
            raise ScanError(
                f"{filename} contains text that is not encodable as UTF-8 (line {line})",
                rule="scan.utf8",
                fix="remove lone surrogates from the file",
            ) from None
    else:
        raise TypeError(f"source must be str or bytes, not {type(source).__name__}")
    # The same text whatever the path (audit, worker, in-process; bytes or str): one BOM dropped.
    if text.startswith("\ufeff"):
        text = text[1:]
    declared = coding_declaration(text)
    if declared is not None and not is_utf8_name(declared[0]):
        raise ScanError(
            f"{filename} declares the source encoding {declared[0]!r} (line {declared[1]})",
            rule="scan.utf8",
            fix="save the file as UTF-8 and remove the coding declaration (Python would decode it "
            "differently from what reviewers and the audit read)",
        )
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ScanError(
            f"{filename} contains a NUL byte (line {line})",
            rule="scan.nul-byte",
            fix="a Python source file never contains NUL bytes; check the download",
        )
    return text


_CODING_RE = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
_BLANK_OR_COMMENT_RE = re.compile(r"^[ \t\f]*(?:[#\r\n]|$)")


def coding_declaration(text: str) -> tuple[str, int] | None:
    """The PEP 263 encoding declaration of a source (name, line), as Python's tokenizer finds it:
    on line 1, or on line 2 when line 1 is blank or a comment."""
    lines = text.split("\n", 2)[:2]
    for index, line in enumerate(lines):
        m = _CODING_RE.match(line)
        if m:
            return m.group(1), index + 1
        if not _BLANK_OR_COMMENT_RE.match(line):
            return None
    return None


def is_utf8_name(name: str) -> bool:
    """Does Python's tokenizer read this declared encoding as UTF-8? (``get_normal_name``)."""
    norm = name[:12].lower().replace("_", "-")
    return norm in ("utf-8", "utf8") or norm.startswith("utf-8-")


def parse_source(text: str, *, filename: str = "pipeline.py") -> ast.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for invalid escapes etc.
            tree = ast.parse(text, filename=filename, mode="exec")
    except SyntaxError as exc:
        raise ScanError(
            f"{filename} is not valid Python: {exc.msg} (line {exc.lineno}, column {exc.offset})",
            rule="scan.syntax",
            fix="fix the syntax error; the file is never executed until it parses",
        ) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ScanError(
            f"{filename} could not be parsed ({type(exc).__name__})",
            rule="scan.syntax",
            fix="simplify the file (deeply nested expressions are refused)",
        ) from None
    return tree


def _module_level_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run at import time at module level (through if/try/with/else), not in defs."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If):
            yield from _module_level_statements(stmt.body)
            yield from _module_level_statements(stmt.orelse)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            stmt_any: Any = stmt
            yield from _module_level_statements(stmt_any.body)
            for handler in stmt_any.handlers:
                yield from _module_level_statements(handler.body)
            yield from _module_level_statements(stmt_any.orelse)
            yield from _module_level_statements(stmt_any.finalbody)
        elif isinstance(stmt, (ast.With, ast.For, ast.While)):
            yield from _module_level_statements(stmt.body)
            yield from _module_level_statements(getattr(stmt, "orelse", []))


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    if isinstance(node, ast.Subscript):  # Generic[T]-style bases: look at the subscripted value
        return _dotted(node.value)
    return None


def _canonical_module(module: str, aliases: Mapping[str, str]) -> str:
    head, _, rest = module.partition(".")
    if head in aliases:
        head = aliases[head]
    return head + ("." + rest if rest else "")


def _is_diffusers_module(module: str) -> bool:
    return module == _DIFFUSERS or module.startswith(_DIFFUSERS + ".")


def _is_pipeline_name(name: str) -> bool:
    """Does a diffusers-provided name denote a DiffusionPipeline subclass?

    Known names come from the shipped list. Rule for names the list does not know (a newer or older
    diffusers): a name ending in ``Pipeline`` is treated as a pipeline class (diffusers names its
    pipelines so), except the modular pipelines, which are not DiffusionPipeline subclasses.
    """
    if name == _ROOT_CLASS:
        return True
    if name in known_pipeline_names():
        return True
    from pipewarden.sandbox.policy import diffusers_non_pipeline_names, diffusers_unavailable_pipeline_names

    # Static knowledge, not this environment's: a pipeline whose optional dependency (onnxruntime,
    # ...) is missing here is still a DiffusionPipeline subclass in diffusers, so the verdict on a
    # file never depends on which optional packages the runner has installed.
    if name in diffusers_unavailable_pipeline_names():
        return True

    if name in diffusers_non_pipeline_names() or name.endswith("ModularPipeline"):
        return False
    return name.endswith("Pipeline") and name[:1].isupper()


_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


def _statements_bfs(tree: ast.AST) -> list[ast.AST]:
    """The nodes of ``tree`` that are not inside an expression, in ``ast.walk``'s order (breadth
    first, fields in order), without a generator per node.

    Statements (so imports) are never inside an expression, so every ancestor of an import is
    here, at its depth in the whole tree: the imports come in the order ``ast.walk`` gives them.
    Expressions (most of the nodes) are not entered."""
    nodes: list[ast.AST] = [tree]
    append = nodes.append
    fields_of = _CHILD_FIELDS
    node_type = ast.AST
    expr_type = ast.expr
    i = 0
    while i < len(nodes):
        node = nodes[i]
        i += 1
        kind = type(node)
        fields = fields_of.get(kind)
        if fields is None:
            fields = fields_of[kind] = tuple(f for f in kind._fields if f != "ctx")
        for name in fields:
            value = getattr(node, name, None)
            if isinstance(value, node_type):
                if not isinstance(value, expr_type):
                    append(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, node_type) and not isinstance(item, expr_type):
                        append(item)
    return nodes


def scan_tree(tree: ast.Module, *, import_aliases: Mapping[str, str] | None = None) -> ScanResult:
    aliases = dict(import_aliases or {})
    imports: list[ImportRef] = []
    for node in _statements_bfs(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports.append(ImportRef(alias.name, None, node.lineno, node.col_offset))
        elif isinstance(node, ast.ImportFrom):
            mod = ("." * node.level) + (node.module or "")
            for alias in node.names:
                imports.append(ImportRef(mod, alias.name, node.lineno, node.col_offset))

    # Module-level bindings, in order: local name -> what it refers to.
    #   ("diffusers-name", "StableDiffusionPipeline")  imported from diffusers (or an alias)
    #   ("diffusers-module", "diffusers.pipelines")    a module of diffusers, bound by import
    #   ("class", "MyPipeline")                        a class defined in this file
    #   ("other", "")                                   anything else
    classes: list[tuple[ast.ClassDef, tuple[str, ...]]] = []
    binding: dict[str, tuple[str, str]] = {}
    # Bases are resolved against the bindings as they stand when the class statement runs.
    resolved_bases: dict[int, list[tuple[str, str]]] = {}
    for stmt in _module_level_statements(tree.body):
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                mod = _canonical_module(alias.name, aliases)
                if alias.asname:
                    kind = "diffusers-module" if _is_diffusers_module(mod) else "other"
                    binding[alias.asname] = (kind, mod)
                else:
                    head = alias.name.split(".")[0]
                    canon_head = _canonical_module(head, aliases)
                    kind = "diffusers-module" if _is_diffusers_module(canon_head) else "other"
                    binding[head] = (kind, canon_head)
        elif isinstance(stmt, ast.ImportFrom):
            mod = _canonical_module(stmt.module or "", aliases) if stmt.level == 0 else ""
            for alias in stmt.names:
                local = alias.asname or alias.name
                if alias.name == "*":
                    continue
                if stmt.level == 0 and _is_diffusers_module(mod):
                    binding[local] = ("diffusers-name", alias.name)
                elif stmt.level > 0 and alias.name == _ROOT_CLASS:
                    # Relative import inside a copy of diffusers' own tree (``from ..pipeline_utils
                    # import DiffusionPipeline``): diffusers' rule still sees the real class.
                    binding[local] = ("diffusers-name", alias.name)
                else:
                    binding[local] = ("other", "")
        elif isinstance(stmt, ast.ClassDef):
            names = tuple(filter(None, (_dotted(b) for b in stmt.bases)))
            res: list[tuple[str, str]] = []
            for dotted in names:
                head, _, rest = dotted.partition(".")
                bound = binding.get(head, ("other", ""))
                if not rest:
                    res.append(bound)
                elif bound[0] == "diffusers-module":
                    res.append(("diffusers-name", dotted.rsplit(".", 1)[1]))
                else:
                    res.append(("other", ""))
            resolved_bases[id(stmt)] = res
            classes.append((stmt, names))
            binding[stmt.name] = ("class", stmt.name)
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            binding[stmt.name] = ("other", "")
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    value = stmt.value
                    if isinstance(value, ast.Name) and value.id in binding:
                        binding[target.id] = binding[value.id]
                    else:
                        binding[target.id] = ("other", "")

    # Which file classes are pipelines: fixpoint over "a base is a pipeline".
    is_pipeline: dict[int, bool] = {}
    by_name_last: dict[str, ast.ClassDef] = {}
    for cls, _ in classes:
        by_name_last[cls.name] = cls  # a later definition rebinds the name
    changed = True
    while changed:
        changed = False
        for cls, _ in classes:
            if is_pipeline.get(id(cls)):
                continue
            for kind, ref in resolved_bases[id(cls)]:
                hit = False
                if kind == "diffusers-name":
                    hit = _is_pipeline_name(ref)
                elif kind == "class":
                    base_cls = by_name_last.get(ref)
                    hit = base_cls is not None and bool(is_pipeline.get(id(base_cls)))
                if hit:
                    is_pipeline[id(cls)] = True
                    changed = True
                    break

    # diffusers looks at module members: the class must still be bound under its own name at the end,
    # and must not be named DiffusionPipeline.
    final_bound = {name for name, (kind, ref) in binding.items() if kind == "class" and ref == name}
    candidates = tuple(
        ClassCandidate(cls.name, cls.lineno, cls.col_offset, names)
        for cls, names in classes
        if is_pipeline.get(id(cls))
        and cls.name != _ROOT_CLASS
        and cls.name in final_bound
        and by_name_last.get(cls.name) is cls
    )
    pipeline_class = candidates[0].name if len(candidates) == 1 else None
    return ScanResult(tree=tree, pipeline_class=pipeline_class, candidates=candidates, imports=tuple(imports))


def scan_source(
    source: str | bytes,
    *,
    filename: str = "pipeline.py",
    import_aliases: Mapping[str, str] | None = None,
) -> ScanResult:
    """Parse ``source`` (never executing it) and find the DiffusionPipeline subclasses it defines.

    Raises ``ScanError`` for non-UTF-8 bytes, NUL bytes and syntax errors (with the line).
    Import aliases (e.g. ``{"MuseVdiffusers": "diffusers"}``) let forks' spellings count as diffusers;
    when not given, the default policy's aliases apply.
    """
    text = decode_source(source, filename=filename)
    tree = parse_source(text, filename=filename)
    if import_aliases is None:
        from pipewarden.sandbox.policy import default_policy

        import_aliases = default_policy().import_aliases
    return scan_tree(tree, import_aliases=import_aliases)


def require_single_pipeline(result: ScanResult, *, filename: str = "pipeline.py") -> ClassCandidate:
    """Exactly one pipeline class, or ``ScanError`` listing what was found (with line numbers)."""
    if len(result.candidates) == 1:
        return result.candidates[0]
    if not result.candidates:
        raise ScanError(
            f"{filename} defines no class that inherits from DiffusionPipeline",
            rule="scan.one-pipeline-class",
            fix="a community pipeline file must define exactly one DiffusionPipeline subclass",
        )
    found = ", ".join(f"{c.name} (line {c.lineno})" for c in result.candidates)
    raise ScanError(
        f"{filename} defines {len(result.candidates)} DiffusionPipeline subclasses: {found}",
        rule="scan.one-pipeline-class",
        fix="keep exactly one DiffusionPipeline subclass in the file (diffusers refuses several too)",
    )
