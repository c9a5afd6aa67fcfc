"""Values across the process boundary: a JSON tree plus tensors as one safetensors blob.

Decides which value types may cross and how they are rebuilt: JSON scalars, lists, tuples,
str-keyed dicts, torch tensors, numpy arrays, PIL images (L/RGB/RGBA), diffusers output
dataclasses (``BaseOutput``), torch dtypes and devices, and (host -> worker only) a
``torch.Generator`` as its state tensor. Nothing else crosses: no pickle, no arbitrary classes.

``decode`` treats its input as hostile: every node is validated (type tags, names, depth, node
count, tensor references) and any deviation raises ``WorkerError``.

Names the worker chooses never become attributes of host objects unchecked: output classes are
an allowlist (diffusers' own, by name; any other output is an :class:`IsolatedOutput`, one fixed
host class, never a class built per name), outputs are built here field by field and never by
diffusers' ``BaseOutput.__post_init__`` (which spreads a dict first field into attributes), and
a field or spread key becomes an attribute only if it is a public identifier that names nothing
the class defines (``to_tuple``, ``keys``, ...); any other spread key stays an item
(``out["key"]``). Decoded dicts stay plain dicts: item-only.
"""

from __future__ import annotations

import dataclasses
import keyword
import math
import time
from collections import OrderedDict
from typing import Any

from pipewarden.errors import PipewardenError, WorkerError

MAX_DEPTH = 32
MAX_NODES = 200_000
#: Wall-clock budget for decoding one message on the host (checked every 1024 nodes).
MAX_DECODE_SECONDS = 10.0
#: Fields one output dataclass may have.
MAX_OUTPUT_FIELDS = 64
#: Torch dtypes that have a numpy equivalent (ndarray and image results).
_NUMPY_DTYPES = frozenset({"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"})
_IMAGE_MODES = {"L": 2, "RGB": 3, "RGBA": 3}
_TAG = "__pw__"


class EncodeError(PipewardenError):
    """A value of a type that cannot cross the process boundary (raised where it is encoded)."""


def _malformed(what: str) -> WorkerError:
    return WorkerError(
        f"the worker sent a malformed value: {what}",
        rule="wire.malformed-value",
        fix="the worker is broken or compromised; it was stopped",
    )


def _ident(name: object) -> bool:
    """A public identifier (no leading underscore, no keyword, at most 128 characters)."""
    return (
        isinstance(name, str)
        and name.isidentifier()
        and not name.startswith("_")
        and not keyword.iskeyword(name)
        and len(name) <= 128
    )


public_name = _ident


def attribute_name_refused(what: str, name: object) -> WorkerError:
    """The refusal for a worker-chosen name that would become a host attribute or keyword."""
    return WorkerError(
        f"the worker sent {what} named {str(name)[:80]!r}, which would become an attribute or keyword "
        "argument of a host object",
        rule="wire.attribute-name",
        fix="names that cross the process boundary as attributes (output fields, config keys, component "
        "and callback tensor names) must be public Python identifiers: rename it in the pipeline, or "
        'load code you reviewed with isolation="inprocess"',
    )


# ----------------------------------------------------------------------------------- encoding


class Encoder:
    """Collects tensors while turning a value into a JSON tree. One per message."""

    def __init__(self, *, allow_generators: bool) -> None:
        self.tensors: dict[str, Any] = {}
        self.generators: list[Any] = []
        self._allow_generators = allow_generators

    def tensor_ref(self, tensor: Any) -> str:
        name = f"t{len(self.tensors)}"
        self.tensors[name] = tensor.detach().to("cpu").contiguous().clone()
        return name

    def encode(self, value: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise EncodeError("value nested too deeply to send", rule="wire.too-deep")
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {_TAG: "float", "v": repr(value)}
        if isinstance(value, (list, tuple)):
            items = [self.encode(v, depth + 1) for v in value]
            return items if isinstance(value, list) else {_TAG: "tuple", "v": items}
        import torch

        if isinstance(value, torch.Tensor):
            return {_TAG: "tensor", "ref": self.tensor_ref(value)}
        if isinstance(value, torch.dtype):
            return {_TAG: "dtype", "v": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {_TAG: "device", "v": str(value)}
        if isinstance(value, torch.Generator):
            if not self._allow_generators:
                raise EncodeError("a torch.Generator cannot be returned from the worker", rule="wire.unsupported-type")
            state = value.get_state()
            self.generators.append(value)
            return {_TAG: "generator", "device": str(value.device), "ref": self.tensor_ref(state)}
        import numpy as np

        if isinstance(value, np.ndarray):
            if value.dtype == object or value.dtype.kind not in "biuf":
                raise EncodeError(
                    f"numpy arrays of dtype {value.dtype} cannot cross the process boundary", rule="wire.unsupported-type"
                )
            return {_TAG: "ndarray", "ref": self.tensor_ref(torch.from_numpy(np.ascontiguousarray(value)))}
        if isinstance(value, np.generic):
            return self.encode(value.item(), depth + 1)
        pil = _pil_image_class()
        if pil is not None and isinstance(value, pil):
            img = value if value.mode in _IMAGE_MODES else value.convert("RGB")
            arr = np.array(img)
            return {_TAG: "pil", "mode": img.mode, "ref": self.tensor_ref(torch.from_numpy(np.ascontiguousarray(arr)))}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: self.encode(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
            return {_TAG: "output", "cls": type(value).__name__, "fields": fields}
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise EncodeError(
                        f"dict keys must be str to cross the process boundary, got {type(k).__name__}",
                        rule="wire.unsupported-type",
                    )
                out[k] = self.encode(v, depth + 1)
            return {_TAG: "dict", "v": out}
        raise EncodeError(
            f"a value of type {type(value).__name__} cannot cross the process boundary",
            rule="wire.unsupported-type",
            fix='pass tensors or plain values, or use isolation="inprocess"',
        )

    def payload(self) -> bytes:
        if not self.tensors:
            return b""
        from safetensors.torch import save

        return save(self.tensors)


def _pil_image_class() -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return None
    return Image.Image


# ----------------------------------------------------------------------------------- decoding


def load_tensors(payload: bytes) -> dict[str, Any]:
    if not payload:
        return {}
    from safetensors.torch import load

    try:
        return load(payload)
    except Exception as exc:  # safetensors raises its own SafetensorError / ValueError
        raise _malformed(f"tensor payload is not valid safetensors ({type(exc).__name__})") from None


class Decoder:
    """Rebuilds values from a JSON tree + tensors; strict on the host, used in both directions."""

    def __init__(self, tensors: dict[str, Any], *, allow_generators: bool) -> None:
        self.tensors = tensors
        self._allow_generators = allow_generators
        self._nodes = 0
        self._used: set[str] = set()
        self.generators: list[Any] = []
        self._custom_outputs: set[tuple[str, tuple[str, ...]]] = set()
        self._deadline = time.monotonic() + MAX_DECODE_SECONDS

    def _tensor(self, ref: object) -> Any:
        if not isinstance(ref, str) or ref not in self.tensors:
            raise _malformed("unknown tensor reference")
        if ref in self._used:
            raise _malformed("tensor referenced twice")
        self._used.add(ref)
        return self.tensors[ref]

    def _numpy(self, ref: object) -> Any:
        """A tensor as a numpy array; only dtypes numpy has (no bfloat16, no float8)."""
        tensor = self._tensor(ref)
        if str(tensor.dtype).removeprefix("torch.") not in _NUMPY_DTYPES:
            raise _malformed(f"array of dtype {str(tensor.dtype).removeprefix('torch.')} has no numpy equivalent")
        return tensor.numpy()

    def decode(self, node: Any, depth: int = 0) -> Any:
        self._nodes += 1
        if self._nodes > MAX_NODES or depth > MAX_DEPTH:
            raise _malformed("value too large or nested too deeply")
        if not self._nodes & 1023 and time.monotonic() > self._deadline:
            raise _malformed(f"decoding took longer than {MAX_DECODE_SECONDS:g} s")
        if node is None or isinstance(node, (bool, int, str)):
            return node
        if isinstance(node, float):
            return node
        if isinstance(node, list):
            return [self.decode(v, depth + 1) for v in node]
        if not isinstance(node, dict):
            raise _malformed(f"unexpected JSON node {type(node).__name__}")
        tag = node.get(_TAG)
        if tag == "tuple":
            items = node.get("v")
            if not isinstance(items, list):
                raise _malformed("tuple without items")
            return tuple(self.decode(v, depth + 1) for v in items)
        if tag == "dict":
            items = node.get("v")
            if not isinstance(items, dict):
                raise _malformed("dict without items")
            return {str(k): self.decode(v, depth + 1) for k, v in items.items()}
        if tag == "float":
            v = node.get("v")
            if v not in ("nan", "inf", "-inf"):
                raise _malformed("bad float")
            return float(v)
        if tag == "tensor":
            return self._tensor(node.get("ref"))
        if tag == "ndarray":
            return self._numpy(node.get("ref"))
        if tag == "pil":
            return self._image(node)
        if tag == "dtype":
            return _dtype(node.get("v"))
        if tag == "device":
            import torch

            v = node.get("v")
            if not isinstance(v, str) or len(v) > 32:
                raise _malformed("bad device")
            try:
                return torch.device(v)
            except (RuntimeError, ValueError):
                raise _malformed("bad device") from None
        if tag == "output":
            return self._output(node, depth)
        if tag == "generator":
            if not self._allow_generators:
                raise _malformed("a generator is not a valid result")
            return self._generator(node)
        raise _malformed(f"unknown type tag {str(tag)[:40]!r}")

    def _image(self, node: dict) -> Any:
        import numpy as np
        from PIL import Image

        mode = node.get("mode")
        if mode not in _IMAGE_MODES:
            raise _malformed("unsupported image mode")
        arr = self._numpy(node.get("ref"))
        if arr.dtype != np.uint8 or arr.ndim != _IMAGE_MODES[mode] or (mode != "L" and arr.shape[-1] != len(mode)):
            raise _malformed("image array does not match its mode")
        img = Image.fromarray(arr)
        if img.mode != mode:
            raise _malformed("image array does not match its mode")
        return img

    def _output(self, node: dict, depth: int) -> Any:
        name = node.get("cls")
        fields = node.get("fields")
        if not _ident(name) or not isinstance(fields, dict):
            raise _malformed("bad output class")
        if len(fields) > MAX_OUTPUT_FIELDS:
            raise _malformed("output class with too many fields")
        for key in fields:
            if not _ident(key):
                raise attribute_name_refused("an output field", key)
        values = {k: self.decode(v, depth + 1) for k, v in fields.items()}
        cls = _known_output_class(str(name), tuple(values))
        if cls is None:
            return build_output(isolated_output_class(), values, class_name=str(name))
        return build_output(cls, values)

    def _generator(self, node: dict) -> Any:
        import torch

        state = self._tensor(node.get("ref"))
        device = node.get("device")
        if not isinstance(device, str) or len(device) > 32:
            raise _malformed("bad generator device")
        try:
            gen = torch.Generator(device=device)
            gen.set_state(state)
        except (RuntimeError, TypeError, ValueError):
            raise _malformed("bad generator state") from None
        self.generators.append(gen)
        return gen


def _dtype(name: object) -> Any:
    import torch

    if not _ident(name):
        raise _malformed("bad dtype")
    value = vars(torch).get(str(name))  # never getattr: torch's module __getattr__ imports submodules by name
    if not isinstance(value, torch.dtype):
        raise _malformed("bad dtype")
    return value


#: diffusers' own output dataclasses, by name: rebuilt as the real class (the allowlist).
_KNOWN_OUTPUTS = {
    "ImagePipelineOutput": ("diffusers.pipelines.pipeline_utils", "ImagePipelineOutput"),
    "AudioPipelineOutput": ("diffusers.pipelines.pipeline_utils", "AudioPipelineOutput"),
    "StableDiffusionPipelineOutput": ("diffusers.pipelines.stable_diffusion", "StableDiffusionPipelineOutput"),
    "StableDiffusionXLPipelineOutput": ("diffusers.pipelines.stable_diffusion_xl", "StableDiffusionXLPipelineOutput"),
    "FluxPipelineOutput": ("diffusers.pipelines.flux", "FluxPipelineOutput"),
}


def _known_output_class(name: str, fields: tuple[str, ...]) -> type | None:
    import importlib

    if name not in _KNOWN_OUTPUTS:
        return None
    mod, attr = _KNOWN_OUTPUTS[name]
    try:
        cls = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError):  # pragma: no cover - other diffusers layout
        return None
    if set(fields) <= {f.name for f in dataclasses.fields(cls)}:
        return cls
    return None


_ISOLATED: list[type] = []
_RESERVED: dict[type, frozenset[str]] = {}


def isolated_output_class() -> type:
    """The one host class for output dataclasses that are not diffusers' own (built once).

    A ``BaseOutput`` (items, ``out[0]``, ``to_tuple()``, attribute access) without dataclass
    fields of its own: the worker's fields are set on each instance by :func:`build_output`, and
    the pipeline's class name is kept as data (``out.class_name``), never as a host class name.
    """
    if _ISOLATED:
        return _ISOLATED[0]
    from diffusers.utils import BaseOutput

    @dataclasses.dataclass(eq=False)  # compared as the mappings they are
    class IsolatedOutput(BaseOutput):
        """The output of an isolated pipeline whose output class is not one of diffusers' own."""

        def __post_init__(self) -> None:  # never spreads anything: build_output fills it
            pass

        @property
        def class_name(self) -> str:
            """The name of the pipeline's own output class (in the worker)."""
            return str(self.__dict__.get("_pw_class_name", ""))

        def __repr__(self) -> str:
            inner = ", ".join(f"{k}={v!r}" for k, v in self.items())
            return f"IsolatedOutput[{self.class_name}]({inner})"

    IsolatedOutput.__module__ = __name__
    IsolatedOutput.__qualname__ = "IsolatedOutput"
    _ISOLATED.append(IsolatedOutput)
    return IsolatedOutput


def _reserved(cls: type) -> frozenset[str]:
    """Names ``cls`` defines (methods, properties, class attributes, dunders): never shadowed."""
    hit = _RESERVED.get(cls)
    if hit is None:
        hit = _RESERVED[cls] = frozenset(dir(cls))
    return hit


def build_output(cls: type, values: dict[str, Any], *, class_name: str | None = None) -> Any:
    """An output dataclass built field by field, as diffusers' ``BaseOutput`` would, but safely.

    ``cls(**values)`` would run ``BaseOutput.__post_init__``, which turns the keys of a dict
    first field into attributes (``self[key] = value``): a worker-chosen ``__array_interface__``
    key becomes a raw-pointer protocol on a host object. Here a spread key becomes an attribute
    only if it is a public identifier that ``cls`` does not define (a field name excepted); any
    other key stays an item. Field names were checked by the decoder (public identifiers).
    """
    obj: Any = OrderedDict.__new__(cls)
    OrderedDict.__init__(obj)
    declared = list(dataclasses.fields(cls))
    names = [f.name for f in declared]
    reserved = _reserved(cls)
    set_attr = object.__setattr__
    for f in declared:
        if f.name in values:
            value = values[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise _malformed(f"output field {f.name!r} missing")
        set_attr(obj, f.name, value)
    extra = [k for k in values if k not in names]  # only IsolatedOutput has fields of the worker's
    if extra and names:
        raise _malformed("output fields do not fit the output class")
    for k in extra:
        if k not in reserved:
            set_attr(obj, k, values[k])
    order = names or list(values)
    first = values.get(order[0]) if order else None
    if isinstance(first, dict) and all(values.get(k) is None for k in order[1:]):
        for key, value in first.items():
            OrderedDict.__setitem__(obj, key, value)
            if _ident(key) and (key in names or key not in reserved):
                set_attr(obj, key, value)
    else:
        for k in order:
            if values.get(k) is not None:
                OrderedDict.__setitem__(obj, k, values[k])
    if class_name is not None:
        set_attr(obj, "_pw_class_name", class_name)
    return obj
