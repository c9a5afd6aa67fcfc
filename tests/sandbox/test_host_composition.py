"""Host functions composed with each other call only what the sandbox's checks let through (red
team round 7).

Round 6 made every class that *reaches sandboxed code* what its module's facade makes it. Round 7
kept the raw class inside host code: host ``map`` applies ``typing.get_args`` to an annotation
(``Qwen2Tokenizer | BertTokenizer``), ``*``-expansion or host ``chain`` hands the raw classes on,
and a second host ``map`` (or ``functools.partial``) calls the raw tokenizer class with a file path
-- the vocabulary is read in Rust, where no audit hook sees it. Sandboxed code only ever held a
``partial`` or a ``map`` object.

The fix, by flaw: every callable a host higher-order function calls with what an iterable yields
(``map``, ``filter``, ``sorted``/``min``/``max`` keys, ``iter(f, sentinel)``, ``functools.reduce``,
``itertools.starmap``/``accumulate``/``groupby``/``takewhile``/``dropwhile``/``filterfalse``) is
called with the sandbox's call checks, and ``f(*host_iterable)`` checks the expanded arguments.

Each door is first shown live in plain Python (the secret comes back); the sandboxed run must
refuse, and the secret must not come back."""

from __future__ import annotations

import json

import pytest

from pipewarden.errors import PipewardenError
from pipewarden.sandbox import load_class, tripwire

pytest.importorskip("torch")
pytest.importorskip("transformers")

SECRET = "pwsecret-composition-51c7"

HEAD = '''\
import functools
import inspect
import itertools
import typing
from diffusers import DiffusionPipeline, EasyAnimatePipeline


def annotation():
    return inspect.signature(EasyAnimatePipeline).parameters["tokenizer"].annotation


def classes():
    return itertools.chain(*map(typing.get_args, [annotation()]))
'''

PIPE = '''

class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, vocab, merges):
        t = make(vocab, merges)
        return [k for k in t.get_vocab() if k.startswith("pwsecret")]
'''

DOORS = {
    # host map calls host partial with the raw class; the sandbox calls only the partial
    "map-partial": "return next(map(functools.partial, classes()))(vocab=vocab, merges=merges)",
    # host map calls host map, which calls the raw class
    "map-map": "return next(next(map(map, classes(), [[vocab]], [[merges]])))",
    # chain.from_iterable: no *-expansion on the way
    "from-iterable": (
        "parts = itertools.chain.from_iterable(map(typing.get_args, [annotation()]))\n"
        "    return next(map(functools.partial, parts))(vocab=vocab, merges=merges)"
    ),
    # itertools.starmap calls host map with the raw class
    "starmap-map": "return next(next(itertools.starmap(map, zip(classes(), [[vocab]], [[merges]]))))",
    # a sort key: host sorted calls a partial of the raw class per element
    "sorted-key": (
        "found = []\n"
        "    sorted([vocab], key=functools.partial(functools.reduce, lambda acc, c: found.append(c(vocab=acc, merges=merges)) or acc, classes()))\n"
        "    return found[0]"
    ),
    # host filter calls host partial(map) whose element is the raw class
    "filter-map": "return next(next(filter(None, map(map, classes(), [[vocab]], [[merges]]))))",
    # a partial's args: a host tuple of raw classes read back as an attribute
    "partial-args": (
        "p = next(map(functools.partial, [print], *map(typing.get_args, [annotation()])))\n"
        "    return next(map(functools.partial, p.args))(vocab=vocab, merges=merges)"
    ),
    # a sandboxed function host map calls with a raw tuple as its parameter
    "parameter-tuple": (
        "def take(parts):\n        return next(map(functools.partial, parts))\n"
        "    return next(map(take, map(typing.get_args, [annotation()])))(vocab=vocab, merges=merges)"
    ),
    # the keys of a dict built from expanded arguments
    "dict-keys": (
        "d = dict.fromkeys(*map(typing.get_args, [annotation()]))\n"
        "    return next(map(functools.partial, d))(vocab=vocab, merges=merges)"
    ),
    # types.MethodType as the wrapper around the raw class
    "method-type": (
        "import types\n"
        "    return next(map(types.MethodType, *map(typing.get_args, [annotation()]), [vocab]))(merges=merges)"
    ),
    # expanded arguments of a plain call
    "star-args": "return functools.partial(*list(map(typing.get_args, [annotation()]))[0][:1])(vocab=vocab, merges=merges)",
}


def _secret_files(tmp_path):
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({SECRET: 0, "a": 1, "<|endoftext|>": 2}))
    merges = tmp_path / "merges.txt"
    merges.write_text("#version: 0.2\n")
    return str(vocab), str(merges)


def _source(door: str) -> str:
    return HEAD + f"\n\ndef make(vocab, merges):\n    {DOORS[door]}\n" + PIPE


@pytest.mark.parametrize("door", sorted(DOORS))
def test_each_door_is_live_in_plain_python(door, tmp_path):
    vocab, merges = _secret_files(tmp_path)
    namespace: dict = {}
    exec(compile(_source(door), "plain.py", "exec"), namespace)  # noqa: S102 - the live proof
    assert namespace["P"]()(vocab, merges) == [SECRET]


@pytest.mark.parametrize("door", sorted(DOORS))
def test_composed_host_calls_never_construct_a_raw_class(door, tmp_path):
    vocab, merges = _secret_files(tmp_path)
    pipe = load_class(_source(door), filename=f"composition_{door}.py")()
    leaked = None
    with pytest.raises(Exception) as info:  # noqa: PT011 - refused by a check or by the inert view
        leaked = pipe(vocab, merges)
    assert leaked is None
    assert SECRET not in str(info.value)
    assert not tripwire.is_armed()


IDIOMS = HEAD + '''

class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, xs):
        pairs = list(itertools.starmap(lambda a, b: a * b, zip(xs, xs)))
        return (
            list(map(int, ["1", "2"])), list(map(str.upper, ["a"])), list(filter(None, [0, 1, 2])),
            sorted(xs, key=lambda v: -v), min(xs, key=abs), max(xs, default=0), max(xs),
            functools.reduce(lambda a, b: a + b, xs, 0), pairs,
            list(itertools.accumulate(xs)), [k for k, _ in itertools.groupby(sorted(xs))],
            list(itertools.takewhile(lambda v: v < 3, xs)), list(itertools.dropwhile(lambda v: v < 3, xs)),
            list(itertools.filterfalse(lambda v: v % 2, xs)), list(iter(functools.partial(next, iter(xs)), 5)),
            [type(e).__name__ for e in (KeyError("k"),)],
        )
'''


def test_higher_order_idioms_keep_their_meaning():
    namespace: dict = {}
    exec(compile(IDIOMS, "plain.py", "exec"), namespace)  # noqa: S102 - the plain result
    xs = [3, 1, 4, 1, 5, 2]
    expected = namespace["P"]()(xs)
    assert load_class(IDIOMS, filename="hof_idioms.py")()(xs) == expected


METACLASS = HEAD + '''

class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self):
        # typing.get_origin(typing.Type[int]) is the raw metaclass `type`: a class with any dunder
        # (e.g. __array_interface__ -> arbitrary memory) would follow
        make = next(map(functools.partial, map(typing.get_origin, [typing.Type[int]])))
        return make("Evil", (object,), {"__array_interface__": {"shape": (1,)}})
'''


def test_the_raw_metaclass_never_comes_out_of_a_composition():
    namespace: dict = {}
    exec(compile(METACLASS, "plain.py", "exec"), namespace)  # noqa: S102 - the live proof
    evil = namespace["P"]()()
    assert isinstance(evil, type) and "__array_interface__" in vars(evil)
    with pytest.raises(PipewardenError):
        load_class(METACLASS, filename="composition_metaclass.py")()()
    assert not tripwire.is_armed()
