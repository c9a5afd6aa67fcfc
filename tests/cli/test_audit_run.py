"""``pipewarden audit --run``: each file runs once in a real confined worker (fork server, layers,
default limits) on tiny random components; refusals come back with their lines, plus limits,
completion and line coverage, in the static audit's three formats and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipewarden.audit import rules as audit_rules
from pipewarden.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PIPELINES = FIXTURES / "pipelines"
SARIF_SCHEMA = FIXTURES / "schemas" / "sarif-schema-2.1.0.json"
RUN_SET = ("computed_name_load.py", "swallowed_refusal.py", "no_components.py", "one_step_unet.py")

pytestmark = pytest.mark.slow


def marked_line(name: str, marker: str) -> int:
    hits = [i for i, text in enumerate((PIPELINES / name).read_text().splitlines(), 1) if marker in text]
    assert len(hits) == 1
    return hits[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit-run")
    for name in RUN_SET:
        shutil.copy(PIPELINES / name, root / name)
    return root


@pytest.fixture(scope="module")
def report(run_dir):
    """One --run over the fixture set with two jobs (rendered below in every format)."""
    from pipewarden.audit.dynamic import run_paths
    from pipewarden.audit.static import AuditOptions

    return run_paths([run_dir], AuditOptions(), jobs=2)


def by_name(report, name: str):
    [file] = [f for f in report.files if f.path.endswith("/" + name)]
    return file


def test_the_static_audit_of_the_computed_name_pipeline_sees_only_the_module_passed_on(run_dir, capsys):
    # Statically, only that the module is handed to a helper (PW032, red team 9H): which name the
    # helper builds from it is for --run to find.
    assert main(["audit", str(run_dir / "computed_name_load.py")]) == 1
    out = capsys.readouterr().out
    line = marked_line("computed_name_load.py", "return _lookup(torch, _PARTS)")
    assert f"computed_name_load.py:{line}:" in out and "PW032 error" in out
    assert "1 errors, 0 warnings, 0 notes" in out and "torch.load" not in out


def test_run_reports_the_computed_name_load_at_its_line(report):
    file = by_name(report, "computed_name_load.py")
    # statically only the module passed on (PW032); the name built at run time is the dynamic refusal
    assert [(f.kind, f.rule) for f in file.findings if f.kind == "static"] == [("static", "PW032")]
    [f] = [f for f in file.findings if f.kind == "dynamic"]
    assert (f.rule, f.severity, f.sandbox_rule) == ("PW060", "error", "facade.not-allowlisted")
    assert f.line == marked_line("computed_name_load.py", "REFUSED-HERE")
    assert "torch.load" in f.message and "ended the run" in f.message
    assert file.dynamic.status == "not-completed" and file.dynamic.stage == "call"
    assert dict(file.dynamic.components) == {"unet": "UNet2DModel", "scheduler": "scheduler:DDPMScheduler"}
    assert marked_line("computed_name_load.py", "return image + extra") in file.dynamic.coverage.not_run


def test_run_reports_a_swallowed_refusal_and_the_uncovered_branch(report):
    file = by_name(report, "swallowed_refusal.py")
    rules = sorted((f.rule, f.line) for f in file.findings if f.kind == "dynamic")
    assert rules == [("PW060", marked_line("swallowed_refusal.py", "REFUSED-HERE")), ("PW064", 1)]
    assert file.dynamic.completed
    assert file.dynamic.coverage.not_run == (marked_line("swallowed_refusal.py", "NEVER-RUN"),)


def test_no_components_is_a_warning_not_a_crash(report):
    file = by_name(report, "no_components.py")
    [f] = file.findings
    assert (f.rule, f.severity, f.kind) == ("PW063", "warning", "dynamic")
    assert "depth_estimator" in f.message
    assert file.dynamic.status == "no-components"


def test_a_clean_pipeline_completes_with_full_coverage(report):
    file = by_name(report, "one_step_unet.py")
    assert [(f.rule, f.severity) for f in file.findings] == [("PW064", "note")]
    assert file.dynamic.completed and file.dynamic.coverage.percent == 100.0
    assert not file.dynamic.inactive_layers or all(isinstance(n, str) for n in file.dynamic.inactive_layers)


def test_files_keep_the_static_order_and_the_exit_code_counts_dynamic_errors(report, run_dir):
    from pipewarden.audit.static import audit_paths

    static = audit_paths([run_dir])
    assert [f.path for f in report.files] == [f.path for f in static.files]
    assert report.exit_code == 1 and report.count("error") == static.count("error") + 2  # + the 2 dynamic ones
    static_errors = {(f.rule, f.line) for file in static.files for f in file.findings if f.severity == "error"}
    assert {rule for rule, _ in static_errors} == {"PW032"}  # the two modules passed to helpers (red team 9H)


def test_json_shape(report):
    from pipewarden.audit.format import render_json

    data = json.loads(render_json(report))
    files = {Path(f["path"]).name: f for f in data["files"]}
    refusal = files["computed_name_load.py"]["findings"][0]
    assert refusal["kind"] == "dynamic" and refusal["rule"] == "PW060"
    assert refusal["sandbox_rule"] == "facade.not-allowlisted"
    swallowed = files["swallowed_refusal.py"]["dynamic"]
    assert swallowed["completed"] is True and swallowed["status"] == "completed"
    cov = swallowed["coverage"]
    assert cov["not_run"] == [marked_line("swallowed_refusal.py", "NEVER-RUN")]
    assert cov["lines_run"] == cov["executable_lines"] - 1
    assert files["no_components.py"]["dynamic"]["coverage"] is not None  # the module body ran
    assert data["summary"]["errors"] == 4 and data["summary"]["warnings"] == 1  # 2 dynamic, 2 static PW032


def test_text_shape(report):
    from pipewarden.audit.format import render_text

    lines = render_text(report).splitlines()
    line = marked_line("computed_name_load.py", "REFUSED-HERE")
    via = (marked_line("computed_name_load.py", "extra = self._weights_loader()"),
           marked_line("computed_name_load.py", "return _lookup(torch, _PARTS)"))
    assert any(x.endswith(f"computed_name_load.py:{line}:1: PW060 error: refused at run time: torch.load is not "
                          "available in the sandbox [facade.not-allowlisted] (reached from lines "
                          f"{via[0]}, {via[1]}); this ended the run") for x in lines)
    never = marked_line("swallowed_refusal.py", "NEVER-RUN")
    assert any("swallowed_refusal.py: run: completed; coverage " in x and x.endswith(f"; not run: {never}") for x in lines)
    assert lines[-1] == "Audited 4 files: 4 errors, 1 warnings, 2 notes."  # 2 dynamic, 2 static PW032


def test_sarif_validates_and_carries_kind_and_coverage(report, run_dir):
    jsonschema = pytest.importorskip("jsonschema")
    from pipewarden.audit.format import sarif_dict

    sarif = sarif_dict(report, cwd=str(run_dir))
    jsonschema.validate(sarif, json.loads(SARIF_SCHEMA.read_text()))
    run = sarif["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert {"PW060", "PW061", "PW062", "PW063", "PW064"} <= set(rule_ids)
    dynamic = [r for r in run["results"] if r["properties"].get("kind") == "dynamic"]
    assert {r["ruleId"] for r in dynamic} == {"PW060", "PW063", "PW064"}
    assert all(rule_ids[r["ruleIndex"]] == r["ruleId"] for r in run["results"])
    covered = {Path(a["location"]["uri"]).name: a["properties"]["dynamic"] for a in run["artifacts"]}
    assert covered["swallowed_refusal.py"]["coverage"]["not_run"] == [marked_line("swallowed_refusal.py", "NEVER-RUN")]


def test_cli_run_exit_codes_and_output_file(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(run_dir)
    out = tmp_path / "run.sarif"
    assert main(["audit", "--run", "--format", "sarif", "--output", str(out), "one_step_unet.py"]) == 0
    sarif = json.loads(out.read_text())
    assert [r["ruleId"] for r in sarif["runs"][0]["results"]] == ["PW064"]
    assert "Audited 1 file: 0 errors, 0 warnings, 1 notes." in capsys.readouterr().err
    assert main(["audit", "--run", "--jobs", "2", "computed_name_load.py"]) == 1


def test_a_run_that_never_ends_is_stopped_by_the_wall_clock_limit(tmp_path):
    from pipewarden.audit.dynamic import run_paths
    from pipewarden.limits import Limits

    shutil.copy(PIPELINES / "spins.py", tmp_path / "spins.py")
    report = run_paths([tmp_path / "spins.py"], limits=Limits(wall_s=60))
    [file] = report.files
    [f] = file.findings
    assert (f.rule, f.severity, f.sandbox_rule) == ("PW061", "error", "limits.wall-clock")
    assert file.dynamic.status == "stopped"
    assert report.exit_code == 1


def test_the_dynamic_rules_are_registered():
    ids = {r.id for r in audit_rules.RULES}
    assert {"PW060", "PW061", "PW062", "PW063", "PW064"} <= ids
    assert audit_rules.rule("PW063").severity == "warning" and audit_rules.rule("PW060").severity == "error"


def test_run_timeout_without_run_is_a_usage_error(run_dir, capsys):
    assert main(["audit", "--run-timeout", "5", str(run_dir / "one_step_unet.py")]) == 2
    assert "--run-timeout applies to --run only" in capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["1e308", "1e12", "3000000"])
def test_a_huge_run_timeout_is_waited_for_not_overflowed(run_dir, tmp_path, capsys, monkeypatch, seconds):
    """Red team 9H F12: poll() takes a C int of milliseconds; ``--run-timeout 1e308`` was an
    OverflowError traceback (exit 1). A far deadline now runs the file like any other."""
    monkeypatch.chdir(run_dir)
    out = tmp_path / "run.json"
    assert main(["audit", "--run", "--run-timeout", seconds, "--format", "json", "--output", str(out),
                 "one_step_unet.py"]) == 0
    assert [f["rule"] for f in json.loads(out.read_text())["files"][0]["findings"]] == ["PW064"]
    assert "Traceback" not in capsys.readouterr().err
