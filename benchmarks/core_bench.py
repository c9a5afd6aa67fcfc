"""Figures (a), (b) and (e) of the performance issue; each a ratio against an in-run baseline.

(a) vetted vs plain class: the same pipeline source executed as plain Python (baseline) and
    through ``pipewarden.sandbox.load_class`` (candidate), same components, one UNet step and a
    50-step DDPM loop, in-process.
(b) fully verified ``load_pipeline(..., isolation="inprocess")`` (pin, scan, restricted compile,
    exec, safetensors read once into private memory; the weights vouched for by a
    verified-digest record, and, as information, with ``reverify="always"``) vs diffusers' unverified
    ``DiffusionPipeline.from_pretrained(custom_pipeline=<file>, trust_remote_code=True)``, warm
    page cache. Also the same with the first call included (diffusers maps weights lazily, so
    part of its load cost moves into the first step).
(e) hashing throughput: the loader's read-and-hash of the weights file vs ``hashlib.sha256`` of
    the same bytes already in memory (raw hashlib).

All with google/ddpm-cifar10-32's UNet architecture (35.7 M parameters, random weights).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import types
from pathlib import Path
from typing import Any

from benchmarks._harness import ab

DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"


def _weights(cache: Path) -> Path:
    from pipewarden._fixtures import DDPM_CIFAR10_UNET_CONFIG, build_weights

    target = cache / "ddpm-cifar10-32-random"
    if not (target / "model_index.json").is_file():
        build_weights(target, unet_config=DDPM_CIFAR10_UNET_CONFIG, seed=0)
    return target


def _pipeline_file(cache: Path) -> Path:
    from pipewarden._fixtures import write_example_pipeline

    return write_example_pipeline(cache / "example")


def _plain_class(source: str, filename: str) -> type:
    from diffusers import DiffusionPipeline

    module = types.ModuleType("plain_pipeline")
    exec(compile(source, filename, "exec"), module.__dict__)  # the baseline: what diffusers does
    (cls,) = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, DiffusionPipeline) and v is not DiffusionPipeline]
    return cls


def figure_a(cache: Path, *, repeats: int = 21, loop_repeats: int = 5) -> dict[str, Any]:
    import torch

    from pipewarden.loader.components import load_components
    from pipewarden.loader.local import resolve_local_weights
    from pipewarden.sandbox import load_class

    weights = _weights(cache)
    source = _pipeline_file(cache).read_text()
    comps = load_components(resolve_local_weights(weights))
    plain = _plain_class(source, "pipeline.py")(**comps)
    vetted = load_class(source, filename="pipeline.py")(**comps)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    def one(p):
        return lambda: p(generator=torch.Generator().manual_seed(0), num_inference_steps=1)

    def loop(p):
        return lambda: p(generator=torch.Generator().manual_seed(0), num_inference_steps=50)

    torch.manual_seed(0)
    ref = one(plain)()
    torch.manual_seed(0)
    same = torch.equal(ref, one(vetted)())
    a1 = ab(one(plain), one(vetted), repeats=repeats)
    # (the one-step path uses the scheduler's initial state: measure it before the loops)
    a50 = ab(loop(plain), loop(vetted), repeats=loop_repeats, warmup=0)
    return {"one_step": a1, "loop_50": a50, "bit_identical": same}


def figure_b(cache: Path, *, repeats: int = 7) -> dict[str, Any]:
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    import pipewarden
    from pipewarden.loader.digests import sha256_file

    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    weights = _weights(cache)
    code = _pipeline_file(cache)
    pin = sha256_file(code)

    def diffusers_load():
        return DiffusionPipeline.from_pretrained(str(weights), custom_pipeline=str(code), trust_remote_code=True)

    def ours_load():
        return pipewarden.load_pipeline(
            weights, custom_pipeline=code, trust_remote_code=True, pipeline_sha256=pin, isolation="inprocess"
        )

    def first_call(loader):
        return lambda: loader()(generator=torch.Generator().manual_seed(0))

    # A benchmark-owned digest store (never the user's): the warm-up load fills it, so the timed
    # loads are record hits (the weights were written long before: no racy records).
    saved = os.environ.get("PIPEWARDEN_DIGEST_STORE")
    with tempfile.TemporaryDirectory(prefix="pw-bench-store-") as tmp:
        os.environ["PIPEWARDEN_DIGEST_STORE"] = os.path.join(tmp, "verified-digests.json")
        try:
            load = ab(diffusers_load, ours_load, repeats=repeats)
            with_call = ab(first_call(diffusers_load), first_call(ours_load), repeats=max(3, repeats // 2))

            def ours_always():
                return pipewarden.load_pipeline(
                    weights, custom_pipeline=code, trust_remote_code=True, pipeline_sha256=pin, isolation="inprocess",
                    reverify="always",
                )

            rehash = ab(diffusers_load, ours_always, repeats=repeats)
        finally:
            if saved is None:
                os.environ.pop("PIPEWARDEN_DIGEST_STORE", None)
            else:
                os.environ["PIPEWARDEN_DIGEST_STORE"] = saved
    return {"load": load, "load_plus_first_step": with_call, "load_reverify_always": rehash}


def figure_e(cache: Path, *, repeats: int = 7) -> dict[str, Any]:
    from pipewarden.loader._safetensors import read_and_hash

    path = _weights(cache) / "unet" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    size = len(data)

    def raw():
        hashlib.sha256(data).hexdigest()

    def ours():
        read_and_hash(path)

    r = ab(raw, ours, repeats=repeats)
    return {
        "bytes": size,
        "raw_hashlib_MBps": size / r["baseline_s"] / 1e6,
        "loader_read_and_hash_MBps": size / r["candidate_s"] / 1e6,
        "throughput_ratio": r["baseline_s"] / r["candidate_s"],
    }


def run(cache: Path | None = None) -> dict[str, Any]:
    cache = cache or DEFAULT_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    return {"a": figure_a(cache), "b": figure_b(cache), "e": figure_e(cache)}


if __name__ == "__main__":  # pragma: no cover
    import json

    with tempfile.TemporaryDirectory():
        print(json.dumps(run(), indent=2))
