"""The audit-hook tripwire: a second net under the guards.

Decides: while sandboxed code runs, the audit events in the policy's
``[tripwire]`` table -- writes through ``open``, sockets, subprocesses, ``os.system``/``exec*``/
``fork``, ``ctypes``, compile/exec of new source, imports outside the allowlist, frame and gc
introspection -- raise a fresh ``PolicyViolation`` instead of happening.

"While sandboxed code runs" is decided by CODE ORIGIN: every code object compiled from a pipeline is
registered (:func:`register_code`), and an event is refused whenever a frame running such code is
on the stack -- whoever called it: a generator finaliser run when the host drops a stream, a
generator expression the host advances, a ``key=`` function or a hook the host invokes. Besides,
a context variable arms a block explicitly (:func:`armed`, per thread and asyncio task), and a
worker arms the whole process for good (:func:`arm_process_wide`).

Trusted host code that must legitimately compile code for the sandbox (``dataclass``,
``namedtuple``, class creation, lazy library imports) runs inside :func:`suspended`. A suspension
is anchored to the frame that entered it: it covers the host frames above that frame only, never
a sandboxed frame (nor host code a sandboxed frame called) above it, and a suspension entered by a
sandboxed frame suspends nothing. So the switch is harmless even if sandboxed code could reach it.

The hook is installed once per process (``sys.addaudithook`` cannot be undone). For events the
policy never refuses it returns after one set lookup; for the others it walks the stack once.

Trusts: the policy's tripwire table.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

from pipewarden.errors import PolicyViolation
from pipewarden.sandbox.policy import TripwireRule, default_policy

__all__ = [
    "install",
    "register_code",
    "armed",
    "suspended",
    "permit_exec",
    "arm_process_wide",
    "is_armed",
    "ARMED",
]

#: True while sandboxed frames run in this context.
ARMED: contextvars.ContextVar[bool] = contextvars.ContextVar("pipewarden_tripwire_armed", default=False)
#: The frame that entered the current suspension (falsy: not suspended).
_SUSPENDED: contextvars.ContextVar[Any] = contextvars.ContextVar("pipewarden_tripwire_suspended", default=False)
#: Every code object compiled from a pipeline (module, classes, functions, lambdas, comprehensions,
#: generator expressions): a frame running one arms the tripwire.
_SANDBOX_CODE: set[types.CodeType] = set()
_PERMITTED_CODE: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "pipewarden_tripwire_permitted_code", default=None
)

_install_lock = threading.Lock()
_installed = False
_process_wide = False
_rule: TripwireRule | None = None
_stdlib: frozenset[str] = frozenset(getattr(sys, "stdlib_module_names", ()))
_extra_import_tops: set[str] = set()

_WRITE_FLAGS = 0
try:
    import os as _os

    _WRITE_FLAGS = _os.O_WRONLY | _os.O_RDWR | _os.O_APPEND | _os.O_CREAT | _os.O_TRUNC
except Exception:  # pragma: no cover
    pass


def register_code(code: types.CodeType) -> None:
    """Register a pipeline's compiled module and every code object nested in it."""
    todo = [code]
    while todo:
        c = todo.pop()
        if c in _SANDBOX_CODE:
            continue
        _SANDBOX_CODE.add(c)
        todo.extend(k for k in c.co_consts if isinstance(k, types.CodeType))


def _armed_at(frame: Any) -> bool:
    """Armed for code running in ``frame``: a sandboxed frame on the stack above the current
    suspension point arms; reaching the suspension point disarms; else the explicit arming."""
    suspended_at = _SUSPENDED.get()
    codes = _SANDBOX_CODE
    f = frame
    while f is not None:
        if f.f_code in codes:
            return True
        if f is suspended_at:
            return False
        f = f.f_back
    if suspended_at:
        # A suspension entered on another thread's stack and carried here in a copied context
        # (trusted host code handing work to a thread): no sandboxed frame on this stack.
        return False
    return _process_wide or ARMED.get()


def is_armed() -> bool:
    return _armed_at(sys._getframe(1))


def _library_roots() -> tuple[str, ...]:
    import sysconfig

    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            path = sysconfig.get_paths()[key]
        except KeyError:  # pragma: no cover
            continue
        roots.add(_os.path.realpath(path) + _os.sep)
    for entry in sys.path:
        if entry and ("site-packages" in entry or "dist-packages" in entry):
            roots.add(_os.path.realpath(entry) + _os.sep)
    return tuple(sorted(roots))


_LIB_ROOTS: tuple[str, ...] = ()


def _fspath(path: object) -> str | None:
    try:
        value = _os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _under_library_roots(path: object) -> bool:
    global _LIB_ROOTS
    text = _fspath(path)
    if text is None:
        return False
    if not _LIB_ROOTS:
        _LIB_ROOTS = _library_roots()
    real = _os.path.realpath(text)
    return (real + _os.sep).startswith(_LIB_ROOTS) or real.startswith(_LIB_ROOTS)


def _readable(path: object, rule: TripwireRule) -> bool:
    """Inside the installed libraries, or under the policy's ``[tripwire] readable_paths``."""
    text = _fspath(path)
    if text is None:
        return False
    real = _os.path.realpath(text)
    return real.startswith(rule.readable_paths) or _under_library_roots(real)


def _linecache_frame_code() -> Any:
    import linecache

    return linecache.updatecache.__code__


_LINECACHE_CODE = _linecache_frame_code()


def _source_of_running_code(path: object, frame: Any) -> bool:
    """``linecache`` reading the source file of code running on this stack, for a traceback or a
    warning that host code formats (``torch.manual_seed`` stores ``traceback.format_stack()`` for
    CUDA's lazy seeding, even on a CPU-only machine). The file is named by a frame's code object --
    host code (the caller's script, pipewarden, a library) or the vetted module, whose name the
    sandbox cannot choose -- and the lines go into ``linecache``, which the sandbox cannot reach.
    Any other file, or a read by anything but ``linecache``, is still refused."""
    text = _fspath(path)
    if text is None:
        return False
    f = frame
    while f is not None and f.f_code is not _LINECACHE_CODE:
        f = f.f_back
    if f is None:
        return False
    real = _os.path.realpath(text)
    f = frame
    while f is not None:
        name = f.f_code.co_filename
        if name == text:
            return True
        if _os.path.isabs(name):
            if _os.path.realpath(name) == real:
                return True
        elif name and not name.startswith("<") and real.endswith(_os.sep + name.lstrip("./")):
            return True  # linecache found a relative name on a sys.path entry
        f = f.f_back
    return False


def _in_pycache(path: object) -> bool:
    text = _fspath(path)
    return text is not None and f"{_os.sep}__pycache__{_os.sep}" in text and _under_library_roots(text)


def _is_installed_library_file(filename: object) -> bool:
    """Code read from an installed library file (an import), not source made up at run time."""
    global _LIB_ROOTS
    if not isinstance(filename, str) or not filename.endswith(".py") or not _os.path.isabs(filename):
        return False
    if not _LIB_ROOTS:
        _LIB_ROOTS = _library_roots()
    real = _os.path.realpath(filename)
    return real.startswith(_LIB_ROOTS)


def _refuse(event: str, detail: str) -> PolicyViolation:
    return PolicyViolation(
        f"sandboxed code triggered {detail}",
        rule=f"tripwire.{event}",
        fix="pipelines may not touch files, processes, the network or the interpreter",
    )


def _open_is_write(args: tuple[Any, ...]) -> bool:
    mode = args[1] if len(args) > 1 else None
    flags = args[2] if len(args) > 2 else 0
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    if isinstance(flags, int) and flags & _WRITE_FLAGS:
        return True
    return False


#: Events the hook looks at besides the policy's own list and prefixes.
_CHECKED_EVENTS = frozenset(
    {"open", "os.listdir", "os.scandir", "os.rename", "os.replace", "import", "exec", "compile"}
)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    rule = _rule
    if rule is None:  # pragma: no cover - set before install
        return
    if event not in _CHECKED_EVENTS and event not in rule.events and not event.startswith(rule.event_prefixes):
        return  # never refused (sys._getframe, builtins.id, object.__setattr__, ...): no stack walk
    if not _armed_at(sys._getframe(1)):
        return
    if event == "open":
        path = args[0] if args else None
        if _open_is_write(args):
            if _in_pycache(path):
                return  # the import system caching bytecode of an installed library
            raise _refuse("open-write", f"opening {path!r} for writing") from None
        if isinstance(path, int) or _readable(path, rule) or _source_of_running_code(path, sys._getframe(1)):
            return
        raise _refuse("open-read", f"opening {path!r} for reading (outside the installed libraries)") from None
    if event in ("os.listdir", "os.scandir"):
        # the import system lists library directories when it looks for a module
        if args and _under_library_roots(args[0]):
            return
        raise _refuse(event, f"listing {args[0] if args else '.'!r}") from None
    if event in ("os.rename", "os.replace") and args and _in_pycache(args[0]) and _in_pycache(args[1]):
        return
    if event == "import":
        name = args[0] if args else ""
        top = str(name).split(".")[0]
        if top in rule.deny_imports:
            raise _refuse("import", f"an import of {name!r}") from None
        if top in rule.host_import_top_levels or top in _extra_import_tops:
            return
        if top in _stdlib:
            return
        raise _refuse("import", f"an import of {name!r} (not on the allowlist)") from None
    if event == "exec":
        permitted = _PERMITTED_CODE.get()
        code = args[0] if args else None
        if permitted is not None and code is permitted:
            return
        # Host libraries importing their own modules lazily: module code read from an installed file.
        if getattr(code, "co_name", None) == "<module>" and _is_installed_library_file(
            getattr(code, "co_filename", None)
        ):
            return
        raise _refuse("exec", "exec of a code object") from None
    if event == "compile":
        # (source, filename): an import compiling an installed .py without a cached .pyc is fine.
        if len(args) > 1 and _is_installed_library_file(args[1]):
            return
        raise _refuse("compile", "compilation of new source") from None
    if event in rule.events or event.startswith(rule.event_prefixes):
        raise _refuse(event, f"the audited operation {event!r}") from None


def install(policy_rule: TripwireRule | None = None, extra_import_tops: frozenset[str] | None = None) -> None:
    """Install the audit hook once per process (idempotent)."""
    global _installed, _rule
    if extra_import_tops:
        _extra_import_tops.update(extra_import_tops)
    if _installed:
        return
    with _install_lock:
        if _installed:
            return
        _rule = policy_rule or default_policy().tripwire
        sys.addaudithook(_hook)
        _installed = True


@contextlib.contextmanager
def armed() -> Iterator[None]:
    """Arm the tripwire in the current context for the duration of the block."""
    install()
    token = ARMED.set(True)
    token2 = _SUSPENDED.set(False)
    try:
        yield
    finally:
        _SUSPENDED.reset(token2)
        ARMED.reset(token)


class suspended:  # noqa: N801 - used as ``with tripwire.suspended():``
    """Disarm for the host frames above the one entering the block (trusted host code only).

    Used around host functions that must compile code (``dataclass``, ``namedtuple``), around class
    creation by host metaclasses and around facade attribute resolution (lazy library imports).
    Anchored to the entering frame: a sandboxed frame above it (a callback, a generator, a key
    function) re-arms whoever called it, and a suspension entered by a sandboxed frame does nothing.
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _SUSPENDED.set(sys._getframe(1))

    def __exit__(self, *exc: object) -> None:
        _SUSPENDED.reset(self._token)


@contextlib.contextmanager
def permit_exec(code: object) -> Iterator[None]:
    """Let exactly this code object pass the ``exec`` event (the sandbox's own module exec)."""
    token = _PERMITTED_CODE.set(code)
    try:
        yield
    finally:
        _PERMITTED_CODE.reset(token)


def arm_process_wide() -> None:
    """Arm the tripwire for every thread and context of this process, for good.

    For the isolation worker: call it after the worker has imported what it needs and before it
    reads untrusted bytes. Irreversible by design.
    """
    global _process_wide
    install()
    _process_wide = True
