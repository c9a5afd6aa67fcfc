"""isolation: run the vetted pipeline in a locked-down worker process (``isolation="process"``).

Public API::

    run_in_worker(code: AdmittedCode, weights: AdmittedWeights, *, extra_components=None, torch_dtype=None,
                  limits=None, digest_records=None, variant=None, use_safetensors=None) -> PipelineHandle
    start_worker_pipeline(request: WorkerLoadRequest, limits=None) -> PipelineHandle
    probe_layers() -> tuple[LayerStatus, ...]      # what `pipewarden doctor` prints
    prestart()                                     # start the fork server in the background
    audit_in_worker(source_bytes, filename, *, limits=None, policy_extras=None,
                    import_aliases=None) -> (AuditOutcome, inactive layers)   # `audit --run`

Decides: each pipeline gets a fresh worker forked from a fork server that has only imported
torch and diffusers; the worker applies every layer (``_layers``) before it reads an untrusted
byte, re-verifies the source and every weight file against the host's digests, and runs the
same sandbox as in-process. Trusts the admission's result (``AdmittedCode``/``AdmittedWeights``,
turned into a ``WorkerLoadRequest`` and sent as a typed ``wire.messages.LoadRequest``) as
*claims* the worker checks again: it re-hashes the source and every weight file against those
digests. Trusts nothing the worker sends back.

This module does not import torch (``pipewarden doctor`` and ``audit`` stay fast).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipewarden.errors import IntegrityError, NotAllowedError, WorkerError
from pipewarden.isolation.layers.apply import LAYER_NAMES, LAYER_PURPOSE, LayerStatus
from pipewarden.limits import Limits

if TYPE_CHECKING:
    from pipewarden.registry.admission import AdmittedCode, AdmittedWeights

__all__ = [
    "LAYER_NAMES",
    "LAYER_PURPOSE",
    "IsolationWarning",
    "LayerStatus",
    "PipelineHandle",
    "WorkerLoadRequest",
    "audit_in_worker",
    "prestart",
    "probe_layers",
    "run_in_worker",
    "start_worker_pipeline",
]


class IsolationWarning(UserWarning):
    """A confinement layer is not active in a worker (see ``pipewarden doctor``)."""


@dataclass(frozen=True)
class WorkerLoadRequest:
    """Everything a worker needs to load one pipeline; built by the host from verified inputs."""

    source_bytes: bytes
    source_sha256: str
    filename: str
    weights: Any  # pipewarden.loader.snapshot.Snapshot
    torch_dtype: Any = None
    policy_extras: Mapping[str, Any] | None = None
    import_aliases: Mapping[str, str] | None = None
    required_layers: frozenset[str] = field(default_factory=frozenset)
    #: Verified-digest records (``Record.to_json()``) from the host's store, for the worker's
    #: weight files; None = the worker hashes every byte (reverify="always").
    digest_records: tuple[Any, ...] | None = None
    variant: str | None = None
    use_safetensors: bool | None = None
    #: The caller's keyword arguments (components and options), sent as data (wire.components).
    passed: Mapping[str, Any] | None = None

    @classmethod
    def from_admitted(
        cls,
        code: AdmittedCode,
        weights: AdmittedWeights,
        *,
        torch_dtype: Any = None,
        digest_records: Iterable[Any] | None = None,
        variant: str | None = None,
        use_safetensors: bool | None = None,
        passed: Mapping[str, Any] | None = None,
    ) -> WorkerLoadRequest:
        """The request for an admitted load: the admitted bytes and the digests weights must match."""
        return cls(
            source_bytes=bytes(code.code.source_bytes),
            source_sha256=code.sha256,
            filename=code.code.module_relpath,
            weights=weights.pinned,
            torch_dtype=torch_dtype,
            policy_extras={k: list(v) for k, v in code.extra_modules.items()} or None,
            import_aliases=dict(code.import_aliases) or None,
            required_layers=_check_required(code.required_layers),
            digest_records=tuple(digest_records) if digest_records is not None else None,
            variant=variant,
            use_safetensors=use_safetensors,
            passed=dict(passed) if passed else None,
        )


def __getattr__(name: str) -> Any:
    if name == "PipelineHandle":
        from pipewarden.isolation._handle import PipelineHandle

        return PipelineHandle
    raise AttributeError(name)


def prestart() -> None:
    """Start the fork server now (in the background) so the first load does not wait for it."""
    from pipewarden.isolation._client import fork_server

    fork_server(wait=False)


def probe_layers() -> tuple[LayerStatus, ...]:
    """Apply every layer in a throw-away child of this process and report what is active."""
    from pipewarden.isolation.layers.probe import probe

    return probe()


def _read_paths(weights: Any) -> tuple[str, ...]:
    """What the worker may read (Landlock): the weights root and, for each file reached through a
    link (HF cache: ``snapshots/<commit>/x -> ../../blobs/<sha>``), the file it resolves to *inside*
    the snapshot's boundary. A link leaving the boundary is refused here, never added to the list.
    """
    from pipewarden import fsaccess

    root = os.path.abspath(str(weights.root))
    boundary = os.path.abspath(str(getattr(weights, "link_boundary", weights.root)))
    paths = [root, os.path.realpath(root)]
    for rel in weights.files:
        real = os.path.join(boundary, fsaccess.resolve_in(boundary, rel, root=root))
        if not real.startswith(os.path.realpath(root) + os.sep) and not real.startswith(root + os.sep):
            paths.append(real)
    return tuple(dict.fromkeys(paths))


def _dtype_name(torch_dtype: Any) -> str | None:
    if torch_dtype is None:
        return None
    import torch

    if not isinstance(torch_dtype, torch.dtype):
        raise TypeError(f"torch_dtype must be a torch.dtype, got {type(torch_dtype).__name__}")
    return str(torch_dtype).removeprefix("torch.")


def _check_required(required: Iterable[str]) -> frozenset[str]:
    req = frozenset(required)
    unknown = sorted(req - set(LAYER_NAMES))
    if unknown:
        raise ValueError(f"unknown isolation layers {unknown}; known: {', '.join(LAYER_NAMES)}")
    return req


def start_worker_pipeline(
    request: WorkerLoadRequest,
    limits: Limits | None = None,
    *,
    _unsafe_test_hooks: bool = False,
    _unsafe_skip_layers: Iterable[str] = (),
) -> Any:
    """Fork a fresh worker, confine it, load the pipeline in it; return a ``PipelineHandle``.

    Raises ``NotAllowedError`` when a layer in ``request.required_layers`` is not active, and
    warns (``IsolationWarning``) for every other inactive layer.
    """
    from pipewarden.isolation._handle import PipelineHandle

    limits = limits if limits is not None else Limits()
    worker, loaded = _start(
        request, limits, test_hooks=_unsafe_test_hooks, skip=frozenset(_unsafe_skip_layers), stacklevel=4
    )
    return PipelineHandle(worker, loaded, request=request, limits=limits)


def _start(request: WorkerLoadRequest, limits: Limits, *, test_hooks: bool = False,
           skip: frozenset[str] = frozenset(), stacklevel: int = 3) -> tuple[Any, Any]:
    """Start and load one worker: (WorkerProcess, Loaded). Used for loads and ``reload()``."""
    from pipewarden.isolation._client import WorkerProcess
    from pipewarden.isolation.wire.messages import Loaded, LoadFile, LoadRequest

    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a pipewarden.Limits, got {type(limits).__name__}")
    required = _check_required(request.required_layers)
    # 1. The source we send is the source that was verified: check the digest here as well
    #    (the worker checks again before compiling).
    if hashlib.sha256(request.source_bytes).hexdigest() != request.source_sha256:
        raise IntegrityError(
            f"{request.filename}: source bytes do not match the verified sha256",
            rule="worker.unverified-source",
            fix="reload the pipeline",
        )
    # 2. A fresh, confined worker (layers applied before it reads anything untrusted).
    worker = WorkerProcess(
        limits,
        read_paths=_read_paths(request.weights),
        test_hooks=test_hooks,
        skip=skip,
    )
    try:
        inactive = [s for s in worker.layers if not s.active]
        missing = sorted(s.name for s in inactive if s.name in required)
        if missing:
            raise NotAllowedError(
                f"isolation layers required by the policy are not active: {', '.join(missing)}",
                rule="worker.layers-missing",
                fix="run `pipewarden doctor` to see why, and run on a host where they are available",
            )
        if inactive:
            warnings.warn(
                "isolation layers not active in the worker: "
                + "; ".join(f"{s.name} ({s.detail})" for s in inactive),
                IsolationWarning,
                stacklevel=stacklevel,
            )
        # 3. Load: the worker re-reads and re-hashes every file (expected = our digests).
        payload = request.source_bytes
        passed = source_len = None
        if request.passed:
            from pipewarden.isolation.wire.codec import Encoder
            from pipewarden.isolation.wire.components import encode_component

            enc = Encoder(allow_generators=False)
            passed = {name: encode_component(name, value, enc) for name, value in request.passed.items()}
            source_len = len(payload)
            payload = payload + enc.payload()
        load = LoadRequest(
            source_sha256=request.source_sha256,
            filename=request.filename,
            root=os.path.abspath(str(request.weights.root)),
            boundary=os.path.abspath(str(request.weights.link_boundary)),
            source=str(request.weights.source),
            commit=request.weights.commit,
            files=tuple(LoadFile(rel, rec.sha256, rec.size) for rel, rec in request.weights.files.items()),
            torch_dtype=_dtype_name(request.torch_dtype),
            policy_extras={k: tuple(v) for k, v in (request.policy_extras or {}).items()} or None,
            import_aliases=dict(request.import_aliases or {}) or None,
            gpu_memory_fraction=limits.gpu_memory_fraction,
            digest_records=tuple(tuple(r) for r in (request.digest_records or ())),
            host_uid=os.geteuid(),
            variant=request.variant,
            use_safetensors=request.use_safetensors,
            passed=passed,
            source_len=source_len,
        )
        loaded = worker.request(load.header(), payload, what="loading the pipeline")
        if not isinstance(loaded, Loaded):
            raise WorkerError("the worker answered a load with the wrong message", rule="worker.protocol", fix="reload")
    except BaseException:
        worker.kill()
        raise
    return worker, loaded


def run_in_worker(
    code: AdmittedCode,
    weights: AdmittedWeights,
    *,
    extra_components: Mapping[str, Any] | None = None,
    torch_dtype: Any = None,
    limits: Limits | None = None,
    digest_records: Iterable[Any] | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
) -> Any:
    """The entry point of ``load_pipeline(..., isolation="process")``, for an admitted load.

    ``extra_components`` (the caller's keyword arguments) cross as data, never pickles
    (``isolation.wire.components``): option values, diffusers schedulers (class + config),
    diffusers and allowlisted transformers models (config + state dict), allowlisted tokenizers
    (data files) and image processors (config); anything else is refused with ``NotAllowedError``
    here, before a worker starts. ``digest_records``: verified-digest records from the host's
    store for the weight files.
    """
    if extra_components:
        from pipewarden.isolation.wire.codec import Encoder
        from pipewarden.isolation.wire.components import encode_component

        probe = Encoder(allow_generators=False)
        for name, value in extra_components.items():  # refuse early, before any worker starts
            encode_component(name, value, probe)
    request = WorkerLoadRequest.from_admitted(
        code,
        weights,
        torch_dtype=torch_dtype,
        digest_records=digest_records,
        variant=variant,
        use_safetensors=use_safetensors,
        passed=dict(extra_components or {}) or None,
    )
    return start_worker_pipeline(request, limits)


def audit_in_worker(
    source_bytes: bytes,
    filename: str,
    *,
    limits: Limits | None = None,
    policy_extras: Mapping[str, Iterable[str]] | None = None,
    import_aliases: Mapping[str, str] | None = None,
) -> tuple[Any, tuple[LayerStatus, ...]]:
    """Run one pipeline file once in a fresh confined worker for ``pipewarden audit --run``.

    The worker loads the class through the sandbox, builds tiny components from its
    ``__init__`` (``audit.synth``) and makes the minimal call; see ``isolation._audit``. Returns
    the parsed ``wire.messages.AuditOutcome`` and the layers that were not active. A worker
    stopped by a limit or a crash raises ``ResourceLimitError`` / ``WorkerError`` (the caller
    reports them). The worker reads no weights: it gets no read paths beyond the libraries.
    """
    from pipewarden.isolation._client import WorkerProcess
    from pipewarden.isolation.wire.messages import AuditOutcome, AuditRequest

    limits = limits if limits is not None else Limits()
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a pipewarden.Limits, got {type(limits).__name__}")
    request = AuditRequest(
        source_sha256=hashlib.sha256(source_bytes).hexdigest(),
        filename=filename,
        policy_extras={k: tuple(v) for k, v in (policy_extras or {}).items()} or None,
        import_aliases=dict(import_aliases or {}) or None,
    )
    worker = WorkerProcess(limits, read_paths=())
    try:
        inactive = tuple(s for s in worker.layers if not s.active)
        outcome = worker.request(request.header(), bytes(source_bytes), what="the audit run")
        if not isinstance(outcome, AuditOutcome):
            raise WorkerError("the worker answered an audit with the wrong message", rule="worker.protocol",
                              fix="run the audit again")
        return outcome, inactive
    finally:
        worker.close()  # a no-op for a worker already stopped by a limit or a crash
