"""Writes to objects that are this pipeline's own although their classes are host classes: the
components pipewarden built for this load (``LoadBuilt``: modules and all their submodules,
schedulers, their diffusers configs) and the configs of the sandbox's own models.

Real pipelines patch the components they were built with: ``module.forward = hacked.__get__(module)``
on the UNet's blocks (stable_diffusion_reference.py), ``module.bank = []``, or
``self.config.high_res_fix = ...`` on the config of their own UNet subclass (kohya_hires_fix.py).

Decides: which attribute names may be set on such an object and which values may be set there,
and what reads of the attributes the sandbox set return. Never: classes (their attributes are
shared by every instance), objects the caller passed (``LoadBuilt.exclude``), module-level host
objects, dunders, ``_x_`` names, names on the policy's ``[deny]`` list (hooks, files), data
descriptors (properties and slots run host setters), private names the object already has (host
state such as ``_forward_hooks``) unless the sandbox set them itself, and callables other than the
sandbox's own code, modules and diffusers attention processors.

Why a write here cannot reach the host: the object is reachable from this pipeline only (it was
built for this load from verified bytes, or by sandboxed code); a value set there that host code
later calls (``forward``) is sandboxed code, whose frames arm the tripwire by code origin and
whose every attribute access runs through this sandbox's guards, whoever calls it -- torch, or the
caller using ``pipe.unet`` after the pipeline returned (SECURITY.md, "Pipelines patching their own
components"). A diffusers config's attributes never reach a saved config (``_internal_dict``
items do); names the object's class defines are never shadowed by data (``config_name``, which
save_pretrained/save_config join onto the save directory), only methods by callables.

Trusts: the policy's deny list and the identity record ``LoadBuilt`` the loader filled.
"""

from __future__ import annotations

import functools
import types
from typing import TYPE_CHECKING, Any

from pipewarden.sandbox.runtime._common import _FORBIDDEN_VALUE_TYPES, _static_lookup, _tname, _violation

if TYPE_CHECKING:
    from pipewarden.sandbox.runtime.attributes import AttributeRules
    from pipewarden.sandbox.runtime.hooks import GuardHooks

_FIX = "a pipeline may set public attributes (and new private ones) on the components built for this load"


def _is_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _has_attribute(obj: Any, name: str) -> bool:
    """Does the object already hold ``name`` (its ``__dict__``, its class, nn.Module's registries)?"""
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        if name in d:
            return True
        for key in ("_parameters", "_buffers", "_modules"):
            reg = d.get(key)
            if isinstance(reg, dict) and name in reg:
                return True
    return _static_lookup(type(obj), name) is not None


def check_name(box: GuardHooks, obj: Any, name: Any) -> None:
    """May sandboxed code set ``obj.name`` on an object of this pipeline (see the module doc)?"""
    if type(name) is not str or not name.isidentifier():
        raise _violation("setting an attribute with a non-identifier name", "attribute.name-type")
    where = f"setting {name!r} on a {_tname(obj)} built for this load"
    if name.startswith("__") or (name.startswith("_") and name.endswith("_")):
        raise _violation(where, "write.pipeline-name", _FIX)
    if box._deny.denies(name) or box._deny.denies(name.lstrip("_")):
        raise _violation(f"{where} (a name refused on every object)", "write.pipeline-name", _FIX)
    written = box.load_built.written(obj)
    if written is not None and name in written:
        return
    raw = _static_lookup(type(obj), name)
    if raw is not None and (hasattr(type(raw), "__set__") or hasattr(type(raw), "__delete__")):
        raise _violation(f"{where} (a property or slot of its class: host code would run)", "write.pipeline-name", _FIX)
    if name.startswith("_") and _has_attribute(obj, name):
        raise _violation(f"{where} (private state the object already has)", "write.pipeline-name", _FIX)
    if not _is_module(obj) and raw is not None and callable(raw):
        # a config's or scheduler's methods are called by host code: never shadowed
        raise _violation(f"{where} (it would shadow a method of its class)", "write.pipeline-name", _FIX)


def check_class_level(obj: Any, name: str, value: Any) -> None:
    """A name the object's class defines (anywhere in its MRO) may be set only to a callable
    replacing a method (``module.forward = fn``): class-level data (``config_name``,
    ``ignore_for_config``, ``_auto_class = None``) is what host code reads as file names and save
    rules, so it is never shadowed on the instance."""
    for klass in type(obj).__mro__:
        if name in klass.__dict__:
            raw = klass.__dict__[name]
            if isinstance(raw, types.FunctionType) and callable(value):
                return
            raise _violation(
                f"setting {name!r} on a {_tname(obj)} built for this load (class-level data of its class,"
                " which host code reads: file names, save rules)",
                "write.pipeline-name",
                "keep the pipeline's own settings on the pipeline (or in new attribute names)",
            )


def _allowed_callable(box: GuardHooks, value: Any, depth: int = 0) -> bool:
    functions = box._functions
    if isinstance(value, types.FunctionType):
        return value in functions
    if isinstance(value, types.MethodType):
        func, owner = value.__func__, value.__self__
        if func in functions:
            return True
        # a host method of an object this pipeline owns, readable by the sandbox anyway
        # (``module.original_forward = module.forward``)
        if (box.owns(owner) or owner in box.load_built) and not isinstance(owner, type):
            fname = getattr(func, "__name__", None)
            if isinstance(fname, str) and _static_lookup(type(owner), fname) is func:
                from pipewarden.sandbox.runtime.attributes import Verdict

                return box.decide_attribute(owner, fname) is Verdict.ALLOW
        return False
    if isinstance(value, functools.partial):
        return depth < 8 and _allowed_callable(box, value.func, depth + 1)
    if isinstance(value, type):
        return False
    if box.owns(value) or _is_module(value):
        return True
    # a diffusers attention processor (what set_attn_processor accepts)
    mod = getattr(type(value), "__module__", "") or ""
    return isinstance(mod, str) and mod.startswith("diffusers.") and not callable(getattr(value, "__self__", None))


def check_value(box: GuardHooks, obj: Any, name: str, value: Any) -> None:
    """A value set on an object of this pipeline: checked like any value the sandbox holds, and a
    callable must be the sandbox's own code (functions, methods, instances of its classes), a
    module, a diffusers attention processor or a method of an object this pipeline owns."""
    box.check_value(value, f"the value set as {name!r}")
    if isinstance(value, type):
        if value in box._classes:
            return
        raise _violation(
            f"setting {name!r} on a {_tname(obj)} to the class {_tname(value)}", "write.pipeline-value", _FIX
        )
    if callable(value) and not _allowed_callable(box, value):
        raise _violation(
            f"setting {name!r} on a {_tname(obj)} to a {_tname(value)} (host code would call it outside the sandbox)",
            "write.pipeline-value",
            "set the pipeline's own functions or methods (they run under the sandbox wherever they are called)",
        )


class PipelineWriter:
    """``_write_`` result for an object built for this load (an instance of a host class)."""

    __slots__ = ("_pw_box", "_pw_obj")

    def __init__(self, box: GuardHooks, obj: Any) -> None:
        object.__setattr__(self, "_pw_box", box)
        object.__setattr__(self, "_pw_obj", obj)

    def __setattr__(self, name: str, value: Any) -> None:
        box = object.__getattribute__(self, "_pw_box")
        obj = object.__getattribute__(self, "_pw_obj")
        check_name(box, obj, name)
        check_class_level(obj, name, value)
        check_value(box, obj, name, value)
        setattr(obj, name, value)
        box.load_built.record_write(obj, name)

    def __delattr__(self, name: str) -> None:
        box = object.__getattribute__(self, "_pw_box")
        obj = object.__getattribute__(self, "_pw_obj")
        written = box.load_built.written(obj)
        if type(name) is not str or written is None or name not in written:
            raise _violation(
                f"deleting {name!r} of a {_tname(obj)} (only attributes the pipeline set may be deleted)",
                "write.pipeline-name",
                _FIX,
            )
        delattr(obj, name)
        written.discard(name)

    def __setitem__(self, key: Any, value: Any) -> None:
        obj = object.__getattribute__(self, "_pw_obj")
        raise _violation(f"item assignment on a {_tname(obj)} built for this load", "write.host-object", _FIX)

    __delitem__ = __setitem__  # type: ignore[assignment]


class ConfigWriter:
    """``_write_`` result for the snapshot of a config this pipeline owns: ``config.x = v`` sets the
    attribute on the real config (what diffusers does) and in the snapshot the sandbox holds."""

    __slots__ = ("_pw_box", "_pw_snap", "_pw_source")

    def __init__(self, box: GuardHooks, snap: Any, source: Any) -> None:
        object.__setattr__(self, "_pw_box", box)
        object.__setattr__(self, "_pw_snap", snap)
        object.__setattr__(self, "_pw_source", source)

    def __setattr__(self, name: str, value: Any) -> None:
        from pipewarden.sandbox.runtime.snapshots import _is_snapshot_type, _private_copy

        box = object.__getattribute__(self, "_pw_box")
        source = object.__getattribute__(self, "_pw_source")
        if type(name) is str and name.startswith("_"):
            raise _violation(f"setting {name!r} on a config", "write.pipeline-name", _FIX)
        check_name(box, source, name)
        check_class_level(source, name, value)
        check_value(box, source, name, value)
        setattr(source, name, value)
        box.load_built.record_write(source, name)
        attrs = object.__getattribute__(object.__getattribute__(self, "_pw_snap"), "_pw_attrs")
        attrs[name] = _private_copy(value) if _is_snapshot_type(value) else value

    def __setitem__(self, key: Any, value: Any) -> None:
        raise _violation("item assignment on a config (diffusers configs are frozen)", "write.host-object", _FIX)

    __delitem__ = __setitem__  # type: ignore[assignment]

    def __delattr__(self, name: str) -> None:
        raise _violation(f"deleting {name!r} of a config", "write.host-object", _FIX)


def _component_kinds() -> tuple[type, type | None, type | None]:
    """(nn.Module, DiffusionPipeline, PreTrainedTokenizerBase); None where not installed."""
    import torch

    from pipewarden.sandbox.runtime._common import _resolve_type_path

    return (
        torch.nn.Module,
        _resolve_type_path("diffusers.DiffusionPipeline"),
        _resolve_type_path("transformers.PreTrainedTokenizerBase"),
    )


def _kinds_tuple() -> tuple[type, ...]:
    return tuple(k for k in _component_kinds() if k is not None)


def _owned_component(box: AttributeRules, obj: Any) -> bool:
    return box.owns(obj) or obj in box.load_built


def _foreign_component(box: AttributeRules, pipeline: Any, depth: int = 0) -> Any:
    """A module or tokenizer a pipeline holds that the sandbox does not own (pipelines it holds,
    e.g. one it built from its own components, are looked into); None if there is none."""
    module_cls, pipeline_cls, tokenizer_cls = _component_kinds()
    parts = tuple(k for k in (module_cls, tokenizer_cls) if k is not None)
    try:
        held = list(object.__getattribute__(pipeline, "__dict__").values())
    except AttributeError:
        return None
    for value in held:
        if isinstance(value, type):
            continue
        if isinstance(value, parts) and not _owned_component(box, value):
            return value
        if pipeline_cls is not None and isinstance(value, pipeline_cls) and value is not pipeline:
            if depth >= 2:
                return value
            inner = _foreign_component(box, value, depth + 1)
            if inner is not None:
                return inner
    return None


def check_component_target(box: AttributeRules, target: Any, where: str) -> None:
    """Refuse a component mutator on anything the pipeline does not own (see argguards)."""
    fix = 'let pipewarden build the component from the weights directory (or use isolation="process")'
    if target is None or isinstance(target, type):
        raise _violation(f"{where} on a class", "call.pipeline-module-target", fix)
    pipeline_cls = _component_kinds()[1]
    if pipeline_cls is not None and isinstance(target, pipeline_cls):
        foreign = _foreign_component(box, target)
        if foreign is not None:
            raise _violation(
                f"{where} on a pipeline holding a {_tname(foreign)} it does not own (an object the caller passed in)",
                "call.pipeline-module-target",
                fix,
            )
        return
    if not _owned_component(box, target):
        raise _violation(
            f"{where} on a {_tname(target)} this pipeline does not own (an object the caller passed in)",
            "call.pipeline-module-target",
            fix,
        )


def mutator_guard(box: AttributeRules, obj: Any, name: str, value: Any) -> Any:
    """``value`` (``obj.name``, just read) wrapped in the component check if it is a host method of a
    component whose name is in a mutator family; else ``value`` unchanged. Whatever the receiver of
    the read: an instance, ``super(C, self)`` (the instance it is bound to is checked) or the class
    (``Pipeline.enable_x(self)``: the ``self`` it is called with is checked)."""
    if not name.startswith(box.policy.mutator_prefixes) or not callable(value):
        return value
    kinds = _kinds_tuple()
    receiver, after = obj, None
    if type(obj) is super:
        receiver, after = obj.__self__, obj.__thisclass__  # type: ignore[attr-defined]
    is_class = isinstance(receiver, type)
    if is_class and not issubclass(receiver, kinds):
        return value
    if not is_class and not isinstance(receiver, kinds):
        return value
    mro = receiver.__mro__ if is_class else type(receiver).__mro__
    if after is not None:
        mro = mro[mro.index(after) + 1 :] if after in mro else ()
    raw = None
    for klass in mro:
        if name in klass.__dict__:
            if klass in box._classes:
                return value  # the pipeline's own method: sandboxed code, checked where it acts
            raw = klass.__dict__[name]
            break
    from pipewarden.sandbox.runtime.argguards import _owned_component_guard

    if raw is None and isinstance(value, kinds[0]):
        # no class defines the name: a submodule whose name starts like a mutator family (the SDXL
        # UNet's add_embedding), not a method; calling it runs its forward, changing nothing
        return value
    where = f"{_tname(receiver)}.{name}"
    if is_class and isinstance(raw, types.FunctionType) and isinstance(value, types.FunctionType):
        fn = value

        def call_with_self(*args: Any, **kwargs: Any) -> Any:
            check_component_target(box, args[0] if args else None, where)
            return fn(*args, **kwargs)

        return call_with_self
    return _owned_component_guard(box, value, where)


def _writable_kind(obj: Any) -> bool:
    """Attribute writes: modules, diffusers config holders (schedulers) and their configs only."""
    from pipewarden.sandbox.runtime._base import _writable

    return _writable(obj)


def writer_for(box: GuardHooks, obj: Any) -> Any:
    """The writer for ``obj`` if it is this pipeline's (built for this load, or the snapshot of a
    config this pipeline owns); None otherwise."""
    from pipewarden.sandbox.runtime.snapshots import _HostConfig

    lb = box.load_built
    if type(obj) is _HostConfig:
        ref = object.__getattribute__(obj, "_pw_source")
        source = ref() if ref is not None else None
        if source is not None and source in lb:
            return ConfigWriter(box, obj, source)
        return None
    if not isinstance(obj, type) and obj in lb and _writable_kind(obj):
        return PipelineWriter(box, obj)
    return None


def read_written(box: AttributeRules, obj: Any, name: str) -> Any:
    """Read back an attribute the sandbox set on an object of this pipeline: the value as set (the
    sandbox's own list stays its own), checked like every value handed to sandboxed code."""
    value = getattr(obj, name)
    if type(value) in _FORBIDDEN_VALUE_TYPES or type(value) is types.BuiltinFunctionType:
        box.check_value(value, f"{_tname(obj)}.{name}")
    return value


def absent_on_host_object(box: AttributeRules, obj: Any, name: str) -> bool:
    """``getattr(module, "original_forward", None)`` on a module, scheduler or config (the caller's
    too): a name the object does not have at all (not
    set, not defined by its class, not a submodule, parameter, buffer or config key, and its class
    has no ``__getattr__`` or a reviewed one) reads as missing, as it would in plain Python. Only
    the absence is answered: nothing is looked up on the object."""
    if name.startswith("_") or box._deny.denies(name) or box.owns(obj):
        return False  # private names and the sandbox's own objects keep their own rules
    from pipewarden.sandbox.runtime._base import _writable

    t = type(obj)
    if isinstance(obj, type) or t.__getattribute__ is not object.__getattribute__ or not _writable(obj):
        return False
    # decided on the class before the object is touched (a __getattr__ nobody reviewed is never run)
    if not box._fallback_getattr_reviewed(t) or _static_lookup(t, name) is not None:
        return False
    try:
        d = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        d = None
    if not isinstance(d, dict) or name in d:
        return False
    for key in ("_parameters", "_buffers", "_modules", "_internal_dict"):
        reg = d.get(key)
        if isinstance(reg, dict) and name in reg:
            return False
    return True
