"""Issue 12, flaws 3 and 4: the tripwire is armed by code origin; attribute keys are checked on
what is actually stored.

The callbacks below are TRUSTED host functions supplied by the test; each tries to write a file.
Called from host code while a frame compiled from the pipeline is on the stack, the write must be
refused and the file must not exist, whoever called the pipeline's code."""

from __future__ import annotations

import sys

import pytest

from pipewarden.errors import PolicyViolation
from pipewarden.sandbox import load_class, tripwire

torch = pytest.importorskip("torch")

SOURCE = '''
import collections
import torch
from diffusers import DiffusionPipeline


class OriginPipeline(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def finaliser(self, cb):
        try:
            yield 1
            yield 2
        finally:
            cb()

    def genexp(self, cb):
        return (cb() for _ in [0])

    def namedtuple_genexp(self, cb):
        return collections.namedtuple("T", (cb() or "a" for _ in [0]))

    def namedtuple_map(self, cb):
        return collections.namedtuple("T", map(cb, ["a"]))

    def key(self, value):
        return HOOK[0](value)

    def __call__(self):
        return torch.zeros(1)


HOOK = [None]
'''


@pytest.fixture(scope="module")
def pipe():
    cls = load_class(SOURCE, filename="origin.py")
    return cls()


def _writer(target):
    def write(*_args):
        with open(target, "w") as fh:
            fh.write("escaped")
        return "a"

    return write


def test_generator_close_runs_finally_armed(pipe, tmp_path):
    target = tmp_path / "finaliser"
    stream = pipe.finaliser(_writer(target))
    assert next(stream) == 1
    with pytest.raises(PolicyViolation):
        stream.close()  # the host closes the stream: the pipeline's finally block runs armed
    assert not target.exists()


def test_dropped_generator_finaliser_is_armed(pipe, tmp_path):
    target = tmp_path / "dropped"
    seen: list[BaseException] = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda info: seen.append(info.exc_value)
    try:
        stream = pipe.finaliser(_writer(target))
        next(stream)
        del stream
        import gc

        gc.collect()
    finally:
        sys.unraisablehook = old
    assert not target.exists()
    assert any(isinstance(e, PolicyViolation) for e in seen)


def test_generator_expression_advanced_by_the_host_is_armed(pipe, tmp_path):
    target = tmp_path / "genexp"
    gen = pipe.genexp(_writer(target))
    assert not tripwire.is_armed()
    with pytest.raises(PolicyViolation):
        next(gen)
    assert not target.exists()


@pytest.mark.parametrize("method", ["namedtuple_genexp", "namedtuple_map"])
def test_callbacks_of_a_suspended_host_helper_are_armed(pipe, tmp_path, method):
    target = tmp_path / method
    with pytest.raises(PolicyViolation):
        getattr(pipe, method)(_writer(target))
    assert not target.exists()


def test_host_invoked_key_function_is_armed(pipe, tmp_path):
    target = tmp_path / "key"
    cls = type(pipe)
    glb = cls.key.__wrapped__.__globals__
    glb["HOOK"][0] = _writer(target)
    try:
        with pytest.raises(PolicyViolation):
            sorted([1, 2], key=pipe.key)  # the host calls the pipeline's function, the function the host's
    finally:
        glb["HOOK"][0] = None
    assert not target.exists()


def test_suspension_entered_by_sandboxed_code_suspends_nothing(tmp_path):
    target = tmp_path / "suspended"

    def pretend_sandboxed():
        with tripwire.suspended():
            open(target, "w").close()

    tripwire.register_code(pretend_sandboxed.__code__)
    tripwire.install()
    with pytest.raises(PolicyViolation):
        pretend_sandboxed()
    assert not target.exists()


def test_suspension_covers_only_frames_above_it(tmp_path):
    target = tmp_path / "host"
    with tripwire.armed():
        with tripwire.suspended():
            open(target, "w").close()  # trusted host code, suspended on purpose
    assert target.exists()


# ---- flaw 4: materialise every iterable, check what is stored ----------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"__array_interface__": 1}.items(),
        zip(["__reduce_ex__"], [1], strict=True),
        map(lambda k: (k, 1), ["__array_interface__"]),
        ((k, 1) for k in ["__array_interface__"]),
        [["__setstate__", 1]],
        "a __dict__",
    ],
    ids=["dict_items", "zip", "map", "generator", "list_of_lists", "names_string"],
)
def test_dunder_names_are_found_in_any_iterable(value):
    from pipewarden.sandbox.runtime.objects import _materialise_keys

    with pytest.raises(PolicyViolation):
        _materialise_keys("X", value)


def test_a_dict_subclass_is_checked_on_what_it_stores():
    from pipewarden.sandbox.runtime.objects import _materialise_keys

    class Liar(dict):
        def keys(self):
            return []

        def __iter__(self):
            return iter([])

    with pytest.raises(PolicyViolation):
        _materialise_keys("X", Liar({"__array_interface__": 1}))
    plain = _materialise_keys("X", Liar({"a": 1}))
    assert type(plain) is dict and plain == {"a": 1}


def test_an_iterator_is_read_once_and_handed_on_as_read():
    from pipewarden.sandbox.runtime.objects import _materialise_keys

    it = iter([("a", 1), ("b", 2)])
    assert _materialise_keys("X", it) == [("a", 1), ("b", 2)]
    tensor = torch.zeros(2)
    assert _materialise_keys("X", tensor) is tensor  # data stays data


# ---- flaw 1: every value reaching sandboxed code is checked, whichever way it arrives ------------

PROVENANCE_SOURCE = '''
import torch
from diffusers import DiffusionPipeline


class ProvenancePipeline(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def by_iteration(self, provider):
        for value in provider():
            return value

    def by_unpacking(self, provider):
        first, second = provider()
        return first

    def by_comprehension(self, provider):
        return [v for v in provider()]

    def by_item(self, provider):
        return provider()[0]

    def __call__(self):
        return torch.zeros(1)
'''


@pytest.mark.parametrize("route", ["by_iteration", "by_unpacking", "by_comprehension", "by_item"])
@pytest.mark.parametrize("forbidden", ["module", "raw_builtin", "metaclass"])
def test_forbidden_values_are_refused_on_every_route(route, forbidden):
    import builtins
    import os

    value = {"module": os, "raw_builtin": builtins.exec, "metaclass": type}[forbidden]
    pipe = load_class(PROVENANCE_SOURCE, filename="provenance.py")()
    with pytest.raises(PolicyViolation) as info:
        getattr(pipe, route)(lambda: [value, value])
    assert info.value.rule.startswith("value.")
