"""The vertical slice: load_pipeline through every gate, in-process, against diffusers itself."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import pipewarden
from pipewarden.errors import (
    InputError,
    IntegrityError,
    NotAllowedError,
    ScanError,
    TrustRequiredError,
)
from pipewarden.loader.digests import sha256_file
from tests.conftest import seed_file


def _diffusers_output(weights: Path, pipeline_file: Path, **call):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(weights), custom_pipeline=str(pipeline_file), trust_remote_code=True)
    torch.manual_seed(0)
    return pipe(**call)


def _ours(weights: Path, pipeline_file: Path, **kw):
    module = pipeline_file / "pipeline.py" if pipeline_file.is_dir() else pipeline_file
    return pipewarden.load_pipeline(
        weights,
        custom_pipeline=pipeline_file,
        trust_remote_code=True,
        pipeline_sha256=sha256_file(module),
        isolation="inprocess",
        **kw,
    )


# --- positive: bit-identical to diffusers ---------------------------------------------------


def test_seed_pipeline_bit_identical_to_diffusers(tiny_weights):
    seed = seed_file()
    pipe = _ours(tiny_weights, seed)
    assert type(pipe).__name__ == "UnetSchedulerOneForwardPipeline"
    torch.manual_seed(0)
    ours = pipe()
    theirs = _diffusers_output(tiny_weights, seed)
    assert ours.shape == (1, 3, 8, 8)
    assert torch.equal(ours, theirs)


def test_seed_musev_spelling_loads_with_alias(tiny_weights, tmp_path):
    musev = seed_file("one_step_unet_musev.py")
    pipe = _ours(tiny_weights, musev, import_aliases={"MuseVdiffusers": "diffusers"})
    torch.manual_seed(0)
    ours = pipe()
    theirs = _diffusers_output(tiny_weights, seed_file())
    assert torch.equal(ours, theirs)


def test_fork_alias_is_configurable(tiny_weights, tmp_path):
    fork = tmp_path / "pipeline.py"
    fork.write_text(seed_file().read_text().replace("from diffusers import", "from MyForkdiffusers import"))
    with pytest.raises(ScanError):
        _ours(tiny_weights, fork)  # without the alias, nothing in the file is a DiffusionPipeline subclass
    pipe = _ours(tiny_weights, fork, import_aliases={"MyForkdiffusers": "diffusers"})
    torch.manual_seed(0)
    assert torch.equal(pipe(), _diffusers_output(tiny_weights, seed_file()))


def test_example_pipeline_bit_identical_to_diffusers_one_and_many_steps(tiny_weights, example_pipeline):
    pipe = _ours(tiny_weights, example_pipeline.parent)  # a directory holding pipeline.py
    assert type(pipe).__name__ == "OneStepExamplePipeline"
    torch.manual_seed(0)
    assert torch.equal(pipe(), _diffusers_output(tiny_weights, example_pipeline))
    ours = pipe(generator=torch.Generator().manual_seed(3), num_inference_steps=4)
    theirs = _diffusers_output(tiny_weights, example_pipeline, generator=torch.Generator().manual_seed(3), num_inference_steps=4)
    assert torch.equal(ours, theirs)


def test_gates_are_reported_in_order(tiny_weights, example_pipeline):
    seen: list[str] = []
    _ours(tiny_weights, example_pipeline, on_gate=lambda gate, verdict: seen.append(gate))
    # the code is admitted (pinned) before the weights are even resolved
    order = ["kill switch", "opt-in", "code", "sha256 pin", "weights", "sandbox", "components", "instantiate"]
    assert [g for g in seen if g in order] == order


# --- the trust gates ------------------------------------------------------------------------

SIDE_EFFECT_SOURCE = """\
import pathlib
pathlib.Path({canary!r}).write_text("executed")
from diffusers import DiffusionPipeline


class P(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
"""


@pytest.fixture
def side_effect_pipeline(tmp_path):
    canary = tmp_path / "canary" / "executed.txt"
    canary.parent.mkdir()
    code = tmp_path / "code" / "pipeline.py"
    code.parent.mkdir()
    code.write_text(SIDE_EFFECT_SOURCE.format(canary=str(canary)))
    # Prove the detector works: plain Python executing the module body does write the canary.
    return code, canary


def _spy_never_compiled(monkeypatch):
    calls = []
    import pipewarden.sandbox as sb

    monkeypatch.setattr(sb, "load_class", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    return calls


def test_no_opt_in_never_executes(tiny_weights, side_effect_pipeline, monkeypatch):
    code, canary = side_effect_pipeline
    calls = _spy_never_compiled(monkeypatch)
    with pytest.raises(TrustRequiredError) as info:
        pipewarden.load_pipeline(tiny_weights, custom_pipeline=code, pipeline_sha256=sha256_file(code), isolation="inprocess")
    assert "trust_remote_code" in str(info.value)
    assert calls == [] and not canary.exists()
    # the canary really is what plain execution would produce
    exec(compile(code.read_text(), str(code), "exec"), {"__name__": "plain"})
    assert canary.read_text() == "executed"


def test_trust_remote_code_must_be_exactly_true(tiny_weights, side_effect_pipeline, monkeypatch):
    code, canary = side_effect_pipeline
    with pytest.raises(TypeError):
        pipewarden.load_pipeline(tiny_weights, custom_pipeline=code, trust_remote_code="yes", isolation="inprocess")  # type: ignore[arg-type]
    assert not canary.exists()


def test_wrong_pin_is_integrity_error(tiny_weights, side_effect_pipeline, monkeypatch):
    code, canary = side_effect_pipeline
    calls = _spy_never_compiled(monkeypatch)
    with pytest.raises(IntegrityError) as info:
        pipewarden.load_pipeline(
            tiny_weights, custom_pipeline=code, trust_remote_code=True, pipeline_sha256="0" * 64, isolation="inprocess"
        )
    assert sha256_file(code) in str(info.value)
    assert calls == [] and not canary.exists()


def test_one_byte_edit_is_integrity_error(tiny_weights, example_pipeline, tmp_path, monkeypatch):
    pin = sha256_file(example_pipeline)
    edited = tmp_path / "pipeline.py"
    data = bytearray(example_pipeline.read_bytes())
    data[len(data) // 2] ^= 0x01
    edited.write_bytes(bytes(data))
    calls = _spy_never_compiled(monkeypatch)
    with pytest.raises(IntegrityError):
        pipewarden.load_pipeline(tiny_weights, custom_pipeline=edited, trust_remote_code=True, pipeline_sha256=pin, isolation="inprocess")
    assert calls == []


def test_unpinned_code_is_refused_with_the_pin_to_use(tiny_weights, example_pipeline, monkeypatch):
    calls = _spy_never_compiled(monkeypatch)
    with pytest.raises(NotAllowedError) as info:
        pipewarden.load_pipeline(tiny_weights, custom_pipeline=example_pipeline, trust_remote_code=True, isolation="inprocess")
    assert sha256_file(example_pipeline) in str(info.value)
    assert calls == []


def test_malformed_pin_is_caller_error(tiny_weights, example_pipeline):
    with pytest.raises(ValueError):
        pipewarden.load_pipeline(
            tiny_weights, custom_pipeline=example_pipeline, trust_remote_code=True, pipeline_sha256="abc", isolation="inprocess"
        )


# --- weights: safetensors only ---------------------------------------------------------------


class _Payload:
    def __init__(self, canary: str):
        self.canary = canary

    def __reduce__(self):
        return (Path(self.canary).write_text, ("unpickled",))


def test_pickle_weights_refused_without_unpickling(tiny_weights, example_pipeline, tmp_path, monkeypatch):
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    canary = tmp_path / "unpickled.txt"
    (weights / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (weights / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload(str(canary))}))
    # The detector works: unpickling this file runs the payload.
    pickle.loads((weights / "unet" / "diffusion_pytorch_model.bin").read_bytes())
    assert canary.read_text() == "unpickled"
    canary.unlink()
    torch_load_calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: torch_load_calls.append(a))
    with pytest.raises(NotAllowedError) as info:
        _ours(weights, example_pipeline)
    assert "safetensors" in str(info.value)
    assert not canary.exists() and torch_load_calls == []


def test_tampered_weights_against_lock_digest(tiny_weights, example_pipeline, tmp_path):
    from pipewarden.loader.components import load_components
    from pipewarden.loader.local import resolve_local_weights

    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    snap = resolve_local_weights(weights)
    digests: dict[str, str] = {}
    load_components(snap, digests_out=digests)
    f = weights / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as info:
        load_components(resolve_local_weights(weights), expected=digests)
    assert "unet/diffusion_pytorch_model.safetensors" in str(info.value)


# --- bad input: always a PipewardenError -----------------------------------------------------


@pytest.mark.parametrize(
    "payload, expect_line",
    [
        (b"\xff\xfe not utf-8", None),
        (b"from diffusers import DiffusionPipeline\x00\n", None),
        (b"from diffusers import DiffusionPipeline\n\nclass P(DiffusionPipeline:\n    pass\n", 3),
    ],
    ids=["non-utf8", "nul-byte", "syntax-error"],
)
def test_bad_source_is_scan_error(tiny_weights, tmp_path, payload, expect_line):
    code = tmp_path / "pipeline.py"
    code.write_bytes(payload)
    with pytest.raises(ScanError) as info:
        pipewarden.load_pipeline(
            tiny_weights, custom_pipeline=code, trust_remote_code=True, pipeline_sha256=sha256_file(code), isolation="inprocess"
        )
    if expect_line is not None:
        assert f"line {expect_line}" in str(info.value)


def test_missing_model_index_is_input_error(example_pipeline, tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(InputError) as info:
        _ours(tmp_path, example_pipeline)
    assert "model_index.json" in str(info.value)


@pytest.mark.parametrize(
    "entry",
    [["os", "system"], ["transformers", "CLIPTextModel"], ["diffusers", "DiffusionPipeline"], ["diffusers", "__class__"], "x"],
    ids=["os.system", "non-diffusers", "not-a-component-class", "dunder", "not-a-pair"],
)
def test_model_index_naming_bad_class_is_refused(tiny_weights, example_pipeline, tmp_path, entry):
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    index = json.loads((weights / "model_index.json").read_text())
    index["unet"] = entry
    (weights / "model_index.json").write_text(json.dumps(index))
    with pytest.raises((NotAllowedError, InputError)):
        _ours(weights, example_pipeline)


def test_missing_custom_pipeline_path_is_input_error(tiny_weights, tmp_path):
    with pytest.raises(InputError):
        pipewarden.load_pipeline(tiny_weights, custom_pipeline=tmp_path / "nope.py", trust_remote_code=True, pipeline_sha256="0" * 64)


def test_inprocess_isolation_warns_that_the_worker_is_the_boundary(tiny_weights):
    """Issue 12: the in-process mode says plainly what it is (defence in depth, not a boundary)."""
    from pipewarden.errors import InProcessIsolationWarning

    with pytest.warns(InProcessIsolationWarning, match="not a security boundary") as record:
        _ours(tiny_weights, seed_file())
    assert any('isolation="process"' in str(w.message) for w in record)
