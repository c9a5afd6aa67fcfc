"""Renders an :class:`~pipewarden.audit.static.AuditReport` as text, JSON or SARIF 2.1.0.

Decides the wire shape of the audit's output; the JSON keys ``tool``, ``files`` and ``summary``
and the SARIF fields GitHub code scanning reads are a public interface (extra keys may be added,
none removed). Output is deterministic: same input files, same bytes out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipewarden.audit import rules as _rules
from pipewarden.audit.static import AuditReport, FileReport

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


def render_text(report: AuditReport) -> str:
    """``path:line:column: RULE severity: message`` per finding, then one summary line."""
    lines = []
    for file in report.files:
        for f in file.findings:
            lines.append(f"{file.path}:{f.line}:{f.column}: {f.rule} {f.severity}: {f.message}")
    lines.append(summary_line(report))
    return "\n".join(lines) + "\n"


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
        }
        if f.sandbox_rule is not None:
            entry["sandbox_rule"] = f.sandbox_rule
        findings.append(entry)
    return {
        "path": file.path,
        "pipeline_class": file.pipeline_class,
        "findings": findings,
        "sha256": file.sha256,
        "candidates": list(file.candidates),
    }


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
            if props:
                result["properties"] = props
            results.append(result)
    base = Path(os.path.abspath(cwd or os.getcwd())).as_uri().rstrip("/") + "/"
    version = _version()
    return {
        "$schema": SARIF_SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
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
        }],
    }


def render_sarif(report: AuditReport) -> str:
    return json.dumps(sarif_dict(report), indent=2, ensure_ascii=False) + "\n"
