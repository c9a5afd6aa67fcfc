"""Figure (f): a Stable-Diffusion-shaped pipeline, every ratio against an in-run baseline.

The model: Stable Diffusion 1.5's component configs (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel + CLIP tokenizer, PNDM-style DDIM scheduler) with every width halved, so the fp32
weights total about 1.1 GB instead of 4.3 GB; random weights, generated once into
``benchmarks/.cache/sd15-half`` (never committed). The pipeline is a compact SD text-to-image
community pipeline (``pipewarden._tiny.SD_PIPELINE_SOURCE``), called with a short prompt,
2 steps, 64x64 (so a call is dominated by the UNet, not by image size).

Figures (medians of alternating repeats; ``ab`` in ``_harness``):

* ``load_hit``: ``load_pipeline(..., isolation="inprocess")`` with every weight file vouched
  for by a verified-digest record, vs diffusers' ``DiffusionPipeline.from_pretrained(
  custom_pipeline=<file>, trust_remote_code=True)`` (which memory-maps and verifies nothing).
* ``load_first_call``: the same two loads followed by the first call.
* ``miss_vs_hashlib``: a record miss (fresh digest store: every byte hashed, in parallel) vs
  ``hashlib.sha256`` of the same bytes already in memory, one file after the other.
* ``hit_vs_miss``: the two kinds of verified load against each other (information).
* ``call_inprocess`` / ``call_process``: a call of the vetted pipeline (in-process sandbox, or a
  process-mode handle) vs the same source run as plain Python with the same components.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import statistics
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from benchmarks._harness import ab

DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"
REPO_NAME = "sd15-half"
PROMPT = "a photo of an astronaut riding a horse"
CALL = {"num_inference_steps": 2, "height": 64, "width": 64, "output_type": "np"}

#: Stable Diffusion 1.5's configs (runwayml/stable-diffusion-v1-5), widths halved.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [160, 320, 640, 640],  # SD 1.5: 320, 640, 1280, 1280
    "layers_per_block": 2,
    "cross_attention_dim": 384,  # SD 1.5: 768 (the text encoder's width)
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [64, 128, 256, 256],  # SD 1.5: 128, 256, 512, 512
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 384,  # SD 1.5: 768
    "intermediate_size": 1536,  # 3072
    "num_attention_heads": 6,  # 12
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "projection_dim": 384,
}
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "num_train_timesteps": 1000,
}


def build_repo(cache: Path = DEFAULT_CACHE) -> Path:
    """Write the SD-shaped repository once (about 1.1 GB of fp32 safetensors)."""
    target = cache / REPO_NAME
    if (target / "model_index.json").is_file():
        return target
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipewarden._tiny import clip_tokenizer_files

    tmp = cache / (REPO_NAME + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, model in (
            ("unet", UNet2DConditionModel(**UNET_CONFIG)),
            ("vae", AutoencoderKL(**VAE_CONFIG)),
        ):
            model.save_pretrained(tmp / name, safe_serialization=True)
            del model
            gc.collect()
        tok_files = clip_tokenizer_files()
        vocab = json.loads(tok_files["vocab.json"])
        text = CLIPTextModel(
            CLIPTextConfig(**TEXT_CONFIG, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                           pad_token_id=vocab["<|endoftext|>"])
        ).eval()
        text.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        del text
    tok = tmp / "tokenizer"
    tok.mkdir(exist_ok=True)
    for fname, data in tok_files.items():
        if fname == "tokenizer_config.json":
            cfg = json.loads(data)
            cfg["model_max_length"] = 77
            data = json.dumps(cfg, indent=2).encode()
        (tok / fname).write_bytes(data)
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(tmp / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, target)
    return target


def pipeline_file(cache: Path = DEFAULT_CACHE) -> Path:
    from pipewarden._tiny import SD_PIPELINE_SOURCE

    path = cache / "sd-pipeline" / "pipeline.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != SD_PIPELINE_SOURCE:
        path.write_text(SD_PIPELINE_SOURCE)
    return path


def weight_files(repo: Path) -> list[Path]:
    return sorted(p for p in repo.rglob("*.safetensors"))


def _plain_class(source: str) -> type:
    from diffusers import DiffusionPipeline

    module = types.ModuleType("plain_sd_pipeline")
    exec(compile(source, "pipeline.py", "exec"), module.__dict__)  # the baseline: what diffusers does
    (cls,) = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, DiffusionPipeline) and v is not DiffusionPipeline]
    return cls


class _Store:
    """Points the verified-digest store at a benchmark-owned file (never the user's cache)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0
        self.warm = root / "warm" / "verified-digests.json"

    def use_warm(self) -> None:
        os.environ["PIPEWARDEN_DIGEST_STORE"] = str(self.warm)

    def use_fresh(self) -> None:
        self.n += 1
        os.environ["PIPEWARDEN_DIGEST_STORE"] = str(self.root / f"fresh{self.n}" / "verified-digests.json")


def _note(what: str) -> None:
    import sys

    print(f"  (f) {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def run(cache: Path = DEFAULT_CACHE, *, quick: bool = False) -> dict[str, Any]:
    """``run_here`` in a fresh interpreter with one OpenMP thread (host, fork server and worker)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "src"), str(root), env.get("PYTHONPATH", "")) if p)
    code = (
        "import json\n"
        "from pathlib import Path\n"
        "from benchmarks.sd_bench import run_here\n"
        f"print('RESULT', json.dumps(run_here(Path({str(cache)!r}), quick={quick!r})), flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(root), stdout=subprocess.PIPE, text=True, timeout=7200)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"the SD-shaped benchmark failed (rc {proc.returncode}); its stderr is above")


def run_here(cache: Path = DEFAULT_CACHE, *, quick: bool = False) -> dict[str, Any]:
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    import pipewarden
    from pipewarden.loader.digests import sha256_file

    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    repeats = 3 if quick else 7
    # One torch thread on every side: on a shared machine a busy neighbour stretches every OpenMP
    # barrier, and that noise would drown the figures (see isolation_bench.loop_overhead_isolated).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    repo = build_repo(cache)
    code = pipeline_file(cache)
    pin = sha256_file(code)
    files = weight_files(repo)
    total = sum(p.stat().st_size for p in files)
    out: dict[str, Any] = {"weights_bytes": total, "weight_files": len(files), "repeats": repeats, "quick": quick,
                           "torch_threads": 1, "call": {**CALL, "prompt": PROMPT}}
    saved_env = os.environ.get("PIPEWARDEN_DIGEST_STORE")
    tmp = Path(tempfile.mkdtemp(prefix="pw-sd-bench-"))
    store = _Store(tmp)
    common = {"custom_pipeline": str(code), "trust_remote_code": True, "pipeline_sha256": pin}

    def diffusers_load() -> Any:
        return DiffusionPipeline.from_pretrained(str(repo), custom_pipeline=str(code), trust_remote_code=True)

    def ours_hit() -> Any:
        store.use_warm()
        return pipewarden.load_pipeline(str(repo), isolation="inprocess", **common)

    def ours_miss() -> Any:
        store.use_fresh()
        return pipewarden.load_pipeline(str(repo), isolation="inprocess", **common)

    def call(pipe: Any) -> Any:
        return pipe(PROMPT, generator=torch.Generator().manual_seed(0), **CALL)

    def timed(fn: Any) -> tuple[float, Any]:
        gc.collect()
        t0 = time.perf_counter()
        value = fn()
        return time.perf_counter() - t0, value

    datas = [p.read_bytes() for p in files]  # page cache warm; the raw-hashlib baseline's input

    def raw_hash() -> None:
        for d in datas:
            hashlib.sha256(d).hexdigest()

    samples: dict[str, list[float]] = {k: [] for k in ("diffusers", "diffusers_call", "hit", "hit_call", "miss", "hashlib")}

    def step_diffusers() -> None:
        t, pipe = timed(diffusers_load)
        samples["diffusers"].append(t)
        samples["diffusers_call"].append(t + timed(lambda: call(pipe))[0])

    def step_hit() -> None:
        t, pipe = timed(ours_hit)
        samples["hit"].append(t)
        samples["hit_call"].append(t + timed(lambda: call(pipe))[0])

    def step_miss() -> None:
        samples["miss"].append(timed(ours_miss)[0])

    def step_hashlib() -> None:
        samples["hashlib"].append(timed(raw_hash)[0])

    try:
        _note("warm-up (untimed): fills the warm digest store")
        ours_hit()
        gates: list[str] = []
        store.use_warm()
        pipewarden.load_pipeline(str(repo), isolation="inprocess", on_gate=lambda g, v: gates.append(f"{g}: {v}"), **common)
        out["hit_gate"] = next((g for g in gates if g.startswith("components")), None)
        call(diffusers_load())
        gc.collect()
        steps = [step_diffusers, step_hit, step_miss, step_hashlib]
        for i in range(repeats):  # rotate the order each repeat: no step always runs first
            _note(f"loads: repeat {i + 1}/{repeats}")
            for step in steps[i % len(steps) :] + steps[: i % len(steps)]:
                step()
        datas.clear()
        med = {k: statistics.median(v) for k, v in samples.items()}
        out["samples_s"] = samples
        out["medians_s"] = med
        out["load_hit"] = {"baseline_s": med["diffusers"], "candidate_s": med["hit"], "ratio": med["hit"] / med["diffusers"]}
        out["load_first_call"] = {
            "baseline_s": med["diffusers_call"], "candidate_s": med["hit_call"], "ratio": med["hit_call"] / med["diffusers_call"]
        }
        out["miss_vs_hashlib"] = {
            "baseline_s": med["hashlib"], "candidate_s": med["miss"], "ratio": med["miss"] / med["hashlib"],
            "raw_hashlib_MBps": total / med["hashlib"] / 1e6,
        }
        out["hit_vs_miss"] = {"baseline_s": med["miss"], "candidate_s": med["hit"], "ratio": med["hit"] / med["miss"]}

        # Calls: the same components under the plain class, the vetted class, and a process handle.
        from pipewarden.sandbox import load_class

        store.use_warm()
        vetted = ours_hit()
        source = code.read_text()
        comps = {k: v for k, v in vetted.components.items()}
        plain = _plain_class(source)(**comps)
        vetted_inproc = load_class(source, filename="pipeline.py")(**comps)
        ref = call(plain).images
        same_in = bool((ref == call(vetted_inproc).images).all())
        _note("calls, in-process")
        out["call_inprocess"] = {**ab(lambda: call(plain), lambda: call(vetted_inproc), repeats=repeats), "bit_identical": same_in}
        try:
            _note("process-mode load and calls")
            t0 = time.perf_counter()
            handle = pipewarden.load_pipeline(str(repo), isolation="process", **common)
            out["process_load_hit_s"] = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - reported, never hidden
            out["call_process"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        else:
            try:
                same_proc = bool((ref == call(handle).images).all())
                out["call_process"] = {**ab(lambda: call(plain), lambda: call(handle), repeats=repeats), "bit_identical": same_proc}
            finally:
                handle.close()
    finally:
        torch.set_num_threads(threads)
        if saved_env is None:
            os.environ.pop("PIPEWARDEN_DIGEST_STORE", None)
        else:
            os.environ["PIPEWARDEN_DIGEST_STORE"] = saved_env
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    out["load_hit_ratio"] = out["load_hit"]["ratio"]
    out["load_first_call_ratio"] = out["load_first_call"]["ratio"]
    out["miss_vs_hashlib_ratio"] = out["miss_vs_hashlib"]["ratio"]
    out["call_inprocess_ratio"] = out["call_inprocess"]["ratio"]
    if "ratio" in out.get("call_process", {}):
        out["call_process_ratio"] = out["call_process"]["ratio"]
    return out


if __name__ == "__main__":
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
