"""No sandboxed value becomes a writable view of memory that is read-only (red team round 3, F5).

``torch.frombuffer(bytes([65]), dtype=torch.uint8)[0] = 66`` rewrote CPython's shared ``b"A"``
object in the host; ``numpy.ndarray(buffer=...)`` + ``torch.from_numpy`` did the same, and every
torch entry point that shares a numpy array's memory turned a read-only array writable. The
families below hand each entry point read-only memory the HOST owns (a bytes object, a read-only
array over it) and check, on the host, that its bytes did not change; a sweep over every torch
callable and tensor method the policy admits finds any entry point that would still return a
tensor over that memory; and the idioms real pipelines use still work (writable arrays keep
sharing memory with their tensors, ``isinstance``/``type(x) is torch.Tensor``/annotations).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import tomllib

from pipewarden.errors import PipewardenError, PolicyViolation
from pipewarden.sandbox import load_class

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

POLICY = Path(__file__).resolve().parents[2] / "src" / "pipewarden" / "sandbox" / "policy"

HEAD = '''\
import typing

import numpy
import numpy as np
import torch
from PIL import Image
from diffusers import DiffusionPipeline


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, buf=None, arr=None, names=(), methods=()):
'''


def _run(body: str, **kwargs):
    cls = load_class(HEAD + textwrap.indent(textwrap.dedent(body), " " * 8) + "\n", filename="p.py")
    return cls()(**kwargs)


def _host_memory() -> tuple[bytes, object]:
    """A bytes object the host owns (not a shared singleton: a failure stays in this test) and a
    read-only float32 array over it."""
    buf = bytes(bytearray(range(1, 17)))
    return buf, np.frombuffer(buf, dtype=np.float32)


#: (door, sandboxed code writing through it into buf/arr). Every door is live in plain Python.
DOORS = {
    "torch.frombuffer": "t = torch.frombuffer(buf, dtype=torch.uint8)\nt[0] = 200",
    "torch.frombuffer(array)": "t = torch.frombuffer(arr, dtype=torch.uint8)\nt[0] = 200",
    "torch.asarray(bytes)": "t = torch.asarray(buf, dtype=torch.uint8)\nt[0] = 200",
    "torch.asarray(array)": "t = torch.asarray(arr)\nt[0] = 200.0",
    "torch.as_tensor": "t = torch.as_tensor(arr)\nt[0] = 200.0",
    "torch.from_numpy": "t = torch.from_numpy(arr)\nt[0] = 200.0",
    "torch.Tensor": "t = torch.Tensor(arr)\nt[0] = 200.0",
    "torch.FloatTensor": "t = torch.FloatTensor(arr)\nt[0] = 200.0",
    "type(tensor)": "t = type(torch.zeros(1))(arr)\nt[0] = 200.0",
    "tensor.new": "t = torch.zeros(1).new(arr)\nt[0] = 200.0",
    "numpy view + from_numpy": "t = torch.from_numpy(arr.reshape(2, 2).T)\nt[0, 0] = 200.0",
    "numpy.ndarray(buffer=)": "a = numpy.ndarray(shape=(4,), dtype=numpy.uint8, buffer=buf)\nt = torch.from_numpy(a)\nt[0] = 200",
    "np.ndarray positional buffer": "a = np.ndarray((4,), np.uint8, buf)\nt = torch.from_numpy(a)\nt[0] = 200",
}


@pytest.mark.parametrize("door", sorted(DOORS))
def test_no_entry_point_writes_read_only_host_memory(door):
    buf, arr = _host_memory()
    before = bytes(bytearray(buf))
    try:
        _run(DOORS[door] + "\nreturn None", buf=buf, arr=arr)
    except PipewardenError:
        pass  # refused (numpy.ndarray(buffer=...)): fine, as long as nothing was written
    assert buf == before, f"{door} wrote the host's read-only memory"
    assert not arr.flags.writeable


def test_the_bytes_singleton_of_the_finding_is_not_rewritten():
    value = 0xF7  # one shared object per process: a failure here corrupts only b"\xf7"
    out = _run(f"t = torch.frombuffer(bytes([{value}]), dtype=torch.uint8)\nt[0] = 1\nreturn t.tolist()")
    assert out == [1]  # the write happened, on the sandbox's own copy
    assert bytes([value])[0] == value and b"\xf7" == bytes([value])


def test_ndarray_buffer_is_refused_with_its_rule():
    with pytest.raises(PolicyViolation) as info:
        _run("return np.ndarray(shape=(1,), dtype=np.uint8, buffer=buf)", buf=b"x")
    assert info.value.rule == "argument.foreign-memory"


@pytest.mark.parametrize("base", ["torch.Tensor", "numpy.ndarray"])
def test_tensor_and_array_classes_are_not_subclassable(base):
    with pytest.raises(PolicyViolation):
        _run(f"class T({base}):\n    pass\nreturn T")


# ------------------------------------------------------------------------------- the sweep

def _admitted_torch_names() -> tuple[list[str], list[str]]:
    ops = tomllib.loads((POLICY / "torch_ops.toml").read_text())["operators"]
    default = tomllib.loads((POLICY / "default.toml").read_text())
    torch_rule = default["modules"]["torch"]
    functions = sorted(set(ops) | set(torch_rule["attrs"]) | set(torch_rule.get("replace", {})))
    tensor_attrs = default["types"]["torch.Tensor"]["attrs"]
    methods = sorted(set(tensor_attrs) | set(ops) | {f"{o}_" for o in ops})
    return functions, methods


SWEEP = '''
found = []
inputs = [buf, arr, arr.reshape(2, 2)]
kwargs = [{}, {"dtype": torch.uint8}, {"dtype": torch.float32}]
for name in names:
    try:
        fn = getattr(torch, name)
    except Exception:
        continue
    for value in inputs:
        for kw in kwargs:
            try:
                found.append(("torch." + name, fn(value, **kw)))
            except Exception:
                pass
probe = torch.zeros(4)
for name in methods:
    try:
        fn = getattr(probe, name)
    except Exception:
        continue
    for value in inputs:
        for kw in kwargs:
            try:
                found.append(("tensor." + name, fn(value, **kw)))
            except Exception:
                pass
return found
'''


def _views(result: object, lo: int, hi: int) -> bool:
    items = result if isinstance(result, (list, tuple)) else [result]
    for item in items:
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            ptr, size = storage.data_ptr(), storage.nbytes()
            if size and ptr < hi and ptr + size > lo:
                return True
    return False


def test_no_admitted_torch_callable_or_tensor_method_returns_a_view_of_read_only_memory():
    functions, methods = _admitted_torch_names()
    buf, arr = _host_memory()
    lo = arr.__array_interface__["data"][0]
    hi = lo + arr.nbytes
    found = _run(SWEEP, buf=buf, arr=arr, names=functions, methods=methods)
    called = {name for name, _ in found}  # the sweep reached the entry points it must judge
    assert {"torch.frombuffer", "torch.from_numpy", "torch.asarray", "torch.as_tensor", "torch.Tensor",
            "torch.FloatTensor", "tensor.new"} <= called, sorted(called)
    aliasing = sorted({name for name, result in found if _views(result, lo, hi)})
    assert aliasing == [], f"these return tensors over read-only host memory: {aliasing}"


# --------------------------------------------------------------------------- idioms still work


def test_writable_arrays_still_share_memory_and_idioms_still_work():
    out = _run('''
    a = np.zeros(2, dtype=np.float32)
    t = torch.from_numpy(a)
    t[0] = 3.0
    shared = a.tolist()
    img = torch.from_numpy(np.asarray(Image.new("RGB", (2, 2), (1, 2, 3)))).tolist()
    legacy = (torch.Tensor([1, 2]).tolist(), torch.LongTensor([3]).tolist(), torch.FloatTensor(np.ones(2, np.float32)).tolist())
    x = torch.zeros(1)
    checks = (isinstance(x, torch.Tensor), isinstance(a, np.ndarray), isinstance(x, (np.ndarray, torch.Tensor)),
              type(x) is torch.Tensor, type(a) == np.ndarray, x.__class__ == torch.Tensor, type(x).__name__,
              np.ndarray((2,), dtype=np.float32).shape)
    hint: typing.Optional[torch.Tensor] = None
    return shared, img, legacy, checks, repr(typing.Union[torch.Tensor, np.ndarray])
    ''')
    shared, img, legacy, checks, hint = out
    assert shared == [3.0, 0.0]  # from_numpy of a writable array still aliases it (diffusers relies on it)
    assert img == [[[1, 2, 3], [1, 2, 3]], [[1, 2, 3], [1, 2, 3]]]
    assert legacy == ([1.0, 2.0], [3], [1.0, 1.0])
    assert checks == (True, True, True, True, True, True, "Tensor", (2,))
    assert "torch.Tensor" in hint and "numpy.ndarray" in hint
