"""``linecache`` may read the source of code running on the stack while the tripwire is armed, and
nothing else: ``torch.manual_seed`` formats a stack (CUDA's lazy seeding keeps it, even on a
CPU-only machine), which reads the source of every frame -- the caller's script, pipewarden, the
vetted file -- and used to refuse a plain ``torch.manual_seed(0)`` in a pipeline
(``tripwire.open-read``) whenever one of those files was outside the installed libraries."""

from __future__ import annotations

import linecache

import pytest

from pipewarden.errors import PolicyViolation
from pipewarden.sandbox import load_class, tripwire

torch = pytest.importorskip("torch")

SEEDED = '''\
import torch
from diffusers import DiffusionPipeline


class SeededPipeline(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self, seed=0):
        torch.manual_seed(seed)
        a = torch.randn(3)
        torch.manual_seed(seed + 1)
        return a, torch.randn(3)
'''


def test_torch_manual_seed_in_a_pipeline_seeds_like_plain_torch():
    pipe = load_class(SEEDED, filename="seeded_pipeline.py")()
    linecache.clearcache()  # every source file is read afresh, this test file included
    a, b = pipe(seed=5)
    torch.manual_seed(5)
    expected_a = torch.randn(3)
    torch.manual_seed(6)
    assert torch.equal(a, expected_a) and torch.equal(b, torch.randn(3))
    assert not tripwire.is_armed()


def test_linecache_reads_only_the_source_of_code_on_the_stack(tmp_path):
    secret = tmp_path / "secret_settings.py"
    secret.write_text("TOKEN = 'pw-linecache-secret'\n")
    linecache.clearcache()
    with tripwire.armed():
        assert linecache.getline(__file__, 1).startswith('"""')  # this file: a frame on the stack
        with pytest.raises(PolicyViolation) as info:
            linecache.getline(str(secret), 1)  # not running code
        assert info.value.rule == "tripwire.open-read"
        with pytest.raises(PolicyViolation):
            open(__file__).close()  # noqa: PTH123, SIM115 - not linecache: refused as before
    assert str(secret) not in linecache.cache
    assert not tripwire.is_armed()
