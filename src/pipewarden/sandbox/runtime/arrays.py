"""The array entry points: what numpy, torch and PIL may be handed by sandboxed code.

numpy, torch and PIL turn their arguments into arrays through attribute protocols
(``__array_interface__`` and ``__array_struct__`` hold a raw pointer, ``__cuda_array_interface__`` a
device pointer, ``__array__``/``__dlpack__`` are called, ``__array_ufunc__``/``__array_function__``
take over the call). An object that answers one of them with data the sandbox chose reads or writes
any host address. :mod:`.names` keeps such names out of every data path that ends in an attribute
(the producer side); this module is the second, independent check at the consumer: every callable
the numpy/torch/PIL facades hand out, every method read from an array or tensor, item writes into
arrays (``_WriteProxy``) and array indices take only values of reviewed shapes:

* plain values (``None``, bool, int, float, complex, str, bytes, slices, ranges, ``...``);
* arrays, tensors, dtypes, devices, generators and images of the libraries themselves (numpy,
  torch, PIL classes, not sandbox subclasses of them) -- their protocol attributes are the
  libraries' own code;
* lists, tuples and dicts of these (bounded);
* any other object only if its attribute lookup cannot be steered by data: no dunder name in its
  own ``__dict__`` (except the few host code stores itself), no Python-level ``__getattribute__``
  and no ``__getattr__`` other than ``nn.Module``'s (whose registries take public names only), and
  no protocol attribute defined by a class outside numpy/torch/PIL.

Not covered here (the producer-side name checks are the only net there): Python operators on
arrays (``ndarray + obj`` converts ``obj`` too; RestrictedPython has no operator hook) and host
library code that converts values internally.

Decides: whether one argument may reach a numpy/torch/PIL entry point. Trusts: numpy, torch, PIL.
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable
from typing import Any

from pipewarden.sandbox.policy import SandboxPolicy
from pipewarden.sandbox.runtime._common import _tname, _violation

_SCALARS: frozenset[type] = frozenset(
    {type(None), bool, int, float, complex, str, bytes, bytearray, slice, range, type(Ellipsis), type(NotImplemented)}
)
_MAX_ELEMENTS = 10_000_000
_MAX_DEPTH = 64


def _library_class(klass: type, libraries: frozenset[str]) -> bool:
    mod = getattr(klass, "__module__", None)
    return isinstance(mod, str) and str.partition(mod, ".")[0] in libraries


def _reviewed_getattr_hooks() -> tuple[Any, ...]:
    torch = sys.modules.get("torch")
    if torch is None:
        return ()
    return (torch.nn.Module.__dict__.get("__getattr__"),)


class ArrayArguments:
    """The argument check, with the per-type answers cached (types are never sandbox-mutable in the
    parts checked here: class dunders cannot be written by sandboxed code)."""

    def __init__(self, owns_type: Callable[[type], bool], policy: SandboxPolicy) -> None:
        self._owns_type = owns_type
        self._instance_dunders = policy.instance_dunders  # [dunders] instance
        self._libraries = policy.array_libraries  # [arrays] libraries
        self._protocols = policy.array_protocols  # [arrays] protocols
        self._fast: set[type] = set(_SCALARS)
        self._type_ok: dict[type, bool] = {}
        self._array_value: dict[type, bool] = {}
        self._hooks = _reviewed_getattr_hooks()
        for path in ("torch.Tensor", "torch.nn.Parameter", "torch.dtype", "torch.device", "torch.Size",
                     "torch.Generator", "torch.layout", "torch.memory_format", "numpy.ndarray", "numpy.dtype"):
            mod, _, name = path.rpartition(".")
            lib = sys.modules.get(mod)
            cls = getattr(lib, name, None) if lib is not None else None
            if isinstance(cls, type):
                self._fast.add(cls)
        self._size = getattr(sys.modules.get("torch"), "Size", None)

    # ------------------------------------------------------------------ per type

    def _type_verdict(self, t: type) -> bool:
        """May instances of ``t`` (checked further per instance) reach an array entry point?"""
        hit = self._type_ok.get(t)
        if hit is None:
            hit = self._compute_type_verdict(t)
            self._type_ok[t] = hit
        return hit

    def _compute_type_verdict(self, t: type) -> bool:
        for klass in t.__mro__:
            if klass is object:
                continue
            ns = klass.__dict__
            if isinstance(ns.get("__getattribute__"), types.FunctionType):
                return False  # a Python-level __getattribute__ may answer any name from data
            hook = ns.get("__getattr__")
            if hook is not None and hook not in self._hooks:
                return False
            if any(name in ns for name in self._protocols) and not (
                _library_class(klass, self._libraries) and not self._owns_type(klass)
            ):
                return False
        return True

    def is_array_value(self, t: type) -> bool:
        """Arrays, tensors and numpy scalars of the libraries themselves (their methods are entry points)."""
        hit = self._array_value.get(t)
        if hit is None:
            bases = tuple(
                cls for cls in (getattr(sys.modules.get("numpy"), "ndarray", None),
                                getattr(sys.modules.get("numpy"), "generic", None),
                                getattr(sys.modules.get("torch"), "Tensor", None))
                if isinstance(cls, type)
            )
            hit = bool(bases) and issubclass(t, bases)
            self._array_value[t] = hit
        return hit

    # ------------------------------------------------------------------ per value

    def check(self, where: str, value: Any) -> None:
        budget = [_MAX_ELEMENTS]
        self._check(where, value, 0, budget)

    def _check(self, where: str, value: Any, depth: int, budget: list[int]) -> None:
        t = type(value)
        if t in self._fast:
            return
        if depth > _MAX_DEPTH:
            raise _violation(f"{where} with values nested more than {_MAX_DEPTH} deep", "argument.array-like")
        if t is list or t is tuple or t is self._size:
            budget[0] -= len(value)
            if budget[0] < 0:
                raise _violation(f"{where} with more than {_MAX_ELEMENTS} elements", "argument.array-like")
            fast = self._fast
            for element in value:
                if type(element) not in fast:
                    self._check(where, element, depth + 1, budget)
            return
        if t is dict:
            budget[0] -= len(value)
            if budget[0] < 0:
                raise _violation(f"{where} with more than {_MAX_ELEMENTS} elements", "argument.array-like")
            for key, element in dict.items(value):
                self._check(where, key, depth + 1, budget)
                self._check(where, element, depth + 1, budget)
            return
        self._check_object(where, value, t)

    def _check_object(self, where: str, value: Any, t: type) -> None:
        if isinstance(value, type):
            # a class (dtype=np.float32, isinstance-style helpers): its metaclass decides the lookup,
            # its own namespace holds class-level protocol attributes
            if not self._type_verdict(t) or not self._class_ok(value):
                raise self._refuse(where, value)
            return
        if not self._type_verdict(t):
            raise self._refuse(where, value)
        try:
            d = object.__getattribute__(value, "__dict__")
        except (AttributeError, TypeError):
            return
        if type(d) is dict:
            for key in d:
                if type(key) is not str or (str.startswith(key, "__") and key not in self._instance_dunders):
                    raise self._refuse(where, value, f"it carries the attribute {key!r}")

    def _class_ok(self, cls: type) -> bool:
        for klass in cls.__mro__:
            if klass is object or (_library_class(klass, self._libraries) and not self._owns_type(klass)):
                continue
            if any(name in klass.__dict__ for name in self._protocols):
                return False
        return True

    @staticmethod
    def _refuse(where: str, value: Any, why: str = "") -> Exception:
        return _violation(
            f"{where} with a {_tname(value)}"
            + (f" ({why})" if why else " (an object whose array protocols are not numpy's, torch's or PIL's own)"),
            "argument.array-like",
            "pass arrays, tensors, PIL images, numbers or lists of them",
        )

    # ------------------------------------------------------------------ wrappers

    def guard(self, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
        """``fn`` with every argument checked before the library sees it."""
        check = self._check
        fast = self._fast

        def array_entry_point(*args: Any, **kwargs: Any) -> Any:
            for a in args:
                if type(a) not in fast:
                    check(where, a, 0, [_MAX_ELEMENTS])
            for a in kwargs.values():
                if type(a) not in fast:
                    check(where, a, 0, [_MAX_ELEMENTS])
            return fn(*args, **kwargs)

        try:
            functools.update_wrapper(array_entry_point, fn, assigned=("__name__", "__qualname__", "__doc__"), updated=())
        except (AttributeError, TypeError):  # pragma: no cover - every library callable has these
            pass
        return array_entry_point
