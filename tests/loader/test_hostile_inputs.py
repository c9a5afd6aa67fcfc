"""Issue 12 flaws 11-12 (loader side): hostile weights, configs and revisions are clean
PipewardenErrors, and a config is checked against its tensors before anything is allocated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipewarden.errors import InputError, PipewardenError
from pipewarden.loader import _hf
from pipewarden.loader._safetensors import parse

# --------------------------------------------------------------------------- safetensors headers


def _blob(entries: dict, data: bytes = b"") -> bytearray:
    head = json.dumps(entries).encode()
    return bytearray(len(head).to_bytes(8, "little") + head + data)


@pytest.mark.parametrize(
    "shape",
    [[0, 2**63, 2**63], [2**40, 2**40], [0, 2**62], [0] * 40, [2**64], [1] * 65, [0, -1]],
)
def test_overflowing_shapes_are_clean_errors(shape):
    with pytest.raises(InputError):
        parse(_blob({"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}), where="x.safetensors")


@settings(max_examples=400, deadline=None)
@given(
    shape=st.lists(st.one_of(st.integers(0, 4), st.integers(2**30, 2**70), st.just(0)), max_size=70),
    dtype=st.sampled_from(["F32", "F16", "BF16", "F8_E4M3", "I64", "U8", "BOOL", "F64", "X"]),
    start=st.integers(-2, 2**64),
    end=st.integers(-2, 2**64),
    data=st.binary(max_size=64),
)
def test_any_safetensors_header_is_tensors_or_a_clean_error(shape, dtype, start, end, data):
    try:
        parse(_blob({"a": {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}}, data), where="x")
    except PipewardenError:
        pass


# --------------------------------------------------------------------------- revisions


@pytest.mark.parametrize(
    "revision",
    ["..", "../main", "main/..", "a/../b", "main\n", "ma\x00in", "\x1b[31m", "main ", "a b", "-rf", "x.lock", "a//b",
     "refs/heads/", "~1", "a:b", "\u2028", "x" * 300],
)
def test_bad_revisions_are_clean_errors(revision):
    with pytest.raises(InputError, match="invalid revision"):
        _hf.check_revision(revision)


@pytest.mark.parametrize("revision", ["main", "v0.42.1", "refs/pr/1", "release-1.0", "a" * 40, "feature/x_y+z"])
def test_good_revisions_pass(revision):
    assert _hf.check_revision(revision) == revision


@settings(max_examples=500, deadline=None)
@given(revision=st.text(max_size=40))
def test_any_revision_is_safe_or_a_clean_error(revision):
    try:
        rev = _hf.check_revision(revision)
    except InputError:
        return
    assert ".." not in rev and not any(ord(c) < 0x21 or ord(c) == 0x7F for c in rev) and not rev.startswith("/")


def test_bad_revision_through_load_pipeline_is_a_clean_error(tiny_weights, example_pipeline, monkeypatch, tmp_path):
    import pipewarden
    from pipewarden.loader.digests import sha256_file

    pin = sha256_file(example_pipeline)  # the code is admitted first; the revision is refused after
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    for bad in ("../../etc", "main\nx"):
        with pytest.raises(InputError):
            pipewarden.load_pipeline("org/weights", revision=bad, custom_pipeline=example_pipeline,
                                     trust_remote_code=True, pipeline_sha256=pin, isolation="inprocess")
        with pytest.raises(InputError):
            pipewarden.load_pipeline(tiny_weights, custom_pipeline="one_step_unet", custom_revision=bad,
                                     trust_remote_code=True, pipeline_sha256=pin, isolation="inprocess")


# --------------------------------------------------------------------------- configs in-process


@pytest.fixture
def weights(tmp_path, tiny_weights) -> Path:
    dst = tmp_path / "w"
    shutil.copytree(tiny_weights, dst)
    return dst


def _edit(weights: Path, rel: str, **changes: object) -> None:
    path = weights / rel
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


BAD_CONFIGS = [
    ("scheduler/scheduler_config.json", {"beta_schedule": "nope"}),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": 10**12}),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": 0}),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": "1000"}),
    ("scheduler/scheduler_config.json", {"beta_start": "x"}),
    ("unet/config.json", {"norm_num_groups": 0}),
    ("unet/config.json", {"block_out_channels": []}),
    ("unet/config.json", {"down_block_types": ["NoSuchBlock2D", "DownBlock2D"]}),
    ("unet/config.json", {"layers_per_block": -1}),
    ("unet/config.json", {"attention_head_dim": 0}),
    ("unet/config.json", {"in_channels": "three"}),
]


@pytest.mark.parametrize(("rel", "changes"), BAD_CONFIGS, ids=[f"{r.split('/')[0]}-{list(c)[0]}-{i}" for i, (r, c) in enumerate(BAD_CONFIGS)])
def test_invalid_configs_are_clean_errors_in_process(weights, example_pipeline, rel, changes):
    import pipewarden
    from pipewarden.loader.digests import sha256_file

    _edit(weights, rel, **changes)
    with pytest.raises(PipewardenError):
        pipewarden.load_pipeline(weights, custom_pipeline=example_pipeline, trust_remote_code=True,
                                 pipeline_sha256=sha256_file(example_pipeline), isolation="inprocess")


@pytest.mark.parametrize("factor", [64, 4096])
def test_enormous_config_is_refused_on_the_meta_device(weights, monkeypatch, factor):
    """A config describing far more weights than the safetensors hold is refused before the model
    is built on the CPU (no full-size construction: from_config is only ever called on meta)."""
    import torch

    from pipewarden.loader.components import load_components
    from pipewarden.loader.local import resolve_local_weights

    cfg = json.loads((weights / "unet" / "config.json").read_text())
    _edit(weights, "unet/config.json", block_out_channels=[c * factor for c in cfg["block_out_channels"]])
    real_device = torch.device
    built_off_meta: list[str] = []
    from diffusers import UNet2DModel

    original = UNet2DModel.from_config.__func__  # type: ignore[attr-defined]

    def spy(cls, *args, **kwargs):  # noqa: ANN001
        if torch.empty(()).device != real_device("meta"):
            built_off_meta.append(cls.__name__)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(UNet2DModel, "from_config", classmethod(spy))
    with pytest.raises(InputError, match="before anything is allocated"):
        load_components(resolve_local_weights(weights))
    assert built_off_meta == []
