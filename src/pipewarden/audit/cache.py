"""Reuse audit results for unchanged files: keyed by the file's sha256 and the audit's version.

A result is reused only when the bytes read now have the sha256 of the bytes audited then, the
path is displayed the same, and the *fingerprint* is the same: pipewarden's version, the bytes of
every audit and sandbox source and policy file (rules, scanner, restricted compiler, policy
data), the Python and RestrictedPython versions, and the audit options (size limit, import
aliases, extra modules). Any change to any of these is a cold audit.

The cache is a per-user file with the same safety rules as the verified-digest store
(``loader.records``): 0600 in a private directory, replaced atomically, bounded in entries and
bytes; a cache that is not owned by the user, is readable or writable by others, oversized or
malformed is ignored (every file audited afresh) and replaced by the next write. Location:
``PIPEWARDEN_AUDIT_CACHE`` (a file path; ``off`` disables it), else ``audit-results.json`` beside
the verified-digest store. Reports with resource or internal-failure findings (PW004, PW005)
are never stored.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from pipewarden.audit.static import AuditOptions, FileReport, Finding
from pipewarden.loader.digests import is_sha256_hex

CACHE_ENV = "PIPEWARDEN_AUDIT_CACHE"
CACHE_FORMAT = "pipewarden-audit-results/1"
MAX_ENTRIES = 8192
MAX_CACHE_BYTES = 16 * 1024 * 1024
_NOT_CACHED_RULES = frozenset({"PW004", "PW005"})
_SEVERITIES = frozenset({"error", "warning", "note"})


def default_cache_path() -> Path | None:
    env = os.environ.get(CACHE_ENV, "").strip()
    if env.lower() in ("off", "0", "no", "false"):
        return None
    if env:
        return Path(env).expanduser()
    from pipewarden.loader.records import default_store_path

    return default_store_path().parent / "audit-results.json"


def fingerprint(options: AuditOptions) -> str:
    """What an audit result depends on besides the file's bytes (see the module docstring)."""
    from importlib.util import find_spec

    import pipewarden.audit
    import pipewarden.sandbox

    h = hashlib.sha256(CACHE_FORMAT.encode())
    h.update(sys.version.encode())
    roots = [Path(next(iter(pkg.__path__))) for pkg in (pipewarden.audit, pipewarden.sandbox)]
    spec = find_spec("RestrictedPython")  # its sources, without importing it
    if spec is not None and spec.origin:
        roots.append(Path(spec.origin).parent)
    for root in roots:
        h.update(str(root.name).encode() + b"\0")
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".toml") and "__pycache__" not in p.parts):
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(path.read_bytes())
    h.update(repr((options.max_file_size, options.import_aliases, options.extra_modules)).encode())
    return h.hexdigest()


def _entry_key(fp: str, shown: str, sha256: str) -> str:
    return hashlib.sha256(f"{fp}\0{shown}\0{sha256}".encode("utf-8", "surrogatepass")).hexdigest()


def _to_json(key: str, report: FileReport) -> list[Any]:
    findings = [[f.rule, f.severity, f.line, f.column, f.message, f.sandbox_rule] for f in report.findings]
    return [key, report.pipeline_class, list(report.candidates), findings]


def _from_json(raw: object, shown: str, sha256: str) -> FileReport | None:
    """Strict parse of one stored entry (already matched by key); None when malformed."""
    if not isinstance(raw, list) or len(raw) != 4:
        return None
    _, cls, candidates, findings = raw
    if not (cls is None or isinstance(cls, str)) or not isinstance(candidates, list) or not isinstance(findings, list):
        return None
    if not all(isinstance(c, str) for c in candidates):
        return None
    out: list[Finding] = []
    for f in findings:
        if not isinstance(f, list) or len(f) != 6:
            return None
        rule, severity, line, column, message, sandbox_rule = f
        if not (isinstance(rule, str) and severity in _SEVERITIES and type(line) is int and type(column) is int
                and isinstance(message, str) and (sandbox_rule is None or isinstance(sandbox_rule, str))):
            return None
        out.append(Finding(rule, severity, line, column, message, sandbox_rule))
    return FileReport(shown, cls, tuple(out), sha256, tuple(candidates))


class AuditCache:
    """Loaded once per audit; ``flush`` writes new results back (atomic, bounded)."""

    def __init__(self, options: AuditOptions, path: Path | None = None) -> None:
        self.path = path if path is not None else default_cache_path()
        self.fingerprint = fingerprint(options)
        self.problem: str | None = None
        self._entries: dict[str, list[Any]] | None = None
        self._new: dict[str, list[Any]] = {}
        self.hits = 0

    def _load(self) -> dict[str, list[Any]]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None:
                from pipewarden.loader.records import read_private_json

                doc, self.problem = read_private_json(self.path, CACHE_FORMAT, MAX_CACHE_BYTES)
                for raw in (doc or {}).get("records", [])[:MAX_ENTRIES]:
                    if isinstance(raw, list) and raw and isinstance(raw[0], str) and is_sha256_hex(raw[0]):
                        self._entries[raw[0]] = raw
        return self._entries

    def get(self, shown: str, sha256: str) -> FileReport | None:
        raw = self._load().get(_entry_key(self.fingerprint, shown, sha256))
        report = _from_json(raw, shown, sha256) if raw is not None else None
        if report is not None:
            self.hits += 1
        return report

    def put(self, report: FileReport) -> None:
        if report.sha256 is None or any(f.rule in _NOT_CACHED_RULES for f in report.findings):
            return
        key = _entry_key(self.fingerprint, report.path, report.sha256)
        self._new[key] = _to_json(key, report)

    def flush(self) -> bool:
        if self.path is None or not self._new:
            return True
        from pipewarden.loader.records import read_private_json, write_private_json

        doc, _ = read_private_json(self.path, CACHE_FORMAT, MAX_CACHE_BYTES)  # keep others' results
        merged: dict[str, Any] = {}
        for raw in (doc or {}).get("records", [])[:MAX_ENTRIES]:
            if isinstance(raw, list) and raw and isinstance(raw[0], str):
                merged[raw[0]] = raw
        for key in self._new:
            merged.pop(key, None)
        merged.update(self._new)  # newest last: the oldest are dropped first
        ok = write_private_json(self.path, CACHE_FORMAT, list(merged.values())[-MAX_ENTRIES:], MAX_CACHE_BYTES)
        if ok:
            self._new.clear()
        return ok
