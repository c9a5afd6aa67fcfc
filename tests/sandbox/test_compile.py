"""Restricted compilation: every RestrictedPython rule kept, only the reviewed relaxations added."""

from __future__ import annotations

import textwrap

import pytest

from pipewarden.errors import PolicyViolation, ScanError
from pipewarden.sandbox.compile import check_compile, compile_restricted_module
from tests.conftest import seed_file


def rules(src: str) -> list[str]:
    return [i.rule for i in check_compile(textwrap.dedent(src))]


def test_seed_and_example_compile():
    from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE

    assert check_compile(seed_file().read_text()) == ()
    assert check_compile(EXAMPLE_PIPELINE_SOURCE) == ()


ACCEPTED = {
    "dunder-init-call": "class A:\n    def __init__(self):\n        super().__init__()\n    def __call__(self):\n        return 1\n",
    "single-underscore-state": "class A:\n    _optional_components = []\n    def _helper(self):\n        self._x = 1\n        return self._x\n",
    "name-read": "logger_name = __name__\n",
    "class-name-idiom": "class A:\n    def f(self):\n        return self.__class__.__name__\n",
    "class-in-fstring": "def f(x):\n    return f'{x.__class__}'\n",
    "class-compare": "def f(x, kinds):\n    return x.__class__ in kinds\n",
    "self-class": "class A:\n    def f(self):\n        return self.__class__._resize\n",
    "annotated": "x: int = 3\nclass A:\n    y: float\n    def f(self):\n        self.z: int = 1\n",
    "augassign-attr-item": "def f(self, d):\n    self.count += 1\n    d['k'] *= 2\n",
    "get-binding": "def f(fn, obj):\n    return fn.__get__(obj)\n",
    "throwaway": "a, __, ____ = 1, 2, 3\n",
    "version": "from diffusers import __version__\n__all__ = ['A']\n",
    "future": "from __future__ import annotations\n",
    "print": "print('hello')\n",
}


@pytest.mark.parametrize("key", sorted(ACCEPTED))
def test_relaxations_compile(key):
    assert check_compile(ACCEPTED[key]) == ()


REFUSED = {
    "dunder-class-bare": ("y = 1\nx = y.__class__\n", "attribute.dunder-class"),
    "bases": ("x = ().__class__.__bases__\n", "attribute.dunder"),
    "subclasses": ("x = object.__subclasses__()\n", "attribute.dunder"),
    "globals-attr": ("def f(): pass\ng = f.__globals__\n", "attribute.dunder"),
    "dict-attr": ("def f(o):\n    return o.__dict__\n", "attribute.dunder"),
    "bind-getattr-hook": ("_getattr_ = None\n", "name.guard-hook"),
    "read-write-hook": ("x = _write_\n", "name.guard-hook"),
    "bind-print-collector": ("_print = 1\n", "name.guard-hook"),
    "bind-injected-helper": ("_pw_fn_ = 1\n", "name.guard-hook"),
    "metaclass-name": ("__metaclass__ = type\n", "name.dunder"),
    "builtins-name": ("b = __builtins__\n", "name.dunder"),
    "import-name": ("i = __import__\n", "name.dunder"),
    "posonly-guard": ("def f(_getattr_, /):\n    pass\n", "name.guard-hook"),
    "kwonly-guard": ("def f(*, _getiter_=None):\n    pass\n", "name.guard-hook"),
    "vararg-guard": ("def f(*_write_):\n    pass\n", "name.guard-hook"),
    "lambda-guard": ("f = lambda _getitem_: 1\n", "name.guard-hook"),
    "except-guard": ("try:\n    pass\nexcept Exception as _getattr_:\n    pass\n", "name.guard-hook"),
    "import-as-guard": ("import torch as _getattr_\n", "name.guard-hook"),
    "hook-attr": ("def f(o):\n    return o._getattr_\n", "attribute.guard-hook"),
    "mangled-attr": ("def f(o):\n    return o.__secret\n", "attribute.guard-hook"),
    "frame": ("def f(g):\n    return g.gi_frame\n", "attribute.inspect"),
    "tb": ("def f(e):\n    return e.tb_frame\n", "attribute.inspect"),
    "try-star": ("try:\n    pass\nexcept* ValueError:\n    pass\n", "syntax.TryStar"),
    "exec": ("exec('1')\n", "call.exec"),
    "eval": ("eval('1')\n", "call.eval"),
    "metaclass-kw": ("class A(metaclass=type):\n    pass\n", "class.metaclass"),
    "getattr-def": ("class A:\n    def __getattr__(self, n):\n        return 1\n", "name.dunder"),
    "reduce-def": ("class A:\n    def __reduce__(self):\n        return 1\n", "name.dunder"),
    "init-subclass": ("class A:\n    def __init_subclass__(cls):\n        pass\n", "name.dunder"),
    "class-dunder-assign": ("class A:\n    __slots__ = ()\n    __getattribute__ = None\n", "name.dunder"),
    "module-level-dunder-def": ("def __init__():\n    pass\n", "name.dunder"),
    "dunder-write": ("def f(o):\n    o.__class__ = int\n", "attribute.dunder-write"),
    "async": ("async def f():\n    pass\n", "syntax.AsyncFunctionDef"),
    "star-import": ("from torch import *\n", "import.star"),
    "get-not-call": ("def f(fn):\n    g = fn.__get__\n", "attribute.dunder-get"),
    "aug-dunder": ("def f(o):\n    o.__x__ += 1\n", "attribute.dunder-write"),
    "nonlocal": ("def f():\n    x = 1\n    def g():\n        nonlocal x\n", "syntax.Nonlocal"),
    "match": ("match 1:\n    case 1:\n        pass\n", "syntax.Match"),
    "dunder-keyword": ("import types\nx = types.SimpleNamespace(__array_interface__={})\n", "call.dunder-keyword"),
    "hook-keyword": ("f(_getattr_=1)\n", "call.dunder-keyword"),
}


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_refusals_name_their_rule(key):
    src, rule = REFUSED[key]
    found = rules(src)
    assert rule in found, (key, found)


def test_issue_fields_point_at_the_line():
    (issue,) = check_compile("x = 1\n\ny = ().__class__.__mro__\n")
    assert issue.lineno == 3 and issue.rule == "attribute.dunder" and "__mro__" in issue.message


def test_compile_raises_policy_violation_listing_all_issues():
    with pytest.raises(PolicyViolation) as info:
        compile_restricted_module("a = _getattr_\nb = ().__class__.__bases__\n", filename="evil.py")
    assert info.value.rule == "compile.name.guard-hook"
    assert "line 1" in info.value.what and "line 2" in info.value.what


def test_unparseable_source_is_a_scan_error():
    with pytest.raises(ScanError):
        check_compile("def (:\n")


def test_every_function_and_lambda_gets_the_wrapper():
    import ast

    code_src = textwrap.dedent(
        """
        class A:
            @staticmethod
            def s():
                return lambda x: x
        def f():
            pass
        """
    )
    from pipewarden.sandbox.compile import FUNCTION_WRAPPER_NAME, PipewardenTransformer
    from pipewarden.sandbox.policy import default_policy

    tree = PipewardenTransformer(default_policy()).visit(ast.parse(code_src))
    defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert all(isinstance(d.decorator_list[-1], ast.Name) and d.decorator_list[-1].id == FUNCTION_WRAPPER_NAME for d in defs)
    lambdas_wrapped = [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == FUNCTION_WRAPPER_NAME
    ]
    assert len(lambdas_wrapped) == 1


@pytest.mark.parametrize(
    "src, ok",
    [
        ("import torch\ntorch.set_grad_enabled(False)\n", False),
        ("import torch\nmode = torch.set_grad_enabled(False)\n", False),
        ("import torch\nwith torch.set_grad_enabled(False):\n    pass\n", True),
        ("import torch\n@torch.set_grad_enabled(False)\ndef f():\n    pass\n", True),
    ],
)
def test_grad_mode_switch_only_scoped(src, ok):
    found = rules(src)
    assert (found == []) if ok else ("call.global-state" in found)


@pytest.mark.parametrize(
    "src, ok",
    [
        ("import torch\ndef g():\n    with torch.no_grad():\n        yield 1\n", False),
        ("import torch\ndef g():\n    with torch.no_grad():\n        x = 1\n    yield x\n", True),
        ("def g():\n    with open_thing() as f:\n        yield from f\n", False),
        ("def outer():\n    with ctx():\n        def inner():\n            yield 1\n        return inner\n", True),
    ],
)
def test_yield_inside_with_is_refused(src, ok):
    found = rules(src)
    assert (found == []) if ok else ("syntax.yield-in-with" in found)


# -- check_compile_tree: the same decisions on an already parsed tree --------------------------------

PARENT_DEPENDENT = [
    ("y = x.__class__.__name__\n", []),
    ("y = x.__class__\n", ["attribute.dunder-class"]),
    ('y = f"{x.__class__}"\n', []),
    ("y = x.__class__ == z\n", []),
    ("b = f.__get__(obj)\n", []),
    ("g = f.__get__\n", ["attribute.dunder-get"]),
    ("d[x.__class__.__name__] += 1\n", []),
    ("x.__class__.count += 1\n", ["attribute.dunder-class"]),
    ("d[x.__class__] += 1\n", ["attribute.dunder-class"]),
    ("def g(d):\n    with ctx():\n        d[(yield)] += 1\n", ["syntax.yield-in-with"]),
    ("def g(o):\n    with ctx():\n        o.n += (yield)\n", ["syntax.yield-in-with"]),
    ("import torch\nx = [torch.set_grad_enabled(False)]\n", ["call.global-state"]),
    ("import torch\nwith torch.inference_mode(), torch.set_grad_enabled(False):\n    pass\n", []),
]


@pytest.mark.parametrize("src, expected", PARENT_DEPENDENT)
def test_parent_dependent_rules(src, expected):
    assert rules(src) == expected


@pytest.mark.parametrize(
    "src",
    [*ACCEPTED.values(), *(s for s, _ in REFUSED.values()), *(s for s, _ in PARENT_DEPENDENT)],
)
def test_check_compile_tree_matches_check_compile(src):
    import ast

    from pipewarden.sandbox.compile import check_compile_tree

    src = textwrap.dedent(src)
    assert check_compile_tree(ast.parse(src)) == check_compile(src)


def test_check_compile_tree_refuses_a_non_module():
    import ast

    from pipewarden.sandbox.compile import check_compile_tree

    with pytest.raises(TypeError):
        check_compile_tree(ast.parse("x + 1", mode="eval"))  # type: ignore[arg-type]


def test_restricted_code_still_runs_after_the_faster_traversal():
    # compile_restricted_module fills in every location the transformer adds (a code object is
    # built); an augmented attribute assignment and a lambda exercise the rewritten nodes.
    code = compile_restricted_module("def f(o):\n    o.n += 1\n    return (lambda: o.n)()\n")
    assert code.co_filename == "pipeline.py"


# -- the check (no code object) decides as the load path's compile does ----------------------------


def _check_and_load_sources() -> list[str]:
    from pathlib import Path

    from tests.escapes.payloads import BENIGN_SOURCE, PAYLOADS

    fixtures = sorted(Path(__file__).parents[1].joinpath("fixtures", "pipelines").glob("*.py"))
    return [
        *ACCEPTED.values(),
        *(s for s, _ in REFUSED.values()),
        *(s for s, _ in PARENT_DEPENDENT),
        BENIGN_SOURCE,
        *(p.template for p in PAYLOADS),
        *(f.read_text("utf-8") for f in fixtures),
    ]


def test_the_check_and_the_load_compile_find_the_same_issues():
    """check_compile_tree runs RestrictedPython's methods without filling in the locations of
    nodes only a code object needs (see _CheckingTransformer); the issues are the same as when
    the load path's compile_restricted_module transforms the tree for code."""
    import ast

    from pipewarden.sandbox.compile import _transform, check_compile_tree
    from pipewarden.sandbox.policy import default_policy

    policy = default_policy()
    checked = 0
    for src in _check_and_load_sources():
        src = textwrap.dedent(src)
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        _, for_load = _transform(ast.parse(src), policy, for_code=True)
        assert check_compile_tree(tree, policy=policy) == for_load, src[:200]
        checked += 1
    assert checked > 250


def test_the_check_runs_restrictedpythons_own_code():
    """The check-only transformer's RestrictedPython methods are RestrictedPython's code objects
    (only the globals they see differ: copy_locations), and nothing else is replaced."""
    import types

    from RestrictedPython.transformer import RestrictingNodeTransformer

    from pipewarden.sandbox.compile import PipewardenTransformer, _CheckingTransformer

    mro = _CheckingTransformer.__mro__
    assert mro[1] is PipewardenTransformer and mro[3] is RestrictingNodeTransformer
    rebound = vars(mro[2])
    originals = {k: v for k, v in vars(RestrictingNodeTransformer).items() if isinstance(v, types.FunctionType)}
    assert set(originals) <= set(rebound)
    for name, original in originals.items():
        assert rebound[name].__code__ is original.__code__, name
        changed = {k for k, v in rebound[name].__globals__.items() if original.__globals__.get(k, object()) is not v}
        assert changed == {"copy_locations"}, name
