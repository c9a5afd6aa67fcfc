"""Limits for services: cpu_s is a per-request budget; defaults sized from the machine; reload()."""

from __future__ import annotations

import os

import pytest
import torch

import pipewarden
from pipewarden.errors import ResourceLimitError, WorkerError
from pipewarden.isolation._client import WorkerProcess, fork_server
from pipewarden.limits import Limits, default_memory_mb
from pipewarden.loader.digests import sha256_file

from .test_pipeline import HOSTILE_SOURCE


@pytest.fixture(scope="module", autouse=True)
def server():
    return fork_server()


def _hook(w: WorkerProcess, name: str, arg=None):
    return w.request({"op": "hook", "name": name, "arg": arg, "suspend_tripwire": True}, what=f"hook {name}")


def test_cpu_s_is_per_request_not_per_worker_life():
    w = WorkerProcess(Limits(cpu_s=2, wall_s=120), read_paths=(), test_hooks=True)
    try:
        for _ in range(3):  # 3 x 1.2 s = 3.6 s in total, over 2 s: fine, each request is under
            assert _hook(w, "burn", 1.2).detail == "burnt"
        with pytest.raises(ResourceLimitError) as info:
            _hook(w, "burn", 30)
    finally:
        w.close()
    err = info.value
    assert "more than 2 s of CPU during hook burn" in err.what
    assert err.rule == "limits.cpu" and "each request" in err.rule_meaning


def test_default_memory_is_sized_from_the_machine():
    total_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    assert default_memory_mb() == max(1024, total_mb * 3 // 4)
    assert Limits().memory_mb == default_memory_mb()
    assert Limits(memory_mb=2048).memory_mb == 2048


def test_a_handle_stopped_by_a_limit_reloads_with_one_call(tiny_weights, tmp_path):
    src = tmp_path / "pipeline.py"
    src.write_text(HOSTILE_SOURCE)
    pipe = pipewarden.load_pipeline(
        str(tiny_weights), custom_pipeline=str(src), trust_remote_code=True,
        pipeline_sha256=sha256_file(src), isolation="process", limits=Limits(cpu_s=2, wall_s=120),
    )
    try:
        old_pid = pipe.worker_pid
        with pytest.raises(ResourceLimitError) as info:
            pipe(mode="loop")
        assert "pipe.reload()" in info.value.fix
        with pytest.raises(WorkerError) as closed:
            pipe(mode="ok")
        assert "pipe.reload()" in closed.value.fix
        assert pipe.reload() is pipe
        assert pipe.worker_pid != old_pid
        assert torch.equal(pipe(mode="ok", n=3), torch.ones(3))
        pipe.reload(limits=Limits(cpu_s=5, wall_s=120))
        assert pipe._limits.cpu_s == 5
    finally:
        pipe.close()
