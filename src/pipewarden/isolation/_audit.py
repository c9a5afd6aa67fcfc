"""The worker side of the dynamic audit (``pipewarden audit --run``): run one vetted pipeline
once on tiny random components and say what it tried.

Runs only inside a confined worker (``_worker``), in the worker's trusted request context. Steps:
load the class through the sandbox (``sandbox.load_class``, as a process-mode load does), plan
and build tiny components from its ``__init__`` signature (``audit.synth``, the corpus runner's
synthesiser), instantiate it, make the minimal call (short prompt, 2 steps, smallest size,
seeded). Nothing is relaxed for the audit: the policy, the tripwire and the worker's layers and
limits are those of an ordinary load, so what is refused here is refused in production.

What the run records, with a ``sys.settrace`` hook restricted to code objects whose filename is
the vetted module (every other frame gets no local tracer):

* each line of the vetted module that ran (line coverage);
* each refusal (``PipewardenError``) the first time it reaches a frame of the vetted module,
  with that frame's line: the innermost line of the pipeline that asked for the capability. A
  refusal the pipeline catches and swallows is recorded too (the policy still raised it), so a
  run reports every refusal it passed through, not only the one that ended it.

The tracer is a closure of this module, installed by the worker's trusted code before the
sandboxed module body runs and removed before the answer is encoded; sandboxed code has no
``sys``, no frames and no way to reach ``sys.gettrace()`` or a frame's ``f_trace``, and the
tracer hands nothing back to it (it only adds ints to sets and keeps exception references).
Setting it is a trusted step (``sys.settrace`` is refused by the tripwire while sandboxed code
runs). Exceptions never cross as objects: the answer is JSON text.
"""

from __future__ import annotations

import errno
import hashlib
import time
import types
from collections.abc import Mapping
from typing import Any

from pipewarden.errors import IntegrityError, PipewardenError

_MAX_REFUSALS = 64
_MAX_VIA = 16
_MAX_TEXT = 600
_ALLOC_MARKERS = ("can't allocate memory", "not enough memory", "out of memory", "cannot allocate memory")


class Recorder:
    """Line coverage and refusals of one vetted module, fed by ``sys.settrace``."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lines: set[int] = set()
        # (exception, line) in the order first seen; the reference keeps ids unique.
        self.refusals: list[tuple[PipewardenError, int]] = []
        # For each refusal, the lines of the vetted module's outer frames that led to it
        # (outermost first): the chain of calls from ``__call__`` down to the refused line.
        self.via: dict[int, tuple[int, ...]] = {}
        self._seen: set[int] = set()
        # The latest other exception and the line where it first reached the vetted module (for a
        # module body that failed: the sandbox reports that as a fresh ScanError without frames).
        self.last_error: tuple[BaseException, int] | None = None

    def global_trace(self, frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != self.filename:
            return None  # not the vetted module: no local tracing in this frame
        return self.local_trace

    def local_trace(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            self.lines.add(frame.f_lineno)
        elif event == "exception":
            exc = arg[1] if isinstance(arg, tuple) and len(arg) > 1 else None
            if isinstance(exc, PipewardenError):
                if id(exc) not in self._seen and len(self.refusals) < _MAX_REFUSALS:
                    self._seen.add(id(exc))
                    self.refusals.append((exc, int(frame.f_lineno or 0)))
                    self.via[id(exc)] = self._callers(frame)
            elif exc is not None and (self.last_error is None or self.last_error[0] is not exc):
                self.last_error = (exc, int(frame.f_lineno or 0))
        return self.local_trace

    def _callers(self, frame: Any) -> tuple[int, ...]:
        lines: list[int] = []
        outer = frame.f_back
        while outer is not None and len(lines) < _MAX_VIA:
            if outer.f_code.co_filename == self.filename:
                lines.append(int(outer.f_lineno or 0))
            outer = outer.f_back
        return tuple(reversed(lines))

    def line_of(self, exc: BaseException) -> int:
        """The line where ``exc`` first reached the vetted module (0: it never did)."""
        for seen, line in self.refusals:
            if seen is exc:
                return line
        tb = exc.__traceback__
        line = 0
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self.filename:
                line = tb.tb_lineno
            tb = tb.tb_next
        return line


def executable_lines(code: types.CodeType) -> list[int]:
    """Every line of ``code`` and the code objects nested in it that has bytecode."""
    lines: set[int] = set()
    todo = [code]
    seen: set[int] = set()
    while todo:
        c = todo.pop()
        if id(c) in seen:
            continue
        seen.add(id(c))
        for _start, _end, line in c.co_lines():
            if line is not None and line > 0:
                lines.add(line)
        todo.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return sorted(lines)


def _short(value: object, limit: int = _MAX_TEXT) -> str:
    try:
        text = " ".join(str(value).split())
    except Exception:  # noqa: BLE001 - an object whose str() fails is reported by type
        text = "<unprintable>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _limit_rule(exc: BaseException) -> str | None:
    """The resource-limit rule an exception means (as the worker reports it for a call), else None."""
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "limits.file-size"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "limits.scratch"
    if isinstance(exc, MemoryError):
        return "limits.memory"
    if isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _ALLOC_MARKERS):
        return "limits.memory"
    return None


def run_audit(
    source_bytes: bytes,
    *,
    source_sha256: str,
    filename: str,
    policy_extras: Mapping[str, Any] | None = None,
    import_aliases: Mapping[str, str] | None = None,
    send_progress: Any = None,
) -> dict[str, Any]:
    """Load, synthesise, instantiate, call; the answer header (``kind: "audit"``)."""
    import sys

    if hashlib.sha256(source_bytes).hexdigest() != source_sha256:
        raise IntegrityError(
            f"{filename}: the source received by the worker does not match its sha256",
            rule="worker.source-mismatch",
            fix="run the audit again",
        )
    started = time.monotonic()
    recorder = Recorder(filename)
    answer: dict[str, Any] = {
        "kind": "audit",
        "class_name": None,
        "stage": "load",
        "completed": False,
        "no_components": None,
        "failure": None,
        "plan": None,
        "method": None,
    }
    policy = None
    if policy_extras or import_aliases:
        from pipewarden.sandbox.policy import default_policy

        policy = default_policy().with_extras(
            extra_modules={k: list(v) for k, v in (policy_extras or {}).items()} or None,
            import_aliases=dict(import_aliases or {}) or None,
        )
    previous = sys.gettrace()
    sys.settrace(recorder.global_trace)
    try:
        _run(source_bytes, filename, policy, import_aliases, recorder, answer)
    finally:
        sys.settrace(previous)
    answer["refusals"] = [
        {
            "rule": exc.rule,
            "what": _short(exc.what),
            "error": type(exc).__name__,
            "line": line,
            "via": list(recorder.via.get(id(exc), ())),
        }
        for exc, line in recorder.refusals
    ]
    answer["coverage"] = _coverage(source_bytes, filename, policy, recorder)
    answer["seconds"] = round(time.monotonic() - started, 3)
    return answer


def _coverage(source_bytes: bytes, filename: str, policy: Any, recorder: Recorder) -> dict[str, Any] | None:
    """Executable lines from the same restricted compile the sandbox ran, and the lines that ran."""
    from pipewarden.sandbox.compile import compile_restricted_module
    from pipewarden.sandbox.policy import default_policy
    from pipewarden.sandbox.scan import decode_source

    try:
        text = decode_source(source_bytes, filename=filename)
        code = compile_restricted_module(text, filename=filename, policy=policy or default_policy())
        # The restricted transformer adds a prologue of its own (at line 1): only lines that hold
        # code in the file as written count, so a comment line is never "executable" or "run".
        plain = compile(text, filename, "exec", dont_inherit=True)
    except (PipewardenError, SyntaxError, ValueError):
        return None  # the file never compiled: nothing ran, and there is no line table to report
    executable = sorted(set(executable_lines(code)) & set(executable_lines(plain)))
    ran = sorted(recorder.lines & set(executable))
    return {"executable": executable, "run": ran}


def _run(source_bytes: bytes, filename: str, policy: Any, aliases: Mapping[str, str] | None,
         recorder: Recorder, answer: dict[str, Any]) -> None:
    from pipewarden.sandbox import load_class
    from pipewarden.sandbox.runtime import LoadBuilt

    load_built = LoadBuilt()
    try:
        cls = load_class(source_bytes, filename=filename, policy=policy, import_aliases=aliases or None,
                         load_built=load_built)
    except BaseException as exc:  # noqa: BLE001 - every outcome is reported, never raised
        _ended(exc, recorder, answer)
        return
    answer["class_name"] = _short(getattr(cls, "__name__", "?"), 128)

    answer["stage"] = "synthesise"
    from pipewarden.audit import synth

    try:
        plan = synth.plan_components(cls)
        call = synth.minimal_call(cls)
        components = synth.build_components(cls, plan=plan)
    except (KeyboardInterrupt, SystemExit):  # pragma: no cover - the worker's own shutdown
        raise
    except BaseException as exc:  # noqa: BLE001 - SynthesisError, or a recipe that failed to build
        reason = str(exc) if isinstance(exc, synth.SynthesisError) else f"{type(exc).__name__}: {exc}"
        answer["no_components"] = _short(reason)
        return
    answer["plan"] = {str(k): (None if v is None else str(v)) for k, v in plan.recipes.items()}
    answer["method"] = str(call["method"])
    load_built.adopt(components.values())  # built here by trusted code: the worker's own
    # As a load does for the processors it builds (transformers' first call imports lazily, which
    # the tripwire would refuse from a pipeline frame): the run must see what a load would.
    from pipewarden.loader.components import _warm_processors

    _warm_processors(components.values())

    answer["stage"] = "init"
    try:
        pipe = cls(**components)
        answer["stage"] = "call"
        _call(pipe, call, synth)
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):  # pragma: no cover
            raise
        _ended(exc, recorder, answer)
        return
    answer["stage"] = "done"
    answer["completed"] = True


def _call(pipe: Any, call: Mapping[str, Any], synth: Any) -> None:
    import torch

    from pipewarden.isolation._worker import _bars_to_host

    kwargs = synth.materialise_call(call)
    synth.seed_everything()
    method = call["method"]
    fn = pipe if method == "__call__" else getattr(pipe, method)
    with torch.no_grad(), _bars_to_host(None, enabled=False):
        result = fn(**kwargs)
    if isinstance(result, types.GeneratorType):
        result.close()  # its finally blocks run here, sandboxed; a refusal there is the outcome


def _ended(exc: BaseException, recorder: Recorder, answer: dict[str, Any]) -> None:
    """Record what ended the run: a refusal (already recorded by the tracer, or recorded now),
    a resource limit, or an ordinary exception of the pipeline."""
    line = recorder.line_of(exc)
    if isinstance(exc, PipewardenError) and exc.rule == "exec.module-body":
        # Not a refusal: the module body raised (a library missing here, a NameError, ...); the
        # sandbox re-raises it as a fresh ScanError, so its line is where the original was seen.
        line = recorder.last_error[1] if recorder.last_error is not None else 0
        answer["failure"] = {"error": type(exc).__name__, "rule": exc.rule, "what": _short(exc.what), "line": line}
        return
    if isinstance(exc, PipewardenError):
        if not any(seen is exc for seen, _ in recorder.refusals):
            recorder.refusals.append((exc, line))
        answer["failure"] = {"error": type(exc).__name__, "rule": exc.rule, "what": _short(exc.what), "line": line}
        return
    rule = _limit_rule(exc)
    answer["failure"] = {
        "error": "ResourceLimitError" if rule else _short(type(exc).__name__, 64),
        "rule": rule or "worker.pipeline-error",
        "what": _short(f"{type(exc).__name__}: {exc}"),
        "line": line,
    }
