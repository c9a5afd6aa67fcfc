"""Each audit rule with a minimal positive and negative example (table-driven).

The audit never executes the audited code; these tests call :func:`audit_source` on strings and
assert which rule ids are (and are not) reported.
"""

from __future__ import annotations

import textwrap

import pytest

from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE
from pipewarden.audit import rules as audit_rules
from pipewarden.audit.static import AuditOptions, audit_source

CLEAN = EXAMPLE_PIPELINE_SOURCE
PINNED = "0123456789abcdef0123456789abcdef01234567"


def with_helper(body: str, *, top: str = "") -> str:
    """CLEAN plus a module-level helper function whose body is ``body`` (never run)."""
    helper = "def helper(obj):\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"
    return (top + "\n" if top else "") + CLEAN + "\n\n" + helper


def rules_of(source: str | bytes, **options) -> list[str]:
    return [f.rule for f in audit_source(source, options=AuditOptions(**options)).findings]


def test_clean_example_pipeline_has_no_findings():
    report = audit_source(CLEAN, path="pipeline.py")
    assert report.findings == ()
    assert report.pipeline_class == "OneStepExamplePipeline"


def test_rule_table_is_complete_and_stable():
    ids = [r.id for r in audit_rules.RULES]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    for r in audit_rules.RULES:
        assert r.id.startswith("PW") and len(r.id) == 5
        assert r.severity in ("error", "warning", "note")
        assert r.message and "\n" not in r.message and r.help
    # every rule id a pattern can produce exists in the table
    for table in (audit_rules.EXACT_CALLS, audit_rules.LAST_NAME_CALLS, audit_rules.PREFIX_CALLS):
        for patterns in table.values():
            for p in patterns:
                assert p.rule is None or p.rule in audit_rules.RULES_BY_ID


# (rule, positive helper body, negative helper body, extra top-of-file imports)
CASES = [
    ("PW021", "return type('X', (obj,), {})", "return type(obj) is not type(1)", ""),
    ("PW021", "return dir(obj)", "dir = obj\nreturn dir", ""),
    ("PW021", "try:\n    return obj\nexcept IOError:\n    return None",
     "try:\n    return obj\nexcept OSError:\n    return None", ""),
    ("PW030", "return obj.__dict__", "return obj.config", ""),
    ("PW030", "return vars(obj)", "return dict(obj)", ""),
    ("PW031", "return obj.gi_frame.f_back.f_globals", "return obj.frame_count", ""),
    ("PW031", 'return getattr(obj, "__globals__")', 'return getattr(obj, "config")', ""),
    ("PW031", "return obj.__class__.__subclasses__()", "return obj.subclasses()", ""),
    ("PW031", "return globals()", "return len(obj)", ""),
    ("PW031", "import sys\nreturn sys._getframe(1)", "import sys\nreturn sys.getsizeof(obj)", ""),
    ("PW031", "import inspect\nreturn inspect.currentframe()", "import inspect\nreturn inspect.signature(obj)", ""),
    ("PW040", "return torch.load(obj)", "return torch.load(obj, weights_only=True)", ""),
    ("PW040", "return torch.load(obj, weights_only=False)", "return torch.load(obj, weights_only=True)", ""),
    ("PW040", "import numpy as np\nreturn np.load(obj, allow_pickle=True)", "import numpy as np\nreturn np.load(obj)", ""),
    ("PW040", "import pickle\nreturn pickle.loads(obj)", "import json\nreturn json.loads(obj)", ""),
    ("PW041", 'return DiffusionPipeline.from_pretrained("a/b")',
     f'return DiffusionPipeline.from_pretrained("a/b", revision="{PINNED}")', ""),
    ("PW041", 'return DiffusionPipeline.from_pretrained("a/b", revision="main")',
     f'return DiffusionPipeline.from_pretrained("a/b", revision="{PINNED}")', ""),
    ("PW041", 'from huggingface_hub import hf_hub_download as dl\nreturn dl("a/b", "f.bin")',
     f'from huggingface_hub import hf_hub_download as dl\nreturn dl("a/b", "f.bin", revision="{PINNED}")', ""),
    ("PW041", 'from huggingface_hub import snapshot_download\nreturn snapshot_download("a/b", revision=obj)',
     f'from huggingface_hub import snapshot_download\nreturn snapshot_download("a/b", revision="{PINNED}")', ""),
    ("PW042", "return open(obj).read()", "return obj.read()", ""),
    ("PW042", 'obj.save_pretrained("out")', 'obj.save_config_later("out")', ""),
    ("PW042", 'import os\nreturn os.getenv("HOME")', 'import os\nreturn os.path.join("a", "b")', ""),
    ("PW042", 'import shutil\nshutil.rmtree(obj)', 'import math\nreturn math.sqrt(obj)', ""),
    ("PW042", "return torch.load(obj, weights_only=True)", "return torch.zeros(obj)", ""),
    ("PW043", 'import subprocess\nreturn subprocess.run(["id"])', 'return obj.run(["id"])', ""),
    ("PW043", 'import os\nreturn os.system("id")', 'import os\nreturn os.path.basename("id")', ""),
    ("PW043", "import ctypes\nreturn ctypes.CDLL(obj)", "return obj.CDLL()", ""),
    ("PW044", 'import requests\nreturn requests.get("http://x")', 'return obj.get("http://x")', ""),
    ("PW044", 'import urllib.request\nreturn urllib.request.urlopen(obj)',
     'import urllib.parse\nreturn urllib.parse.urlparse(obj)', ""),
    ("PW044", "import socket\nreturn socket.create_connection(obj)", "return obj.create_connection()", ""),
    ("PW045", "return eval(obj)", "return obj.eval()", ""),
    ("PW045", 'exec("x = 1")', 'obj.exec("x = 1")', ""),
    ("PW045", 'return compile(obj, "f", "exec")', "return obj.compile()", ""),
    ("PW045", "import importlib\nreturn importlib.import_module(obj)", "return obj.import_module()", ""),
    ("PW045", 'return __import__("os")', 'return obj.__init__("os")', ""),
]


@pytest.mark.parametrize(("rule", "positive", "negative", "top"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_positive_and_negative(rule, positive, negative, top):
    assert rule in rules_of(with_helper(positive, top=top)), positive
    assert rule not in rules_of(with_helper(negative, top=top)), negative


def test_pinned_hub_download_is_still_a_network_download():
    """Issue 12 flaw 10: hf_hub_download is a network download helper (PW044) even when pinned; only
    the unpinned-revision warning (PW041) goes away with a pin."""
    source = with_helper(f'from huggingface_hub import hf_hub_download\nreturn hf_hub_download("a/b", "f", revision="{PINNED}")')
    assert "PW044" in rules_of(source) and "PW041" not in rules_of(source)


def test_module_level_definition_shadows_builtin_open():
    source = CLEAN + "\n\ndef open(path):\n    return path\n\n\ndef helper(obj):\n    return open(obj)\n"
    assert "PW042" not in rules_of(source)


def test_one_finding_per_call_first_table_wins():
    report = audit_source(with_helper("return torch.load(obj)"))
    calls = [f for f in report.findings if f.line == report.findings[-1].line and f.rule in ("PW040", "PW042")]
    assert [f.rule for f in calls] == ["PW040"]


# --- PW010: exactly one pipeline class (the sandbox's own detector) --------------------------------


def test_pw010_no_pipeline_class():
    report = audit_source("import torch\n\n\nclass Helper:\n    pass\n")
    assert "PW010" in [f.rule for f in report.findings]
    assert report.pipeline_class is None


def test_pw010_two_pipeline_classes_points_at_the_second():
    source = CLEAN + "\n\nclass SecondPipeline(DiffusionPipeline):\n    pass\n"
    report = audit_source(source)
    pw010 = [f for f in report.findings if f.rule == "PW010"]
    assert len(pw010) == 1
    assert pw010[0].line == source.splitlines().index("class SecondPipeline(DiffusionPipeline):") + 1
    assert "OneStepExamplePipeline" in pw010[0].message and "SecondPipeline" in pw010[0].message
    assert report.pipeline_class is None
    assert report.candidates == ("OneStepExamplePipeline", "SecondPipeline")


def test_pw010_negative_single_class_through_diffusers_subclass():
    source = "from diffusers import StableDiffusionPipeline\n\n\nclass MyPipe(StableDiffusionPipeline):\n    pass\n"
    report = audit_source(source)
    assert "PW010" not in [f.rule for f in report.findings]
    assert report.pipeline_class == "MyPipe"


# --- PW020: imports outside the sandbox policy (the sandbox's own policy data) -------------------


def test_pw020_import_outside_policy_and_inside():
    from pipewarden.sandbox.policy import default_policy

    policy = default_policy()
    assert not policy.is_module_allowed("socket")
    report = audit_source("import socket\n" + CLEAN)
    pw020 = [f for f in report.findings if f.rule == "PW020"]
    assert [(f.line, f.column) for f in pw020] == [(1, 1)]
    assert "socket" in pw020[0].message
    assert "PW020" not in rules_of(CLEAN)  # imports torch, diffusers, typing


def test_pw020_default_policy_alias_maps_musev_fork():
    musev = CLEAN.replace("from diffusers import", "from MuseVdiffusers import")
    report = audit_source(musev)
    assert report.findings == () and report.pipeline_class == "OneStepExamplePipeline"


def test_pw020_import_alias_option_maps_another_fork_spelling():
    fork = CLEAN.replace("from diffusers import", "from ForkDiffusers import")
    assert "PW020" in rules_of(fork)
    assert "PW010" in rules_of(fork)  # not a diffusers import: no pipeline class either
    assert rules_of(fork, import_aliases=(("ForkDiffusers", "diffusers"),)) == []


# --- PW050: the sandbox's restricted compile check ---------------------------------------------


def test_pw050_one_finding_per_compile_issue_matches_check_compile():
    from pipewarden.sandbox.compile import check_compile

    source = with_helper("x = obj.__dict__\n_getattr_ = x\nreturn x\n")
    issues = check_compile(source, filename="pipeline.py")
    assert len(issues) >= 2, "the sandbox refuses __dict__ and binding a guard-hook name"
    report = audit_source(source)
    pw050 = [f for f in report.findings if f.rule == "PW050"]
    assert len(pw050) == len(issues)
    assert sorted(f.line for f in pw050) == sorted(i.lineno for i in issues)
    assert {f.sandbox_rule for f in pw050} == {i.rule for i in issues}


def test_pw050_negative_clean_file_compiles():
    from pipewarden.sandbox.compile import check_compile

    assert check_compile(CLEAN, filename="pipeline.py") == ()
    assert "PW050" not in rules_of(CLEAN)


# --- PW001..PW005: unusable input becomes findings ----------------------------------------------


def test_pw001_syntax_error_with_line():
    report = audit_source("x = 1\ny = (\n")
    (finding,) = report.findings
    assert finding.rule == "PW001" and finding.severity == "error"
    assert finding.line in (2, 3)


def test_pw001_invalid_utf8_with_position():
    (finding,) = audit_source(b"x = 1\ny = '\xff'\n").findings
    assert (finding.rule, finding.line, finding.column) == ("PW001", 2, 6)


def test_pw001_nul_bytes():
    (finding,) = audit_source(b"x = 1\n\x00\n").findings
    assert (finding.rule, finding.line) == ("PW001", 2)


def test_pw001_binary_data():
    (finding,) = audit_source(bytes(range(256)) * 4).findings
    assert finding.rule == "PW001"


def test_pw001_negative_utf8_bom_and_non_ascii_columns():
    report = audit_source(("\ufeff# é\n" + with_helper('s = "ü"; return eval(s)')).encode("utf-8"))
    assert "PW001" not in [f.rule for f in report.findings]
    (pw045,) = [f for f in report.findings if f.rule == "PW045"]
    # 1-based code points (ast gives UTF-8 bytes: "ü" is 2 bytes), after 4 spaces of indent
    assert pw045.column == 4 + len('s = "ü"; return ') + 1


def test_pw002_oversize_source():
    assert rules_of("x = 1\n" * 100, max_file_size=100) == ["PW002"]
    assert "PW002" not in rules_of(CLEAN, max_file_size=len(CLEAN) + 1)


@pytest.mark.parametrize(
    "source",
    [
        "x = " + "+".join(["a"] * 100_000),  # RecursionError in ast.parse
        "x = " + "-" * 1_000_000 + "1",  # MemoryError in ast.parse
        "x = " + "(" * 100_000 + ")" * 100_000,  # too many nested parentheses
        "x = a" + ".b" * 100_000,
    ],
    ids=["binop-chain", "unary-chain", "parens", "attribute-chain"],
)
def test_pw004_deeply_nested_expression(source):
    (finding,) = audit_source(source).findings
    assert finding.rule == "PW004" and finding.severity == "error"


def test_pw004_moderately_nested_expression_parses_but_is_refused():
    # ast.parse accepts this; a recursive visitor (the restricted compiler) does not.
    source = with_helper("return " + "+".join(["obj"] * 900))
    rules = rules_of(source)
    assert "PW004" in rules or "PW050" in rules
    assert "PW005" not in rules


def test_pw005_unexpected_failure_fails_closed(monkeypatch):
    from pipewarden.audit import static as audit_mod
    def boom(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(audit_mod, "check_tree", boom)
    (finding,) = audit_source(CLEAN).findings
    assert finding.rule == "PW005" and finding.severity == "error" and "KeyError" in finding.message


def test_audited_code_is_never_executed(tmp_path):
    canary = tmp_path / "canary"
    source = f"open({str(canary)!r}, 'w').write('ran')\n" + CLEAN + (
        f"\n\nclass Meta(type):\n    open({str(canary)!r}, 'w').write('ran')\n"
    )
    report = audit_source(source)
    assert "PW042" in [f.rule for f in report.findings]
    assert not canary.exists()


def test_pw001_error_only_the_compiler_finds():
    # ast.parse accepts a module-level ``return``; compile() (and so the sandbox) does not.
    report = audit_source(CLEAN + "\nreturn 1\n")
    (finding,) = [f for f in report.findings if f.rule == "PW001"]
    assert "outside function" in finding.message
    assert finding.line == CLEAN.count("\n") + 2


def test_pw021_one_finding_per_builtin_with_use_count():
    report = audit_source(with_helper("a = dir(obj)\nb = dir(a)\nreturn dir(b)"))
    (finding,) = [f for f in report.findings if f.rule == "PW021"]
    assert "'dir'" in finding.message and "3 uses" in finding.message
    assert finding.line == report.findings[0].line  # the first use


def test_pw021_uses_the_policy_builtins():
    from pipewarden.sandbox.policy import default_policy

    provided = default_policy().builtin_names
    assert "isinstance" in provided and "type" in provided and "dir" not in provided



@pytest.mark.parametrize(
    ("prefix", "rule"),
    [
        ("import socket\n", "PW020"),
        ("class Holder:\n    import socket\n", "PW020"),  # class bodies run at load time
        ("try:\n    import socket\nexcept ValueError:\n    pass\n", "PW020"),
        ("FLAG = False\nif FLAG:\n    import socket\n", "PW022"),
        ("def later():\n    import socket\n", "PW022"),
        ("try:\n    import socket\nexcept ImportError:\n    socket = None\n", "PW022"),
        ("try:\n    import socket\nexcept (OSError, ModuleNotFoundError):\n    socket = None\n", "PW022"),
    ],
    ids=["module", "class-body", "try-other-error", "if", "function", "try-importerror", "try-tuple"],
)
def test_pw020_unconditional_vs_pw022_conditional_import(prefix, rule):
    rules = rules_of(prefix + CLEAN)
    assert rule in rules
    assert {"PW020", "PW022"} - {rule} & set(rules) == set()


def test_pw022_is_a_warning_and_names_the_condition():
    report = audit_source("FLAG = False\nif FLAG:\n    import torch_xla.core.xla_model as xm\n" + CLEAN)
    (finding,) = [f for f in report.findings if f.rule == "PW022"]
    assert finding.severity == "warning" and "inside an if statement" in finding.message
    assert (finding.line, finding.column) == (3, 5)
