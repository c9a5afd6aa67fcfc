"""The numpy/torch/PIL entry points (runtime/arrays.py) and names through data paths
(runtime/names.py).

The consumer-side check is tested on its own here: the forged objects are built by the host (as
if a producer-side door had been missed) and handed to the sandboxed pipeline as arguments; the
pipeline then tries to read/write host memory through numpy's array protocols. Each case checks
that the host buffer is unchanged, and a control proves the same object does write host memory
when numpy receives it outside the sandbox.
"""

from __future__ import annotations

import types

import pytest

from pipewarden.errors import PolicyViolation
from pipewarden.sandbox import load_class

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
PIL_Image = pytest.importorskip("PIL.Image")

SOURCE = '''\
import numpy as np
import torch
import PIL.Image
from diffusers import DiffusionPipeline


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, how, x):
        if how == "asarray":
            view = np.asarray(x)
        elif how == "array":
            view = np.array(x, copy=False)
        elif how == "ufunc":
            view = np.add(x, 0)
            view = np.asarray(x)
        elif how == "nested":
            view = np.asarray([x])[0]
        elif how == "concatenate":
            view = np.concatenate([x])
        elif how == "fromarray":
            PIL.Image.fromarray(x)
            view = np.asarray(x)
        elif how == "as_tensor":
            view = torch.as_tensor(x)
        elif how == "method":
            view = np.zeros(4, dtype=np.uint8)
            view.fill(x)
        elif how == "setitem":
            view = np.zeros((1, 4), dtype=np.uint8)
            view[0] = x
        elif how == "index":
            view = np.zeros(4, dtype=np.uint8)[x]
        else:
            raise ValueError(how)
        view[0] = 77
        return "done"
'''

HOW = ["asarray", "array", "ufunc", "nested", "concatenate", "fromarray", "as_tensor", "method", "setitem", "index"]


class _Buffer:
    """A host buffer and the array interface that points into it."""

    def __init__(self) -> None:
        self.data = bytearray(b"host-state-bytes")
        self.original = bytes(self.data)
        probe = np.frombuffer(self.data, dtype=np.uint8)
        self.address = int(probe.ctypes.data)
        del probe

    def interface(self) -> dict:
        return {"data": (self.address, False), "shape": (len(self.data),), "typestr": "|u1", "version": 3}

    def unchanged(self) -> bool:
        return bytes(self.data) == self.original


def _instance_dunder(buf: _Buffer):
    return types.SimpleNamespace(**{"__array_interface__": buf.interface()})


def _getattr_hook(buf: _Buffer):
    interface = buf.interface()

    class AnswersAnything:
        def __getattr__(self, name):
            if name == "__array_interface__":
                return interface
            raise AttributeError(name)

    return AnswersAnything()


def _class_property(buf: _Buffer):
    interface = buf.interface()

    class HasProperty:
        @property
        def __array_interface__(self):
            return interface

    return HasProperty()


def _dunder_array(buf: _Buffer):
    class HasArray:
        def __array__(self, dtype=None, copy=None):
            return np.frombuffer(buf.data, dtype=np.uint8)

    return HasArray()


FORGERS = {
    "instance-dunder": _instance_dunder,
    "getattr-hook": _getattr_hook,
    "class-property": _class_property,
    "dunder-array": _dunder_array,
}


@pytest.fixture(scope="module")
def pipeline():
    return load_class(SOURCE)()


@pytest.mark.parametrize("forger", sorted(FORGERS))
def test_control_forged_object_writes_host_memory_outside_the_sandbox(forger):
    buf = _Buffer()
    view = np.asarray(FORGERS[forger](buf))
    view[0] = 77
    assert not buf.unchanged()  # the object really is a host-memory primitive


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("forger", sorted(FORGERS))
def test_array_entry_points_refuse_forged_protocols(pipeline, forger, how):
    buf = _Buffer()
    forged = FORGERS[forger](buf)
    with pytest.raises(PolicyViolation) as info:
        pipeline(how, forged)
    assert info.value.rule == "argument.array-like", info.value
    assert buf.unchanged()


def test_array_entry_points_refuse_forged_objects_in_nested_lists_and_dicts(pipeline):
    buf = _Buffer()
    with pytest.raises(PolicyViolation) as info:
        pipeline("asarray", [[1, 2], {"k": [_instance_dunder(buf)]}])
    assert info.value.rule == "argument.array-like"
    assert buf.unchanged()


IDIOMS = '''\
import numpy as np
import torch
import torch.nn.functional as F
import PIL.Image
from diffusers import DiffusionPipeline


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, image, images, generator):
        a = np.array(image).astype(np.float32) / 255.0
        b = np.stack([np.array(i) for i in images], axis=0)
        c = torch.from_numpy(a.transpose(2, 0, 1)).unsqueeze(0)
        d = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float32)
        e = torch.cat((c, c), dim=0)
        f = F.interpolate(e, size=(4, 4), mode="bilinear", align_corners=False)
        g = torch.randn((1, 3, 2, 2), generator=generator, dtype=torch.float32, device=torch.device("cpu"))
        h = np.concatenate([a, a], axis=1)
        h[0] = np.zeros_like(h[0])
        h[1, 0] = 0.5
        i = np.clip(h * 2, 0, 1)[[0, 1]]
        j = PIL.Image.fromarray((i * 255).round().astype(np.uint8))
        k = torch.as_tensor(np.asarray(j), dtype=torch.float32).sum()
        return [a, b, c, d, e, f, g, h, i, np.asarray(j), k, torch.stack(list(e), 0)]
'''


def _run_idioms(cls):
    image = PIL_Image.fromarray((np.arange(4 * 4 * 3) % 255).astype(np.uint8).reshape(4, 4, 3))
    return cls()(image, [image, image.copy()], torch.Generator().manual_seed(7))


def test_real_array_idioms_still_run_and_match_plain_python(tmp_path):
    sandboxed = _run_idioms(load_class(IDIOMS))
    namespace: dict = {}
    exec(compile(IDIOMS, str(tmp_path / "plain.py"), "exec"), namespace)  # noqa: S102 - our own source
    plain = _run_idioms(namespace["P"])
    assert len(sandboxed) == len(plain)
    for got, want in zip(sandboxed, plain, strict=True):
        assert type(got) is type(want)
        if isinstance(want, torch.Tensor):
            assert torch.equal(got, want)
        else:
            assert np.array_equal(got, want)


# ---------------------------------------------------------------------------------------------------
# Names through data paths: the module registries take public identifiers only


NAMES = '''\
import torch
from diffusers import DiffusionPipeline


class Params(torch.nn.ParameterDict):
    pass


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, how, name):
        if how == "moduledict":
            made = torch.nn.ModuleDict({name: torch.nn.Identity()})
        elif how == "paramdict":
            made = torch.nn.ParameterDict({name: torch.nn.Parameter(torch.zeros(1))})
        elif how == "owned-setitem":
            made = Params()
            made[name] = torch.nn.Parameter(torch.zeros(1))
        elif how == "sequential":
            import collections
            made = torch.nn.Sequential(collections.OrderedDict([(name, torch.nn.Identity())]))
        else:
            raise ValueError(how)
        return sorted(made.state_dict()) + sorted(dict(made.named_children()))
'''


@pytest.mark.parametrize("how", ["moduledict", "paramdict", "owned-setitem", "sequential"])
@pytest.mark.parametrize(
    ("name", "rule"),
    [("_parameters", "argument.attribute-name"), ("_modules", "argument.attribute-name"),
     ("__array_interface__", "argument.dunder-key"), ("__reduce_ex__", "argument.dunder-key")],
)
def test_module_registry_names_are_public_identifiers(how, name, rule):
    pipe = load_class(NAMES)()
    with pytest.raises(PolicyViolation) as info:
        pipe(how, name)
    assert info.value.rule == rule


@pytest.mark.parametrize("how", ["moduledict", "paramdict", "owned-setitem", "sequential"])
def test_module_registries_with_public_names_still_work(how):
    pipe = load_class(NAMES)()
    assert "block" in " ".join(pipe(how, "block"))


# ---------------------------------------------------------------------------------------------------
# Provenance travels with values: parameters of sandboxed functions, whoever calls them

PARAMS = '''\
from diffusers import DiffusionPipeline


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def probe(self, sink, value):
        sink.append("ran")
        return value

    def stream(self, sink, value):
        sink.append("ran")
        yield value

    def __call__(self):
        return None
'''


@pytest.mark.parametrize("method", ["probe", "stream"])
@pytest.mark.parametrize("kind", ["module", "frame", "raw-builtin", "metaclass"])
def test_host_cannot_hand_forbidden_values_to_sandboxed_functions(method, kind):
    import os
    import sys

    value = {"module": os, "frame": sys._getframe(), "raw-builtin": eval, "metaclass": type}[kind]
    pipe = load_class(PARAMS)()
    sink: list[str] = []
    with pytest.raises(PolicyViolation) as info:
        result = getattr(pipe, method)(sink, value=value)
        if method == "stream":
            next(result)
    assert info.value.rule.startswith("value."), info.value
    assert sink == []  # the function body never ran with the value


def test_sandboxed_functions_still_take_ordinary_host_values():
    pipe = load_class(PARAMS)()
    sink: list[str] = []
    t = torch.zeros(2)
    assert pipe.probe(sink, t) is t
    assert sink == ["ran"]
