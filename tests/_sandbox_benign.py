"""A benign community-style pipeline using the idioms the sandbox must accept (test fixture)."""

BENIGN_PIPELINE_SOURCE = '''\
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput, logging, replace_example_docstring, is_torch_xla_available
from diffusers.utils.torch_utils import randn_tensor

if is_torch_xla_available():
    import torch_xla.core.xla_model as xm

    XLA_AVAILABLE = True
else:
    XLA_AVAILABLE = False

try:
    import definitely_not_installed_module_xyz  # noqa: F401
except ImportError:
    HAS_XYZ = False

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

EXAMPLE_DOC_STRING = """
    Examples:
        >>> pipe()
"""


@dataclass
class BenignPipelineOutput(BaseOutput):
    images: torch.Tensor
    steps: int


def _scale(x, factor: float = 1.0):
    return x * factor


class BenignPipeline(DiffusionPipeline):
    _optional_components = []
    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self._guidance_scale = 1.0
        self.history: List[int] = []

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @staticmethod
    def _clip(x):
        return x.clamp(-10.0, 10.0)

    @classmethod
    def describe(cls):
        return cls.__name__

    def prepare_extra_step_kwargs(self, generator):
        accepts_generator = "generator" in set(inspect.signature(self.scheduler.step).parameters.keys())
        extra = {}
        if accepts_generator:
            extra["generator"] = generator
        return extra

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(self, generator: Optional[torch.Generator] = None, num_inference_steps: int = 2,
                 return_dict: bool = True, callback=None):
        r"""Run the benign pipeline.

        Examples:
        """
        name = self.__class__.__name__
        logger.info("running %s with %d steps", name, num_inference_steps)
        size = self.unet.config.sample_size
        shape = (1, self.unet.config.in_channels, size, size)
        image = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        image = image * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps)
        extra = self.prepare_extra_step_kwargs(generator)
        counts = {"steps": 0}
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = self.scheduler.scale_model_input(image, t)
            noise_pred = self.unet(model_input, t).sample
            noise_pred = _scale(noise_pred, self._guidance_scale)
            image = self.scheduler.step(noise_pred, t, image, **extra).prev_sample
            counts["steps"] += 1
            self._guidance_scale *= 1.0
            self.history.append(int(i))
            if callback is not None:
                callback(i, t)
        image = self._clip(image)
        a, (b, c) = 1, (2, 3)
        image[:, 0] += 0.0
        extra_stat: float = float(np.float32(math.sqrt(4.0))) + a + b + c
        squares = [k * k for k in range(3)]
        image = F.pad(image, (0, 0, 0, 0)) * (extra_stat / 8.0) * (sum(squares) / 5.0)
        if not return_dict:
            return (image,)
        return BenignPipelineOutput(images=image, steps=counts["steps"])
'''
