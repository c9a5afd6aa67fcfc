"""The host side of isolation: the fork-server connection and one worker's pipes.

Decides how the host waits for, bounds and stops a worker: every request has a wall-clock
deadline (``Limits.wall_s``), every reply is bounded (``Limits.max_message_mb``) and parsed by
``_messages.parse``; on timeout, oversize, garbage or hang-up the worker is killed through its
pidfd and the error says why. Trusts the fork server (our code, our socketpair); trusts nothing
a worker sends. Never forks the host (which may have run torch ops) and never unpickles.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pipewarden.errors import PipewardenError, ResourceLimitError, WorkerError, error_class
from pipewarden.isolation.layers import apply as _layers
from pipewarden.isolation.wire import messages as _messages
from pipewarden.isolation.wire.framing import FrameTimeout, PeerClosed, encode_frame, poll_ms, read_frame
from pipewarden.limits import Limits

#: Handles a mid-request message; returns the reply frame (header, payload) or None.
EventHandler = Callable[[_messages.WorkerMessage], "tuple[dict, bytes] | None"]

_START_TIMEOUT_S = 180.0
_READY_TIMEOUT_S = 60.0


def _spawn_env() -> dict[str, str]:
    import pipewarden

    pkg_root = str(Path(pipewarden.__file__).resolve().parent.parent)
    env = {k: os.environ[k] for k in _layers.ENV_PASSTHROUGH if k in os.environ}
    extra = os.environ.get("PYTHONPATH", "")
    env.update(
        {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join(p for p in (pkg_root, extra) if p),
            "HF_HUB_OFFLINE": "1",
            "DIFFUSERS_DISABLE_REMOTE_CODE": "1",
            "PYTHONNOUSERSITE": "1",
            # torch.cuda.is_available() (e.g. called by a library at import) must not initialise
            # the CUDA driver in the fork server: children of a CUDA-initialised parent cannot
            # use CUDA. The NVML-based check does not initialise it.
            "PYTORCH_NVML_BASED_CUDA_CHECK": "1",
            "HOME": tempfile.gettempdir(),
        }
    )
    return env


class ForkServer:
    """One ``_forkserver`` process for this host process, started on first use."""

    def __init__(self) -> None:
        import pipewarden

        host_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = host_sock
        self._lock = threading.Lock()
        cwd = str(Path(pipewarden.__file__).resolve().parent.parent)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipewarden.isolation._forkserver", "--fd", str(child_sock.fileno())],
            pass_fds=(child_sock.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=_spawn_env(),
            cwd=cwd,
            # Its own session and process group: a Ctrl-C in the terminal interrupts the host
            # only (one KeyboardInterrupt), not the fork server or its workers.
            start_new_session=True,
        )
        child_sock.close()
        self.ready_info: dict | None = None

    def wait_ready(self, timeout: float = _START_TIMEOUT_S) -> dict:
        if self.ready_info is None:
            with self._lock:
                if self.ready_info is None:
                    msg, _ = self._recv(timeout)
                    if not msg.get("ready"):
                        raise WorkerError("the fork server did not start", rule="worker.forkserver", fix="run `pipewarden doctor`")
                    self.ready_info = msg
        return self.ready_info

    def alive(self) -> bool:
        return self._proc.poll() is None

    def _recv(self, timeout: float) -> tuple[dict, list[int]]:
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            raise WorkerError(
                f"the fork server did not answer within {timeout:.0f} s",
                rule="worker.forkserver",
                fix="run `pipewarden doctor`; check that torch and diffusers import",
            )
        data, fds, _flags, _addr = socket.recv_fds(self._sock, 1 << 20, 4)
        if not data:
            raise WorkerError("the fork server exited", rule="worker.forkserver", fix="run `pipewarden doctor`")
        return json.loads(data), fds

    def _request(self, obj: dict, fds: list[int] | None = None, timeout: float = 30.0) -> tuple[dict, list[int]]:
        self.wait_ready()
        with self._lock:
            data = json.dumps(obj).encode("utf-8")
            try:
                if fds:
                    socket.send_fds(self._sock, [data], fds)
                else:
                    self._sock.send(data)
            except OSError:
                raise WorkerError("the fork server is gone", rule="worker.forkserver", fix="retry") from None
            return self._recv(timeout)

    def fork(self, plan: _layers.LayerPlan, *, test_hooks: bool) -> tuple[int, int, int, int]:
        """Start a worker; returns (pid, pidfd, request write fd, response read fd).

        The worker (a spare forked in advance, or a fresh child) has applied nothing yet: the
        first frame it reads is its plan, and it confines itself before answering "ready".
        """
        reply, fds = self._request({"op": "fork"})
        if not reply.get("ok") or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            raise WorkerError("the fork server could not start a worker", rule="worker.forkserver", fix="run `pipewarden doctor`")
        pidfd, req_w, resp_r = fds
        for fd in fds:
            os.set_inheritable(fd, False)
        try:
            os.write(req_w, encode_frame({"op": "plan", "plan": plan.to_json(), "test_hooks": test_hooks}))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise WorkerError("a new worker died before it got its plan", rule="worker.start", fix="retry") from None
        return int(reply["pid"]), pidfd, req_w, resp_r

    def exit_code(self, pid: int, *, wait: bool) -> int | None:
        reply, _ = self._request({"op": "status", "pid": pid, "wait": wait})
        return int(reply["code"]) if "code" in reply else None

    def ping(self) -> dict:
        return self._request({"op": "ping"})[0]

    def close(self) -> None:
        try:
            self._sock.close()
        finally:
            if self.ready_info is None:
                # Still importing torch (e.g. exit right after prestart() or a refusal): it
                # has nothing to finish; stop it now instead of waiting for its imports.
                self._proc.kill()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


_SERVER: ForkServer | None = None
_SERVER_LOCK = threading.Lock()


def fork_server(*, wait: bool = True) -> ForkServer:
    """The host's fork server, started on first use (and restarted if it died)."""
    global _SERVER
    with _SERVER_LOCK:
        if _SERVER is None or not _SERVER.alive():
            _SERVER = ForkServer()
        server = _SERVER
    if wait:
        if server.ready_info is None:
            from pipewarden._progress import status

            status("pipewarden: starting the isolated worker (the first start imports torch and diffusers)...")
        server.wait_ready()
    return server


@atexit.register
def _shutdown() -> None:
    global _SERVER
    if _SERVER is not None:
        _SERVER.close()
        _SERVER = None


_PRINTABLE = re.compile(r"[^\x20-\x7e\n]")

_SCRATCH_PREFIX = "pipewarden-worker-"
#: A file the host creates in each scratch dir it makes and holds an exclusive ``flock`` on for
#: the worker's life: a dir whose marker nobody holds belongs to a host that is gone.
_SCRATCH_MARKER = ".pipewarden-host"
#: A marker younger than this is never taken as stale (the instant between creating and locking it).
_STALE_AFTER_S = 60.0
_stale_checked = False


def _hold_scratch(scratch: str) -> int:
    """Create the scratch dir's marker and lock it; returns the fd (held until ``_finish``)."""
    fd = os.open(os.path.join(scratch, _SCRATCH_MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _stale(parent_fd: int, name: str, now: float) -> bool:
    """Whether ``name`` (in the temp dir) is a scratch dir of ours whose host is gone.

    Ours: a real directory (never a link) owned by this uid, holding a regular marker file owned
    by this uid, older than ``_STALE_AFTER_S``. Gone: nobody holds the marker's lock.
    """
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return False
        dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        mfd = os.open(_SCRATCH_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        os.close(dfd)
        return False
    try:
        mst = os.fstat(mfd)
        if not stat.S_ISREG(mst.st_mode) or mst.st_uid != os.geteuid() or now - mst.st_mtime < _STALE_AFTER_S:
            return False
        try:
            fcntl.flock(mfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its host still holds it
        return True
    finally:
        os.close(mfd)
        os.close(dfd)


def clean_stale_scratch(tmpdir: str | None = None, *, limit: int = 256) -> int:
    """Remove scratch dirs left by hosts that were killed (no ``close`` ran); returns how many.

    Only dirs this uid made (``_stale``); removal never follows a link (``shutil.rmtree`` on a
    descriptor). At most ``limit`` candidates per call, so a crowded temp dir cannot stall a load.
    """
    base = tmpdir or tempfile.gettempdir()
    try:
        parent_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    removed = 0
    now = time.time()
    try:
        with os.scandir(parent_fd) as entries:
            names = [e.name for e in entries if e.name.startswith(_SCRATCH_PREFIX)]
        for name in names[:limit]:
            if _stale(parent_fd, name, now) and shutil.rmtree.avoids_symlink_attacks:
                shutil.rmtree(name, ignore_errors=True, dir_fd=parent_fd)
                removed += 1
    finally:
        os.close(parent_fd)
    return removed


class WorkerProcess:
    """One worker, seen from the host: pipes, pidfd, limits, scratch dir."""

    def __init__(self, limits: Limits, *, read_paths: tuple[str, ...], test_hooks: bool = False, skip: frozenset[str] = frozenset()):
        self.limits = limits
        self.max_bytes = int(limits.max_message_mb) * 1024 * 1024
        global _stale_checked
        if not _stale_checked:
            _stale_checked = True
            clean_stale_scratch()
        self.scratch = tempfile.mkdtemp(prefix=_SCRATCH_PREFIX)
        self._marker = _hold_scratch(self.scratch)
        self.plan = _layers.LayerPlan(
            scratch=self.scratch,
            read_paths=read_paths,
            memory_mb=int(limits.memory_mb),
            cpu_s=int(limits.cpu_s),
            file_size_mb=int(limits.file_size_mb),
            scratch_mb=int(limits.scratch_mb),
            open_files=int(limits.open_files),
            processes=int(limits.processes),
            gpu=bool(_layers.gpu_devices()),
            skip=skip,
        )
        self._server = fork_server()
        self.pid, self._pidfd, self._req, self._resp = self._server.fork(self.plan, test_hooks=test_hooks)
        fl = fcntl.fcntl(self._req, fcntl.F_GETFL)
        fcntl.fcntl(self._req, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        self.closed = False
        self.reload_fix = "load the pipeline again"
        self._killed_by_host = False
        self._cpu_end: float | None = None  # the worker's CPU time at which this request is over budget
        self._lock = threading.RLock()
        ready = self._receive(time.monotonic() + min(_READY_TIMEOUT_S, float(limits.wall_s) + 30.0), "start")
        if not isinstance(ready, _messages.Ready):
            self.kill()
            raise WorkerError("the worker did not report ready", rule="worker.protocol", fix="run `pipewarden doctor`")
        self.layers = (
            *ready.layers,
            _layers.LayerStatus("wall-clock", True, f"host kills the worker (pidfd) after {limits.wall_s:g} s per request"),
        )

    # ---------------------------------------------------------------------------- messaging

    def request(
        self, header: dict, payload: bytes = b"", *, what: str, on_event: EventHandler | None = None
    ) -> _messages.WorkerMessage:
        """Send one request and return the worker's final answer.

        Mid-request messages (``CallbackRequest``, ``Progress``) go to ``on_event``; what it
        returns (a header and payload) is sent back to the worker. Time spent in ``on_event``
        (the user's callback, on the host) does not count against ``Limits.wall_s``. A
        mid-request message for a request that expects none is a protocol error (worker killed).
        """
        with self._lock:
            if self.closed:
                raise WorkerError("the isolated pipeline is closed", rule="worker.closed", fix=self.reload_fix)
            deadline = time.monotonic() + float(self.limits.wall_s)
            start = self._cpu_seconds()
            self._cpu_end = None if start is None else start + float(self.limits.cpu_s)
            try:
                self._send(encode_frame(header, payload), deadline, what)
                while True:
                    msg = self._receive(deadline, what)
                    if not isinstance(msg, (_messages.CallbackRequest, _messages.Progress)):
                        break
                    if on_event is None:
                        self.kill()
                        raise WorkerError(
                            f"the worker sent a {type(msg).__name__} during {what}",
                            rule="worker.protocol",
                            fix="the worker is broken or compromised; it was stopped",
                        )
                    started = time.monotonic()
                    reply = on_event(msg)
                    deadline += time.monotonic() - started
                    if reply is not None:
                        self._send(encode_frame(*reply), deadline, what)
            except KeyboardInterrupt:
                # Ctrl-C mid-request: the worker's state is unknown (it is still running the
                # request); stop it, so the KeyboardInterrupt is the only thing the user sees.
                self.kill()
                raise
            except BaseException:
                # Anything else that leaves the exchange half-done (the user's callback raising
                # is handled by on_event itself) leaves a worker we cannot talk to again.
                if not self.closed and not isinstance(sys.exc_info()[1], PipewardenError):
                    self.kill()
                raise
            if isinstance(msg, _messages.Failure):
                raise error_class(msg.error_class)(msg.what, rule=msg.rule, fix=msg.fix)
            return msg

    def _send(self, data: bytes, deadline: float, what: str) -> None:
        view = memoryview(data)
        poller = select.poll()
        poller.register(self._req, select.POLLOUT | select.POLLERR)
        while len(view):
            try:
                n = os.write(self._req, view)
                view = view[n:]
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timeout(what) from None
                poller.poll(poll_ms(left))
            except (BrokenPipeError, OSError):
                raise self._crashed(what) from None

    def _receive(self, deadline: float, what: str) -> _messages.WorkerMessage:
        try:
            frame = read_frame(self._resp, max_bytes=self.max_bytes, deadline=deadline, on_wait=lambda: self._check_cpu(what))
            return _messages.parse(frame)
        except FrameTimeout:
            raise self._timeout(what) from None
        except PeerClosed:
            raise self._crashed(what) from None
        except (ResourceLimitError, WorkerError):
            self.kill()
            raise

    def _cpu_seconds(self) -> float | None:
        """The worker's CPU time so far (all threads, user + system); None if it cannot be read."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        except (OSError, IndexError, ValueError):
            return None

    def _check_cpu(self, what: str) -> None:
        """``Limits.cpu_s`` kept by the host (red team 9 W6), checked while it waits for an answer.

        The worker also moves its own soft ``RLIMIT_CPU`` before each request (SIGXCPU, the fast
        path), but a limit the worker administers does not bind code in the worker: it can raise
        it (the hard limit stays open so that a long-lived service is not ended by its total,
        and only ``CAP_SYS_RESOURCE`` could set it per request from outside). So the host reads
        the worker's CPU time every ``WAIT_SLICE_S`` and stops it past the budget.
        """
        if self._cpu_end is None or self.closed:
            return
        used = self._cpu_seconds()
        if used is not None and used > self._cpu_end:
            self._killed_by_host = True
            self.kill()
            raise self._cpu_error(what)

    def _cpu_error(self, what: str) -> ResourceLimitError:
        return ResourceLimitError(
            f"the isolated pipeline used more than {self.limits.cpu_s:g} s of CPU during {what}; the worker was stopped",
            rule="limits.cpu",
            fix=f"{self.reload_fix}; give it a larger Limits(cpu_s=...) if the pipeline really needs more",
        )

    # ------------------------------------------------------------------------------- endings

    def _timeout(self, what: str) -> ResourceLimitError:
        self.kill()
        return ResourceLimitError(
            f"the isolated pipeline did not finish {what} within {self.limits.wall_s:g} s; the worker was killed",
            rule="limits.wall-clock",
            fix=f"{self.reload_fix}; give it a larger Limits(wall_s=...) if the pipeline really needs longer",
        )

    def _crashed(self, what: str) -> Exception:
        if not self._wait_exit(2.0):
            self._sigkill()
            self._wait_exit(2.0)
        tail = self._log_tail()
        code = None
        try:
            code = self._server.exit_code(self.pid, wait=True)
        except WorkerError:
            pass
        self._finish()
        if code is not None and code < 0 and -code == signal.SIGXCPU:
            return self._cpu_error(what)
        how = "hung up" if code is None else (f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}")
        return WorkerError(
            f"the isolated worker {how} during {what}" + (f"; worker log ends: {tail}" if tail else ""),
            rule="worker.crashed",
            fix=f"{self.reload_fix}; if it keeps crashing, the pipeline or its inputs are at fault",
        )

    def _log_tail(self) -> str:
        # The worker owns everything in its scratch directory (red team round 7): the log may have
        # been replaced by a link to a host file or by a FIFO. Read it like any hostile path:
        # no link followed, never blocking, a regular file only, at most its last 400 bytes.
        from pipewarden import fsaccess

        try:
            with fsaccess.open_in(self.scratch, "worker.log", links=False) as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 400))
                text = fh.read(400).decode("utf-8", "replace")
        except (OSError, PipewardenError):
            return ""
        return _PRINTABLE.sub("?", text.strip())[-300:]

    def _wait_exit(self, timeout: float) -> bool:
        if self._pidfd < 0:
            return True
        ready, _, _ = select.select([self._pidfd], [], [], timeout)
        return bool(ready)

    def _sigkill(self) -> None:
        if self._pidfd >= 0:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                self._killed_by_host = True
            except ProcessLookupError:
                pass
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise

    def kill(self) -> None:
        self._sigkill()
        self._finish()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in (self._req, self._resp, self._pidfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._pidfd = -1
        shutil.rmtree(self.scratch, ignore_errors=True)
        try:
            os.close(self._marker)  # after the removal: the dir is never unlocked while it exists
        except OSError:
            pass

    def close(self) -> None:
        """Ask the worker to exit, then make sure it has (kill after a short grace period)."""
        with self._lock:
            if self.closed:
                return
            try:
                os.write(self._req, encode_frame({"op": "close"}))
            except OSError:
                pass
            if not self._wait_exit(2.0):
                self.kill()
            else:
                self._finish()
            try:
                self._server.exit_code(self.pid, wait=False)
            except WorkerError:
                pass
