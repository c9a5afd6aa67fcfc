"""Values across the process boundary: a JSON tree plus tensors as one safetensors blob.

Decides which value types may cross and how they are rebuilt: JSON scalars, lists, tuples,
str-keyed dicts, torch tensors, numpy arrays, PIL images (L/RGB/RGBA), diffusers output
dataclasses (``BaseOutput``), torch dtypes and devices, and (host -> worker only) a
``torch.Generator`` as its state tensor. Nothing else crosses: no pickle, no arbitrary classes.

``decode`` treats its input as hostile: every node is validated (type tags, names, depth, node
count, tensor references) and any deviation raises ``WorkerError``.
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
#: Output dataclasses not in diffusers' own table that one message may name (each costs a class).
MAX_CUSTOM_OUTPUTS_PER_MESSAGE = 4
#: Generated output classes kept for reuse (least recently used dropped first).
MAX_CACHED_OUTPUT_CLASSES = 64
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
    return (
        isinstance(name, str)
        and name.isidentifier()
        and not name.startswith("_")
        and not keyword.iskeyword(name)
        and len(name) <= 128
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
        if not _ident(name) or not isinstance(fields, dict) or not all(_ident(k) for k in fields):
            raise _malformed("bad output class")
        if len(fields) > 64:
            raise _malformed("output class with too many fields")
        values = {k: self.decode(v, depth + 1) for k, v in fields.items()}
        cls = _known_output_class(str(name), tuple(values))
        if cls is None:
            self._custom_outputs.add((str(name), tuple(values)))
            if len(self._custom_outputs) > MAX_CUSTOM_OUTPUTS_PER_MESSAGE:
                raise _malformed(f"more than {MAX_CUSTOM_OUTPUTS_PER_MESSAGE} custom output classes in one message")
            cls = _output_class(str(name), tuple(values))
        try:
            return cls(**values)
        except (TypeError, ValueError):
            raise _malformed("output fields do not fit the output class") from None

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

    if not isinstance(name, str) or not name.isidentifier():
        raise _malformed("bad dtype")
    value = getattr(torch, name, None)
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
_MADE: OrderedDict[tuple[str, tuple[str, ...]], type] = OrderedDict()


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


def _output_class(name: str, fields: tuple[str, ...]) -> type:
    """The host class for an output dataclass: a known diffusers one, else a generated BaseOutput.

    Generated classes are bounded: at most ``MAX_CUSTOM_OUTPUTS_PER_MESSAGE`` per message (see
    ``Decoder``) and ``MAX_CACHED_OUTPUT_CLASSES`` kept, so a hostile worker cannot make the host
    build or keep an unbounded number of classes.
    """
    known = _known_output_class(name, fields)
    if known is not None:
        return known
    key = (name, fields)
    cls = _MADE.get(key)
    if cls is not None:
        _MADE.move_to_end(key)
        return cls
    from diffusers.utils import BaseOutput

    cls = dataclasses.make_dataclass(name, [(f, Any, None) for f in fields], bases=(BaseOutput,))
    _MADE[key] = cls
    while len(_MADE) > MAX_CACHED_OUTPUT_CLASSES:
        _MADE.popitem(last=False)
    return cls
