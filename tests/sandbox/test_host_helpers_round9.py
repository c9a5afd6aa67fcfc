"""Host helpers that act on what sandboxed code chose, with the host's powers (red team round 9).

``warnings.catch_warnings(module=<a stand-in>, action=...)`` saved and restored the stand-in's
filters while ``action`` went through the real ``simplefilter``: the host's filters stayed changed
(``"error"`` made every later host warning an exception). ``collections.defaultdict`` called its
factory from C and stored what it returned (``partial(typing.get_origin, Type[int])``: the raw
metaclass ``type``, reachable through any door that forgot a check). Each is live in plain Python
first; the sandbox must leave the host's state as it was and never store the raw value."""

from __future__ import annotations

import warnings

import pytest

from pipewarden.errors import PipewardenError
from pipewarden.sandbox import load_class, tripwire

pytest.importorskip("torch")

CATCH = '''\
import warnings
from diffusers import DiffusionPipeline


class Stand:
    def __init__(self):
        self.filters = []
        self.showwarning = None
        self._showwarnmsg_impl = None
        self._showwarning_orig = None

    def _filters_mutated(self):
        pass


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, action):
        with warnings.catch_warnings(module=Stand(), action=action):
            pass
        return "done"
'''


@pytest.mark.parametrize("action", ["error", "ignore"])
def test_catch_warnings_with_a_stand_in_module_is_live_in_plain_python(action):
    namespace: dict = {}
    before = list(warnings.filters)
    try:
        exec(compile(CATCH, "plain.py", "exec"), namespace)  # noqa: S102 - the live proof
        namespace["P"]()(action)
        assert warnings.filters[0][0] == action and list(warnings.filters) != before
    finally:
        warnings.filters[:] = before
        warnings._filters_mutated()  # type: ignore[attr-defined]


@pytest.mark.parametrize("action", ["error", "ignore"])
def test_catch_warnings_never_changes_the_hosts_filters(action):
    pipe = load_class(CATCH, filename=f"catch_{action}.py")()
    before = list(warnings.filters)  # after the imports the load made (they add filters of their own)
    with pytest.raises(TypeError, match="module"):
        pipe(action)
    assert list(warnings.filters) == before
    assert not tripwire.is_armed()


CATCH_IDIOMS = '''\
import warnings
from diffusers import DiffusionPipeline


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self):
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn("inside", UserWarning)
        with warnings.catch_warnings(action="ignore"):
            warnings.warn("silenced", UserWarning)
        return len(seen)
'''


def test_catch_warnings_idioms_keep_their_meaning():
    pipe = load_class(CATCH_IDIOMS, filename="catch_idioms.py")()
    before = list(warnings.filters)
    assert pipe() == 1
    assert list(warnings.filters) == before


FACTORY = '''\
import collections
import functools
import typing
from diffusers import DiffusionPipeline


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self):
        d = collections.defaultdict(functools.partial(typing.get_origin, typing.Type[int]))
        try:
            d["k"]
        except Exception:
            pass
        return d
'''


def test_a_defaultdict_factory_stores_the_raw_metaclass_in_plain_python():
    namespace: dict = {}
    exec(compile(FACTORY, "plain.py", "exec"), namespace)  # noqa: S102 - the live proof
    assert namespace["P"]()()["k"] is type


def test_a_defaultdict_factory_is_called_with_the_sandboxs_checks():
    d = load_class(FACTORY, filename="factory.py")()()
    assert "k" not in d and len(d) == 0  # refused before anything was stored
    assert not tripwire.is_armed()


def test_a_defaultdict_factory_refusal_reaches_the_pipeline():
    src = FACTORY.replace('''        try:
            d["k"]
        except Exception:
            pass
''', '''        d["k"]
''')
    with pytest.raises(PipewardenError) as info:
        load_class(src, filename="factory_refused.py")()()
    assert info.value.rule == "value.metaclass"


FACTORY_IDIOMS = '''\
import collections
from diffusers import DiffusionPipeline


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, words):
        # (writes into a defaultdict are refused as before: it is not one of the writable builtins)
        groups = collections.defaultdict(list)
        counts = collections.defaultdict(int)
        lengths = collections.defaultdict(lambda: -1)
        return [groups[w] for w in words], [counts[w] for w in words], lengths["x"], sorted(counts), len(groups)
'''


def test_defaultdict_idioms_keep_their_meaning():
    namespace: dict = {}
    exec(compile(FACTORY_IDIOMS, "plain.py", "exec"), namespace)  # noqa: S102 - the plain result
    words = ["apple", "avocado", "bean", "apple"]
    assert load_class(FACTORY_IDIOMS, filename="factory_idioms.py")()(words) == namespace["P"]()(words)
