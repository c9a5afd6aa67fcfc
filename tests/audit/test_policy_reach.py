"""Red team round 9H (audit evasion F2-F6, F8, F9): the audit's verdict follows the sandbox policy's
allowlist, not a list of known-bad calls.

Flaws, each with several doors: (1) names and attribute chains taken from an allowed module that the
policy's facades do not expose (PW023, same policy data as the sandbox); (2) builtins that run code
used as values, not called; (3) annotations that typing.get_type_hints evaluates while diffusers
loads the pipeline (PW047); (4) conditions of call patterns decided by ``*args``/``**mapping``;
(5) control characters of file names in the text report. Payloads are written here; nothing runs.
"""

from __future__ import annotations

import pytest

from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE
from pipewarden.audit.format import render_json, render_text
from pipewarden.audit.static import AuditReport, audit_source

CLEAN = EXAMPLE_PIPELINE_SOURCE


def findings(source: str) -> list[tuple[str, str, str]]:
    return [(f.rule, f.severity, f.message) for f in audit_source(source).findings]


def errors(source: str) -> set[str]:
    return {rule for rule, severity, _ in findings(source) if severity == "error"}


def module(body: str) -> str:
    """``body`` at module level (imports) plus a function using it, with the clean pipeline."""
    return body.strip("\n") + "\n\n" + CLEAN


# --------------------------------------------------------------------------------- (1) allowlist

OUTSIDE = [
    # F3: numpy's DataSource (opens URLs and files) and format.read_array (unpickles)
    "import numpy as np\ndef f(p):\n    return np.lib.npyio.DataSource(None).open(p).read()",
    "import numpy as np\ndef f(fh):\n    return np.lib.format.read_array(fh, allow_pickle=True)",
    "import numpy\ndef f(p):\n    return numpy.memmap(p, mode='w+')",
    # F4: torch's own shell helper, reached as an attribute of `import torch`
    "import torch\ndef f():\n    return torch.utils.collect_env.run('id')",
    "import torch as t\ndef f():\n    return t.utils.collect_env.run('id')",
    "import torch\ndef f(p):\n    return torch.from_file(p, shared=True)",
    "import torch\ndef f(p):\n    return torch.UntypedStorage.from_file(p, True, 8)",
    "import torch\ndef f(m, p):\n    return torch.onnx.export(m, (), p)",
    # F6: a diffusers test helper that downloads and torch.loads
    "from diffusers.utils.testing_utils import load_pt\ndef f(url):\n    return load_pt(url, weights_only=False)",
    "from diffusers.utils import testing_utils\ndef f(url):\n    return testing_utils.load_numpy(url)",
    # F9: torch.utils.benchmark.Timer compiles and runs its stmt string
    "from torch.utils import benchmark\ndef f(code):\n    return benchmark.Timer(stmt=code).timeit(1)",
    "from torch import utils\ndef f(code):\n    return utils.benchmark.Timer(stmt=code).timeit(1)",
    # an alias of a module held in a variable, and getattr with a literal name
    "import torch\nU = torch.utils\ndef f():\n    return U.collect_env.run('id')",
    "import torch\ndef f():\n    return getattr(torch, 'hub').load('a/b', 'm')",
    "from numpy import frompyfunc\ndef f(g):\n    return frompyfunc(g, 1, 1)",
    # writing an attribute of a module facade
    "import torch\ndef f():\n    torch.backends.cudnn.benchmark = True",
]


@pytest.mark.parametrize("body", OUTSIDE, ids=range(len(OUTSIDE)))
def test_names_outside_the_policy_are_errors(body):
    found = findings(module(body))
    assert any(rule == "PW023" and severity == "error" for rule, severity, _ in found), found


INSIDE = [
    "import torch\ndef f(x):\n    return torch.nn.functional.silu(torch.cat([x, x]))",
    "import torch\ndef f():\n    return torch.cuda.is_available() and torch.backends.mps.is_available()",
    "import numpy as np\ndef f():\n    return np.random.randn(2) + np.linalg.norm(np.zeros(2))",
    "from diffusers.utils.torch_utils import randn_tensor\ndef f(s):\n    return randn_tensor(s)",
    "from diffusers import DDPMScheduler\nfrom diffusers.utils import PIL_INTERPOLATION, is_torch_xla_available",
    "from diffusers.image_processor import PipelineImageInput\ndef f(image: PipelineImageInput):\n    return image",
    "import os\ndef f(a):\n    return os.path.join(a, os.path.basename(a))",
    "from torch import nn\nclass M(nn.Module):\n    pass",
]


@pytest.mark.parametrize("body", INSIDE, ids=range(len(INSIDE)))
def test_names_inside_the_policy_have_no_finding(body):
    found = findings(module(body))
    assert not any(rule in ("PW023", "PW024") for rule, _, _ in found), found


# The static verdict agrees with the sandbox's own facades (load_class runs the module body).
AGREE = [
    ("import torch\nX = torch.utils.collect_env", True),
    ("import numpy as np\nX = np.lib", True),
    ("import torch\nX = torch.finfo", True),
    ("import os\nX = os.path.exists", True),
    ("from torch.utils import benchmark", True),
    ("import torch\nX = torch.nn.functional.silu", False),
    ("import numpy as np\nX = np.random.randn", False),
    ("from diffusers.image_processor import PipelineImageInput\nX = PipelineImageInput", False),
]


@pytest.mark.parametrize(("body", "refused"), AGREE, ids=range(len(AGREE)))
def test_static_verdict_matches_the_sandbox(body, refused):
    from pipewarden.errors import PolicyViolation, ScanError
    from pipewarden.sandbox import load_class

    source = module(body)
    assert ("PW023" in errors(source)) is refused
    if refused:
        with pytest.raises((PolicyViolation, ScanError)):  # refused, or the import fails
            load_class(source, filename="p.py")
    else:
        load_class(source, filename="p.py")


def test_refused_name_from_a_stub_module_used_only_in_annotations_is_a_warning():
    # transformers binds a refusing stand-in for a class its generated list does not hold
    source = module("from transformers import T5TokenizerFast\ndef f(t: T5TokenizerFast):\n    return t")
    found = findings(source)
    assert [(r, s) for r, s, _ in found if r in ("PW023", "PW024")] == [("PW024", "warning")], found
    used = module("from transformers import T5TokenizerFast\ndef f(p):\n    return T5TokenizerFast(p)")
    assert "PW023" in errors(used)


# ------------------------------------------------------------------------- (2) builtins as values

VALUE_DOORS = [
    "import numpy as np\nRUN = np.frompyfunc(exec, 2, 0)",
    "import numpy as np\nEV = np.vectorize(eval)",
    "def f(codes, scope):\n    return list(map(exec, codes, [scope] * len(codes)))",
    "f = eval",
    "exec = exec\ndef g(code):\n    return exec(code)",
    "def g(code, run=exec):\n    return run(code)",
    "def g(code):\n    return [run(code) for run in [compile]]",
    "TABLE = {'imp': __import__}",
    "def g():\n    return [0 for exec in [exec]]",
    "def g():\n    return lambda: breakpoint",
]


@pytest.mark.parametrize("body", VALUE_DOORS, ids=range(len(VALUE_DOORS)))
def test_code_running_builtins_used_as_values_are_errors(body):
    found = findings(module(body))
    assert any(rule in ("PW045", "PW031") and severity == "error" and "used as a value" in message
               for rule, severity, message in found), found


VALUE_NEGATIVES = [
    "def g(compile=False):\n    return compile",
    "def g(model):\n    return model.eval()",
    "def g(x):\n    eval = x.evaluate\n    return eval",
    "def g(xs):\n    return [exec for exec in xs]",
]


@pytest.mark.parametrize("body", VALUE_NEGATIVES, ids=range(len(VALUE_NEGATIVES)))
def test_local_names_that_shadow_builtins_are_not_builtins(body):
    found = findings(module(body))
    assert not any("used as a value" in message for _, _, message in found), found


# ----------------------------------------------------------------- (3) annotations evaluated at load

def pipeline_with_annotation(annotation: str, *, future: bool = False) -> str:
    head = "from __future__ import annotations\n" if future else ""
    return head + (
        "from typing import Optional, List, Literal, Callable\n"
        "from diffusers import DiffusionPipeline, DDPMScheduler\n\n\n"
        "class P(DiffusionPipeline):\n"
        f"    def __init__(self, scheduler: {annotation}):\n"
        "        super().__init__()\n"
        "        self.register_modules(scheduler=scheduler)\n"
    )


ANNOTATION_DOORS = [
    ('"__import__(\'os\').system(\'id\') and DDPMScheduler or DDPMScheduler"', False),
    ('"(lambda: DDPMScheduler)()"', False),
    ('Optional["[__import__(\'os\').system(\'id\')][0] or DDPMScheduler"]', False),
    ('"Optional[\'DDPMScheduler if exec(\\"1\\") else DDPMScheduler\']"', False),
    ("Optional[DDPMScheduler.pick(1)]", True),
    ("DDPMScheduler if True else None", True),
]


@pytest.mark.parametrize(("annotation", "future"), ANNOTATION_DOORS, ids=range(len(ANNOTATION_DOORS)))
def test_annotations_that_run_code_at_load_are_errors(annotation, future):
    found = findings(pipeline_with_annotation(annotation, future=future))
    assert any(rule == "PW047" and severity == "error" for rule, severity, _ in found), found


ANNOTATION_PLAIN = [
    ('"DDPMScheduler"', False),
    ('Optional["DDPMScheduler"]', False),
    ('Literal["a", "b"]', False),
    ("Optional[List[List[str]]]", True),
    ("DDPMScheduler | None", True),
    ("Callable[[int], str]", True),
    ('"diffusers.DDPMScheduler"', True),
]


@pytest.mark.parametrize(("annotation", "future"), ANNOTATION_PLAIN, ids=range(len(ANNOTATION_PLAIN)))
def test_plain_type_annotations_have_no_finding(annotation, future):
    found = findings(pipeline_with_annotation(annotation, future=future))
    assert not any(rule == "PW047" for rule, _, _ in found), found


# ------------------------------------------------------------- (4) conditions decided by ** or *

UNPICKLE_DOORS = [
    "import numpy as np\nOPTS = {'allow_pickle': True}\ndef f(p):\n    return np.load(p, **OPTS)",
    "import numpy as np\ndef f(p, *rest):\n    return np.load(p, *rest)",
    "import numpy as np\ndef f(p, extra):\n    return np.load(p, **{**extra})",
    "import torch\nKW = {'weights_only': False}\ndef f(p):\n    return torch.load(p, **KW)",
    "import torch\ndef f(p, **kw):\n    return torch.serialization.load(p, **kw)",
]


@pytest.mark.parametrize("body", UNPICKLE_DOORS, ids=range(len(UNPICKLE_DOORS)))
def test_unreadable_mappings_fail_closed(body):
    found = findings(module(body))
    assert any(rule == "PW040" for rule, _, _ in found), found


@pytest.mark.parametrize("body", [
    "import torch\ndef f(p):\n    return torch.load(p, **{'weights_only': True})",
    "import torch\ndef f(p, **kw):\n    return torch.load(p, weights_only=True, **kw)",
])
def test_literal_mappings_are_read(body):
    assert "PW040" not in {rule for rule, _, _ in findings(module(body))}


# ------------------------------------------------------------------------------ (5) text output

FORGED_NAMES = [
    "src/evil\nAudited 1 file: 0 errors, 0 warnings, 0 notes.\n\x1b[2K::notice::all clean.py",
    "::notice::all clean.py",
    "a\rAudited 0 files.py",
    "b\u2028::error::x\u202e.py",
    "c\x85next line\x9b31m.py",
]


@pytest.mark.parametrize("name", FORGED_NAMES, ids=range(len(FORGED_NAMES)))
def test_text_report_escapes_file_names(name):
    report = audit_source("import subprocess\nsubprocess.run(['id'])\n", path=name)
    assert report.findings
    text = render_text(AuditReport((report,), "1"))
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) == len(report.findings) + 2  # one line each, the summary
    assert all(line.startswith("Audited ") for line in lines if "Audited" in line[:8])
    assert sum(1 for line in lines if line.startswith("Audited ")) == 1
    assert not any(line.startswith("::") for line in lines)
    for bad in ("\r", "\x1b", "\x85", "\x9b", "\u2028", "\u202e"):
        assert bad not in text
    import json

    assert json.loads(render_json(AuditReport((report,), "1")))["files"][0]["path"] == name  # JSON keeps it


# A module facade used as a value: what is reached through it later cannot be checked (fail closed).
MODULE_VALUE_DOORS = [
    'import torch\ndef f():\n    return vars(torch)["utils"].collect_env.run("id")',
    'import torch\nclass Helper:\n    utils = torch.utils\n    def f(self):\n        return self.utils.collect_env.run("id")',
    'import torch\ndef f(t=torch):\n    return t.utils.collect_env.run("id")',
    'import torch\nMODS = [torch]\ndef f():\n    return MODS[0].utils.collect_env.run("id")',
    'import torch\ndef f():\n    return getattr(torch, "ut" + "ils").collect_env.run("id")',
]


@pytest.mark.parametrize("body", MODULE_VALUE_DOORS, ids=range(len(MODULE_VALUE_DOORS)))
def test_modules_used_as_values_are_errors(body):
    found = findings(module(body))
    assert any(rule == "PW032" and severity == "error" for rule, severity, _ in found), found


@pytest.mark.parametrize("body", [
    "from PIL import Image\ndef f(x):\n    return type(x) is Image",
    'import torch.nn.functional as F\nHAS_SDPA = hasattr(F, "scaled_dot_product_attention")',
    "import torch\nT = torch.nn\nclass M(T.Module):\n    pass",
])
def test_modules_compared_or_aliased_are_not_values(body):
    assert "PW032" not in {rule for rule, _, _ in findings(module(body))}


# Red team 9H F13/F14: a dangerous function reached by another name than a call-table entry.
RENAMED_DOORS = [
    "import torch\ndef f(repo):\n    return torch.hub.list(repo, skip_validation=True, trust_repo=True)",
    "import torch\ndef f(p):\n    restore = torch.load\n    return restore(p, weights_only=False)",
    "import numpy as np\ndef f(p):\n    ld, = (np.load,)\n    return ld(p, allow_pickle=True)",
    'import numpy as np\ndef f(p):\n    return {"f": np.load}["f"](p, allow_pickle=True)',
    "import torch\ndef f(ps):\n    return list(map(torch.load, ps))",
]


@pytest.mark.parametrize("body", RENAMED_DOORS, ids=range(len(RENAMED_DOORS)))
def test_dangerous_functions_under_another_name_are_errors(body):
    found = findings(module(body))
    assert any(rule == "PW023" and severity == "error" for rule, severity, _ in found), found


def test_the_verdict_does_not_depend_on_the_call_tables():
    """Every module function a call pattern reports (torch.load, numpy.load, torch.hub.load, ...) is
    also a name the policy's facades refuse, so the verdict stands without the table (PW023)."""
    from pipewarden.audit import rules as audit_rules
    from pipewarden.audit.static import AuditOptions

    options = AuditOptions()
    policy, view = options.policy(), options.view()
    checked = 0
    for name, patterns in audit_rules.EXACT_CALLS.items():
        if name.startswith("builtins.") or not any(p.rule for p in patterns):
            continue
        top, *rest = name.split(".")
        if not policy.is_module_allowed(top):
            continue  # importing the module is already PW020
        reach, _ = view.chain(top, rest)
        assert reach.kind == "refused", (name, reach)
        checked += 1
    assert checked >= 20


# [deny] names are refused on every host object, whatever the receiver (red team 9H F3's list:
# ndarray.dump/tofile, storage, hooks): the name alone decides, unless the file defines it itself.
DENIED_ON_ANY_OBJECT = [
    "def f(arr, p):\n    arr.tofile(p)",
    "def f(arr, p):\n    arr.dump(p)",
    "def f(unet, hook):\n    return unet.register_forward_hook(hook)",
    "def f(t):\n    return t.untyped_storage()",
    "def f(pipe):\n    pipe.save_pretrained('out')",
    "def f(image, p):\n    image.save(p)",
]


@pytest.mark.parametrize("body", DENIED_ON_ANY_OBJECT, ids=range(len(DENIED_ON_ANY_OBJECT)))
def test_names_denied_on_every_object_are_errors(body):
    found = findings(module(body))
    assert any(rule == "PW023" and severity == "error" and "every object" in message
               for rule, severity, message in found), found


def test_a_denied_name_the_file_defines_itself_is_left_to_the_sandbox():
    from pipewarden.sandbox import load_class

    source = module("class Store:\n    def save_state(self):\n        return 1\n\nX = Store().save_state()")
    assert not any("every object" in message for _, _, message in findings(source))
    load_class(source, filename="p.py")  # the sandbox lets the file's own objects use it too


def test_text_report_escapes_messages_from_the_worker():
    """F2 addendum: a finding's message can carry text the pipeline chose (an exception raised in the
    worker under --run); ESC/CSI sequences must not reach the terminal."""
    from pipewarden.audit.static import FileReport, Finding

    message = "refused: ValueError: boom\nAudited 1 file: 0 errors.\x1b[31mFORGED\x1b[0m\x1b[1A\x1b[2K"
    report = FileReport("p.py", "P", (Finding("PW060", "error", 3, 1, message, kind="dynamic"),))
    text = render_text(AuditReport((report,), "1"))
    assert "\x1b" not in text and text.count("\n") == 2
    assert "\\x1b[31mFORGED" in text  # shown, inert
