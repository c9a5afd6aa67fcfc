"""The one registry of rule ids.

Every refusal (:class:`pipewarden.errors.PipewardenError`) carries a ``rule`` that is an id from
this table; the audit's findings carry the audit's ``PW0xx`` ids (``pipewarden.audit.rules``,
listed here too) and point at a refusal id in ``sandbox_rule``; SECURITY.md's "Rule ids" tables
are generated from this module (``python -m pipewarden.rules``) and a test keeps them equal.

Ids are stable: an id may be retired, never renamed or reused for another meaning. A few
families are open-ended by construction and registered as a prefix: ``tripwire.<event>`` (the
audited event that was refused), ``compile.<compile rule>`` (the restricted compiler's own rule)
and ``syntax.<Node>`` (a statement RestrictedPython refuses, named after its AST node).

This module is data: it decides nothing and trusts nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class RuleInfo:
    """One registered rule id: the stage that raises it and what it means."""

    id: str
    stage: str
    meaning: str


# (id, stage, meaning). Grouped by stage; keep each group sorted.
# fmt: off
_TABLE: tuple[tuple[str, str, str], ...] = (
    # -- admission: may this code run at all? (registry/admission.py)
    ("trust.kill-switch", "admission", "PIPEWARDEN_DISABLE_REMOTE_CODE is set: no custom pipeline runs, whatever its source"),
    ("trust.opt-in", "admission", "custom pipeline code runs only with trust_remote_code=True (every source kind, community names included)"),
    ("trust.code-unpinned", "admission", "code runs only when pinned by pipeline_sha256=, a lock file entry or allowlist signatures"),
    ("trust.pin-mismatch", "admission", "pipeline_sha256 pins the exact pipeline source"),
    ("trust.bytes-changed", "admission", "the bytes compiled are the bytes verified and admitted"),
    ("trust.isolation-required", "admission", "the organisation allowlist sets a minimum isolation mode"),
    # -- lock files (registry/lockfile.py)
    ("lock.source-unlocked", "registry", "with a lock file, every source used must be locked"),
    ("lock.commit-mismatch", "registry", "a lock file pins the exact commit"),
    ("lock.digest-mismatch", "registry", "a lock file pins every file used, by sha256"),
    ("lock.malformed", "registry", "lock files are TOML written by `pipewarden lock`"),
    ("lock.unknown-source", "registry", "lock local paths, hub repos or community pipelines"),
    # -- allowlists (registry/allowlist.py, registry/_state.py)
    ("allowlist.bad-pattern", "registry", "source patterns use letters, digits, . _ - : / @ + ~ and the globs * ? **"),
    ("allowlist.bad-value", "registry", "allowlist fields have fixed types and known values"),
    ("allowlist.duplicate", "registry", "names, keys, patterns and signers of a rule are listed once"),
    ("allowlist.missing-key", "registry", "required allowlist keys must be present"),
    ("allowlist.revoked-key", "registry", "a revoked key never becomes a signer again and never counts"),
    ("allowlist.rollback", "registry", "allowlist versions only go up (rollback protection)"),
    ("allowlist.source-not-listed", "registry", "only sources matching an allowlist [[sources]] pattern may run"),
    ("allowlist.state-corrupt", "registry", "the record of allowlist versions seen is broken; rollback protection fails closed"),
    ("allowlist.state-unwritable", "registry", "allowlist versions seen are recorded so that an older allowlist is refused"),
    ("allowlist.threshold", "registry", "a source rule's threshold k can be met by its signers"),
    ("allowlist.unknown-key", "registry", "allowlists are strict: unknown keys are refused, never ignored"),
    ("allowlist.unknown-signer", "registry", "rules name listed, unrevoked signers"),
    ("allowlist.writable", "registry", "an allowlist is a trust file: owned by you or root, writable by its owner only, in a folder no other user may write"),
    # -- signatures and keys (registry/signatures.py, registry/keys.py)
    ("sig.expiry-past", "registry", "signatures are made to expire in the future"),
    ("sig.files-mismatch", "registry", "signers sign exactly the files present: no missing, unsigned or changed file"),
    ("sig.malformed", "registry", "signature files are written only by `pipewarden sign`"),
    ("sig.bad-manifest", "registry", "manifest paths are normalised relative POSIX paths with sha256 digests"),
    ("sig.missing", "registry", "the allowlist requires signatures for this source"),
    ("sig.threshold", "registry", "a source needs k distinct, unexpired, unrevoked accepted signers over exactly its files"),
    ("sig.too-many", "registry", "signature files are bounded"),
    ("modelsign.bad-key", "registry", "model-signing keys in an allowlist are ECDSA P-256/P-384/P-521 public keys, canonical DER in base64"),
    ("modelsign.extra-missing", "registry", "Sigstore (model-signing) signers are verified only with the model-signing extra installed; without it the rule fails closed"),
    ("modelsign.trust-root", "registry", "a Sigstore signer's trust root is the local trusted_root.json the allowlist pins by sha256 (never fetched)"),
    ("keys.bad-encoding", "registry", "keys are canonical standard base64 of 32-byte Ed25519 public keys, one line"),
    ("keys.bad-name", "registry", "names are 1-64 characters: letters, digits, '.', '_', '-', starting with a letter or digit"),
    ("keys.exists", "registry", "keygen never overwrites a key or a file"),
    ("keys.not-ed25519", "registry", "pipewarden signs with Ed25519 keys only"),
    ("keys.permissions", "registry", "private keys are readable by their owner only"),
    ("keys.public-not-private", "registry", "signing needs the private key file written by `pipewarden keygen`"),
    # -- registry files in general (registry/_toml.py, registry/_time.py)
    ("registry.bad-toml", "registry", "registry files are UTF-8 TOML"),
    ("registry.bad-time", "registry", "times are YYYY-MM-DD (start of that day, UTC) or YYYY-MM-DDTHH:MM:SSZ"),
    # -- what the user asked for (the spec parse)
    ("spec.custom-pipeline", "spec", "custom_pipeline is a local path, a hub repo id or a community pipeline name"),
    ("spec.source-id", "spec", "a source id is a hub repo id (org/name), community:NAME or local:/absolute/path (or an existing path)"),
    ("spec.weights", "spec", "the weights location is a local diffusers directory or a hub repo id"),
    # -- files on the host (loader/, registry/_files.py, keys)
    ("file.link-outside", "files", "host code never follows a symlink out of the directory it reads, nor writes through a planted one"),
    ("file.name-not-utf8", "files", "file names in signed and locked directories are UTF-8"),
    ("file.not-directory", "files", "signing and locking work on directories"),
    ("file.not-regular", "files", "pipewarden reads regular files only: no symlinks, devices, sockets or FIFOs"),
    ("file.too-large", "files", "files read by pipewarden are bounded in size"),
    ("file.too-many", "files", "directories read by pipewarden are bounded in number of files"),
    ("file.unreadable", "files", "the file or directory must exist and be readable"),
    ("file.unwritable", "files", "the output must be writable"),
    # -- pipeline code (loader/local.py, loader/hub.py)
    ("load.component-not-copyable", "loader", "in-process, the pipeline gets a private copy of each component the caller passes; one that cannot be copied is refused"),
    ("load.run-extra-missing", "loader", "loading pipelines needs torch and diffusers: the `run` extra (pip install 'pipewarden[run]')"),
    ("load.unsupported-keyword", "loader", "load_pipeline refuses from_pretrained keywords it does not support; none is silently ignored"),
    ("code.module-missing", "loader", "a pipeline directory or code repo holds its code in pipeline.py at its root"),
    ("code.not-python", "loader", "a pipeline file is Python source (.py)"),
    ("code.repo-too-large", "loader", "a hub code repo is bounded in files and bytes"),
    ("code.utf8", "loader", "pipeline sources are UTF-8 text"),
    # -- the hub (loader/_hf.py, loader/hub.py)
    ("hub.bad-commit", "loader", "every load is pinned to one 40-hex commit"),
    ("hub.bad-listing", "loader", "a repo listing names each file once, with the size and digests the hub publishes"),
    ("hub.bad-revision", "loader", "a revision is a branch, tag or 40-hex commit: letters, digits and . _ + - /, no '..' or control characters"),
    ("hub.bad-path", "loader", "repo paths are relative POSIX paths without '..', backslashes or control characters"),
    ("hub.cache-link", "loader", "snapshot entries link to content-addressed blobs of the same cache"),
    ("hub.cache-unwritable", "loader", "files are fetched into the HF cache (HF_HOME / HF_HUB_CACHE) before use"),
    ("hub.commit-changed", "loader", "a pinned commit is never silently replaced; every file comes from the commit resolved at the start"),
    ("hub.community-not-found", "loader", "community names are looked up in diffusers' community pipelines mirror"),
    ("hub.digest-mismatch", "loader", "every hub file and cache blob matches the size and the sha256 (LFS) or git SHA-1 (small files) the hub publishes"),
    ("hub.file-not-found", "loader", "files are fetched at the resolved commit only"),
    ("hub.gated", "loader", "gated repos need an accepted licence and a token"),
    ("hub.http-error", "loader", "a load needs a complete, successful answer from the hub"),
    ("hub.metadata-missing", "loader", "downloads need the commit id, ETag, size and digests the hub sends with every file"),
    ("hub.offline-not-cached", "loader", "HF_HUB_OFFLINE=1 loads from the local cache alone"),
    ("hub.repo-not-found", "loader", "the repo id must name an existing, readable hub repo"),
    ("hub.revision-not-found", "loader", "revision must be an existing branch, tag or commit"),
    ("hub.truncated", "loader", "a download must complete with the size the hub announced"),
    ("hub.unreachable", "loader", "a file is loaded from the hub or from a verified cache entry"),
    # -- weights and components (loader/components.py, loader/_safetensors.py)
    ("weights.bad-json", "loader", "model_index.json and component configs are JSON objects"),
    ("weights.changed-while-read", "loader", "weights must not change while they are loaded"),
    ("weights.digest-mismatch", "loader", "every file is re-hashed on every load and must match its pin"),
    ("weights.file-missing", "loader", "a diffusers weights directory holds model_index.json and each component's config and safetensors weights"),
    ("weights.malformed-safetensors", "loader", "weights must be well-formed safetensors"),
    ("weights.pickle-refused", "loader", "weights are read through safetensors only; pickle files are never fetched or opened"),
    ("weights.variant-missing", "loader", "variant= names weight files that exist in the repository"),
    ("weights.unpinned-file", "loader", "when weights are pinned (lock file, hub metadata), every file used must be pinned"),
    ("components.bad-config", "loader", "component configs must be valid for their class"),
    ("components.bad-entry", "loader", 'each model_index.json component is ["library", "ClassName"] under an identifier'),
    ("components.class-not-allowed", "loader", "components are built only from reviewed diffusers model and scheduler classes"),
    ("components.code-file", "loader", "component folders hold configs, safetensors and tokenizer data only: no code or pickle files"),
    ("components.code-reference", "loader", "configs never ask a library to import code from the repository (auto_map and similar keys)"),
    ("components.missing", "loader", "the pipeline class gets every component its __init__ requires"),
    ("components.unknown-keyword", "loader", "a component class takes only the arguments its __init__ accepts"),
    ("components.weights-mismatch", "loader", "weights must match the component config"),
    # -- the language sandbox: scan (sandbox/scan.py, sandbox/_load.py)
    ("scan.nul-byte", "sandbox", "a Python source file never contains NUL bytes"),
    ("scan.one-pipeline-class", "sandbox", "a pipeline file defines exactly one DiffusionPipeline subclass"),
    ("scan.source-size", "sandbox", "pipeline sources are bounded in size"),
    ("scan.syntax", "sandbox", "the source must parse (and not nest too deeply)"),
    ("scan.utf8", "sandbox", "pipeline sources are UTF-8 without lone surrogates"),
    # -- restricted compile (sandbox/compile.py); raised as compile.<rule>, reported by the audit as sandbox_rule
    ("attribute.dunder", "sandbox", "dunder attributes are refused except the reviewed idioms"),
    ("attribute.dunder-class", "sandbox", "__class__ only as x.__class__.__name__, in comparisons or f-strings"),
    ("attribute.dunder-get", "sandbox", "f.__get__ only as a call that binds a function the sandbox defined"),
    ("attribute.dunder-write", "sandbox", "dunder attributes are never written or deleted"),
    ("attribute.guard-hook", "sandbox", "guard-hook names are never attribute names"),
    ("attribute.inspect", "sandbox", "frame, code, traceback and generator internals are refused"),
    ("call.attention-processor-target", "sandbox", "attention processors only on components pipewarden built for this load"),
    ("call.dunder-keyword", "sandbox", "dunder keyword arguments are refused"),
    ("call.eval", "sandbox", "eval is refused"),
    ("call.exec", "sandbox", "exec is refused"),
    ("call.global-state", "sandbox", "set_grad_enabled only as a with item or decorator"),
    ("call.pipeline-module-target", "sandbox", "methods that change a component in place (load_state_dict, enable_*/disable_*, fuse_*, set_attention_slice, add_tokens) only on components this pipeline owns"),
    ("class.enum-mixin", "sandbox", "an Enum mixes in only builtin value types or the file's own classes"),
    ("class.host-protocol", "sandbox", "a sandbox class may not derive from a host class that exports memory to native code or changes process-wide state as a context manager"),
    ("class.init-subclass", "sandbox", "host bases whose __init_subclass__ runs on the sandbox's class must be reviewed"),
    ("class.keywords", "sandbox", "class statements take no keywords (metaclass=, **kwargs)"),
    ("class.metaclass", "sandbox", "metaclasses are refused"),
    ("compile.internal", "sandbox", "the restricted tree failed to compile (a pipewarden bug; report the file)"),
    ("import.lazy", "sandbox", "lazy imports are refused"),
    ("import.star", "sandbox", "star imports are refused"),
    ("name.dunder", "sandbox", "dunder names are refused except module metadata"),
    ("name.guard-hook", "sandbox", "guard-hook names are never bound or read"),
    ("name.reserved", "sandbox", "reserved names are refused"),
    ("name.roles", "sandbox", "names ending in __roles__ are refused"),
    ("name.underscore", "sandbox", "names starting with '_' are refused where RestrictedPython refuses them"),
    ("restricted", "sandbox", "a construct RestrictedPython refuses"),
    ("syntax.augassign", "sandbox", "unsupported augmented assignment target or operator"),
    ("syntax.comprehension-unpacking", "sandbox", "unpacking in comprehensions is refused"),
    ("syntax.walrus-target", "sandbox", "assignment expressions bind plain names only"),
    ("syntax.yield-in-with", "sandbox", "yield inside a with block is refused"),
    # -- restricted exec and run time (sandbox/_load.py, sandbox/runtime/)
    ("argument.array-like", "sandbox", "numpy/torch/PIL entry points take arrays, tensors, images, numbers and lists of them, never objects whose array protocols data can steer"),
    ("argument.attention-processor", "sandbox", "attention processors are diffusers classes or classes the vetted file defines"),
    ("argument.attribute-list", "sandbox", "functools.wraps with custom attribute lists is refused"),
    ("argument.attribute-name", "sandbox", "names that become nn.Module registry entries are public identifiers; attribute_map targets are plain names"),
    ("argument.component-name", "sandbox", "component names passed to the pipeline are public identifiers"),
    ("argument.config-path", "sandbox", "from_config/from_pretrained take config mappings, never a path or repo id"),
    ("argument.dunder-key", "sandbox", "mapping keys that would become attributes are not dunder names"),
    ("argument.foreign-memory", "sandbox", "no array or tensor views memory it did not allocate: numpy.ndarray(buffer=...) is refused, read-only buffers reach torch as private copies"),
    ("argument.format-traversal", "sandbox", "format strings and mappings cannot traverse attributes"),
    ("argument.memo", "sandbox", "copy.deepcopy takes no memo dict"),
    ("argument.name-type", "sandbox", "names handed to code-generating host helpers (namedtuple) are plain str"),
    ("argument.take-from", "sandbox", "take_from= must not read attributes outside the policy"),
    ("attribute.denied", "sandbox", "attributes refused on every object (files, network, processes, interpreter)"),
    ("attribute.name-type", "sandbox", "attribute names are strings"),
    ("attribute.not-allowlisted", "sandbox", "only attributes on the per-type allowlist may be read"),
    ("builtins.range-bound", "sandbox", "range is bounded"),
    ("builtins.refused", "sandbox", "builtins outside the reviewed list are refused"),
    ("call.host-init", "sandbox", "__init__ runs only on objects the sandbox created"),
    ("call.modifies-host-object", "sandbox", "methods that modify an object run only on objects the sandbox created"),
    ("call.unbound-host-method", "sandbox", "unbound host methods only on instances that do not override them"),
    ("class.bases", "sandbox", "sandbox classes derive only from allowed classes"),
    ("class.dunder", "sandbox", "class namespaces define only reviewed dunder methods"),
    ("class.enum-without-members", "sandbox", "enums define their members"),
    ("class.name", "sandbox", "class statements have identifier names and tuple bases"),
    ("class.namespace", "sandbox", "class namespaces are dicts with string keys"),
    ("class.file-name", "sandbox", "class data host code uses as a file name ([file_names]: config_name, ...) holds a plain file name"),
    ("class.set-name", "sandbox", "class attributes whose __set_name__ runs host code must be of a reviewed type"),
    ("construct.file-reading-class", "sandbox", "classes whose constructors read files are never built in the sandbox"),
    ("exec.module-body", "sandbox", "the module body runs without errors under the sandbox policy"),
    ("exec.recursion", "sandbox", "the module body does not recurse too deeply"),
    ("facade.not-allowlisted", "sandbox", "only names on the module's allowlist are available"),
    ("facade.private-name", "sandbox", "private and dunder names of modules are unavailable"),
    ("import.name-type", "sandbox", "import names are strings"),
    ("import.not-allowlisted", "sandbox", "only modules on the policy's list may be imported (as facades)"),
    ("import.private-module", "sandbox", "private modules are never imported"),
    ("internal.wrap", "sandbox", "the sandbox wraps only functions (a pipewarden bug if raised)"),
    ("item.facade", "sandbox", "module facades are not subscriptable"),
    ("attribute.host-metaclass", "sandbox", "a host metaclass's methods (ABCMeta.register) are not called on the pipeline's classes"),
    ("item.typing-parameter", "sandbox", "a class or typing form is never subscripted with the pipeline's own objects (host typing caches keep them)"),
    ("iter.facade", "sandbox", "module facades are not iterable"),
    ("policy.malformed", "sandbox", "the sandbox policy data is strict: unknown keys and values are refused (fail closed)"),
    ("policy.unresolved", "sandbox", "every class path and module the sandbox policy names resolves in the installed libraries (fail closed)"),
    ("policy.replace", "sandbox", "sandbox replacements are named in the policy"),
    ("deputy.eval", "sandbox", "host helpers never eval() annotation strings for the sandbox (inspect.signature(eval_str=True))"),
    ("deputy.factory", "sandbox", "dataclasses.asdict/astuple take no custom factory (the host would call it on every level)"),
    ("deputy.reduction", "sandbox", "copy/deepcopy/asdict honour only reduction hooks that are host code"),
    ("value.forbidden-type", "sandbox", "sandboxed code never holds modules, frames, code objects and similar"),
    ("value.metaclass", "sandbox", "sandboxed code never holds a metaclass"),
    ("value.nesting", "sandbox", "host containers are bounded in depth"),
    ("value.raw-builtin", "sandbox", "sandboxed code never holds a raw builtin"),
    ("write.facade", "sandbox", "module facades are never written"),
    ("write.host-class", "sandbox", "host classes are never written"),
    ("write.file-name", "sandbox", "writes of [file_names] data on the sandbox's own classes and objects hold plain file names"),
    ("write.host-object", "sandbox", "objects the sandbox did not create are never written"),
    ("write.host-state", "sandbox", "containers owned by host objects or classes are never modified"),
    ("write.pipeline-name", "sandbox", "on components built for this load: public names or new private ones; never dunders, hook/file names, properties or private host state"),
    ("write.pipeline-value", "sandbox", "callables set on components built for this load are the pipeline's own code, modules or diffusers attention processors"),
    ("write.tensor-attribute", "sandbox", "tensor attributes are never written"),
    # -- the worker process and its wire (isolation/)
    ("worker.callback-failed", "isolation", "a host callback raised; its exception is raised on the host and the call is abandoned"),
    ("worker.callback-result", "isolation", "callback_on_step_end returns a dict (the diffusers callback protocol)"),
    ("worker.closed", "isolation", "a closed worker cannot run; load the pipeline again"),
    ("worker.crashed", "isolation", "a crashing worker cannot harm the host; its pipeline is gone"),
    ("worker.forkserver", "isolation", "process isolation needs a working fork server"),
    ("worker.layers-missing", "isolation", "the allowlist requires these isolation layers (required_layers)"),
    ("worker.method", "isolation", "the handle calls __call__ and the public methods the vetted pipeline file defines"),
    ("worker.no-processes", "isolation", "the worker cannot start new processes (seccomp)"),
    ("worker.object-component", "isolation", 'isolation="process" sends only verified files to the worker, never Python objects'),
    ("worker.pipeline-error", "isolation", "errors inside the isolated worker are reported by type name and message only"),
    ("worker.protocol", "isolation", "worker requests and answers follow a fixed protocol"),
    ("worker.result-generator", "isolation", "a returned stream cannot cross the process boundary; it is closed in the worker"),
    ("worker.source-mismatch", "isolation", "the worker re-verifies every digest of its load request before use"),
    ("worker.start", "isolation", "the fork server starts a fresh worker per pipeline"),
    ("worker.unverified-source", "isolation", "only verified, admitted source is sent to a worker"),
    ("wire.attribute-name", "isolation", "worker-chosen names that host code could turn into attributes or keywords (config keys, output fields, component and callback tensor names) are public identifiers"),
    ("wire.framing", "isolation", "worker messages are length-prefixed JSON + safetensors frames"),
    ("wire.malformed-message", "isolation", "worker messages have a fixed schema, validated on receipt"),
    ("wire.malformed-value", "isolation", "worker results are JSON trees with safetensors tensors, validated on receipt"),
    ("wire.too-deep", "isolation", "values crossing the process boundary are at most 32 levels deep"),
    ("wire.unsupported-type", "isolation", "only JSON values, tensors, numpy arrays, PIL images and output dataclasses cross"),
    ("limits.cpu", "isolation", "Limits.cpu_s bounds the CPU time (all threads) of each request to the worker"),
    ("limits.file-size", "isolation", "Limits.file_size_mb bounds every file the worker writes"),
    ("limits.memory", "isolation", "Limits.memory_mb bounds the worker's memory"),
    ("limits.scratch", "isolation", "Limits.scratch_mb bounds all the files the worker writes together (its own tmpfs)"),
    ("limits.message-size", "isolation", "Limits.max_message_mb bounds every message from the worker"),
    ("limits.wall-clock", "isolation", "Limits.wall_s bounds every request to the worker"),
    # -- tools
    ("audit.path-missing", "audit", "audit paths must exist"),
    ("cli.bad-argument", "cli", "a command-line argument is missing or malformed"),
    ("cli.output-unwritable", "cli", "--output must be a writable file path"),
    ("policy.invalid", "loader", "the component policy data (loader/policy/components.toml) is well-formed"),
    ("policy.extras-invalid", "cli", "allowlist policy extras may only add modules and aliases"),
)

#: Open-ended families: prefix -> meaning. The suffix names the event, compile rule or AST node.
_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("tripwire.", "sandbox", "the audit-hook tripwire refused an audited event while sandboxed code ran (suffix: the event)"),
    ("compile.", "sandbox", "the restricted compiler refused the file (suffix: the first compile rule)"),
    ("syntax.", "sandbox", "a statement RestrictedPython refuses (suffix: its AST node name)"),
)
# fmt: on

RULES: Mapping[str, RuleInfo] = MappingProxyType({i: RuleInfo(i, s, m) for i, s, m in _TABLE})
FAMILIES: Mapping[str, RuleInfo] = MappingProxyType({p: RuleInfo(p, s, m) for p, s, m in _FAMILIES})

_SUFFIX = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def lookup(rule: str) -> RuleInfo | None:
    """The registered entry for ``rule`` (an exact id, or the family it belongs to), else None."""
    info = RULES.get(rule)
    if info is not None:
        return info
    for prefix, fam in FAMILIES.items():
        if rule.startswith(prefix) and _SUFFIX.fullmatch(rule[len(prefix) :]):
            return fam
    return None


def is_registered(rule: object) -> bool:
    return isinstance(rule, str) and lookup(rule) is not None


def audit_ids() -> tuple[str, ...]:
    """The audit's ``PW0xx`` ids (their table lives in ``pipewarden.audit.rules``)."""
    from pipewarden.audit import rules as audit_rules

    return tuple(r.id for r in audit_rules.RULES)


def markdown() -> str:
    """The SECURITY.md "Rule ids" tables, generated from this registry."""
    from pipewarden.audit import rules as audit_rules

    lines = ["| rule id | stage | meaning |", "|---|---|---|"]
    for info in RULES.values():
        lines.append(f"| `{info.id}` | {info.stage} | {info.meaning} |")
    for info in FAMILIES.values():
        lines.append(f"| `{info.id}*` | {info.stage} | {info.meaning} |")
    lines += ["", "| audit id | name | severity | meaning |", "|---|---|---|---|"]
    for r in audit_rules.RULES:
        lines.append(f"| `{r.id}` | {r.name} | {r.severity} | {r.message} |")
    return "\n".join(lines) + "\n"


def _check_table() -> None:
    ids = [i for i, _, _ in _TABLE]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:  # pragma: no cover - guarded by tests
        raise RuntimeError(f"duplicate rule ids: {sorted(dup)}")


_check_table()

if __name__ == "__main__":  # pragma: no cover
    print(markdown(), end="")
