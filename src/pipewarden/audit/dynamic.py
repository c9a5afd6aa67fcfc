"""The dynamic audit (``pipewarden audit --run``): run each file once, confined, and report what it tried.

Decides which files are run and how a run's outcome becomes findings (``kind: "dynamic"``,
rules PW060-PW064) and per-file line coverage. The run itself happens in a fresh locked-down
worker per file with the default limits (``isolation.audit_in_worker``; worker side in
``isolation._audit``): the class is loaded through the sandbox, tiny random components are built
from its ``__init__`` signature by the corpus runner's synthesiser (``audit.synth``) and the
minimal call is made (short prompt, 2 steps, smallest size). Nothing runs in this process: the
host only reads the file (bounded, as the static audit does), sends its bytes and parses the
worker's typed answer.

Every file is audited statically first (same report, same cache); a file the static audit
already shows cannot load (unparseable, no single pipeline class, refused by the restricted
compile) is not run, since the sandbox would refuse it for the reason already reported.

Trusts: the worker's answer only as parsed by ``isolation.wire.messages`` (registered rule ids,
bounded text, sorted line numbers).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from pipewarden.audit import rules as _rules
from pipewarden.audit.static import AuditOptions, AuditReport, FileReport, Finding, _read_bounded, audit_paths
from pipewarden.errors import InputError, PipewardenError

__all__ = ["Coverage", "DynamicRun", "require_run_extra", "run_paths", "run_report", "NOT_RUN_RULES"]

#: Static findings that mean the sandbox cannot load the file at all: such a file is not run.
NOT_RUN_RULES = frozenset({"PW001", "PW002", "PW003", "PW004", "PW005", "PW006", "PW010", "PW050"})
#: Modules a run needs in this installation (the worker is forked from this interpreter).
_RUN_MODULES = ("torch", "diffusers", "safetensors", "numpy", "PIL")


@dataclass(frozen=True)
class Coverage:
    """Line coverage of the vetted module: its executable lines and those the run executed."""

    executable: tuple[int, ...]
    run: tuple[int, ...]

    @property
    def not_run(self) -> tuple[int, ...]:
        ran = set(self.run)
        return tuple(line for line in self.executable if line not in ran)

    @property
    def percent(self) -> float:
        return round(100.0 * len(self.run) / len(self.executable), 1) if self.executable else 0.0


@dataclass(frozen=True)
class DynamicRun:
    """How the run of one file went (the findings say what it tried)."""

    #: completed | not-completed | no-components | stopped (limit or crash) | not-run
    status: str
    reason: str | None = None  # for not-run / no-components / stopped: why
    stage: str | None = None  # where the run ended: load, synthesise, init, call, done
    method: str | None = None  # the method called (``__call__``, or e.g. ``text2img``)
    components: Mapping[str, str | None] = field(default_factory=lambda: MappingProxyType({}))
    coverage: Coverage | None = None
    seconds: float = 0.0  # wall-clock time of the run, worker start included
    inactive_layers: tuple[str, ...] = ()

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def require_run_extra() -> None:
    """``--run`` forks workers that import torch and diffusers: refuse cleanly without them."""
    import importlib.util

    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):  # a broken or blocked install counts as missing
            return True

    missing = [m for m in _RUN_MODULES if absent(m)]
    if missing:
        raise InputError(
            f"`pipewarden audit --run` runs the pipelines and needs {', '.join(missing)}, which this "
            "installation does not have",
            rule="load.run-extra-missing",
            fix="pip install 'pipewarden[run]' (and 'pipewarden[transformers]' for pipelines with text encoders), "
                "or drop --run for the static audit",
        )


def _finding(rule_id: str, message: str, line: int, sandbox_rule: str | None = None) -> Finding:
    return Finding(rule_id, _rules.rule(rule_id).severity, max(1, line), 1, message, sandbox_rule, kind="dynamic")


def _where(line: int, stage: str) -> str:
    return "" if line else f" (raised outside the file's own code, while {_STAGE_WORDS.get(stage, stage)})"


_STAGE_WORDS = {
    "load": "loading the module",
    "synthesise": "building components",
    "init": "running __init__",
    "call": "running the call",
    "done": "finishing",
}


def outcome_findings(outcome: Any) -> list[Finding]:
    """Findings for a parsed ``AuditOutcome``: every refusal, the limit or error that ended the
    run, missing components, and (a note) a completed call."""
    findings: list[Finding] = []
    end = outcome.failure
    ended_by_refusal = False
    for refusal in outcome.refusals:
        ended = end is not None and (end.rule, end.what, end.line) == (refusal.rule, refusal.what, refusal.line)
        ended_by_refusal = ended_by_refusal or ended
        tail = "; this ended the run" if ended else "; the pipeline caught the refusal and went on"
        via = f" (reached from line{'s' if len(refusal.via) > 1 else ''} {', '.join(map(str, refusal.via))})" \
            if refusal.via else ""
        findings.append(_finding(
            "PW060",
            f"refused at run time: {refusal.what} [{refusal.rule}]{via}{_where(refusal.line, outcome.stage)}{tail}",
            refusal.line, refusal.rule,
        ))
    if end is not None and not ended_by_refusal:
        if end.rule.startswith("limits."):
            findings.append(_finding("PW061", f"the run hit a resource limit: {end.what} [{end.rule}]", end.line, end.rule))
        elif outcome.stage == "load":
            findings.append(_finding(
                "PW062", f"not run: the module did not load in the sandbox: {end.what}{_where(end.line, outcome.stage)}",
                end.line, end.rule,
            ))
        else:
            findings.append(_finding(
                "PW062",
                f"the minimal {outcome.method or 'call'} did not complete: {end.what}"
                f"{_where(end.line, outcome.stage)}"
                + (" (in __init__)" if outcome.stage == "init" and end.line else ""),
                end.line, end.rule,
            ))
    if outcome.no_components is not None:
        findings.append(_finding("PW063", f"not run: no tiny components: {outcome.no_components}", 1))
    if outcome.completed:
        cov = ""
        if outcome.executable_lines is not None:
            cov = f" ({len(outcome.lines_run)} of {len(outcome.executable_lines)} executable lines ran)"
        findings.append(_finding("PW064", f"the minimal {outcome.method or 'call'} completed in the confined worker{cov}", 1))
    return findings


def _status(outcome: Any) -> str:
    if outcome.completed:
        return "completed"
    if outcome.no_components is not None:
        return "no-components"
    return "not-completed"


def run_one(data: bytes, filename: str, *, options: AuditOptions, limits: Any = None) -> tuple[list[Finding], DynamicRun]:
    """Run one file's bytes in a fresh worker; (findings, run). Never raises for what the file does."""
    from pipewarden.errors import ResourceLimitError
    from pipewarden.isolation import audit_in_worker

    started = time.monotonic()
    extras = {name: tuple(attrs) for name, attrs in options.extra_modules} or None
    aliases = dict(options.import_aliases) or None
    try:
        outcome, inactive = audit_in_worker(data, filename, limits=limits, policy_extras=extras, import_aliases=aliases)
    except ResourceLimitError as exc:
        run = DynamicRun("stopped", reason=exc.what, seconds=round(time.monotonic() - started, 3))
        return [_finding("PW061", f"the run hit a resource limit: {exc.what} [{exc.rule}]", 1, exc.rule)], run
    except PipewardenError as exc:  # the worker crashed, or could not start
        run = DynamicRun("stopped", reason=exc.what, seconds=round(time.monotonic() - started, 3))
        return [_finding("PW062", f"the run did not complete: {exc.what} [{exc.rule}]", 1, exc.rule)], run
    except (OSError, ValueError) as exc:  # e.g. no scratch directory for the worker: a finding, not a crash
        what = f"the worker could not run the file: {type(exc).__name__}: {exc}"
        run = DynamicRun("stopped", reason=what, seconds=round(time.monotonic() - started, 3))
        return [_finding("PW062", what, 1, "worker.start")], run
    coverage = None
    if outcome.executable_lines is not None:
        coverage = Coverage(tuple(outcome.executable_lines), tuple(outcome.lines_run))
    run = DynamicRun(
        _status(outcome),
        reason=outcome.no_components,
        stage=outcome.stage,
        method=outcome.method,
        components=outcome.plan,
        coverage=coverage,
        seconds=round(time.monotonic() - started, 3),
        inactive_layers=tuple(s.name for s in inactive),
    )
    return outcome_findings(outcome), run


def _runnable(report: FileReport) -> str | None:
    """Why this file is not run (None: run it)."""
    blocking = sorted({f.rule for f in report.findings if f.rule in NOT_RUN_RULES})
    if blocking:
        return f"not run: the static audit shows the sandbox cannot load it ({', '.join(blocking)})"
    if report.pipeline_class is None:
        return "not run: no pipeline class"
    return None


def run_report(
    report: AuditReport,
    paths: Sequence[str],
    *,
    options: AuditOptions,
    jobs: int = 1,
    limits: Any = None,
    progress: Callable[[FileReport], None] | None = None,
) -> AuditReport:
    """Add the dynamic audit to a static ``report`` whose files are ``paths`` (same order)."""
    from concurrent.futures import ThreadPoolExecutor

    if len(paths) != len(report.files):
        raise ValueError("one path per file report")

    def one(index: int) -> FileReport:
        file = report.files[index]
        why = _runnable(file)
        if why is None:
            data = _read_bounded(paths[index], options.max_file_size)
            if isinstance(data, Finding):
                why = f"not run: {data.message}"
            else:
                import hashlib

                if hashlib.sha256(data).hexdigest() != file.sha256:
                    why = "not run: the file changed between the static audit and the run"
        if why is not None:
            done = replace(file, dynamic=DynamicRun("not-run", reason=why))
        else:
            filename = os.path.basename(paths[index]) or "pipeline.py"
            found, run = run_one(data, filename, options=options, limits=limits)  # type: ignore[arg-type]
            merged = sorted((*file.findings, *found), key=lambda f: (f.line, f.column, f.kind != "static", f.rule, f.message))
            done = replace(file, findings=tuple(merged), dynamic=run)
        if progress is not None:
            progress(done)
        return done

    workers = max(1, min(jobs or os.cpu_count() or 1, len(report.files) or 1))
    if workers == 1:
        files = [one(i) for i in range(len(report.files))]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # each run is its own worker process
            files = list(pool.map(one, range(len(report.files))))
    return replace(report, files=tuple(files))


def run_paths(
    paths: Sequence[str | os.PathLike[str]],
    options: AuditOptions | None = None,
    *,
    jobs: int = 1,
    cache: Any = None,
    limits: Any = None,
    progress: Callable[[FileReport], None] | None = None,
) -> AuditReport:
    """The static audit of ``paths``, then one confined run per file (``audit --run``)."""
    from pipewarden.audit.static import collect_files

    require_run_extra()
    options = options or AuditOptions()
    files = [os.fspath(p) for p in collect_files(paths)]
    static = audit_paths(files, options, jobs=jobs, cache=cache)
    return run_report(static, files, options=options, jobs=jobs, limits=limits, progress=progress)
