"""Build one component from its verified folder: data in, safetensors only.

Part of ``pipewarden.loader.components`` (which re-exports these names). ``build_component``
builds a diffusers model or scheduler, a reviewed transformers class of
``loader/policy/components.toml`` (text encoder, tokenizer, image processor, safety checker) or
a class the vetted pipeline file defines; anything else is refused with ``NotAllowedError``.
Models are built on the meta device and given the verified tensors; tokenizers are built by
transformers from a private copy of exactly the verified bytes (``local_files_only=True``).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipewarden.errors import InputError, NotAllowedError, PipewardenError
from pipewarden.loader._reading import (
    MAX_JSON_BYTES,
    _load_safetensors,
    _parse_json,
    _refuse_code_keys,
    read_verified,
)
from pipewarden.loader._selection import PICKLE_SUFFIXES, folder_files, weight_files_for
from pipewarden.loader.component_policy import ModelRule, ProcessorRule, TokenizerRule, component_policy

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


# ---------------------------------------------------------------------------------------------
# Building


@dataclass
class _Ctx:
    root: Path
    files: tuple[str, ...]
    expected: Mapping[str, str]
    digests_out: MutableMapping[str, str] | None
    torch_dtype: Any
    variants: Mapping[str, str]
    custom_classes: Mapping[tuple[str, str], type]
    preloaded: dict[str, dict[str, Any]]


def _resolve_diffusers_class(component: str, library: str, class_name: str) -> type:
    if not _IDENT.fullmatch(class_name) or class_name.startswith("_"):
        raise NotAllowedError(
            f"model_index.json names class {class_name!r} for {component!r}",
            rule="components.bad-entry",
            fix="check the weights directory",
        )
    import diffusers
    from diffusers import ModelMixin, SchedulerMixin

    try:
        cls = getattr(diffusers, class_name)
    except AttributeError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, (ModelMixin, SchedulerMixin))):
        raise _not_allowed(component, library, class_name)
    return cls


def _not_allowed(component: str, library: str, class_name: str) -> NotAllowedError:
    return NotAllowedError(
        f"model_index.json asks for component {component!r} as {library}.{class_name}, which is not on the component allowlist",
        rule="components.class-not-allowed",
        fix=f"pass {component}=... to load_pipeline yourself (isolation='inprocess') if you trust that class, "
        "or ask for the class to be reviewed and added to the component policy",
    )


def _resolve_class(component: str, library: str, class_name: str) -> type:
    """Back-compatible: the diffusers model/scheduler class for an entry (others refused)."""
    if library != "diffusers":
        raise _not_allowed(component, library, class_name)
    return _resolve_diffusers_class(component, library, class_name)


#: Modules that library code imports lazily on a first use that a pipeline's call can trigger;
#: imported by the loader (trusted code), because the tripwire refuses the import from inside the
#: call (``marshal.loads``). ``PIL.ImageFile``: ``PIL.Image.Image.tobytes`` (``np.array(image)``,
#: diffusers' ``VaeImageProcessor.pil_to_numpy``) imports it when nothing opened an image file before
#: (an image made with ``Image.fromarray``, or decoded from the wire in the worker).
#: ``torch._subclasses.schema_check_mode``: ``str(tensor)`` imports it (a pipeline's
#: ``print("timesteps:", timesteps)``, latent_consistency_img2img.py).
_LAZY_LIBRARY_IMPORTS = ("PIL.ImageFile", "torch._subclasses.schema_check_mode")


def _warm_processors(components: Iterable[Any]) -> None:
    """Run each image processor once on a blank image, here, in trusted loader code.

    transformers validates processor keyword arguments through huggingface_hub, which on first
    use per processor class tries ``import annotationlib`` (Python >= 3.14 only); made later
    from a pipeline's frame, that lazy import is refused by the tripwire (both modes). The
    validation class is cached after the first call, so calling once here is enough. Also makes
    the lazy imports of :data:`_LAZY_LIBRARY_IMPORTS`.
    """
    for lazy in _LAZY_LIBRARY_IMPORTS:
        try:
            importlib.import_module(lazy)
        except ImportError:  # pragma: no cover - optional parts of the run dependencies
            pass
    try:
        from transformers.image_processing_utils import ImageProcessingMixin
    except ImportError:  # pragma: no cover - transformers is optional
        return
    for comp in components:
        if isinstance(comp, ImageProcessingMixin) and callable(comp):
            try:
                from PIL import Image

                comp(Image.new("RGB", (8, 8)), return_tensors="pt")
            except Exception:  # noqa: BLE001, S110 - a warm-up only; the real call reports errors
                pass


def build_component(ctx: _Ctx, name: str, library: str, class_name: str) -> Any:
    custom = ctx.custom_classes.get((library, class_name))
    if custom is not None:
        return _build_custom(ctx, name, custom)
    rule = component_policy().find(library, class_name)
    if isinstance(rule, ModelRule):
        return _build_transformers_model(ctx, name, rule)
    if isinstance(rule, TokenizerRule):
        return _build_tokenizer(ctx, name, rule)
    if isinstance(rule, ProcessorRule):
        return _build_processor(ctx, name, rule)
    if library != "diffusers":
        raise _not_allowed(name, library, class_name)
    cls = _resolve_diffusers_class(name, library, class_name)
    return _build(cls, ctx, name)


def _require_folder(ctx: _Ctx, sub: str) -> list[str]:
    names = folder_files(ctx.files, sub)
    if not names:
        raise InputError(
            f"component folder {sub}/ is missing from {ctx.root}",
            rule="weights.file-missing",
            fix="check the weights directory",
        )
    return names


def _read_json(ctx: _Ctx, relpath: str) -> dict[str, Any]:
    data = read_verified(ctx.root, relpath, expected=ctx.expected, digests_out=ctx.digests_out, max_bytes=MAX_JSON_BYTES)
    value = _parse_json(data, relpath)
    _refuse_code_keys(value, relpath)
    return value


def _refuse_code_files(ctx: _Ctx, sub: str, names: list[str]) -> None:
    code = [n for n in names if n.endswith(_CODE_SUFFIXES) or n.endswith(PICKLE_SUFFIXES)]
    if code:
        raise NotAllowedError(
            f"{sub}/ holds code or pickle files ({', '.join(code)})",
            rule="components.code-file",
            fix=f"remove {', '.join(code)} from {sub}/",
        )


_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".pyd", ".dylib")


def _load_weights(ctx: _Ctx, sub: str, prefix: str) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for rel in weight_files_for(ctx.files, sub, prefix, ctx.variants.get(sub)):
        loaded = ctx.preloaded.pop(rel, None)  # drop our reference once it is built
        if loaded is None:
            loaded = _load_safetensors(ctx.root, rel, expected=ctx.expected, digests_out=ctx.digests_out)
        for key, tensor in loaded.items():
            if key in state:
                raise InputError(f"{rel} repeats tensor {key!r}", rule="components.weights-mismatch")
            state[key] = tensor
    return state


def _build(cls: Any, ctx: _Ctx, sub: str) -> Any:
    from diffusers import ModelMixin, SchedulerMixin

    _require_folder(ctx, sub)
    if issubclass(cls, SchedulerMixin):
        cfg_name = getattr(cls, "config_name", None) or "scheduler_config.json"
        return _build_scheduler(cls, _read_json(ctx, f"{sub}/{cfg_name}"), where=f"{sub}/")
    assert issubclass(cls, ModelMixin)
    config = _read_json(ctx, f"{sub}/config.json")
    return _instantiate_model(
        cls, config, lambda: _load_weights(ctx, sub, "diffusion_pytorch_model"), torch_dtype=ctx.torch_dtype, where=f"{sub}/"
    )


def _build_custom(ctx: _Ctx, sub: str, cls: type) -> Any:
    """A class the vetted pipeline file defines (e.g. its own scheduler): built from its config.

    Its ``__init__`` is sandboxed code (the class came out of the sandbox), so building it runs
    under the same policy as the pipeline. A model class gets its safetensors weights as well.
    """
    from diffusers import ModelMixin

    names = _require_folder(ctx, sub)
    cfg_name = getattr(cls, "config_name", None)
    if not isinstance(cfg_name, str) or cfg_name not in names:
        cfg_name = next((n for n in ("scheduler_config.json", "config.json") if n in names), None)
    if cfg_name is None:
        raise InputError(
            f"{sub}/ has no config file for {cls.__name__}",
            rule="weights.file-missing",
            fix=f"save the component's config in {sub}/ (scheduler_config.json or config.json)",
        )
    config = _read_json(ctx, f"{sub}/{cfg_name}")
    if issubclass(cls, ModelMixin):
        state = _load_weights(ctx, sub, "diffusion_pytorch_model")
        return _instantiate_model(cls, config, state, torch_dtype=ctx.torch_dtype, where=f"{sub}/")
    from_config = getattr(cls, "from_config", None)
    if from_config is None:  # pragma: no cover - companions are ConfigMixin subclasses
        raise NotAllowedError(
            f"{cls.__name__} (defined by the pipeline file) has no from_config",
            rule="components.class-not-allowed",
            fix="derive the class from a diffusers scheduler or ConfigMixin",
        )
    return from_config(config)


def _build_transformers_model(ctx: _Ctx, sub: str, rule: ModelRule) -> Any:
    import importlib

    import transformers

    _require_folder(ctx, sub)
    cls = getattr(importlib.import_module(rule.module), rule.class_name)
    config_cls = getattr(transformers, rule.config_class)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise NotAllowedError(f"{rule.module}.{rule.class_name} is not a transformers model", rule="components.class-not-allowed")
    raw = _read_json(ctx, f"{sub}/config.json")
    try:
        config = config_cls.from_dict(raw)
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(
            f"{sub}/config.json does not build a {rule.config_class}: {exc}",
            rule="components.bad-config",
            fix="check the weights directory",
        ) from None
    state = _load_weights(ctx, sub, rule.weights_prefix)
    return _transformers_model(cls, config, state, dtype=ctx.torch_dtype, where=sub, rule=rule)


def transformers_model_from_state(rule: ModelRule, raw_config: dict[str, Any], state: dict[str, Any], *, dtype: Any, where: str) -> Any:
    """An allowlisted transformers model from a config dict and tensors (a component sent as data)."""
    import importlib

    import transformers

    _refuse_code_keys(raw_config, where)
    cls = getattr(importlib.import_module(rule.module), rule.class_name)
    config_cls = getattr(transformers, rule.config_class)
    try:
        config = config_cls.from_dict(raw_config)
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f"{where}: config does not build a {rule.config_class}: {exc}", rule="components.bad-config") from None
    return _transformers_model(cls, config, state, dtype=dtype, where=where, rule=rule)


def _transformers_model(cls: Any, config: Any, state: dict[str, Any], *, dtype: Any, where: str, rule: ModelRule) -> Any:
    model: Any
    info: dict[str, Any]
    try:
        # transformers' own loader, given the verified tensors: it applies the same dtype rules
        # (dtype=None -> the config's dtype), tied weights and fp32-kept modules as from_pretrained
        # on a folder, and reads no file (no path is given).
        loaded: Any = cls.from_pretrained(
            None, config=config, state_dict=state, dtype=dtype, output_loading_info=True, local_files_only=True
        )
        model, info = loaded
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        raise InputError(
            f"{where}/ weights do not fit the {rule.class_name} config ({str(exc).splitlines()[0][:300]})",
            rule="components.weights-mismatch",
            fix="check the weights directory",
        ) from None
    bad = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        first = next(v for v in bad.values() if v)[0]
        raise InputError(
            f"{where}/ weights do not fit the {rule.class_name} config: "
            f"{len(bad['missing_keys'])} missing, {len(bad['unexpected_keys'])} unexpected, "
            f"{len(bad['mismatched_keys'])} mismatched tensors (first: {first})",
            rule="components.weights-mismatch",
            fix="check the weights directory",
        )
    model.eval()
    return model


def _build_tokenizer(ctx: _Ctx, sub: str, rule: TokenizerRule) -> Any:
    names = _require_folder(ctx, sub)
    _refuse_code_files(ctx, sub, names)
    policy = component_policy()
    blobs: dict[str, bytes] = {}
    for name in rule.files:
        if name not in names:
            continue
        rel = f"{sub}/{name}"
        limit = policy.max_json_bytes if name.endswith(".json") and name != "tokenizer.json" else policy.max_data_file_bytes
        data = read_verified(ctx.root, rel, expected=ctx.expected, digests_out=ctx.digests_out, max_bytes=limit)
        if name.endswith(".json"):
            _refuse_code_keys(_parse_json(data, rel) if name != "added_tokens.json" else {}, rel)
        blobs[name] = data
    if not blobs:
        raise InputError(f"{sub}/ has none of the tokenizer files {', '.join(rule.files)}", rule="weights.file-missing")
    return tokenizer_from_files(rule, blobs, where=sub)


def tokenizer_from_files(rule: TokenizerRule, blobs: Mapping[str, bytes], *, where: str) -> Any:
    """Build an allowlisted tokenizer from verified data files (name -> bytes), reading nothing else.

    transformers reads a private copy of exactly these bytes (``local_files_only``, no remote code).
    """
    import shutil
    import tempfile

    import transformers

    cls = getattr(transformers, rule.class_name)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedTokenizerBase)):
        raise NotAllowedError(f"transformers.{rule.class_name} is not a tokenizer", rule="components.class-not-allowed")
    for name, data in blobs.items():
        if name not in rule.files:
            raise NotAllowedError(f"{where}: {name} is not a {rule.class_name} data file", rule="components.code-file")
        if name.endswith(".json") and name != "added_tokens.json":
            _refuse_code_keys(_parse_json(data, f"{where}/{name}"), f"{where}/{name}")
    tmp = tempfile.mkdtemp(prefix="pipewarden-tok-", dir=os.environ.get("TMPDIR") or None)
    try:
        for name, data in blobs.items():
            fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        try:
            return cls.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise InputError(
                f"{where}/ does not build a {rule.class_name}: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}",
                rule="components.bad-config",
                fix="check the weights directory",
            ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_processor(ctx: _Ctx, sub: str, rule: ProcessorRule) -> Any:

    names = _require_folder(ctx, sub)
    _refuse_code_files(ctx, sub, names)
    if rule.config_file not in names:
        raise InputError(f"{sub}/ has no {rule.config_file}", rule="weights.file-missing")
    config = _read_json(ctx, f"{sub}/{rule.config_file}")
    return processor_from_config(rule, config, where=sub)


def processor_from_config(rule: ProcessorRule, config: dict[str, Any], *, where: str) -> Any:
    import transformers

    cls = getattr(transformers, rule.build_as)
    if not (isinstance(cls, type) and issubclass(cls, transformers.image_processing_utils.ImageProcessingMixin)):
        raise NotAllowedError(f"transformers.{rule.build_as} is not an image processor", rule="components.class-not-allowed")
    try:
        return cls.from_dict(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(
            f"{where}/{rule.config_file} does not build a {rule.build_as}: {exc}",
            rule="components.bad-config",
            fix="check the weights directory",
        ) from None


#: Largest ``num_train_timesteps`` a scheduler config may ask for (real ones use 1000).
MAX_SCHEDULER_TIMESTEPS = 1_000_000


def _config_error(cls: Any, where: str, exc: BaseException, name: str = "config.json") -> InputError:
    detail = " ".join(str(exc).split())[:300] or type(exc).__name__
    return InputError(
        f"{where}{name} does not build a {cls.__name__}: {type(exc).__name__}: {detail}",
        rule="components.bad-config",
        fix="check the weights directory",
    )


def _build_scheduler(cls: Any, config: dict[str, Any], *, where: str) -> Any:
    """``cls.from_config`` with the config's failures as clean errors and its sizes bounded."""
    steps = config.get("num_train_timesteps")
    if steps is not None and (type(steps) is not int or not 0 < steps <= MAX_SCHEDULER_TIMESTEPS):
        raise InputError(
            f"{where}scheduler config asks for num_train_timesteps={steps!r}",
            rule="components.bad-config",
            fix=f"num_train_timesteps is a positive integer of at most {MAX_SCHEDULER_TIMESTEPS}; check the weights directory",
        )
    try:
        return cls.from_config(config)
    except (KeyboardInterrupt, SystemExit, MemoryError, PipewardenError):
        raise
    except Exception as exc:  # noqa: BLE001 - third-party validation (NotImplementedError, ...): input error
        raise _config_error(cls, where, exc, "scheduler config") from None


def _numel(tensors: Iterable[Any]) -> int:
    return sum(int(t.numel()) for t in tensors)


def _no_init_weights() -> Any:
    """diffusers' ``no_init_weights`` (what its ``from_pretrained`` builds models under).

    ``torch.nn.init``'s functions do nothing inside it: on the meta device they would only run
    the random-init decompositions for tensors that are replaced by the verified ones anyway.
    Like diffusers', it patches the functions process-wide for the duration of the build.
    """
    import contextlib

    try:
        from diffusers.models.modeling_utils import no_init_weights
    except ImportError:  # pragma: no cover - older/newer diffusers: build with the default init
        return contextlib.nullcontext()
    return no_init_weights()


def _instantiate_model(
    cls: Any,
    config: dict[str, Any],
    state: dict[str, Any] | Callable[[], dict[str, Any]],
    *,
    torch_dtype,
    where: str,
    keep_dtypes: bool = False,
) -> Any:
    """Build the model from its config on the meta device, then assign the loaded tensors.

    Same parameters and dtypes as diffusers' ``from_pretrained`` (which also skips random init):
    floating tensors take ``torch_dtype`` (default: float32, the dtype diffusers builds the model
    in), except the class's ``_keep_in_fp32_modules``; the model is put in eval mode.
    """
    import torch

    try:
        with torch.device("meta"), _no_init_weights():
            model = cls.from_config(config)
    except (KeyboardInterrupt, SystemExit, MemoryError, PipewardenError):
        raise
    except Exception as exc:  # noqa: BLE001 - ZeroDivisionError (norm_num_groups: 0), ...: input error
        raise _config_error(cls, where, exc) from None
    if callable(state):  # the tensors, once their file is read and verified (see _PendingReads)
        state = state()
    # Nothing is built at the config's size before its parameter count matched the tensors: an
    # enormous config with small weights is refused here, on the meta device.
    extra_buffers = _numel(b for n, b in model.named_buffers() if n not in model.state_dict())
    wanted = _numel(model.parameters()) + _numel(model.buffers()) - extra_buffers
    have = _numel(state.values())
    if wanted > have:
        raise InputError(
            f"{where}config.json describes {wanted} weight elements but the safetensors files hold {have}",
            rule="components.weights-mismatch",
            fix="check the weights directory (checked before anything is allocated)",
        )
    keep = list(getattr(cls, "_keep_in_fp32_modules", None) or [])
    target = torch_dtype if torch_dtype is not None else torch.get_default_dtype()
    for key, tensor in list(state.items()):
        if keep_dtypes or not tensor.is_floating_point():
            continue
        want = torch.float32 if keep and any(m in key.split(".") for m in keep) else target
        if tensor.dtype != want:
            state[key] = tensor.to(want)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise InputError(
            f"{where} weights do not fit the {cls.__name__} config ({str(exc).splitlines()[0]})",
            rule="components.weights-mismatch",
            fix="check the weights directory",
        ) from None
    if missing or unexpected:
        raise InputError(
            f"{where} weights do not fit the {cls.__name__} config: "
            f"{len(missing)} missing, {len(unexpected)} unexpected tensors"
            f" (first: {(list(missing) + list(unexpected))[0]})",
            rule="components.weights-mismatch",
            fix="check the weights directory",
        )
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:  # non-persistent buffers: rebuild on the CPU and copy the weights in
        model = cls.from_config(config)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        model.load_state_dict(state, strict=True)
    model.eval()
    return model
