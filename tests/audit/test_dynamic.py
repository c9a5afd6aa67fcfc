"""The dynamic audit's pieces without a worker: the recorder (line coverage and refusals with
their lines, restricted to the vetted module), the worker answer's parse, and how outcomes become
findings. The end-to-end runs in a real confined worker are in tests/cli/test_audit_run.py."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from pipewarden.audit.dynamic import outcome_findings
from pipewarden.errors import WorkerError
from pipewarden.isolation.wire.framing import Frame
from pipewarden.isolation.wire.messages import AuditOutcome, AuditRequest, parse

PIPELINES = Path(__file__).resolve().parents[1] / "fixtures" / "pipelines"


def marked_line(name: str, marker: str) -> int:
    lines = (PIPELINES / name).read_text().splitlines()
    hits = [i for i, text in enumerate(lines, 1) if marker in text]
    assert len(hits) == 1, (name, marker)
    return hits[0]


def run_here(name: str) -> dict:
    """``isolation._audit.run_audit`` in this process (the sandbox still vets the file)."""
    from pipewarden.isolation._audit import run_audit

    data = (PIPELINES / name).read_bytes()
    return run_audit(data, source_sha256=hashlib.sha256(data).hexdigest(), filename=name)


@pytest.fixture(scope="module")
def computed() -> dict:
    before = sys.gettrace()
    answer = run_here("computed_name_load.py")
    assert sys.gettrace() is before  # the tracer is removed whatever the run did
    return answer


def test_computed_name_refusal_is_reported_at_its_line(computed):
    line = marked_line("computed_name_load.py", "REFUSED-HERE")
    assert computed["completed"] is False and computed["stage"] == "call"
    assert [(r["rule"], r["line"]) for r in computed["refusals"]] == [("facade.not-allowlisted", line)]
    assert "torch.load" in computed["refusals"][0]["what"]
    # the chain of calls that led there, outermost first: __call__, then _weights_loader
    assert computed["refusals"][0]["via"] == [
        marked_line("computed_name_load.py", "extra = self._weights_loader()"),
        marked_line("computed_name_load.py", "return _lookup(torch, _PARTS)"),
    ]
    assert computed["failure"]["rule"] == "facade.not-allowlisted" and computed["failure"]["line"] == line
    assert computed["plan"] == {"unet": "UNet2DModel", "scheduler": "scheduler:DDPMScheduler"}


def test_coverage_is_of_the_vetted_module_only(computed):
    text = (PIPELINES / "computed_name_load.py").read_text().splitlines()
    cov = computed["coverage"]
    executable, ran = cov["executable"], cov["run"]
    assert ran and set(ran) <= set(executable) and max(executable) <= len(text)
    # the loop ran, the line after the refusal did not
    assert marked_line("computed_name_load.py", "image = self.scheduler.step") in ran
    assert marked_line("computed_name_load.py", "return image + extra") in set(executable) - set(ran)
    # comments and blank lines are never executable
    assert all(text[n - 1].strip() and not text[n - 1].lstrip().startswith("#") for n in executable)


def test_a_swallowed_refusal_is_still_reported_and_the_call_completes():
    answer = run_here("swallowed_refusal.py")
    line = marked_line("swallowed_refusal.py", "REFUSED-HERE")
    assert answer["completed"] is True and answer["failure"] is None
    assert [(r["rule"], r["line"]) for r in answer["refusals"]] == [("facade.not-allowlisted", line)]
    never = marked_line("swallowed_refusal.py", "NEVER-RUN")
    assert never in answer["coverage"]["executable"] and never not in answer["coverage"]["run"]


def test_no_components_says_which_parameter():
    answer = run_here("no_components.py")
    assert answer["completed"] is False and answer["stage"] == "synthesise"
    assert "depth_estimator" in answer["no_components"] and answer["failure"] is None


def test_a_load_refusal_is_reported_at_the_import_line(tmp_path):
    from pipewarden.isolation._audit import run_audit

    source = b"import torch\nimport socket\nfrom diffusers import DiffusionPipeline\n\n\nclass P(DiffusionPipeline):\n    pass\n"
    answer = run_audit(source, source_sha256=hashlib.sha256(source).hexdigest(), filename="bad_import.py")
    assert answer["stage"] == "load" and not answer["completed"]
    assert answer["failure"]["line"] == 2
    assert answer["coverage"]["run"] == [1, 2]  # the refused import is the last line that ran


def test_the_source_digest_is_checked():
    from pipewarden.errors import IntegrityError
    from pipewarden.isolation._audit import run_audit

    with pytest.raises(IntegrityError):
        run_audit(b"x = 1\n", source_sha256="0" * 64, filename="x.py")


# --- the worker's answer, parsed at the boundary -----------------------------------------------


def answer(**overrides) -> dict:
    base = {
        "kind": "audit", "class_name": "P", "stage": "call", "completed": False, "no_components": None,
        "failure": {"error": "PolicyViolation", "rule": "facade.not-allowlisted", "what": "torch.load", "line": 9},
        "refusals": [{"rule": "facade.not-allowlisted", "what": "torch.load", "error": "PolicyViolation", "line": 9,
                      "via": [20, 14]}],
        "coverage": {"executable": [1, 2, 9, 10], "run": [1, 2, 9]},
        "plan": {"unet": "UNet2DModel"}, "method": "__call__", "seconds": 1.5,
    }
    base.update(overrides)
    return base


def test_answer_parses_into_frozen_types():
    msg = parse(Frame(answer(), b""))
    assert isinstance(msg, AuditOutcome)
    assert msg.executable_lines == (1, 2, 9, 10) and msg.lines_run == (1, 2, 9)
    assert msg.refusals[0].line == 9 and msg.failure is not None and msg.failure.rule == "facade.not-allowlisted"
    with pytest.raises(TypeError):
        msg.plan["unet"] = "x"  # type: ignore[index]


@pytest.mark.parametrize("bad", [
    {"refusals": [{"rule": "made.up", "what": "x", "error": "E", "line": 1}]},
    {"failure": {"error": "E", "rule": "not-a-rule", "what": "x", "line": 1}},
    {"coverage": {"executable": [2, 1], "run": []}},
    {"coverage": {"executable": [1, 2], "run": [3]}},
    {"coverage": {"executable": [1, True], "run": []}},
    {"refusals": [{"rule": "facade.not-allowlisted", "what": "x", "error": "E", "line": -1}]},
    {"stage": "done"},  # done but not completed
    {"completed": True},  # completed but not done
    {"seconds": float("nan")},
    {"plan": {"not a name": "x"}},
    {"refusals": "many"},
    {"refusals": [{"rule": "facade.not-allowlisted", "what": "x", "error": "E", "line": 1, "via": [1] * 17}]},
    {"refusals": [{"rule": "facade.not-allowlisted", "what": "x", "error": "E", "line": 1, "via": ["1"]}]},
])
def test_malformed_answers_are_refused(bad):
    with pytest.raises(WorkerError) as info:
        parse(Frame(answer(**bad), b""))
    assert info.value.rule == "wire.malformed-message"


def test_audit_request_round_trip_and_refusals():
    req = AuditRequest(source_sha256="a" * 64, filename="p.py", import_aliases={"X": "diffusers"})
    assert AuditRequest.parse(req.header()) == req
    from pipewarden.errors import PolicyViolation

    for bad in ({"filename": ""}, {"source_sha256": "A" * 64}, {"op": "load"}, {"policy_extras": {"m": "x"}}):
        with pytest.raises(PolicyViolation):
            AuditRequest.parse({**req.header(), **bad})


# --- outcome -> findings ------------------------------------------------------------------------


def test_findings_for_a_refusal_that_ended_the_run():
    found = outcome_findings(parse(Frame(answer(), b"")))
    assert [(f.rule, f.severity, f.line, f.sandbox_rule, f.kind) for f in found] == [
        ("PW060", "error", 9, "facade.not-allowlisted", "dynamic")
    ]
    assert "ended the run" in found[0].message and "torch.load" in found[0].message
    assert "(reached from lines 20, 14)" in found[0].message


def test_findings_for_a_swallowed_refusal_a_limit_and_a_pipeline_error():
    swallowed = parse(Frame(answer(stage="done", completed=True, failure=None), b""))
    rules = [(f.rule, f.line) for f in outcome_findings(swallowed)]
    assert rules == [("PW060", 9), ("PW064", 1)]
    assert "caught the refusal" in outcome_findings(swallowed)[0].message

    limit = parse(Frame(answer(refusals=[], failure={"error": "ResourceLimitError", "rule": "limits.memory",
                                                      "what": "MemoryError: x", "line": 10}), b""))
    assert [(f.rule, f.severity, f.line, f.sandbox_rule) for f in outcome_findings(limit)] == [
        ("PW061", "error", 10, "limits.memory")
    ]
    error = parse(Frame(answer(refusals=[], failure={"error": "ValueError", "rule": "worker.pipeline-error",
                                                      "what": "ValueError: shapes", "line": 0}), b""))
    [f] = outcome_findings(error)
    assert (f.rule, f.severity, f.line) == ("PW062", "warning", 1) and "outside the file's own code" in f.message


def test_no_components_is_a_warning():
    msg = parse(Frame(answer(stage="synthesise", failure=None, refusals=[], coverage={"executable": [1], "run": [1]},
                             no_components="P.__init__ parameter 'x' (Foo) has no tiny recipe", plan=None), b""))
    [f] = outcome_findings(msg)
    assert (f.rule, f.severity) == ("PW063", "warning") and "'x'" in f.message


def test_a_module_body_that_raises_is_not_a_refusal_and_keeps_its_line():
    from pipewarden.isolation._audit import run_audit

    source = (b"import torch\nfrom diffusers import DiffusionPipeline\n\nVALUE = 1 // 0\n\n\n"
              b"class P(DiffusionPipeline):\n    pass\n")
    answer = run_audit(source, source_sha256=hashlib.sha256(source).hexdigest(), filename="body_fails.py")
    assert answer["refusals"] == [] and answer["stage"] == "load"
    assert answer["failure"]["rule"] == "exec.module-body" and answer["failure"]["line"] == 4
    [f] = outcome_findings(parse(Frame(answer, b"")))
    assert (f.rule, f.severity, f.line) == ("PW062", "warning", 4) and "ZeroDivisionError" in f.message


def test_text_lists_not_run_lines_as_ranges_and_caps_long_lists():
    from pipewarden.audit.dynamic import Coverage, DynamicRun
    from pipewarden.audit.format import _run_text, line_ranges

    assert line_ranges([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10" and line_ranges([]) == ""
    short = DynamicRun("completed", coverage=Coverage((1, 2, 3, 5, 6), (1, 5)))
    assert _run_text(short) == "completed; coverage 2/5 lines (40 %); not run: 2-3, 6"
    executable = tuple(range(1, 201))
    ran = tuple(range(1, 201, 2))  # every other line: 100 single-line gaps
    text = _run_text(DynamicRun("not-completed", coverage=Coverage(executable, ran)))
    assert text.endswith(", 80, ... (60 more lines; --format json lists them all)")


def test_a_scheduler_the_file_defines_is_built_for_the_vetted_class():
    # The vetted class's sys.modules entry is an empty placeholder: the synthesiser must find the
    # file's own scheduler through the sandbox's companion classes.
    answer = run_here("own_scheduler.py")
    assert answer["plan"] == {"unet": "UNet2DModel", "scheduler": "own-scheduler:TinyOwnScheduler"}
    assert answer["completed"] is True and answer["no_components"] is None
