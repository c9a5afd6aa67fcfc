"""The sandbox implementations the policy data names: replacements of host functions and argument guards.

``default.toml`` maps each name its ``[modules.*].replace`` and ``[argument_guards]`` values use to
a function of this module (``[implementations.replace]``, ``[implementations.argument_guards]``);
:func:`pipewarden.sandbox.policy.resolve.resolve_policy` resolves those paths when the policy loads
and refuses to load when one does not resolve (fail closed). Only this module may be named: the
policy cannot point a replacement at an arbitrary host function.

Replacement factories take ``(box, where, target)`` -- the sandbox, ``"module.name"`` and the host
function being replaced (None when the host module lacks the name) -- and return what sandboxed
code gets instead. Argument guards take ``(box, method, where)`` and return the guarded method.

Decides: nothing beyond what each implementation documents. Trusts: the host function it wraps,
once the arguments passed.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipewarden.sandbox import tripwire
from pipewarden.sandbox.runtime import argguards, deputies, memory
from pipewarden.sandbox.runtime._common import _tname, _violation
from pipewarden.sandbox.runtime.argguards import (
    _check_bar_format,
    _no_custom_attribute_lists,
    _signature_naming,
)
from pipewarden.sandbox.runtime.objects import _FreshModeContext, _GradMode

if TYPE_CHECKING:
    from pipewarden.sandbox.runtime.facades import FacadeResolver

Replacement = Callable[["FacadeResolver", str, Any], Any]


def _present(target: Any, where: str) -> Any:
    if target is None:
        module, _, name = where.rpartition(".")
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return target


# ---------------------------------------------------------------------------------------------------
# Replacements ([modules.*].replace)


def sandbox_logger(box: FacadeResolver, where: str, target: Any) -> Any:
    """``get_logger``/``getLogger``: the sandbox logger (formats with % itself)."""
    return box._get_logger


def owned_first_argument(box: FacadeResolver, where: str, target: Any) -> Any:
    """Decorators that set attributes on what they decorate: only on the sandbox's own objects."""
    target = _present(target, where)

    def guarded(*args: Any, **kwargs: Any) -> Any:
        _no_custom_attribute_lists(where, args, kwargs)
        if args and (isinstance(args[0], type) or callable(args[0])):
            box.require_owned(args[0], where)
            with tripwire.suspended():
                return target(*args, **kwargs)
        with tripwire.suspended():
            decorator = target(*args, **kwargs)  # factory form: @dataclass(frozen=True)
        return box._owned_decorator(decorator, where)

    return functools.update_wrapper(guarded, target, assigned=("__name__", "__qualname__", "__doc__"))


def owned_decorator_result(box: FacadeResolver, where: str, target: Any) -> Any:
    """Factories whose result decorates (sets attributes on) its argument: wraps(...), ..."""
    target = _present(target, where)

    def factory(*args: Any, **kwargs: Any) -> Any:
        _no_custom_attribute_lists(where, args, kwargs)
        return box._owned_decorator(target(*args, **kwargs), where)

    return factory


def format_checked(box: FacadeResolver, where: str, target: Any) -> Any:
    """tqdm/trange: ``bar_format`` may name plain fields only (tqdm renders it with str.format)."""
    target = _present(target, where)
    signature = _signature_naming(target, "bar_format")
    leading = (None,) if isinstance(target, type) else ()

    def checked(*args: Any, **kwargs: Any) -> Any:
        # bar_format may come by keyword or by position (tqdm's 16th parameter)
        bound: dict[str, Any] = dict(kwargs)
        if signature is None and args:
            raise _violation(f"{where} with positional arguments", "argument.format-traversal")
        if signature is not None:
            try:
                bound = dict(signature.bind_partial(*leading, *args, **kwargs).arguments)
            except TypeError:
                raise _violation(f"{where} with arguments that do not match its signature",
                                 "argument.format-traversal") from None
            for param in signature.parameters.values():
                if param.kind is inspect.Parameter.VAR_KEYWORD and isinstance(bound.get(param.name), dict):
                    bound.update(bound.pop(param.name))
        _check_bar_format(bound, where)
        return target(*args, **kwargs)

    return checked


def grad_mode(box: FacadeResolver, where: str, target: Any) -> Any:
    """torch.set_grad_enabled: changes the mode only inside ``with`` / around a decorated function."""
    _present(target, where)
    return _GradMode


def mode_context(box: FacadeResolver, where: str, target: Any) -> Any:
    """torch.no_grad / enable_grad / inference_mode / autocast: the same arguments, but every entry
    (and every call of a decorated function) uses a new host instance (``_FreshModeContext``), so
    no object the sandbox holds can be entered twice."""
    target = _present(target, where)

    def make(*args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and (inspect.isfunction(args[0]) or inspect.ismethod(args[0])):
            return _FreshModeContext(lambda: target())(args[0])  # the bare decorator: @torch.no_grad
        proto = target(*args, **kwargs)  # the host's own argument checks (and warnings), once, as in torch
        return _FreshModeContext(lambda: copy.copy(proto))  # a never-entered copy per entry

    return functools.update_wrapper(make, target, assigned=("__name__", "__qualname__", "__doc__"), updated=())


#: Host functions that call a callable argument with values they take from an iterable (red team
#: round 7: host ``map`` calling what host ``chain`` yielded): where that argument is, as
#: (position, keyword). The replacement passes it through ``GuardHooks.checked_callable``, so host
#: code calls it with the sandbox's call checks. Functions that call it only with what their
#: caller passes (``partial``, ``lru_cache``) need no entry: their caller is sandboxed code (a
#: checked call) or one of these. A name replaced by ``callable-arguments`` without an entry here
#: refuses to load (``_check_callable_arguments`` in sandbox/policy/__init__.py).
CALLABLE_ARGUMENTS: dict[str, tuple[int, str]] = {
    "functools.reduce": (0, "function"),
    "itertools.starmap": (0, "function"),
    "itertools.accumulate": (1, "func"),
    "itertools.groupby": (1, "key"),
    "itertools.takewhile": (0, "predicate"),
    "itertools.dropwhile": (0, "predicate"),
    "itertools.filterfalse": (0, "function"),
    "contextlib.contextmanager": (0, "func"),
}


def callable_arguments(box: FacadeResolver, where: str, target: Any) -> Any:
    """Host functions that call a callable they are given (``CALLABLE_ARGUMENTS``): the callable
    is called with the sandbox's call checks (``checked_callable``), whoever calls it."""
    target = _present(target, where)
    spec = CALLABLE_ARGUMENTS.get(where)
    if spec is None:
        raise _violation(f"{where} has no callable-argument entry", "policy.invalid", "add it to CALLABLE_ARGUMENTS")
    position, keyword = spec
    check = box.checked_callable  # type: ignore[attr-defined]

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if len(args) > position and callable(args[position]):
            args = (*args[:position], check(args[position]), *args[position + 1 :])
        elif keyword in kwargs and callable(kwargs[keyword]):
            kwargs[keyword] = check(kwargs[keyword])
        return target(*args, **kwargs)

    return functools.update_wrapper(guarded, target, assigned=("__name__", "__qualname__", "__doc__"), updated=())


def sandbox_warn(box: FacadeResolver, where: str, target: Any) -> Any:
    """``warnings.warn``: ``stacklevel`` counts the pipeline's own frames only (red team round 8).

    The host's ``warn`` walks ``stacklevel`` frames up whatever they are: past the sandbox into
    pipewarden's wrapper, the caller and ``sys``, writing ``__warningregistry__`` into those host
    modules (a later host warning with the same text is silenced) and attributing the warning to
    a host file. Here the warning is attributed to the ``stacklevel``-th sandboxed frame (the
    outermost one if there are fewer) and issued with ``warn_explicit`` in that frame's module."""
    import sys
    import warnings

    _present(target, where)

    def warn(message: Any, category: Any = None, stacklevel: Any = 1, source: Any = None, **kwargs: Any) -> None:
        if kwargs:  # skip_file_prefixes (3.12+): frames are chosen here
            raise TypeError(f"warn() got unexpected keyword arguments {sorted(kwargs)}")
        if isinstance(message, Warning):
            category = message.__class__
        if category is None:
            category = UserWarning
        if not (isinstance(category, type) and issubclass(category, Warning)):
            raise TypeError(f"category must be a Warning subclass, not '{type(category).__name__}'")
        wanted = stacklevel if type(stacklevel) is int and stacklevel > 1 else 1
        codes = tripwire._SANDBOX_CODE
        frame: Any = sys._getframe(1)
        chosen = None
        seen = 0
        while frame is not None and seen < wanted:
            if frame.f_code in codes:
                chosen = frame
                seen += 1
            frame = frame.f_back
        if chosen is None:  # called from host code on the sandbox's behalf: attribute it here
            chosen = sys._getframe(1)
        globs = chosen.f_globals
        registry = globs.setdefault("__warningregistry__", {}) if chosen.f_code in codes else {}
        warnings.warn_explicit(
            message, category, chosen.f_code.co_filename, chosen.f_lineno,
            registry=registry, module_globals=globs if chosen.f_code in codes else None, source=source,
        )

    return warn


def catch_warnings(box: FacadeResolver, where: str, target: Any) -> Any:
    """``warnings.catch_warnings`` on the warnings module only (red team round 9).

    With ``module=<a stand-in>`` the host class saved and restored the stand-in's ``filters`` while
    its ``action=`` went through the real ``simplefilter``: the host's filters stayed changed (an
    ``"error"`` filter turned every later host warning into an exception)."""
    target = _present(target, where)

    def catch(
        *, record: bool = False, action: Any = None, category: Any = Warning, lineno: int = 0, append: bool = False
    ) -> Any:
        return target(record=record, action=action, category=category, lineno=lineno, append=append)

    return functools.update_wrapper(catch, target, assigned=("__name__", "__qualname__", "__doc__"), updated=())


def checked_factory(box: FacadeResolver, where: str, target: Any) -> Any:
    """``collections.defaultdict``: the factory is called with the sandbox's call checks
    (``checked_callable``), at construction and when sandboxed code sets ``default_factory``
    through the constructor again; the dict is a real ``defaultdict``."""
    target = _present(target, where)
    check = box.checked_callable  # type: ignore[attr-defined]

    def make(*args: Any, **kwargs: Any) -> Any:
        if args and callable(args[0]):
            args = (check(args[0]), *args[1:])
        return target(*args, **kwargs)

    return functools.update_wrapper(make, target, assigned=("__name__", "__qualname__", "__doc__"), updated=())


def deprecate_checked(box: FacadeResolver, where: str, target: Any) -> Any:
    """diffusers.utils.deprecate(take_from=x) does getattr(x, name) / x.pop(name) with names the
    caller chooses: only a plain dict (the pipeline's own kwargs) may be given."""
    target = _present(target, where)

    def deprecate(*args: Any, take_from: Any = None, **kwargs: Any) -> Any:
        if take_from is not None and type(take_from) is not dict:
            raise _violation(
                f"{where}(take_from=<{_tname(take_from)}>) would read attributes outside the guards",
                "argument.take-from",
                "pass take_from=kwargs (a dict) or nothing",
            )
        for item in args:
            if isinstance(item, tuple) and item and (type(item[0]) is not str or item[0].startswith("_")):
                raise _violation(f"{where} with attribute name {item[0]!r}", "argument.take-from")
        # deprecate warns with stacklevel frames up from itself: 3 is the pipeline's call, the
        # deepest it may reach (a larger one wrote __warningregistry__ into host modules)
        kwargs["stacklevel"] = 3
        return target(*args, take_from=take_from, **kwargs)

    return deprecate


# Guarded facades of Python-level host helpers (runtime/deputies.py, issue 12).


def update_wrapper(box: FacadeResolver, where: str, target: Any) -> Any:
    _present(target, where)
    return deputies._update_wrapper(box, where)


def wraps(box: FacadeResolver, where: str, target: Any) -> Any:
    _present(target, where)
    return deputies._wraps(box, where)


def signature_no_eval(box: FacadeResolver, where: str, target: Any) -> Any:
    return deputies._signature(box, where, _present(target, where))


def dataclasses_replace(box: FacadeResolver, where: str, target: Any) -> Any:
    return deputies._dataclasses_replace(box, where, _present(target, where))


def dataclasses_export(box: FacadeResolver, where: str, target: Any) -> Any:
    return deputies._dataclasses_export(box, where, _present(target, where))


def copy_reviewed(box: FacadeResolver, where: str, target: Any) -> Any:
    return deputies._copy(box, where, _present(target, where), deep=False)


def deepcopy_reviewed(box: FacadeResolver, where: str, target: Any) -> Any:
    return deputies._copy(box, where, _present(target, where), deep=True)


def namedtuple_checked(box: FacadeResolver, where: str, target: Any) -> Any:
    return deputies._namedtuple(box, where, _present(target, where))


# ---------------------------------------------------------------------------------------------------
# Argument guards ([argument_guards]): (box, method, where) -> the guarded method.

config_dict_only = argguards._config_dict_only
progress_bar_config = argguards._progress_bar_config_guard
progress_bar = argguards._progress_bar_guard
register_modules = argguards._register_modules_guard
attention_processor = argguards._attention_processor_guard

owned_component = argguards._owned_component_guard
own_module_buffer = argguards._own_module_buffer_guard
free_hooks_reimplemented = argguards._free_hooks_guard


# ---------------------------------------------------------------------------------------------------
# Entry points that would view memory they did not allocate (sandbox/runtime/memory.py)


def private_memory(box: FacadeResolver, where: str, target: Any) -> Any:
    """torch.frombuffer/asarray/as_tensor/from_numpy: read-only arguments reach them as private copies
    (after the array entry-point check every torch callable gets: runtime/arrays.py)."""
    return box.array_arguments.guard(memory.private_memory(_present(target, where), where), where)


def private_memory_class(box: FacadeResolver, where: str, target: Any) -> Any:
    """torch.Tensor and the legacy typed tensor classes: read-only arguments copied; not subclassable."""
    return memory.memory_checked_class(_present(target, where), refuse_buffer=False)


def no_foreign_buffer(box: FacadeResolver, where: str, target: Any) -> Any:
    """numpy.ndarray: ``buffer=`` refused; not subclassable."""
    return memory.memory_checked_class(_present(target, where), refuse_buffer=True)


def private_memory_arguments(box: Any, method: Callable[..., Any], where: str) -> Callable[..., Any]:
    """Argument guard (``tensor.new``): read-only arguments are copied first (after the array check)."""
    return box.array_arguments.guard(memory.private_memory(method, where), where)
