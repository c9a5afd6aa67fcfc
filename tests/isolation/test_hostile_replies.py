"""Issue 12 flaws 11-12: a hostile worker reply is a clean WorkerError, and bounded host work.

bfloat16 / float8 arrays and images, 900-deep configs, thousands of output class names, a header
over its own limit (the message names the right limit), and property tests over arbitrary JSON
trees: the host raises WorkerError (or ResourceLimitError) and nothing else.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from pipewarden.errors import PipewardenError, ResourceLimitError, WorkerError
from pipewarden.isolation.wire import codec
from pipewarden.isolation.wire.framing import MAX_HEADER_BYTES, Frame, encode_frame, read_frame
from pipewarden.isolation.wire.messages import parse

TAG = "__pw__"


def _result(value: object, tensors: dict[str, torch.Tensor] | None = None) -> object:
    payload = save(tensors) if tensors else b""
    return parse(Frame({"kind": "result", "value": value}, payload))


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64, torch.uint16, torch.uint32]
)
@pytest.mark.parametrize("tag", ["ndarray", "pil"])
def test_arrays_without_a_numpy_dtype_are_clean_errors(dtype, tag):
    try:
        t = torch.zeros((4, 4, 3), dtype=dtype)
        tensors = {"t0": t}
        save(tensors)
    except (RuntimeError, TypeError):
        pytest.skip(f"safetensors cannot carry {dtype}")
    node = {TAG: tag, "ref": "t0"} if tag == "ndarray" else {TAG: "pil", "mode": "RGB", "ref": "t0"}
    with pytest.raises(WorkerError):
        _result(node, tensors)


def test_a_bfloat16_tensor_result_still_crosses_as_a_tensor():
    out = _result({TAG: "tensor", "ref": "t0"}, {"t0": torch.ones(2, dtype=torch.bfloat16)})
    assert out.value.dtype == torch.bfloat16  # type: ignore[attr-defined]


@pytest.mark.parametrize("depth", [33, 100, 900])
@pytest.mark.parametrize("where", ["config", "component", "list"])
def test_deep_configs_are_clean_errors(depth, where):
    deep: object = 1
    for _ in range(depth):
        deep = [deep] if where == "list" else {"k": deep}
    header = {"kind": "loaded", "class_name": "P", "config": {}, "components": {}, "types": {}}
    if where == "config":
        header["config"] = {"x": deep}
    else:
        header["components"] = {"unet": {"x": deep}}
    raw = encode_frame(header)
    r, w = os.pipe()
    try:
        os.write(w, raw)
        os.close(w)
        try:
            frame = read_frame(r, max_bytes=len(raw) + 1)
        except WorkerError:
            return  # refused while parsing JSON: also clean
        with pytest.raises(WorkerError):
            parse(frame)
    finally:
        os.close(r)


def test_thousands_of_output_class_names_build_no_host_class():
    import torch.utils._pytree as pytree

    codec.isolated_output_class()
    before = len(pytree.SUPPORTED_NODES)  # every BaseOutput subclass registers itself here, forever
    value = [{TAG: "output", "cls": f"Out{i}", "fields": {"images": [i]}} for i in range(6000)]
    out = _result(value).value  # type: ignore[attr-defined]
    assert {type(o) for o in out} == {codec.isolated_output_class()}
    assert [o.class_name for o in out[:3]] == ["Out0", "Out1", "Out2"] and out[5].images == [5]
    assert len(pytree.SUPPORTED_NODES) == before


def test_known_outputs_are_diffusers_classes():
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    out = _result({TAG: "output", "cls": "ImagePipelineOutput", "fields": {"images": [1]}})
    assert type(out.value) is ImagePipelineOutput  # type: ignore[attr-defined]


def test_a_custom_output_still_behaves_like_diffusers():
    from diffusers.utils import BaseOutput

    out = _result({TAG: "output", "cls": "MyOutput", "fields": {"images": [1], "nsfw": None}}).value  # type: ignore[attr-defined]
    assert out.images == [1] and out[0] == [1] and out["images"] == [1] and out.nsfw is None
    assert out.to_tuple() == ([1],) and list(out.keys()) == ["images"]
    assert isinstance(out, BaseOutput) and out.class_name == "MyOutput" and "MyOutput" in repr(out)


def test_oversized_header_message_names_the_header_limit():
    max_bytes = MAX_HEADER_BYTES * 4
    head_len = MAX_HEADER_BYTES + 10
    prefix = b"PWF1" + head_len.to_bytes(4, "big") + (0).to_bytes(8, "big")
    r, w = os.pipe()
    try:
        os.write(w, prefix)
        with pytest.raises(ResourceLimitError) as info:
            read_frame(r, max_bytes=max_bytes)
    finally:
        os.close(r)
        os.close(w)
    msg = str(info.value)
    assert f"over the header limit of {MAX_HEADER_BYTES}" in msg
    assert f"over the limit of {max_bytes}" not in msg  # the old message: a size below the limit "over" it


def test_oversized_message_still_reports_its_size_and_limit():
    prefix = b"PWF1" + (10).to_bytes(4, "big") + (1000).to_bytes(8, "big")
    r, w = os.pipe()
    try:
        os.write(w, prefix)
        with pytest.raises(ResourceLimitError, match="1010 bytes, over the limit of 100"):
            read_frame(r, max_bytes=100)
    finally:
        os.close(r)
        os.close(w)


# --------------------------------------------------------------------------- property tests

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["__pw__", "v", "ref", "cls", "fields", "mode", "device", "x"]), children, max_size=4)
    | st.fixed_dictionaries(
        {TAG: st.sampled_from(["tuple", "dict", "float", "tensor", "ndarray", "pil", "dtype", "device", "output", "generator", "?"])},
        optional={"v": children, "ref": st.sampled_from(["t0", "t1", "zz", 3]), "cls": st.text(max_size=12),
                  "fields": children, "mode": st.sampled_from(["L", "RGB", "RGBA", "P", 1]), "device": st.text(max_size=6)},
    ),
    max_leaves=30,
)
_dtypes = st.sampled_from([torch.float32, torch.bfloat16, torch.uint8, torch.float8_e4m3fn, torch.int64, torch.bool])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_json, dtype=_dtypes, shape=st.lists(st.integers(0, 4), max_size=4))
def test_any_result_tree_is_a_value_or_a_worker_error(value, dtype, shape):
    tensors = {"t0": torch.zeros(shape, dtype=dtype), "t1": torch.ones(3, dtype=torch.uint8)}
    try:
        _result(value, tensors)
    except PipewardenError:
        pass


@settings(max_examples=200, deadline=None)
@given(header=st.dictionaries(st.sampled_from(["kind", "value", "config", "components", "types", "class_name", "step",
                                              "timestep", "tensors", "bar", "n", "total", "error", "what", "pid", "layers"]),
                              _json, max_size=6),
       kind=st.sampled_from(["result", "loaded", "callback", "progress", "error", "ready", "ok", "zzz"]))
def test_any_message_header_is_a_message_or_a_worker_error(header, kind):
    header = dict(header, kind=kind)
    try:
        parse(Frame(json.loads(json.dumps(header)), b""))
    except PipewardenError:
        pass


@pytest.mark.parametrize(
    "fields",
    [{"n": 10**4000}, {"n": 2**53 + 1}, {"n": 1, "total": 10**4000}, {"n": 1, "total": 2**53 + 1}, {"n": -1}],
)
def test_progress_counts_a_host_bar_cannot_draw_are_clean_errors(fields):
    # red team round 9: n=10**4000 raised OverflowError inside tqdm on the host
    with pytest.raises(WorkerError):
        parse(Frame({"kind": "progress", "bar": 0, **fields}, b""))


def test_progress_counts_up_to_what_a_float_holds_exactly_are_accepted():
    msg = parse(Frame({"kind": "progress", "bar": 0, "n": 2**53, "total": 2**53}, b""))
    assert (msg.n, msg.total) == (2**53, 2**53)  # type: ignore[attr-defined]
