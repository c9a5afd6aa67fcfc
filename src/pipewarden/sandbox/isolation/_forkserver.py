"""The fork server: a process that has only imported torch and diffusers, and forks workers.

Run as ``python -m pipewarden.sandbox.isolation._forkserver --fd N`` by the host (``_client``),
once per host process. It never runs a torch operation (a multi-threaded op before ``fork``
makes children hang) and never runs pipeline code; it only forks. Each fork request carries a
``LayerPlan`` and the two pipe ends of the new worker (SCM_RIGHTS); the reply carries a pidfd
of the worker so that the host can kill it without pid-reuse races. The server reaps its
children and answers exit-status queries. It exits when the host closes the control socket.

Trusts the host (the other end of a private socketpair); a worker never sees this socket.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import socket
import sys

#: Imported before the server says "ready" (what the first worker needs at once).
_PRELOAD = (
    "torch",
    "diffusers",
    "safetensors.torch",
    "numpy",
    "PIL.Image",
    "pipewarden.sandbox.isolation._worker",
)
#: Imported while idle, after "ready": later workers then start without import costs.
_WARM = (
    "diffusers.pipelines.pipeline_utils",
    "diffusers.models.unets.unet_2d",
    "diffusers.schedulers",
    "diffusers.models",
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

    def serve(self) -> None:
        while True:
            events = self.poller.poll(0 if self.warm else None)
            if not events and self.warm:
                name = self.warm.pop(0)
                try:
                    importlib.import_module(name)
                except Exception:  # noqa: S110 - warm-up is best effort
                    pass
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
        if op == "fork" and len(fds) == 2:
            self._fork(req, fds)
        elif op == "status":
            pid = int(req["pid"])
            if pid not in self.statuses and pid in self.children:
                self._reap(pid, block=bool(req.get("wait")))
            if pid in self.statuses:
                _send(self.ctl, {"ok": True, "pid": pid, "code": self.statuses.pop(pid)})
            else:
                _send(self.ctl, {"ok": True, "pid": pid, "running": pid in self.children})
        elif op == "ping":
            _send(self.ctl, {"ok": True, "warm_left": len(self.warm), "threads": _threads()})
        else:
            for fd in fds:
                os.close(fd)
            _send(self.ctl, {"ok": False, "error": f"unknown op {op!r}"})
        return True

    def _fork(self, req: dict, fds: list[int]) -> None:
        from pipewarden.sandbox.isolation import _layers, _worker

        req_r, resp_w = fds
        plan = _layers.LayerPlan.from_json(req["plan"])
        threads = _threads()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            close = (self.ctl.fileno(), *self.children.values())
            _worker.run(req_r, resp_w, plan, test_hooks=bool(req.get("test_hooks")), close_fds=close)
        os.close(req_r)
        os.close(resp_w)
        pidfd = os.pidfd_open(pid)
        self.children[pid] = pidfd
        self.poller.register(pidfd, select.POLLIN)
        _send(self.ctl, {"ok": True, "pid": pid, "threads": threads}, [pidfd])


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    fd = int(args[args.index("--fd") + 1])
    ctl = socket.socket(fileno=fd)
    try:
        from pipewarden.sandbox.isolation import _syscalls as sc

        sc.prctl(sc.PR_SET_PDEATHSIG, 9)
    except OSError:
        pass
    for name in _PRELOAD:
        importlib.import_module(name)
    from pipewarden.sandbox.isolation._worker import trusted_modules

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
