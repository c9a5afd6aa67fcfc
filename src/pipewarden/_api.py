"""``load_pipeline``: one load, start to finish: admit the code, then the weights, then run.

1. Parse what the user asked for (``loader.spec``: one parse into ``PipelineSpec`` /
   ``WeightsSpec``) and start the admission (``registry.admission.Admission``): kill switch and
   opt-in are checked before anything is fetched.
2. Resolve the code to bytes and digests (loader; nothing executes) and admit it: allowlist
   (source + signatures), lock file and sha256 pin are checked against the exact bytes that
   will be compiled. Only then are the weights resolved (downloaded from the hub) and admitted
   against the lock file, so an unpinned pipeline costs no weight download.
3. Run the ``AdmittedCode`` with the ``AdmittedWeights``: in this process under the sandbox
   (``isolation="inprocess"``), or in a locked-down worker (``isolation="process"``, the default)
   that re-reads and re-verifies every file itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from pipewarden.limits import Limits
from pipewarden.loader.code import CodeSource
from pipewarden.loader.snapshot import Snapshot
from pipewarden.loader.spec import PipelineSpec, WeightsSpec, parse_pipeline_spec, parse_weights_spec
from pipewarden.registry.admission import Admission, AdmittedCode, AdmittedWeights

Isolation = Literal["process", "inprocess"]
GateReporter = Callable[[str, str], None]

def _resolve_code(spec: PipelineSpec, *, token: Any = None, hub_options: Mapping[str, Any] | None = None) -> CodeSource:
    if spec.kind == "local":
        from pipewarden.loader.local import resolve_local_code

        return resolve_local_code(spec.value)
    from pipewarden.loader import hub

    return hub.resolve_code(spec.value, kind=spec.kind, revision=spec.revision, token=token, **dict(hub_options or {}))


def _resolve_weights(
    spec: WeightsSpec, *, token: Any = None, hub_options: Mapping[str, Any] | None = None, select: Any = None
) -> Snapshot:
    if spec.kind == "local":
        from pipewarden.loader.local import resolve_local_weights

        return resolve_local_weights(spec.value)
    from pipewarden.loader import hub

    return hub.resolve_weights(spec.value, revision=spec.revision, token=token, select=select, **dict(hub_options or {}))


# ---------------------------------------------------------------------------------------------
# The public entry point


def _require_run_extra() -> None:
    """Loading needs torch and diffusers, which the default (CI/audit) install leaves out."""
    import importlib.util

    missing = [m for m in ("torch", "diffusers", "safetensors", "numpy", "PIL") if importlib.util.find_spec(m) is None]
    if missing:
        from pipewarden.errors import InputError

        raise InputError(
            f"loading a pipeline needs {', '.join(missing)}, which this installation does not have",
            rule="load.run-extra-missing",
            fix="pip install 'pipewarden[run]'",
        )


def load_pipeline(
    pretrained: str | os.PathLike[str],
    *,
    custom_pipeline: str | os.PathLike[str],
    trust_remote_code: bool = False,
    pipeline_sha256: str | None = None,
    lockfile: Any = None,
    allowlist: Any = None,
    revision: str | None = None,
    custom_revision: str | None = None,
    isolation: Isolation = "process",
    limits: Limits | None = None,
    torch_dtype: Any = None,
    import_aliases: Mapping[str, str] | None = None,
    token: Any = None,
    on_gate: GateReporter | None = None,
    reverify: str | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    dtype: Any = None,
    **components: Any,
) -> Any:
    """Load a community pipeline through every gate and return it ready to call.

    ``pretrained``: a local weights directory (``model_index.json``, ``unet/``, ``scheduler/``)
    or a hub repo id. ``custom_pipeline``: a directory holding ``pipeline.py``, a ``.py`` file,
    a hub repo id holding ``pipeline.py``, or a community pipeline name. The code runs only with
    ``trust_remote_code=True`` and a pin (``pipeline_sha256=``, ``lockfile=`` or ``allowlist=``
    signatures). ``isolation="process"`` (default) runs it in a locked-down worker;
    ``"inprocess"`` runs it here under the restricted sandbox. Extra keyword arguments are
    components passed to the pipeline as they are (like diffusers' ``from_pretrained``).
    ``token`` is passed to huggingface_hub for private or gated repos (never to the worker).
    ``reverify``: ``"auto"`` (default) lets a verified-digest record vouch for a weight file the
    kernel reports unchanged since it was last hashed; ``"always"`` hashes every byte on every
    load (also ``PIPEWARDEN_REVERIFY=always``).
    ``variant``, ``use_safetensors``, ``torch_dtype``/``dtype``, ``cache_dir``,
    ``local_files_only``, ``revision``/``custom_revision`` mean what they mean in diffusers'
    ``DiffusionPipeline.from_pretrained``; loading options pipewarden does not support
    (``device_map``, ``low_cpu_mem_usage``, ``provider``, ...) raise ``InputError`` naming the
    keyword, and a keyword the pipeline's ``__init__`` does not take is refused, never ignored.
    """
    options = _loading_options(components, torch_dtype=torch_dtype, dtype=dtype, variant=variant,
                               use_safetensors=use_safetensors, cache_dir=cache_dir, local_files_only=local_files_only)
    torch_dtype = options.torch_dtype
    if isolation not in ("process", "inprocess"):
        raise ValueError(f"isolation must be 'process' or 'inprocess', got {isolation!r}")
    if limits is not None and not isinstance(limits, Limits):
        raise TypeError("limits must be a pipewarden.Limits")
    _require_run_extra()
    report: GateReporter = on_gate or (lambda gate, verdict: None)
    from pipewarden.loader.records import resolve_reverify

    reverify = resolve_reverify(reverify)

    where = os.fspath(custom_pipeline) if isinstance(custom_pipeline, (str, os.PathLike)) else repr(custom_pipeline)
    # Kill switch and opt-in first: a refusal costs no download. Loads the allowlist and lock.
    admission = Admission(
        trust_remote_code=trust_remote_code,
        pipeline_sha256=pipeline_sha256,
        lockfile=lockfile,
        allowlist=allowlist,
        isolation=isolation,
        import_aliases=import_aliases,
        source=where,
        report=report,
    )
    code_spec = parse_pipeline_spec(custom_pipeline, revision=custom_revision)
    weights_spec = parse_weights_spec(pretrained, revision=revision)
    if isolation == "process":  # boot the fork server while we resolve and hash
        from pipewarden.isolation import prestart

        prestart()
    code = _resolve_code(code_spec, token=token, hub_options=options.hub)
    report("code", f"read {code.module_relpath} from {code.source_id} ({len(code.source_bytes)} bytes, sha256 {code.sha256})")
    admitted = admission.admit_code(code)  # the code pin, before any weight is read or fetched
    weights = _resolve_weights(
        weights_spec, token=token, hub_options=options.hub, select=_weights_selector(code, components, options)
    )
    report("weights", f"{weights.source}" + (f" @ {weights.commit}" if weights.commit else ""))
    admitted_weights = admission.admit_weights(weights)
    # The allowlist's minimum isolation was enforced when the code was admitted.
    if isolation == "inprocess":
        _warn_inprocess()
        return _run_inprocess(
            admitted, admitted_weights, options=options, components=components, report=report, reverify=reverify
        )
    return _run_in_worker(
        admitted, admitted_weights, options=options, components=components, limits=limits, report=report,
        reverify=reverify,
    )


def _warn_inprocess() -> None:
    import warnings

    from pipewarden.errors import InProcessIsolationWarning

    warnings.warn(
        'isolation="inprocess" runs the pipeline in this process: the language sandbox is defence in '
        "depth for code you reviewed, not a security boundary against a determined attacker. The "
        'worker process (isolation="process", the default) is the boundary; see SECURITY.md.',
        InProcessIsolationWarning,
        stacklevel=3,
    )


def _sandbox_policy(admitted: AdmittedCode) -> Any:
    from pipewarden.sandbox.policy import default_policy

    policy = default_policy()
    if admitted.extra_modules or admitted.import_aliases:
        policy = policy.with_extras(
            extra_modules=dict(admitted.extra_modules) or None,
            import_aliases=dict(admitted.import_aliases) or None,
        )
    return policy


def _run_inprocess(
    admitted: AdmittedCode,
    weights: AdmittedWeights,
    *,
    options: LoadingOptions,
    components: Mapping[str, Any],
    report: GateReporter,
    reverify: str = "auto",
) -> Any:
    from pipewarden.loader.components import load_components
    from pipewarden.loader.records import records_for
    from pipewarden.sandbox import load_class
    from pipewarden.sandbox._load import companion_classes
    from pipewarden.sandbox.runtime import LoadBuilt

    policy = _sandbox_policy(admitted)
    load_built = LoadBuilt()  # what this load builds from verified bytes (not the caller's objects)
    cls = load_class(
        admitted.source_text(),
        filename=admitted.code.module_relpath,
        policy=policy,
        import_aliases=dict(admitted.import_aliases) or None,
        load_built=load_built,
    )
    report("sandbox", f"vetted class {cls.__name__}: scanned, restricted-compiled, executed with facades")
    # The caller's objects are never handed to the pipeline: each passed component is a private
    # deep copy (as in process mode, where it crosses to the worker as data), so nothing the
    # pipeline does -- in-place weight writes, fused or checkpointed modules, installed
    # processors, added tokens -- reaches an object the caller holds (issue 12, N1/N2/N7).
    components = _private_copies(components)
    digests: dict[str, str] = {}
    kwargs = load_components(
        weights.snapshot,
        torch_dtype=options.torch_dtype,
        expected=weights.expected,
        digests_out=digests,
        records=records_for(reverify),
        pipeline_class=cls,
        passed=components,
        variant=options.variant,
        use_safetensors=options.use_safetensors,
        custom_classes=companion_classes(cls),
    )
    built = sorted(k for k in kwargs if k not in components and kwargs[k] is not None and not isinstance(kwargs[k], (bool, int, float, str, list)))
    report("components", f"{len(digests)} files verified while loading (reverify={reverify}); safetensors only: {', '.join(built)}")
    load_built.adopt(kwargs.values())  # built from verified bytes, or private copies of the caller's
    pipe = cls(**kwargs)
    report("instantiate", f"{cls.__name__}({', '.join(sorted(kwargs))}) in-process")
    return pipe


#: values a pipeline's ``__init__`` takes as options, not components: immutable, passed as they are
_PLAIN_OPTION_TYPES = (bool, int, float, complex, str, bytes, type(None))


def _private_copies(components: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of every component the caller passed to an in-process load.

    The copy runs here, on the host, before any sandboxed code sees the objects (the caller's own
    objects, the caller's own ``__deepcopy__``). Options such as ``requires_safety_checker`` are
    immutable and passed as they are. An object that cannot be copied is refused by name."""
    import copy

    from pipewarden.errors import InputError

    out: dict[str, Any] = {}
    for name, obj in components.items():
        if isinstance(obj, _PLAIN_OPTION_TYPES):
            out[name] = obj
            continue
        try:
            out[name] = copy.deepcopy(obj)
        except Exception as exc:  # the caller's object decides how it copies; any failure refuses
            raise InputError(
                f"component {name}={type(obj).__module__}.{type(obj).__qualname__}: in-process loads give the pipeline "
                f"a private copy of each component you pass, and this one cannot be copied ({type(exc).__name__}: {exc})",
                rule="load.component-not-copyable",
                fix=f"leave {name}= out so pipewarden builds it from the weights directory, or pass a diffusers/transformers "
                "component object that copy.deepcopy accepts",
            ) from None
    return out


def _run_in_worker(
    admitted: AdmittedCode,
    weights: AdmittedWeights,
    *,
    options: LoadingOptions,
    components: Mapping[str, Any],
    limits: Limits | None,
    report: GateReporter,
    reverify: str = "auto",
) -> Any:
    from pipewarden.isolation import run_in_worker
    from pipewarden.loader.components import worker_records
    from pipewarden.loader.records import records_for

    # The worker re-reads every file and re-verifies it against the admitted digests (pins from
    # the hub metadata or the lock file; an empty digest means "hash and record").
    handle = run_in_worker(
        admitted,
        weights,
        extra_components=dict(components) or None,
        torch_dtype=options.torch_dtype,
        variant=options.variant,
        use_safetensors=options.use_safetensors,
        limits=limits,
        # Verified-digest records from the host's store (hashed here on a miss); the worker
        # checks each against its own fstat and never sees or writes the store.
        digest_records=worker_records(
            weights.pinned, expected=weights.expected, records=records_for(reverify), skip=set(components), variant=options.variant
        )
        if reverify != "always"
        else None,
    )
    layers = list(getattr(handle, "layers", ()))
    active = [s.name for s in layers if s.active]
    missing = [s.name for s in layers if not s.active]
    report("worker", f"fresh worker, layers active: {', '.join(active) or 'none'}" + (f"; missing: {', '.join(missing)}" if missing else ""))
    report("sandbox", f"vetted class {handle.class_name}: re-hashed, scanned, restricted-compiled and run in the worker")
    return handle


# ---------------------------------------------------------------------------------------------
# from_pretrained keywords (issue 11 part 3): same names and meaning as diffusers 0.42

#: diffusers loading keywords pipewarden does not support: refused by name, never ignored.
UNSUPPORTED_KEYWORDS: Mapping[str, str] = MappingProxyType({
    "device_map": "load, then move with pipe.to(device)",
    "max_memory": "load, then move with pipe.to(device)",
    "offload_folder": "drop it (offloading is not supported)",
    "offload_state_dict": "drop it (offloading is not supported)",
    "low_cpu_mem_usage": "drop it (weights are always loaded without a random init)",
    "provider": "drop it (ONNX pipelines are not supported)",
    "sess_options": "drop it (ONNX pipelines are not supported)",
    "provider_options": "drop it (ONNX pipelines are not supported)",
    "use_onnx": "drop it (ONNX pipelines are not supported)",
    "from_flax": "drop it (only safetensors weights are read)",
    "quantization_config": "drop it (quantized loading is not supported)",
    "disable_mmap": "drop it (weights are always read into private memory)",
    "use_flashpack": "drop it",
    "load_connected_pipeline": "load each pipeline with load_pipeline",
    "dduf_file": "drop it (DDUF archives are not supported)",
    "force_download": "clear the cache entry instead (every cached file is re-verified anyway)",
    "proxies": "set HTTPS_PROXY in the environment instead",
    "resume_download": "drop it (downloads always resume)",
    "output_loading_info": "drop it",
    "mirror": "drop it",
    "subfolder": "point load_pipeline at the folder that holds model_index.json",
    "custom_pipeline_revision": "use custom_revision=",
    "return_cached_folder": "drop it",
    "trust_remote_code_for_components": "drop it",
})


@dataclass(frozen=True)
class LoadingOptions:
    torch_dtype: Any
    variant: str | None
    use_safetensors: bool | None
    hub: Mapping[str, Any]


def _loading_options(
    components: Mapping[str, Any],
    *,
    torch_dtype: Any,
    dtype: Any,
    variant: Any,
    use_safetensors: Any,
    cache_dir: Any,
    local_files_only: Any,
) -> LoadingOptions:
    from pipewarden.errors import InputError

    for name in components:
        if name in UNSUPPORTED_KEYWORDS:
            raise InputError(
                f"load_pipeline does not support the from_pretrained keyword {name}=",
                rule="load.unsupported-keyword",
                fix=UNSUPPORTED_KEYWORDS[name],
            )
    if variant is not None and not (isinstance(variant, str) and re.fullmatch(r"[A-Za-z0-9_\-]{1,32}", variant)):
        raise ValueError(f"variant must be a short name such as 'fp16', got {variant!r}")
    if use_safetensors is not None and not isinstance(use_safetensors, bool):
        raise TypeError("use_safetensors must be a bool or None")
    if not isinstance(local_files_only, bool):
        raise TypeError("local_files_only must be a bool")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError("cache_dir must be a str or path")
    if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
        raise ValueError("pass either torch_dtype= or dtype=, not both")
    hub: dict[str, Any] = {}
    if cache_dir is not None:
        hub["cache_dir"] = os.fspath(cache_dir)
    if local_files_only:
        hub["local_files_only"] = True
    return LoadingOptions(
        torch_dtype=resolve_torch_dtype(torch_dtype if torch_dtype is not None else dtype),
        variant=variant,
        use_safetensors=use_safetensors,
        hub=MappingProxyType(hub),
    )


def resolve_torch_dtype(value: Any) -> Any:
    """A ``torch.dtype``, or its name (``"float16"``, ``"torch.float16"``), as diffusers accepts."""
    if value is None:
        return None
    import torch

    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        name = value.removeprefix("torch.")
        found = getattr(torch, name, None) if re.fullmatch(r"[a-z0-9_]{2,24}", name) else None
        if isinstance(found, torch.dtype) and found.is_floating_point:
            return found
        raise ValueError(f"torch_dtype {value!r} is not the name of a floating-point torch dtype (e.g. 'float16')")
    if isinstance(value, Mapping):
        raise TypeError("a per-component torch_dtype mapping is not supported: pass one torch.dtype")
    raise TypeError(f"torch_dtype must be a torch.dtype or its name, got {type(value).__name__}")


def _weights_selector(code: CodeSource, components: Mapping[str, Any], options: LoadingOptions) -> Any:
    """Which hub files the load reads (issue 11 part 4), decided from the code's AST, never run."""
    from pipewarden.errors import ScanError
    from pipewarden.loader.components import hub_selector

    try:
        return hub_selector(code.source_bytes, filename=code.module_relpath, passed=components, variant=options.variant)
    except ScanError:
        return None  # the load refuses the code later, at the exec site, with the full reason
