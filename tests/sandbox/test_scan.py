"""Scan: ast-only detection of the pipeline class, and clean refusals of unusable source."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pipewarden.errors import PipewardenError, ScanError
from pipewarden.sandbox.scan import require_single_pipeline, scan_source
from tests.conftest import seed_file


def _scan(src: str, **kw):
    return scan_source(textwrap.dedent(src), **kw)


def test_seed_file_has_its_pipeline_class():
    result = scan_source(seed_file().read_bytes(), filename="one_step_unet.py")
    assert result.pipeline_class == "UnetSchedulerOneForwardPipeline"
    (cand,) = result.candidates
    assert (cand.name, cand.lineno, cand.bases) == ("UnetSchedulerOneForwardPipeline", 9, ("DiffusionPipeline",))
    assert require_single_pipeline(result) == cand
    assert any(ref.module == "diffusers" and ref.name == "DiffusionPipeline" for ref in result.imports)


def test_musev_spelling_needs_the_alias():
    src = seed_file("one_step_unet_musev.py").read_bytes()
    assert scan_source(src, import_aliases={"MuseVdiffusers": "diffusers"}).pipeline_class == (
        "UnetSchedulerOneForwardPipeline"
    )
    assert scan_source(src, import_aliases={}).pipeline_class is None
    # The default policy ships the MuseV alias.
    assert scan_source(src).pipeline_class == "UnetSchedulerOneForwardPipeline"


@pytest.mark.parametrize(
    "src, expected",
    [
        ("from diffusers import StableDiffusionPipeline\nclass A(StableDiffusionPipeline): pass\n", "A"),
        ("import diffusers\nclass A(diffusers.DiffusionPipeline): pass\n", "A"),
        ("import diffusers as d\nclass A(d.pipelines.StableDiffusionXLPipeline): pass\n", "A"),
        ("from diffusers.pipelines.pipeline_utils import DiffusionPipeline as DP\nclass A(DP): pass\n", "A"),
        # through another class of the same file, defined before or after use
        ("from diffusers import DiffusionPipeline\nclass B(DiffusionPipeline): pass\nclass A(B): pass\n", None),
        ("from diffusers import DiffusionPipeline, ModelMixin\nclass M(ModelMixin): pass\nclass A(DiffusionPipeline): pass\n", "A"),
        # inside module-level if/try, not inside functions
        ("from diffusers import DiffusionPipeline\nif True:\n    class A(DiffusionPipeline): pass\n", "A"),
        ("from diffusers import DiffusionPipeline\ntry:\n    class A(DiffusionPipeline): pass\nexcept Exception:\n    pass\n", "A"),
        ("from diffusers import DiffusionPipeline\ndef f():\n    class A(DiffusionPipeline): pass\n", None),
        # a class named DiffusionPipeline does not count (diffusers' rule)
        ("import diffusers\nclass DiffusionPipeline(diffusers.DiffusionPipeline): pass\n", None),
        # modular pipelines are not DiffusionPipeline subclasses
        ("from diffusers import ModularPipeline\nclass A(ModularPipeline): pass\n", None),
        # an unrelated package's "Pipeline" is not diffusers'
        ("from transformers import Pipeline\nclass A(Pipeline): pass\n", None),
        # a rebound name: diffusers looks at module members at the end
        ("from diffusers import DiffusionPipeline\nclass A(DiffusionPipeline): pass\nA = 3\n", None),
    ],
)
def test_detection_rules(src, expected):
    result = _scan(src)
    if expected is None and "class B" in src:
        assert [c.name for c in result.candidates] == ["B", "A"]
        assert result.pipeline_class is None
    else:
        assert result.pipeline_class == expected


def test_zero_classes_is_a_scan_error():
    result = _scan("import torch\nclass A: pass\n")
    with pytest.raises(ScanError) as info:
        require_single_pipeline(result)
    assert info.value.rule == "scan.one-pipeline-class"
    assert "no class" in info.value.what


def test_two_classes_lists_both_with_lines():
    src = """\
    from diffusers import DiffusionPipeline

    class First(DiffusionPipeline):
        pass

    class Second(DiffusionPipeline):
        pass
    """
    with pytest.raises(ScanError) as info:
        require_single_pipeline(_scan(src))
    assert "First (line 3)" in info.value.what and "Second (line 6)" in info.value.what
    assert info.value.rule == "scan.one-pipeline-class"


def test_syntax_error_names_the_line():
    with pytest.raises(ScanError) as info:
        scan_source("import torch\n\ndef broken(:\n    pass\n")
    assert info.value.rule == "scan.syntax"
    assert "line 3" in info.value.what


def test_non_utf8_bytes():
    with pytest.raises(ScanError) as info:
        scan_source(b"x = 1\ny = '\xff\xfe'\n")
    assert info.value.rule == "scan.utf8"
    assert "line 2" in info.value.what


def test_nul_byte():
    with pytest.raises(ScanError) as info:
        scan_source(b"x = 1\nimport torch\x00\n")
    assert info.value.rule == "scan.nul-byte"
    assert "line 2" in info.value.what


def test_lone_surrogate_in_str_source():
    with pytest.raises(ScanError) as info:
        scan_source("x = '\ud800'\n")
    assert info.value.rule == "scan.utf8"


def test_bad_argument_type_is_a_type_error():
    with pytest.raises(TypeError):
        scan_source(12)  # type: ignore[arg-type]


def test_scan_never_executes_the_file(tmp_path):
    canary = tmp_path / "ran"
    src = f"open({str(canary)!r}, 'w').write('x')\nfrom diffusers import DiffusionPipeline\nclass A(DiffusionPipeline): pass\n"
    assert scan_source(src).pipeline_class == "A"
    assert not canary.exists()


def test_scan_does_not_import_torch_or_diffusers():
    code = (
        "import sys\n"
        "from pipewarden.sandbox.scan import scan_source\n"
        "r = scan_source(b'from diffusers import StableDiffusionPipeline\\nclass A(StableDiffusionPipeline): pass\\n')\n"
        "assert r.pipeline_class == 'A'\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_errors_are_pipewarden_errors_with_diagnostics():
    with pytest.raises(PipewardenError) as info:
        scan_source(b"\x00")
    assert "rule: scan.nul-byte" in info.value.diagnostics()
