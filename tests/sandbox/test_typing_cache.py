"""The pipeline's objects never reach typing's process-wide caches (red team round 10).

typing memoises ``X[...]`` (``typing._tp_cache``) keyed by the parameters. A pipeline object whose
``__hash__`` equals ``hash(int)`` and whose ``__eq__`` answers True, planted with
``typing.List[Liar()]``, answered the host's later ``typing.List[int]`` with the pipeline's alias
(and ran the pipeline's ``__eq__`` inside host code). Shown live in plain Python first; sandboxed,
the subscript is refused and the host's aliases stay its own. Classes as parameters and literals of
builtin types keep working."""

# ruff: noqa: UP006 - typing.List/Dict are what the test is about
from __future__ import annotations

import typing

import pytest

from pipewarden.errors import PipewardenError
from pipewarden.sandbox import load_class

pytest.importorskip("torch")

SOURCE = '''\
import typing
from diffusers import DiffusionPipeline


class Liar:
    def __hash__(self):
        return hash(int)

    def __eq__(self, other):
        return True


class Box(typing.Generic[typing.TypeVar("T")]):
    pass


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, form):
        if form == "list":
            return typing.List[Liar()]
        if form == "optional":
            return typing.Optional[Liar()]
        if form == "tuple":
            return typing.Tuple[int, (Liar(),)]
        if form == "builtin-generic":
            return list[Liar()]
        if form == "own-generic":
            return Box[Liar()]
        return None
'''

FORMS = ["list", "optional", "tuple", "builtin-generic", "own-generic"]


def _host_aliases():
    return [typing.List[int].__args__, typing.Optional[int].__args__, list[int].__args__]


def _clear_typing_caches():
    for clear in typing._cleanups:  # type: ignore[attr-defined]
        clear()


def test_the_poison_is_live_in_plain_python():
    namespace: dict = {}
    exec(compile(SOURCE, "plain.py", "exec"), namespace)  # noqa: S102 - the live proof
    _clear_typing_caches()
    namespace["P"]()("list")
    try:
        assert typing.List[int].__args__[0] is not int  # the host's alias is the pipeline's
        assert type(typing.List[int].__args__[0]).__name__ == "Liar"
    finally:
        _clear_typing_caches()
    assert typing.List[int].__args__ == (int,)


@pytest.mark.parametrize("form", FORMS)
def test_a_typing_form_is_never_subscripted_with_the_pipelines_objects(form):
    pipe = load_class(SOURCE, filename=f"typing_{form.replace('-', '_')}.py")()
    _clear_typing_caches()
    before = _host_aliases()
    with pytest.raises(PipewardenError) as info:
        pipe(form)
    assert info.value.rule == "item.typing-parameter"
    assert _host_aliases() == before == [(int,), (int, type(None)), (int,)]


IDIOMS = '''\
import typing
from diffusers import DiffusionPipeline


class Mine:
    pass


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self):
        return [
            typing.List[Mine], typing.Optional[Mine], typing.Dict[str, typing.List[int]],
            typing.Literal["a", 1], typing.Union[int, Mine], list[Mine], dict[str, int], tuple[int, ...],
            [1, 2, 3][1], {"k": Mine}["k"],
        ]
'''


def test_type_expressions_of_classes_and_literals_keep_working():
    out = load_class(IDIOMS, filename="typing_idioms.py")()()
    assert out[0].__args__[0].__name__ == "Mine" and out[5].__args__[0].__name__ == "Mine"
    assert out[2] == typing.Dict[str, typing.List[int]]
    assert out[3] == typing.Literal["a", 1]
    assert out[6] == dict[str, int] and out[7] == tuple[int, ...]
    assert out[8] == 2


OTHER_DOOR = '''\
import typing
from diffusers import DiffusionPipeline


class Liar:
    def __hash__(self):
        return hash(int)

    def __eq__(self, other):
        return True

    def __call__(self):
        return None  # typing accepts a callable as a type parameter


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self):
        # typing's own __or__ builds Union[alias, obj] through the same cache: no subscript here
        return typing.List[int] | Liar()
'''


def test_no_door_leaves_the_pipelines_objects_in_typings_caches():
    namespace: dict = {}
    exec(compile(OTHER_DOOR, "plain.py", "exec"), namespace)  # noqa: S102 - the live proof
    _clear_typing_caches()
    namespace["P"]()()
    try:
        assert any(type(a).__name__ == "Liar" for a in typing.Union[typing.List[int], int].__args__)
    finally:
        _clear_typing_caches()
    pipe = load_class(OTHER_DOOR, filename="typing_or.py")()
    _clear_typing_caches()
    pipe()
    assert typing.Union[typing.List[int], int].__args__ == (typing.List[int], int)
