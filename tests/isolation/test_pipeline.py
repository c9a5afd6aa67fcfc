"""load_pipeline(..., isolation="process"): same results as in-process, hostile pipelines contained.

One fork server for the module; tiny UNets (45 k parameters, 8x8). Hostile behaviour comes from
real pipeline files run through the real gates (pin, scan, restricted compile, worker layers).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipewarden
from pipewarden.errors import (
    IntegrityError,
    NotAllowedError,
    PipewardenError,
    PolicyViolation,
    ResourceLimitError,
    WorkerError,
)
from pipewarden.isolation import (
    IsolationWarning,
    PipelineHandle,
    WorkerLoadRequest,
    start_worker_pipeline,
)
from pipewarden.isolation._client import fork_server
from pipewarden.limits import Limits
from pipewarden.loader.digests import sha256_file

HOSTILE_SOURCE = '''\
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput


def deep(n):
    return deep(n + 1) + 1


class HostilePipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(self, mode="ok", n=1):
        if mode == "alloc":
            return torch.zeros(2 ** 31)  # 8 GiB of float32
        if mode == "loop":
            while True:
                n = n + 1
        if mode == "recurse":
            return deep(0)
        if mode == "big":
            return torch.zeros(1, 3, 512, 512)  # 3 MiB
        if mode == "boom":
            raise ValueError("boom")
        if mode == "open":
            return open("/etc/passwd").read()
        if mode == "images":
            image = torch.rand(2, 8, 8, 3).numpy()
            return ImagePipelineOutput(images=self.numpy_to_pil(image))
        if mode == "numpy":
            return {"arr": torch.ones(2, 2).numpy(), "n": n, "t": (1, "x")}
        return torch.ones(n)
'''


@pytest.fixture(scope="module", autouse=True)
def server():
    return fork_server()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from pipewarden._fixtures import build_weights

    return build_weights(tmp_path_factory.mktemp("iso-weights"), seed=3)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> dict:
    from pipewarden._fixtures import write_example_pipeline

    path = write_example_pipeline(tmp_path_factory.mktemp("iso-example"))
    return {"custom_pipeline": str(path), "trust_remote_code": True, "pipeline_sha256": sha256_file(path)}


@pytest.fixture(scope="module")
def hostile_file(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("iso-hostile") / "pipeline.py"
    path.write_text(HOSTILE_SOURCE)
    return {"custom_pipeline": str(path), "trust_remote_code": True, "pipeline_sha256": sha256_file(path)}


@pytest.fixture(scope="module")
def hostile(weights, hostile_file):
    pipe = pipewarden.load_pipeline(str(weights), isolation="process", limits=Limits(wall_s=60), **hostile_file)
    yield pipe
    pipe.close()


def _host_still_works(weights, example) -> None:
    with pipewarden.load_pipeline(str(weights), isolation="process", **example) as pipe:
        assert pipe(num_inference_steps=1).shape == (1, 3, 8, 8)


# -------------------------------------------------------------------------- same results


@pytest.mark.parametrize("steps", [1, 3])
def test_process_output_is_bit_identical_to_inprocess(weights, example, steps):
    inproc = pipewarden.load_pipeline(str(weights), isolation="inprocess", **example)
    with pipewarden.load_pipeline(str(weights), isolation="process", **example) as proc:
        assert isinstance(proc, PipelineHandle)
        g_in, g_proc = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        torch.manual_seed(11)
        out_in = inproc(generator=g_in, num_inference_steps=steps)
        rng_in = torch.get_rng_state()
        torch.manual_seed(11)
        out_proc = proc(generator=g_proc, num_inference_steps=steps)
        rng_proc = torch.get_rng_state()
    assert out_proc.dtype == out_in.dtype and out_proc.shape == out_in.shape
    assert torch.equal(out_proc, out_in)
    # the caller's generator and the global RNG advance exactly as they do in-process
    assert torch.equal(g_proc.get_state(), g_in.get_state())
    assert torch.equal(rng_proc, rng_in)


def test_handle_exposes_read_only_configs(weights, example):
    with pipewarden.load_pipeline(str(weights), isolation="process", **example) as pipe:
        assert pipe.class_name == "OneStepExamplePipeline"
        assert tuple(pipe.config["unet"]) == ("diffusers", "UNet2DModel")
        assert pipe.unet.config.sample_size == 8
        assert pipe.unet.config["in_channels"] == 3
        assert pipe.scheduler.config.num_train_timesteps == 1000
        assert set(pipe.components) == {"unet", "scheduler"}
        with pytest.raises(AttributeError):
            pipe.unet.config.sample_size = 64
        with pytest.raises(TypeError):
            pipe.config["unet"] = None  # type: ignore[index]
        assert pipe.to("cpu") is pipe and pipe.device == "cpu"
        with pytest.raises(AttributeError):
            pipe.no_such_component  # noqa: B018
        assert {s.name for s in pipe.layers} >= {"seccomp", "landlock-fs", "rlimits", "tripwire"}
    assert pipe.closed
    with pytest.raises(WorkerError, match="closed"):
        pipe(num_inference_steps=1)


def test_outputs_rebuilt_as_host_objects(hostile):
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    out = hostile(mode="images")
    assert type(out) is ImagePipelineOutput and len(out.images) == 2
    assert all(isinstance(im, Image.Image) and im.size == (8, 8) and im.mode == "RGB" for im in out.images)
    got = hostile(mode="numpy", n=3)
    assert isinstance(got["arr"], np.ndarray) and got["arr"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert got["n"] == 3 and got["t"] == (1, "x")


# ----------------------------------------------------------------------- hostile behaviour


def test_8gib_allocation_in_a_pipeline_is_a_resource_limit_error(weights, hostile_file, example):
    with pipewarden.load_pipeline(str(weights), isolation="process", limits=Limits(memory_mb=2048, wall_s=60), **hostile_file) as pipe:
        with pytest.raises(ResourceLimitError, match="memory") as excinfo:
            pipe(mode="alloc")
        assert excinfo.value.rule != "limits.wall-clock"  # the memory limit ended it, not wall_s=60
        assert torch.equal(pipe(mode="ok", n=2), torch.ones(2))  # the worker survives a refused allocation
    _host_still_works(weights, example)


@pytest.mark.slow
def test_infinite_loop_in_a_pipeline_is_a_resource_limit_error(weights, hostile_file, example):
    # Each limit is the one that ends the loop (the other is far away): the error's rule says which.
    for limits, rule in ((Limits(cpu_s=2, wall_s=600), "limits.cpu"), (Limits(cpu_s=600, wall_s=2.0), "limits.wall-clock")):
        pipe = pipewarden.load_pipeline(str(weights), isolation="process", limits=limits, **hostile_file)
        with pytest.raises(ResourceLimitError) as excinfo:
            pipe(mode="loop")
        assert excinfo.value.rule == rule
        assert pipe.closed
    _host_still_works(weights, example)


def test_deep_recursion_in_a_pipeline_is_a_pipewarden_error(hostile):
    with pytest.raises(PipewardenError, match="[Rr]ecursion"):
        hostile(mode="recurse")
    assert torch.equal(hostile(mode="ok", n=1), torch.ones(1))


def test_oversize_result_is_a_resource_limit_error(weights, hostile_file, example):
    pipe = pipewarden.load_pipeline(str(weights), isolation="process", limits=Limits(max_message_mb=1, wall_s=60), **hostile_file)
    with pytest.raises(ResourceLimitError, match="max_message_mb"):
        pipe(mode="big")
    assert pipe.closed
    _host_still_works(weights, example)


def test_pipeline_errors_come_back_as_pipewarden_errors(hostile):
    with pytest.raises(PipewardenError, match="ValueError: boom") as info:
        hostile(mode="boom")
    assert type(info.value) is PipewardenError
    with pytest.raises(PolicyViolation, match="open"):
        hostile(mode="open")
    assert torch.equal(hostile(mode="ok", n=1), torch.ones(1))


# ------------------------------------------------------------------------- what may cross


def test_host_objects_as_components_are_refused(weights, example):
    # Schedulers, models, tokenizers cross as data (tests/loader/test_sd_components.py); an
    # object of any other class is refused before a worker starts, never accepted and ignored.
    class Sched:
        pass

    with pytest.raises(NotAllowedError, match='isolation="inprocess"') as info:
        pipewarden.load_pipeline(str(weights), isolation="process", scheduler=Sched(), **example)
    assert info.value.rule == "worker.object-component"


def _request(weights: Path, source: bytes, *, tamper: str | None = None, **kw) -> WorkerLoadRequest:
    from pipewarden.loader.local import resolve_local_weights
    from pipewarden.loader.snapshot import FileRecord, Snapshot

    snap = resolve_local_weights(weights)
    # every file pinned, as load_pipeline does with hub metadata or a lock file
    files = {rel: FileRecord(rel, sha256_file(weights / rel), rec.size) for rel, rec in snap.files.items()}
    if tamper is not None:
        files[tamper] = FileRecord(tamper, "0" * 64, files[tamper].size)
    snap = Snapshot(root=snap.root, source=snap.source, commit=snap.commit, files=files)
    return WorkerLoadRequest(source, hashlib.sha256(source).hexdigest(), "pipeline.py", snap, **kw)


def test_the_worker_re_verifies_every_weight_file(weights):
    from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE

    src = EXAMPLE_PIPELINE_SOURCE.encode()
    # the host's digest for the weights differs from the bytes on disk (as if they changed after
    # verification): the worker, which hashes what it loads, refuses
    with pytest.raises(IntegrityError, match="diffusion_pytorch_model.safetensors"):
        start_worker_pipeline(_request(weights, src, tamper="unet/diffusion_pytorch_model.safetensors"), Limits(wall_s=60))
    with pytest.raises(IntegrityError, match="sha256"):
        start_worker_pipeline(
            WorkerLoadRequest(src + b"\n# changed", hashlib.sha256(src).hexdigest(), "pipeline.py", _request(weights, src).weights)
        )


def test_inactive_layers_warn_and_required_ones_refuse(weights):
    from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE

    src = EXAMPLE_PIPELINE_SOURCE.encode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = start_worker_pipeline(_request(weights, src), Limits(wall_s=60), _unsafe_skip_layers=("netns",))
    try:
        msgs = [str(w.message) for w in caught if issubclass(w.category, IsolationWarning)]
        assert len(msgs) == 1 and "netns" in msgs[0]
        assert {s.name: s.active for s in pipe.layers}["netns"] is False
    finally:
        pipe.close()
    with pytest.raises(NotAllowedError, match="netns"):
        start_worker_pipeline(
            _request(weights, src, required_layers=frozenset({"netns"})), Limits(wall_s=60), _unsafe_skip_layers=("netns",)
        )


def test_each_pipeline_gets_a_fresh_worker(weights, example):
    a = pipewarden.load_pipeline(str(weights), isolation="process", **example)
    b = pipewarden.load_pipeline(str(weights), isolation="process", **example)
    try:
        assert a.worker_pid != b.worker_pid
        assert a.worker_pid != os.getpid() and b.worker_pid != os.getpid()
    finally:
        a.close()
        b.close()


def test_hf_cache_layout_symlinks_are_readable_and_nothing_else(weights, tmp_path):
    """snapshots/<commit>/x -> ../../blobs/<sha>: Landlock must allow each blob, not the blobs dir."""
    import shutil

    from pipewarden.loader.snapshot import FileRecord, Snapshot

    repo = tmp_path / "models--org--tiny"
    blobs = repo / "blobs"
    snap_root = repo / "snapshots" / ("c" * 40)
    blobs.mkdir(parents=True)
    files = {}
    for src in sorted(p for p in weights.rglob("*") if p.is_file()):
        rel = src.relative_to(weights).as_posix()
        digest = sha256_file(src)
        shutil.copyfile(src, blobs / digest)
        link = snap_root / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blobs / digest, link.parent))
        files[rel] = FileRecord(rel, digest, src.stat().st_size)
    (blobs / "unrelated-blob").write_text("not part of this snapshot")
    from pipewarden.isolation import _read_paths
    from pipewarden.isolation._client import WorkerProcess

    snapshot = Snapshot(root=snap_root, source="org/tiny", commit="c" * 40, files=files, boundary=tmp_path)
    w = WorkerProcess(Limits(wall_s=60), read_paths=_read_paths(snapshot), test_hooks=True)
    try:
        def read(path: Path) -> str:
            return w.request({"op": "hook", "name": "read", "arg": str(path), "suspend_tripwire": True}, what="hook").detail

        for rel in files:
            assert read(snap_root / rel) == '{"errno": 0}', rel  # through the symlink to its blob
        assert read(blobs / "unrelated-blob") == '{"errno": 13}'
        assert read(weights / "model_index.json") == '{"errno": 13}'  # not part of this snapshot
    finally:
        w.close()
