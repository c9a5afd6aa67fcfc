"""Worker -> host messages, parsed at one boundary into frozen typed objects.

Decides the message kinds the host accepts and validates every field; trusts nothing in a
frame. Anything unexpected raises ``WorkerError`` (the host then stops the worker).

Worker-chosen names are checked here, once, wherever host code could turn them into attributes
or keyword arguments (``Cls.from_config(cfg)`` spreads a config into ``__init__`` keywords and
diffusers' ``FrozenDict``/``register_to_config`` into ``setattr``; transformers configs likewise):
config keys at the top level are public identifiers that name no ``dict`` method (diffusers'
metadata keys ``_class_name``, ``_diffusers_version``, ``_name_or_path`` and
``_use_default_values`` excepted), no key at any depth starts with ``__``, component and
callback tensor names are public identifiers. Output values are checked by the codec.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pipewarden.errors import PolicyViolation, WorkerError
from pipewarden.isolation.layers.apply import LAYER_NAMES, LayerStatus
from pipewarden.isolation.wire.codec import Decoder, attribute_name_refused, load_tensors, public_name
from pipewarden.isolation.wire.framing import Frame
from pipewarden.isolation.wire.rng import RngStates
from pipewarden.isolation.wire.rng import parse as parse_rng
from pipewarden.rules import is_registered

_MAX_TEXT = 4000


def _bad(what: str) -> WorkerError:
    return WorkerError(
        f"the worker sent a malformed message: {what}",
        rule="wire.malformed-message",
        fix="the worker is broken or compromised; it was stopped",
    )


#: Characters a terminal acts on rather than shows (red team 9 W3): C0 controls except newline
#: and tab (ESC starts OSC 52 clipboard writes, title changes, screen clears; CR rewrites a
#: line), DEL, C1 controls (8-bit CSI/OSC), bidi overrides, isolates and marks, line separators.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every terminal control character written as an escape (``\\x1b``, ``\\u202e``)."""
    return _CONTROLS.sub(_escape, text)


def _text(value: object, field: str, *, limit: int = _MAX_TEXT) -> str:
    """A worker-chosen string: a ``str``, at most ``limit`` characters, no terminal controls.

    Every text the host may print (error messages, ``what``/``fix``, layer details, audit
    findings, class and type names) passes here, so no later consumer has to remember.
    """
    if not isinstance(value, str):
        raise _bad(f"{field} is not a string")
    return visible(value[:limit])[:limit]


#: The largest progress count a worker may report (exact in a float, as the host's bars draw it).
_MAX_PROGRESS = 2**53


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_tensor(value: object) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


#: Deepest config the worker may describe (diffusers configs are 2-3 levels deep).
MAX_CONFIG_DEPTH = 32
#: Private keys diffusers itself writes into configs (``from_config`` reads or drops them).
CONFIG_METADATA_KEYS = frozenset({"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"})
#: Names a top-level config key may not take: FrozenDict(config) sets every key as an attribute,
#: and one named like a method would shadow it on the host object.
_MAPPING_ATTRIBUTES = frozenset(dir(OrderedDict))
_MAX_NESTED_KEY = 256


def config_key_ok(key: object, *, top: bool) -> bool:
    """May ``key`` be a config key (``top``: of the config itself, where it can become an attribute)?"""
    if not isinstance(key, str):
        return False
    if top:
        return key in CONFIG_METADATA_KEYS or (public_name(key) and key not in _MAPPING_ATTRIBUTES)
    return len(key) <= _MAX_NESTED_KEY and not key.startswith("__")


def freeze(value: Any, depth: int = 0) -> Any:
    """JSON -> read-only: dicts become ``FrozenConfig``, lists tuples (bounded depth: a 900-deep
    config from a worker is a clean ``WorkerError``, not a RecursionError). Keys are checked
    (:func:`config_key_ok`): the top level's may become attributes and keywords on the host."""
    if depth > MAX_CONFIG_DEPTH:
        raise _bad(f"config nested more than {MAX_CONFIG_DEPTH} levels")
    if isinstance(value, dict):
        for key in value:
            if not config_key_ok(key, top=depth == 0):
                raise attribute_name_refused("a config key", key)
        return FrozenConfig({str(k): freeze(v, depth + 1) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v, depth + 1) for v in value)
    return value


class FrozenConfig(dict):
    """A read-only config mapping with attribute access (like diffusers' FrozenDict).

    A ``dict`` (as diffusers' ``FrozenDict`` is), so ``DDIMScheduler.from_config(handle.scheduler.config)``
    accepts it; every mutating method raises.
    """

    __slots__ = ()

    def __init__(self, data: Mapping[str, Any]) -> None:
        super().__init__(data)

    def __getattr__(self, name: str) -> Any:
        # Worker-chosen keys never become protocol attributes (e.g. "__array_interface__",
        # which numpy would use to read raw host memory): underscore names stay item-only.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the config of an isolated pipeline is read-only")

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("the config of an isolated pipeline is read-only")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _read_only  # type: ignore[assignment]

    def copy(self) -> dict[str, Any]:  # type: ignore[override]
        return dict(self)

    def __repr__(self) -> str:
        return f"FrozenConfig({dict(self)!r})"


@dataclass(frozen=True)
class Ready:
    pid: int
    layers: tuple[LayerStatus, ...]


@dataclass(frozen=True)
class Loaded:
    class_name: str
    config: FrozenConfig
    components: Mapping[str, FrozenConfig | None]
    component_types: Mapping[str, str]
    methods: tuple[str, ...] = ()  # public methods the handle may call besides __call__


@dataclass(frozen=True)
class Result:
    value: Any
    generator_states: tuple[Any, ...]
    rng_state: Any = None  # the worker's global CPU RNG state after the call (a uint8 tensor)
    py_rng: RngStates | None = None  # Python's random and NumPy's global states after the call


@dataclass(frozen=True)
class Ack:
    detail: str


@dataclass(frozen=True)
class Failure:
    error_class: str
    what: str
    rule: str
    fix: str


@dataclass(frozen=True)
class CallbackRequest:
    """Mid-call: the pipeline called ``callback_on_step_end``; the host runs the real one."""

    step: int
    timestep: Any  # a tensor, int or float, as the pipeline passed it
    tensors: Mapping[str, Any]  # the names in callback_on_step_end_tensor_inputs -> values


@dataclass(frozen=True)
class Progress:
    """Mid-call: a progress bar of the pipeline moved (the host draws it)."""

    bar: int
    n: int
    total: int | None
    closed: bool


@dataclass(frozen=True)
class AuditRefusal:
    """A capability the policy refused during a dynamic audit run (``line`` 0: not in the file)."""

    rule: str
    what: str
    error: str
    line: int
    via: tuple[int, ...] = ()  # lines of the file's outer frames that led there, outermost first


@dataclass(frozen=True)
class AuditEnd:
    """What ended a dynamic audit run early: a refusal, a resource limit or the pipeline's own error."""

    error: str
    rule: str
    what: str
    line: int


@dataclass(frozen=True)
class AuditOutcome:
    """The worker's answer to an ``audit`` request (``pipewarden audit --run``)."""

    class_name: str | None
    stage: str  # where the run ended: load, synthesise, init, call, done
    completed: bool
    no_components: str | None  # why no tiny components could be built (the run stopped there)
    failure: AuditEnd | None
    refusals: tuple[AuditRefusal, ...]
    executable_lines: tuple[int, ...] | None  # None: no coverage (the file never compiled)
    lines_run: tuple[int, ...]
    plan: Mapping[str, str | None]
    method: str | None
    seconds: float


WorkerMessage = Ready | Loaded | Result | Ack | Failure | CallbackRequest | Progress | AuditOutcome
_AUDIT_STAGES = ("load", "synthesise", "init", "call", "done")
_MAX_LINE = 10_000_000
_MAX_LINES = 1_000_000


def _line(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_LINE:
        raise _bad(f"{field} is not a line number")
    return int(value)


def _rule(value: object, field: str) -> str:
    rule = _text(value, field, limit=128)
    if not is_registered(rule):
        raise _bad(f"{field} is not a registered rule id")
    return rule


def _lines(value: object, field: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > _MAX_LINES:
        raise _bad(field)
    out = tuple(_line(v, field) for v in value)
    if any(out[i + 1] <= out[i] for i in range(len(out) - 1)):
        raise _bad(f"{field} is not sorted")
    return out


def _parse_audit(h: Mapping[str, Any]) -> AuditOutcome:
    stage = h.get("stage")
    if stage not in _AUDIT_STAGES:
        raise _bad("audit stage")
    completed = h.get("completed")
    if not isinstance(completed, bool) or completed != (stage == "done"):
        raise _bad("audit completed")
    cls = h.get("class_name")
    no_comp = h.get("no_components")
    failure = h.get("failure")
    end = None
    if failure is not None:
        if not isinstance(failure, dict) or completed:
            raise _bad("audit failure")
        end = AuditEnd(_text(failure.get("error"), "failure error", limit=64), _rule(failure.get("rule"), "failure rule"),
                       _text(failure.get("what"), "failure what"), _line(failure.get("line"), "failure line"))
    raw_refusals = h.get("refusals")
    if not isinstance(raw_refusals, list) or len(raw_refusals) > 256:
        raise _bad("audit refusals")
    refusals = []
    for item in raw_refusals:
        if not isinstance(item, dict):
            raise _bad("audit refusal")
        via = item.get("via", [])
        if not isinstance(via, list) or len(via) > 16:
            raise _bad("audit refusal via")
        refusals.append(AuditRefusal(_rule(item.get("rule"), "refusal rule"), _text(item.get("what"), "refusal what"),
                                     _text(item.get("error"), "refusal error", limit=64),
                                     _line(item.get("line"), "refusal line"),
                                     tuple(_line(v, "refusal via") for v in via)))
    coverage = h.get("coverage")
    executable: tuple[int, ...] | None = None
    run: tuple[int, ...] = ()
    if coverage is not None:
        if not isinstance(coverage, dict):
            raise _bad("audit coverage")
        executable = _lines(coverage.get("executable"), "coverage executable")
        run = _lines(coverage.get("run"), "coverage run")
        if not set(run) <= set(executable):
            raise _bad("coverage: a line ran that is not executable")
    plan = h.get("plan")
    if plan is None:
        plan = {}
    if not isinstance(plan, dict) or len(plan) > 256 or not all(
        isinstance(k, str) and k.isidentifier() and (v is None or (isinstance(v, str) and len(v) <= 128))
        for k, v in plan.items()
    ):
        raise _bad("audit plan")
    seconds = h.get("seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < 1e7:
        raise _bad("audit seconds")
    method = h.get("method")
    return AuditOutcome(
        class_name=None if cls is None else _text(cls, "class_name", limit=128),
        stage=str(stage),
        completed=completed,
        no_components=None if no_comp is None else _text(no_comp, "no_components"),
        failure=end,
        refusals=tuple(refusals),
        executable_lines=executable,
        lines_run=run,
        plan=MappingProxyType(dict(plan)),
        method=None if method is None else _text(method, "method", limit=128),
        seconds=float(seconds),
    )
_MAX_BARS = 1024


def parse(frame: Frame) -> WorkerMessage:
    h = frame.header
    kind = h.get("kind")
    if kind == "error":
        name = _text(h.get("error"), "error", limit=64)
        if not name.isidentifier():
            raise _bad("error class is not a name")
        rule = _text(h.get("rule", ""), "rule", limit=128)
        if not is_registered(rule):
            raise _bad("error rule is not a registered rule id")
        return Failure(name, _text(h.get("what"), "what"), rule, _text(h.get("fix", ""), "fix"))
    if kind == "ready":
        pid = h.get("pid")
        layers = h.get("layers")
        if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(layers, list) or len(layers) > 64:
            raise _bad("ready")
        parsed = []
        for item in layers:
            if not isinstance(item, dict) or item.get("name") not in LAYER_NAMES or not isinstance(item.get("active"), bool):
                raise _bad("layer status")
            parsed.append(LayerStatus(str(item["name"]), bool(item["active"]), _text(item.get("detail", ""), "detail", limit=300)))
        return Ready(pid, tuple(parsed))
    if kind == "loaded":
        cfg = h.get("config")
        comps = h.get("components")
        types = h.get("types")
        if not isinstance(cfg, dict) or not isinstance(comps, dict) or not isinstance(types, dict):
            raise _bad("loaded")
        components: dict[str, FrozenConfig | None] = {}
        for name, value in comps.items():
            if not public_name(name):  # handle.<name>, the callback stand-in's attributes
                raise attribute_name_refused("a component", name)
            if not (value is None or isinstance(value, dict)):
                raise _bad("component config")
            components[name] = None if value is None else freeze(value)
        if not set(types) <= set(components):
            raise _bad("component types")
        methods = h.get("methods", [])
        if not isinstance(methods, list) or len(methods) > 256 or not all(
            isinstance(m, str) and len(m) <= 128 and m.isidentifier() and not m.startswith("_") for m in methods
        ):
            raise _bad("methods")
        return Loaded(
            _text(h.get("class_name"), "class_name", limit=128),
            freeze(cfg),
            MappingProxyType(components),
            MappingProxyType({str(k): _text(v, "type", limit=128) for k, v in types.items()}),
            tuple(methods),
        )
    if kind == "result":
        if "value" not in h:
            raise _bad("result without value")
        tensors = load_tensors(frame.payload)
        dec = Decoder(tensors, allow_generators=False)
        value = dec.decode(h["value"])
        states = h.get("generators", [])
        if not isinstance(states, list) or len(states) > 64:
            raise _bad("generator states")
        gen_states = tuple(dec.decode({"__pw__": "tensor", "ref": ref}) for ref in states)
        rng = h.get("rng")
        rng_state = None if rng is None else dec.decode({"__pw__": "tensor", "ref": rng})
        pyrng = h.get("pyrng")
        return Result(value, gen_states, rng_state, None if pyrng is None else parse_rng(pyrng))
    if kind == "audit":
        return _parse_audit(h)
    if kind == "ok":
        return Ack(_text(h.get("detail", ""), "detail"))
    if kind == "callback":
        step = h.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise _bad("callback step")
        dec = Decoder(load_tensors(frame.payload), allow_generators=False)
        timestep = dec.decode(h.get("timestep"))
        if not (_is_int(timestep) or isinstance(timestep, float) or _is_tensor(timestep)):
            raise _bad("callback timestep")
        tensors = dec.decode(h.get("tensors"))
        if not isinstance(tensors, dict):
            raise _bad("callback tensors")
        for key in tensors:
            if not public_name(key):  # the callback's callback_kwargs (and what it may spread)
                raise attribute_name_refused("a callback tensor", key)
        return CallbackRequest(step, timestep, MappingProxyType(tensors))
    if kind == "progress":
        # counts within what the host's progress bar (floats) can draw: 10**4000 raised
        # OverflowError inside tqdm on the host (red team round 9)
        bar, n, total = h.get("bar"), h.get("n"), h.get("total")
        if not (isinstance(bar, int) and _is_int(bar) and 0 <= bar < _MAX_BARS and isinstance(n, int) and _is_int(n)
                and 0 <= n <= _MAX_PROGRESS):
            raise _bad("progress")
        if total is not None and not (isinstance(total, int) and _is_int(total) and 0 <= total <= _MAX_PROGRESS):
            raise _bad("progress total")
        return Progress(bar, n, total, h.get("closed") is True)
    raise _bad(f"unknown kind {str(kind)[:40]!r}")


# ---------------------------------------------------------------------------------------------
# Host -> worker: the load request, one frozen type on both sides of the pipe.

def _bad_request(what: str) -> PolicyViolation:
    return PolicyViolation(f"the worker received a malformed load request: {what}", rule="worker.protocol", fix="reload")


@dataclass(frozen=True)
class LoadFile:
    """One weights file the worker must re-hash: relpath, the sha256 it must match ("" = none), size."""

    relpath: str
    sha256: str
    size: int


@dataclass(frozen=True)
class LoadRequest:
    """What the host sends to load one pipeline (the admitted source travels as the payload).

    Built by the host from an admitted load (``WorkerLoadRequest``), encoded by :meth:`header`,
    parsed in the worker by :meth:`parse`: the worker reads fields, never dict keys.
    """

    source_sha256: str
    filename: str
    root: str
    source: str
    commit: str | None
    files: tuple[LoadFile, ...]
    torch_dtype: str | None = None
    policy_extras: Mapping[str, tuple[str, ...]] | None = None
    import_aliases: Mapping[str, str] | None = None
    gpu_memory_fraction: float | None = None
    #: Verified-digest records (``Record.to_json()`` rows) from the host's store; the worker
    #: still checks each against the fstat of its own descriptor.
    digest_records: tuple[tuple[Any, ...], ...] = ()
    host_uid: int | None = None
    variant: str | None = None
    use_safetensors: bool | None = None
    #: The caller's components and options as JSON trees (``wire.components``; their tensors
    #: follow the source in the payload, which is ``source_len`` bytes long then).
    passed: Mapping[str, Any] | None = None
    source_len: int | None = None
    #: The folder links may stay inside while the worker reads (``pipewarden.fsaccess``): the HF
    #: cache folder for cache snapshots; None = ``root``.
    boundary: str | None = None

    def header(self) -> dict[str, Any]:
        return {
            "op": "load",
            "source_sha256": self.source_sha256,
            "filename": self.filename,
            "root": self.root,
            "source": self.source,
            "commit": self.commit,
            "files": {f.relpath: {"sha256": f.sha256, "size": f.size} for f in self.files},
            "torch_dtype": self.torch_dtype,
            "policy_extras": {k: list(v) for k, v in self.policy_extras.items()} if self.policy_extras else None,
            "import_aliases": dict(self.import_aliases) if self.import_aliases else None,
            "gpu_memory_fraction": self.gpu_memory_fraction,
            "digest_records": [list(r) for r in self.digest_records],
            "host_uid": self.host_uid,
            "variant": self.variant,
            "use_safetensors": self.use_safetensors,
            "passed": dict(self.passed) if self.passed else None,
            "source_len": self.source_len,
            "boundary": self.boundary,
        }

    @classmethod
    def parse(cls, h: Mapping[str, Any]) -> LoadRequest:  # noqa: C901 - one check per field
        def text(key: str, *, limit: int = 4096, optional: bool = False) -> str | None:
            v = h.get(key)
            if v is None and optional:
                return None
            if not isinstance(v, str) or len(v) > limit:
                raise _bad_request(key)
            return v

        if h.get("op") != "load":
            raise _bad_request("op")
        sha = text("source_sha256", limit=64)
        if sha is None or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise _bad_request("source_sha256")
        raw_files = h.get("files")
        if not isinstance(raw_files, dict):
            raise _bad_request("files")
        files = []
        for rel, rec in raw_files.items():
            if not isinstance(rel, str) or not isinstance(rec, dict) or set(rec) != {"sha256", "size"}:
                raise _bad_request("file entry")
            digest, size = rec["sha256"], rec["size"]
            if not isinstance(digest, str) or len(digest) not in (0, 64) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _bad_request(f"file entry {rel!r}")
            files.append(LoadFile(rel, digest, size))
        dtype = text("torch_dtype", limit=32, optional=True)
        if dtype is not None and (not dtype.isidentifier() or dtype.startswith("_")):
            raise _bad_request("torch_dtype")
        extras = h.get("policy_extras")
        policy_extras: dict[str, tuple[str, ...]] | None = None
        if extras is not None:
            if not isinstance(extras, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v) for k, v in extras.items()
            ):
                raise _bad_request("policy_extras")
            policy_extras = MappingProxyType({k: tuple(v) for k, v in extras.items()})  # type: ignore[assignment]
        aliases = h.get("import_aliases")
        if aliases is not None and not (
            isinstance(aliases, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())
        ):
            raise _bad_request("import_aliases")
        fraction = h.get("gpu_memory_fraction")
        if fraction is not None and (not isinstance(fraction, (int, float)) or isinstance(fraction, bool)):
            raise _bad_request("gpu_memory_fraction")
        commit = text("commit", limit=64, optional=True)
        records = h.get("digest_records", [])
        if not isinstance(records, list) or not all(isinstance(r, list) for r in records):
            raise _bad_request("digest_records")
        uid = h.get("host_uid")
        if uid is not None and (type(uid) is not int or uid < 0):
            raise _bad_request("host_uid")
        variant = text("variant", limit=32, optional=True)
        use_safetensors = h.get("use_safetensors")
        if use_safetensors is not None and not isinstance(use_safetensors, bool):
            raise _bad_request("use_safetensors")
        passed = h.get("passed")
        if passed is not None and not (isinstance(passed, dict) and all(isinstance(k, str) for k in passed)):
            raise _bad_request("passed")
        source_len = h.get("source_len")
        if source_len is not None and (type(source_len) is not int or source_len < 0):
            raise _bad_request("source_len")
        return cls(
            source_sha256=sha,
            filename=text("filename", limit=255) or "",
            root=text("root") or "",
            source=text("source") or "",
            commit=commit,
            files=tuple(files),
            torch_dtype=dtype,
            policy_extras=policy_extras,
            import_aliases=MappingProxyType(dict(aliases)) if aliases else None,
            gpu_memory_fraction=None if fraction is None else float(fraction),
            digest_records=tuple(tuple(r) for r in records),
            host_uid=uid,
            variant=variant,
            use_safetensors=use_safetensors,
            passed=MappingProxyType(dict(passed)) if passed else None,
            source_len=source_len,
            boundary=text("boundary", optional=True),
        )


@dataclass(frozen=True)
class AuditRequest:
    """Host -> worker: run one pipeline file once for ``pipewarden audit --run`` (source in the payload)."""

    source_sha256: str
    filename: str
    policy_extras: Mapping[str, tuple[str, ...]] | None = None
    import_aliases: Mapping[str, str] | None = None

    def header(self) -> dict[str, Any]:
        return {
            "op": "audit",
            "source_sha256": self.source_sha256,
            "filename": self.filename,
            "policy_extras": {k: list(v) for k, v in self.policy_extras.items()} if self.policy_extras else None,
            "import_aliases": dict(self.import_aliases) if self.import_aliases else None,
        }

    @classmethod
    def parse(cls, h: Mapping[str, Any]) -> AuditRequest:
        if h.get("op") != "audit":
            raise _bad_request("op")
        sha = h.get("source_sha256")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise _bad_request("source_sha256")
        filename = h.get("filename")
        if not isinstance(filename, str) or not 0 < len(filename) <= 255:
            raise _bad_request("filename")
        extras = h.get("policy_extras")
        if extras is not None and not (isinstance(extras, dict) and all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v) for k, v in extras.items()
        )):
            raise _bad_request("policy_extras")
        aliases = h.get("import_aliases")
        if aliases is not None and not (
            isinstance(aliases, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())
        ):
            raise _bad_request("import_aliases")
        return cls(
            source_sha256=sha,
            filename=filename,
            policy_extras=MappingProxyType({k: tuple(v) for k, v in extras.items()}) if extras else None,
            import_aliases=MappingProxyType(dict(aliases)) if aliases else None,
        )
