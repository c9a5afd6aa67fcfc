"""The remaining guard hooks RestrictedPython calls (items, iteration, writes, in-place operators,
``f(**kw)``), the wrapper around every sandboxed function, class creation and the builtins.

Decides: which objects may be written (the sandbox's own, tensors through a proxy), which bases
and class-namespace dunders a sandboxed class may use, which builtins exist. Trusts: the policy."""

from __future__ import annotations

import builtins as _builtins
import contextlib
import enum
import functools
import inspect
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence

from pipewarden.errors import PolicyViolation
from pipewarden.sandbox import tripwire
from pipewarden.sandbox.runtime._common import (
    _CLASS_NS_DUNDERS,
    _FORBIDDEN_VALUE_TYPES,
    _INPLACE_OPS,
    _MISSING,
    _PRINT_LOG,
    _WRITABLE_CONTAINERS,
    _resolve_type_path,
    _tname,
    _violation,
)
from pipewarden.sandbox.runtime.argguards import _install_checked_post_init
from pipewarden.sandbox.runtime.attributes import AttributeRules
from pipewarden.sandbox.runtime.classhooks import check_class_creation, inert_annotations
from pipewarden.sandbox.runtime.facades import TYPE_AS_IS
from pipewarden.sandbox.runtime.filenames import ClassWriter, check_class_namespace, install_file_name_guard
from pipewarden.sandbox.runtime.names import install_name_guards
from pipewarden.sandbox.runtime.objects import (
    ClassRef,
    ClassView,
    DeniedName,
    Facade,
    KeyCheckedClass,
    SandboxLogger,
    _ClassStandIn,
    _is_module_class,
    _KeyCheckedWriter,
    _MetaclassHook,
    _TypeBuiltin,
    _WriteProxy,
)
from pipewarden.sandbox.runtime.ownwrites import writer_for
from pipewarden.sandbox.runtime.snapshots import _READONLY_TYPES, _is_snapshot_type

#: Device types whose autocast state the host's modes include (those this torch knows).
_AUTOCAST_DEVICE_CANDIDATES = ("cpu", "cuda", "xpu", "mps", "hpu", "xla", "ipu", "mtia", "maia")
_autocast_devices: tuple[str, ...] | None = None
#: Inference-mode guards entered to put the host's mode back after sandboxed code broke it (a
#: re-entered ``inference_mode`` object whose first guard was dropped): torch has no setter, only
#: guards, and dropping one would undo it. Only ever filled when sandboxed code changed the mode.
_MODE_GUARDS: list[Any] = []


def _devices(torch: Any) -> tuple[str, ...]:
    global _autocast_devices
    if _autocast_devices is None:
        names = list(_AUTOCAST_DEVICE_CANDIDATES)
        private = getattr(torch._C, "_get_privateuse1_backend_name", None)
        if private is not None:
            names.append(private())
        found = []
        for dev in dict.fromkeys(names):
            try:
                torch.is_autocast_enabled(dev)
                torch.get_autocast_dtype(dev)
            except (RuntimeError, ValueError, TypeError):
                continue
            found.append(dev)
        _autocast_devices = tuple(found)
    return _autocast_devices


def _global_modes() -> Any:
    """The thread's inference, autograd and autocast modes (every device type, and the autocast
    weight cache), as host code left them before sandboxed code ran."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return (
        torch.is_inference_mode_enabled(),
        torch.is_grad_enabled(),
        torch.is_autocast_cache_enabled(),
        tuple((dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)) for dev in _devices(torch)),
    )


def _restore_global_modes(modes: Any) -> None:
    """Back to what the host had when sandboxed code began to run (red team rounds 6 and 7: the
    same ``torch.no_grad()``/``inference_mode()``/``autocast`` object entered twice, an
    ``@autocast`` function that recurses, restore the inner entry's mode on the outer exit and
    leave it switched for the host). Called wherever sandboxed code hands control back to host
    code: the outermost sandboxed call, every step of a sandboxed generator the host drives, the
    module body. A pipeline's own ``with``/decorator modes end with its call, as in plain diffusers."""
    _clear_typing_caches()
    torch = sys.modules.get("torch")
    if torch is None or modes is None:
        return
    inference, grad, cache, autocast = modes
    if torch.is_inference_mode_enabled() != inference:
        guard = torch._C._InferenceMode(inference)
        guard.__enter__()  # sets grad mode too; grad is put back below
        _MODE_GUARDS.append(guard)
    if torch.is_grad_enabled() != grad:
        torch.set_grad_enabled(grad)
    if torch.is_autocast_cache_enabled() != cache:
        torch.set_autocast_cache_enabled(cache)
    for dev, enabled, dtype in autocast:
        if torch.is_autocast_enabled(dev) != enabled:
            torch.set_autocast_enabled(dev, enabled)
        if torch.get_autocast_dtype(dev) != dtype:
            torch.set_autocast_dtype(dev, dtype)


def _clear_typing_caches() -> None:
    """typing memoises ``X[...]`` process-wide, keyed by the parameters: an object of the
    pipeline's whose ``__eq__``/``__hash__`` lie, planted by any door (a subscript, ``alias | obj``),
    would answer the host's later ``typing.List[int]`` (red team round 10). The caches are
    emptied whenever sandboxed code hands control back to host code; they refill on use."""
    typing_module = sys.modules.get("typing")
    for clear in getattr(typing_module, "_cleanups", ()):
        clear()


@contextlib.contextmanager
def host_modes_kept() -> Iterator[None]:
    """Run sandboxed code entered from host code (the module body): the host's modes afterwards
    are what they were before, whatever it did."""
    modes = _global_modes()
    try:
        yield
    finally:
        _restore_global_modes(modes)


def _tname_class(c: type) -> str:
    return f"{getattr(c, '__module__', '?')}.{getattr(c, '__qualname__', '?')}"


class GuardHooks(AttributeRules):
    """Guard hooks, classes and builtins (last layer of :class:`~pipewarden.sandbox.runtime.Sandbox`)."""

    def guarded_getitem(self, obj: Any, key: Any) -> Any:
        t = type(obj)
        if t is Facade or t is DeniedName:
            raise _violation("subscripting a module facade", "item.facade")
        if type(key) is not int and self.array_arguments.is_array_value(t):
            self.array_arguments.check("an array index", key)  # fancy indices are converted to arrays
        if (isinstance(obj, type) or t.__module__ in _TYPING_MODULES) and self._holds_own_instance(key, 0):
            # red team round 10: typing memoises X[...] in a process-wide cache keyed by the
            # parameters; an instance whose __eq__/__hash__ lie answered the host's later
            # typing.List[int] with the pipeline's alias
            raise _violation(
                f"subscripting {_tname(obj)} with an object of the pipeline's own class",
                "item.typing-parameter",
                "type parameters are classes (or literals of builtin types), not the pipeline's objects",
            )
        value = obj[key]
        vt = type(value)
        if vt in _FORBIDDEN_VALUE_TYPES or vt is types.BuiltinFunctionType or (
            isinstance(value, type) and issubclass(value, type)
        ):
            self.check_value(value, f"an item of a {_tname(obj)}")
        if isinstance(value, type):
            value = self.class_as_seen(value)
        elif type(value) in _CLASS_CONTAINERS and type(key) is slice:
            value = self._classes_seen(value, 0)  # parts[:1] of a tuple of classes
        if _is_snapshot_type(value) and t not in _WRITABLE_CONTAINERS and t not in _READONLY_TYPES and not self.owns(obj):
            return self._snapshot(value)  # e.g. a list inside a host FrozenDict config
        return value

    def _holds_own_instance(self, key: Any, depth: int) -> bool:
        if depth > 4:
            return True  # deeper than any type expression: refused
        t = type(key)
        if t is tuple or t is list:
            return any(self._holds_own_instance(k, depth + 1) for k in key)
        return not isinstance(key, type) and self.owns_type(t)

    def guarded_getiter(self, obj: Any) -> Any:
        """``for``, comprehensions, ``iter()`` and unpacking (RestrictedPython's unpack guards
        iterate through here): every element reaching sandboxed code is checked like an attribute
        value, whichever container or iterator it came from."""
        if type(obj) is Facade:
            raise _violation("iterating over a module facade", "iter.facade")
        it = iter(obj)
        if type(obj) in _PLAIN_ITERABLES:
            return it
        return _checked_elements(self, it)

    def guarded_write(self, obj: Any) -> Any:
        t = type(obj)
        if t in _WRITABLE_CONTAINERS:
            return obj
        if t in (Facade, DeniedName, ClassView, ClassRef, KeyCheckedClass) or isinstance(obj, types.ModuleType):
            raise _violation("writing to a module facade", "write.facade", "module attributes are shared host state")
        if self.owns(obj):
            if self._keys_become_attributes(t):
                return _KeyCheckedWriter(obj)
            if isinstance(obj, type):
                return ClassWriter(obj, self.policy)  # its file-name data is checked (filenames.py)
            return obj
        own = writer_for(self, obj)  # built for this load (or a config this pipeline owns)
        if own is not None:
            return own
        tensor_types = self._tensor_types()
        if isinstance(obj, tensor_types):
            return _WriteProxy(obj, self.array_arguments.check, self.policy.tensor_write_attributes)
        if isinstance(obj, _ClassStandIn):  # torch.Tensor, numpy.ndarray (runtime/memory.py)
            obj = object.__getattribute__(obj, "_pw_cls")
        if isinstance(obj, type):
            raise _violation(f"writing to the host class {_tname(obj)}", "write.host-class")
        raise _violation(
            f"writing to a {_tname(obj)} (an object the sandbox did not create)",
            "write.host-object",
            "a pipeline may change its own attributes and objects it created, not host objects",
        )

    _tensor_types_cache: tuple[type, ...] | None = None

    def _tensor_types(self) -> tuple[type, ...]:
        if self._tensor_types_cache is None:
            found: list[type] = []
            for path in ("torch.Tensor", "numpy.ndarray"):
                cls = _resolve_type_path(path)
                if cls is not None:
                    found.append(cls)
            self._tensor_types_cache = tuple(found)
        return self._tensor_types_cache

    def inplacevar(self, op: Any, x: Any, y: Any) -> Any:
        fn = _INPLACE_OPS.get(op) if type(op) is str else None
        if fn is None:
            raise _violation(f"unknown in-place operator {op!r}", "syntax.augassign")
        return self.value_result(fn(x, y))

    def apply(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        # ``f(**mapping)``: a key chosen at run time becomes a keyword; host constructors turn
        # keywords into attributes (SimpleNamespace, PretrainedConfig, FrozenDict), and a
        # ``__array_interface__`` or ``__reduce_ex__`` attribute would be read by numpy or copy.
        for key in kwargs:
            if type(key) is not str or key.startswith("__"):
                raise _violation(f"a call with keyword {key!r}", "call.dunder-keyword")
        # ``f(*host_iterable)``: the elements were never read by sandboxed code (red team round 7:
        # ``chain(*map(typing.get_args, [annotation]))`` handed raw classes to host code)
        checked_args, checked_kwargs = self.checked_arguments(args, kwargs)
        return f(*checked_args, **checked_kwargs)

    def checked_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Arguments host code passes on for sandboxed code, each checked like a call result (a
        class is :meth:`class_as_seen`, a builtin container of classes holds them as seen)."""
        check = self.call_result
        return [check(a) for a in args], {k: check(v) for k, v in kwargs.items()}

    def checked_callable(self, fn: Any) -> Any:
        """A callable that host code will call on the sandbox's behalf (``map``, ``filter``,
        ``sorted(key=)``, ``functools.partial``, ``itertools.starmap``, ``defaultdict``, ...).

        Red team round 7: host higher-order functions composed with each other call what they
        got from other host calls, which sandboxed code never saw (``map(map, chain(*map(
        typing.get_args, ...)), ...)`` constructed a raw tokenizer class from a file path). Every
        such call now goes through the same checks as a call sandboxed code makes: a class is what
        its module's facade makes it (:meth:`class_as_seen`), each argument and the result are
        checked like call results. The sandbox's own functions and methods (their parameters are
        checked by their wrapper) and builtin value types are called as they are."""
        if fn is None:
            return None
        if isinstance(fn, type):
            if fn in self._classes or fn in TYPE_AS_IS:
                return fn
            fn = self.call_result(fn)  # the facade's stand-in or an inert ClassView
        elif type(fn) is types.FunctionType and fn in self._functions:
            return fn
        elif type(fn) is types.MethodType and type(fn.__func__) is types.FunctionType and fn.__func__ in self._functions:
            return fn
        elif type(fn) is _CheckedCall:
            return fn
        return _CheckedCall(self, fn)

    # ------------------------------------------------------------------ classes and functions

    def wrap_function(self, fn: Any) -> Any:
        """Every function the sandbox defines: runs with the tripwire armed, whoever calls it."""
        if not isinstance(fn, types.FunctionType):
            raise _violation("the sandbox function wrapper got a non-function", "internal.wrap")
        annotations = fn.__annotations__
        inert = inert_annotations(annotations)
        if inert is not annotations:
            fn.__annotations__ = inert  # host code evaluates str annotations (get_type_hints)
        armed_var = tripwire.ARMED
        suspended_var = tripwire._SUSPENDED
        check_arguments = self._check_parameters
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                args, kwargs = check_arguments(args, kwargs)
                gen = fn(*args, **kwargs)
                to_send: Any = None
                while True:
                    # each step is entered from whoever resumes the generator: from host code (the
                    # host drives the stream), the host's modes are put back when the step ends
                    modes = None if armed_var.get() else _global_modes()
                    t1 = armed_var.set(True)
                    t2 = suspended_var.set(False)
                    try:
                        value = gen.send(to_send)
                    except StopIteration as stop:
                        return stop.value
                    finally:
                        suspended_var.reset(t2)
                        armed_var.reset(t1)
                        if modes is not None:
                            _restore_global_modes(modes)
                    try:
                        to_send = yield value
                    except GeneratorExit:
                        # the host closes or drops the stream: the pipeline's finally blocks run now,
                        # armed (by code origin, and here), and a refusal there reaches the closer
                        modes = None if armed_var.get() else _global_modes()
                        t1 = armed_var.set(True)
                        t2 = suspended_var.set(False)
                        try:
                            gen.close()
                        finally:
                            suspended_var.reset(t2)
                            armed_var.reset(t1)
                            if modes is not None:
                                _restore_global_modes(modes)
                        raise

            self._functions.add(gen_wrapper)
            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = check_arguments(args, kwargs)
            outermost = not armed_var.get()
            modes = _global_modes() if outermost else None
            t1 = armed_var.set(True)
            t2 = suspended_var.set(False)
            try:
                return fn(*args, **kwargs)
            finally:
                suspended_var.reset(t2)
                armed_var.reset(t1)
                if modes is not None:
                    _restore_global_modes(modes)

        self._functions.add(wrapper)
        return wrapper

    def _check_parameters(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Parameters of a sandboxed function, whoever calls it (host callbacks, key= functions,
        hooks, the host calling a pipeline method): checked like attribute values (provenance
        travels with values: a module, frame, code object, raw builtin or metaclass never becomes
        a sandbox variable through a parameter)."""
        classes = False
        for value in args:
            t = type(value)
            if t in _FORBIDDEN_VALUE_TYPES or t is types.BuiltinFunctionType or (
                isinstance(value, type) and issubclass(value, type)
            ):
                self.check_value(value, "a parameter of a sandboxed function")
            classes = classes or isinstance(value, type)
        for value in kwargs.values():
            t = type(value)
            if t in _FORBIDDEN_VALUE_TYPES or t is types.BuiltinFunctionType or (
                isinstance(value, type) and issubclass(value, type)
            ):
                self.check_value(value, "a parameter of a sandboxed function")
            classes = classes or isinstance(value, type)
        if not classes:
            return args, kwargs
        # a class the host passes in is what the sandbox would see of it anyway (class_as_seen)
        seen = self.class_as_seen
        return (
            tuple(seen(v) if isinstance(v, type) else v for v in args),
            {k: seen(v) if isinstance(v, type) else v for k, v in kwargs.items()},
        )

    def class_of(self, obj: Any) -> Any:
        t = type(obj)
        if t in self._classes:
            return t
        if t is Facade:
            raise _violation("__class__ of a module facade", "attribute.dunder-class")
        return ClassView(t)

    def call_result(self, value: Any) -> Any:
        """What a call returns to sandboxed code, checked like an attribute value; a builtin
        container holding classes (``typing.get_args`` of an ``X | Y`` annotation) is returned
        with each class as :meth:`class_as_seen` makes it."""
        t = type(value)
        if t in _FORBIDDEN_VALUE_TYPES or t is types.BuiltinFunctionType:
            self.check_value(value, "the result of a call")
        elif isinstance(value, type):
            self.check_value(value, "the result of a call")  # a metaclass is refused
            return self.class_as_seen(value)
        elif t in _CLASS_CONTAINERS:
            return self._classes_seen(value, 0)
        return value

    def value_result(self, value: Any) -> Any:
        """What host code computed for sandboxed code without a call expression (an operator's
        ``__add__``/``__neg__``/``__eq__``, what a generator's resumer sends, a caught exception):
        checked like an attribute value, a class is :meth:`class_as_seen`. Containers are not
        walked: their elements are checked where they are read (red team round 9)."""
        t = type(value)
        if t in _FORBIDDEN_VALUE_TYPES or t is types.BuiltinFunctionType:
            self.check_value(value, "the value of an operator or a resumed generator")
        elif isinstance(value, type):
            self.check_value(value, "the value of an operator or a resumed generator")
            return self.class_as_seen(value)
        return value

    def enter(self, manager: Any) -> Any:
        """``with manager as target``: the target gets ``manager.__enter__()`` checked like a call
        result (red team round 9: ``contextlib.contextmanager(itertools.islice)(values, i, i + 1)``
        made ``__enter__`` hand out any element of a host iterable raw)."""
        return _CheckedEnter(self, manager)

    def _classes_seen(self, value: Any, depth: int) -> Any:
        t = type(value)
        if isinstance(value, type):
            self.check_value(value, "a class inside a container")
            return self.class_as_seen(value)
        if t not in _CLASS_CONTAINERS or depth > 8:
            return value
        if t is dict:
            if not any(isinstance(v, type) or type(v) in _CLASS_CONTAINERS for v in value.values()):
                return value
            return {k: self._classes_seen(v, depth + 1) for k, v in value.items()}
        if not any(isinstance(v, type) or type(v) in _CLASS_CONTAINERS for v in value):
            return value
        return t(self._classes_seen(v, depth + 1) for v in value)

    def decorate(self, deco: Any) -> Any:
        """A decorator's application (``@d``): its result is checked like a call result."""
        check = self.call_result

        def apply(fn: Any) -> Any:
            return check(deco(fn))

        return apply

    def type_of(self, obj: Any) -> Any:
        """One-argument ``type(x)``: :meth:`class_as_seen` of its class (so ``type(a) is type(b)``
        holds, and a host class is no more than its module's facade makes it)."""
        return self.class_as_seen(type(obj))

    def bind(self, fn: Any) -> Callable[..., Any]:
        if fn not in self._functions:
            raise _violation("__get__ of an object that is not a sandboxed function", "attribute.dunder-get")

        def binder(obj: Any, owner: Any = None) -> Any:
            if obj is None:
                return fn
            return types.MethodType(fn, obj)

        return binder

    def _check_host_protocols(self, name: str, base: type) -> None:
        """A host class whose protocol methods hand the object to native code or change
        process-wide state must not be subclassed: its host method would run with host powers on
        what the subclass overrides (PIL's ``__array_interface__`` takes its data pointer from
        ``tobytes()``; ``torch.no_grad.__enter__`` switches grad mode off and a sandbox ``__exit__``
        never restores it). Refused: a base whose host classes define a protocol listed in the
        policy's ``[bases] refused_protocols`` (``class.host-protocol``)."""
        for c in base.__mro__:
            if c is object or c in self._classes:
                continue
            names = self.policy.base_protocols.intersection(vars(c))
            if names:
                raise _violation(
                    f"class {name} derives from {_tname_class(c)}, which defines {', '.join(sorted(names))} "
                    "(host code that hands the object to native code or changes process-wide state)",
                    "class.host-protocol",
                    "use the host class as it is (an instance, a `with` block) instead of subclassing it",
                )

    def _check_bases(self, name: str, bases: tuple[Any, ...]) -> type:
        """Refuse dangerous bases; return the most derived metaclass."""
        for base in bases:
            if not isinstance(base, type):
                raise _violation(f"class {name} has a base that is not a class ({_tname(base)})", "class.bases")
            if issubclass(base, type):
                raise _violation(f"class {name} derives from a metaclass", "class.metaclass")
            if issubclass(base, (str, bytes, Facade, DeniedName, ClassView, ClassRef, SandboxLogger, types.ModuleType)):
                raise _violation(f"class {name} derives from {_tname(base)}", "class.bases")
            if base.__module__ == "builtins" and base not in self.resolved.builtin_bases and not (
                issubclass(base, BaseException)
            ):
                raise _violation(f"class {name} derives from the builtin {base.__name__}", "class.bases")
            self._check_host_protocols(name, base)
            seen = self.class_as_seen(base)
            if seen is not base and isinstance(seen, ClassRef):
                # a host class the facades hand out only as a no-construct reference (its
                # constructor reads files), however the class statement got hold of it
                raise _violation(
                    f"class {name} derives from {_tname_class(base)}, which the sandbox may not construct or subclass",
                    "class.bases",
                )
            if issubclass(base, BaseException) and not issubclass(base, Exception):
                raise _violation(
                    f"class {name} derives from {base.__name__} (it would escape the host's `except Exception`)",
                    "class.bases",
                )
        meta: type = type
        for base in bases:
            bt = type(base)
            if issubclass(bt, meta):
                meta = bt
            elif not issubclass(meta, bt):
                raise TypeError("metaclass conflict")
        return meta

    def prepare_class(self, name: Any, bases: Any, **kwds: Any) -> Any:
        """``__metaclass__.__prepare__``: the real metaclass's namespace (Enum needs its own)."""
        if type(name) is not str or type(bases) is not tuple:
            raise _violation("a class statement with an invalid name or bases", "class.name")
        meta = self._check_bases(name, bases)
        return meta.__prepare__(name, bases, **kwds)  # armed, like the class creation itself

    def build_class(self, name: Any, bases: Any, ns: Any, **kwds: Any) -> type:
        """``__metaclass__``: create a class the sandbox defines (checked namespace and bases)."""
        if type(name) is not str or not name.isidentifier():
            raise _violation("a class with an invalid name", "class.name")
        if type(bases) is not tuple:
            raise _violation("class bases must be a tuple", "class.bases")
        if not isinstance(ns, dict):
            raise _violation("a class namespace that is not a dict", "class.namespace")
        for key in list(ns):
            if type(key) is not str:
                raise _violation("a class attribute with a non-string name", "class.namespace")
            if key.startswith("__") and key.endswith("__"):
                if (
                    key not in _CLASS_NS_DUNDERS
                    and key not in self.policy.allowed_def_names
                    and key not in self.policy.bindable_dunder_names
                ):
                    raise _violation(f"class {name} defines {key}", "class.dunder")
        meta = self._check_bases(name, bases)
        for kw in kwds:
            if type(kw) is not str or kw.startswith("_"):
                raise _violation(f"class {name} passes keyword {kw!r}", "class.keywords")
        # Created armed (the class statement's sandboxed frame is below): host hooks that type.__new__
        # runs (__init_subclass__, __set_name__, Enum mixins) are reviewed first (runtime/classhooks.py).
        check_class_creation(name, bases, ns, self.owns_type, self.resolved.class_hooks)
        check_class_namespace(self.policy, name, ns)  # file names host save code uses (filenames.py)
        if "__annotations__" in ns:
            ns["__annotations__"] = inert_annotations(ns["__annotations__"])
        cls = meta(name, bases, ns, **kwds)
        if self._keys_become_attributes(cls):
            if not self._key_class_subclassable(cls):
                raise _violation(f"class {name} derives from a class that turns keys into attributes", "class.bases")
            if isinstance(cls, enum.EnumMeta) and not cls.__members__:
                raise _violation(
                    f"enum {name} has no members (its functional API would set arbitrary class attributes)",
                    "class.enum-without-members",
                )
            if not isinstance(cls, enum.EnumMeta) and not _is_module_class(cls):
                _install_checked_post_init(cls)
        if not isinstance(cls, enum.EnumMeta):
            install_name_guards(cls, self.policy.instance_dunders)  # host __getattribute__/__setattr__: names checked on what is stored
            install_file_name_guard(self.policy, cls)  # after: it calls the guard installed above
        self._classes.add(cls)
        self._owned_type_cache.clear()
        self._decisions.clear()
        return cls

    # ------------------------------------------------------------------ builtins

    def make_builtins(self) -> dict[str, Any]:
        box = self
        policy = self.policy

        def guarded_getattr_builtin(obj: Any, name: Any, default: Any = _MISSING) -> Any:
            if default is _MISSING:
                return box.guarded_getattr(obj, name)
            try:
                return box.guarded_getattr(obj, name)
            except AttributeError:
                return default

        def guarded_hasattr(obj: Any, name: Any) -> bool:
            # Probing for a capability refused on every object (hooks, save_*, ...) is a refusal;
            # an attribute that is missing or merely not allowlisted reads as absent.
            try:
                box.guarded_getattr(obj, name)
            except AttributeError:
                return False
            except PolicyViolation as exc:
                if exc.rule in ("attribute.denied", "attribute.name-type"):
                    raise
                return False
            return True

        def guarded_setattr(obj: Any, name: Any, value: Any) -> None:
            if type(name) is not str or not name.isidentifier():
                raise _violation("setattr with a non-identifier name", "attribute.name-type")
            if name.startswith("__") or (name.startswith("_") and name.endswith("_")):
                raise _violation(f"setattr of {name!r}", "attribute.dunder-write")
            setattr(box.guarded_write(obj), name, value)

        def guarded_iter(obj: Any, *sentinel: Any) -> Any:
            if sentinel:
                return iter(box.checked_callable(obj), *sentinel)
            return box.guarded_getiter(obj)

        def bounded_range(*args: Any) -> range:
            r = range(*args)
            try:
                n = len(r)
            except OverflowError:
                n = policy.max_range + 1
            if n > policy.max_range:
                raise _violation(f"range of {n} elements", "builtins.range-bound")
            return r

        def sandbox_print(*args: Any, sep: Any = " ", end: Any = "\n", **_ignored: Any) -> None:
            _PRINT_LOG.info("%s", str(sep).join(str(a) for a in args))

        def sandbox_format(value: Any, spec: Any = "") -> str:
            return format(value, str(spec))

        checked = box.checked_callable

        def checked_map(fn: Any, *iterables: Any) -> Any:
            return map(checked(fn), *iterables)

        def checked_filter(fn: Any, iterable: Any) -> Any:
            return filter(checked(fn), iterable)

        def checked_sorted(iterable: Any, /, *, key: Any = None, reverse: Any = False) -> Any:
            return sorted(iterable, key=checked(key), reverse=reverse)

        def checked_min(*args: Any, key: Any = None, **kwargs: Any) -> Any:
            return min(*args, key=checked(key), **kwargs)

        def checked_max(*args: Any, key: Any = None, **kwargs: Any) -> Any:
            return max(*args, key=checked(key), **kwargs)

        impl: dict[str, Any] = {
            "map": checked_map,
            "filter": checked_filter,
            "sorted": checked_sorted,
            "min": checked_min,
            "max": checked_max,
            "type": _TypeBuiltin(box),
            "getattr": guarded_getattr_builtin,
            "hasattr": guarded_hasattr,
            "setattr": guarded_setattr,
            "iter": guarded_iter,
            "range": bounded_range,
            "print": sandbox_print,
            "format": sandbox_format,
        }
        result: dict[str, Any] = {}
        for name in policy.builtin_names:
            if name in impl:
                result[name] = impl[name]
            elif hasattr(_builtins, name):
                result[name] = getattr(_builtins, name)
        for name in policy.refused_builtins:
            if name not in result:
                result[name] = DeniedName(f"builtins.{name}", rule="builtins.refused")
        result["__build_class__"] = _builtins.__build_class__
        result["__import__"] = self.guarded_import
        return result

    def make_globals(self) -> dict[str, Any]:
        from pipewarden.sandbox.compile import (
            BIND_NAME,
            CALL_RESULT_NAME,
            CLASS_OF_NAME,
            DECORATE_NAME,
            ENTER_NAME,
            FUNCTION_WRAPPER_NAME,
            VALUE_NAME,
        )

        return {
            "__builtins__": self.make_builtins(),
            "__name__": self.module_name,
            "__doc__": None,
            "__metaclass__": _MetaclassHook(self),
            "_getattr_": self.guarded_getattr,
            "_getitem_": self.guarded_getitem,
            "_getiter_": self.guarded_getiter,
            "_write_": self.guarded_write,
            "_unpack_sequence_": guarded_unpack_sequence,
            "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
            "_inplacevar_": self.inplacevar,
            "_apply_": self.apply,
            FUNCTION_WRAPPER_NAME: self.wrap_function,
            CLASS_OF_NAME: self.class_of,
            BIND_NAME: self.bind,
            CALL_RESULT_NAME: self.call_result,
            DECORATE_NAME: self.decorate,
            ENTER_NAME: self.enter,
            VALUE_NAME: self.value_result,
        }


class _CheckedCall:
    """A host callable as host code calls it for sandboxed code (``GuardHooks.checked_callable``):
    arguments and result pass the sandbox's call checks. Not a function: no attributes of the
    wrapped object are reachable through it."""

    __slots__ = ("_pw_box", "_pw_fn")

    def __init__(self, box: Any, fn: Any) -> None:
        self._pw_box = box
        self._pw_fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        box = self._pw_box
        checked_args, checked_kwargs = box.checked_arguments(args, kwargs)
        return box.call_result(self._pw_fn(*checked_args, **checked_kwargs))


class _CheckedEnter:
    """A context manager as ``with ... as`` enters it for sandboxed code: the same ``__enter__``
    and ``__exit__`` (looked up on its type, in the order the ``with`` statement does), the value
    ``__enter__`` returns checked like a call result."""

    __slots__ = ("_pw_box", "_pw_enter", "_pw_exit", "_pw_manager")

    def __init__(self, box: Any, manager: Any) -> None:
        kind = type(manager)
        try:
            enter = kind.__enter__
            leave = kind.__exit__
        except AttributeError:
            raise TypeError(
                f"{kind.__name__!r} object does not support the context manager protocol"
            ) from None
        self._pw_box = box
        self._pw_manager = manager
        self._pw_enter = enter
        self._pw_exit = leave

    def __enter__(self) -> Any:
        return self._pw_box.call_result(self._pw_enter(self._pw_manager))

    def __exit__(self, kind: Any, value: Any, tb: Any) -> Any:
        return self._pw_exit(self._pw_manager, kind, value, tb)


#: Modules of typing forms (``typing.List``, ``list[int]``, ``int | None``): subscripts memoised
#: process-wide by typing.
_TYPING_MODULES: frozenset[str] = frozenset({"typing", "typing_extensions", "types"})

#: Builtin containers whose classes are mapped through class_as_seen (call results, slices).
_CLASS_CONTAINERS: frozenset[type] = frozenset({tuple, list, set, frozenset, dict})

#: Iterables whose elements are plain values by construction.
_PLAIN_ITERABLES: frozenset[type] = frozenset({range, str, bytes, bytearray})


def _checked_elements(box: Any, it: Any) -> Any:
    check = box.check_value
    for value in it:
        t = type(value)
        if t in _FORBIDDEN_VALUE_TYPES or t is types.BuiltinFunctionType or (
            isinstance(value, type) and issubclass(value, type)
        ):
            check(value, "an element reached by iteration")
        if isinstance(value, type):
            value = box.class_as_seen(value)
        yield value
