"""Measure the layers on this machine: apply them in a throw-away child and test each one.

Used by ``pipewarden doctor``. Decides what counts as "verified": each layer is applied exactly
as in a worker (``_layers.apply_all``), then the child tries what the layer should stop (a
socket, a fork, a write and a read outside its allowed paths, reading a token from the
environment) and reports whether the attempt was refused. Imports neither torch nor diffusers.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import tempfile

from pipewarden.isolation.layers import apply as _layers


def _errno_of(fn) -> int:
    try:
        fn()
    except OSError as exc:
        return exc.errno or -1
    return 0


def _ns(kind: str) -> str:
    try:
        return os.readlink(f"/proc/self/ns/{kind}")
    except OSError:
        return "?"


def _child_checks(statuses: list[_layers.LayerStatus], canary_dir: str, host_ipc: str) -> list[_layers.LayerStatus]:
    libc = ctypes.CDLL(None, use_errno=True)
    active = {s.name: s for s in statuses}
    checks: dict[str, tuple[bool, str]] = {}
    token_free = not any(k in os.environ for k in ("HF_TOKEN", "PIPEWARDEN_PROBE_SECRET"))
    checks["env"] = (token_free and os.environ.get("HF_HUB_OFFLINE") == "1", "no token variables, HF_HUB_OFFLINE=1")
    checks["uid"] = (os.getuid() != 0 and os.geteuid() != 0, f"running as uid {os.getuid()}")
    own_ipc = _ns("ipc")
    checks["ipcns"] = (own_ipc not in ("?", host_ipc), f"IPC namespace {own_ipc}, host's {host_ipc}")
    scratch = os.path.join(os.path.dirname(canary_dir), "scratch")
    try:
        st = os.statvfs(scratch)
        size = st.f_blocks * st.f_frsize
        own_fs = os.stat(scratch).st_dev != os.stat(canary_dir).st_dev
    except OSError:
        size, own_fs = -1, False
    checks["scratch-fs"] = (own_fs and 0 < size <= 8 * 1024 * 1024, f"scratch on its own file system of {size} bytes")
    soft, _hard = resource.getrlimit(resource.RLIMIT_DATA)
    checks["rlimits"] = (soft != resource.RLIM_INFINITY, "RLIMIT_DATA set")
    write_err = _errno_of(lambda: open(os.path.join(canary_dir, "written"), "wb").close())
    read_err = _errno_of(lambda: open(os.path.join(canary_dir, "secret"), "rb").close())
    checks["landlock-fs"] = (write_err != 0 and read_err != 0, f"write outside scratch -> errno {write_err}, read -> errno {read_err}")
    fd = libc.socket(2, 1, 0)
    sock_err = ctypes.get_errno()
    if fd >= 0:
        os.close(fd)
    pid = libc.fork()
    fork_err = ctypes.get_errno()
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
    checks["seccomp"] = (fd < 0 and pid < 0, f"socket() -> errno {sock_err if fd < 0 else 0}, fork() -> errno {fork_err if pid < 0 else 0}")
    out = []
    for s in statuses:
        if s.active and s.name in checks:
            ok, how = checks[s.name]
            out.append(_layers.LayerStatus(s.name, ok, f"{s.detail}; checked: {how}" if ok else f"applied but check FAILED: {how}"))
        else:
            out.append(s)
    del active
    return out


def _tripwire_status() -> _layers.LayerStatus:
    try:
        from pipewarden.sandbox import tripwire
    except ImportError:
        return _layers.LayerStatus("tripwire", False, "pipewarden.sandbox.tripwire not available")
    if getattr(tripwire, "arm_process_wide", None) or getattr(tripwire, "arm_process", None):
        return _layers.LayerStatus("tripwire", True, "process-wide audit hook available (armed in each worker)")
    return _layers.LayerStatus("tripwire", False, "no process-wide arm function in the tripwire module")


def _wall_clock_status() -> _layers.LayerStatus:
    try:
        fd = os.pidfd_open(os.getpid())
        os.close(fd)
    except (AttributeError, OSError) as exc:
        return _layers.LayerStatus("wall-clock", False, f"no pidfd ({exc}); cannot kill workers race-free")
    return _layers.LayerStatus("wall-clock", True, "host kills the worker (pidfd) after Limits.wall_s")


def probe() -> tuple[_layers.LayerStatus, ...]:
    base = tempfile.mkdtemp(prefix="pipewarden-probe-")
    scratch = os.path.join(base, "scratch")
    canary = os.path.join(base, "canary")
    os.mkdir(scratch, 0o700)
    os.mkdir(canary)
    os.chmod(canary, 0o777)  # only Landlock (not file modes) may stop the child here
    with open(os.path.join(canary, "secret"), "w") as fh:
        fh.write("secret")
    os.chmod(os.path.join(canary, "secret"), 0o666)
    plan = _layers.LayerPlan(
        scratch=scratch, read_paths=(), memory_mb=4096, cpu_s=30, file_size_mb=8, open_files=64, processes=64,
        scratch_mb=8, gpu=False,
    )
    r, w = os.pipe()
    os.environ.setdefault("PIPEWARDEN_PROBE_SECRET", "x")
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(r)
                host_ipc = _ns("ipc")
                statuses = list(_layers.apply_all(plan))
                statuses = _child_checks(statuses, canary, host_ipc)
                os.write(w, json.dumps([s.to_json() for s in statuses]).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        chunks = []
        while True:
            data = os.read(r, 65536)
            if not data:
                break
            chunks.append(data)
        os.close(r)
        os.waitpid(pid, 0)
        written = os.path.exists(os.path.join(canary, "written"))
    finally:
        os.environ.pop("PIPEWARDEN_PROBE_SECRET", None)
        shutil.rmtree(base, ignore_errors=True)
    try:
        items = json.loads(b"".join(chunks) or b"[]")
    except ValueError:
        items = []
    layers = [_layers.LayerStatus(i["name"], bool(i["active"]), str(i.get("detail", ""))) for i in items]
    if written:
        layers = [
            _layers.LayerStatus(s.name, False, "a write outside scratch succeeded") if s.name == "landlock-fs" else s
            for s in layers
        ]
    if not layers:
        layers = [_layers.LayerStatus(n, False, "probe child failed") for n in _layers.LAYER_NAMES[:-2]]
    return (*layers, _tripwire_status(), _wall_clock_status())
