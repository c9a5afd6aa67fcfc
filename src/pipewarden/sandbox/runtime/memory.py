"""Foreign memory: no sandboxed value becomes a writable view of memory that is read-only.

torch turns buffers and numpy arrays into tensors that SHARE their memory, and a tensor is always
writable: ``torch.frombuffer``/``torch.asarray`` over a read-only buffer (a ``bytes`` object, a
read-only numpy array) and ``torch.from_numpy``/``torch.as_tensor``/``torch.Tensor(...)``/the
legacy ``torch.FloatTensor(...)`` classes/``tensor.new(...)`` over a read-only numpy array return
writable tensors aliasing memory its owner keeps immutable. ``bytes`` objects are shared (CPython
keeps one object per single-byte value: rewriting ``bytes([65])`` rewrites every ``b"A"`` of the
process) and read-only arrays are read-only on purpose. ``numpy.ndarray(buffer=...)`` views any
buffer (the read-only array it gives is the first half of the same door).

The rule, at those entry points: a read-only argument (a numpy array whose ``writeable`` flag is
off, a buffer whose ``memoryview`` is read-only) is replaced by a private copy with the same
dtype/format and shape before torch sees it, so whatever is written is the sandbox's own memory;
writable arguments keep their sharing semantics. ``numpy.ndarray(buffer=...)`` is refused, and so
is subclassing ``torch.Tensor`` or ``numpy.ndarray`` (their constructors are the same entry
points). numpy itself never turns a read-only array writable, so numpy's own callables need no
rule. ``as_strided`` stays within its tensor's storage (torch checks the bounds); ``set_``,
``storage``, ``untyped_storage``, ``data_ptr``, ``from_file``, ``from_dlpack`` are denied by name.

The entry points are the policy's ``replace = { ... = "private-memory" }`` (module callables),
``"private-memory-class"`` (classes), ``[argument_guards] new`` (``tensor.new``). A sweep test over
every torch callable and tensor method the policy admits finds any new aliasing entry point
(``tests/sandbox/test_foreign_memory.py``).

Decides: which arguments are copied or refused. Trusts: numpy's and torch's copies.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from pipewarden.sandbox.runtime._common import _tname, _violation
from pipewarden.sandbox.runtime.objects import SameClassComparisons, _ClassStandIn

#: Argument types that never carry a buffer (checked first, cheaply).
_NOT_BUFFERS: frozenset[type] = frozenset(
    {type(None), bool, int, float, complex, str, list, tuple, dict, set, frozenset, slice, range, type(Ellipsis)}
)


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def private_if_readonly(value: Any) -> Any:
    """``value``, or a private writable copy of it when it exposes read-only memory."""
    if type(value) in _NOT_BUFFERS or isinstance(value, type) or _is_tensor(value):
        return value
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return value if value.flags.writeable else np.array(value, copy=True, subok=False)
    try:
        view = memoryview(value)
    except TypeError:
        return value  # not a buffer: torch copies or refuses it itself
    with view:
        if not view.readonly:
            return value
        data = bytearray(view.tobytes())  # C order, whatever the source's strides
        if view.format == "B" and view.ndim == 1:
            return data
        try:
            return memoryview(data).cast(view.format, view.shape)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise _violation(
                f"a read-only {_tname(value)} buffer of format {view.format!r} given to torch",
                "argument.foreign-memory",
                "pass a numpy array or a tensor (a writable copy of the data)",
            ) from None


def _private_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (
        tuple(private_if_readonly(a) for a in args),
        {k: private_if_readonly(v) for k, v in kwargs.items()},
    )


def private_memory(target: Callable[..., Any], where: str) -> Callable[..., Any]:
    """``target`` (a torch entry point that may alias its argument) with read-only arguments copied."""

    def private_memory_call(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = _private_arguments(args, kwargs)
        return target(*args, **kwargs)

    for attr in ("__name__", "__qualname__", "__doc__"):
        try:
            setattr(private_memory_call, attr, getattr(target, attr))
        except (AttributeError, TypeError):  # pragma: no cover - builtins have all three
            pass
    return private_memory_call


class MemoryCheckedClass(SameClassComparisons, _ClassStandIn):
    """A tensor or array class whose constructor views the memory of its argument (``torch.Tensor``,
    the legacy ``torch.FloatTensor``... classes, ``numpy.ndarray``): constructing copies read-only
    arguments (torch) or refuses ``buffer=`` (numpy); subclassing is refused; isinstance,
    issubclass, annotations and ``type(x) is torch.Tensor`` work as with the class itself."""

    __slots__ = ("_pw_cls", "_pw_refuse_buffer")

    def __init__(self, cls: type, refuse_buffer: bool) -> None:
        object.__setattr__(self, "_pw_cls", cls)
        object.__setattr__(self, "_pw_refuse_buffer", refuse_buffer)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        cls = object.__getattribute__(self, "_pw_cls")
        if object.__getattribute__(self, "_pw_refuse_buffer"):
            # numpy.ndarray(shape, dtype=float, buffer=None, offset=0, strides=None, order=None)
            if kwargs.get("buffer") is not None or (len(args) > 2 and args[2] is not None):
                raise _violation(
                    f"{_tname(cls)}(buffer=...) (an array viewing memory it did not allocate)",
                    "argument.foreign-memory",
                    "build the array from data (numpy.array, numpy.asarray) or copy the buffer first",
                )
            return cls(*args, **kwargs)
        args, kwargs = _private_arguments(args, kwargs)
        return cls(*args, **kwargs)

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        cls = object.__getattribute__(self, "_pw_cls")
        raise _violation(
            f"subclassing {_tname(cls)} (its constructor views the memory of its argument)", "class.bases",
            "wrap the array or tensor in a class of your own instead of deriving from it",
        )

    def __getattr__(self, name: str) -> Any:
        # what ``type(x).__name__`` and friends read; nothing else is reachable through the stand-in
        if name in ("__name__", "__qualname__", "__module__"):
            return getattr(object.__getattribute__(self, "_pw_cls"), name)
        raise AttributeError(name)


_STAND_INS: dict[tuple[type, bool], MemoryCheckedClass] = {}


def memory_checked_class(cls: type, *, refuse_buffer: bool) -> MemoryCheckedClass:
    """The one stand-in per class (so ``type(x) is torch.Tensor`` holds in sandboxed code)."""
    key = (cls, refuse_buffer)
    hit = _STAND_INS.get(key)
    if hit is None:
        hit = _STAND_INS[key] = MemoryCheckedClass(cls, refuse_buffer)
    return hit
