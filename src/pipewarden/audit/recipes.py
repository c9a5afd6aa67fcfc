"""The synthesiser's recipes: one tiny, deterministic component per annotation class name.

Configs follow diffusers' own ``get_dummy_components`` (tiny UNet, VAE, CLIP text encoder, T5,
Flux/SD3 transformers, ControlNets); tokenizers are built from synthetic vocabularies, so nothing
is downloaded. Decides nothing and runs no pipeline code: :mod:`pipewarden.audit.synth` picks a
recipe per ``__init__`` parameter and calls it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Image side the synthetic inputs use (the tiny UNet's 32 latents x the tiny VAE's factor 2).
IMAGE_SIZE = 64

@dataclass(frozen=True)
class Shape:
    """What the pipeline looks like as a whole (decides the configs that must agree)."""

    xl: bool  # SDXL-shaped: two text encoders, text_time added conditioning
    latent: bool  # a VAE sits between the UNet and pixels
    inpaint: bool = False  # an inpainting UNet: latents + mask + masked-image latents (9 channels)
    family: str = "unet"  # "unet" (SD / SDXL), "flux" (FluxTransformer2DModel), "sd3" (SD3Transformer2DModel)
    lcm: bool = False  # a latent-consistency pipeline: the UNet takes a guidance embedding (time_cond_proj_dim)
    fill: bool = False  # a Flux Fill pipeline: the transformer also takes the packed mask + masked image (24 in)
    clip_vocab: int = 1000  # CLIP text encoders' vocabulary (49408 where the file hard-codes CLIP's bos/eos ids)
    depth: bool = False  # Marigold: the UNet denoises depth latents next to the image latents (8 channels in)


def _torch():
    import torch

    return torch


def _unet_sd(shape: Shape) -> Any:
    from diffusers import UNet2DConditionModel

    in_channels = 9 if shape.inpaint else 8 if shape.depth else 4

    if shape.xl:
        return UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=in_channels, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=64, norm_num_groups=1,
        )
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2, time_cond_proj_dim=256 if shape.lcm else None,
    )


def _controlnet(shape: Shape) -> Any:
    from diffusers import ControlNetModel

    if shape.xl:
        return ControlNetModel(
            block_out_channels=(32, 64), layers_per_block=2, in_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), conditioning_embedding_out_channels=(16, 32),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=64, norm_num_groups=1,
        )
    return ControlNetModel(
        block_out_channels=(32, 64), layers_per_block=2, in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), conditioning_embedding_out_channels=(16, 32),
        cross_attention_dim=32, norm_num_groups=2,
    )


def _unet_2d(shape: Shape) -> Any:
    from diffusers import UNet2DModel

    channels = 4 if shape.latent else 3
    return UNet2DModel(
        block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=4, sample_size=32 if shape.latent else 8,
        in_channels=channels, out_channels=channels,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )


def _vae(shape: Shape) -> Any:
    from diffusers import AutoencoderKL

    if shape.family in ("flux", "sd3"):
        # diffusers' Flux / SD3 tests (no quant convs, shift factor), with two blocks: a VAE scale
        # factor of 2, so a 64 px image is 32 latents (Flux packs them 2x2 into 256 tokens)
        return AutoencoderKL(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=1 if shape.family == "flux" else 4, norm_num_groups=1, use_quant_conv=False,
            use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
        )
    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4, norm_num_groups=2, sample_size=IMAGE_SIZE,
    )


def _vqvae(shape: Shape) -> Any:
    from diffusers import VQModel

    return VQModel(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4, norm_num_groups=2, sample_size=IMAGE_SIZE,
    )


def _text_config(vocab_size: int = 1000, **extra: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=vocab_size, hidden_act="gelu",
        projection_dim=32, **extra,
    )


def _clip_text(shape: Shape) -> Any:
    from transformers import CLIPTextModel

    return CLIPTextModel(_text_config(shape.clip_vocab)).eval()


def _clip_text_proj(shape: Shape) -> Any:
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(_text_config(shape.clip_vocab)).eval()


def _clip_vision(shape: Shape) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=4,
    )
    return CLIPVisionModelWithProjection(cfg).eval()


def _image_processor(shape: Shape) -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(crop_size=32, size=32)


def _safety_checker(shape: Shape) -> Any:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    cfg = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                     "vocab_size": 1000},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 4},
        projection_dim=32,
    )
    return StableDiffusionSafetyChecker(cfg).eval()


def _t5_config() -> Any:
    from transformers import T5Config

    # hf-internal-testing/tiny-random-t5's shape (d_model 32, the Flux / SD3 joint attention width)
    return T5Config(
        vocab_size=T5_VOCAB_SIZE, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,  # type: ignore[call-arg]
    )


def _t5_encoder(shape: Shape) -> Any:
    from transformers import T5EncoderModel

    return T5EncoderModel(_t5_config()).eval()


def _flux_transformer(shape: Shape) -> Any:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        # Fill: 4 packed latents + 4 packed masked-image latents + 16 packed mask values, 4 out
        patch_size=1, in_channels=24 if shape.fill else 4, out_channels=4 if shape.fill else None, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
    )


def _flux_controlnet(shape: Shape) -> Any:
    from diffusers import FluxControlNetModel

    return FluxControlNetModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )


def _sd3_transformer(shape: Shape) -> Any:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    )


def _controlnet_union(shape: Shape) -> Any:
    from diffusers import ControlNetUnionModel

    kwargs: dict[str, Any] = {}
    if shape.xl:
        kwargs = {"attention_head_dim": (2, 4), "use_linear_projection": True, "addition_embed_type": "text_time",
                  "addition_time_embed_dim": 8, "transformer_layers_per_block": (1, 2),
                  "projection_class_embeddings_input_dim": 80, "cross_attention_dim": 64, "norm_num_groups": 1}
    else:
        kwargs = {"cross_attention_dim": 32, "norm_num_groups": 2}
    return ControlNetUnionModel(
        block_out_channels=(32, 64), layers_per_block=2, in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), conditioning_embedding_out_channels=(16, 32),
        num_trans_channel=64, num_trans_head=2, num_proj_channel=64, **kwargs,
    )


#: Vocabulary size of the tiny T5 encoder (the synthetic tokenizer's ids stay below it).
T5_VOCAB_SIZE = 1000
#: Whole words of the synthetic prompts, so the unigram model has more than characters to choose from.
_T5_WORDS = ("a", "photo", "of", "cat", "the", "an", "and", "dog", "with")


def t5_tokenizer(model_max_length: int = 512) -> Any:
    """A T5 (SentencePiece-unigram) tokenizer over a synthetic vocabulary, built with ``tokenizers``:
    ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then printable characters and a few words. Saved as
    ``tokenizer.json`` + ``tokenizer_config.json`` (no ``spiece.model``, nothing downloaded)."""
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    seen = {v for v, _ in vocab}
    for word in _T5_WORDS:
        for piece in ("\u2581" + word, word):
            if piece not in seen:
                vocab.append((piece, -3.0 - len(vocab) / 100))
                seen.add(piece)
    for code in range(33, 127):
        c = chr(code)
        if c not in seen:
            vocab.append((c, -8.0))
            seen.add(c)
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _t5_tokenizer(shape: Shape) -> Any:
    return t5_tokenizer()


def byte_level_alphabet() -> list[str]:
    """The 256 characters of the CLIP/GPT-2 byte-level BPE alphabet, in byte order of that scheme."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


#: A handful of merges, so the tokenizer does real BPE work on the synthetic prompt.
_MERGES = (("a", "</w>"), ("c", "a"), ("ca", "t</w>"), ("p", "h"), ("ph", "o"), ("t", "o</w>"), ("o", "f</w>"))


def clip_tokenizer(model_max_length: int = 77) -> Any:
    """A CLIP BPE tokenizer over a synthetic byte-level vocabulary (517 tokens)."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    chars = byte_level_alphabet()
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    for left, right in _MERGES:
        vocab.setdefault(left + right, len(vocab))
    for special in ("</w>", "<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(_MERGES), model_max_length=model_max_length)  # type: ignore[arg-type]


def _tokenizer(shape: Shape) -> Any:
    return clip_tokenizer()


def _build_scheduler(cls: type) -> Any:
    """A scheduler class the pipeline file defines: SD's beta schedule where its ``__init__`` takes it."""
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    wanted = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
              "set_alpha_to_one": False}
    return cls(**{k: v for k, v in wanted.items() if k in params})


def _scheduler_factory(class_name: str) -> Callable[[Shape], Any]:
    def build(shape: Shape) -> Any:
        import diffusers

        cls = getattr(diffusers, class_name)
        if class_name in ("DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
                          "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DDPMScheduler",
                          "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "UniPCMultistepScheduler",
                          "DEISMultistepScheduler", "DPMSolverSinglestepScheduler", "LCMScheduler"):
            kwargs: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
            if class_name in ("DDIMScheduler", "DDPMScheduler", "LCMScheduler"):
                kwargs["clip_sample"] = False
            if class_name in ("DDIMScheduler", "LCMScheduler"):
                kwargs["set_alpha_to_one"] = False
            if class_name == "PNDMScheduler":
                kwargs["skip_prk_steps"] = True
            if "steps_offset" in inspect.signature(cls.__init__).parameters:
                kwargs["steps_offset"] = 1  # what released SD configs say (older ones trip a deprecation path)
            return cls(**kwargs)
        return cls()

    return build


#: annotation class name -> recipe. Optional components not listed here are left to their default.
RECIPES: dict[str, Callable[[Shape], Any]] = {
    "UNet2DConditionModel": _unet_sd,
    "UNet2DModel": _unet_2d,
    "ControlNetModel": _controlnet,
    "AutoencoderKL": _vae,
    "VQModel": _vqvae,
    "CLIPTextModel": _clip_text,
    "CLIPTextModelWithProjection": _clip_text_proj,
    "CLIPTokenizer": _tokenizer,
    "CLIPTokenizerFast": _tokenizer,
    "CLIPImageProcessor": _image_processor,
    "CLIPFeatureExtractor": _image_processor,
    "CLIPImageProcessorPil": _image_processor,
    "CLIPImageProcessorFast": _image_processor,
    "CLIPVisionModelWithProjection": _clip_vision,
    "StableDiffusionSafetyChecker": _safety_checker,
    "T5EncoderModel": _t5_encoder,
    "T5Tokenizer": _t5_tokenizer,
    "T5TokenizerFast": _t5_tokenizer,
    "FluxTransformer2DModel": _flux_transformer,
    "FluxControlNetModel": _flux_controlnet,
    "SD3Transformer2DModel": _sd3_transformer,
    "ControlNetUnionModel": _controlnet_union,
}
