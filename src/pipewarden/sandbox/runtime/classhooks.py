"""Host code that runs while a sandbox class is created.

``type.__new__`` calls host code with what the class statement chose: the bases'
``__init_subclass__`` (transformers' ``PreTrainedModel`` ``eval()``s the class's string annotations
through ``typing.get_type_hints``; ``cache_utils.DynamicLayer`` registers the class in a module-global
table), the ``__set_name__`` of namespace values, and, for an ``Enum``, the mixin class's
``__new__``/``__init__`` with each member's value as arguments. The class is therefore created
armed (the tripwire applies: the class statement's sandboxed frame is on the stack), and only
reviewed host hooks may run at all:

* ``__init_subclass__``: every Python-level one among the host bases must be reviewed
  (``[class_creation.init_subclass]``: pytree registration of output classes, ``typing.Generic``);
* ``__set_name__``: namespace values whose class (not the sandbox's own) defines one must be of a
  reviewed type (``[class_creation.set_name]``), a ``dataclasses.field`` checked through its default;
* Enum mixins: only the reviewed value types (``[class_creation.enum_mixins]``), enum classes and the
  sandbox's own classes.

Decides: whether a class statement's bases and namespace may reach ``type.__new__``. Trusts: the
reviewed hooks the policy data lists (default.toml ``[class_creation]``, resolved when it loads).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Any

from pipewarden.sandbox.policy.resolve import ReviewedClassHooks
from pipewarden.sandbox.runtime._common import _tname, _violation


def _default_hooks() -> ReviewedClassHooks:
    from pipewarden.sandbox.policy import default_policy
    from pipewarden.sandbox.policy.resolve import resolve_policy

    return resolve_policy(default_policy()).class_hooks


def check_class_creation(
    name: str,
    bases: tuple[Any, ...],
    ns: dict[str, Any],
    owns: Callable[[type], bool],
    reviewed: ReviewedClassHooks | None = None,
) -> None:
    """Refuse a class statement whose creation would run unreviewed host code (``reviewed``: the
    policy's resolved ``[class_creation]``; the default policy's when None)."""
    if reviewed is None:
        reviewed = _default_hooks()
    for base in bases:
        if not isinstance(base, type):
            continue
        for klass in base.__mro__:
            if owns(klass) or klass is object:
                continue
            hook = klass.__dict__.get("__init_subclass__")
            if hook is None:
                continue
            fn = getattr(hook, "__func__", hook)
            if not hasattr(fn, "__code__"):
                continue  # a C implementation (object's, builtin types')
            if fn not in reviewed.init_subclass:
                raise _violation(
                    f"class {name} derives from {_tname(klass)}, whose __init_subclass__ would run host code on it",
                    "class.init-subclass",
                    "derive from the diffusers/torch base classes pipelines use, or wrap the host object instead",
                )
    for key, value in ns.items():
        _check_set_name(name, key, value, owns, reviewed.set_name, 0)
    if any(isinstance(b, type) and issubclass(b, enum.Enum) for b in bases):
        for base in bases:
            if not isinstance(base, type) or issubclass(base, enum.Enum) or owns(base):
                continue
            if base not in reviewed.enum_mixins:
                raise _violation(
                    f"enum {name} mixes in {_tname(base)} (its constructor would run with each member's value)",
                    "class.enum-mixin",
                    "mix in str, int or float, or a class this file defines",
                )


def _check_set_name(
    name: str, key: str, value: Any, owns: Callable[[type], bool], reviewed: frozenset[type], depth: int
) -> None:
    t = type(value)
    if owns(t) or depth > 4:
        return
    hook = None
    for klass in t.__mro__:
        if "__set_name__" in klass.__dict__:
            hook = klass
            break
    if hook is None or (hook.__module__ == "builtins" and not hasattr(hook.__dict__["__set_name__"], "__code__")):
        return  # none, or the interpreter's own (property records the name)
    import dataclasses

    if t is dataclasses.Field:
        # Field.__set_name__ forwards to its default's __set_name__
        _check_set_name(name, key, value.default, owns, reviewed, depth + 1)
        return
    if hook not in reviewed:
        raise _violation(
            f"class {name} attribute {key!r} is a {_tname(value)}, whose __set_name__ would run host code on the class",
            "class.set-name",
        )


# ---------------------------------------------------------------------------------------------------
# Annotations are data that host code evaluates: typing.get_type_hints (DiffusionPipeline.
# _get_signature_types on ``from_pretrained``/``from_pipe``), inspect.signature(eval_str=True) and
# dataclasses read them, and a str annotation is eval()'d with the function's globals (the
# sandbox's namespace: raw attribute access, no guards) or, for a class outside sys.modules, with
# the real builtins -- whoever calls, and outside any sandboxed frame. So a str annotation of a
# sandbox function or class is replaced, when it is defined, by an inert typing object that keeps
# the text: ``Annotated[Any, "<text>"]`` (get_type_hints never evaluates Annotated metadata);
# ``ClassVar``/``InitVar`` spellings keep their meaning for dataclasses.

_DATACLASS_MARKER = re.compile(r"^\s*(?:\w+\s*\.\s*)?(ClassVar|InitVar)\b")


_PLAIN_ANNOTATION_DEPTH = 8


def _plain_annotation(value: Any, depth: int = 0) -> bool:
    """True if ``value`` is an annotation host code can evaluate without running text: a class,
    None/Ellipsis, or a typing form whose every argument (``__origin__``, ``__args__``,
    ``__metadata__``, TypeVar bounds) is one too -- no str and no ForwardRef anywhere, up to a
    bounded depth. A string anywhere inside, or too deep, is not."""
    import dataclasses
    import types
    import typing

    if depth > _PLAIN_ANNOTATION_DEPTH:
        return False
    if value is None or value is Ellipsis or value is typing.Any:
        return True
    t = type(value)
    if t in (str, typing.ForwardRef) or isinstance(value, (str, typing.ForwardRef)):
        return False
    if t in (bool, int):  # Literal[...] values
        return True
    if isinstance(value, type) and t is not types.GenericAlias:
        return True  # a class: get_type_hints returns it as it is
    if t is typing.TypeVar:
        parts: tuple = (*value.__constraints__, value.__bound__)
        return all(_plain_annotation(p, depth + 1) for p in parts)
    if issubclass(t, typing._SpecialForm):  # type: ignore[attr-defined]
        return True
    if t is dataclasses.InitVar:
        return _plain_annotation(object.__getattribute__(value, "type"), depth + 1)
    if t is types.GenericAlias or t is types.UnionType or issubclass(t, typing._BaseGenericAlias):  # type: ignore[attr-defined]
        if t is types.GenericAlias:
            origin, args, metadata = value.__origin__, value.__args__, ()
        elif t is types.UnionType:
            origin, args, metadata = None, value.__args__, ()
        else:
            d = object.__getattribute__(value, "__dict__")
            origin, args, metadata = d.get("__origin__"), d.get("__args__", ()), d.get("__metadata__", ())
        if type(args) is not tuple or type(metadata) is not tuple:
            return False
        if origin is typing.Any and metadata and all(type(m) is str for m in metadata):
            return not args or args == (typing.Any,)  # the inert form below: metadata is never evaluated
        return all(_plain_annotation(p, depth + 1) for p in (origin, *args, *metadata))
    # any other object (a facade class, a marker instance) is returned as it is by get_type_hints,
    # which recurses only into str, ForwardRef and the typing forms above (a subclass of one: inert)
    return not isinstance(value, (types.GenericAlias, types.UnionType, typing._BaseGenericAlias))  # type: ignore[attr-defined]


def inert_annotation(value: Any) -> Any:
    """``value`` if it is a plain annotation (see above); else the whole annotation replaced by an
    inert one (the text kept for a str; dataclass ClassVar/InitVar meaning kept)."""
    if _plain_annotation(value):
        return value
    import dataclasses
    import typing

    if type(value) is str or isinstance(value, str):
        text = str(value)
        marker = _DATACLASS_MARKER.match(text)
    else:
        text = "<annotation holding text>"
        marker = None
        if isinstance(value, typing._GenericAlias) and value.__origin__ is typing.ClassVar:  # type: ignore[attr-defined]
            return typing.ClassVar[typing.Any]
        if type(value) is dataclasses.InitVar:
            return dataclasses.InitVar(typing.Any)  # type: ignore[arg-type]
    if marker is not None and marker.group(1) == "ClassVar":
        return typing.ClassVar[typing.Any]
    if marker is not None:
        return dataclasses.InitVar(typing.Any)  # type: ignore[arg-type]
    return typing.Annotated[typing.Any, text]


def inert_annotations(annotations: Any) -> Any:
    """A copy of an ``__annotations__`` dict with every annotation that holds text anywhere (a str,
    a ForwardRef, nested in ``list[...]``/``Optional[...]``/``Annotated[...]``) made inert as a
    whole; plain annotations as they are."""
    if type(annotations) is not dict or all(_plain_annotation(v) for v in annotations.values()):
        return annotations
    return {k: inert_annotation(v) for k, v in annotations.items()}
