"""Small, offline fixtures: a weights directory laid out like ``google/ddpm-cifar10-32``.

Used by ``pipewarden demo``, the tests and the benchmarks. Nothing here downloads anything; the
weights are random (seeded) and written as safetensors. This module is trusted project code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The architecture of google/ddpm-cifar10-32's UNet2DModel (35.7 M parameters).
DDPM_CIFAR10_UNET_CONFIG: dict = {
    "_class_name": "UNet2DModel",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}

#: A tiny UNet of the same family (about 45 k parameters, 8x8 images): fast enough for tests.
TINY_UNET_CONFIG: dict = {
    "_class_name": "UNet2DModel",
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
    "attention_head_dim": 4,
}

DDPM_SCHEDULER_CONFIG: dict = {
    "_class_name": "DDPMScheduler",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_large",
}

MODEL_INDEX: dict = {
    "_class_name": "DDPMPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "DDPMScheduler"],
    "unet": ["diffusers", "UNet2DModel"],
}

#: Our own example pipeline: the same shape as the guide's ``one_step_unet.py``, plus an
#: optional ``generator`` and a ``num_inference_steps`` loop so it also exercises the scheduler.
EXAMPLE_PIPELINE_SOURCE = '''\
"""An example community pipeline: one UNet forward pass and one scheduler step.

Same shape as diffusers' community-pipeline guide (``one_step_unet.py``).
"""
from typing import Optional

import torch
from diffusers import DiffusionPipeline


class OneStepExamplePipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, generator: Optional[torch.Generator] = None, num_inference_steps: int = 1):
        size = self.unet.config.sample_size
        image = torch.randn(
            (1, self.unet.config.in_channels, size, size),
            generator=generator,
        )
        if num_inference_steps == 1:
            timestep = 1
            model_output = self.unet(image, timestep).sample
            return self.scheduler.step(model_output, timestep, image).prev_sample
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            model_output = self.unet(image, t).sample
            image = self.scheduler.step(model_output, t, image, generator=generator).prev_sample
        return image
'''


def write_example_pipeline(directory: str | Path) -> Path:
    """Write the example pipeline as ``DIR/pipeline.py`` and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pipeline.py"
    path.write_text(EXAMPLE_PIPELINE_SOURCE, encoding="utf-8")
    return path


def build_weights(
    directory: str | Path,
    *,
    unet_config: dict | None = None,
    seed: int = 0,
    scheduler_config: dict | None = None,
) -> Path:
    """Write ``model_index.json``, ``unet/`` (config + safetensors) and ``scheduler/``.

    The UNet is built with random weights from ``seed`` and saved with safetensors only.
    Returns the directory. Imports torch/diffusers lazily.
    """
    import torch
    from diffusers import UNet2DModel
    from safetensors.torch import save_file

    directory = Path(directory)
    cfg = dict(unet_config or TINY_UNET_CONFIG)
    (directory / "unet").mkdir(parents=True, exist_ok=True)
    (directory / "scheduler").mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    init_kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    unet: Any = UNet2DModel(**init_kwargs)
    # Give every parameter a distinct, seeded value (default init leaves some at exact zeros).
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in unet.state_dict().items():  # type: ignore[attr-defined]
        if tensor.is_floating_point():
            state[name] = (torch.randn(tensor.shape, generator=gen) * 0.05).contiguous()
        else:
            state[name] = tensor.contiguous()
    save_file(state, str(directory / "unet" / "diffusion_pytorch_model.safetensors"))
    unet_cfg = {"_class_name": "UNet2DModel", "_diffusers_version": "0.42.1", **init_kwargs}
    _write_json(directory / "unet" / "config.json", unet_cfg)
    sched = dict(scheduler_config or DDPM_SCHEDULER_CONFIG)
    sched.setdefault("_diffusers_version", "0.42.1")
    _write_json(directory / "scheduler" / "scheduler_config.json", sched)
    _write_json(directory / "model_index.json", MODEL_INDEX)
    return directory


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# The demo's picture: a tiny UNet fitted in seconds to a pattern drawn here (no download).

#: 16x16, no attention, about 165 k parameters: fits on 2 CPU cores in a few seconds.
DEMO_UNET_CONFIG: dict = {
    "_class_name": "UNet2DModel",
    "sample_size": 16,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [16, 32],
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
}
#: The UNet predicts the clean image (``prediction_type="sample"``), which it learns fastest.
DEMO_SCHEDULER_CONFIG: dict = {**DDPM_SCHEDULER_CONFIG, "prediction_type": "sample"}


def draw_smiley(size: int = 16) -> Any:
    """A yellow smiley on blue, drawn with PIL at 4x and scaled down to ``size`` (a PIL image)."""
    from PIL import Image, ImageDraw

    big = size * 4
    img = Image.new("RGB", (big, big), (30, 60, 140))
    d = ImageDraw.Draw(img)
    u = big / 64
    d.ellipse((4 * u, 4 * u, 60 * u, 60 * u), fill=(250, 205, 40), outline=(0, 0, 0), width=max(1, int(3 * u)))
    d.ellipse((18 * u, 18 * u, 27 * u, 30 * u), fill=(20, 20, 20))
    d.ellipse((37 * u, 18 * u, 46 * u, 30 * u), fill=(20, 20, 20))
    d.arc((16 * u, 22 * u, 48 * u, 50 * u), start=20, end=160, fill=(20, 20, 20), width=max(1, int(5 * u)))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def fit_demo_weights(directory: str | Path, *, iterations: int = 100, seed: int = 0) -> Path:
    """Write a weights directory whose UNet was fitted (here, now) to :func:`draw_smiley`.

    Plain torch on the host (trusted project code): DDPM training on one image with the UNet
    predicting the clean sample. Deterministic for a seed on one machine. Returns the directory.
    """
    import numpy as np
    import torch
    from diffusers import DDPMScheduler, UNet2DModel
    from safetensors.torch import save_file

    directory = Path(directory)
    size = int(DEMO_UNET_CONFIG["sample_size"])
    target = torch.from_numpy(np.array(draw_smiley(size))).permute(2, 0, 1).float() / 127.5 - 1
    init_kwargs = {k: v for k, v in DEMO_UNET_CONFIG.items() if not k.startswith("_")}
    torch.manual_seed(seed)
    unet: Any = UNet2DModel(**init_kwargs)
    sched_kwargs = {k: v for k, v in DEMO_SCHEDULER_CONFIG.items() if not k.startswith("_")}
    scheduler: Any = DDPMScheduler(**sched_kwargs)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    batch = 8
    x0 = target.expand(batch, -1, -1, -1)
    unet.train()
    for _ in range(iterations):
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    (directory / "unet").mkdir(parents=True, exist_ok=True)
    (directory / "scheduler").mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in unet.state_dict().items()}
    save_file(state, str(directory / "unet" / "diffusion_pytorch_model.safetensors"))
    _write_json(directory / "unet" / "config.json", {"_diffusers_version": "0.42.1", **DEMO_UNET_CONFIG})
    _write_json(directory / "scheduler" / "scheduler_config.json", {"_diffusers_version": "0.42.1", **DEMO_SCHEDULER_CONFIG})
    _write_json(directory / "model_index.json", MODEL_INDEX)
    return directory
