"""Escape-suite harness: a hostile world with detectors, and runners for one payload.

What it decides: whether running one payload left a side effect on the host. What it trusts:
nothing the payload returns or raises (both are only read as text, never called).

The world (built once per session) holds
  * a canary directory every write payload aims at (emptied before each run, must stay empty),
  * a loopback TCP listener every network payload aims at (no accepted connection allowed),
  * three secrets: one in ``os.environ``, one in this module's globals (``HOST_SECRET``), one in a
    file outside the canary; none may appear in a result, an exception or captured output,
  * evil artifacts (a pickle, an object-array .npy, a hubconf.py, a remote ``pipeline.py``, a
    shared object with a constructor, a TorchScript file) that touch the canary when loaded.

Detectors compare host state before and after a run: module and class dictionaries (identity of
every value), ``builtins``, ``sys`` hooks and paths, ``os.environ``, cwd, signal handlers, torch
global flags and modes (grad, inference, autocast), ``warnings.filters``, logging handlers, threads,
child processes, the contents of list/dict class attributes, the bytes of a host str constant (raw
memory writes), the components' configs and every UNet submodule's attributes and hooks. ``Observation``
lists every violation as text; an empty list means no side effect was seen.

Runners (``observe(world, source, mode)``): ``plain`` (unsandboxed ``exec``: used only by the
self-tests, to prove the detectors and the payloads are live), ``inprocess``
(``pipewarden.sandbox.load_class`` + construct + call), ``api``
(``pipewarden.load_pipeline(..., isolation="inprocess")`` with our own components) and ``process``
(``pipewarden.load_pipeline(..., isolation="process")``). A generator returned by ``__call__`` is
advanced once, as a user consuming a stream would.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import pickle
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

SECRET_ENV = "PIPEWARDEN_TEST_SECRET"
#: A secret held in a host-module global; payloads hunt for it through frames and the GC.
HOST_SECRET = "pwsecret-host-" + secrets.token_hex(12)
ENV_SECRET = os.environ.get(SECRET_ENV) or ("pwsecret-env-" + secrets.token_hex(12))
FILE_SECRET = "pwsecret-file-" + secrets.token_hex(12)
# Set as early as possible (module import = pytest collection), so that a fork server started
# later by process isolation inherits it unless it scrubs the environment.
os.environ[SECRET_ENV] = ENV_SECRET

SECRETS = (HOST_SECRET, ENV_SECRET, FILE_SECRET)
#: The in-process API warns (InProcessIsolationWarning) on behalf of this module's caller frame:
#: the registry exists up front so the expected warning is not mistaken for a new module global.
__warningregistry__: dict[Any, Any] = {}

EVIL_MODULE_SOURCE = """\
import os
open(os.path.join({canary!r}, "evil_remote_module_imported"), "w").close()

from diffusers import DiffusionPipeline


class EvilRemotePipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
"""

EVIL_HUBCONF_SOURCE = """\
import os
open(os.path.join({canary!r}, "evil_hubconf_imported"), "w").close()


def evil():
    return 1
"""

EVIL_SO_SOURCE = r"""
#include <stdio.h>
__attribute__((constructor)) static void pw_evil_ctor(void) {
    FILE *f = fopen("%s/evil_shared_object_loaded", "w");
    if (f) fclose(f);
}
"""


class _Mkdir:
    """Pickles to ``os.mkdir(path)``: proves a pickle load ran attacker-chosen code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@dataclasses.dataclass
class World:
    root: Path
    canary: Path
    secret_file: Path
    evil_dir: Path
    weights: Path
    listener: socket.socket
    port: int
    have_shared_object: bool
    substitutions: dict[str, str]
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    accepted: list[int] = dataclasses.field(default_factory=lambda: [0])
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    threads: list[threading.Thread] = dataclasses.field(default_factory=list)

    def render(self, template: str) -> str:
        out = template
        for key, value in self.substitutions.items():
            out = out.replace(key, value)
        if "@" in out:
            for key in ("@CANARY@", "@PORT@", "@SECRET"):
                assert key not in out, f"unrendered placeholder in payload: {key}"
        return out

    def clear_canary(self) -> None:
        for entry in self.canary.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def canary_entries(self) -> list[str]:
        return sorted(str(p.relative_to(self.canary)) for p in self.canary.rglob("*"))

    def drain_connections(self) -> int:
        """How many connections reached the listener since the last call (accepted, then closed)."""
        count = _accept_pending(self.listener)
        with self.lock:
            count += self.accepted[0]
            self.accepted[0] = 0
        return count

    def start_acceptor(self) -> None:
        """Accept and close connections in a thread, so a client hoping for a reply fails fast."""
        thread = threading.Thread(target=self._accept_loop, name="escape-suite-listener", daemon=True)
        thread.start()
        self.threads.append(thread)

    def _accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                ready, _, _ = select.select([self.listener], [], [], 0.1)
            except (OSError, ValueError):
                return
            if ready:
                got = _accept_pending(self.listener)
                with self.lock:
                    self.accepted[0] += got

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=2)
        self.listener.close()


def _accept_pending(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return count
        except OSError:
            return count
        conn.close()
        count += 1


def build_world(root: Path, weights: Path) -> World:
    """Create the canary, secrets, listener and evil artifacts under ``root``."""
    root = Path(root)
    canary = root / "canary"
    canary.mkdir(parents=True, exist_ok=True)
    secret_dir = root / "secret"
    secret_dir.mkdir(exist_ok=True)
    secret_file = secret_dir / "secret.txt"
    secret_file.write_text(FILE_SECRET, encoding="ascii")
    evil = root / "evil"
    evil.mkdir(exist_ok=True)
    (evil / "pipeline.py").write_text(EVIL_MODULE_SOURCE.format(canary=str(canary)), encoding="utf-8")
    (evil / "hubconf.py").write_text(EVIL_HUBCONF_SOURCE.format(canary=str(canary)), encoding="utf-8")
    (evil / "evil.pkl").write_bytes(pickle.dumps(_Mkdir(str(canary / "evil_pickle_file_loaded"))))
    pickle_hex = pickle.dumps(_Mkdir(str(canary / "evil_pickle_bytes_loaded"))).hex()

    import numpy as np

    arr = np.empty(1, dtype=object)
    arr[0] = _Mkdir(str(canary / "evil_npy_loaded"))
    np.save(evil / "evil.npy", arr, allow_pickle=True)

    have_so = False
    gcc = shutil.which("gcc") or shutil.which("cc")
    so_path = evil / "evil.so"
    if gcc:
        c_file = evil / "evil.c"
        c_file.write_text(EVIL_SO_SOURCE % str(canary), encoding="ascii")
        proc = subprocess.run(
            [gcc, "-shared", "-fPIC", "-o", str(so_path), str(c_file)], capture_output=True, timeout=60
        )
        have_so = proc.returncode == 0
    if not have_so:
        so_path.write_bytes(b"not an ELF file")

    import torch

    class _Tiny(torch.nn.Module):
        def forward(self, x):
            return x + 1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still loadable
        torch.jit.save(torch.jit.script(_Tiny()), str(evil / "evil_jit.pt"))

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    port = listener.getsockname()[1]

    subs = {
        "@CANARY@": str(canary),
        "@PORT@": str(port),
        "@SECRET_ENV@": SECRET_ENV,
        "@SECRET_FILE@": str(secret_file),
        "@SECRET_LEN@": str(len(FILE_SECRET)),
        "@EVIL_DIR@": str(evil),
        "@EVIL_PKL@": str(evil / "evil.pkl"),
        "@EVIL_NPY@": str(evil / "evil.npy"),
        "@EVIL_SO@": str(so_path),
        "@EVIL_JIT@": str(evil / "evil_jit.pt"),
        "@PICKLE_HEX@": pickle_hex,
        "@WEIGHTS@": str(weights),
    }
    return World(root, canary, secret_file, evil, Path(weights), listener, port, have_so, subs)


# --------------------------------------------------------------------------------------------
# Host-state snapshot
# --------------------------------------------------------------------------------------------

#: Modules whose every attribute must keep its identity (a payload writing to shared module
#: state would change what every other user of the host sees).
WATCHED_MODULES = (
    "builtins",
    "os",
    "os.path",
    "torch",
    "torch.nn",
    "torch.nn.functional",
    "torch.nn.modules.module",
    "torch.serialization",
    "torch.hub",
    "torch.backends",
    "torch.backends.cudnn",
    "numpy",
    "diffusers",
    "diffusers.utils",
    "diffusers.utils.logging",
    "diffusers.utils.dynamic_modules_utils",
    "diffusers.pipelines.pipeline_utils",
    "diffusers.models.modeling_utils",
    "safetensors.torch",
    "PIL.Image",
    "logging",
    "string",
    "operator",
    "functools",
    "inspect",
    "gc",
    "importlib",
    "subprocess",
    "socket",
    "shutil",
    "pickle",
    __name__,
)

#: Classes whose dictionaries must keep every value (monkeypatching a host class is an escape).
WATCHED_CLASSES = (
    ("diffusers", "DiffusionPipeline"),
    ("diffusers", "ConfigMixin"),
    ("diffusers", "ModelMixin"),
    ("diffusers", "UNet2DModel"),
    ("diffusers", "DDPMScheduler"),
    ("diffusers", "SchedulerMixin"),
    ("torch.nn", "Module"),
    ("torch", "Tensor"),
    ("builtins", "str"),
)

_GLOBAL_HOOK_DICTS = (
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
    "_global_buffer_registration_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
)

#: Module names a payload may try to pull in; a new entry under one of these is a finding.
DANGEROUS_NEW_MODULES = frozenset(
    {
        "subprocess",
        "ctypes",
        "_ctypes",
        "socket",
        "_socket",
        "pty",
        "webbrowser",
        "antigravity",
        "pdb",
        "bdb",
        "pydoc",
        "multiprocessing",
        "shutil",
        "tempfile",
        "http",
        "urllib",
        "ftplib",
        "smtplib",
        "pickle",
        "_pickle",
        "marshal",
        "code",
        "codeop",
        "gc",
        "ssl",
        "signal",
        "mmap",
        "resource",
        "fcntl",
        "readline",
        "cProfile",
        "profile",
        "trace",
        "tracemalloc",
        "runpy",
        "pkgutil",
        "sqlite3",
        "shelve",
        "xmlrpc",
        "socketserver",
        "diffusers_modules",
        "hubconf",
        "torch.utils.cpp_extension",
        "torch.distributed.rpc",
    }
)


def _descendants(root_pid: int) -> dict[int, str]:
    """pid -> "exe|comm" of every live (non-zombie) descendant process of ``root_pid`` (Linux /proc)."""
    parents: dict[int, tuple[int, str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("latin-1")
        except OSError:
            continue
        head, _, rest = stat.rpartition(")")
        fields = rest.split()
        if len(fields) < 2:
            continue
        comm = head.partition("(")[2]
        parents[int(entry)] = (int(fields[1]), fields[0], comm)
    out: dict[int, str] = {}
    frontier = [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, (parent, state, comm) in parents.items():
            if parent == pid and child not in out:
                frontier.append(child)
                if state in ("Z", "X"):
                    continue  # exited, waiting to be reaped: not running
                try:
                    exe = os.readlink(f"/proc/{child}/exe")
                except OSError:
                    exe = "?"
                out[child] = f"{exe}|{comm}"
    return out


def _is_python_process(desc: str) -> bool:
    exe, _, comm = desc.partition("|")
    if exe != "?" and os.path.realpath(exe) == os.path.realpath(sys.executable):
        return True
    return comm.startswith("python")


def _tqdm_monitor_type() -> type | None:
    try:
        from tqdm._monitor import TMonitor

        return TMonitor
    except Exception:  # pragma: no cover - tqdm always present with diffusers
        return None


def _hook_counts(module: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    if module is None:
        return counts
    for name, sub in module.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_hooks_always_called",
            "_forward_pre_hooks_with_kwargs",
            "_state_dict_hooks",
            "_state_dict_pre_hooks",
            "_load_state_dict_pre_hooks",
            "_load_state_dict_post_hooks",
        ):
            value = sub.__dict__.get(attr)
            if value:
                counts[f"{name or '<unet>'}.{attr}"] = len(value)
        if "forward" in sub.__dict__:
            counts[f"{name or '<unet>'}.forward (instance override)"] = 1
    return counts


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Immutable (tuples all the way down) so a payload walking ``gc`` cannot rewrite it."""

    modules: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    classes: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    sys_modules: tuple[tuple[str, Any], ...]
    scalars: tuple[tuple[str, Any], ...]
    environ: tuple[tuple[str, str], ...]
    threads: frozenset[threading.Thread]
    children: tuple[tuple[int, str], ...]
    unet_hooks: tuple[tuple[str, int], ...]
    unet_class: type | None
    component_state: tuple[tuple[str, Any], ...]
    class_containers: tuple[tuple[str, Any], ...]


def _config_name_bytes() -> bytes | None:
    """A copy of the CONTENT of a host str constant (a raw-memory write would change it in place)."""
    cls = getattr(sys.modules.get("diffusers"), "DiffusionPipeline", None)
    name = vars(cls).get("config_name") if isinstance(cls, type) else None
    return name.encode("utf-8", "surrogateescape") if isinstance(name, str) else None


def _restore_config_name(original: bytes | None) -> None:
    """Trusted test code: put the bytes of DiffusionPipeline.config_name back after a memory write."""
    if original is None or _config_name_bytes() == original:
        return
    import ctypes

    name = vars(sys.modules["diffusers"].DiffusionPipeline)["config_name"]
    if name.isascii() and len(name) == len(original):
        ctypes.memmove(id(name) + sys.getsizeof(name) - len(name) - 1, original, len(original))


def _bytes_singletons() -> bytes:
    """The content of CPython's 256 shared one-byte ``bytes`` objects (a write through a tensor that
    aliases ``bytes([65])`` rewrites every ``b"A"`` of the process)."""
    return bytes(bytes([i])[0] for i in range(256))


def _restore_bytes_singletons() -> None:
    """Trusted test code: put the shared one-byte objects back after a memory write."""
    import ctypes

    for i in range(256):
        one = bytes([i])
        if one[0] != i:
            ctypes.memmove(id(one) + sys.getsizeof(one) - 2, (ctypes.c_ubyte * 1)(i), 1)


def _scalars() -> dict[str, Any]:
    import numpy as np
    import torch

    mm = sys.modules["torch.nn.modules.module"]
    root = logging.getLogger()
    return {
        "sys.path": tuple(sys.path),
        "sys.meta_path": tuple(sys.meta_path),
        "sys.path_hooks": tuple(sys.path_hooks),
        "sys.gettrace()": sys.gettrace(),
        "sys.getprofile()": sys.getprofile(),
        "threading.gettrace()": threading.gettrace() if hasattr(threading, "gettrace") else None,
        "sys.excepthook": sys.excepthook,
        "sys.displayhook": sys.displayhook,
        "sys.breakpointhook": sys.breakpointhook,
        "sys.unraisablehook": sys.unraisablehook,
        "sys.stdin": sys.stdin,
        "sys.stdout": sys.stdout,
        "sys.stderr": sys.stderr,
        "sys.getrecursionlimit()": sys.getrecursionlimit(),
        "sys.getswitchinterval()": sys.getswitchinterval(),
        "os.getcwd()": os.getcwd(),
        "signal SIGINT": signal.getsignal(signal.SIGINT),
        "signal SIGTERM": signal.getsignal(signal.SIGTERM),
        "signal SIGALRM": signal.getsignal(signal.SIGALRM),
        "signal SIGUSR1": signal.getsignal(signal.SIGUSR1),
        "torch.get_default_dtype()": torch.get_default_dtype(),
        "torch.is_grad_enabled()": torch.is_grad_enabled(),
        "torch.get_num_threads()": torch.get_num_threads(),
        "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled(),
        "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision(),
        "torch.is_inference_mode_enabled()": torch.is_inference_mode_enabled(),
        "torch.is_autocast_enabled('cpu')": torch.is_autocast_enabled("cpu"),
        "warnings.filters": tuple(warnings.filters),
        "DiffusionPipeline.config_name bytes": _config_name_bytes(),
        "bytes singletons": _bytes_singletons(),
        "torch.backends.cudnn.enabled": torch.backends.cudnn.enabled,
        "torch.backends.cudnn.benchmark": torch.backends.cudnn.benchmark,
        "torch.backends.cudnn.deterministic": torch.backends.cudnn.deterministic,
        "torch.backends.mkldnn.enabled": torch.backends.mkldnn.enabled,
        "numpy.geterr()": tuple(sorted(np.geterr().items())),
        "logging root level": root.level,
        "logging root handlers": tuple(root.handlers),
        "logging.disable level": logging.root.manager.disable,
        **{f"torch.nn.modules.module.{n}": tuple(getattr(mm, n, {}) or {}) for n in _GLOBAL_HOOK_DICTS},
    }


def _component_state(components: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Identity of every attribute of every UNet submodule, and both configs' contents."""
    out: list[tuple[str, Any]] = []
    if not components:
        return ()
    for label, comp in sorted(components.items()):
        config = getattr(comp, "config", None)
        if config is not None:
            out.append((f"{label}.config", tuple(sorted((str(k), repr(v)) for k, v in dict(config).items()))))
    unet = components.get("unet")
    if unet is not None:
        for name, sub in unet.named_modules():
            where = name or "<unet>"
            for key, value in sub.__dict__.items():
                out.append((f"unet {where}.{key}", id(value)))
            for pname, param in sub.__dict__.get("_parameters", {}).items():
                out.append((f"unet {where}.{pname} (parameter)", id(param)))
            for mname, child in sub.__dict__.get("_modules", {}).items():
                out.append((f"unet {where}.{mname} (submodule)", id(child)))
    return tuple(out)


def _class_containers() -> tuple[tuple[str, Any], ...]:
    """Contents of list/dict/set class attributes (a shared list is host state too)."""
    out: list[tuple[str, Any]] = []
    for modname, clsname in WATCHED_CLASSES:
        cls = getattr(sys.modules.get(modname), clsname, None)
        if not isinstance(cls, type):
            continue
        for key, value in vars(cls).items():
            if isinstance(value, (list, set)):
                out.append((f"{modname}.{clsname}.{key}", (value, tuple(value))))
            elif isinstance(value, dict):
                out.append((f"{modname}.{clsname}.{key}", (value, tuple(value.items()))))
    return tuple(out)


def take_snapshot(unet: Any = None, components: dict[str, Any] | None = None) -> Snapshot:
    modules = []
    for name in WATCHED_MODULES:
        mod = sys.modules.get(name)
        if mod is not None:
            modules.append((name, tuple(vars(mod).items())))
    classes = []
    for modname, clsname in WATCHED_CLASSES:
        mod = sys.modules.get(modname)
        cls = getattr(mod, clsname, None) if mod is not None else None
        if isinstance(cls, type):
            classes.append((f"{modname}.{clsname}", tuple(vars(cls).items())))
    return Snapshot(
        modules=tuple(modules),
        classes=tuple(classes),
        sys_modules=tuple(sys.modules.items()),
        scalars=tuple(_scalars().items()),
        environ=tuple(os.environ.items()),
        threads=frozenset(threading.enumerate()),
        children=tuple(_descendants(os.getpid()).items()),
        unet_hooks=tuple(sorted(_hook_counts(unet).items())),
        unet_class=type(unet) if unet is not None else None,
        component_state=_component_state(components),
        class_containers=_class_containers(),
    )


def _legit_new_attr(mod: types.ModuleType, key: str, value: Any) -> bool:
    """A new module attribute is legitimate only when the import system put it there."""
    if isinstance(value, types.ModuleType) and value.__name__ == f"{mod.__name__}.{key}":
        return True  # ``import pkg.sub`` sets pkg.sub
    lazy_names = set()
    for attr in ("_class_to_module", "_modules", "_objects"):
        lazy_names |= set(getattr(mod, attr, None) or ())
    if key in lazy_names:
        origin = getattr(value, "__module__", None) or getattr(value, "__name__", "") or ""
        return isinstance(origin, str) and origin.split(".")[0] == mod.__name__.split(".")[0]
    return False


def compare(before: Snapshot, after: Snapshot, *, process_mode: bool, restore: bool = True) -> list[str]:
    """Every difference that a sandboxed payload could have caused; restores what it can."""
    out: list[str] = []
    for name, old_items in before.modules:
        old = dict(old_items)
        mod = sys.modules.get(name)
        if mod is None:
            out.append(f"module {name} vanished from sys.modules")
            continue
        new = vars(mod)
        for key, value in list(old.items()):
            if key not in new:
                out.append(f"{name}.{key} was deleted")
                if restore:
                    setattr(mod, key, value)
            elif new[key] is not value and not (name == __name__ and key.startswith("_pw_")):
                out.append(f"{name}.{key} was replaced ({type(value).__name__} -> {type(new[key]).__name__})")
                if restore:
                    setattr(mod, key, value)
        for key in list(new.keys() - old.keys()):
            if not _legit_new_attr(mod, key, new[key]):
                out.append(f"{name}.{key} was added ({type(new[key]).__name__})")
                if restore:
                    with contextlib.suppress(Exception):
                        delattr(mod, key)
    for qual, old_items in before.classes:
        old = dict(old_items)
        modname, clsname = qual.rsplit(".", 1)
        cls = getattr(sys.modules.get(modname), clsname, None)
        if not isinstance(cls, type):
            out.append(f"class {qual} is gone")
            continue
        new = dict(vars(cls))
        for key, value in old.items():
            if key not in new:
                out.append(f"{qual}.{key} was deleted")
                if restore:
                    with contextlib.suppress(Exception):
                        setattr(cls, key, value)
            elif new[key] is not value:
                out.append(f"{qual}.{key} was replaced")
                if restore:
                    with contextlib.suppress(Exception):
                        setattr(cls, key, value)
        for key in new.keys() - old.keys():
            if key == "__slotnames__":
                continue  # copyreg's cache, filled by any pickling of the class
            out.append(f"{qual}.{key} was added")
            if restore:
                with contextlib.suppress(Exception):
                    delattr(cls, key)
    before_sys_modules = dict(before.sys_modules)
    for key, value in before_sys_modules.items():
        if sys.modules.get(key) is not value:
            out.append(f"sys.modules[{key!r}] was replaced or removed")
            if restore:
                sys.modules[key] = value
    for key in set(sys.modules) - set(before_sys_modules):
        if process_mode:
            break  # the payload ran in the worker; new host imports are the isolation layer's own
        top = key.split(".")[0]
        if key in DANGEROUS_NEW_MODULES or top in DANGEROUS_NEW_MODULES:
            out.append(f"sys.modules gained {key!r}")
    before_scalars, after_scalars = dict(before.scalars), dict(after.scalars)
    for key, value in before_scalars.items():
        now = after_scalars.get(key)
        same = now is value if callable(value) or hasattr(value, "write") else now == value
        if not same:
            out.append(f"{key} changed: {_short(value)} -> {_short(now)}")
    if restore:
        _restore_scalars(before_scalars, after_scalars)
    env_before = {k: v for k, v in before.environ if k not in _ENV_IGNORED}
    env_after = {k: v for k, v in after.environ if k not in _ENV_IGNORED}
    if env_before != env_after:
        changed = sorted(set(env_before.items()) ^ set(env_after.items()))
        out.append(f"os.environ changed: {sorted({k for k, _ in changed})}")
        if restore:
            os.environ.clear()
            os.environ.update(dict(before.environ))
    monitor = _tqdm_monitor_type()
    for thread in after.threads - before.threads:
        if not thread.is_alive():
            continue
        if monitor is not None and isinstance(thread, monitor):
            continue
        if process_mode and _is_pipewarden_thread(thread):
            continue
        out.append(f"new thread left running: {thread.name!r} ({type(thread).__name__})")
    before_children = dict(before.children)
    for pid, exe in after.children:
        if pid in before_children:
            continue
        if process_mode and _is_python_process(exe):
            continue  # a worker (or the fork server) of process isolation
        out.append(f"new child process left running: pid {pid} exe {exe}")
    if after.unet_hooks != before.unet_hooks:
        out.append(f"UNet hooks changed: {dict(before.unet_hooks)} -> {dict(after.unet_hooks)}")
    if before.unet_class is not None and after.unet_class is not before.unet_class:
        out.append(f"UNet class changed: {before.unet_class} -> {after.unet_class}")
    if after.component_state != before.component_state:
        old, new = dict(before.component_state), dict(after.component_state)
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k, _GONE) != new.get(k, _GONE))
        out.append(
            f"component state changed (host objects written): {changed[:8]}{' ...' if len(changed) > 8 else ''}"
        )
    old_c, new_c = dict(before.class_containers), dict(after.class_containers)
    mutated = []
    for key, (container, content) in old_c.items():
        now = new_c.get(key)
        if now is None or now[0] is not container or now[1] != content:
            mutated.append(key)
            if restore and now is not None and now[0] is container:
                if isinstance(container, dict):
                    container.clear()
                    container.update(dict(content))
                elif isinstance(container, list):
                    container[:] = list(content)
                else:
                    container.clear()
                    container.update(content)
    if mutated:
        out.append(f"host class container attributes mutated: {sorted(mutated)}")
    return out


_GONE = object()
_ENV_IGNORED = frozenset({"PYTEST_CURRENT_TEST"})  # pytest rewrites it for every test


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    if isinstance(value, tuple) and len(text) > limit:
        return f"<{len(value)} entries, first {value[:1]!r:.{limit}}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _is_pipewarden_thread(thread: threading.Thread) -> bool:
    if type(thread).__module__.startswith("pipewarden"):
        return True
    target = getattr(thread, "_target", None)
    module = getattr(target, "__module__", "") or ""
    return isinstance(module, str) and module.startswith("pipewarden")


def _restore_scalars(before: dict[str, Any], after: dict[str, Any]) -> None:
    import numpy as np
    import torch

    if after["sys.gettrace()"] is not before["sys.gettrace()"]:
        sys.settrace(before["sys.gettrace()"])
    if after["sys.getprofile()"] is not before["sys.getprofile()"]:
        sys.setprofile(before["sys.getprofile()"])
    for attr in ("excepthook", "displayhook", "breakpointhook", "unraisablehook"):
        setattr(sys, attr, before[f"sys.{attr}"])
    sys.path[:] = list(before["sys.path"])
    sys.meta_path[:] = list(before["sys.meta_path"])
    sys.path_hooks[:] = list(before["sys.path_hooks"])
    sys.setrecursionlimit(before["sys.getrecursionlimit()"])
    with contextlib.suppress(OSError):
        os.chdir(before["os.getcwd()"])
    for sig in ("SIGINT", "SIGTERM", "SIGALRM", "SIGUSR1"):
        old = before[f"signal {sig}"]
        if after[f"signal {sig}"] is not old and old is not None:
            with contextlib.suppress(Exception):
                signal.signal(getattr(signal, sig), old)
    if tuple(warnings.filters) != before["warnings.filters"]:
        warnings.filters[:] = list(before["warnings.filters"])
    module_mod = sys.modules["torch.nn.modules.module"]
    for name in _GLOBAL_HOOK_DICTS:
        hooks = getattr(module_mod, name, None)
        if isinstance(hooks, dict):
            for key in [k for k in hooks if k not in before[f"torch.nn.modules.module.{name}"]]:
                del hooks[key]
    _restore_config_name(before["DiffusionPipeline.config_name bytes"])
    _restore_bytes_singletons()
    torch.set_default_dtype(before["torch.get_default_dtype()"])
    torch.set_grad_enabled(before["torch.is_grad_enabled()"])
    torch.backends.cudnn.enabled = before["torch.backends.cudnn.enabled"]
    torch.backends.cudnn.benchmark = before["torch.backends.cudnn.benchmark"]
    torch.backends.cudnn.deterministic = before["torch.backends.cudnn.deterministic"]
    torch.backends.mkldnn.enabled = before["torch.backends.mkldnn.enabled"]
    np.seterr(**dict(before["numpy.geterr()"]))
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler not in before["logging root handlers"]:
            root.removeHandler(handler)
            with contextlib.suppress(Exception):
                handler.close()
    root.setLevel(before["logging root level"])
    logging.disable(before["logging.disable level"])


# --------------------------------------------------------------------------------------------
# Secret detection
# --------------------------------------------------------------------------------------------


def texts_of(value: Any, *, depth: int = 0) -> list[str]:
    """Readable renderings of a returned value (tensors and arrays decoded as bytes too)."""
    if depth > 4:
        return []
    out: list[str] = []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return [bytes(value).decode("latin-1")]
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in list(value)[:10_000]:
            out.extend(texts_of(item, depth=depth + 1))
        with contextlib.suppress(Exception):
            ints = [int(x) for x in value]
            out.append(bytes(i % 256 for i in ints).decode("latin-1"))
        return out
    if isinstance(value, dict):
        for k, v in list(value.items())[:10_000]:
            out.extend(texts_of(k, depth=depth + 1))
            out.extend(texts_of(v, depth=depth + 1))
        return out
    try:
        import numpy as np
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            flat = value.reshape(-1)
            if flat.dtype.kind in "iub":
                out.append(bytes(int(x) % 256 for x in flat[:100_000]).decode("latin-1"))
            elif flat.dtype.kind == "f":
                with contextlib.suppress(Exception):
                    out.append(bytes(int(x) % 256 for x in flat[:100_000]).decode("latin-1"))
            elif flat.dtype.kind in "USO":
                out.extend(texts_of(flat.tolist(), depth=depth + 1))
            return out
    except Exception:  # pragma: no cover - decoding is best effort on top of repr
        pass
    with contextlib.suppress(Exception):
        out.append(repr(value))
    with contextlib.suppress(Exception):
        out.append(str(value))
    return out


def exception_texts(exc: BaseException | None) -> list[str]:
    out: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 20:
        seen.add(id(exc))
        for render in (str, repr):
            with contextlib.suppress(Exception):
                out.append(render(exc))
        for arg in getattr(exc, "args", ()) or ():
            out.extend(texts_of(arg, depth=1))
        for note in getattr(exc, "__notes__", []) or []:
            out.append(str(note))
        for sub in getattr(exc, "exceptions", ()) or ():
            out.extend(exception_texts(sub))
        exc = exc.__cause__ or exc.__context__
    return out


def leaked_secrets(texts: list[str]) -> list[str]:
    found = []
    for label, secret in (("host-global", HOST_SECRET), ("env", ENV_SECRET), ("file", FILE_SECRET)):
        token = secret.rsplit("-", 1)[-1]
        if any(token in t for t in texts if isinstance(t, str)):
            found.append(f"{label} secret leaked")
    return found


# --------------------------------------------------------------------------------------------
# Running one payload
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Observation:
    mode: str
    stage: str  # "load", "init", "call" or "done"
    result: Any
    exception: BaseException | None
    violations: list[str]

    def describe(self) -> str:
        exc = self.exception
        what = (
            "returned normally"
            if exc is None
            else f"raised {type(exc).__module__}.{type(exc).__name__}: {exc}"
        )
        return f"[{self.mode}] stage={self.stage} {what}; violations={self.violations}"


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(record.getMessage())
        with contextlib.suppress(Exception):
            self.lines.append(repr(record.args))


def load_components(weights: Path) -> dict[str, Any]:
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        unet = UNet2DModel.from_pretrained(str(weights / "unet"))
        scheduler = DDPMScheduler.from_pretrained(str(weights / "scheduler"))
    finally:
        dlogging.set_verbosity(verbosity)
    return {"unet": unet, "scheduler": scheduler}


def plain_load_class(source: str) -> type:
    """UNSANDBOXED: exec the source like diffusers does. Self-tests only."""
    from diffusers import DiffusionPipeline

    module = types.ModuleType("pw_plain_payload")
    module.__dict__["__builtins__"] = builtins.__dict__
    # dont_inherit: this module's own ``from __future__ import annotations`` must not leak into the payload
    exec(compile(source, "pipeline.py", "exec", dont_inherit=True), module.__dict__)  # noqa: S102 - the point of the self-test
    found = [
        v
        for v in module.__dict__.values()
        if isinstance(v, type) and issubclass(v, DiffusionPipeline) and v.__module__ == "pw_plain_payload"
    ]
    assert len(found) == 1, f"payload defines {len(found)} pipeline classes"
    return found[0]


def sandbox_load_class(source: str) -> type:
    from pipewarden.sandbox import load_class

    return load_class(source, filename="pipeline.py")


def observe(world: World, source: str, mode: str, *, call_kwargs: dict | None = None) -> Observation:
    """Run ``source`` in ``mode`` ("plain", "inprocess", "process") and look for side effects."""
    world.clear_canary()
    world.drain_connections()
    components = load_components(world.weights) if mode != "process" else {}
    unet = components.get("unet")
    # A refusal raised where Python cannot propagate it (a generator's finaliser when the stream is
    # dropped) reaches sys.unraisablehook: recorded as the run's exception if nothing else was.
    unraisable: list[BaseException] = []
    previous_unraisablehook = sys.unraisablehook
    sys.unraisablehook = lambda info: unraisable.append(info.exc_value)
    before = take_snapshot(unet, components)
    stdout, stderr = io.StringIO(), io.StringIO()
    handler = _ListHandler()
    root = logging.getLogger()
    stage = "load"
    result: Any = None
    exc: BaseException | None = None
    closer: Callable[[], Any] | None = None
    stream: Any = None
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                if mode == "process":
                    pipe = _process_load(world, source)
                    closer = getattr(pipe, "close", None)
                elif mode == "api":
                    stage = "init"
                    pipe = _api_inprocess_load(world, source, components)
                else:
                    cls = plain_load_class(source) if mode == "plain" else sandbox_load_class(source)
                    stage = "init"
                    pipe = cls(**components)
                stage = "call"
                result = pipe(**(call_kwargs or {}))
                stage = "done"
                if isinstance(result, types.GeneratorType):
                    # A user consumes a returned stream: that runs sandboxed code from host code.
                    stage = "consume"
                    stream = result  # kept alive until after the snapshot, like a user's variable
                    result = next(stream)
                    stage = "done"
            except BaseException as e:  # noqa: BLE001 - everything is evidence here
                if isinstance(e, KeyboardInterrupt):
                    raise
                exc = e
            finally:
                if closer is not None:
                    with contextlib.suppress(Exception):
                        closer()
    finally:
        root.removeHandler(handler)
    after = take_snapshot(unet, components)
    del stream
    import gc

    gc.collect()
    if exc is None and unraisable:
        exc, stage = unraisable[0], "finalise"
    violations = compare(before, after, process_mode=(mode == "process"))
    sys.unraisablehook = previous_unraisablehook  # after compare(): its restore puts ``before``'s back
    entries = world.canary_entries()
    if entries:
        violations.append(f"canary dir written: {entries}")
        world.clear_canary()
    accepted = world.drain_connections()
    if accepted:
        violations.append(f"{accepted} loopback connection(s) accepted by the listener")
    texts = texts_of(result) + exception_texts(exc) + [stdout.getvalue(), stderr.getvalue()] + handler.lines
    violations.extend(leaked_secrets(texts))
    return Observation(mode, stage, result, exc, violations)


def _write_code(world: World, source: str) -> tuple[Path, str]:
    code_dir = world.root / "code" / hashlib.sha256(source.encode()).hexdigest()[:16]
    code_dir.mkdir(parents=True, exist_ok=True)
    path = code_dir / "pipeline.py"
    path.write_text(source, encoding="utf-8")
    return path, hashlib.sha256(source.encode("utf-8")).hexdigest()


def _api_inprocess_load(world: World, source: str, components: dict[str, Any]) -> Any:
    """``load_pipeline(isolation="inprocess")`` with our own components (so hooks can be checked)."""
    import pipewarden
    from pipewarden.errors import InProcessIsolationWarning

    path, sha = _write_code(world, source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InProcessIsolationWarning)
        pipe = pipewarden.load_pipeline(
            str(world.weights),
            custom_pipeline=str(path),
            trust_remote_code=True,
            pipeline_sha256=sha,
            isolation="inprocess",
            **components,
        )
    assert any(issubclass(w.category, InProcessIsolationWarning) for w in caught), "in-process mode must warn"
    return pipe


def _process_load(world: World, source: str) -> Any:
    import pipewarden

    path, sha = _write_code(world, source)
    return pipewarden.load_pipeline(
        str(world.weights),
        custom_pipeline=str(path),
        trust_remote_code=True,
        pipeline_sha256=sha,
        isolation="process",
    )
