"""Static audit of pipeline files: what would the sandbox say, and what does the code try to do.

Decides the findings for each file and the order of files and findings. It never executes,
imports or unpickles anything from an audited file: bytes are read (bounded by a size limit),
decoded, parsed with ``ast`` once, checked with the sandbox's restricted transformer (the parsed
tree is handed to it last) and byte-compiled to a code object that is thrown away. Class
detection (``sandbox.scan``), the module allowlist (``sandbox.policy``) and the restricted compile check (``sandbox.compile``) are the
sandbox's own, so the audit cannot drift from what the loader enforces; the rest of the rules
are data in ``audit_rules``. Hostile input (binary data, NUL bytes, huge or deeply nested
files) becomes findings, never a traceback. torch and diffusers are never imported.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipewarden.audit import rules as _rules
from pipewarden.audit.checks import RawFinding, check_tree, conditional_imports
from pipewarden.errors import InputError, ScanError

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from pipewarden.audit.dynamic import DynamicRun

__all__ = [
    "DEFAULT_MAX_FILE_SIZE",
    "AuditOptions",
    "AuditReport",
    "FileReport",
    "Finding",
    "audit_file",
    "audit_paths",
    "audit_source",
    "collect_files",
]

DEFAULT_MAX_FILE_SIZE = 2 * 1024 * 1024
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules"})


@dataclass(frozen=True)
class Finding:
    """One finding. ``line`` and ``column`` are 1-based; ``column`` counts Unicode code points."""

    rule: str
    severity: str
    line: int
    column: int
    message: str
    sandbox_rule: str | None = None  # for PW050 and the dynamic rules: the sandbox's own rule id
    kind: str = "static"  # "dynamic": found by running the file (`pipewarden audit --run`)


@dataclass(frozen=True)
class FileReport:
    path: str  # as displayed: relative to the working directory when inside it, else absolute
    pipeline_class: str | None
    findings: tuple[Finding, ...]
    sha256: str | None = None  # digest of the bytes that were audited (None if not read)
    candidates: tuple[str, ...] = ()  # every DiffusionPipeline subclass found
    dynamic: DynamicRun | None = None  # `audit --run`: how the run went, line coverage

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)


@dataclass(frozen=True)
class AuditReport:
    files: tuple[FileReport, ...]
    policy_version: str | None = None

    def count(self, severity: str) -> int:
        return sum(f.count(severity) for f in self.files)

    @property
    def exit_code(self) -> int:
        """0 when no finding is an error, 1 otherwise."""
        return 1 if self.count("error") else 0


@dataclass(frozen=True)
class AuditOptions:
    """What the audit is configured with; picklable so that ``--jobs`` workers receive it as is."""

    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    import_aliases: tuple[tuple[str, str], ...] = ()
    extra_modules: tuple[tuple[str, tuple[str, ...]], ...] = ()
    _policy_cache: list[Any] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_file_size, int) or isinstance(self.max_file_size, bool) or self.max_file_size <= 0:
            raise ValueError(f"max_file_size must be a positive int, got {self.max_file_size!r}")

    def policy(self) -> Any:
        """The sandbox policy the audit checks against (the default one, plus configured extras)."""
        if not self._policy_cache:
            from pipewarden.sandbox.policy import default_policy

            policy = default_policy()
            if self.import_aliases or self.extra_modules:
                policy = policy.with_extras(
                    extra_modules=dict(self.extra_modules) or None,
                    import_aliases=dict(self.import_aliases) or None,
                )
            self._policy_cache.append(policy)
        return self._policy_cache[0]

    def view(self) -> Any:
        """The static view of :meth:`policy`'s module facades (``audit.reach.PolicyView``), made once."""
        policy = self.policy()
        if len(self._policy_cache) < 2:
            from pipewarden.audit.reach import PolicyView

            self._policy_cache.append(PolicyView(policy))
        return self._policy_cache[1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_policy_cache"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)


# --- files ---------------------------------------------------------------------------------------


def collect_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files to audit, in a deterministic order.

    A named file is audited whatever its suffix; a directory is walked for ``*.py`` (hidden
    directories, ``__pycache__`` and symlinked directories skipped), its files sorted by their
    path relative to it. Duplicates are dropped (first occurrence kept). A path that does not
    exist raises ``InputError`` (exit 2).
    """
    out: list[Path] = []
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found: list[tuple[str, Path]] = []
            for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIPPED_DIRS)
                for name in filenames:
                    if name.endswith(".py") and not name.startswith("."):
                        full = Path(dirpath, name)
                        rel = full.relative_to(path).as_posix()
                        if os.path.islink(full):
                            # A link inside the tree is audited as the file it names, which must
                            # be inside the tree too (a planted link never makes the audit read,
                            # and report on, a file outside it).
                            from pipewarden import fsaccess

                            full = Path(path, fsaccess.resolve_in(path, rel))
                        found.append((rel, full))
            candidates = [p for _, p in sorted(found)]
        elif path.exists() or path.is_symlink():
            candidates = [path]
        else:
            raise InputError(
                f"{os.fspath(raw)}: no such file or directory",
                rule="audit.path-missing",
                fix="pass existing files or directories to `pipewarden audit`",
            )
        for candidate in candidates:
            key = os.path.abspath(candidate)
            if key not in seen:
                seen.add(key)
                out.append(candidate)
    return out


def display_path(path: str | os.PathLike[str], cwd: str | None = None) -> str:
    """``path`` relative to ``cwd`` (posix separators) when inside it, else absolute."""
    absolute = os.path.abspath(path)
    base = os.path.abspath(cwd or os.getcwd())
    try:
        rel = os.path.relpath(absolute, base)
    except ValueError:  # another drive (Windows)
        return Path(absolute).as_posix()
    if rel == ".." or rel.startswith(".." + os.sep):
        return Path(absolute).as_posix()
    return Path(rel).as_posix()


def _read_bounded(path: str, limit: int) -> bytes | Finding:
    """The file's bytes, or a finding if it is not a readable regular file within ``limit``."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        return _file_finding("PW003", f"cannot open file: {exc.strerror or exc}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return _file_finding("PW003", "not a regular file")
        if st.st_size > limit:
            return _file_finding("PW002", f"file is {st.st_size} bytes, over the limit of {limit} bytes")
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        return _file_finding("PW003", f"cannot read file: {exc.strerror or exc}")
    finally:
        os.close(fd)
    if len(data) > limit:
        return _file_finding("PW002", f"file grew over the limit of {limit} bytes while being read")
    return data


def _file_finding(rule_id: str, message: str, line: int = 1, column: int = 1, sandbox_rule: str | None = None) -> Finding:
    return Finding(rule_id, _rules.rule(rule_id).severity, max(1, line), max(1, column), message, sandbox_rule)


# --- one file ------------------------------------------------------------------------------------


def audit_file(path: str | os.PathLike[str], options: AuditOptions | None = None, *, shown_as: str | None = None) -> FileReport:
    """Audit one file on disk. Never raises for hostile content: problems become findings."""
    options = options or AuditOptions()
    shown = shown_as if shown_as is not None else display_path(path)
    data = _read_bounded(os.fspath(path), options.max_file_size)
    if isinstance(data, Finding):
        return FileReport(shown, None, (data,))
    return audit_source(data, path=shown, options=options)


def audit_source(data: bytes | str, *, path: str = "pipeline.py", options: AuditOptions | None = None) -> FileReport:
    """Audit pipeline source held in memory (bytes as read from disk, or text)."""
    options = options or AuditOptions()
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    digest = hashlib.sha256(raw).hexdigest()
    if len(raw) > options.max_file_size:
        return FileReport(path, None, (_file_finding("PW002", f"source is {len(raw)} bytes, over the limit of "
                                                               f"{options.max_file_size} bytes"),), digest)
    was_enabled = gc.isenabled()
    gc.disable()  # ast objects are acyclic: the cyclic GC only costs time here
    try:
        return _audit_bytes(raw, path, digest, options)
    except (RecursionError, MemoryError) as exc:
        finding = _file_finding("PW004", f"analysis ran out of {'memory' if isinstance(exc, MemoryError) else 'recursion depth'}")
        return FileReport(path, None, (finding,), digest)
    except Exception as exc:  # fail closed: an unexpected failure is an error finding, not a traceback
        finding = _file_finding("PW005", f"analysis failed: {type(exc).__name__}: {_one_line(exc)}")
        return FileReport(path, None, (finding,), digest)
    finally:
        if was_enabled:
            gc.enable()


def _audit_bytes(raw: bytes, path: str, digest: str, options: AuditOptions) -> FileReport:
    # 1. Text: UTF-8 without NUL bytes, as the sandbox requires.
    text = _decode(raw)
    if isinstance(text, Finding):
        return FileReport(path, None, (text,), digest)

    # 2. Parse (ast only).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning (invalid escapes, ...) is not a finding
            tree = ast.parse(text, filename=path)
    except SyntaxError as exc:
        return FileReport(path, None, (_syntax_finding(exc, text),), digest)
    except (RecursionError, MemoryError) as exc:
        what = "memory" if isinstance(exc, MemoryError) else "recursion depth"
        return FileReport(path, None, (_file_finding("PW004", f"the parser ran out of {what}"),), digest)

    findings: list[Finding] = []
    columns = _Columns(text)
    policy = options.policy()

    # 3. The audit's own call/attribute rules, parametrised by the policy's reviewed dunder idioms
    #    and builtins, and the names the policy's module facades expose (PW023/PW024).
    provided = policy.builtin_names | policy.readable_dunder_names
    for raw_finding in check_tree(tree, policy.allowed_dunder_attrs, provided, options.view()):
        findings.append(_convert(raw_finding, columns))

    # 4. Class detection and imports: the sandbox's scanner and policy.
    from pipewarden.sandbox import scan as _scan

    result = _scan.scan_tree(tree, import_aliases=policy.import_aliases)
    candidates = tuple(c.name for c in result.candidates)
    try:
        pipeline_class = _scan.require_single_pipeline(result, filename=path).name
    except ScanError as exc:
        pipeline_class = None
        line, col = (result.candidates[1].lineno, result.candidates[1].col_offset) if len(result.candidates) > 1 \
            else (1, 0)
        message = _one_line(exc.what).removeprefix(f"{path} ")
        findings.append(_file_finding("PW010", message, line, columns.column(line, col)))
    conditional: dict[tuple[int, int], str] | None = None
    for ref in result.imports:
        if policy.is_module_allowed(ref.module):
            continue
        if conditional is None:
            conditional = conditional_imports(tree)
        module = policy.canonical_module(ref.module)
        shown = ref.module if module == ref.module else f"{ref.module} (as {module})"
        message = f"import of {shown!r} is outside the sandbox policy (version {policy.version})"
        why = conditional.get((ref.lineno, ref.col_offset))
        findings.append(_file_finding(
            "PW022" if why else "PW020",
            f"{message}; it runs only conditionally ({why})" if why else message,
            ref.lineno, columns.column(ref.lineno, ref.col_offset),
        ))

    # 5. Would it compile under the restricted policy? One finding per issue.
    from pipewarden.sandbox.compile import check_compile, check_compile_tree
    from pipewarden.sandbox.scan import decode_source

    # The sandbox also byte-compiles the restricted tree; errors only the compiler finds (``return``
    # outside a function, bad ``nonlocal``, ...) are parse errors here too, reported when the
    # restricted check finds nothing. The plain tree is compiled now, before the check transforms
    # it in place; what compile() raised is used only where it would have been reached.
    compile_error: Exception | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(tree, path, "exec", dont_inherit=True)
    except Exception as exc:
        compile_error = exc
    issues: tuple[Any, ...] = ()
    try:
        try:
            decode_source(text, filename=path)  # the sandbox's own text checks (size limit, ...)
            issues = check_compile_tree(tree, filename=path, policy=policy)  # the audit's last use of tree
        except RecursionError:
            # Too deep for the check: the sandbox's own parse of the text has the first word, as it
            # has when the sandbox loads the file (it may refuse the file before the check runs).
            issues = check_compile(text, filename=path, policy=policy)
    except (RecursionError, MemoryError) as exc:
        what = "memory" if isinstance(exc, MemoryError) else "recursion depth"
        findings.append(_file_finding("PW004", f"the restricted compile check ran out of {what}"))
        return _file_report(path, pipeline_class, candidates, findings, digest)
    except ScanError as exc:  # the sandbox refuses text the audit's own parse accepted
        rule_id = "PW002" if exc.rule == "scan.source-size" else "PW001"
        findings.append(_file_finding(rule_id, _one_line(exc.what).removeprefix(f"{path} ")))
        return _file_report(path, pipeline_class, candidates, findings, digest)
    if not issues and compile_error is not None:
        if not isinstance(compile_error, SyntaxError):
            raise compile_error
        findings.append(_syntax_finding(compile_error, text))
    for issue in issues:
        findings.append(_file_finding(
            "PW050", f"{_one_line(issue.message)} [{issue.rule}]",
            issue.lineno or 1, columns.column(issue.lineno or 1, issue.col_offset or 0), sandbox_rule=issue.rule,
        ))
    return _file_report(path, pipeline_class, candidates, findings, digest)


def _file_report(path: str, pipeline_class: str | None, candidates: tuple[str, ...], findings: list[Finding],
                 digest: str) -> FileReport:
    findings.sort(key=lambda f: (f.line, f.column, f.rule, f.message))
    return FileReport(path, pipeline_class, tuple(findings), digest, candidates)


def _decode(raw: bytes) -> str | Finding:
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        col = nul - (raw.rfind(b"\n", 0, nul) + 1)
        return _file_finding("PW001", "file contains NUL bytes (binary data, not Python source)", line,
                             len(raw[nul - col : nul].decode("utf-8", "replace")) + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1)
        return _file_finding("PW001", f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                             line, len(raw[exc.start - col : exc.start].decode("utf-8", "replace")) + 1)
    text = text[1:] if text.startswith("\ufeff") else text
    from pipewarden.sandbox.scan import coding_declaration, is_utf8_name

    declared = coding_declaration(text)
    if declared is not None and not is_utf8_name(declared[0]):
        return _file_finding(
            "PW006",
            f"the file declares the source encoding {declared[0]!r}: Python would decode it differently from "
            "what the audit reads as UTF-8, so the audit cannot vouch for it",
            declared[1],
        )
    return text


def _syntax_finding(exc: SyntaxError, text: str) -> Finding:
    line = exc.lineno or 1
    column = exc.offset or 1
    message = exc.msg or "invalid syntax"
    if isinstance(exc, IndentationError) and "too many levels" in message:
        return _file_finding("PW004", f"{message} (line {line})", line, column)
    if "too many nested" in message:
        return _file_finding("PW004", message, line, column)
    return _file_finding("PW001", f"syntax error: {message}", line, column)


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 300 else text[:297] + "..."


class _Columns:
    """Converts ast's 0-based UTF-8 byte offsets to 1-based code point columns."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._ascii = text.isascii()
        self._lines: list[str] | None = None

    def column(self, lineno: int, col_offset: int) -> int:
        if self._ascii or col_offset <= 0:
            return max(0, col_offset) + 1
        if self._lines is None:
            # Lines as Python numbers them (\r\n, \r, \n); the same as re.split(r"\r\n|\r|\n").
            self._lines = self._text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if not 1 <= lineno <= len(self._lines):
            return col_offset + 1
        encoded = self._lines[lineno - 1].encode("utf-8", "surrogatepass")
        return len(encoded[:col_offset].decode("utf-8", "replace")) + 1


def _convert(raw: RawFinding, columns: _Columns) -> Finding:
    return _file_finding(raw.rule, raw.message, raw.lineno, columns.column(raw.lineno, raw.col_offset))


# --- many files ------------------------------------------------------------------------------------


def _audit_item(item: tuple[str, str, AuditOptions]) -> FileReport:
    path, shown, options = item
    return audit_file(path, options, shown_as=shown)


def audit_paths(
    paths: Sequence[str | os.PathLike[str]],
    options: AuditOptions | None = None,
    *,
    jobs: int = 1,
    progress: Callable[[FileReport], None] | None = None,
    cache: Any = None,
) -> AuditReport:
    """Audit files and directories; ``jobs`` > 1 uses a process pool. The order of files is
    that of :func:`collect_files` whatever ``jobs`` is, so sharded CI runs are comparable.
    ``cache`` (an ``audit.cache.AuditCache``) reuses the results of files whose bytes and
    audit fingerprint are unchanged, and records the new ones."""
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 0:
        raise ValueError(f"jobs must be an int >= 0, got {jobs!r}")
    options = options or AuditOptions()
    policy = options.policy()  # load (and validate) once, before any fork
    files = collect_files(paths)
    cwd = os.getcwd()
    items = [(os.fspath(p), display_path(p, cwd), options) for p in files]
    jobs = jobs or os.cpu_count() or 1
    if cache is not None:
        reports = _audit_cached(items, cache, jobs)
    elif jobs == 1 or len(items) <= 1:
        reports = [_audit_item(item) for item in items]
    else:
        reports = _audit_parallel(items, min(jobs, len(items)))
    if progress is not None:
        for report in reports:
            progress(report)
    return AuditReport(tuple(reports), str(getattr(policy, "version", "")) or None)


def _audit_cached(items: list[tuple[str, str, AuditOptions]], cache: Any, jobs: int) -> list[FileReport]:
    """Hits come from the cache (same bytes, same fingerprint); misses are audited from the
    bytes read here (serially) or re-read by the pool's workers, and stored under the digest of
    the bytes each report was made from."""
    results: list[FileReport | None] = [None] * len(items)
    misses: list[int] = []
    held: dict[int, bytes] = {}
    for index, (path, shown, options) in enumerate(items):
        data = _read_bounded(path, options.max_file_size)
        if isinstance(data, Finding):
            results[index] = FileReport(shown, None, (data,))
            continue
        hit = cache.get(shown, hashlib.sha256(data).hexdigest())
        if hit is not None:
            results[index] = hit
            continue
        misses.append(index)
        held[index] = data
    if jobs == 1 or len(misses) <= 1:
        for index in misses:
            results[index] = audit_source(held.pop(index), path=items[index][1], options=items[index][2])
    else:
        held.clear()
        done = _audit_parallel([items[i] for i in misses], min(jobs, len(misses)))
        for index, fresh in zip(misses, done, strict=True):
            results[index] = fresh
    for index in misses:
        made = results[index]
        if made is not None:
            cache.put(made)
    cache.flush()
    return [r for r in results if r is not None]


def _pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    # fork: workers inherit the loaded policy and modules (no re-import per worker). The CLI is
    # single-threaded when it forks; elsewhere fall back to the platform default.
    ctx = multiprocessing.get_context("fork") if "fork" in methods else multiprocessing.get_context()
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def _audit_parallel(items: list[tuple[str, str, AuditOptions]], workers: int) -> list[FileReport]:
    from concurrent.futures.process import BrokenProcessPool

    results: list[FileReport | None] = [None] * len(items)
    try:
        with _pool(workers) as pool:
            futures = [pool.submit(_audit_item, item) for item in items]
            for index, future in enumerate(futures):
                try:
                    results[index] = future.result()
                except BrokenProcessPool:
                    break
    except BrokenProcessPool:
        pass
    # A worker died (e.g. the interpreter crashed on a hostile file): audit each remaining file
    # alone in a fresh worker, so the crash is pinned on the file that caused it.
    for index, result in enumerate(results):
        if result is None:
            results[index] = _audit_isolated(items[index])
    return [r for r in results if r is not None]


def _audit_isolated(item: tuple[str, str, AuditOptions]) -> FileReport:
    from concurrent.futures.process import BrokenProcessPool

    try:
        with _pool(1) as pool:
            return pool.submit(_audit_item, item).result()
    except BrokenProcessPool:
        return FileReport(item[1], None, (_file_finding("PW005", "the audit worker crashed on this file"),))
