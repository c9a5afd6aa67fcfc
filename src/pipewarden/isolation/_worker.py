"""The worker side: confine this freshly forked process, then load and run one vetted pipeline.

Runs only in a child of the fork server. Decides the order: stdio -> layers (see ``_layers``) ->
tripwire -> "ready"; only then does it read the pipeline source and weights (from the host's
request and the verified snapshot), re-verifying every sha256 itself before use. Trusts the
host's requests (the host is the trusted side of the pipes); trusts nothing it loads.
Exceptions never cross as objects: they are sent as (class name, what, rule, fix) text.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import inspect
import json
import math
import os
import signal
import sys
import traceback
import types
from pathlib import Path
from typing import Any

from pipewarden.errors import IntegrityError, PipewardenError, PolicyViolation
from pipewarden.isolation.layers import apply as _layers
from pipewarden.isolation.wire import rng as _rng
from pipewarden.isolation.wire.codec import Decoder, Encoder, load_tensors
from pipewarden.isolation.wire.framing import PeerClosed, read_frame, write_frame
from pipewarden.isolation.wire.messages import LoadRequest


def trusted_modules() -> tuple[str, ...]:
    """pipewarden modules a worker may need; imported before the tripwire is armed (cheap).

    Library modules (torch, diffusers) may still be imported lazily after arming: the tripwire
    lets installed library files through, but not project files outside site-packages.
    """
    import pkgutil

    import pipewarden.sandbox

    names = [
        "pipewarden.loader.components",
        "pipewarden.loader.snapshot",
        "pipewarden.loader.digests",
        "pipewarden.loader.records",
        "pipewarden.loader._safetensors",
    ]
    for info in pkgutil.iter_modules(pipewarden.sandbox.__path__):
        if info.name == "isolation" or info.name.startswith(("audit", "_audit")):
            continue
        names.append(f"pipewarden.sandbox.{info.name}")
    return tuple(names)


_MAX_REQUEST = 1 << 40  # the host is trusted; its requests are bounded by what it sends
_ALLOC_MARKERS = ("can't allocate memory", "not enough memory", "out of memory", "cannot allocate memory")


def run(req_fd: int, resp_fd: int, *, close_fds: tuple[int, ...]) -> None:
    """Entry point in the forked child; never returns.

    Waits for the host's first frame (its ``LayerPlan``: trusted, from the host), then confines
    itself and serves requests.
    """
    code = 1
    try:
        from pipewarden.isolation.layers import syscalls as sc
        parent = os.getppid()
        try:
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass
        if os.getppid() != parent:
            os._exit(1)
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            first = read_frame(req_fd, max_bytes=1 << 24)
        except PeerClosed:
            os._exit(0)  # a spare nobody asked for (the fork server is shutting down)
        if first.header.get("op") != "plan":
            os._exit(2)
        plan = _layers.LayerPlan.from_json(first.header["plan"])
        test_hooks = bool(first.header.get("test_hooks"))
        code = _Worker(req_fd, resp_fd, plan, test_hooks=test_hooks, close_fds=()).main()
    except BaseException:  # noqa: B036 - last resort in a child: report on stderr, then exit
        try:
            traceback.print_exc()
        except BaseException:  # noqa: B036
            pass
    finally:
        os._exit(code)


def _jsonable(value: Any, depth: int = 0) -> Any:
    if depth > 16:
        return repr(value)[:200]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    return repr(value)[:200]


def _error_header(exc: BaseException) -> dict:
    if isinstance(exc, PipewardenError):
        return {"kind": "error", "error": type(exc).__name__, "what": exc.what, "rule": exc.rule, "fix": exc.fix}
    text = str(exc)[:2000]
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return {
            "kind": "error",
            "error": "ResourceLimitError",
            "what": "the pipeline wrote a file larger than the worker's limit",
            "rule": "limits.file-size",
            "fix": "raise Limits(file_size_mb=...) if the pipeline really needs to",
        }
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return {
            "kind": "error",
            "error": "ResourceLimitError",
            "what": "the pipeline filled the worker's scratch space",
            "rule": "limits.scratch",
            "fix": "raise Limits(scratch_mb=...) if the pipeline really needs to write that much",
        }
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(m in text.lower() for m in _ALLOC_MARKERS)):
        return {
            "kind": "error",
            "error": "ResourceLimitError",
            "what": f"the pipeline ran out of memory in the worker ({type(exc).__name__}: {text[:300]})",
            "rule": "limits.memory",
            "fix": "raise Limits(memory_mb=...) if the pipeline really needs more",
        }
    return {
        "kind": "error",
        "error": "PipewardenError",
        "what": f"the pipeline raised {type(exc).__name__}: {text}",
        "rule": "worker.pipeline-error",
        "fix": "see the message; the pipeline code or its inputs caused it",
    }


class _Worker:
    def __init__(self, req_fd: int, resp_fd: int, plan: _layers.LayerPlan, *, test_hooks: bool, close_fds: tuple[int, ...]):
        self.req_fd = req_fd
        self.resp_fd = resp_fd
        self.plan = plan
        self.test_hooks = test_hooks
        self.close_fds = close_fds
        self.pipe: Any = None
        self.methods: frozenset[str] = frozenset()
        self.load_built: Any = None
        self.gpu_fraction: float | None = None
        self._parent = 0

    # -------------------------------------------------------------------------------- setup

    def _prepare_process(self) -> None:
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        # Over RLIMIT_FSIZE a write fails with EFBIG (an error the host sees) instead of a kill.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        self._parent = os.getppid()
        self._die_with_parent()
        for fd in self.close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        os.setsid()
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        log = os.open(os.path.join(self.plan.scratch, "worker.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)

    def _die_with_parent(self) -> None:
        """SIGKILL this worker when the fork server dies (it dies with the host)."""
        from pipewarden.isolation.layers import syscalls as sc
        try:
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass
        if os.getppid() != self._parent:
            os._exit(1)

    def _arm_tripwire(self) -> _layers.LayerStatus:
        if "tripwire" in self.plan.skip:
            return _layers.LayerStatus("tripwire", False, "disabled by the host (test only)")
        try:
            from pipewarden.sandbox import tripwire
        except ImportError:
            return _layers.LayerStatus("tripwire", False, "pipewarden.sandbox.tripwire not available")
        arm = getattr(tripwire, "arm_process_wide", None) or getattr(tripwire, "arm_process", None)
        if arm is None:
            return _layers.LayerStatus("tripwire", False, "no process-wide arm function in the tripwire module")
        try:
            arm()
        except Exception as exc:  # a failing tripwire is reported, not fatal
            return _layers.LayerStatus("tripwire", False, f"arming failed: {type(exc).__name__}")
        return _layers.LayerStatus("tripwire", True, "audit hook armed process-wide (all threads)")

    def main(self) -> int:
        self._prepare_process()
        statuses = list(_layers.apply_all(self.plan))
        self._die_with_parent()  # again: a uid change clears the parent-death signal
        # Trusted imports the worker needs, done before the tripwire is armed process-wide
        # (the fork server may not have finished warming up).
        for name in trusted_modules():
            try:
                importlib.import_module(name)
            except ImportError:
                pass
        statuses.append(self._arm_tripwire())
        self._send({"kind": "ready", "pid": os.getpid(), "layers": [s.to_json() for s in statuses]})
        while True:
            try:
                frame = read_frame(self.req_fd, max_bytes=_MAX_REQUEST)
            except PeerClosed:
                return 0
            op = frame.header.get("op")
            if op == "close":
                return 0
            try:
                _layers.cpu_budget(self.plan.cpu_s)  # Limits.cpu_s is per request, not per life
            except (OSError, ValueError):
                pass  # the rlimits layer is inactive here (reported at start)
            try:
                with self._trusted_context(op):
                    header, payload = self._dispatch(op, frame)
            except BaseException as exc:  # noqa: B036 - everything goes back as text
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    return 1
                header, payload = _error_header(exc), b""
            self._send(header, payload)

    def _trusted_context(self, op: object):
        """The worker's own (trusted) request handling runs like host code does in-process.

        The tripwire is armed process-wide, so every other thread (a new thread has an empty
        context) is armed for good. In this main-thread context the worker's trusted steps (the
        sandbox's restricted compile, loading weights, lazy library imports, encoding results)
        run suspended, exactly as on the host in-process; every function of the vetted pipeline
        re-arms itself when called. Test hooks choose for themselves.
        """
        if op == "hook":
            return contextlib.nullcontext()
        from pipewarden.sandbox import tripwire

        return tripwire.suspended()

    def _dispatch(self, op: object, frame) -> tuple[dict, bytes]:
        if op == "load":
            return self._load(LoadRequest.parse(frame.header), frame.payload), b""
        if op == "call":
            return self._call(frame.header, frame.payload)
        if op == "to":
            return self._to(frame.header, frame.payload), b""
        if op == "set_component":
            return self._set_component(frame.header, frame.payload), b""
        if op == "audit":
            return self._audit(frame.header, frame.payload), b""
        if op == "hook" and self.test_hooks:
            with self._hook_context(frame.header):
                return self._hook(frame.header), b""
        raise PolicyViolation(f"unknown request {op!r}", rule="worker.protocol")

    def _send(self, header: dict, payload: bytes = b"") -> None:
        write_frame(self.resp_fd, header, payload)

    # ------------------------------------------------------------------------------- requests

    def _load(self, req: LoadRequest, payload: bytes) -> dict:
        """Defence in depth: re-verify the admitted digests (source now, each weight file while
        it is loaded) before anything is compiled or built."""
        import torch

        from pipewarden.loader.components import load_components
        from pipewarden.loader.snapshot import FileRecord, Snapshot

        source_bytes = payload if req.source_len is None else payload[: req.source_len]
        if hashlib.sha256(source_bytes).hexdigest() != req.source_sha256:
            raise IntegrityError(
                f"{req.filename}: the source received by the worker does not match its sha256",
                rule="worker.source-mismatch",
                fix="reload the pipeline",
            )
        files = {f.relpath: FileRecord(relpath=f.relpath, sha256=f.sha256, size=f.size) for f in req.files}
        snapshot = Snapshot(
            root=Path(req.root),
            source=req.source,
            commit=req.commit,
            files=files,
            boundary=Path(req.boundary) if req.boundary else None,
        )
        expected = {f.relpath: f.sha256 for f in req.files if f.sha256}
        dtype = None
        if req.torch_dtype:
            dtype = getattr(torch, req.torch_dtype)
            if not isinstance(dtype, torch.dtype):
                raise ValueError("torch_dtype")
        from pipewarden.sandbox import load_class

        policy = None
        extras = {k: list(v) for k, v in req.policy_extras.items()} if req.policy_extras else None
        aliases = dict(req.import_aliases) if req.import_aliases else None
        if extras or aliases:
            from pipewarden.sandbox.policy import default_policy

            policy = default_policy().with_extras(extra_modules=extras, import_aliases=aliases)
        from pipewarden.sandbox.runtime import LoadBuilt

        load_built = LoadBuilt()  # every component in the worker is the worker's own
        cls = load_class(source_bytes, filename=req.filename, policy=policy, import_aliases=aliases, load_built=load_built)
        from pipewarden.loader.records import FixedRecords
        from pipewarden.sandbox._load import companion_classes

        # The host's records, read-only: each still has to match the fstat of our own descriptor.
        records = FixedRecords.from_json([list(r) for r in req.digest_records], owner=req.host_uid)
        passed: dict[str, Any] = {}
        if req.passed:
            from pipewarden.isolation.wire.components import decode_component

            tensors = load_tensors(payload[len(source_bytes) :])
            passed = {str(name): decode_component(node, tensors, str(name)) for name, node in req.passed.items()}
        kwargs = load_components(
            snapshot,
            torch_dtype=dtype,
            expected=expected,
            records=records,
            pipeline_class=cls,
            passed=passed,
            variant=req.variant,
            use_safetensors=req.use_safetensors,
            custom_classes=companion_classes(cls),
        )
        load_built.adopt(kwargs.values())
        self.load_built = load_built
        self.pipe = cls(**kwargs)
        self.methods = public_methods(self.pipe)
        self.gpu_fraction = req.gpu_memory_fraction
        return self._describe()

    def _describe(self) -> dict:
        pipe = self.pipe
        components: dict[str, Any] = {}
        types: dict[str, str] = {}
        for name, comp in _registered_components(pipe).items():
            cfg = getattr(comp, "config", None)
            components[name] = _jsonable(dict(cfg)) if isinstance(cfg, dict) else None
            types[name] = type(comp).__name__
        config = getattr(pipe, "config", None)
        return {
            "kind": "loaded",
            "class_name": type(pipe).__name__,
            "config": _jsonable(dict(config)) if isinstance(config, dict) else {},
            "components": components,
            "types": types,
            "methods": sorted(self.methods),
        }

    def _call(self, h: dict, payload: bytes) -> tuple[dict, bytes]:
        if self.pipe is None:
            raise PolicyViolation("no pipeline is loaded in this worker", rule="worker.protocol")
        import torch

        dec = Decoder(load_tensors(payload), allow_generators=True)
        args = dec.decode(h["args"])
        kwargs = dec.decode(h["kwargs"])
        method = h.get("method", "__call__")
        if method != "__call__" and method not in self.methods:
            raise PolicyViolation(
                f"{type(self.pipe).__name__}.{str(method)[:80]} is not a method the handle may call",
                rule="worker.method",
            )
        if h.get("rng") is not None:  # the host's global CPU RNG, so torch.manual_seed() works as in-process
            torch.set_rng_state(dec.decode({"__pw__": "tensor", "ref": h["rng"]}))
        if h.get("pyrng") is not None:  # and Python's / NumPy's global generators likewise
            _rng.parse(h["pyrng"]).apply()
        if h.get("callback"):
            kwargs["callback_on_step_end"] = self._host_callback
        fn = self.pipe if method == "__call__" else getattr(self.pipe, method)
        with _bars_to_host(self._send, enabled=bool(h.get("progress", True))):
            result = fn(*args, **kwargs)
        if isinstance(result, types.GeneratorType):
            # A stream cannot cross the boundary. Closed here, in the worker: its finally blocks
            # (sandboxed code, armed by origin) run now, and a refusal inside them is the reply.
            result.close()
            raise PolicyViolation(
                "the pipeline returned a generator (a stream), which cannot cross the process boundary",
                rule="worker.result-generator",
                fix='return the final output, or use isolation="inprocess" for code you reviewed',
            )
        enc = Encoder(allow_generators=False)
        tree = enc.encode(result)
        refs = [enc.tensor_ref(g.get_state()) for g in dec.generators]
        rng = enc.tensor_ref(torch.get_rng_state())
        header = {"kind": "result", "value": tree, "generators": refs, "rng": rng, "pyrng": _rng.capture().to_json()}
        return header, enc.payload()

    def _host_callback(self, pipe: Any, step: Any, timestep: Any, callback_kwargs: Any) -> dict:
        """Stands in for the user's ``callback_on_step_end``, which runs on the host.

        Sends the step, the timestep and the tensors the pipeline passed; waits for the host's
        answer (the dict the user's callback returned) and hands it to the pipeline. The host
        decides nothing by what we send but the arguments of the user's callback.
        """
        from pipewarden.sandbox import tripwire

        with tripwire.suspended():  # trusted encoding, as for a call's result
            enc = Encoder(allow_generators=False)
            header = {
                "kind": "callback",
                "step": int(step),
                "timestep": enc.encode(timestep),
                "tensors": enc.encode(dict(callback_kwargs or {})),
            }
            self._send(header, enc.payload())
            frame = read_frame(self.req_fd, max_bytes=_MAX_REQUEST)
            op = frame.header.get("op")
            if op == "callback_abort":
                raise _HostCallbackFailed(
                    "callback_on_step_end raised on the host; the call was abandoned",
                    rule="worker.callback-failed",
                )
            if op != "callback_result":
                raise PolicyViolation(f"expected the callback's result, got {op!r}", rule="worker.protocol")
            dec = Decoder(load_tensors(frame.payload), allow_generators=False)
            value = dec.decode(frame.header.get("value"))
        if not isinstance(value, dict):
            raise PolicyViolation("callback_on_step_end must return a dict", rule="worker.callback-result")
        return value
    def _audit(self, h: dict, payload: bytes) -> dict:
        """``pipewarden audit --run``: load, synthesise tiny components, call once (``_audit``)."""
        from pipewarden.isolation._audit import run_audit
        from pipewarden.isolation.wire.messages import AuditRequest

        if self.pipe is not None:
            raise PolicyViolation("an audit runs in a fresh worker", rule="worker.protocol")
        req = AuditRequest.parse(h)
        return run_audit(
            payload,
            source_sha256=req.source_sha256,
            filename=req.filename,
            policy_extras=req.policy_extras,
            import_aliases=req.import_aliases,
        )

    def _set_component(self, h: dict, payload: bytes) -> dict:
        """``handle.<name> = component``: rebuild it here from data, set it the diffusers way."""
        from pipewarden.isolation.wire.components import decode_component

        if self.pipe is None:
            raise PolicyViolation("no pipeline is loaded in this worker", rule="worker.protocol")
        name = str(h.get("name"))
        components = _registered_components(self.pipe)
        if name not in components:
            raise PolicyViolation(f"the pipeline has no component {name!r}", rule="worker.protocol")
        value = decode_component(h.get("component"), load_tensors(payload), name)
        if self.load_built is not None:
            self.load_built.adopt([value])  # rebuilt here from data: the worker's own
        setattr(self.pipe, name, value)
        return self._describe()

    def _to(self, h: dict, payload: bytes) -> dict:
        import torch

        if self.pipe is None:
            raise PolicyViolation("no pipeline is loaded in this worker", rule="worker.protocol")
        dec = Decoder(load_tensors(payload), allow_generators=False)
        args = dec.decode(h["args"])
        kwargs = dec.decode(h["kwargs"])
        self.pipe.to(*args, **kwargs)
        device = getattr(self.pipe, "device", None)
        if device is not None and getattr(device, "type", "") == "cuda" and self.gpu_fraction:
            torch.cuda.set_per_process_memory_fraction(float(self.gpu_fraction), device)
        return {"kind": "ok", "detail": str(device)}

    # ------------------------------------------------------------------------ test-only hooks

    def _hook_context(self, h: dict):
        """Test hooks probe the OS layers, so they may run with the Python tripwire suspended."""
        if not h.get("suspend_tripwire"):
            return contextlib.nullcontext()
        from pipewarden.sandbox import tripwire

        return tripwire.suspended()

    def _hook(self, h: dict) -> dict:
        import ctypes

        name = h.get("name")
        arg = h.get("arg")
        if name == "abort":
            os.abort()
        if name == "fork":
            libc = ctypes.CDLL(None, use_errno=True)
            pid = libc.fork()
            if pid == 0:
                if isinstance(arg, str):
                    try:
                        with open(arg, "w") as fh:
                            fh.write("child ran")
                    finally:
                        os._exit(0)
                os._exit(0)
            err = ctypes.get_errno()
            if pid < 0:
                raise PolicyViolation(
                    f"fork() refused in the worker: {errno.errorcode.get(err, err)}",
                    rule="worker.no-processes",
                )
            os.waitpid(pid, 0)
            return {"kind": "ok", "detail": "forked"}
        if name == "socket":
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.socket(2, 1, 0)
            return {"kind": "ok", "detail": json.dumps({"ret": fd, "errno": ctypes.get_errno()})}
        if name in ("unshare", "ptrace", "setuid"):
            libc = ctypes.CDLL(None, use_errno=True)
            if name == "unshare":
                ret = libc.unshare(0x10000000 | 0x40000000)  # CLONE_NEWUSER | CLONE_NEWNET
            elif name == "ptrace":
                ret = libc.ptrace(16, os.getppid(), None, None)  # PTRACE_ATTACH to the fork server
            else:
                ret = libc.setuid(0)
            return {"kind": "ok", "detail": json.dumps({"ret": ret, "errno": ctypes.get_errno()})}
        if name == "sysv_ipc":  # attach the host's segment `arg`, create a segment and a queue of our own
            libc = ctypes.CDLL(None, use_errno=True)
            libc.shmat.restype = ctypes.c_void_p
            libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
            info: dict[str, Any] = {"ipc_ns": os.readlink("/proc/self/ns/ipc"), "uts_ns": os.readlink("/proc/self/ns/uts")}
            addr = libc.shmat(int(str(arg)), None, 0o10000)  # SHM_RDONLY
            if addr is None or addr == ctypes.c_void_p(-1).value:
                info["shmat"] = {"ok": False, "errno": ctypes.get_errno()}
            else:
                info["shmat"] = {"ok": True, "data": ctypes.string_at(addr, 16).decode("latin-1")}
                libc.shmdt(ctypes.c_void_p(addr))
            sid = libc.shmget(0, 1 << 20, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT: left behind on purpose
            info["shmget"] = {"ret": sid, "errno": ctypes.get_errno() if sid < 0 else 0}
            qid = libc.msgget(0, 0o1000 | 0o600)
            info["msgget"] = {"ret": qid, "errno": ctypes.get_errno() if qid < 0 else 0}
            return {"kind": "ok", "detail": json.dumps(info)}
        if name == "fill":  # `arg` files of 1 MiB each in scratch: how many fit, and why it stopped
            written, err = 0, 0
            for i in range(int(str(arg))):
                try:
                    with open(os.path.join(self.plan.scratch, f"fill-{i}.bin"), "wb") as ffh:
                        ffh.write(b"\1" * (1024 * 1024))
                    written += 1
                except OSError as exc:
                    err = exc.errno or -1
                    break
            return {"kind": "ok", "detail": json.dumps({"written": written, "errno": err})}
        if name == "uncap_cpu":  # lift our own CPU limit as far as we can, then use `arg` s of CPU
            import resource
            import time as _time

            try:
                resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            except (OSError, ValueError):
                _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
                resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
            end = _time.process_time() + float(str(arg))
            while _time.process_time() < end:
                pass
            return {"kind": "ok", "detail": json.dumps({"limits": resource.getrlimit(resource.RLIMIT_CPU)})}
        if name == "raise":  # an error whose message the worker chose
            raise ValueError(str(arg))
        if name == "watch":  # inotify / fanotify: which files does anyone open?
            libc = ctypes.CDLL(None, use_errno=True)
            out = {}
            for call, args in (("inotify_init1", (0,)), ("fanotify_init", (0, 0))):
                fd = getattr(libc, call)(*args)
                out[call] = {"ret": fd, "errno": ctypes.get_errno() if fd < 0 else 0}
                if fd >= 0:
                    os.close(fd)
            return {"kind": "ok", "detail": json.dumps(out)}
        if name == "connect":
            import socket

            try:
                with socket.create_connection(("127.0.0.1", int(str(arg))), timeout=2):
                    return {"kind": "ok", "detail": json.dumps({"errno": 0})}
            except OSError as exc:
                return {"kind": "ok", "detail": json.dumps({"errno": exc.errno if exc.errno is not None else -1})}
        if name == "exec":
            try:
                os.execv("/bin/true", ["/bin/true"])
            except OSError as exc:
                return {"kind": "ok", "detail": json.dumps({"errno": exc.errno})}
        if name in ("read", "write"):
            try:
                if name == "read":
                    with open(str(arg), "rb") as rfh:
                        rfh.read(16)
                else:
                    with open(str(arg), "wb") as wfh:
                        wfh.write(b"x")
                return {"kind": "ok", "detail": json.dumps({"errno": 0})}
            except OSError as exc:
                return {"kind": "ok", "detail": json.dumps({"errno": exc.errno})}
        if name == "write_big":
            try:
                with open(os.path.join(self.plan.scratch, "big.bin"), "wb") as bfh:
                    bfh.write(b"\0" * (int(str(arg)) * 1024 * 1024))
                return {"kind": "ok", "detail": json.dumps({"errno": 0})}
            except OSError as exc:
                return {"kind": "ok", "detail": json.dumps({"errno": exc.errno})}
        if name == "identity":
            import torch

            info = {"uid": os.getuid(), "euid": os.geteuid(), "env": sorted(os.environ), "pid": os.getpid()}
            info["torch_threads"] = torch.get_num_threads()
            info["tasks"] = len(os.listdir(f"/proc/{os.getpid()}/task"))
            fds = {}
            for fd in os.listdir(f"/proc/{os.getpid()}/fd"):
                try:
                    fds[fd] = os.readlink(f"/proc/{os.getpid()}/fd/{fd}")
                except OSError:
                    fds[fd] = "?"
            info["fds"] = fds
            return {"kind": "ok", "detail": json.dumps(info)}
        if name == "alloc":
            import torch

            t = torch.ones(int(str(arg)) * 1024 * 1024, dtype=torch.uint8)
            return {"kind": "ok", "detail": str(int(t.sum()))}
        if name == "spin":
            while True:
                pass
        if name == "burn":  # use about `arg` seconds of CPU, then answer
            import time as _time

            end = _time.process_time() + float(str(arg))
            while _time.process_time() < end:
                pass
            return {"kind": "ok", "detail": "burnt"}
        if name == "recurse":
            def deep(n: int) -> int:
                return deep(n + 1) + 1

            sys.setrecursionlimit(10**6)
            deep(0)
        if name == "garbage":
            os.write(self.resp_fd, bytes(arg.encode("latin-1")) if isinstance(arg, str) else b"\x80\x04garbage")
            os.close(self.resp_fd)
            signal.pause()
        if name == "oversize":
            os.write(self.resp_fd, b"PWF1" + (16).to_bytes(4, "big") + (1 << 40).to_bytes(8, "big"))
            signal.pause()
        raise PolicyViolation(f"unknown test hook {name!r}", rule="worker.protocol")


class _HostCallbackFailed(PipewardenError):
    """The user's callback raised on the host: unwinds the pipeline call in the worker."""


@contextlib.contextmanager
def _bars_to_host(send: Any, *, enabled: bool):
    """While a call runs, diffusers' progress bars report to the host instead of drawing.

    ``DiffusionPipeline.progress_bar`` builds ``tqdm.auto.tqdm`` as named in
    ``diffusers.pipelines.pipeline_utils``; for the call we put a subclass there whose
    ``display`` sends (bar, n, total) frames. The worker's stderr is a log file nobody watches;
    the host draws the bar where the user looks (or nowhere: ``set_progress_bar_config``).
    """
    try:
        from diffusers.pipelines import pipeline_utils
    except ImportError:  # pragma: no cover - diffusers is always there in a worker
        yield
        return
    original = getattr(pipeline_utils, "tqdm", None)
    if original is None:
        yield
        return
    counter = iter(range(1 << 30))
    live = [enabled]  # False once the call is over: a bar closed later (GC) sends nothing

    class HostBar(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._pw_bar = next(counter)
            self._pw_sent: tuple[int, bool] | None = None
            kwargs.update(disable=False, file=_NullFile(), mininterval=0, miniters=1, leave=False)
            super().__init__(*args, **kwargs)

        def display(self, msg: Any = None, pos: Any = None) -> bool:
            if live[0]:
                state = (int(self.n), bool(getattr(self, "_pw_closing", False)))
                if state != self._pw_sent:
                    self._pw_sent = state
                    total = self.total if isinstance(self.total, int) and self.total >= 0 else None
                    send({"kind": "progress", "bar": self._pw_bar % 1024, "n": state[0], "total": total,
                          "closed": state[1]})
            return True

        def close(self) -> None:
            if not getattr(self, "_pw_closing", False) and hasattr(self, "_pw_sent"):
                self._pw_closing = True
                self.display()
            super().close()

    pipeline_utils.tqdm = HostBar
    try:
        yield
    finally:
        live[0] = False
        pipeline_utils.tqdm = original


class _NullFile:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _registered_components(pipe: Any) -> dict[str, Any]:
    """The components register_modules() recorded, read from the instance itself.

    Not ``pipe.components``: that host property getattr()s every config key the pipeline chose
    (running its properties, or raising on names it registered later) in trusted worker code."""
    config = pipe.__dict__.get("_internal_dict")
    state = pipe.__dict__
    out: dict[str, Any] = {}
    if not isinstance(config, dict):
        return out
    for name, value in dict.items(config):
        if type(name) is not str or name.startswith("_") or name not in state:
            continue
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (str, type(None))) for v in value):
            out[name] = state[name]
    return out


#: diffusers pipeline methods a user calls on a pipeline (they only change in-worker settings).
HANDLE_LIBRARY_METHODS = (
    "enable_attention_slicing", "disable_attention_slicing", "enable_vae_slicing", "disable_vae_slicing",
    "enable_vae_tiling", "disable_vae_tiling", "enable_freeu", "disable_freeu",
    "fuse_qkv_projections", "unfuse_qkv_projections",
)


def public_methods(pipe: Any) -> frozenset[str]:
    """What the handle may call besides ``__call__``: the public functions the vetted file's own
    classes define (``StableDiffusionMegaPipeline.text2img``) and ``HANDLE_LIBRARY_METHODS``."""
    cls = type(pipe)
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__ != cls.__module__:
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_") and inspect.isfunction(value) and name.isidentifier():
                names.add(name)
    names.update(n for n in HANDLE_LIBRARY_METHODS if callable(getattr(cls, n, None)))
    return frozenset(sorted(names)[:256])

