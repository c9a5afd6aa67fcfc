"""Lazy library imports that a real pipeline's first call would make from inside the sandbox are
made by the loader first (trusted code), in both modes: found on diffusers' examples/community
(``pipeline_stable_diffusion_3_differential_img2img.py``: ``mask_processor.preprocess(map)`` ->
``np.array(pil_image)`` -> ``PIL.Image.tobytes`` -> ``from . import ImageFile``;
``latent_consistency_img2img.py``: ``print(tensor)`` -> ``torch._tensor_str`` ->
``torch._subclasses.schema_check_mode``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

PREPROCESS_SOURCE = '''\
import torch
from diffusers import DiffusionPipeline, UNet2DModel, DDPMScheduler
from diffusers.image_processor import VaeImageProcessor


class PreprocessPipeline(DiffusionPipeline):
    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.mask_processor = VaeImageProcessor(do_normalize=False, do_convert_grayscale=True)

    def __call__(self, map):
        # the differential img2img pipelines' change-map path: the pipeline file never imports PIL
        out = self.mask_processor.preprocess(map, height=8, width=8)
        print("preprocessed:", out[0, 0, 0, :2])  # str(tensor), as latent_consistency_img2img.py prints
        return out
'''

_SCRIPT = """
import hashlib, sys
from pathlib import Path
import numpy as np
from PIL import Image
import pipewarden
for lazy in ("PIL.ImageFile", "torch._subclasses.schema_check_mode"):
    assert lazy not in sys.modules, f"the test needs a process that has not imported {lazy}"
root, mode = Path(sys.argv[1]), sys.argv[2]
code = root / "preprocess_pipeline.py"
pipe = pipewarden.load_pipeline(str(root / "weights"), custom_pipeline=str(code), trust_remote_code=True,
                                pipeline_sha256=hashlib.sha256(code.read_bytes()).hexdigest(), isolation=mode)
img = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L")
out = pipe(map=img)
print("SUM", int((out * 255).round().sum()))
"""


@pytest.mark.parametrize("isolation", ["inprocess", "process"])
def test_pil_array_conversion_in_a_fresh_process(tmp_path: Path, isolation: str) -> None:
    """A fresh interpreter (nothing opened an image file, so PIL.ImageFile is not imported): a
    pipeline converting a caller's PIL image to an array runs, in-process and in the worker."""
    from pipewarden.audit import synth
    from pipewarden.sandbox import load_class

    (tmp_path / "preprocess_pipeline.py").write_text(PREPROCESS_SOURCE)
    cls = load_class(PREPROCESS_SOURCE, filename="preprocess_pipeline.py")
    synth.save_weights_dir(cls.__name__, synth.build_components(cls), tmp_path / "weights")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path), isolation], capture_output=True, text=True,
                          env=env, timeout=600)
    assert f"SUM {sum(range(64))}" in proc.stdout, proc.stderr[-3000:]
