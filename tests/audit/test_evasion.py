"""Issue 12 flaw 10: audit evasion. Encoding declarations, BOMs, the new rule families, and a
verdict that does not depend on the optional packages installed where the audit runs."""

from __future__ import annotations

import textwrap

import pytest

from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE
from pipewarden.audit.static import audit_source
from pipewarden.errors import ScanError
from pipewarden.sandbox import load_class
from pipewarden.sandbox.scan import decode_source

CLEAN = EXAMPLE_PIPELINE_SOURCE
PINNED = "0123456789abcdef0123456789abcdef01234567"


def rules_of(source: str | bytes) -> list[str]:
    return [f.rule for f in audit_source(source).findings]


def with_helper(body: str, *, top: str = "") -> str:
    helper = "def helper(obj, name):\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"
    return (top + "\n" if top else "") + CLEAN + "\n\n" + helper


# --------------------------------------------------------------------------- encoding declarations

HIDDEN = "import os\nos.system('id')\n"


def _utf7_payload() -> bytes:
    """A file whose UTF-8 reading is one comment line; Python (honouring the cookie) runs os.system."""
    hidden = HIDDEN.encode("utf-7")  # '+AAo-'-style escapes hide the newline from a UTF-8 reader
    return b"# -*- coding: utf-7 -*-\n# harmless +AAo-" + hidden.replace(b"\n", b"+AAo-") + b"\n" + CLEAN.encode()


def test_the_utf7_door_is_real():
    """Without the rule, the UTF-8 reading sees no call while Python's reading does."""
    import ast

    data = _utf7_payload()
    utf8_tree = ast.parse(data.decode("utf-8"))  # str: the cookie is ignored, as a UTF-8 reader does
    assert not any(isinstance(n, ast.Attribute) and n.attr == "system" for n in ast.walk(utf8_tree))
    python_tree = ast.parse(data)  # bytes: Python honours the coding cookie
    assert any(isinstance(n, ast.Attribute) and n.attr == "system" for n in ast.walk(python_tree))


COOKIES = [
    "# -*- coding: utf-7 -*-",
    "# coding=latin-1",
    "# vim: set fileencoding=cp1252 :",
    "# -*- coding: UTF_7 -*-",
    "# coding: utf-16",
    "# coding: iso-8859-15",
    "#coding:ascii",
]


@pytest.mark.parametrize("cookie", COOKIES)
@pytest.mark.parametrize("line", [1, 2])
@pytest.mark.parametrize("bom", [False, True])
def test_every_non_utf8_cookie_is_an_audit_error_and_a_sandbox_refusal(cookie, line, bom):
    head = (cookie + "\n") if line == 1 else ("#!/usr/bin/env python\n" + cookie + "\n")
    text = head + CLEAN
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("ascii")
    findings = audit_source(data).findings
    assert [f.rule for f in findings] == ["PW006"] and findings[0].severity == "error"
    assert findings[0].line == line
    with pytest.raises(ScanError, match="encoding"):
        load_class(data, filename="p.py")
    with pytest.raises(ScanError, match="encoding"):
        load_class(("\ufeff" if bom else "") + text, filename="p.py")  # the in-process (str) path


def test_utf7_payload_is_refused_everywhere():
    data = _utf7_payload()
    assert "PW006" in rules_of(data)
    with pytest.raises(ScanError):
        load_class(data, filename="p.py")


@pytest.mark.parametrize("cookie", ["# -*- coding: utf-8 -*-", "# coding=utf8", "# coding: UTF_8", "# coding: utf-8-sig"])
def test_utf8_cookies_are_fine(cookie):
    text = cookie + "\n" + CLEAN
    assert rules_of(text) == []
    load_class(text, filename="p.py")


def test_a_cookie_after_code_is_not_a_declaration():
    text = CLEAN + "\n# coding: latin-1\n"
    assert "PW006" not in rules_of(text)
    load_class(text, filename="p.py")


# --------------------------------------------------------------------------- BOM: one reading


@pytest.mark.parametrize("form", ["bytes", "str"])
def test_bom_is_handled_the_same_on_every_path(form):
    with_bom: str | bytes = ("\ufeff" + CLEAN) if form == "str" else (b"\xef\xbb\xbf" + CLEAN.encode())
    assert decode_source(with_bom) == decode_source(CLEAN)
    assert audit_source(with_bom).findings == ()
    assert load_class(with_bom, filename="p.py").__name__ == load_class(CLEAN, filename="p.py").__name__


def test_bom_pipeline_loads_in_process_like_in_the_worker(tmp_path, tiny_weights):
    import pipewarden
    from pipewarden.loader.digests import sha256_file

    path = tmp_path / "pipeline.py"
    path.write_bytes(b"\xef\xbb\xbf" + CLEAN.encode())
    pipe = pipewarden.load_pipeline(
        tiny_weights, custom_pipeline=path, trust_remote_code=True, pipeline_sha256=sha256_file(path), isolation="inprocess"
    )
    assert type(pipe).__name__ == "OneStepExamplePipeline"


# --------------------------------------------------------------------------- new rule families

POSITIVE = [
    # dynamic module loaders
    ("PW046", "return get_class_from_dynamic_module('a/b', 'x.py', 'C')",
     "from diffusers.utils.dynamic_modules_utils import get_class_from_dynamic_module"),
    ("PW046", "return get_class_from_dynamic_module('a/b', 'x.py', 'C')",
     "from transformers.dynamic_module_utils import get_class_from_dynamic_module"),
    ("PW046", "return get_cached_module_file('a/b', 'x.py')", "from diffusers.utils import get_cached_module_file"),
    # nested custom code
    ("PW046", f"return DiffusionPipeline.from_pretrained('a/b', custom_pipeline='c/d', revision='{PINNED}')",
     "from diffusers import DiffusionPipeline"),
    ("PW046", f"return AutoModel.from_pretrained('a/b', trust_remote_code=True, revision='{PINNED}')",
     "from transformers import AutoModel"),
    ("PW046", f"return obj.from_pretrained('a/b', **{{'trust_remote_code': True}}, revision='{PINNED}')", ""),
    ("PW046", f"return obj.from_pretrained('a/b', trust_remote_code=name, revision='{PINNED}')", ""),
    # native libraries
    ("PW043", "torch.ops.load_library(name)", "import torch"),
    ("PW043", "torch.classes.load_library(name)", "import torch"),
    ("PW043", "return ctypes.CDLL(name)", "import ctypes"),
    ("PW043", "return load_inline(name, name)", "from torch.utils.cpp_extension import load_inline"),
    # network downloads
    ("PW044", "torch.hub.download_url_to_file(name, name)", "import torch"),
    ("PW044", "return load_url(name)", "from torch.utils.model_zoo import load_url"),
    ("PW044", f"return hf_hub_download('a/b', 'f', revision='{PINNED}')", "from huggingface_hub import hf_hub_download"),
    ("PW044", "return torch.hub.load_state_dict_from_url(name)", "import torch"),
    # TorchScript and torch.package
    ("PW040", "return torch.jit.load(name)", "import torch"),
    ("PW040", "return PackageImporter(name).load_pickle('a', 'b')", "from torch.package import PackageImporter"),
    ("PW040", "return torch.package.PackageImporter(name)", "import torch"),
    # computed attribute names on modules
    ("PW032", "return getattr(os, 'sys' + 'tem')", "import os"),
    ("PW032", "return getattr(torch, name)", "import torch"),
    ("PW032", "setattr(np, name, obj)", "import numpy as np"),
]


@pytest.mark.parametrize(("rule", "body", "top"), POSITIVE, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(POSITIVE)])
def test_new_rule_reports(rule, body, top):
    assert rule in rules_of(with_helper(body, top=top)), body


NEGATIVE = [
    ("PW046", f"return DiffusionPipeline.from_pretrained('a/b', revision='{PINNED}')", "from diffusers import DiffusionPipeline"),
    ("PW046", f"return AutoModel.from_pretrained('a/b', trust_remote_code=False, revision='{PINNED}')",
     "from transformers import AutoModel"),
    ("PW032", "return getattr(torch, 'float16')", "import torch"),
    ("PW032", "return getattr(obj, name)", ""),  # not a module
    ("PW032", "return hasattr(torch, name)", "import torch"),
    ("PW044", "return torch.load(name, weights_only=True)", "import torch"),
]


@pytest.mark.parametrize(("rule", "body", "top"), NEGATIVE, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(NEGATIVE)])
def test_new_rule_quiet_on_the_benign_twin(rule, body, top):
    assert rule not in rules_of(with_helper(body, top=top)), body


def test_new_rules_are_registered_with_severities():
    from pipewarden.audit.rules import RULES_BY_ID

    assert RULES_BY_ID["PW006"].severity == "error"
    assert RULES_BY_ID["PW046"].severity == "error"
    assert RULES_BY_ID["PW032"].severity == "error"  # red team 9H: getattr(torch, "ut" + "ils") exited 0


# --------------------------------------------------------------------------- optional packages


def _unavailable() -> list[str]:
    from pipewarden.sandbox.policy import diffusers_unavailable_pipeline_names

    return sorted(diffusers_unavailable_pipeline_names())


@pytest.mark.parametrize("base", _unavailable())
def test_pipelines_with_missing_optional_deps_are_still_pipelines(base):
    """lpw_stable_diffusion_onnx.py subclasses OnnxStableDiffusionPipeline: a pipeline whatever is installed."""
    source = f"from diffusers import {base}\n\n\nclass LpwPipeline({base}):\n    pass\n"
    report = audit_source(source)
    assert report.pipeline_class == "LpwPipeline"
    assert "PW010" not in [f.rule for f in report.findings]


def test_onnx_is_absent_here_so_the_test_above_is_meaningful():
    assert "OnnxStableDiffusionPipeline" in _unavailable()
