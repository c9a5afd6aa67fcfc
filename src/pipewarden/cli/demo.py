"""``pipewarden demo``: offline, in well under a minute, what pipewarden is for.

In order: (1) three malicious community pipelines, pinned and opted into like any other, each
stopped with its rule and nothing done; (2) the vetted example pipeline run through every gate
(process isolation by default), its output compared bit for bit with the same class run by plain
diffusers; (3) a picture a person recognises: a tiny UNet fitted here, in seconds, to a smiley
the demo draws, then sampled through the sandboxed pipeline and saved as a PNG.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import stat
import sys
import time
import types
from pathlib import Path
from typing import Any

_PIPELINE_HEAD = '''\
import torch
from diffusers import DiffusionPipeline


class InnocentLookingPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, num_inference_steps: int = 1):
'''

#: (what it tries, source). Each is stopped by a different rule; none of them gets to act.
MALICIOUS: tuple[tuple[str, str], ...] = (
    ("steals HF_TOKEN from the environment",
     "import os\n" + _PIPELINE_HEAD + "        return os.environ.get('HF_TOKEN', '')\n"),
    ("reads your SSH key",
     _PIPELINE_HEAD + "        return open('/root/.ssh/id_ed25519').read()\n"),
    ("escapes through the object graph",
     _PIPELINE_HEAD + "        return ().__class__.__bases__[0].__subclasses__()\n"),
)


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


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
    p.add_argument("--steps", type=_positive_int, default=10, help="denoising steps, at least 1 (default: 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import pipewarden
    from pipewarden import fsaccess
    from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE
    from pipewarden.errors import PipewardenError

    # Every file goes through fsaccess (red team 9H F10): --out may be a folder someone else laid
    # out (a cloned repo's demo-output/), so no write follows a planted link, and the pins are
    # the digests of the bytes the demo holds, not of whatever is on disk by then.
    out = Path(args.out)
    fsaccess.make_output_dir(out)
    weights = out / "weights"
    print(f"pipewarden demo (offline; files in {os.path.abspath(out)}, isolation={args.isolation!r})", flush=True)
    t0 = time.perf_counter()
    if not _have_weights(weights):
        print("  fitting a tiny UNet (165 k parameters) to a smiley the demo draws ...", flush=True)
        _fit_weights(out, weights)
        print(f"  ... done in {time.perf_counter() - t0:.1f} s", flush=True)

    print("\n1. Three malicious pipelines, pinned and opted into (trust_remote_code=True):", flush=True)
    for i, (attempt, source) in enumerate(MALICIOUS):
        path = _write_source(out / f"malicious_{i + 1}", source)
        where = "at load"
        try:
            pipe = pipewarden.load_pipeline(weights, custom_pipeline=path, trust_remote_code=True,
                                            pipeline_sha256=_sha256(source), isolation=args.isolation)
            where = "when called" + (", inside the worker" if args.isolation == "process" else "")
            try:
                pipe()
            finally:
                _close(pipe)
        except PipewardenError as exc:
            print(f"  [stopped {where}] {attempt}\n      {type(exc).__name__} [{exc.rule}]: {_first_line(exc.what)}")
        else:  # pragma: no cover - the demo exists to show this never happens
            print(f"  [NOT STOPPED] {attempt}")
            return 1

    print("\n2. The vetted example pipeline against plain diffusers:", flush=True)
    code_dir = out / "pipeline"
    pipeline_file = _write_source(code_dir, EXAMPLE_PIPELINE_SOURCE)
    pin = _sha256(EXAMPLE_PIPELINE_SOURCE)
    pipe = pipewarden.load_pipeline(weights, custom_pipeline=code_dir, trust_remote_code=True,
                                    pipeline_sha256=pin, isolation=args.isolation, on_gate=_say)
    try:
        # the one-step path of the seed pipeline draws the scheduler's noise from torch's global
        # RNG (no generator=): both runs start from the same global state, as two runs a user
        # compares would
        torch.manual_seed(0)
        image = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=args.steps)
        plain = _plain_diffusers(weights, EXAMPLE_PIPELINE_SOURCE, str(pipeline_file))
        torch.manual_seed(0)
        reference = plain(generator=torch.Generator().manual_seed(0), num_inference_steps=args.steps)
    finally:
        _close(pipe)
    same = image.dtype == reference.dtype and image.shape == reference.shape and torch.equal(image, reference)
    diff = float((image.float() - reference.float()).abs().max()) if image.shape == reference.shape else float("nan")
    verdict = "bit-identical" if same else "DIFFERENT"
    print(f"  {verdict}: sandboxed {args.isolation} output vs plain diffusers, {args.steps} DDPM steps, seed 0 "
          f"(tensor {tuple(image.shape)}, max |difference| {diff:g})")

    png = out / "demo.png"
    _save_png(image, png)
    print(f"\n3. Sampled through the sandboxed pipeline: {png} (a smiley, {image.shape[-1]}x{image.shape[-2]} "
          "pixels shown at 16x)")
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0 if same else 1


def _sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _write_source(folder: Path, source: str) -> Path:
    """``folder/pipeline.py`` holding ``source``: written through no link (see fsaccess)."""
    from pipewarden import fsaccess

    fsaccess.make_output_dir(folder)
    path = folder / "pipeline.py"
    fsaccess.write_new_or_regular(path, source.encode("utf-8"))
    return path


def _have_weights(weights: Path) -> bool:
    """Weights fitted by an earlier run: a real folder (not a link) with a model_index.json.

    Their files are then read by the loader, which follows no link out of the folder.
    """
    from pipewarden.errors import InputError

    try:
        st = os.lstat(weights)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(
            f"{weights} is not a folder of weights the demo fitted (it is a symlink or a file)",
            rule="cli.output-unwritable",
            fix="remove it, or pass another --out",
        )
    try:
        index = os.lstat(weights / "model_index.json")
    except FileNotFoundError:
        index = None
    if index is None or not stat.S_ISREG(index.st_mode):
        raise InputError(
            f"{weights} holds no model_index.json: not weights the demo fitted (or an interrupted run)",
            rule="cli.output-unwritable",
            fix=f"remove {weights}, or pass another --out",
        )
    return True


def _fit_weights(out: Path, weights: Path) -> None:
    """Fit into a fresh private folder (mkdtemp) and rename it into place: nothing is written
    into a folder that existed before, so no planted link inside it can be written through."""
    import shutil
    import tempfile

    from pipewarden._fixtures import fit_demo_weights

    tmp = Path(tempfile.mkdtemp(prefix=".weights-", dir=out))
    try:
        fit_demo_weights(tmp)
        os.rename(tmp, weights)  # weights did not exist (_have_weights); a dir that appeared meanwhile fails
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _say(gate: str, verdict: str) -> None:
    print(f"  [ok] {gate:<12} {verdict}", flush=True)


def _first_line(text: str) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= 160 else line[:157] + "..."


def _close(pipe: Any) -> None:
    close = getattr(pipe, "close", None)
    if callable(close):
        close()


def _plain_diffusers(weights: Path, source: str, filename: str) -> Any:
    """The same pipeline class run by plain diffusers and torch: no pipewarden in the way.

    The source is our own example (trusted project code), executed as an ordinary module from
    the very string the demo pinned and wrote, never re-read from disk (red team 9H F10: the file
    could be swapped after the sandbox read it).
    """
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # no advice about optional packages in the demo output
    module = types.ModuleType("pipewarden_demo_plain")
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102
    classes = [v for v in module.__dict__.values() if isinstance(v, type) and v.__module__ == module.__name__]
    unet = UNet2DModel.from_pretrained(str(weights / "unet"))
    scheduler = DDPMScheduler.from_pretrained(str(weights / "scheduler"))
    return classes[0](unet=unet, scheduler=scheduler)


def _save_png(image: Any, path: Path) -> None:
    import torch
    from PIL import Image

    arr = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(dtype=torch.uint8)
    pil = Image.fromarray(arr.permute(1, 2, 0).cpu().numpy())
    pil = pil.resize((pil.width * 16, pil.height * 16), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    from pipewarden import fsaccess

    fsaccess.write_new_or_regular(path, buf.getvalue())


if __name__ == "__main__":  # pragma: no cover
    from pipewarden.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
