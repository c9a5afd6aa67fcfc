"""One short GPU check of process isolation (run by hand on a machine with an NVIDIA GPU).

    python benchmarks/gpu_check.py [--unet ddpm|tiny]

Builds random weights (google/ddpm-cifar10-32's UNet architecture by default) and a GPU-capable
example pipeline in a temp dir, then:

1. loads it with isolation="process" (every layer applied, RLIMIT_AS left off where GPUs exist),
   calls ``pipe.to("cuda")`` (the worker creates and owns the CUDA context) and runs 10 steps;
2. runs the same in-process on CUDA and compares the outputs (bit-identical expected; the max
   absolute difference is printed either way);
3. checks ``Limits.gpu_memory_fraction``: with a 0.25 cap, asking the worker for 50% of the
   card's memory must end in ResourceLimitError, and the host's CUDA state stays untouched.

Prints a JSON summary and exits 0 when every check passed, 1 otherwise, 2 without CUDA.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

GPU_PIPELINE = '''\
from typing import Optional

import torch
from diffusers import DiffusionPipeline


class GpuExamplePipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, generator: Optional[torch.Generator] = None, num_inference_steps: int = 10, grab_bytes: int = 0):
        if grab_bytes:
            block = torch.empty(grab_bytes, dtype=torch.uint8, device=self.unet.device)
            return block.shape[0]
        size = self.unet.config.sample_size
        image = torch.randn((1, self.unet.config.in_channels, size, size), generator=generator)
        image = image.to(self.unet.device)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            model_output = self.unet(image, t).sample
            image = self.scheduler.step(model_output, t, image, generator=generator).prev_sample
        return image.cpu()
'''


def _process_on_cuda_smoke(weights: Path, common: dict) -> None:
    import torch

    import pipewarden

    with pipewarden.load_pipeline(str(weights), isolation="process", **common) as pipe:
        pipe.to("cuda")
        pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=1)


def _diagnose(weights: Path, code: Path) -> dict:
    """Which layer breaks CUDA? Retry with one layer left out at a time (test-only switch)."""
    import hashlib

    import torch

    from pipewarden.isolation import WorkerLoadRequest, start_worker_pipeline
    from pipewarden.limits import Limits
    from pipewarden.loader.local import resolve_local_weights

    source = code.read_bytes()
    req = WorkerLoadRequest(source, hashlib.sha256(source).hexdigest(), "pipeline.py", resolve_local_weights(weights))
    out = {}
    for skip in ((), ("seccomp",), ("landlock-fs",), ("rlimits",), ("uid",), ("netns",), ("env",)):
        name = "+".join(skip) or "none"
        try:
            pipe = start_worker_pipeline(req, Limits(wall_s=180), _unsafe_skip_layers=skip)
            try:
                pipe.to("cuda")
                pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=1)
                out[f"skip {name}"] = "works"
            finally:
                pipe.close()
        except Exception as exc:
            out[f"skip {name}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    import pipewarden
    from pipewarden._fixtures import DDPM_CIFAR10_UNET_CONFIG, TINY_UNET_CONFIG, build_weights
    from pipewarden.errors import ResourceLimitError
    from pipewarden.loader.digests import sha256_file

    argv = list(sys.argv[1:] if argv is None else argv)
    tiny = "--unet" in argv and argv[argv.index("--unet") + 1] == "tiny"
    summary: dict = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        print(json.dumps(summary, indent=2))
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    summary["device"] = torch.cuda.get_device_name(0)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        weights = build_weights(Path(tmp) / "w", unet_config=TINY_UNET_CONFIG if tiny else DDPM_CIFAR10_UNET_CONFIG)
        code = Path(tmp) / "c" / "pipeline.py"
        code.parent.mkdir()
        code.write_text(GPU_PIPELINE)
        common = {"custom_pipeline": str(code), "trust_remote_code": True, "pipeline_sha256": sha256_file(code)}

        # 1. process isolation on CUDA
        try:
            _process_on_cuda_smoke(weights, common)
        except Exception as exc:
            summary["process_cuda_error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            summary["diagnosis"] = _diagnose(weights, code)
            summary["ok"] = False
            print(json.dumps(summary, indent=2))
            return 1
        t0 = time.perf_counter()
        proc = pipewarden.load_pipeline(str(weights), isolation="process", **common)
        summary["process_load_s"] = round(time.perf_counter() - t0, 3)
        summary["layers"] = {s.name: [s.active, s.detail] for s in proc.layers}
        t0 = time.perf_counter()
        proc.to("cuda")
        summary["process_to_cuda_s"] = round(time.perf_counter() - t0, 3)
        summary["process_device"] = proc.device
        host_cuda_initialized_before = torch.cuda.is_initialized()
        t0 = time.perf_counter()
        out_proc = proc(generator=torch.Generator().manual_seed(0), num_inference_steps=10)
        summary["process_call_s"] = round(time.perf_counter() - t0, 3)
        proc.close()
        summary["host_cuda_initialized_by_process_mode"] = (not host_cuda_initialized_before) and torch.cuda.is_initialized()

        # 2. in-process on CUDA, same seed
        inproc = pipewarden.load_pipeline(str(weights), isolation="inprocess", **common).to("cuda")
        t0 = time.perf_counter()
        out_in = inproc(generator=torch.Generator().manual_seed(0), num_inference_steps=10)
        summary["inprocess_call_s"] = round(time.perf_counter() - t0, 3)
        summary["bit_identical"] = bool(torch.equal(out_proc, out_in))
        summary["max_abs_diff"] = float((out_proc.float() - out_in.float()).abs().max())
        ok &= summary["max_abs_diff"] < 1e-3 and not summary["host_cuda_initialized_by_process_mode"]
        del inproc

        # 3. GPU memory cap from Limits
        total = torch.cuda.get_device_properties(0).total_memory
        capped = pipewarden.load_pipeline(
            str(weights), isolation="process", limits=pipewarden.Limits(gpu_memory_fraction=0.25), **common
        )
        capped.to("cuda")
        small = capped(grab_bytes=int(total * 0.05))
        summary["cap_small_alloc_ok"] = small == int(total * 0.05)
        try:
            capped(grab_bytes=int(total * 0.5))
            summary["cap_enforced"] = False
        except ResourceLimitError as exc:
            summary["cap_enforced"] = True
            summary["cap_error"] = str(exc)[:200]
        except Exception as exc:  # report, do not hide
            summary["cap_enforced"] = False
            summary["cap_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            capped.close()
        ok &= bool(summary["cap_small_alloc_ok"]) and bool(summary["cap_enforced"])
    summary["ok"] = bool(ok)
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
