"""``pipewarden audit``: the three output formats, exit codes, bad input, ``--jobs`` determinism,
and the promise that the command never imports torch or runs the audited code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE
from pipewarden.audit import rules as audit_rules
from pipewarden.cli import main

SARIF_SCHEMA = Path(__file__).resolve().parents[1] / "fixtures" / "schemas" / "sarif-schema-2.1.0.json"  # vendored
REPO = Path(__file__).resolve().parents[2]

CLEAN = EXAMPLE_PIPELINE_SOURCE
WARNING_ONLY = CLEAN + '\n\ndef helper(obj):\n    return DiffusionPipeline.from_pretrained("a/b")\n'
ERRORS = "import socket\n" + CLEAN + "\n\ndef helper(obj):\n    return eval(obj)\n"


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["audit", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A working directory with a small tree of pipeline files; CWD is set to it."""
    write(tmp_path, "pipes/clean.py", CLEAN)
    write(tmp_path, "pipes/warn.py", WARNING_ONLY)
    write(tmp_path, "pipes/sub/bad.py", ERRORS)
    write(tmp_path, "pipes/sub/broken.py", "def f(:\n")
    write(tmp_path, "pipes/notes.txt", "not python")
    write(tmp_path, "pipes/.hidden/skip.py", "import socket\n")
    write(tmp_path, "pipes/__pycache__/skip.py", "import socket\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- formats -----------------------------------------------------------------------------------


def test_text_format_lists_findings_then_summary(project, capsys):
    rc, out, err = run_cli(capsys, "pipes")
    lines = out.splitlines()
    assert rc == 1
    errors = sum(1 for line in lines if " error: " in line)
    warnings = sum(1 for line in lines if " warning: " in line)
    assert lines[-1] == f"Audited 4 files: {errors} errors, {warnings} warnings, 0 notes."
    assert errors >= 3 and warnings >= 1
    assert any(line.startswith("pipes/sub/bad.py:1:1: PW020 error: ") for line in lines)
    assert any(line.startswith("pipes/sub/broken.py:1:") and " PW001 error: " in line for line in lines)
    assert any(" PW041 warning: " in line and line.startswith("pipes/warn.py:") for line in lines)
    assert not any("clean.py" in line for line in lines)
    assert err == ""


def test_json_format_exact_shape(project, capsys):
    rc, out, _ = run_cli(capsys, "--format", "json", "pipes")
    data = json.loads(out)
    assert rc == 1
    assert set(data) >= {"tool", "files", "summary"}
    assert data["tool"]["name"] == "pipewarden" and isinstance(data["tool"]["version"], str)
    # directory walk: *.py only, hidden and __pycache__ skipped, sorted by relative path
    assert [f["path"] for f in data["files"]] == [
        "pipes/clean.py", "pipes/sub/bad.py", "pipes/sub/broken.py", "pipes/warn.py",
    ]
    by_path = {f["path"]: f for f in data["files"]}
    assert by_path["pipes/clean.py"]["pipeline_class"] == "OneStepExamplePipeline"
    assert by_path["pipes/clean.py"]["findings"] == []
    assert by_path["pipes/sub/broken.py"]["pipeline_class"] is None
    for file in data["files"]:
        assert isinstance(file["path"], str)
        assert file["pipeline_class"] is None or isinstance(file["pipeline_class"], str)
        for f in file["findings"]:
            assert set(f) >= {"rule", "severity", "line", "column", "message"}
            assert f["rule"] in audit_rules.RULES_BY_ID
            assert f["severity"] == audit_rules.RULES_BY_ID[f["rule"]].severity
            assert isinstance(f["line"], int) and f["line"] >= 1
            assert isinstance(f["column"], int) and f["column"] >= 1
            assert isinstance(f["message"], str) and "\n" not in f["message"]
    counts = {s: sum(1 for file in data["files"] for f in file["findings"] if f["severity"] == s)
              for s in ("error", "warning", "note")}
    assert data["summary"] == {"files": 4, "errors": counts["error"], "warnings": counts["warning"],
                               "notes": counts["note"]}
    assert counts["error"] >= 3 and counts["warning"] >= 1


def _check_sarif_structure(sarif: dict) -> None:
    """What GitHub code scanning needs, checked by hand (used in addition to the schema)."""
    assert sarif["version"] == "2.1.0" and sarif["$schema"].startswith("https://")
    (run,) = sarif["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "pipewarden"
    rule_ids = [r["id"] for r in driver["rules"]]
    for r in driver["rules"]:
        assert r["shortDescription"]["text"] and r["help"]["text"]
        assert r["defaultConfiguration"]["level"] in ("error", "warning", "note")
    for result in run["results"]:
        assert result["ruleId"] in rule_ids
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in ("error", "warning", "note")
        assert result["message"]["text"]
        (loc,) = result["locations"]
        phys = loc["physicalLocation"]
        uri = phys["artifactLocation"]["uri"]
        assert not uri.startswith("/") and "://" not in uri  # relative to the working directory
        assert phys["region"]["startLine"] >= 1 and phys["region"]["startColumn"] >= 1


def test_sarif_is_valid_sarif_2_1_0(project, capsys):
    rc, out, _ = run_cli(capsys, "--format", "sarif", "pipes")
    sarif = json.loads(out)
    assert rc == 1
    _check_sarif_structure(sarif)
    import jsonschema

    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)  # the draft the schema declares
    validator.validate(sarif)
    # the validator is not vacuous: a result without a message is rejected
    broken = json.loads(out)
    del broken["runs"][0]["results"][0]["message"]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in sarif["runs"][0]["results"]}
    assert uris == {"pipes/sub/bad.py", "pipes/sub/broken.py", "pipes/warn.py"}
    bad = [r for r in sarif["runs"][0]["results"]
           if r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "pipes/sub/bad.py"]
    assert any(r["ruleId"] == "PW020" and r["locations"][0]["physicalLocation"]["region"] ==
               {"startLine": 1, "startColumn": 1} for r in bad)


def test_sarif_for_clean_files_has_no_results_and_all_rules(project, capsys):
    rc, out, _ = run_cli(capsys, "--format", "sarif", "pipes/clean.py")
    sarif = json.loads(out)
    assert rc == 0
    assert sarif["runs"][0]["results"] == []
    assert [r["id"] for r in sarif["runs"][0]["tool"]["driver"]["rules"]] == [r.id for r in audit_rules.RULES]


def test_output_file_gets_report_and_stdout_stays_empty(project, capsys):
    rc, out, err = run_cli(capsys, "--format", "sarif", "--output", "report.sarif", "pipes/warn.py")
    assert rc == 0 and out == ""
    assert "Audited 1 file" in err
    assert json.loads((project / "report.sarif").read_text())["runs"][0]["results"]


# --- exit codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [(["pipes/clean.py"], 0), (["pipes/warn.py"], 0), (["pipes/sub/bad.py"], 1), (["pipes/sub/broken.py"], 1),
     (["pipes/clean.py", "pipes/sub/broken.py"], 1)],
)
def test_exit_code_follows_error_findings(project, capsys, files, expected):
    rc, _, _ = run_cli(capsys, *files)
    assert rc == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["does-not-exist.py"],
        ["pipes/clean.py", "missing-dir/"],
        ["--format", "xml", "pipes"],
        ["--jobs", "-1", "pipes"],
        ["--jobs", "many", "pipes"],
        ["--max-file-size", "big", "pipes"],
        ["--import-alias", "nonsense", "pipes"],
        ["--no-such-flag", "pipes"],
        ["--output", "no/such/dir/report.json", "pipes/clean.py"],
    ],
)
def test_usage_errors_exit_2(project, capsys, argv):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    assert out == ""
    assert "Traceback" not in err and err.strip()


def test_missing_path_writes_no_output_file(project, capsys):
    rc, _, _ = run_cli(capsys, "--output", "r.json", "--format", "json", "pipes/clean.py", "nope.py")
    assert rc == 2 and not (project / "r.json").exists()


# --- bad input through the real command (subprocess: no traceback, exit 1 or 2) --------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipewarden", "audit", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_hostile_inputs_become_findings_never_a_traceback(tmp_path):
    write(tmp_path, "binary.py", os.urandom(4096) + b"\x00\xff")
    write(tmp_path, "nul.py", b"x = 1\n\x00\nimport os\n")
    write(tmp_path, "latin1.py", "x = 'caf\u00e9'\n".encode("latin-1"))
    write(tmp_path, "deep.py", "x = " + "+".join(["a"] * 200_000) + "\n")
    write(tmp_path, "parens.py", "x = " + "(" * 50_000 + ")" * 50_000 + "\n")
    write(tmp_path, "moderate.py", "x = " + "+".join(["a"] * 1200) + "\n")
    with open(tmp_path / "huge.py", "wb") as fh:  # 10 MB
        fh.write(b"# padding\n" * 1_048_576)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.py")
    proc = _cli("--format", "json", *sorted(p.name for p in tmp_path.iterdir()), cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    rules = {f["path"]: [x["rule"] for x in f["findings"]] for f in json.loads(proc.stdout)["files"]}
    assert rules["binary.py"] == ["PW001"]
    assert rules["nul.py"] == ["PW001"]
    assert rules["latin1.py"] == ["PW001"]
    assert rules["deep.py"] == ["PW004"]
    assert rules["parens.py"] == ["PW004"]
    assert "PW004" in rules["moderate.py"] or "PW050" in rules["moderate.py"]
    assert rules["huge.py"] == ["PW002"]
    if hasattr(os, "mkfifo"):
        assert rules["fifo.py"] == ["PW003"]


def test_max_file_size_is_configurable(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "p.py", CLEAN)
    rc, out, _ = run_cli(capsys, "--max-file-size", "1k", "p.py")
    assert rc == 1 and "PW002" in out
    rc, out, _ = run_cli(capsys, "--max-file-size", "1M", "p.py")
    assert rc == 0 and "PW002" not in out


def test_audit_never_imports_torch_and_never_runs_the_file(tmp_path):
    canary = tmp_path / "canary.txt"
    write(tmp_path, "evil.py", f"open({str(canary)!r}, 'w').write('ran')\nimport torch\n" + CLEAN)
    wrapper = write(tmp_path, "wrapper.py", textwrap.dedent(f"""
        import json, sys
        from pipewarden.cli import main
        rc = main(["audit", "--format", "json", "--output", {str(tmp_path / 'out.json')!r}, {str(tmp_path / 'evil.py')!r}])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "numpy"))
        print(json.dumps({{"rc": rc, "heavy": heavy}}))
    """))
    proc = subprocess.run([sys.executable, str(wrapper)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    # open() is a warning (PW042); `.write` is a name the sandbox refuses on every object (PW023)
    assert result["rc"] == 1
    assert not canary.exists()
    findings = json.loads((tmp_path / "out.json").read_text())["files"][0]["findings"]
    assert {"PW042", "PW023"} <= {f["rule"] for f in findings}


def test_python_m_pipewarden_audit_importtime_has_no_torch(tmp_path):
    write(tmp_path, "p.py", CLEAN)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipewarden", "audit", "p.py"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "pipewarden.audit.static" in imported  # the probe sees the audit's own imports
    assert not {m for m in imported if m.split(".")[0] in ("torch", "diffusers")}


# --- --jobs: process pool, deterministic order -----------------------------------------------------


def test_jobs_output_is_identical_to_serial(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(12):
        body = [CLEAN, WARNING_ONLY, ERRORS, "def f(:\n"][i % 4]
        write(tmp_path, f"tree/d{i % 3}/f{i:02d}.py", body)
    outputs = {}
    for jobs in ("1", "2", "3"):
        rc, out, _ = run_cli(capsys, "--format", "json", "--jobs", jobs, "tree")
        assert rc == 1
        outputs[jobs] = out
    assert outputs["1"] == outputs["2"] == outputs["3"]
    paths = [f["path"] for f in json.loads(outputs["1"])["files"]]
    assert paths == sorted(paths) and len(paths) == 12
    rc, sarif_1, _ = run_cli(capsys, "--format", "sarif", "--jobs", "1", "tree")
    rc, sarif_2, _ = run_cli(capsys, "--format", "sarif", "--jobs", "2", "tree")
    assert sarif_1 == sarif_2


def test_explicit_paths_keep_command_line_order_and_dedupe(project, capsys):
    rc, out, _ = run_cli(capsys, "--format", "json", "pipes/warn.py", "pipes/clean.py", "pipes/warn.py",
                         "pipes/notes.txt")
    assert [f["path"] for f in json.loads(out)["files"]] == ["pipes/warn.py", "pipes/clean.py", "pipes/notes.txt"]


def test_path_outside_cwd_is_absolute_in_json_and_a_file_uri_in_sarif(tmp_path, capsys, monkeypatch):
    outside = write(tmp_path / "outside", "x.py", "import socket\n")
    inside = tmp_path / "work"
    inside.mkdir()
    monkeypatch.chdir(inside)
    _, out, _ = run_cli(capsys, "--format", "json", str(outside))
    assert json.loads(out)["files"][0]["path"] == outside.as_posix()
    _, out, _ = run_cli(capsys, "--format", "sarif", str(outside))
    result = json.loads(out)["runs"][0]["results"][0]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == outside.as_uri()


def test_pre_commit_hook_and_ci_example_are_present_and_consistent():
    hooks = (REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    assert "id: pipewarden-audit" in hooks and "entry: pipewarden audit" in hooks
    workflow = (REPO / "examples" / "ci" / "github-actions.yml").read_text(encoding="utf-8")
    assert "pipewarden audit" in workflow and "--format sarif" in workflow
    assert "github/codeql-action/upload-sarif" in workflow


def test_worker_crash_is_pinned_on_the_file_that_caused_it(tmp_path, monkeypatch):
    """A worker that dies (e.g. the interpreter crashing on a hostile file) must not take the
    whole audit down, nor be blamed on other files: each unfinished file is re-audited alone."""
    from pipewarden.audit import static as audit_mod
    for i in range(6):
        write(tmp_path, f"f{i}.py", CLEAN if i != 3 else "# poison\n" + CLEAN)
    real = audit_mod.audit_file

    def crashing(path, options=None, *, shown_as=None):
        if path.endswith("f3.py"):
            os._exit(70)  # simulates a hard crash of the worker process
        return real(path, options, shown_as=shown_as)

    monkeypatch.setattr(audit_mod, "audit_file", crashing)  # inherited by forked workers
    monkeypatch.chdir(tmp_path)
    report = audit_mod.audit_paths(["."], jobs=2)
    assert [f.path for f in report.files] == [f"f{i}.py" for i in range(6)]
    by_path = {f.path: [x.rule for x in f.findings] for f in report.files}
    assert by_path["f3.py"] == ["PW005"]
    assert all(by_path[f"f{i}.py"] == [] for i in range(6) if i != 3)
    assert report.exit_code == 1


def test_allowlist_extra_modules_widen_the_policy(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "p.py", "import einops\n" + CLEAN)
    write(tmp_path, "org.toml", 'version = 1\n[policy.extra_modules]\neinops = ["rearrange"]\n')
    rc, out, _ = run_cli(capsys, "p.py")
    assert rc == 1 and "PW020" in out and "einops" in out
    rc, out, _ = run_cli(capsys, "--allowlist", "org.toml", "p.py")
    assert rc == 0 and "PW020" not in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--allowlist", "missing.toml", "p.py"],
        ["--allowlist", "bad.toml", "p.py"],
        ["--import-alias", "Fork=socket", "p.py"],  # an alias may only point at an allowed module
    ],
)
def test_bad_policy_extras_are_usage_errors(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "p.py", CLEAN)
    write(tmp_path, "bad.toml", "version = \n[[[")
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == "" and "Traceback" not in err


def test_directory_without_python_files_is_not_an_error_but_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    rc, out, err = run_cli(capsys, "--format", "json", "empty")
    assert rc == 0 and json.loads(out)["summary"]["files"] == 0
    assert "no *.py files" in err
