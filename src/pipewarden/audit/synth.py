"""Tiny random components for a pipeline class, synthesised from its ``__init__`` signature.

Used by the corpus runner (``benchmarks/corpus_runner.py``), by tests that need a real
Stable-Diffusion-shaped weights directory, and by the dynamic audit. Nothing here runs pipeline
code: the plan is read from parameter names and annotation *names* only (a class, a string, a
``Union``/``Optional`` of them), so it works on a plainly imported class and on a class the
sandbox vetted alike.

The configs follow diffusers' own ``get_dummy_components`` in its test-suite (tiny UNet, VAE,
CLIP text encoder); the CLIP tokenizer is built from a synthetic byte-level vocabulary, so no
file is downloaded. Weights are random but deterministic (``torch.manual_seed(seed)`` before each
component).

* :func:`plan_components` -> which recipe each ``__init__`` parameter gets (or why none);
* :func:`build_components` -> the objects;
* :func:`save_weights_dir` -> a diffusers weights directory (``model_index.json``, one folder
  per component, ``*.safetensors`` + JSON configs + tokenizer data files; never pickle);
* :func:`minimal_call` -> a JSON recipe for a minimal call (short prompt, 2 steps, fixed
  generator, smallest size); :func:`materialise_call` turns it into keyword arguments;
* :func:`output_digest` -> a sha256 over every array in a pipeline output (bit-identity check).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipewarden.audit.recipes import (  # noqa: F401 - re-exported: tests and _tiny use the recipes by this module
    IMAGE_SIZE,
    RECIPES,
    T5_VOCAB_SIZE,
    Shape,
    _build_scheduler,
    _scheduler_factory,
    _t5_encoder,
    _torch,
    byte_level_alphabet,
    clip_tokenizer,
    t5_tokenizer,
)

__all__ = [
    "SynthesisError",
    "ComponentPlan",
    "plan_components",
    "build_components",
    "save_weights_dir",
    "minimal_call",
    "materialise_call",
    "output_digest",
    "clip_tokenizer",
    "t5_tokenizer",
    "add_own_code",
    "remove_own_code",
]

PROMPT = "a photo of a cat"
STEPS = 2
SEED = 0


class SynthesisError(ValueError):
    """This pipeline cannot be given tiny components (the message says which parameter and why)."""


# ---------------------------------------------------------------------------------------------
# Annotations -> class names


def annotation_names(annotation: Any) -> tuple[str, ...]:
    """Every class name an annotation mentions: ``Optional[CLIPTextModel]`` -> ("CLIPTextModel",)."""
    if annotation is inspect.Parameter.empty or annotation is None or annotation is type(None):
        return ()
    if isinstance(annotation, str):
        out = []
        for token in annotation.replace("|", ",").replace("[", ",").replace("]", ",").split(","):
            token = token.strip().split(".")[-1]
            if token and token not in ("Optional", "Union", "List", "Tuple", "None", "list", "tuple"):
                out.append(token)
        return tuple(out)
    args = typing.get_args(annotation)
    if args:
        names: list[str] = []
        for arg in args:
            names.extend(annotation_names(arg))
        return tuple(names)
    name = getattr(annotation, "__name__", None)
    return (name,) if isinstance(name, str) else ()


#: Default scheduler where the annotation is an enum or a base class (what SD ships with).
_DEFAULT_SCHEDULER = "DDIMScheduler"
_SCHEDULER_ALIASES = ("KarrasDiffusionSchedulers", "SchedulerMixin")

#: Pipelines whose scheduler annotation is generic (``KarrasDiffusionSchedulers``) but whose code
#: calls one scheduler's own API (``RePaintScheduler.set_timesteps(steps, jump_length, ...)``).
_SCHEDULER_FOR: dict[str, str] = {"StableDiffusionRepaintPipeline": "RePaintScheduler"}


#: parameter name -> recipe, for parameters without an annotation (``def __init__(self, unet, scheduler)``).
_BY_NAME: dict[str, str] = {
    "vae": "AutoencoderKL",
    "vqvae": "VQModel",
    "text_encoder": "CLIPTextModel",
    "text_encoder_2": "CLIPTextModelWithProjection",
    "tokenizer": "CLIPTokenizer",
    "tokenizer_2": "CLIPTokenizer",
    "feature_extractor": "CLIPImageProcessor",
    "image_encoder": "CLIPVisionModelWithProjection",
    "controlnet": "ControlNetModel",
    "scheduler": "scheduler:DDPMScheduler",
}

#: Components that are optional in diffusers pipelines: built as ``None`` ([null, null]).
NULL_COMPONENTS = ("safety_checker",)


@dataclass(frozen=True)
class ComponentPlan:
    """Which recipe each ``__init__`` parameter gets (``None``: the component is None)."""

    shape: Shape
    recipes: Mapping[str, str | None]
    left_to_default: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def _init_params(cls: type) -> list[inspect.Parameter]:
    if not isinstance(cls, type):
        raise SynthesisError("the file defines no pipeline class")
    try:
        sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    except (TypeError, ValueError) as exc:
        raise SynthesisError(f"{cls.__name__}.__init__ has no readable signature ({exc})") from None
    return [p for n, p in sig.parameters.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _scheduler_name(names: tuple[str, ...]) -> str | None:
    import diffusers

    for name in names:
        if name in _SCHEDULER_ALIASES:
            return _DEFAULT_SCHEDULER
        if name.endswith("Scheduler") and isinstance(getattr(diffusers, name, None), type):
            return name
    return None


def plan_components(cls: type) -> ComponentPlan:
    """Decide a recipe per ``__init__`` parameter; raise :class:`SynthesisError` if one is missing."""
    params = _init_params(cls)
    pnames = {p.name for p in params}
    all_names = {n for p in params for n in annotation_names(p.annotation)}
    xl = "text_encoder_2" in pnames or "XL" in cls.__name__
    latent = bool({"AutoencoderKL", "VQModel"} & all_names) or "vae" in pnames or "vqvae" in pnames
    recipes: dict[str, str | None] = {}
    left: list[str] = []
    for p in params:
        names = annotation_names(p.annotation)
        required = p.default is inspect.Parameter.empty
        if p.name in NULL_COMPONENTS or "StableDiffusionSafetyChecker" in names:
            # None where diffusers accepts None (an optional component), else a tiny checker
            optional = p.name in (getattr(cls, "_optional_components", None) or ())
            recipes[p.name] = None if optional else "StableDiffusionSafetyChecker"
            continue
        if not required:
            left.append(p.name)  # diffusers passes the default for a component the index lacks
            continue
        # a class the file defines wins over a library class of the same name (its own LCMScheduler)
        recipe = _own_scheduler(cls, names)
        if recipe is None:
            recipe = next((n for n in names if n in RECIPES), None)
        if recipe is None and p.name == "scheduler" and cls.__name__ in _SCHEDULER_FOR:
            recipe = f"scheduler:{_SCHEDULER_FOR[cls.__name__]}"
        if recipe is None:
            sched = _scheduler_name(names)
            if sched is not None:
                recipe = f"scheduler:{sched}"
        if recipe is None and not names and p.name == "scheduler":
            own = _own_schedulers(cls)  # an unannotated scheduler where the file defines exactly one
            recipe = f"own-scheduler:{own[0]}" if len(own) == 1 else None
        if recipe is None and p.name == "scheduler" and cls.__name__ in _SCHEDULER_FOR:
            recipe = f"scheduler:{_SCHEDULER_FOR[cls.__name__]}"
        if recipe is None and not names:
            recipe = _BY_NAME.get(p.name)
            if p.name == "unet":
                recipe = "UNet2DConditionModel" if "text_encoder" in pnames else "UNet2DModel"
        if recipe is None and not names:
            raise SynthesisError(f"{cls.__name__}.__init__ parameter {p.name!r} has no annotation to build it from")
        if recipe is None:
            raise SynthesisError(
                f"{cls.__name__}.__init__ parameter {p.name!r} ({' | '.join(names)}) has no tiny recipe"
            )
        recipes[p.name] = recipe
    inpaint = "inpaint" in cls.__name__.lower() and "mask_image" in _call_param_names(cls)
    family = "flux" if "FluxTransformer2DModel" in all_names else "sd3" if "SD3Transformer2DModel" in all_names else "unet"
    lcm = "LatentConsistency" in cls.__name__ or any("LCM" in (r or "") for r in recipes.values())
    fill = family == "flux" and "Fill" in cls.__name__
    vocab = 49408 if cls.__name__ in _CLIP_IDS_HARD_CODED else 1000
    return ComponentPlan(
        shape=Shape(xl=xl, latent=latent, inpaint=inpaint, family=family, lcm=lcm, fill=fill, clip_vocab=vocab,
                    depth=cls.__name__ == "MarigoldPipeline"),
        recipes=recipes, left_to_default=tuple(left),
    )


#: Pipelines that write CLIP's own bos / eos ids (49406 / 49407) into the token ids they encode.
_CLIP_IDS_HARD_CODED = ("SDXLLongPromptWeightingPipeline",)


def _own_scheduler(cls: type, names: tuple[str, ...]) -> str | None:
    """``own-scheduler:<Name>`` where an annotation names a scheduler class the pipeline's own file
    defines (``LCMSchedulerWithTimestamp`` in ``latent_consistency_img2img.py``)."""
    for name in names:
        if _own_class(cls, name) is not None:
            return f"own-scheduler:{name}"
    return None


def _own_namespace(cls: type) -> dict[str, Any]:
    """The classes the file of ``cls`` defines, by name: its module's namespace for a plainly
    imported class; for a class the sandbox vetted (whose ``sys.modules`` entry is an empty
    placeholder by design), the companion classes the sandbox recorded when it ran the file."""
    import sys

    from pipewarden.sandbox._load import companion_classes

    vetted = companion_classes(cls)
    if vetted:
        return {name: value for (_stem, name), value in vetted.items()}
    module = sys.modules.get(cls.__module__)
    return dict(vars(module)) if module is not None else {}


def _own_schedulers(cls: type) -> list[str]:
    """Names of the scheduler classes the module of ``cls`` defines (``IADBScheduler`` in ``iadb.py``)."""
    names = [n for n, v in _own_namespace(cls).items() if isinstance(v, type)]
    return [n for n in names if _own_class(cls, n) is not None]


def _own_class(cls: type, name: str) -> type | None:
    """The scheduler class ``name`` defined in the module of ``cls`` (None if there is none)."""
    from diffusers import SchedulerMixin

    found = _own_namespace(cls).get(name)
    if isinstance(found, type) and issubclass(found, SchedulerMixin) and found.__module__ == cls.__module__:
        return found
    return None


def _call_param_names(cls: type) -> set[str]:
    try:
        return {p.name for p in _call_params(getattr(cls, call_method(cls)))}
    except SynthesisError:
        return set()


#: What to call where a pipeline has no ``__call__`` of its own (StableDiffusionMegaPipeline).
_CALL_FALLBACKS = ("text2img", "txt2img", "generate")


def call_method(cls: type) -> str:
    """``__call__``, or the text-to-image method of a pipeline that defines no ``__call__``."""
    if any("__call__" in vars(k) for k in cls.__mro__ if k is not object):
        return "__call__"
    for name in _CALL_FALLBACKS:
        if callable(getattr(cls, name, None)):
            return name
    raise SynthesisError(f"{cls.__name__} defines no __call__ (nor {', '.join(_CALL_FALLBACKS)})")


def build_components(cls: type, *, seed: int = SEED, plan: ComponentPlan | None = None) -> dict[str, Any]:
    """The tiny components for ``cls``: ``{name: object or None}``, deterministic for ``seed``."""
    torch = _torch()
    plan = plan or plan_components(cls)
    out: dict[str, Any] = {}
    for i, (name, recipe) in enumerate(plan.recipes.items()):
        if recipe is None:
            out[name] = None
            continue
        torch.manual_seed(seed + i)
        if recipe.startswith("scheduler:"):
            out[name] = _scheduler_factory(recipe.split(":", 1)[1])(plan.shape)
        elif recipe.startswith("own-scheduler:"):
            own = _own_class(cls, recipe.split(":", 1)[1])
            if own is None:
                raise SynthesisError(f"{cls.__name__}'s module defines no scheduler {recipe.split(':', 1)[1]!r}")
            out[name] = _build_scheduler(own)
        else:
            out[name] = RECIPES[recipe](plan.shape)
    return out


def _library_of(obj: Any, own_module: str | None = None, own_library: str | None = None) -> str:
    module = type(obj).__module__
    if own_module is not None and own_library is not None and module == own_module:
        return own_library  # a class the pipeline file defines: [<file stem>, <ClassName>]
    if module.startswith("diffusers.pipelines."):
        return module.split(".")[2]  # diffusers' spelling: ["stable_diffusion", "StableDiffusionSafetyChecker"]
    top = module.split(".")[0]
    if top not in ("diffusers", "transformers"):
        raise SynthesisError(f"component of type {type(obj).__name__} is from {top!r}, not diffusers/transformers")
    return top


#: Class names as released repositories spell them (transformers 5 instantiates the PIL backend).
_INDEX_NAMES = {"CLIPImageProcessorPil": "CLIPImageProcessor", "CLIPImageProcessorFast": "CLIPImageProcessor"}


def save_weights_dir(
    class_name: str, components: Mapping[str, Any], out_dir: Path | str, *, pipeline_file: Path | str | None = None,
    own_module: str | None = None,
) -> Path:
    """Write a diffusers weights directory: ``model_index.json`` + one folder per component.

    Models are written as ``*.safetensors`` + ``config.json``, schedulers as
    ``scheduler_config.json``, tokenizers and image processors as their data files. A component
    that is ``None`` is written as ``[null, null]`` (diffusers' optional component).

    A component whose class the pipeline file defines (its class's module is ``own_module``) is
    named the way diffusers names custom components, ``[<file stem>, <ClassName>]`` with the stem
    of ``pipeline_file``. Plain diffusers imports such a class from ``<component>/<stem>.py``:
    :func:`add_own_code` puts a copy there (pipewarden builds it from the vetted file instead).
    """
    own_library = Path(pipeline_file).stem if pipeline_file is not None else None
    import diffusers

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": class_name, "_diffusers_version": diffusers.__version__}
    for name, obj in components.items():
        if obj is None:
            index[name] = [None, None]
            continue
        lib = _library_of(obj, own_module, own_library)
        sub = root / name
        if hasattr(obj, "save_config") and not hasattr(obj, "state_dict"):  # a diffusers scheduler
            obj.save_config(sub)
        elif hasattr(obj, "state_dict"):
            obj.save_pretrained(sub, safe_serialization=True)
        else:  # tokenizers and image processors
            obj.save_pretrained(sub)
        index[name] = [lib, _INDEX_NAMES.get(type(obj).__name__, type(obj).__name__)]
    (root / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return root


def add_own_code(weights_dir: Path | str, pipeline_file: Path | str) -> list[str]:
    """Copy ``pipeline_file`` into each component folder that ``model_index.json`` names as
    ``[<its stem>, <ClassName>]`` (where plain diffusers imports a custom component from);
    returns the component names. :func:`remove_own_code` takes the copies away again."""
    root, src = Path(weights_dir), Path(pipeline_file)
    index = json.loads((root / "model_index.json").read_text())
    names = [k for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[0] == src.stem]
    for name in names:
        (root / name / src.name).write_bytes(src.read_bytes())
    return names


def remove_own_code(weights_dir: Path | str, pipeline_file: Path | str) -> None:
    """Remove the copies :func:`add_own_code` made."""
    root, src = Path(weights_dir), Path(pipeline_file)
    for copy in root.glob(f"*/{src.name}"):
        copy.unlink()


# ---------------------------------------------------------------------------------------------
# The call

#: ``__call__`` parameters given a value (when the pipeline takes them).
_CALL_VALUES: dict[str, Any] = {
    "prompt": PROMPT,
    "num_inference_steps": STEPS,
    "output_type": "np",
    # marigold_depth_estimation.py: its own step count, ensemble and working resolution (768 px)
    "denoising_steps": STEPS,
    "ensemble_size": 1,
    "processing_res": IMAGE_SIZE,
    # pipeline_flux_kontext_multiple_images.py: resizes inputs to ~1 megapixel unless told not to
    "_auto_resize": False,
    "max_area": IMAGE_SIZE * IMAGE_SIZE,
}
#: Pipelines whose minimal call needs inputs that no parameter name or default tells (values as in
#: :func:`minimal_call`'s recipe; applied where the pipeline's call takes the parameter).
_CALL_OVERRIDES: dict[str, dict[str, Any]] = {
    # interpolates between prompts: at least two
    "LatentConsistencyModelWalkPipeline": {"prompt": [PROMPT, "a photo of a dog"], "num_interpolation_steps": 2},
    # one prompt per tile, as a grid (rows of columns); tiles of the 64 px size
    "StableDiffusionTilingPipeline": {"prompt": [[PROMPT]], "tile_height": IMAGE_SIZE, "tile_width": IMAGE_SIZE,
                                      "tile_row_overlap": 0, "tile_col_overlap": 0},
    "StableDiffusionXLTilingPipeline": {"prompt": [[PROMPT]], "tile_height": IMAGE_SIZE, "tile_width": IMAGE_SIZE,
                                        "tile_row_overlap": 0, "tile_col_overlap": 0},
    # layout-grounded: phrases and their boxes (fractions of the image)
    "LLMGroundedDiffusionPipeline": {"phrases": ["cat"], "boxes": [[0.1, 0.1, 0.6, 0.6]]},
    "StableDiffusionBoxDiffPipeline": {"boxdiff_phrases": ["cat"], "boxdiff_boxes": [[0.1, 0.1, 0.6, 0.6]]},
    # an edit of one prompt into another
    "Prompt2PromptPipeline": {"prompt": [PROMPT, "a photo of a dog"],
                              "cross_attention_kwargs": {"edit_type": "replace", "n_self_replace": 0.4,
                                                         "n_cross_replace": 0.4}},
}

#: image-like inputs, given a deterministic RGB picture of the smallest size.
_IMAGE_PARAMS = ("image", "init_image", "mask_image", "control_image", "image_prompt", "mask", "ref_image",
                 "controlnet_conditioning_image", "inpaint_image", "original_image", "input_image", "map",
                 "lr_image")
#: single-channel (L) inputs among them: masks and the differential pipelines' change map
_GREY_PARAMS = ("map",)


def _call_params(callable_: Any) -> list[inspect.Parameter]:
    try:
        sig = inspect.signature(callable_)
    except (TypeError, ValueError) as exc:
        raise SynthesisError(f"the call has no readable signature ({exc})") from None
    return [p for n, p in sig.parameters.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def minimal_call(cls: type, method: str | None = None) -> dict[str, Any]:
    """A JSON recipe for a minimal call of ``cls.<method>``: ``{"method": ..., "kwargs": {...}}``.

    Values: ``{"generator": seed}``, ``{"image": [w, h, mode, seed]}`` or a JSON value.
    """
    method = method or call_method(cls)
    fn = getattr(cls, method, None)
    if fn is None:
        raise SynthesisError(f"{cls.__name__} has no {method}")
    kwargs: dict[str, Any] = {}
    params = _call_params(fn)
    for p in params:
        required = p.default is inspect.Parameter.empty
        if p.name in _CALL_VALUES:
            kwargs[p.name] = _CALL_VALUES[p.name]
        elif p.name in ("height", "width") and (p.default is None or (isinstance(p.default, int) and p.default > IMAGE_SIZE)):
            # a 512 default (or None: the transformer's sample size x the VAE factor) would run the
            # tiny models at full size
            kwargs[p.name] = IMAGE_SIZE
        elif p.name == "generator":
            kwargs[p.name] = {"generator": SEED}
        elif p.name in _IMAGE_PARAMS or (required and "image" in p.name):
            mode = "L" if "mask" in p.name or p.name in _GREY_PARAMS else "RGB"
            kwargs[p.name] = {"image": [IMAGE_SIZE, IMAGE_SIZE, mode, len(kwargs)]}
        elif p.name.endswith("prompt") and required:
            kwargs[p.name] = PROMPT
        elif required:
            raise SynthesisError(f"{cls.__name__}.{method} parameter {p.name!r} is required and has no minimal value")
    if "strength" in {p.name for p in params} and "num_inference_steps" in kwargs:
        kwargs["num_inference_steps"] = 4  # img2img runs int(steps * strength) steps: keep at least one
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    names = {p.name for p in params}
    for name, value in _CALL_OVERRIDES.get(cls.__name__, {}).items():
        if name in names or takes_any:
            kwargs[name] = value
    return {"method": method, "kwargs": kwargs}


def materialise_call(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for a recipe from :func:`minimal_call` (fresh generators every time)."""
    import numpy as np

    torch = _torch()
    out: dict[str, Any] = {}
    for name, value in recipe["kwargs"].items():
        if isinstance(value, dict) and "generator" in value:
            out[name] = torch.Generator("cpu").manual_seed(int(value["generator"]))
        elif isinstance(value, dict) and "image" in value:
            from PIL import Image

            w, h, mode, seed = value["image"]
            rng = np.random.default_rng(int(seed))
            channels = 1 if mode == "L" else 3
            arr = rng.integers(0, 256, size=(int(h), int(w), channels), dtype=np.uint8)
            out[name] = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)
        else:
            out[name] = value
    return out


def seed_everything(seed: int = SEED) -> None:
    """Seed torch's, Python's and NumPy's global generators (pipelines draw from all three)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    _torch().manual_seed(seed)


def _arrays(value: Any, depth: int = 0) -> list[Any]:
    import numpy as np

    if depth > 20:
        return []
    torch = _torch()
    if isinstance(value, torch.Tensor):
        return [value.detach().cpu().contiguous().numpy()]
    if isinstance(value, np.ndarray):
        return [np.ascontiguousarray(value)]
    if hasattr(value, "mode") and hasattr(value, "tobytes") and hasattr(value, "size"):  # PIL image
        return [np.asarray(value)]
    if isinstance(value, Mapping):
        return [a for k in sorted(value, key=str) for a in _arrays(value[k], depth + 1)]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _arrays(v, depth + 1)]
    if hasattr(value, "__dataclass_fields__"):
        return [a for k in value.__dataclass_fields__ for a in _arrays(getattr(value, k), depth + 1)]
    return []


def output_digest(value: Any) -> tuple[str, int]:
    """sha256 over every array of an output (shape, dtype and bytes), and how many arrays."""
    h = hashlib.sha256()
    arrays = _arrays(value)
    for a in arrays:
        h.update(f"{a.shape}|{a.dtype}|".encode())
        h.update(a.tobytes())
    return h.hexdigest(), len(arrays)
