"""Argument guards for host functions whose arguments decide between pure computation and I/O
(or host-side attribute traversal): ``from_config`` with a path, tqdm ``bar_format`` traversals,
``register_modules`` names, dunder keys that host constructors turn into attributes.

Decides: whether one call's arguments are acceptable. Trusts: the wrapped host function once its
arguments passed."""

from __future__ import annotations

import inspect
import string
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pipewarden.sandbox.runtime._common import _tname, _violation
from pipewarden.sandbox.runtime.objects import (
    _checked_arguments,
    _materialise_keys,
    _no_dunder_keys_stored,
    _private_names_ok,
)

if TYPE_CHECKING:
    from pipewarden.sandbox.runtime.attributes import AttributeRules

def _no_custom_attribute_lists(where: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """functools.update_wrapper/wraps copy the attributes named in ``assigned``/``updated``."""
    if "assigned" in kwargs or "updated" in kwargs or (where.endswith("update_wrapper") and len(args) > 2) or (
        where.endswith(".wraps") and len(args) > 1
    ):
        raise _violation(f"{where} with custom assigned/updated attribute lists", "argument.attribute-list")


def _signature_naming(target: Any, param: str) -> inspect.Signature | None:
    """The signature that names ``param`` explicitly: tqdm.auto's class takes ``*args`` and passes
    them on to tqdm.std.tqdm.__init__, whose parameters decide where a positional argument lands."""
    candidates = [c.__init__ for c in target.__mro__] if isinstance(target, type) else [target]  # type: ignore[misc]
    for fn in candidates:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            continue
        if param in sig.parameters:
            return sig
    return None


def _first_field_check(obj: Any, where: str) -> None:
    fields = getattr(type(obj), "__dataclass_fields__", None)
    if isinstance(fields, dict) and fields:
        first = next(iter(fields))
        value = getattr(obj, first, None)
        checked = _materialise_keys(where, value)  # what the base's __post_init__ will spread
        if checked is not value:
            object.__setattr__(obj, first, checked)


def _install_checked_post_init(cls: type) -> None:
    """``__post_init__`` of a sandbox subclass of BaseOutput/ModelOutput: the base spreads a dict
    first field into attributes, so its keys are checked first (and again at super().__post_init__)."""
    own = cls.__dict__.get("__post_init__")
    where = f"{cls.__name__}(...)"

    def __post_init__(self: Any, *args: Any, **kwargs: Any) -> None:
        _first_field_check(self, where)
        if own is not None:
            own(self, *args, **kwargs)
        else:
            super(cls, self).__post_init__(*args, **kwargs)  # type: ignore[arg-type]

    type.__setattr__(cls, "__post_init__", __post_init__)


def _checked_super_init(box: AttributeRules, init: Any, self_obj: Any, where: str) -> Callable[..., Any]:
    """``super().__init__(...)`` in a sandbox subclass of a class that turns names into attributes
    (ParameterDict, SimpleNamespace, a config, an output): the host initialiser gets the
    materialised, checked arguments, and nothing it stored may be a dunder name."""

    def __init__(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = _checked_arguments(where, args, kwargs, _private_names_ok(type(self_obj)))
        result = init(*args, **kwargs)
        _no_dunder_keys_stored(where, self_obj)
        return result

    return __init__


def _simple_format_string(fmt: Any) -> bool:
    """A format string whose fields are plain names (no ``.attr`` or ``[key]`` traversal)."""
    if not isinstance(fmt, str):
        return fmt is None
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return False
    for _literal, field, spec, _conv in parsed:
        if field is None:
            continue
        if field and not (field.isidentifier() or field.isdigit()):
            return False
        if spec and not _simple_format_string(spec):
            return False
    return True


def _check_bar_format(kwargs: Mapping[str, Any], where: str) -> None:
    if type(kwargs) is not dict:
        raise _violation(f"{where} with a {_tname(kwargs)} as its configuration", "argument.format-traversal")
    if not _simple_format_string(dict.get(kwargs, "bar_format")):
        raise _violation(
            f"{where} with a bar_format that traverses attributes or items (host-side str.format)",
            "argument.format-traversal",
            "use plain {field} names in bar_format",
        )


def _progress_bar_config_guard(box: AttributeRules, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    def set_progress_bar_config(*args: Any, **kwargs: Any) -> Any:
        _check_bar_format(kwargs, where)
        return fn(*args, **kwargs)

    return set_progress_bar_config


def _pipeline_utils() -> Any:
    import importlib

    from pipewarden.sandbox import tripwire

    with tripwire.suspended():
        return importlib.import_module("diffusers.pipelines.pipeline_utils")


def _progress_bar_guard(box: AttributeRules, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    """DiffusionPipeline.progress_bar re-implemented at the point of use: the configuration is read
    ONCE through the guards (instance attribute, class attribute or property alike), copied to a
    plain dict, checked, and exactly that copy reaches tqdm. The host method never runs, so it
    cannot re-read a different value; other host ``progress_bar`` methods are not reviewed."""
    func = getattr(fn, "__func__", fn)
    if func in box._functions:
        return fn  # the pipeline's own progress_bar: sandboxed code, guarded line by line
    utils = _pipeline_utils()
    reviewed = utils.DiffusionPipeline.__dict__.get("progress_bar")
    if func is not reviewed:
        raise _violation(f"{where} is not a reviewed progress bar", "argument.format-traversal")
    owner = getattr(fn, "__self__", None)

    def progress_bar(*args: Any, **kwargs: Any) -> Any:
        if owner is None:
            if not args:
                raise TypeError("progress_bar() missing its pipeline argument")
            self_obj, rest = args[0], args[1:]
        else:
            self_obj, rest = owner, args
        return _run_progress_bar(box, utils, self_obj, where, *rest, **kwargs)

    return progress_bar


def _run_progress_bar(box: AttributeRules, utils: Any, self_obj: Any, where: str, iterable: Any = None,
                      total: Any = None) -> Any:
    try:
        raw = box.guarded_getattr(self_obj, "_progress_bar_config")
    except AttributeError:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"`self._progress_bar_config` should be of type `dict`, but is {type(raw)}.")
    config = dict(dict.items(raw))  # what is stored, whatever the mapping's own methods say
    _check_bar_format(config, where)
    if "disable" not in config:
        rank_zero = getattr(utils, "is_torch_dist_rank_zero", None)
        config["disable"] = not rank_zero() if callable(rank_zero) else False
    if iterable is not None:
        return utils.tqdm(iterable, **config)
    if total is not None:
        return utils.tqdm(total=total, **config)
    raise ValueError("Either `total` or `iterable` has to be defined.")


def _components_guard(box: AttributeRules, obj: Any, where: str) -> dict[str, Any]:
    """DiffusionPipeline.components re-implemented: the host property getattr()s every config key
    the pipeline registered (a key ``save_pretrained`` or ``download`` would hand back the raw bound
    host method); here every value is read through the guards."""
    utils = _pipeline_utils()
    expected, optional = utils.DiffusionPipeline._get_signature_keys(obj)
    config = box.guarded_getattr(obj, "config")
    keys = [k for k in list(config.keys()) if type(k) is str and not k.startswith("_") and k not in optional]
    components = {k: box.guarded_getattr(obj, k) for k in keys}
    if sorted(set(components)) != sorted(expected):
        raise ValueError(
            f"{_tname(obj)} has been incorrectly initialized or is incorrectly implemented. Expected"
            f" {sorted(expected)} to be defined, but {sorted(set(components))} are defined."
        )
    return components


def _reviewed_property(box: AttributeRules, t: type, name: str) -> Callable[..., Any] | None:
    """The re-implementation to use instead of a reviewed host property (None: not one)."""
    if name != "components":
        return None
    utils = _pipeline_utils()
    for klass in t.__mro__:
        if name in klass.__dict__:
            return _components_guard if klass.__dict__[name] is utils.DiffusionPipeline.__dict__.get(name) else None
    return None


def _register_modules_guard(box: AttributeRules, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    """register_modules(**kw) does setattr(self, name, module) for every name: public names only."""

    def register_modules(**kwargs: Any) -> Any:
        for name in kwargs:
            if type(name) is not str or not name.isidentifier() or name.startswith("_"):
                raise _violation(f"{where} with component name {name!r}", "argument.component-name")
        return fn(**kwargs)

    return register_modules


def _config_dict_only(box: AttributeRules, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    """``from_config`` given a str loads a file or downloads it: only an in-memory config is allowed."""

    def from_config(config: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(config, dict):
            raise _violation(
                f"{where} with a {type(config).__name__} (a path or repo id would read files or the network)",
                "argument.config-path",
                "pass an in-memory config such as self.scheduler.config",
            )
        return fn(_materialise_keys(where, config), *args, **kwargs)

    return from_config


def _attention_processor_guard(box: AttributeRules, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    """``set_attn_processor`` / ``set_processor`` / ``set_default_attn_processor`` install objects
    whose ``__call__`` runs on every later forward pass of the module: only on a component
    pipewarden built for this load (in the worker: all of them; never an object the caller passed,
    which may be used elsewhere), and only processors that are instances of diffusers classes or of
    classes the vetted file defines (their methods are sandboxed code)."""
    target = getattr(fn, "__self__", None)

    def check(processor: Any) -> None:
        mod = getattr(type(processor), "__module__", "") or ""
        if box.owns(processor) and not isinstance(processor, type):
            return
        if isinstance(mod, str) and mod.startswith("diffusers.") and not isinstance(processor, type) and not callable(
            getattr(processor, "__self__", None)
        ):
            return
        raise _violation(
            f"{where} with a {_tname(processor)} (processors must be diffusers classes or classes this file defines)",
            "argument.attention-processor",
        )

    def install(*args: Any, **kwargs: Any) -> Any:
        if target is None or target not in box.load_built:
            raise _violation(
                f"{where} on a component this load did not build (an object the caller passed in)",
                "call.attention-processor-target",
                "let pipewarden build the component from the weights directory (or use isolation=\"process\")",
            )
        # What is checked is what is passed on: a dict (or a subclass whose ``values()`` could
        # differ from what diffusers' ``pop`` returns) is copied into a plain dict through the
        # base class's own method, and the copy's values are checked and installed (F13).
        def materialised(proc: Any) -> Any:
            if isinstance(proc, dict):
                plain = dict(dict.items(proc))
                for one in plain.values():
                    check(one)
                return plain
            check(proc)
            return proc

        args = tuple(materialised(a) if i == 0 else a for i, a in enumerate(args))
        kwargs = {k: materialised(v) if k == "processor" else v for k, v in kwargs.items()}
        return fn(*args, **kwargs)

    return install


def _owned_component_guard(box: AttributeRules, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    """Methods that change a component in place (``load_state_dict``, ``fuse_qkv_projections``,
    ``enable_*``/``disable_*``, ``set_attention_slice``, ``add_tokens``, ...): only on components this
    pipeline owns -- instances of classes the vetted file defines, components built for this load
    and their submodules (in the worker: every component) -- never on an object the caller passed.
    Called on a pipeline, every module and tokenizer it holds must be its own (the host method
    reaches them all)."""
    from pipewarden.sandbox.runtime.ownwrites import check_component_target

    target = getattr(fn, "__self__", None)

    def call(*args: Any, **kwargs: Any) -> Any:
        check_component_target(box, target, where)
        return fn(*args, **kwargs)

    return call


def _own_module_buffer_guard(box: AttributeRules, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    """``self.register_buffer(name, tensor, persistent=...)`` inside a module class the vetted file
    defines (pipeline_stable_diffusion_boxdiff.py's GaussianSmoothing keeps its kernel as a buffer).
    Only on an instance of the file's own classes (never a component, a host module or a class),
    with a public identifier that is not a [deny] name, a tensor or None, and a bool: it then adds
    one entry to that object's own buffer registry, nothing else."""
    target = getattr(fn, "__self__", None)

    def register_buffer(name: Any, tensor: Any, persistent: Any = True) -> Any:
        import torch

        if target is None or isinstance(target, type) or not box.owns(target):
            raise _violation(
                f"{where} on an object the vetted file's classes did not create", "call.modifies-host-object"
            )
        if type(name) is not str or not name.isidentifier() or name.startswith("_") or box._deny.denies(name):
            raise _violation(
                f"{where} with the name {name!r} (a buffer name becomes an attribute)",
                "argument.attribute-name",
                "use a public identifier (letters, digits, underscores; not starting with '_')",
            )
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise _violation(f"{where} with a {_tname(tensor)}, not a tensor", "argument.array-like")
        if type(persistent) is not bool:
            raise _violation(f"{where}: persistent= is a {_tname(persistent)}, not a bool", "argument.array-like")
        return fn(name, tensor, persistent=persistent)

    return register_buffer


def _free_hooks_guard(box: AttributeRules, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    """``maybe_free_model_hooks()`` (50 of 110 community files end ``__call__`` with it): diffusers'
    version re-enables CPU offload from ``self._all_hooks``, ``self._offload_device`` and
    ``model_cpu_offload_seq`` -- state the pipeline writes freely -- by calling the host's
    ``enable_model_cpu_offload`` (denied to the sandbox): a confused deputy. Re-implemented: it resets
    the stateful caches of the pipeline's components (what the rest of diffusers' version does) and
    never installs offload hooks."""
    target = getattr(fn, "__self__", None)

    def maybe_free_model_hooks() -> None:
        if target is None or isinstance(target, type):
            raise _violation(f"{where} without a pipeline", "call.pipeline-module-target")
        try:
            own = object.__getattribute__(target, "__dict__")
        except AttributeError:
            return
        import torch

        for value in list(own.values()):
            if isinstance(value, torch.nn.Module):
                reset = getattr(type(value), "_reset_stateful_cache", None)
                if callable(reset):
                    reset(value)

    return maybe_free_model_hooks
