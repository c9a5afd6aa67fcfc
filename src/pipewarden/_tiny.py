"""Tiny random components for tests, the demo and benchmarks: a Stable-Diffusion-shaped repository.

Nothing here downloads anything. Configs follow diffusers' own ``get_dummy_components`` (tiny
UNet2DConditionModel, AutoencoderKL, CLIP text encoder with a 1000-token vocabulary); the CLIP
tokenizer is built from a synthetic vocabulary (bytes + their ``</w>`` forms + a few merges).
Everything is saved the way diffusers and transformers save it (``save_pretrained``, safetensors
only), optionally with a ``variant`` copy (e.g. ``fp16``) of every weight file. Trusted project code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: A Stable-Diffusion-shaped text-to-image pipeline as a community pipeline file (uses every
#: component of the repository written by ``write_sd_repo``, safety checker included).
SD_PIPELINE_SOURCE = '''\
"""A compact Stable-Diffusion-style text-to-image community pipeline (classifier-free guidance)."""
from typing import List, Optional, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput


class TinyTextToImagePipeline(DiffusionPipeline):
    _optional_components = ["safety_checker", "feature_extractor"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None,
                 feature_extractor=None, requires_safety_checker: bool = True):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, safety_checker=safety_checker,
                              feature_extractor=feature_extractor)
        self.register_to_config(requires_safety_checker=requires_safety_checker)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    def _encode(self, prompt):
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def __call__(self, prompt: Union[str, List[str]], num_inference_steps: int = 2,
                 guidance_scale: float = 7.5, generator: Optional[torch.Generator] = None,
                 height: int = 32, width: int = 32, output_type: str = "np"):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        cond = self._encode(prompts)
        uncond = self._encode([""] * len(prompts))
        embeds = torch.cat([uncond, cond])
        shape = (len(prompts), self.unet.config.in_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        latents = torch.randn(shape, generator=generator, dtype=embeds.dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        latents = latents * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            model_in = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise = self.unet(model_in, t, encoder_hidden_states=embeds).sample
            noise_uncond, noise_text = noise.chunk(2)
            noise = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = self.scheduler.step(noise, t, latents).prev_sample
        image = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        nsfw = None
        if self.safety_checker is not None:
            pil = self.image_processor.postprocess(image, output_type="pil")
            clip_input = self.feature_extractor(pil, return_tensors="pt").pixel_values.to(image.dtype)
            image, nsfw = self.safety_checker(images=image, clip_input=clip_input)
        image = self.image_processor.postprocess(image, output_type=output_type)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw)
'''

_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]
_WORDS = ["a", "cat", "dog", "photo", "of", "the", "an", "astronaut", "riding", "horse"]


def clip_tokenizer_files() -> dict[str, bytes]:
    """vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json of a tiny CLIP tokenizer."""
    from pipewarden.audit.synth import byte_level_alphabet  # the synthesiser's alphabet: the same recipe

    chars = byte_level_alphabet()
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in _WORDS:  # merge each word left to right: "c a" -> "ca", "ca t</w>" -> "cat</w>"
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            merges.append(f"{parts[0]} {parts[1]}")
            if merged not in vocab_list:
                vocab_list.append(merged)
            parts = [merged] + parts[2:]
    vocab_list += _SPECIAL
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    merges = list(dict.fromkeys(merges))
    tok_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 16,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "errors": "replace",
    }
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False).encode("utf-8"),
        "merges.txt": ("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8"),
        "tokenizer_config.json": json.dumps(tok_config, indent=2).encode("utf-8"),
        "special_tokens_map.json": json.dumps(special, indent=2).encode("utf-8"),
    }


def tiny_sd_components(seed: int = 0, *, safety_checker: bool = True) -> dict[str, Any]:
    """Build the components in memory (random weights from ``seed``)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    vocab_size = len(json.loads(clip_tokenizer_files()["vocab.json"]))
    text_config: dict[str, Any] = dict(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        pad_token_id=vocab_size - 1,
        vocab_size=vocab_size,
        max_position_embeddings=16,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).eval()
    out: dict[str, Any] = {"unet": unet, "scheduler": scheduler, "vae": vae, "text_encoder": text_encoder}
    if safety_checker:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

        clip_config = CLIPConfig(
            text_config=dict(text_config),
            vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8),
            projection_dim=16,
        )
        out["safety_checker"] = StableDiffusionSafetyChecker(clip_config).eval()
        out["feature_extractor"] = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return out


def write_sd_repo(
    directory: str | Path,
    *,
    seed: int = 0,
    variant: str | None = "fp16",
    safety_checker: bool = True,
    extra_root_files: bool = True,
) -> Path:
    """Write a Stable-Diffusion-shaped weights repository (fp32 files + an optional ``variant``).

    Layout as on the hub: ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
    ``tokenizer/``, ``scheduler/``, ``safety_checker/``, ``feature_extractor/``; with
    ``extra_root_files`` also a root single-file checkpoint (``tiny-sd.safetensors``) that
    diffusers never downloads for a pipeline load.
    """
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    comps = tiny_sd_components(seed, safety_checker=safety_checker)
    for name in ("unet", "vae", "text_encoder", "safety_checker"):
        if name not in comps:
            continue
        model = comps[name]
        if variant is not None:  # first, so that config.json is the fp32 one (as on the hub)
            model.to(torch.float16).save_pretrained(directory / name, safe_serialization=True, variant=variant)
            model.to(torch.float32)
        model.save_pretrained(directory / name, safe_serialization=True)
    comps["scheduler"].save_pretrained(directory / "scheduler")
    tok = directory / "tokenizer"
    tok.mkdir(exist_ok=True)
    for fname, data in clip_tokenizer_files().items():
        (tok / fname).write_bytes(data)
    if "feature_extractor" in comps:
        comps["feature_extractor"].save_pretrained(directory / "feature_extractor")
    index: dict[str, Any] = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "requires_safety_checker": True,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"] if safety_checker else [None, None],
        "feature_extractor": ["transformers", "CLIPImageProcessor"] if safety_checker else [None, None],
    }
    (directory / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if extra_root_files:
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(4)}, str(directory / "tiny-sd.safetensors"))
    return directory
