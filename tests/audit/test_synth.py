"""The tiny-component synthesiser (pipewarden.audit.synth) used by the corpus runner: its recipes
agree with each other well enough that diffusers' own pipelines run on them, and classes a
pipeline file defines are named and found the way diffusers finds custom components."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipewarden.audit import synth  # noqa: E402


def _run_diffusers(pipeline_cls: type, tmp_path: Path, **call: object) -> tuple[dict, object]:
    plan = synth.plan_components(pipeline_cls)
    components = synth.build_components(pipeline_cls, plan=plan)
    pipe = pipeline_cls(**components)
    out = pipe(prompt="a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0), **call)
    return dict(plan.recipes), out


def test_flux_recipes_run_diffusers_flux_pipeline(tmp_path: Path) -> None:
    from diffusers import FluxPipeline

    recipes, out = _run_diffusers(FluxPipeline, tmp_path)
    assert recipes["text_encoder_2"] == "T5EncoderModel" and recipes["transformer"] == "FluxTransformer2DModel"
    assert recipes["tokenizer_2"] in ("T5Tokenizer", "T5TokenizerFast")
    assert out.images.shape == (1, 64, 64, 3)  # type: ignore[attr-defined]


def test_sd3_recipes_run_diffusers_sd3_pipeline(tmp_path: Path) -> None:
    from diffusers import StableDiffusion3Pipeline

    recipes, out = _run_diffusers(StableDiffusion3Pipeline, tmp_path)
    assert recipes["transformer"] == "SD3Transformer2DModel" and recipes["text_encoder_3"] == "T5EncoderModel"
    assert out.images.shape == (1, 64, 64, 3)  # type: ignore[attr-defined]


def test_t5_tokenizer_uses_real_pieces_and_round_trips(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = synth.t5_tokenizer()
    ids = tok("a photo of a cat").input_ids
    assert ids[-1] == 1 and 2 not in ids  # </s> at the end, no <unk>
    assert max(ids) < synth.T5_VOCAB_SIZE
    tok.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert AutoTokenizer.from_pretrained(str(tmp_path))("a photo of a cat").input_ids == ids


OWN_SCHEDULER_SOURCE = '''
import torch
from diffusers import DiffusionPipeline, SchedulerMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config


class HalvingScheduler(SchedulerMixin, ConfigMixin):
    @register_to_config
    def __init__(self, num_train_timesteps: int = 10, beta_start: float = 0.1):
        self.timesteps = torch.arange(num_train_timesteps)

    def set_timesteps(self, n, device=None):
        self.timesteps = torch.arange(n)

    def step(self, model_output, t, sample):
        return (sample - self.config.beta_start * model_output,)


class OwnSchedulerPipeline(DiffusionPipeline):
    def __init__(self, unet: UNet2DModel, scheduler: HalvingScheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, num_inference_steps: int = 2, generator=None, output_type: str = "np"):
        x = torch.randn((1, 3, 8, 8), generator=generator)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            x = self.scheduler.step(self.unet(x, t).sample, t, x)[0]
        return x
'''


def test_a_scheduler_the_file_defines_is_named_and_loaded_like_diffusers(tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    path = tmp_path / "own_scheduler_pipe.py"
    path.write_text(OWN_SCHEDULER_SOURCE)
    spec = importlib.util.spec_from_file_location("own_scheduler_pipe_mod", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        cls = module.OwnSchedulerPipeline
        plan = synth.plan_components(cls)
        assert plan.recipes["scheduler"] == "own-scheduler:HalvingScheduler"
        components = synth.build_components(cls, plan=plan)
        assert type(components["scheduler"]) is module.HalvingScheduler
        weights = synth.save_weights_dir(cls.__name__, components, tmp_path / "weights", pipeline_file=path,
                                         own_module=cls.__module__)
        index = json.loads((weights / "model_index.json").read_text())
        assert index["scheduler"] == ["own_scheduler_pipe", "HalvingScheduler"]
        assert synth.add_own_code(weights, path) == ["scheduler"]
        assert (weights / "scheduler" / path.name).read_bytes() == path.read_bytes()
        pipe = DiffusionPipeline.from_pretrained(str(weights), custom_pipeline=str(path), trust_remote_code=True)
        assert type(pipe.scheduler).__name__ == "HalvingScheduler"
        synth.remove_own_code(weights, path)
        assert not (weights / "scheduler" / path.name).exists()
    finally:
        sys.modules.pop(spec.name, None)


def test_call_overrides_apply_only_to_their_pipeline() -> None:
    class StableDiffusionTilingPipeline:  # the name is what selects the override
        def __call__(self, prompt, num_inference_steps=50, tile_height=512, tile_width=512,
                     tile_row_overlap=256, tile_col_overlap=256, generator=None):
            raise AssertionError("never called")

    class OtherPipeline:
        def __call__(self, prompt, num_inference_steps=50, tile_height=512, generator=None):
            raise AssertionError("never called")

    call = synth.minimal_call(StableDiffusionTilingPipeline)["kwargs"]
    assert call["prompt"] == [[synth.PROMPT]] and call["tile_height"] == synth.IMAGE_SIZE
    other = synth.minimal_call(OtherPipeline)["kwargs"]
    assert other["prompt"] == synth.PROMPT and "tile_height" not in other
