"""The host's torch modes are what they were whenever sandboxed code hands control back (red team
rounds 6 and 7).

``torch.no_grad``, ``enable_grad``, ``inference_mode`` and ``autocast`` keep the previous mode on
the instance: the same object entered twice restores the inner entry's mode on the outer exit and
leaves the mode switched for the host (grad off, inference mode on, autocast on for any device
type: host matmuls silently in bfloat16). Round 6 restored grad mode and CPU/CUDA autocast when the
outermost sandboxed *call* returned; round 7 found the doors around it: the module body (not a
call), a generator step the host drives, inference mode and the other device types. Two fixes, by
flaw: the sandbox's mode context managers use a new host instance for every entry and every
decorated call (``mode-context``), and the host's modes (inference, grad, autocast per device type
and its weight cache) are put back wherever sandboxed code returns to host code.

Each payload is first shown live in plain Python; the test then compares the host's modes, not
only an exception."""

from __future__ import annotations

import pytest

from pipewarden.sandbox import load_class, tripwire
from pipewarden.sandbox.runtime import hooks

torch = pytest.importorskip("torch")

HEAD = "import torch\nfrom diffusers import DiffusionPipeline\n"


def _modes():
    return hooks._global_modes()


def _reset(before):
    hooks._restore_global_modes(before)
    assert _modes() == before


# Each door: (module-level statements, statements in a method). The statements re-enter one host
# mode object; in plain Python every one of them leaves a host mode switched.
REENTRIES = {
    "no_grad": "cm = torch.no_grad()\nwith cm:\n    with cm:\n        pass",
    "inference_mode": "cm = torch.inference_mode()\nwith cm:\n    with cm:\n        pass",
    "autocast_cpu": "cm = torch.autocast('cpu', dtype=torch.bfloat16)\nwith cm:\n    with cm:\n        pass",
    "autocast_cuda": "cm = torch.autocast('cuda', dtype=torch.bfloat16)\nwith cm:\n    with cm:\n        pass",
    "autocast_xpu": "cm = torch.amp.autocast('xpu')\nwith cm:\n    with cm:\n        pass",
    "autocast_cache": "cm = torch.autocast('cpu', cache_enabled=False)\nwith cm:\n    with cm:\n        pass",
    "autocast_as_target": "cm = torch.autocast('cpu')\nwith cm as again:\n    with again:\n        pass",
}


def _indent(code: str, n: int) -> str:
    return "\n".join(" " * n + line for line in code.splitlines())


def _plain(code: str) -> None:
    exec(compile(HEAD + code, "plain.py", "exec"), {})  # noqa: S102 - the live proof, host side


@pytest.mark.parametrize("name", sorted(REENTRIES))
@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_each_reentry_is_live_in_plain_python(name):
    before = _modes()
    try:
        _plain(REENTRIES[name])
        assert _modes() != before, "the payload must switch a host mode in plain Python"
    finally:
        _reset(before)


@pytest.mark.parametrize("name", sorted(REENTRIES))
@pytest.mark.parametrize("door", ["module_body", "method", "generator_step", "generator_close", "callback"])
@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_host_modes_are_kept_at_every_door(name, door):
    code = REENTRIES[name]
    body = "pass"
    module = ""
    if door == "module_body":
        module = code
    elif door == "method":
        body = _indent(code, 8).lstrip() + "\n        return 1"
    elif door == "generator_step":
        body = _indent(code, 8).lstrip() + "\n        yield 1"
    elif door == "generator_close":
        body = "try:\n            yield 1\n        finally:\n" + _indent(code, 12)
    elif door == "callback":
        body = "def cb(x):\n" + _indent(code, 12) + "\n            return x\n        return cb"
    src = HEAD + module + f'''

class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self):
        {body}
'''
    before = _modes()
    try:
        cls = load_class(src, filename=f"modes_{door}.py")
        assert _modes() == before
        out = cls()()
        assert _modes() == before
        if door == "generator_step":
            assert next(out) == 1
        elif door == "generator_close":
            assert next(out) == 1
            out.close()  # the finally block runs now, entered from host code
        elif door == "callback":
            assert sorted([3, 1, 2], key=out) == [1, 2, 3]  # the host calls sandboxed code back
        assert _modes() == before
        assert not tripwire.is_armed()
    finally:
        _reset(before)


IDIOMS = HEAD + '''

class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    @torch.no_grad()
    def decorated(self, n):
        if n:
            return self.decorated(n - 1)
        return torch.is_grad_enabled()

    @torch.no_grad
    def bare(self):
        return torch.is_grad_enabled()

    @torch.inference_mode()
    def inference(self):
        return torch.ones(1).is_inference()

    @torch.autocast("cpu", dtype=torch.bfloat16)
    def recursive(self, n):
        if n:
            return self.recursive(n - 1)
        return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype

    @torch.no_grad()
    def stream(self):
        yield torch.is_grad_enabled()
        yield torch.is_grad_enabled()

    def __call__(self):
        x = torch.ones(2, requires_grad=True)
        with torch.no_grad():
            with torch.enable_grad():
                inner = (x * 2).requires_grad
            outer = (x * 2).requires_grad
        with torch.autocast("cpu", dtype=torch.bfloat16) as ac:
            dtype = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        with torch.autocast("cpu", enabled=False):
            off = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        with torch.set_grad_enabled(False):
            set_off = torch.is_grad_enabled()
        return (inner, outer, dtype, off, set_off, ac is not None, self.decorated(2), self.bare(),
                self.inference(), self.recursive(2), list(self.stream()))
'''


def test_mode_idioms_keep_their_meaning():
    before = _modes()
    pipe = load_class(IDIOMS, filename="mode_idioms.py")()
    assert pipe() == (True, False, torch.bfloat16, torch.float32, False, True, False, False, True, torch.bfloat16, [False, False])
    assert _modes() == before


def test_a_broken_inference_mode_is_put_back():
    # the backstop where no fresh instance helps: inference mode left on by a dropped guard
    before = _modes()
    assert before[0] is False
    im = torch.inference_mode()
    with im, im:
        pass
    assert torch.is_inference_mode_enabled()  # live
    hooks._restore_global_modes(before)
    assert _modes() == before
    x = torch.ones(2, requires_grad=True)
    assert (x * 2).requires_grad and not (x * 2).is_inference()
