"""Renders an :class:`~pipewarden.audit.static.AuditReport` as text, JSON or SARIF 2.1.0.

Decides the wire shape of the audit's output; the JSON keys ``tool``, ``files`` and ``summary``
and the SARIF fields GitHub code scanning reads are a public interface (extra keys may be added,
none removed). Output is deterministic: same input files, same bytes out.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pipewarden.audit import rules as _rules
from pipewarden.audit.static import AuditReport, FileReport

if TYPE_CHECKING:
    from pipewarden.audit.dynamic import DynamicRun

FORMATS = ("text", "json", "sarif")
SARIF_SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/pipewarden/pipewarden"
# GitHub code scanning ranks security alerts by this property (0.0-10.0).
_SECURITY_SEVERITY = {"error": "8.0", "warning": "5.0", "note": "2.0"}


def _version() -> str:
    from pipewarden import __version__

    return __version__


def render(report: AuditReport, fmt: str) -> str:
    if fmt == "text":
        return render_text(report)
    if fmt == "json":
        return render_json(report)
    if fmt == "sarif":
        return render_sarif(report)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def summary_line(report: AuditReport) -> str:
    n = len(report.files)
    return (
        f"Audited {n} file{'s' if n != 1 else ''}: {report.count('error')} errors, "
        f"{report.count('warning')} warnings, {report.count('note')} notes."
    )


def text_safe(text: str) -> str:
    """``text`` (a file name, a message: untrusted) as one inert line: control characters (C0, DEL,
    C1), line and paragraph separators and format characters (bidi overrides) become ``\\xNN`` /
    ``\\uNNNN`` escapes, and the backslash itself is escaped so an escape cannot be forged."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif code > 0x7F and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _text_path(path: str) -> str:
    """A display path for a line start: escaped, and never beginning with ``::`` (a CI log would
    read ``::notice::...`` at the start of a line as a workflow command)."""
    safe = text_safe(path)
    return "./" + safe if safe.startswith(":") or safe[:1].isspace() else safe


def render_text(report: AuditReport) -> str:
    """``path:line:column: RULE severity: message`` per finding, then one summary line. Paths and
    messages are escaped (:func:`text_safe`): a file name cannot add or rewrite lines."""
    lines = []
    for file in report.files:
        path = _text_path(file.path)
        for f in file.findings:
            lines.append(f"{path}:{f.line}:{f.column}: {f.rule} {f.severity}: {text_safe(f.message)}")
        if file.dynamic is not None:
            lines.append(f"{path}: run: {text_safe(_run_text(file.dynamic))}")
    lines.append(summary_line(report))
    return "\n".join(lines) + "\n"


def line_ranges(lines: Sequence[int]) -> str:
    """``1, 2, 3, 7, 9, 10`` -> ``1-3, 7, 9-10``."""
    parts: list[str] = []
    start = prev = None
    for line in lines:
        if prev is not None and line == prev + 1:
            prev = line
            continue
        if start is not None:
            parts.append(f"{start}-{prev}" if start != prev else f"{start}")
        start = prev = line
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ", ".join(parts)


#: How many ranges of not-run lines the text format shows per file (JSON and SARIF list them all).
_TEXT_RANGES = 40


def _range_len(text: str) -> int:
    first, _, last = text.partition("-")
    return int(last) - int(first) + 1 if last else 1


def _run_text(run: DynamicRun) -> str:
    text = run.status
    if run.reason and run.status in ("not-run", "stopped", "no-components"):
        text += f" ({run.reason})" if not run.reason.startswith("not run: ") else f" ({run.reason[9:]})"
    if run.coverage is not None:
        cov = run.coverage
        text += f"; coverage {len(cov.run)}/{len(cov.executable)} lines ({cov.percent:g} %)"
        if cov.not_run:
            ranges = line_ranges(cov.not_run).split(", ")
            shown = ", ".join(ranges[:_TEXT_RANGES])
            if len(ranges) > _TEXT_RANGES:
                rest = len(cov.not_run) - sum(_range_len(r) for r in ranges[:_TEXT_RANGES])
                shown += f", ... ({rest} more lines; --format json lists them all)"
            text += f"; not run: {shown}"
    if run.inactive_layers:
        text += f"; isolation layers not active: {', '.join(run.inactive_layers)}"
    return text


def _dynamic_dict(run: DynamicRun) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": run.status,
        "completed": run.completed,
        "reason": run.reason,
        "stage": run.stage,
        "method": run.method,
        "components": dict(run.components),
        "seconds": run.seconds,
        "inactive_layers": list(run.inactive_layers),
        "coverage": None,
    }
    if run.coverage is not None:
        cov = run.coverage
        out["coverage"] = {
            "lines_run": len(cov.run),
            "executable_lines": len(cov.executable),
            "percent": cov.percent,
            "not_run": list(cov.not_run),
        }
    return out


def report_dict(report: AuditReport) -> dict[str, Any]:
    return {
        "tool": {"name": "pipewarden", "version": _version(), "policy_version": report.policy_version},
        "files": [_file_dict(f) for f in report.files],
        "summary": {
            "files": len(report.files),
            "errors": report.count("error"),
            "warnings": report.count("warning"),
            "notes": report.count("note"),
        },
    }


def _file_dict(file: FileReport) -> dict[str, Any]:
    findings = []
    for f in file.findings:
        entry: dict[str, Any] = {
            "rule": f.rule,
            "severity": f.severity,
            "line": f.line,
            "column": f.column,
            "message": f.message,
            "kind": f.kind,
        }
        if f.sandbox_rule is not None:
            entry["sandbox_rule"] = f.sandbox_rule
        findings.append(entry)
    out: dict[str, Any] = {
        "path": file.path,
        "pipeline_class": file.pipeline_class,
        "findings": findings,
        "sha256": file.sha256,
        "candidates": list(file.candidates),
    }
    if file.dynamic is not None:
        out["dynamic"] = _dynamic_dict(file.dynamic)
    return out


def render_json(report: AuditReport) -> str:
    return json.dumps(report_dict(report), indent=2, ensure_ascii=False) + "\n"


def _artifact_location(path: str) -> dict[str, str]:
    if os.path.isabs(path):
        return {"uri": Path(path).as_uri()}
    return {"uri": quote(Path(path).as_posix(), safe="/"), "uriBaseId": "%SRCROOT%"}


def sarif_dict(report: AuditReport, cwd: str | None = None) -> dict[str, Any]:
    rules = [
        {
            "id": r.id,
            "name": r.name,
            "shortDescription": {"text": r.message},
            "fullDescription": {"text": r.help},
            "help": {"text": r.help, "markdown": f"**{r.id} {r.name}** ({r.severity})\n\n{r.help}"},
            "defaultConfiguration": {"level": r.severity},
            "properties": {"tags": ["security"], "precision": "high",
                           "security-severity": _SECURITY_SEVERITY[r.severity]},
        }
        for r in _rules.RULES
    ]
    index = {r.id: i for i, r in enumerate(_rules.RULES)}
    results = []
    for file in report.files:
        for f in file.findings:
            result: dict[str, Any] = {
                "ruleId": f.rule,
                "ruleIndex": index[f.rule],
                "level": f.severity,
                "message": {"text": f.message},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": _artifact_location(file.path),
                        "region": {"startLine": max(1, f.line), "startColumn": max(1, f.column)},
                    }
                }],
            }
            props: dict[str, Any] = {}
            if file.pipeline_class is not None:
                props["pipeline_class"] = file.pipeline_class
            if f.sandbox_rule is not None:
                props["sandbox_rule"] = f.sandbox_rule
            if f.kind != "static":
                props["kind"] = f.kind
            if props:
                result["properties"] = props
            results.append(result)
    base = Path(os.path.abspath(cwd or os.getcwd())).as_uri().rstrip("/") + "/"
    version = _version()
    # `audit --run`: each run file is an artifact whose properties hold the run and its coverage.
    artifacts = [
        {"location": _artifact_location(file.path), "properties": {"dynamic": _dynamic_dict(file.dynamic)}}
        for file in report.files
        if file.dynamic is not None
    ]
    sarif_run: dict[str, Any] = {
        "tool": {"driver": {
            "name": "pipewarden",
            "version": version,
            "semanticVersion": version,
            "informationUri": INFORMATION_URI,
            "rules": rules,
        }},
        "originalUriBaseIds": {"%SRCROOT%": {"uri": base}},
        "columnKind": "unicodeCodePoints",
        "invocations": [{"executionSuccessful": True}],
        "results": results,
        "properties": {"policy_version": report.policy_version},
    }
    if artifacts:
        sarif_run["artifacts"] = artifacts
    return {
        "$schema": SARIF_SCHEMA_URI,
        "version": "2.1.0",
        "runs": [sarif_run],
    }


def render_sarif(report: AuditReport) -> str:
    return json.dumps(sarif_dict(report), indent=2, ensure_ascii=False) + "\n"
