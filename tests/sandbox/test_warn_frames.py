"""``warnings.warn(stacklevel=N)`` reaches no host frame (red team round 8).

The host's ``warn`` walks N frames up whatever they are: past the sandbox into pipewarden's own
wrapper, the host caller and ``sys``, writing ``__warningregistry__`` into those host modules (a
later host warning with the same text and place is then silenced) and attributing the warning to
a host file. The sandbox's ``warn`` counts the pipeline's own frames only; ``deprecate``'s
``stacklevel`` is fixed to the pipeline's call."""

from __future__ import annotations

import sys
import warnings

import pytest

from pipewarden.sandbox import load_class

pytest.importorskip("torch")

MESSAGE = "pwwarn-frames-8c21"

SOURCE = f'''
import warnings
from diffusers import DiffusionPipeline
from diffusers.utils import deprecate


def helper(level):
    warnings.warn("{MESSAGE} helper", UserWarning, stacklevel=level)


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, level):
        warnings.warn("{MESSAGE} direct", UserWarning, stacklevel=level)
        helper(level)
        deprecate("{MESSAGE}-arg", "9.9.9", "{MESSAGE} deprecated", standard_warn=False, stacklevel=level)
        return 1
'''


def _registry_hits() -> list[str]:
    hits = []
    for name, module in list(sys.modules.items()):
        registry = getattr(module, "__dict__", {}).get("__warningregistry__")
        if isinstance(registry, dict) and any(MESSAGE in str(key) for key in registry):
            hits.append(name)
    return hits


def test_a_deep_stacklevel_is_live_in_plain_python():
    namespace: dict = {"__name__": "plain_pipeline"}
    exec(compile(SOURCE, "plain_pipeline.py", "exec"), namespace)  # noqa: S102 - the live proof
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        namespace["P"]()(10)
    assert any(not w.filename.endswith("plain_pipeline.py") for w in seen)  # attributed to a host frame
    assert _registry_hits()  # a host module's registry holds the message
    for name in _registry_hits():  # clean up what the live proof wrote
        sys.modules[name].__dict__["__warningregistry__"].clear()


@pytest.mark.parametrize("level", [1, 2, 3, 10, 1000])
def test_warnings_stay_in_the_pipelines_frames(level):
    pipe = load_class(SOURCE, filename="warn_frames.py")()
    before = _registry_hits()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        assert pipe(level) == 1
    ours = [w for w in seen if MESSAGE in str(w.message)]
    assert len(ours) == 3
    assert all(w.filename == "warn_frames.py" for w in ours), [(w.filename, w.lineno) for w in ours]
    assert _registry_hits() == before == []


def test_stacklevel_counts_the_pipelines_own_frames():
    pipe = load_class(SOURCE, filename="warn_frames.py")()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pipe(2)
    by_text = {str(w.message).split()[-1]: w.lineno for w in seen if MESSAGE in str(w.message)}
    # helper(2) points at the line that called helper, as in plain Python
    assert by_text["helper"] == 17
    assert by_text["direct"] == 16  # only one sandboxed frame: the outermost one
