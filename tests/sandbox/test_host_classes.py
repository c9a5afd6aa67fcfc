"""Host classes reach sandboxed code only as their module's facade makes them (red team round 5):

* flaw 1 -- a raw class read from an annotation, a ``Parameter``, ``typing.get_args``, a
  scheduler's ``compatibles`` or a callback parameter was constructible without the facade's
  checks (``CLIPTokenizer(vocab=<secret>)`` read the file in Rust, where no audit hook sees it).
  Every class value is now :meth:`class_as_seen`: the facade's stand-in, the class itself where the
  facade hands it out as is, or an inert ``ClassView``.
* flaw 2 -- subclassing a host class whose protocol hands the object to native code
  (``PIL.Image.Image.__array_interface__`` takes its pointer from an overridable ``tobytes``) or
  changes process-wide state (``torch.no_grad.__enter__`` with a sandbox ``__exit__`` that never
  restores it) is refused (``class.host-protocol``).

Each payload is first shown live in plain Python; then the host state is compared, not only the
exception."""

from __future__ import annotations

import json
import warnings

import pytest

from pipewarden.errors import PipewardenError
from pipewarden.sandbox import load_class, tripwire

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

HEAD = '''\
import inspect
import typing
import warnings
import numpy as np
import torch
from PIL import Image
from diffusers import DiffusionPipeline, StableDiffusionPipeline, DDIMScheduler
from transformers import CLIPTokenizer
'''

PIPE = '''
class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, vocab, merges, scheduler=None, cls=None):
        return run(vocab, merges, scheduler, cls)
'''

#: door -> the body of run(): obtain the tokenizer class some way and construct it on a secret file
CLASS_DOORS = {
    "signature-annotation": "tok = inspect.signature(StableDiffusionPipeline).parameters['tokenizer'].annotation",
    "parameters-get": "tok = inspect.signature(StableDiffusionPipeline).parameters.get('tokenizer').annotation",
    "annotation-items": "tok = [p.annotation for p in inspect.signature(StableDiffusionPipeline).parameters.values()"
                        " if p.name == 'tokenizer'][0]",
    "callback-parameter": "tok = cls",
    "call-result-list-pop": "tok = cls.pop()",  # a host list holding the class: the call result
    "call-result-dict-get": "tok = cls.get('t')",
}

SECRET = "pwsecret-hostclass-5c1e"


def _secret_files(tmp_path):
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({SECRET: 0, "a": 1, "<|endoftext|>": 2, "<|startoftext|>": 3}))
    merges = tmp_path / "merges.txt"
    merges.write_text("#version: 0.2\n")
    return str(vocab), str(merges)


def _source(door):
    body = CLASS_DOORS[door]
    return HEAD + f'''

def run(vocab, merges, scheduler, cls):
    {body}
    t = tok(vocab, merges)
    return [k for k in t.get_vocab() if k.startswith("pwsecret")]
''' + PIPE


@pytest.mark.parametrize("door", sorted(CLASS_DOORS))
def test_a_host_class_from_any_door_is_its_facades_stand_in(door, tmp_path):
    from transformers import CLIPTokenizer

    vocab, merges = _secret_files(tmp_path)
    assert SECRET in CLIPTokenizer(vocab, merges).get_vocab()  # live in plain Python
    pipe = load_class(_source(door), filename="hostclass.py")()
    given = {"call-result-list-pop": [CLIPTokenizer], "call-result-dict-get": {"t": CLIPTokenizer}}
    with pytest.raises(PipewardenError) as info:
        pipe(vocab, merges, cls=given.get(door, CLIPTokenizer))
    assert info.value.rule == "construct.file-reading-class", (info.value.rule, info.value.what)
    assert not tripwire.is_armed()


def test_class_values_keep_identity_with_the_facades(tmp_path):
    src = HEAD + '''

def run(vocab, merges, scheduler, cls):
    hint = inspect.signature(StableDiffusionPipeline).parameters["tokenizer"].annotation
    return [hint == CLIPTokenizer, DDIMScheduler in [c for c in scheduler.compatibles],
            type(scheduler) is DDIMScheduler, cls is DDIMScheduler]
''' + PIPE
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler()
    scheduler.compatibles  # noqa: B018 - diffusers imports the compatible schedulers' modules lazily: warm them
    pipe = load_class(src, filename="hostclass.py")()
    assert pipe("v", "m", scheduler=scheduler, cls=DDIMScheduler) == [True, True, True, True]


PROTOCOL_SOURCES = {
    "pil-array-interface": '''
class Evil(Image.Image):
    def __init__(self, data):
        super().__init__()
        self._mode = "L"
        self._size = (1, 1)
        self.data = data

    def tobytes(self, *args):
        return self.data


def run():
    return np.asarray(Evil(b"x"))
''',
    "no-grad-exit": '''
class NoGradForever(torch.no_grad):
    def __exit__(self, *args):
        return False


def run():
    with NoGradForever():
        pass
''',
    "inference-mode-exit": '''
class InferenceForever(torch.inference_mode):
    def __exit__(self, *args):
        return False


def run():
    with InferenceForever():
        pass
''',
    "suppress-exit": '''
import contextlib


class SuppressEverything(contextlib.suppress):
    def __exit__(self, *args):
        return True


def run():
    with SuppressEverything():
        pass
''',
    "catch-warnings-exit": '''
class WarningsForever(warnings.catch_warnings):
    def __exit__(self, *args):
        return False


def run():
    with WarningsForever():
        warnings.simplefilter("ignore")
''',
}


def _host_state():
    return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), list(warnings.filters))


@pytest.mark.parametrize("name", sorted(PROTOCOL_SOURCES))
def test_subclassing_a_host_protocol_class_is_refused(name):
    src = HEAD + PROTOCOL_SOURCES[name] + '''
class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self):
        return run()
'''
    # the imports a load makes add warning filters of their own (scipy, sympy): state after them
    load_class(HEAD + "\n\nclass P(DiffusionPipeline):\n    pass\n", filename="protocol_warmup.py")
    before = _host_state()
    with pytest.raises(PipewardenError) as info:
        load_class(src, filename="protocol.py")
    # torch's mode context managers reach the sandbox as factories of fresh instances (red team
    # round 7, test_host_modes.py), warnings.catch_warnings as one without module= (round 9): not
    # a class, so not a base at all
    factories = ("no-grad-exit", "inference-mode-exit", "catch-warnings-exit")
    expected = "class.bases" if name in factories else "class.host-protocol"
    assert info.value.rule == expected, (info.value.rule, info.value.what)
    assert _host_state() == before
    assert not tripwire.is_armed()


def test_the_context_manager_door_is_live_in_plain_python():
    class NoGradForever(torch.no_grad):
        def __exit__(self, *args):
            return False

    assert torch.is_grad_enabled()
    try:
        with NoGradForever():
            pass
        assert not torch.is_grad_enabled()  # the host's grad mode stays off
    finally:
        torch.set_grad_enabled(True)


# ---- red team round 6: classes inside containers, and the doors that consume them ----------------

UNION_DOORS = {
    # a decorator's application is not a Call node: its result used to go unchecked
    "decorator": "@functools.partial(next, itertools.chain(typing.get_args(cls)))\n"
                 "    def tok():\n        pass\n    t = tok(vocab, merges)",
    # a class statement's bases
    "class-base": "class Tok(*typing.get_args(cls)[:1]):\n        pass\n    t = Tok(vocab, merges)",
    # a host callable wrapping the class
    "partial": "t = functools.partial(*typing.get_args(cls)[:1])(vocab, merges)",
}


@pytest.mark.parametrize("door", sorted(UNION_DOORS))
def test_classes_inside_containers_are_what_the_facade_makes_them(door, tmp_path):
    from transformers import CLIPTokenizer

    vocab, merges = _secret_files(tmp_path)
    src = HEAD + f'''
import functools
import itertools


def run(vocab, merges, scheduler, cls):
    {UNION_DOORS[door]}
    return [k for k in t.get_vocab() if k.startswith("pwsecret")]
''' + PIPE
    pipe = load_class(src, filename="union_door.py")()
    with pytest.raises(PipewardenError):
        pipe(vocab, merges, cls=CLIPTokenizer | None)  # (the secret would come back as the result)
    assert not tripwire.is_armed()


REENTRANT = HEAD + '''

def run():
    cm = torch.no_grad()
    with cm:
        with cm:
            pass
    ac = torch.autocast("cpu", dtype=torch.bfloat16)
    with ac:
        with ac:
            pass
    return torch.is_grad_enabled()


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    @torch.no_grad()
    def __call__(self):
        inside = torch.is_grad_enabled()
        return inside, run()
'''


def _modes():
    return torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")


def test_reentered_context_managers_leave_the_hosts_modes_as_they_were():
    # live in plain Python: the outer exit restores what the inner entry saw
    before = _modes()
    try:
        cm = torch.no_grad()
        with cm, cm:
            pass
        assert not torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(before[0])
    pipe = load_class(REENTRANT, filename="reentrant.py")()
    assert pipe() == (False, False)  # the pipeline's own no_grad holds for its call, as in plain
    assert _modes() == before
    assert not tripwire.is_armed()
