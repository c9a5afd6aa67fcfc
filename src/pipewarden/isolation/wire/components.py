"""Components given as objects, sent to the worker as data (issue 11 part 5). Never pickle.

Decides what may cross and how: JSON option values (``requires_safety_checker=False``, ``None``)
as they are; a diffusers scheduler as its class name + config; a diffusers model or an
allowlisted transformers model (``loader/policy/components.toml``) as class name + config + its
state dict (tensors in the safetensors payload); an allowlisted tokenizer as its data files
(bytes as uint8 tensors); an allowlisted image processor as its config. The worker rebuilds
each one with the same builders as a weights repository (``pipewarden.loader.components``).
Anything else raises ``NotAllowedError`` where it is encoded, never an accepted-and-ignored value.
"""

from __future__ import annotations

import math
from typing import Any

from pipewarden.errors import InputError, NotAllowedError

_SCALARS = (bool, int, float, str)


def _json_config(value: Any, depth: int = 0) -> Any:
    if depth > 16:
        raise _cannot("a config nested too deeply")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _cannot("a config with a non-finite float")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_config(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_config(v, depth + 1) for k, v in value.items()}
    import torch

    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    raise _cannot(f"a config value of type {type(value).__name__}")


def _cannot(what: str, name: str = "") -> NotAllowedError:
    return NotAllowedError(
        f"component {name + ' ' if name else ''}cannot be sent to the isolated worker: {what}",
        rule="worker.object-component",
        fix="pass diffusers schedulers and models, or the reviewed transformers classes of the component "
        'policy, or put the component in the weights repository; or load with isolation="inprocess"',
    )


def _is_value(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, _SCALARS):
        return not (isinstance(value, float) and not math.isfinite(value))
    if isinstance(value, (list, tuple)) and depth < 4 and len(value) <= 64:
        return all(_is_value(v, depth + 1) for v in value)
    return False


def _public_class(obj: Any, module: Any) -> str | None:
    name = type(obj).__name__
    return name if getattr(module, name, None) is type(obj) else None


def encode_component(name: str, value: Any, enc: Any) -> dict[str, Any]:
    """One keyword argument as a JSON node (tensors go into ``enc``, a wire ``Encoder``)."""
    if _is_value(value):
        return {"kind": "value", "value": list(value) if isinstance(value, tuple) else value}
    import diffusers
    import torch

    obj: Any = value
    if isinstance(value, diffusers.SchedulerMixin):
        cls = _public_class(value, diffusers)
        if cls is None:
            raise _cannot(f"{type(value).__name__} is not a diffusers scheduler class", name)
        return {"kind": "scheduler", "class": cls, "config": _json_config(dict(obj.config))}
    if isinstance(value, diffusers.ModelMixin):
        cls = _public_class(value, diffusers)
        if cls is None:
            raise _cannot(f"{type(value).__name__} is not a diffusers model class", name)
        return {
            "kind": "diffusers_model",
            "class": cls,
            "config": _json_config(dict(obj.config)),
            "tensors": _tensors(obj, enc),
            "training": bool(obj.training),
        }
    from pipewarden.loader.component_policy import ModelRule, ProcessorRule, TokenizerRule, component_policy

    policy = component_policy()
    found: Any = None
    rules: tuple[Any, ...] = (*policy.models, *policy.tokenizers, *policy.processors)
    # transformers' own classes only (a subclass of yours would lose its code in the worker)
    from_transformers = type(value).__module__.split(".")[0] in ("transformers", "diffusers")
    for rule in rules:
        if from_transformers and (
            type(value).__name__ == rule.class_name
            or (isinstance(rule, ProcessorRule) and type(value).__name__ in (rule.build_as, rule.build_as + "Pil", rule.build_as + "Fast"))
        ):
            found = rule
            break
    if isinstance(found, ModelRule) and isinstance(value, torch.nn.Module):
        import importlib

        if type(value) is not getattr(importlib.import_module(found.module), found.class_name, None):
            raise _cannot(f"{type(value).__module__}.{type(value).__name__} is not the reviewed class", name)
        return {
            "kind": "model",
            "library": found.library,
            "class": found.class_name,
            "config": _json_config(obj.config.to_dict()),
            "tensors": _tensors(obj, enc),
            "dtype": str(obj.dtype).removeprefix("torch."),
            "training": bool(obj.training),
        }
    if isinstance(found, TokenizerRule):
        return {"kind": "tokenizer", "library": found.library, "class": found.class_name, "files": _tokenizer_files(value, found, enc)}
    if isinstance(found, ProcessorRule):
        return {"kind": "processor", "library": found.library, "class": found.class_name, "config": _json_config(value.to_dict())}
    raise _cannot(f"{type(value).__module__}.{type(value).__name__} objects do not cross the process boundary", name)


def _tensors(module: Any, enc: Any) -> dict[str, str]:
    return {key: enc.tensor_ref(t) for key, t in module.state_dict().items()}


def _tokenizer_files(tok: Any, rule: Any, enc: Any) -> dict[str, str]:
    import os
    import shutil
    import tempfile

    import torch

    tmp = tempfile.mkdtemp(prefix="pipewarden-tok-")
    try:
        tok.save_pretrained(tmp)
        out: dict[str, str] = {}
        for fname in rule.files:
            path = os.path.join(tmp, fname)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as fh:
                    data = bytearray(fh.read())
                out[fname] = enc.tensor_ref(torch.frombuffer(data, dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------- worker side


def decode_component(node: Any, tensors: dict[str, Any], name: str) -> Any:
    """Rebuild one component in the worker from its JSON node and the payload's tensors."""
    from pipewarden.loader import components as C

    if not isinstance(node, dict) or not isinstance(node.get("kind"), str):
        raise InputError(f"malformed component {name!r}", rule="worker.protocol")
    kind = node["kind"]
    if kind == "value":
        return node.get("value")
    if kind == "scheduler":
        sched: Any = C._resolve_diffusers_class(name, "diffusers", str(node["class"]))
        return sched.from_config(dict(node["config"]))
    if kind == "diffusers_model":
        cls = C._resolve_diffusers_class(name, "diffusers", str(node["class"]))
        state = {k: tensors[ref] for k, ref in dict(node["tensors"]).items()}
        model = C._instantiate_model(cls, dict(node["config"]), state, torch_dtype=None, where=f"{name} ", keep_dtypes=True)
        return model.train(bool(node.get("training")))
    if kind == "model":
        import torch

        rule = C.component_policy().find(str(node["library"]), str(node["class"]))
        if not isinstance(rule, C.ModelRule):
            raise C._not_allowed(name, str(node["library"]), str(node["class"]))
        state = {k: tensors[ref] for k, ref in dict(node["tensors"]).items()}
        dtype = getattr(torch, str(node.get("dtype", "float32")))
        model = C.transformers_model_from_state(rule, dict(node["config"]), state, dtype=dtype, where=name)
        return model.train(bool(node.get("training")))
    if kind == "tokenizer":
        rule = C.component_policy().find(str(node["library"]), str(node["class"]))
        if not isinstance(rule, C.TokenizerRule):
            raise C._not_allowed(name, str(node["library"]), str(node["class"]))
        blobs = {}
        for fname, ref in dict(node["files"]).items():
            if fname not in rule.files:
                raise C._not_allowed(name, str(node["library"]), str(node["class"]))
            blobs[fname] = tensors[ref].numpy().tobytes()
        return C.tokenizer_from_files(rule, blobs, where=name)
    if kind == "processor":
        rule = C.component_policy().find(str(node["library"]), str(node["class"]))
        if not isinstance(rule, C.ProcessorRule):
            raise C._not_allowed(name, str(node["library"]), str(node["class"]))
        config = dict(node["config"])
        C._refuse_code_keys(config, name)
        proc = C.processor_from_config(rule, config, where=name)
        C._warm_processors([proc])
        return proc
    raise InputError(f"unknown component kind {kind!r}", rule="worker.protocol")
