"""``pipewarden demo``: the main job, offline, on a small built-in fixture.

Builds a small weights directory (random, seeded, safetensors), writes our example pipeline (the
same shape as the guide's ``one_step_unet.py``), pins it, loads it through every gate while
printing each gate's verdict, runs it, saves the output as a PNG and prints where. It also shows
two refusals: a tampered copy and a load without the opt-in (neither executes anything).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

#: A small UNet (32x32 images, ~0.9 M parameters) so the demo output is a visible picture.
DEMO_UNET_CONFIG: dict = {
    "_class_name": "UNet2DModel",
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the main job offline on a small built-in fixture",
        description="Offline, in well under a minute: three malicious pipelines stopped (each with "
        "its rule), the vetted pipeline's output compared bit for bit with plain diffusers, and a "
        "picture sampled through the sandboxed pipeline, saved as a PNG.",
    )
    p.add_argument("--out", default="demo-output", help="directory for the fixture and the PNG (default: demo-output)")
    p.add_argument(
        "--isolation",
        choices=("process", "inprocess"),
        default="process",
        help="where the vetted pipeline runs (default: process)",
    )
    p.add_argument("--steps", type=int, default=10, help="denoising steps (default: 10)")
    p.set_defaults(func=run)


def _say(gate: str, verdict: str) -> None:
    print(f"  [ok] {gate:<12} {verdict}", flush=True)


def run(args: argparse.Namespace) -> int:
    import torch

    import pipewarden
    from pipewarden._fixtures import build_weights, write_example_pipeline
    from pipewarden.errors import IntegrityError, TrustRequiredError
    from pipewarden.loader.digests import sha256_file

    out = Path(args.out).resolve()
    weights = out / "weights"
    code_dir = out / "pipeline"
    print(f"pipewarden demo: offline, fixture in {out}")
    t0 = time.perf_counter()
    if not (weights / "model_index.json").is_file():
        build_weights(weights, unet_config=DEMO_UNET_CONFIG, seed=0)
    pipeline_file = write_example_pipeline(code_dir)
    pin = sha256_file(pipeline_file)
    print(f"1. fixture: weights {weights} (safetensors), pipeline {pipeline_file}")
    print(f"   pin: pipeline_sha256={pin}")

    print("2. refusals (nothing is executed):")
    try:
        pipewarden.load_pipeline(weights, custom_pipeline=code_dir, pipeline_sha256=pin, isolation=args.isolation)
    except TrustRequiredError as exc:
        print(f"  [refused] no opt-in        -> {type(exc).__name__}: {exc.rule}")
    with tempfile.TemporaryDirectory() as tmp:
        tampered = Path(tmp) / "pipeline.py"
        tampered.write_bytes(pipeline_file.read_bytes().replace(b"timestep = 1", b"timestep = 2"))
        try:
            pipewarden.load_pipeline(
                weights, custom_pipeline=tampered, trust_remote_code=True, pipeline_sha256=pin, isolation=args.isolation
            )
        except IntegrityError as exc:
            print(f"  [refused] 1-byte edit      -> {type(exc).__name__}: {exc.rule}")

    print(f"3. load through every gate (isolation={args.isolation!r}):")
    pipe = pipewarden.load_pipeline(
        weights,
        custom_pipeline=code_dir,
        trust_remote_code=True,
        pipeline_sha256=pin,
        isolation=args.isolation,
        on_gate=_say,
    )
    try:
        print(f"4. run: {args.steps} DDPM steps, seed 0")
        generator = torch.Generator().manual_seed(0)
        image = pipe(generator=generator, num_inference_steps=args.steps)
    finally:
        close = getattr(pipe, "close", None)
        if callable(close):
            close()
    png = out / "demo.png"
    _save_png(image, png)
    print(f"5. output: tensor {tuple(image.shape)} -> {png}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def _save_png(image, path: Path) -> None:
    from PIL import Image

    arr = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8)
    pil = Image.fromarray(arr.permute(1, 2, 0).cpu().numpy())
    pil = pil.resize((pil.width * 8, pil.height * 8), Image.Resampling.NEAREST)
    pil.save(path)


if __name__ == "__main__":  # pragma: no cover
    from pipewarden.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
