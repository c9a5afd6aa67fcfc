"""The fork server: a process that has only imported torch, diffusers and transformers, and forks workers.

Run as ``python -m pipewarden.isolation._forkserver --fd N`` by the host (``_client``),
once per host process. It never runs a torch operation (a multi-threaded op before ``fork``
makes children hang) and never runs pipeline code; it only forks. Once its idle-time warm-up
imports are done it keeps one *spare* child forked in advance (a fork copies about a gigabyte of
page tables: ~12 ms), which waits, doing nothing, for its plan. A fork request is answered with
the spare (or a fresh child) as three descriptors over SCM_RIGHTS: a pidfd (so the host can
kill the worker without pid-reuse races), the write end of its request pipe and the read end of
its response pipe. The host's first frame on the request pipe is the worker's ``LayerPlan``.
The server reaps its children and answers exit-status queries. It exits when the host closes
the control socket.

Trusts the host (the other end of a private socketpair); a worker never sees this socket.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import sys

#: Imported before the server says "ready" (what the first worker needs at once).
_PRELOAD = (
    "torch",
    "diffusers",
    "safetensors.torch",
    "numpy",
    "PIL.Image",
    "transformers",  # text encoders and tokenizers are built in the worker
    "pipewarden.isolation._worker",
)
#: Imported while idle, after "ready": later workers then start without import costs.
_WARM = (
    "diffusers.pipelines.pipeline_utils",
    "diffusers.models.unets.unet_2d",
    "diffusers.schedulers",
    "diffusers.models",
    "diffusers.models.unets.unet_2d_condition",
    "diffusers.models.autoencoders.autoencoder_kl",
    "transformers.models.clip.modeling_clip",
    "transformers.models.clip.tokenization_clip",
)
_MAX_MSG = 1 << 20


def _send(ctl: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode("utf-8")
    if fds:
        socket.send_fds(ctl, [data], fds)
    else:
        ctl.send(data)


class _Server:
    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl
        self.children: dict[int, int] = {}  # pid -> our pidfd
        self.statuses: dict[int, int] = {}  # pid -> waitstatus_to_exitcode
        self.poller = select.poll()
        self.poller.register(ctl.fileno(), select.POLLIN)
        self.warm = [m for m in _WARM]
        self.spare: tuple[int, int, int] | None = None  # (pid, request write end, response read end)

    def serve(self) -> None:
        # The host usually asks for its first worker right after "ready": give it a moment
        # before starting a warm-up import that would make that request wait.
        grace_ms = 250
        while True:
            idle_work = bool(self.warm) or self.spare is None
            events = self.poller.poll(grace_ms if idle_work else None)
            grace_ms = 0
            if not events and self.warm:
                name = self.warm.pop(0)
                try:
                    importlib.import_module(name)
                except Exception:  # noqa: S110 - warm-up is best effort
                    pass
                continue
            if not events and self.spare is None:
                self.spare = self._spawn()
                continue
            for fd, _ev in events:
                if fd == self.ctl.fileno():
                    if not self._handle():
                        return
                else:
                    self._reap_fd(fd)

    def _reap_fd(self, pidfd: int) -> None:
        for pid, fd in list(self.children.items()):
            if fd == pidfd:
                self._reap(pid, block=True)

    def _reap(self, pid: int, *, block: bool) -> bool:
        try:
            got, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            got, status = pid, 0
        if got == 0:
            return False
        self.statuses[pid] = os.waitstatus_to_exitcode(status)
        fd = self.children.pop(pid, None)
        if fd is not None:
            self.poller.unregister(fd)
            os.close(fd)
        if self.spare is not None and self.spare[0] == pid:  # the spare died unused
            os.close(self.spare[1])
            os.close(self.spare[2])
            self.spare = None
        while len(self.statuses) > 4096:
            self.statuses.pop(next(iter(self.statuses)))
        return True

    def _handle(self) -> bool:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.ctl, _MAX_MSG, 4)
        except OSError:
            return False
        if not msg:
            return False
        try:
            req = json.loads(msg)
            op = req["op"]
        except (ValueError, KeyError, TypeError):
            for fd in fds:
                os.close(fd)
            _send(self.ctl, {"ok": False, "error": "bad request"})
            return True
        if op == "fork" and not fds:
            self._hand_out()
        elif op == "status":
            pid = int(req["pid"])
            if pid not in self.statuses and pid in self.children:
                self._reap(pid, block=bool(req.get("wait")))
            if pid in self.statuses:
                _send(self.ctl, {"ok": True, "pid": pid, "code": self.statuses.pop(pid)})
            else:
                _send(self.ctl, {"ok": True, "pid": pid, "running": pid in self.children})
        elif op == "ping":
            _send(self.ctl, {"ok": True, "warm_left": len(self.warm), "spare": self.spare is not None, "threads": _threads()})
        else:
            for fd in fds:
                os.close(fd)
            _send(self.ctl, {"ok": False, "error": f"unknown op {op!r}"})
        return True

    def _spawn(self) -> tuple[int, int, int]:
        """Fork a worker that waits for its plan; returns (pid, request write end, response read end)."""
        from pipewarden.isolation import _worker
        req_r, req_w = os.pipe2(os.O_CLOEXEC)
        resp_r, resp_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            close = [self.ctl.fileno(), req_w, resp_r, *self.children.values()]
            if self.spare is not None:
                close += [self.spare[1], self.spare[2]]
            _worker.run(req_r, resp_w, close_fds=tuple(close))
        os.close(req_r)
        os.close(resp_w)
        pidfd = os.pidfd_open(pid)
        self.children[pid] = pidfd
        self.poller.register(pidfd, select.POLLIN)
        return pid, req_w, resp_r

    def _hand_out(self) -> None:
        spare, self.spare = self.spare, None
        pid, req_w, resp_r = spare if spare is not None else self._spawn()
        pidfd = self.children[pid]
        try:
            _send(self.ctl, {"ok": True, "pid": pid, "spare": spare is not None, "threads": _threads()}, [pidfd, req_w, resp_r])
        finally:
            os.close(req_w)
            os.close(resp_r)


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    fd = int(args[args.index("--fd") + 1])
    # The host started us in our own process group, so a terminal's Ctrl-C does not reach us;
    # a SIGINT sent to us anyway is not a reason to print a traceback (workers reset it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl = socket.socket(fileno=fd)
    try:
        return _main(ctl)
    except (BrokenPipeError, ConnectionError, KeyboardInterrupt):
        return 0  # the host went away (e.g. exited during our start-up): nothing to report


def _main(ctl: socket.socket) -> int:
    try:
        from pipewarden.isolation.layers import syscalls as sc
        sc.prctl(sc.PR_SET_PDEATHSIG, 9)
    except OSError:
        pass
    for name in _PRELOAD:
        importlib.import_module(name)
    from pipewarden.isolation._worker import trusted_modules

    for name in trusted_modules():
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    _send(ctl, {"ok": True, "ready": True, "pid": os.getpid(), "threads": _threads()})
    _Server(ctl).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
