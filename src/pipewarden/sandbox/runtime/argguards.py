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
from pipewarden.sandbox.runtime.objects import _check_attribute_keys

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
        _check_attribute_keys(where, getattr(obj, first, None))


def _install_checked_post_init(cls: type) -> None:
    """``__post_init__`` of a sandbox subclass of BaseOutput/ModelOutput: the base spreads a dict
    first field into attributes, so its keys are checked first (and again at super().__post_init__)."""
    own = cls.__dict__.get("__post_init__")
    where = f"{cls.__name__}(...)"

    def __post_init__(self: Any) -> None:
        _first_field_check(self, where)
        if own is not None:
            own(self)
        else:
            super(cls, self).__post_init__()  # type: ignore[arg-type]

    type.__setattr__(cls, "__post_init__", __post_init__)


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


def _progress_bar_guard(box: AttributeRules, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    owner = getattr(fn, "__self__", None)

    def progress_bar(*args: Any, **kwargs: Any) -> Any:
        d = getattr(owner, "__dict__", None)
        config = d.get("_progress_bar_config") if isinstance(d, dict) else None
        if config is not None:
            _check_bar_format(config, where)
        return fn(*args, **kwargs)

    return progress_bar


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
        _check_attribute_keys(where, config)
        return fn(config, *args, **kwargs)

    return from_config


#: The argument guards by the name the policy's ``[argument_guards]`` table gives them (which
#: method gets which guard is policy data; tests check this table implements the whole vocabulary).
ARGUMENT_GUARD_IMPLS: dict[str, Callable[[AttributeRules, Callable[..., Any], str], Callable[..., Any]]] = {
    "config-dict-only": _config_dict_only,
    "progress-bar-config": _progress_bar_config_guard,
    "progress-bar": _progress_bar_guard,
    "register-modules": _register_modules_guard,
}


