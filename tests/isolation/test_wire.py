"""The host/worker boundary without a worker: frames, value codec, message parsing, BPF program.

Hostile bytes must end in WorkerError / ResourceLimitError (or a clean EOF), never in an
unpickle, never in another exception type.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipewarden.errors import PipewardenError, ResourceLimitError, WorkerError
from pipewarden.isolation.layers import seccomp as _seccomp
from pipewarden.isolation.layers.apply import LAYER_NAMES, LayerPlan
from pipewarden.isolation.wire import codec as _codec
from pipewarden.isolation.wire import framing as _wire
from pipewarden.isolation.wire import messages as _messages


def _pipe_with(data: bytes) -> int:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def _read(data: bytes, *, max_bytes: int = 1 << 20):
    fd = _pipe_with(data)
    try:
        return _wire.read_frame(fd, max_bytes=max_bytes, deadline=None)
    finally:
        os.close(fd)


class _Canary:
    path = ""

    def __reduce__(self):
        return (Path(self.path).touch, ())


@pytest.fixture
def unpickle_alarm():
    """Records every pickle.find_class / unpickling-related audit event during the test."""
    events: list[str] = []

    def hook(event, args):
        if event.startswith("pickle."):
            events.append(event)

    sys.addaudithook(hook)
    yield events


def test_pickle_payload_as_frame_is_refused_and_never_unpickled(tmp_path, unpickle_alarm):
    canary = tmp_path / "unpickled"
    _Canary.path = str(canary)
    payload = pickle.dumps(_Canary())
    with pytest.raises(WorkerError, match="bad magic"):
        _read(payload + b"\0" * 32)
    # also as the body of a well-formed frame: parsed as JSON, refused
    frame = _wire.MAGIC + struct.pack(">IQ", len(payload), 0) + payload
    with pytest.raises(WorkerError):
        _read(frame)
    frame = _wire.encode_frame({"kind": "result", "value": {"__pw__": "tensor", "ref": "t0"}}, payload)
    with pytest.raises(WorkerError):
        _messages.parse(_read(frame))
    assert not canary.exists()
    assert unpickle_alarm == []


def test_oversize_announcement_is_refused_before_reading_the_body():
    head = _wire.MAGIC + struct.pack(">IQ", 10, 1 << 40)
    with pytest.raises(ResourceLimitError, match="over the limit"):
        _read(head)  # nothing else in the pipe: it must not try to read 1 TiB
    with pytest.raises(ResourceLimitError):
        _read(_wire.MAGIC + struct.pack(">IQ", 2 << 20, 0), max_bytes=1 << 20)


def test_eof_mid_frame_is_reported_as_partial():
    with pytest.raises(_wire.PeerClosed) as info:
        _read(_wire.MAGIC + struct.pack(">IQ", 100, 0) + b"{")
    assert info.value.partial
    with pytest.raises(_wire.PeerClosed) as info:
        _read(b"")
    assert not info.value.partial


def test_deadline_on_a_silent_pipe():
    r, w = os.pipe()
    try:
        import time

        with pytest.raises(_wire.FrameTimeout):
            _wire.read_frame(r, max_bytes=1024, deadline=time.monotonic() + 0.05)
    finally:
        os.close(r)
        os.close(w)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_the_error_tree(data):
    for blob in (data, _wire.MAGIC + data, _wire.MAGIC + struct.pack(">IQ", len(data), 0) + data):
        try:
            frame = _read(blob)
            _messages.parse(frame)
        except (WorkerError, ResourceLimitError, _wire.PeerClosed):
            pass


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.floats(allow_nan=False),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(["__pw__", "v", "ref", "cls", "fields", "mode", "x"]), kids, max_size=4),
        max_leaves=20,
    )
)
def test_arbitrary_json_results_never_escape_the_error_tree(tree):
    frame = _wire.Frame({"kind": "result", "value": tree}, b"")
    try:
        _messages.parse(frame)
    except WorkerError:
        pass


def _roundtrip(value, *, generators=False):
    enc = _codec.Encoder(allow_generators=generators)
    tree = enc.encode(value)
    dec = _codec.Decoder(_codec.load_tensors(enc.payload()), allow_generators=generators)
    return dec.decode(tree), enc, dec


def test_values_round_trip_exactly():
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    t = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    img = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    out = ImagePipelineOutput(images=[img])
    value = {"t": t, "a": arr, "img": img, "out": out, "tup": (1, 2.5, None, "x", float("nan")), "dt": torch.float16}
    got, _, _ = _roundtrip(value)
    assert torch.equal(got["t"], t) and got["t"].dtype == t.dtype
    assert isinstance(got["a"], np.ndarray) and np.array_equal(got["a"], arr)
    assert isinstance(got["img"], Image.Image) and got["img"].mode == "RGB"
    assert np.array_equal(np.asarray(got["img"]), np.asarray(img))
    assert type(got["out"]) is ImagePipelineOutput
    assert np.array_equal(np.asarray(got["out"].images[0]), np.asarray(img))
    assert got["tup"][:4] == (1, 2.5, None, "x") and np.isnan(got["tup"][4])
    assert got["dt"] is torch.float16


def test_generator_state_crosses_host_to_worker_only():
    g = torch.Generator().manual_seed(123)
    got, enc, dec = _roundtrip({"generator": g}, generators=True)
    assert torch.equal(got["generator"].get_state(), g.get_state())
    assert enc.generators == [g] and len(dec.generators) == 1
    with pytest.raises(_codec.EncodeError):
        _codec.Encoder(allow_generators=False).encode(g)
    enc = _codec.Encoder(allow_generators=True)
    tree = enc.encode(g)
    with pytest.raises(WorkerError):
        _codec.Decoder(_codec.load_tensors(enc.payload()), allow_generators=False).decode(tree)


def test_objects_that_cannot_cross_are_refused_at_encoding():
    for value in (object(), {1: 2}, np.array([object()]), b"bytes", lambda: 0):
        with pytest.raises(_codec.EncodeError):
            _codec.Encoder(allow_generators=True).encode(value)


@pytest.mark.parametrize(
    "tree",
    [
        {"__pw__": "pickle", "v": "x"},
        {"__pw__": "tensor", "ref": "missing"},
        {"__pw__": "dtype", "v": "Tensor"},
        {"__pw__": "dtype", "v": "__class__"},
        {"__pw__": "output", "cls": "os.system", "fields": {}},
        {"__pw__": "output", "cls": "X", "fields": {"__init__": 1}},
        {"__pw__": "pil", "mode": "P", "ref": "t0"},
        {"__pw__": "float", "v": "1e999999"},
        [{"__pw__": "tensor", "ref": "t0"}, {"__pw__": "tensor", "ref": "t0"}],
    ],
)
def test_decoder_rejects_malformed_trees(tree):
    from safetensors.torch import save

    payload = save({"t0": torch.zeros(2, 2, dtype=torch.uint8)})
    with pytest.raises(WorkerError):
        _codec.Decoder(_codec.load_tensors(payload), allow_generators=False).decode(tree)


def test_deeply_nested_result_is_refused():
    tree: object = 1
    for _ in range(100):
        tree = [tree]
    with pytest.raises(WorkerError):
        _codec.Decoder({}, allow_generators=False).decode(tree)


def test_messages_are_parsed_into_frozen_objects():
    ready = _messages.parse(_wire.Frame({"kind": "ready", "pid": 5, "layers": [{"name": "seccomp", "active": True, "detail": "x"}]}, b""))
    assert isinstance(ready, _messages.Ready) and ready.layers[0].name == "seccomp"
    with pytest.raises(AttributeError):
        ready.pid = 6  # type: ignore[misc]
    loaded = _messages.parse(
        _wire.Frame({"kind": "loaded", "class_name": "P", "config": {"a": [1, {"b": 2}]}, "components": {"unet": {"sample_size": 8}}, "types": {"unet": "UNet2DModel"}}, b"")
    )
    assert loaded.config["a"][1].b == 2 and loaded.components["unet"].sample_size == 8
    with pytest.raises((TypeError, AttributeError)):
        loaded.config["x"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        loaded.components["unet"].sample_size = 9
    for bad in (
        {"kind": "ready", "pid": "5", "layers": []},
        {"kind": "ready", "pid": 5, "layers": [{"name": "made-up", "active": True}]},
        {"kind": "error", "error": "os.system()", "what": "x", "rule": "limits.memory"},
        {"kind": "error", "error": "WorkerError", "what": "x"},  # every error names a rule id
        {"kind": "error", "error": "WorkerError", "what": "x", "rule": "a sentence, not an id"},
        {"kind": "nope"},
        {"kind": "result"},
    ):
        with pytest.raises(WorkerError):
            _messages.parse(_wire.Frame(bad, b""))
    fail = _messages.parse(
        _wire.Frame({"kind": "error", "error": "ResourceLimitError", "what": "w" * 10000, "rule": "limits.memory"}, b"")
    )
    assert isinstance(fail, _messages.Failure) and len(fail.what) <= 4000 and fail.rule == "limits.memory"


def test_load_request_is_one_frozen_type_on_both_sides():
    req = _messages.LoadRequest(
        source_sha256="a" * 64,
        filename="pipeline.py",
        root="/w",
        source="local:/w",
        commit=None,
        files=(_messages.LoadFile("unet/x.safetensors", "b" * 64, 3), _messages.LoadFile("model_index.json", "", 1)),
        torch_dtype="float16",
        policy_extras={"einops": ("rearrange",)},
        import_aliases={"MuseVdiffusers": "diffusers"},
        gpu_memory_fraction=0.5,
        digest_records=((1, 2, 3, 4, 5, "c" * 64, 6, ""),),
        host_uid=1000,
    )
    header = json.loads(json.dumps(req.header()))  # what crosses the pipe
    assert _messages.LoadRequest.parse(header) == req
    for key, value in [
        ("source_sha256", "A" * 64),
        ("files", {"x": {"sha256": "b" * 64}}),
        ("files", {"x": {"sha256": "b" * 64, "size": -1}}),
        ("files", {"x": {"sha256": "zz", "size": 1}}),
        ("torch_dtype", "__class__"),
        ("policy_extras", {"einops": "rearrange"}),
        ("import_aliases", {"a": 1}),
        ("gpu_memory_fraction", True),
        ("digest_records", {"a": 1}),
        ("host_uid", -1),
        ("op", "call"),
    ]:
        with pytest.raises(PipewardenError) as exc:
            _messages.LoadRequest.parse({**header, key: value})
        assert exc.value.rule == "worker.protocol"


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_seccomp_program_shape(arch):
    prog = _seccomp.build_filter(arch)
    assert len(prog) % 8 == 0 and len(prog) // 8 < 4096
    code, jt, jf, k = struct.unpack("HBBI", prog[8:16])
    assert code == 0x15 and k == {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[arch]
    assert struct.unpack("HBBI", prog[-8:]) == (0x06, 0, 0, 0x7FFF0000)  # default allow comes last
    names = _seccomp.denied_syscalls(arch)
    for must in ("socket", "execve", "ptrace", "mount", "unshare", "setns", "bpf", "io_uring_setup"):
        assert must in names


def test_layer_plan_round_trips_through_json():
    plan = LayerPlan(scratch="/s", read_paths=("/a", "/b"), memory_mb=1, cpu_s=2, file_size_mb=3, open_files=4, processes=5, gpu=True, skip=frozenset({"seccomp"}))
    assert LayerPlan.from_json(plan.to_json()) == plan
    assert "wall-clock" in LAYER_NAMES


def test_frozen_config_never_exposes_underscore_keys_as_attributes():
    import numpy as np

    from pipewarden.isolation.wire.messages import FrozenConfig

    cfg = FrozenConfig({"__array_interface__": {"data": (0, False), "shape": (8,), "typestr": "|u1", "version": 3}, "x": 1})
    assert cfg.x == 1
    assert cfg["__array_interface__"]["shape"] == (8,) or cfg["__array_interface__"]["shape"] == [8]
    with pytest.raises(AttributeError):
        cfg.__array_interface__  # noqa: B018
    assert not hasattr(cfg, "__array_interface__")
    arr = np.asarray(cfg)  # a dict to numpy (an object scalar), never a raw-memory interface
    assert arr.dtype.kind == "O" and arr.shape == () and arr.item() is cfg


def test_worker_text_fields_lose_terminal_controls_at_parse():
    osc52 = "\x1b]52;c;Y3VybA==\x07"
    err = _messages.parse(
        _wire.Frame({"kind": "error", "error": "PolicyViolation", "what": osc52 + "what", "rule": "worker.protocol", "fix": "\u202efix\r"}, b"")
    )
    assert err.what == "\\x1b]52;c;Y3VybA==\\x07what" and err.fix == "\\u202efix\\x0d"
    ready = _messages.parse(
        _wire.Frame({"kind": "ready", "pid": 5, "layers": [{"name": "seccomp", "active": True, "detail": "\x1b[2Jd\td"}]}, b"")
    )
    assert ready.layers[0].detail == "\\x1b[2Jd\td"
    assert _messages.parse(_wire.Frame({"kind": "ok", "detail": "\x9b31m"}, b"")).detail == "\\x9b31m"
