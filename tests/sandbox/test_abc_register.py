"""A host metaclass's methods on the pipeline's own classes follow the host's rules (red team
round 10): ``M.register(str)`` on the pipeline's ``collections.abc.Mapping`` subclass made host
``isinstance("x", Mapping)`` True for the whole process. Live in plain Python first."""

from __future__ import annotations

import collections.abc
import numbers

import pytest

from pipewarden.errors import PipewardenError
from pipewarden.sandbox import load_class

pytest.importorskip("torch")

SOURCE = '''\
import collections.abc
import numbers
from diffusers import DiffusionPipeline


class M(collections.abc.Mapping):
    def __getitem__(self, k):
        return None

    def __iter__(self):
        return iter([])

    def __len__(self):
        return 0


class N(numbers.Number):
    pass


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, which):
        (M if which == "mapping" else N).register(str)
        return "done"
'''


def _host():
    return isinstance("x", collections.abc.Mapping), isinstance("x", numbers.Number)


@pytest.mark.parametrize("which", ["mapping", "number"])
def test_register_is_live_in_plain_python(which):
    namespace: dict = {}
    exec(compile(SOURCE, "plain.py", "exec"), namespace)  # noqa: S102 - the live proof
    assert _host() == (False, False)
    namespace["P"]()(which)
    assert True in _host()
    # undo: forget the plain classes' registries (the ABC caches hold weak references)
    for cls in (namespace["M"], namespace["N"]):
        cls._abc_registry_clear()  # type: ignore[attr-defined]
    collections.abc.Mapping._abc_caches_clear()  # type: ignore[attr-defined]
    numbers.Number._abc_caches_clear()  # type: ignore[attr-defined]
    assert _host() == (False, False)


@pytest.mark.parametrize("which", ["mapping", "number"])
def test_register_on_the_pipelines_abc_is_refused(which):
    pipe = load_class(SOURCE, filename=f"abc_{which}.py")()
    with pytest.raises(PipewardenError):
        pipe(which)
    assert _host() == (False, False)


IDIOMS = '''\
import abc
import collections.abc
from diffusers import DiffusionPipeline


class Base(abc.ABC):
    @abc.abstractmethod
    def run(self):
        return None


class Impl(Base):
    def run(self):
        return 3


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self):
        return Impl().run(), isinstance(Impl(), Base), issubclass(Impl, Base), Impl.__name__
'''


def test_abstract_base_classes_keep_working():
    assert load_class(IDIOMS, filename="abc_idioms.py")()() == (3, True, True, "Impl")
