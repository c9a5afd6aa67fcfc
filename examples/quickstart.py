"""Load a community pipeline safely: the README's quick start as a script (offline).

    .venv/bin/python examples/quickstart.py [--isolation inprocess]

Builds a tiny weights directory and our example pipeline in a temp dir, pins the pipeline by its
sha256, loads it through every gate and runs it. Replace the paths with your own weights and
pipeline; read the pipeline before you pin it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import pipewarden
from pipewarden._fixtures import build_weights, write_example_pipeline
from pipewarden.loader.digests import sha256_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--isolation", choices=("process", "inprocess"), default="process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = build_weights(Path(tmp) / "weights")
        code = write_example_pipeline(Path(tmp) / "pipeline")
        pipe = pipewarden.load_pipeline(
            weights,
            custom_pipeline=code,
            trust_remote_code=True,
            pipeline_sha256=sha256_file(code),
            isolation=args.isolation,
        )
        image = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=5)
        print(type(pipe).__name__, tuple(image.shape), float(image.abs().mean()))
        getattr(pipe, "close", lambda: None)()


if __name__ == "__main__":
    main()
