"""The worker's confinement layers, applied in a fixed order before any untrusted byte is read.

Decides the order and what each layer allows; trusts only the host's ``LayerPlan`` (paths of the
verified snapshot, scratch dir, limits). Every layer reports a ``LayerStatus`` (active or not,
and why); a layer that cannot be applied on this kernel/user degrades to "inactive" instead of
failing, and the host decides (``required_layers``) whether that is acceptable.

Order: environment -> network + IPC/UTS + mount namespaces (tmpfs scratch) -> capabilities + unprivileged uid -> rlimits ->
no_new_privs -> Landlock -> seccomp (last, so the earlier steps may still use the calls it
denies). The tripwire is armed by the worker after this, and the wall clock is the host's.
"""

from __future__ import annotations

import glob
import os
import resource
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pipewarden.isolation.layers import landlock as _landlock
from pipewarden.isolation.layers import seccomp as _seccomp
from pipewarden.isolation.layers import syscalls as sc

#: Every layer name, in the order they are applied (plus the two the worker/host add).
LAYER_NAMES: tuple[str, ...] = (
    "env",
    "netns",
    "ipcns",
    "scratch-fs",
    "uid",
    "rlimits",
    "landlock-fs",
    "landlock-net",
    "landlock-scope",
    "seccomp",
    "tripwire",
    "wall-clock",
)

#: What each layer stops (used by ``pipewarden doctor`` and SECURITY.md).
LAYER_PURPOSE: Mapping[str, str] = {
    "env": "secrets in the environment (HF_TOKEN, cloud keys); forces HF_HUB_OFFLINE=1",
    "netns": "all network access (own namespace with only a down loopback)",
    "ipcns": "SysV IPC and POSIX message queues shared with the host (own IPC + UTS namespaces)",
    "scratch-fs": "filling the host's disk: the scratch dir is the worker's own tmpfs of Limits.scratch_mb",
    "uid": "acting as root: writing root-owned files, signalling host processes, NPROC bypass",
    "rlimits": "memory (address space / data), CPU time, file size, open files, processes",
    "landlock-fs": "reading outside Python + the verified snapshot, writing outside scratch",
    "landlock-net": "TCP bind/connect (even without netns)",
    "landlock-scope": "signals to and abstract unix sockets of processes outside the worker",
    "seccomp": "new sockets, exec, fork, ptrace, mount/namespace/privilege syscalls, SysV/POSIX IPC, io_uring, bpf",
    "tripwire": "Python-level audited events (open, import, exec, subprocess...) from any thread",
    "wall-clock": "hangs and sleeps: the host kills the worker after Limits.wall_s per request",
}

#: Environment variables passed through to the worker (performance knobs only, never secrets).
ENV_PASSTHROUGH: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "PYTORCH_CUDA_ALLOC_CONF",
    "LANG",
    "LC_ALL",
)

_SYSTEM_READ = (
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/sys/kernel/cap_last_cap",
    "/proc/sys/vm/overcommit_memory",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
)
_GPU_READ = (
    "/proc/driver/nvidia",
    "/proc/devices",
    "/proc/modules",
    "/sys/bus/pci",
    "/sys/devices",
    "/sys/module/nvidia",
    "/etc/nvidia",
    "/usr/share/nvidia",
)
_WORKER_UID_BASE = 1_000_000
#: The namespace layers and the namespaces each unshares (all in one ``unshare`` call).
_NAMESPACE_FLAGS: Mapping[str, int] = {
    "netns": sc.CLONE_NEWNET,
    "ipcns": sc.CLONE_NEWIPC | sc.CLONE_NEWUTS,
    "scratch-fs": sc.CLONE_NEWNS,
}
#: Never granted as a whole even if they are on sys.path (e.g. a cwd of "/").
_TOO_BROAD = frozenset({"/", "/tmp", "/var/tmp", "/home", "/root", "/etc", "/var", "/proc", "/sys", "/dev", "/run"})


@dataclass(frozen=True)
class LayerStatus:
    """Whether one layer is active in a worker, with a short reason or detail."""

    name: str
    active: bool
    detail: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "active": self.active, "detail": self.detail}


@dataclass(frozen=True)
class LayerPlan:
    """What the host tells a new worker (trusted input: built by the host, not the pipeline)."""

    scratch: str
    read_paths: tuple[str, ...]
    memory_mb: int
    cpu_s: int
    file_size_mb: int
    open_files: int
    processes: int
    scratch_mb: int = 512
    gpu: bool = False
    skip: frozenset[str] = field(default_factory=frozenset)

    def to_json(self) -> dict:
        return {
            "scratch": self.scratch,
            "read_paths": list(self.read_paths),
            "memory_mb": self.memory_mb,
            "cpu_s": self.cpu_s,
            "file_size_mb": self.file_size_mb,
            "open_files": self.open_files,
            "processes": self.processes,
            "scratch_mb": self.scratch_mb,
            "gpu": self.gpu,
            "skip": sorted(self.skip),
        }

    @classmethod
    def from_json(cls, data: Mapping) -> LayerPlan:
        return cls(
            scratch=str(data["scratch"]),
            read_paths=tuple(str(p) for p in data["read_paths"]),
            memory_mb=int(data["memory_mb"]),
            cpu_s=int(data["cpu_s"]),
            file_size_mb=int(data["file_size_mb"]),
            open_files=int(data["open_files"]),
            processes=int(data["processes"]),
            scratch_mb=int(data["scratch_mb"]),
            gpu=bool(data.get("gpu", False)),
            skip=frozenset(str(s) for s in data.get("skip", ())),
        )


def gpu_devices() -> tuple[str, ...]:
    return tuple(sorted(glob.glob("/dev/nvidia*")))


def python_read_paths() -> tuple[str, ...]:
    """What every worker may read of Python: the standard library, site-packages, this package.

    Not every ``sys.path`` entry: a ``PYTHONPATH`` pointing at a home directory must not make
    that directory readable. Real paths are added too (symlinked installations).
    """
    import sysconfig

    import pipewarden

    paths: list[str] = []
    for scheme_vars in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            try:
                paths.append(sysconfig.get_path(key, vars=scheme_vars or None))
            except KeyError:  # pragma: no cover - every CPython has these
                continue
    paths.extend(p for p in sys.path if p and ("site-packages" in p or "dist-packages" in p or "lib-dynload" in p))
    paths.append(os.path.dirname(os.path.dirname(os.path.abspath(pipewarden.__file__))))
    # The install locations of the packages already imported by the host (torch, diffusers,
    # RestrictedPython, ...): the folder holding each top-level package, wherever it was
    # installed (a --target dir on PYTHONPATH, a vendored site dir), never a broad parent.
    for name, module in list(sys.modules.items()):
        if "." in name or module is None or name == "__main__":
            continue
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not os.path.isabs(file):
            continue
        pkg_dir = os.path.dirname(file)
        paths.append(os.path.dirname(pkg_dir) if os.path.basename(file).startswith("__init__.") else pkg_dir)
    out: list[str] = []
    for p in paths:
        if not p or not os.path.isdir(p):
            continue
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if q not in out and q not in _TOO_BROAD:
                out.append(q)
    return tuple(out)


def scrubbed_environment(scratch: str, source: Mapping[str, str]) -> dict[str, str]:
    env = {k: source[k] for k in ENV_PASSTHROUGH if k in source}
    env.update(
        {
            "PATH": "/usr/bin:/bin",
            "HOME": scratch,
            "TMPDIR": scratch,
            "USER": "pipewarden",
            "LOGNAME": "pipewarden",
            "HF_HOME": os.path.join(scratch, "hf"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "DIFFUSERS_DISABLE_REMOTE_CODE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "CUDA_CACHE_PATH": os.path.join(scratch, "cuda-cache"),
            "TORCHINDUCTOR_CACHE_DIR": os.path.join(scratch, "inductor"),
            "XDG_CACHE_HOME": os.path.join(scratch, "cache"),
        }
    )
    return env


def _apply_env(plan: LayerPlan) -> LayerStatus:
    env = scrubbed_environment(plan.scratch, os.environ)
    os.environ.clear()
    os.environ.update(env)
    sys.dont_write_bytecode = True
    return LayerStatus("env", True, f"{len(env)} variables kept, HF_HUB_OFFLINE=1")


def _ns_inode(kind: str) -> str:
    try:
        return os.readlink(f"/proc/self/ns/{kind}")
    except OSError:
        return "?"


def _map_own_ids(uid: int, gid: int) -> None:
    """In a new user namespace: map our own uid/gid to themselves (files we create keep them)."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode("ascii"))
        finally:
            os.close(fd)


def _mount_scratch(plan: LayerPlan) -> LayerStatus:
    """A tmpfs of ``scratch_mb`` over the scratch dir, in the worker's own mount namespace.

    Every mount is made private first so that nothing propagates back to the host's namespace.
    The host keeps its own directory (it holds ``worker.log``, opened before this); what the
    worker writes lands in memory bounded in total, and disappears with the worker.
    """
    try:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        sc.mount("tmpfs", plan.scratch, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"size={int(plan.scratch_mb)}m,mode=0700")
    except OSError as exc:
        return LayerStatus("scratch-fs", False, f"mount failed: {exc.strerror or exc}; scratch is a host directory")
    return LayerStatus("scratch-fs", True, f"scratch is a private tmpfs of {plan.scratch_mb} MiB")


def _apply_namespaces(plan: LayerPlan, wanted: Iterable[str]) -> dict[str, LayerStatus]:
    """Unshare the namespaces of the ``wanted`` layers (``netns``, ``ipcns``, ``scratch-fs``) in one call.

    As root the namespaces are unshared directly; otherwise inside a new user namespace (which
    gives the calls the privilege they need there and nowhere else), where our own uid and gid
    are mapped to themselves.
    """
    wanted = [n for n in wanted if n in _NAMESPACE_FLAGS]
    if not wanted:
        return {}
    flags = 0
    for name in wanted:
        flags |= _NAMESPACE_FLAGS[name]
    root = os.geteuid() == 0
    uid, gid = os.geteuid(), os.getegid()
    try:
        sc.unshare(flags if root else flags | sc.CLONE_NEWUSER)
    except OSError as exc:
        return {n: LayerStatus(n, False, f"unshare failed: {exc.strerror or exc}") for n in wanted}
    out: dict[str, LayerStatus] = {}
    if "netns" in wanted:
        try:
            import socket

            ifaces = sorted(name for _i, name in socket.if_nameindex())
        except OSError:
            ifaces = []
        out["netns"] = LayerStatus("netns", True, f"own network namespace, interfaces: {', '.join(ifaces) or 'none'} (down)")
    if "ipcns" in wanted:
        out["ipcns"] = LayerStatus("ipcns", True, f"own IPC and UTS namespaces ({_ns_inode('ipc')})")
    mapped: str | None = None
    if not root:
        try:
            _map_own_ids(uid, gid)
        except OSError as exc:
            mapped = f"uid map failed: {exc.strerror or exc}"
    if "scratch-fs" in wanted:
        out["scratch-fs"] = LayerStatus("scratch-fs", False, mapped) if mapped else _mount_scratch(plan)
    return out


def _apply_uid(plan: LayerPlan) -> LayerStatus:
    if os.geteuid() != 0:
        return LayerStatus("uid", False, f"not root (uid {os.geteuid()}): cannot switch to a per-worker uid")
    uid = _WORKER_UID_BASE + os.getpid()
    try:
        os.chown(plan.scratch, uid, uid)
        last = sc.cap_last_cap()
        for cap in range(last + 1):
            if cap != sc.CAP_DAC_READ_SEARCH:
                try:
                    sc.prctl(sc.PR_CAPBSET_DROP, cap)
                except OSError:
                    pass
        sc.prctl(sc.PR_SET_KEEPCAPS, 1)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        # Keep only CAP_DAC_READ_SEARCH so the worker can still read the Python installation and
        # snapshot under root-only directories; Landlock limits what it may read, seccomp
        # denies open_by_handle_at (the one dangerous use of that capability).
        sc.capset_only((sc.CAP_DAC_READ_SEARCH,))
        sc.prctl(sc.PR_SET_KEEPCAPS, 0)
        try:
            sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
        except OSError:
            pass
    except OSError as exc:
        return LayerStatus("uid", False, f"switching uid failed: {exc.strerror or exc}")
    return LayerStatus("uid", True, f"uid/gid {uid}, no groups, capabilities: dac_read_search only")


def cpu_budget(cpu_s: int) -> None:
    """Give the next request ``cpu_s`` seconds of CPU from now (the soft RLIMIT_CPU, all threads).

    Over it the kernel sends SIGXCPU (default action: the worker dies) and the host reports
    which request went over. Called by the worker itself, before it reads each request.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + int(cpu_s)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _apply_rlimits(plan: LayerPlan) -> LayerStatus:
    mem = plan.memory_mb * 1024 * 1024
    parts: list[str] = []
    limits: list[tuple[str, int, int, int]] = [
        ("RLIMIT_DATA", resource.RLIMIT_DATA, mem, mem),
        # CPU: the soft limit is a per-request budget; the worker moves it before each request
        # (``cpu_budget``) so a long-lived service is not ended by its total. The hard limit
        # stays open for that; the host's wall clock bounds every request regardless.
        ("RLIMIT_CPU", resource.RLIMIT_CPU, plan.cpu_s, resource.RLIM_INFINITY),
        ("RLIMIT_FSIZE", resource.RLIMIT_FSIZE, plan.file_size_mb * 1024 * 1024, plan.file_size_mb * 1024 * 1024),
        ("RLIMIT_NOFILE", resource.RLIMIT_NOFILE, plan.open_files, plan.open_files),
        ("RLIMIT_NPROC", resource.RLIMIT_NPROC, plan.processes, plan.processes),
        ("RLIMIT_CORE", resource.RLIMIT_CORE, 0, 0),
    ]
    if not plan.gpu:
        # CUDA reserves huge (PROT_NONE) address ranges, so an address-space limit is only set
        # where no GPU can be used; RLIMIT_DATA bounds real (writable, private) memory in both.
        limits.insert(0, ("RLIMIT_AS", resource.RLIMIT_AS, mem, mem))
    failed: list[str] = []
    for name, which, soft, hard in limits:
        try:
            cur_soft, cur_hard = resource.getrlimit(which)
            if cur_hard != resource.RLIM_INFINITY:
                hard = min(hard, cur_hard)
                soft = min(soft, hard)
            resource.setrlimit(which, (soft, hard))
            parts.append(name[7:].lower())
        except (OSError, ValueError):
            failed.append(name)
    if failed:
        return LayerStatus("rlimits", False, "could not set " + ", ".join(failed))
    nproc = "" if os.geteuid() != 0 else " (nproc ignored: still root)"
    return LayerStatus("rlimits", True, f"{plan.memory_mb} MiB, {plan.cpu_s} s CPU per request: {', '.join(parts)}{nproc}")


def landlock_rules(plan: LayerPlan) -> list[_landlock.Rule]:
    rules = [_landlock.Rule(p, _landlock.READ) for p in (*python_read_paths(), *_SYSTEM_READ)]
    pid_dir = f"/proc/{os.getpid()}"
    rules.append(_landlock.Rule(pid_dir, _landlock.READ))
    rules.extend(_landlock.Rule(p, _landlock.READ) for p in plan.read_paths)
    rules.append(_landlock.Rule("/dev/null", _landlock.READ_FILE | _landlock.WRITE_FILE | _landlock.TRUNCATE))
    rules.append(_landlock.Rule(plan.scratch, _landlock.fs_rights(99)))
    if plan.gpu:
        # The CUDA driver opens files of its own /proc/<pid> for writing with O_TRUNC (measured on
        # an H200: without WRITE_FILE|TRUNCATE there, cudaGetDeviceCount fails). Own process only.
        rules.append(_landlock.Rule(pid_dir, _landlock.READ | _landlock.WRITE_FILE | _landlock.TRUNCATE))
        rules.extend(_landlock.Rule(p, _landlock.READ) for p in _GPU_READ)
        rules.extend(_landlock.Rule(p, _landlock.DEVICE_RW) for p in gpu_devices())
    return rules


def _apply_landlock(plan: LayerPlan) -> list[LayerStatus]:
    abi = _landlock.abi_version()
    if abi < 1:
        why = "Landlock not available in this kernel" if sc.ARCH else "unsupported architecture"
        return [LayerStatus(n, False, why) for n in ("landlock-fs", "landlock-net", "landlock-scope")]
    try:
        applied = _landlock.restrict(landlock_rules(plan), abi=abi)
    except OSError as exc:
        why = f"Landlock ABI {abi}: {exc.strerror or exc}"
        return [LayerStatus(n, False, why) for n in ("landlock-fs", "landlock-net", "landlock-scope")]
    return [
        LayerStatus("landlock-fs", True, f"ABI {abi}: {applied.rules} read rules, write only to scratch"),
        LayerStatus("landlock-net", applied.net, "TCP bind/connect denied" if applied.net else f"ABI {abi} < 4"),
        LayerStatus(
            "landlock-scope", applied.scope, "signals + abstract unix sockets scoped" if applied.scope else f"ABI {abi} < 6"
        ),
    ]


def _apply_seccomp(plan: LayerPlan) -> LayerStatus:
    if sc.ARCH is None:
        return LayerStatus("seccomp", False, "unsupported architecture")
    try:
        count = _seccomp.install(sc.ARCH, allow_unix_sockets=plan.gpu)
    except OSError as exc:
        return LayerStatus("seccomp", False, f"filter refused: {exc.strerror or exc}")
    sockets = "AF_UNIX sockets only (GPU)" if plan.gpu else "no sockets"
    return LayerStatus("seccomp", True, f"{sc.ARCH}: {count} syscalls denied, no fork/exec, {sockets}")


def apply_all(plan: LayerPlan) -> tuple[LayerStatus, ...]:
    """Apply every layer to the calling (single-threaded, freshly forked) process, in order."""
    out: list[LayerStatus] = []

    def skipped(name: str) -> bool:
        if name in plan.skip:
            out.append(LayerStatus(name, False, "disabled by the host (test only)"))
            return True
        return False

    if not skipped("env"):
        out.append(_apply_env(plan))
    namespaces = _apply_namespaces(plan, (n for n in _NAMESPACE_FLAGS if n not in plan.skip))
    for name in _NAMESPACE_FLAGS:
        if not skipped(name):
            out.append(namespaces[name])
    if not skipped("uid"):
        out.append(_apply_uid(plan))
    if not skipped("rlimits"):
        out.append(_apply_rlimits(plan))
    try:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    except OSError:
        pass
    if "landlock-fs" in plan.skip:  # one ruleset: the three Landlock layers go together
        out.extend(LayerStatus(n, False, "disabled by the host (test only)") for n in ("landlock-fs", "landlock-net", "landlock-scope"))
    else:
        out.extend(_apply_landlock(plan))
    if not skipped("seccomp"):
        out.append(_apply_seccomp(plan))
    return tuple(out)


def by_name(statuses: Iterable[LayerStatus]) -> dict[str, LayerStatus]:
    return {s.name: s for s in statuses}
