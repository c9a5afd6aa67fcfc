"""The organisation allowlist: which sources may run, signed by whom, and sandbox policy extras.

Untrusted TOML bytes enter in one place (:meth:`Allowlist.from_bytes`) and become a frozen,
validated :class:`Allowlist`; nothing downstream sees a raw dict. Validation is strict: unknown
keys, wrong types, duplicate names or keys, a signer that is also revoked, a rule naming an
unknown signer and an impossible threshold are all ``InputError`` (a typo in a security file must
not silently loosen it). An allowlist with no ``[[sources]]`` allows nothing (fails closed).
:meth:`Allowlist.load` also enforces rollback protection: ``version`` may never go below the
highest version seen for that file (see ``_state``).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipewarden.errors import InputError
from pipewarden.loader.digests import is_sha256_hex, sha256_bytes
from pipewarden.registry import _toml
from pipewarden.registry._state import VersionStore
from pipewarden.registry._time import from_toml_value
from pipewarden.registry.keys import PublicKey, check_name
from pipewarden.registry.modelsign import ModelSigningKey, SigstoreIdentity, sigstore_identity

#: What identifies a signer: a pipewarden Ed25519 key, a model-signing ECDSA key, or a Sigstore
#: identity (certificate identity + OIDC issuer + pinned trust root). Each has ``key_id``.
Credential = PublicKey | ModelSigningKey | SigstoreIdentity

__all__ = ["Allowlist", "AllowlistPolicy", "Credential", "RevokedSigner", "Signer", "SourceRule", "ISOLATION_MODES"]

#: Isolation modes an allowlist may require, weakest first.
ISOLATION_MODES = ("inprocess", "process")
MAX_ALLOWLIST_BYTES = 1024 * 1024
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATTERN_RE = re.compile(r"[A-Za-z0-9._:/@+*?~-]{1,256}")
_HEADER = (
    "pipewarden allowlist: which pipeline sources may run, signed by whom.\n"
    "Edit with `pipewarden allowlist add-signer|allow|revoke`; each edit raises `version`.\n"
    "Format: see README.md, section 'Allowlist file format'."
)
_UNSET: Any = object()


@dataclass(frozen=True)
class Signer:
    """A reviewer whose signatures count while ``expires`` (if set) has not passed.

    ``public_key`` is the signer's credential: a :class:`PublicKey` (pipewarden's own Ed25519
    signatures), a :class:`ModelSigningKey` or a :class:`SigstoreIdentity` (OpenSSF model-signing
    signatures, see ``registry/modelsign.py``).
    """

    name: str
    public_key: Credential
    expires: _dt.datetime | None = None

    @property
    def key_id(self) -> str:
        return self.public_key.key_id


@dataclass(frozen=True)
class RevokedSigner:
    """A key (or Sigstore identity) whose signatures never count again."""

    name: str
    public_key: Credential
    reason: str = ""

    @property
    def key_id(self) -> str:
        return self.public_key.key_id


_STAR, _DSTAR, _QMARK = object(), object(), object()


def _tokens(pattern: str) -> tuple[object, ...]:
    out: list[object] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(_DSTAR)
            i += 2
        elif pattern[i] == "*":
            out.append(_STAR)
            i += 1
        elif pattern[i] == "?":
            out.append(_QMARK)
            i += 1
        else:
            out.append(pattern[i])
            i += 1
    return tuple(out)


def glob_match(pattern: str, text: str) -> bool:
    """Whole-string glob match: ``*`` and ``?`` stay within one ``/`` segment, ``**`` crosses them.

    A set-of-states simulation (time ``O(len(pattern) * len(text))``, no backtracking), so no
    pattern can make matching slow.
    """
    toks = _tokens(pattern)
    end = len(toks)

    def closure(states: set[int]) -> set[int]:
        todo = list(states)
        while todo:
            i = todo.pop()
            if i < end and toks[i] in (_STAR, _DSTAR) and i + 1 not in states:
                states.add(i + 1)
                todo.append(i + 1)
        return states

    states = closure({0})
    for ch in text:
        nxt: set[int] = set()
        for i in states:
            if i == end:
                continue
            t = toks[i]
            if t is _DSTAR or (t is _STAR and ch != "/"):
                nxt.add(i)
            elif (t is _QMARK and ch != "/") or t == ch:
                nxt.add(i + 1)
        if not nxt:
            return False
        states = closure(nxt)
    return end in states


@dataclass(frozen=True)
class SourceRule:
    """Sources matching ``pattern`` need ``threshold`` distinct valid signatures from ``signers``."""

    pattern: str
    signers: tuple[str, ...]
    threshold: int

    def matches(self, source: str) -> bool:
        if glob_match(self.pattern, source):
            return True
        # Hub ids resolve case-insensitively on the hub: `acme/Critical` IS `acme/critical`, so a
        # rule written for either spelling applies to both (every matching rule must hold, so
        # matching more rules is never weaker). Local paths stay case-sensitive.
        if _is_hub_source(source):
            return glob_match(self.pattern.lower(), source.lower())
        return False


def _is_hub_source(source: str) -> bool:
    head = source.split("/", 1)[0]
    return ":" not in head


#: Names of the worker confinement layers (``pipewarden.isolation.LAYER_NAMES``; a test
#: keeps the two in sync without importing the isolation package here).
KNOWN_LAYERS: tuple[str, ...] = (
    "env", "netns", "ipcns", "scratch-fs", "uid", "rlimits", "landlock-fs", "landlock-net", "landlock-scope", "seccomp", "tripwire", "wall-clock",
)


@dataclass(frozen=True)
class AllowlistPolicy:
    """Sandbox settings an organisation adds: a minimum isolation mode and extra modules/aliases."""

    #: The least isolation a load must use. Absent from the file: "process" (the worker is the
    #: security boundary; the in-process sandbox is defence in depth, see SECURITY.md).
    required_isolation: str | None = "process"
    extra_modules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    import_aliases: Mapping[str, str] = field(default_factory=dict)
    #: Worker confinement layers that must be active (names as in ``pipewarden doctor``).
    required_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "extra_modules", MappingProxyType({k: tuple(v) for k, v in self.extra_modules.items()})
        )
        object.__setattr__(self, "import_aliases", MappingProxyType(dict(self.import_aliases)))
        object.__setattr__(self, "required_layers", tuple(sorted(set(self.required_layers))))

    def allows_isolation(self, mode: str) -> bool:
        if self.required_isolation is None:
            return True
        if mode not in ISOLATION_MODES:
            return False
        return ISOLATION_MODES.index(mode) >= ISOLATION_MODES.index(self.required_isolation)


@dataclass(frozen=True)
class Allowlist:
    """A parsed, validated allowlist. Build with :meth:`load` / :meth:`from_bytes`, not by hand."""

    version: int
    signers: tuple[Signer, ...] = ()
    revoked: tuple[RevokedSigner, ...] = ()
    sources: tuple[SourceRule, ...] = ()
    policy: AllowlistPolicy = field(default_factory=AllowlistPolicy)
    #: sha256 of the bytes this allowlist was parsed from ("" when built in memory).
    sha256: str = ""
    #: Where it was read from, for messages.
    origin: str = "<allowlist>"

    # -- convenience views used by the loader -------------------------------------------------
    @property
    def required_isolation(self) -> str | None:
        return self.policy.required_isolation

    @property
    def extra_modules(self) -> Mapping[str, tuple[str, ...]]:
        return self.policy.extra_modules

    @property
    def import_aliases(self) -> Mapping[str, str]:
        return self.policy.import_aliases

    def signer_named(self, name: str) -> Signer | None:
        return next((s for s in self.signers if s.name == name), None)

    def signer_for_key(self, key_id: str) -> Signer | None:
        return next((s for s in self.signers if s.key_id == key_id), None)

    def revoked_for_key(self, key_id: str) -> RevokedSigner | None:
        return next((r for r in self.revoked if r.key_id == key_id), None)

    def rules_for(self, source: str) -> tuple[SourceRule, ...]:
        """Every rule whose pattern matches ``source`` (all of them must be satisfied)."""
        if not isinstance(source, str):
            raise TypeError("source must be a str")
        return tuple(r for r in self.sources if r.matches(source))

    # -- parsing ------------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes, *, origin: str = "<allowlist>") -> Allowlist:
        """Parse and validate untrusted TOML bytes (no rollback check: see :meth:`load`).

        Relative file names in it (a Sigstore trust root) resolve against the directory of
        ``origin`` when ``origin`` is a path, else against the current directory.
        """
        doc = _toml.loads(data, what=f"allowlist {origin}", limit=MAX_ALLOWLIST_BYTES)
        base_dir = None if origin.startswith("<") else os.path.dirname(os.path.abspath(origin))
        return _parse(doc, sha256=sha256_bytes(bytes(data)), origin=origin, base_dir=base_dir)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        version_store: VersionStore | None = None,
        unsafe_skip_rollback_check: bool = False,
    ) -> Allowlist:
        """Read, parse and validate ``path``; refuse a ``version`` lower than one seen before."""
        p = Path(path)
        data = _read_bounded(p, MAX_ALLOWLIST_BYTES, what="allowlist")
        allowlist = cls.from_bytes(data, origin=str(p))
        if not unsafe_skip_rollback_check:
            store = version_store if version_store is not None else VersionStore.default()
            store.check_and_record(identity_of(p), allowlist.version, what=f"allowlist {p}")
        return allowlist

    # -- editing (used by the CLI); each returns a new Allowlist with version + 1 ---------------
    def with_signer(
        self, name: str, public_key: Credential, *, expires: _dt.datetime | None = None
    ) -> Allowlist:
        check_name(name)
        if self.revoked_for_key(public_key.key_id) is not None:
            raise InputError(
                f"the key for {name!r} was revoked",
                rule="allowlist.revoked-key",
                fix="generate a new key",
            )
        existing = self.signer_for_key(public_key.key_id)
        if existing is not None and existing.name != name:
            raise InputError(
                f"this key is already listed as signer {existing.name!r}", rule="allowlist.duplicate"
            )
        if any(r.name == name for r in self.revoked):
            raise InputError(
                f"the name {name!r} belongs to a revoked signer",
                rule="allowlist.duplicate",
                fix="choose another name",
            )
        signers = [s for s in self.signers if s.name != name] + [Signer(name, public_key, expires)]
        return self._bumped(signers=tuple(signers))

    def with_rule(self, pattern: str, signers: Iterable[str], threshold: int) -> Allowlist:
        names = tuple(signers)
        rule = _parse_rule({"pattern": pattern, "signers": list(names), "threshold": threshold}, "new rule")
        for n in rule.signers:
            if self.signer_named(n) is None:
                raise InputError(
                    f"signer {n!r} is not in the allowlist",
                    rule="allowlist.unknown-signer",
                    fix=f"add it first: pipewarden allowlist add-signer FILE --name {n} --public-key ...",
                )
        rules = [r for r in self.sources if r.pattern != pattern] + [rule]
        return self._bumped(sources=tuple(rules))

    def with_revoked(self, name: str, *, reason: str = "") -> Allowlist:
        signer = self.signer_named(name)
        if signer is None:
            raise InputError(f"no signer named {name!r}", rule="allowlist.unknown-signer")
        revoked = (*self.revoked, RevokedSigner(name, signer.public_key, reason))
        return self._bumped(signers=tuple(s for s in self.signers if s.name != name), revoked=revoked)

    def with_policy(
        self,
        *,
        required_isolation: str | None = _UNSET,
        extra_modules: Mapping[str, Iterable[str]] | None = _UNSET,
        import_aliases: Mapping[str, str] | None = _UNSET,
    ) -> Allowlist:
        """Replace the given policy settings (``None`` clears one); others are kept."""
        pol = self.policy
        iso = pol.required_isolation if required_isolation is _UNSET else required_isolation
        extra = pol.extra_modules if extra_modules is _UNSET else (extra_modules or {})
        aliases = pol.import_aliases if import_aliases is _UNSET else (import_aliases or {})
        new = AllowlistPolicy(
            required_isolation=iso,
            extra_modules={k: tuple(v) for k, v in extra.items()},
            import_aliases=dict(aliases),
            required_layers=pol.required_layers,
        )
        return self._bumped(policy=new)

    def _bumped(self, **changes: Any) -> Allowlist:
        candidate = replace(self, version=self.version + 1, sha256="", **changes)
        # Re-validate through the one parser so an edit cannot produce what parsing would refuse.
        return Allowlist.from_bytes(candidate.to_toml().encode("utf-8"), origin=self.origin)

    # -- writing ------------------------------------------------------------------------------
    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"version": self.version}
        pol: dict[str, Any] = {}
        # always written: an absent key means "process", so "no minimum" is spelled "inprocess"
        pol["required_isolation"] = self.policy.required_isolation or "inprocess"
        if self.policy.extra_modules:
            pol["extra_modules"] = {k: list(v) for k, v in self.policy.extra_modules.items()}
        if self.policy.import_aliases:
            pol["import_aliases"] = dict(self.policy.import_aliases)
        if self.policy.required_layers:
            pol["required_layers"] = list(self.policy.required_layers)
        if pol:
            doc["policy"] = pol
        if self.signers:
            doc["signers"] = [
                {
                    "name": s.name,
                    **_credential_fields(s.public_key, revoked=False),
                    **({"expires": s.expires} if s.expires else {}),
                }
                for s in self.signers
            ]
        if self.revoked:
            doc["revoked"] = [
                {
                    "name": r.name,
                    **_credential_fields(r.public_key, revoked=True),
                    **({"reason": r.reason} if r.reason else {}),
                }
                for r in self.revoked
            ]
        if self.sources:
            doc["sources"] = [
                {"pattern": r.pattern, "signers": list(r.signers), "threshold": r.threshold}
                for r in self.sources
            ]
        return doc

    def to_toml(self) -> str:
        return _toml.dumps(self.to_document(), header=_HEADER)


def _credential_fields(cred: Credential, *, revoked: bool) -> dict[str, str]:
    if isinstance(cred, PublicKey):
        return {"public_key": cred.text}
    if isinstance(cred, ModelSigningKey):
        return {"model_signing_key": cred.text}
    out = {"sigstore_identity": cred.identity, "sigstore_issuer": cred.issuer}
    if not revoked:
        out["sigstore_trust_root"] = cred.trust_root
        out["sigstore_trust_root_sha256"] = cred.trust_root_sha256
    return out


def empty_allowlist(version: int = 0) -> Allowlist:
    """No signers, no sources: the starting point of ``allowlist`` edits (allows nothing).

    The first edit writes ``version + 1``; the CLI passes the highest version already seen for
    the path, so a re-created file is never "older" than one seen before.
    """
    return Allowlist(version=version)


def identity_of(path: str | os.PathLike[str]) -> str:
    """The rollback-protection identity of an allowlist: the absolute path *as named*.

    Not the resolved path: an allowlist mounted as a symlink (Kubernetes ConfigMaps swap
    ``..data`` to a new folder on every update) keeps one identity however its link is swapped, so
    an older version behind a swapped link is a rollback, not a new file.
    """
    return "path:" + os.path.normpath(os.path.abspath(os.fspath(path)))


def _read_bounded(path: Path, limit: int, *, what: str) -> bytes:
    from pipewarden.fsaccess import read_user_file

    return read_user_file(path, limit=limit, what=what, private_writes=True)


# -- validation --------------------------------------------------------------------------------
def _bad(what: str, rule: str, fix: str = "see README.md, section 'Allowlist file format'") -> InputError:
    return InputError(what, rule=rule, fix=fix)


def _keys(table: Mapping[str, Any], allowed: set[str], required: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _bad(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}",
            "allowlist.unknown-key",
        )
    missing = sorted(required - set(table))
    if missing:
        raise _bad(
            f"{where}: missing key(s) {', '.join(map(repr, missing))}", "allowlist.missing-key"
        )


def _str(v: Any, where: str, *, max_len: int = 1024) -> str:
    if not isinstance(v, str) or len(v) > max_len:
        raise _bad(f"{where} must be a string of at most {max_len} characters", "allowlist.bad-value")
    return v


def _int(v: Any, where: str, *, minimum: int) -> int:
    if type(v) is not int or v < minimum or v > 2**53:
        raise _bad(f"{where} must be an integer >= {minimum}", "allowlist.bad-value")
    return v


def _table(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise _bad(f"{where} must be a table", "allowlist.bad-value")
    return v


def _array(v: Any, where: str, *, max_len: int = 10_000) -> list[Any]:
    if not isinstance(v, list) or len(v) > max_len:
        raise _bad(f"{where} must be an array (at most {max_len} items)", "allowlist.bad-value")
    return v


def _public_key(v: Any, where: str) -> PublicKey:
    return PublicKey.from_text(_str(v, where), what=where)


_CREDENTIAL_KEYS = ("public_key", "model_signing_key", "sigstore_identity")
_SIGSTORE_KEYS = {"sigstore_issuer", "sigstore_trust_root", "sigstore_trust_root_sha256"}


def _credential(t: Mapping[str, Any], where: str, *, revoked: bool, base_dir: str | None) -> Credential:
    """Exactly one of ``public_key`` / ``model_signing_key`` / ``sigstore_identity`` (+ its keys)."""
    given = [k for k in _CREDENTIAL_KEYS if k in t]
    if len(given) != 1:
        raise _bad(
            f"{where} must have exactly one of {', '.join(_CREDENTIAL_KEYS)}",
            "allowlist.missing-key" if not given else "allowlist.bad-value",
        )
    sigstore_needed = {"sigstore_issuer"} if revoked else _SIGSTORE_KEYS
    if given[0] != "sigstore_identity":
        extra = sorted(_SIGSTORE_KEYS & set(t))
        if extra:
            raise _bad(f"{where}: {', '.join(extra)} belong(s) to a sigstore_identity signer", "allowlist.bad-value")
        if given[0] == "public_key":
            return _public_key(t["public_key"], f"{where}.public_key")
        return ModelSigningKey.from_text(_str(t["model_signing_key"], f"{where}.model_signing_key"),
                                         what=f"{where}.model_signing_key")
    missing = sorted(sigstore_needed - set(t))
    if missing:
        raise _bad(f"{where}: a sigstore_identity signer needs {', '.join(missing)}", "allowlist.missing-key")
    if revoked and (_SIGSTORE_KEYS - {"sigstore_issuer"}) & set(t):
        raise _bad(f"{where}: a revoked identity has no trust root", "allowlist.unknown-key")
    identity = _str(t["sigstore_identity"], f"{where}.sigstore_identity")
    issuer = _str(t["sigstore_issuer"], f"{where}.sigstore_issuer")
    if not identity.strip() or not issuer.startswith("https://"):
        raise _bad(f"{where}: sigstore_identity must be non-empty and sigstore_issuer an https:// URL",
                   "allowlist.bad-value")
    if revoked:
        return SigstoreIdentity(identity, issuer)
    root = _str(t["sigstore_trust_root"], f"{where}.sigstore_trust_root", max_len=4096)
    digest = _str(t["sigstore_trust_root_sha256"], f"{where}.sigstore_trust_root_sha256", max_len=64)
    if not root or "\x00" in root:
        raise _bad(f"{where}.sigstore_trust_root must name a file", "allowlist.bad-value")
    if not is_sha256_hex(digest):
        raise _bad(f"{where}.sigstore_trust_root_sha256 must be a lowercase sha256 hex string",
                   "allowlist.bad-value")
    return sigstore_identity(identity, issuer, root, digest, base_dir=base_dir)


def _parse_rule(t: Mapping[str, Any], where: str) -> SourceRule:
    _keys(t, {"pattern", "signers", "threshold"}, {"pattern", "signers", "threshold"}, where)
    pattern = _str(t["pattern"], f"{where}.pattern", max_len=256)
    if not _PATTERN_RE.fullmatch(pattern):
        raise _bad(
            f"{where}.pattern {pattern!r} is not a valid source pattern",
            "allowlist.bad-pattern",
        )
    names = tuple(_str(n, f"{where}.signers[]", max_len=64) for n in _array(t["signers"], f"{where}.signers"))
    if not names:
        raise _bad(f"{where} accepts no signers", "allowlist.unknown-signer")
    if len(set(names)) != len(names):
        raise _bad(f"{where} lists a signer twice", "allowlist.duplicate")
    for n in names:
        check_name(n)
    threshold = _int(t["threshold"], f"{where}.threshold", minimum=1)
    if threshold > len(names):
        raise _bad(
            f"{where}: threshold {threshold} is more than its {len(names)} signer(s)",
            "allowlist.threshold",
        )
    return SourceRule(pattern=pattern, signers=names, threshold=threshold)


def _parse(doc: Mapping[str, Any], *, sha256: str, origin: str, base_dir: str | None = None) -> Allowlist:
    where = f"allowlist {origin}"
    _keys(doc, {"version", "signers", "revoked", "sources", "policy"}, {"version"}, where)
    version = _int(doc["version"], f"{where}: version", minimum=1)

    signers: list[Signer] = []
    for i, raw in enumerate(_array(doc.get("signers", []), f"{where}: signers")):
        w = f"{where}: signers[{i}]"
        t = _table(raw, w)
        _keys(t, {"name", "expires", *_CREDENTIAL_KEYS, *_SIGSTORE_KEYS}, {"name"}, w)
        expires = from_toml_value(t["expires"], what=f"{w}.expires") if "expires" in t else None
        signers.append(
            Signer(
                check_name(_str(t["name"], f"{w}.name", max_len=64)),
                _credential(t, w, revoked=False, base_dir=base_dir),
                expires,
            )
        )

    revoked: list[RevokedSigner] = []
    for i, raw in enumerate(_array(doc.get("revoked", []), f"{where}: revoked")):
        w = f"{where}: revoked[{i}]"
        t = _table(raw, w)
        _keys(t, {"name", "reason", *_CREDENTIAL_KEYS, *_SIGSTORE_KEYS}, {"name"}, w)
        revoked.append(
            RevokedSigner(
                check_name(_str(t["name"], f"{w}.name", max_len=64)),
                _credential(t, w, revoked=True, base_dir=base_dir),
                _str(t.get("reason", ""), f"{w}.reason"),
            )
        )

    names = [s.name for s in signers] + [r.name for r in revoked]
    if len(set(names)) != len(names):
        raise _bad(f"{where}: a name is listed twice among signers and revoked", "allowlist.duplicate")
    keys = [s.key_id for s in signers]
    if len(set(keys)) != len(keys):
        raise _bad(f"{where}: two signers share one public key", "allowlist.duplicate")
    revoked_keys = {r.key_id for r in revoked}
    for s in signers:
        if s.key_id in revoked_keys:
            raise _bad(
                f"{where}: signer {s.name!r} uses a revoked key",
                "allowlist.revoked-key",
                fix="remove the signer or give it a new key",
            )

    rules: list[SourceRule] = []
    for i, raw in enumerate(_array(doc.get("sources", []), f"{where}: sources")):
        rule = _parse_rule(_table(raw, f"{where}: sources[{i}]"), f"{where}: sources[{i}]")
        for n in rule.signers:
            if n not in names:
                raise _bad(
                    f"{where}: sources[{i}] names unknown signer {n!r}",
                    "allowlist.unknown-signer",
                )
        rules.append(rule)
    patterns = [r.pattern for r in rules]
    if len(set(patterns)) != len(patterns):
        raise _bad(f"{where}: a source pattern is listed twice", "allowlist.duplicate")

    policy = _parse_policy(doc.get("policy", {}), f"{where}: policy")
    return Allowlist(
        version=version,
        signers=tuple(signers),
        revoked=tuple(revoked),
        sources=tuple(rules),
        policy=policy,
        sha256=sha256,
        origin=origin,
    )


def _check_policy_extras(extra: Mapping[str, tuple[str, ...]], aliases: Mapping[str, str], where: str) -> None:
    """Refuse, when the allowlist is loaded, extras the sandbox would refuse when code is loaded:
    an import alias pointing at a module the sandbox forbids (or that no rule admits), an alias
    shadowing an allowed module, a name the policy cannot take."""
    if not extra and not aliases:
        return
    from pipewarden.sandbox.policy import default_policy

    try:
        policy = default_policy().with_extras(extra_modules=extra, import_aliases=aliases)
    except (ValueError, TypeError) as exc:
        raise _bad(f"{where}: {exc}", "policy.extras-invalid") from None
    for alias, target in aliases.items():
        if not policy.is_module_allowed(target):
            raise _bad(
                f"{where}.import_aliases: {alias!r} points to {target!r}, which the sandbox does not allow",
                "policy.extras-invalid",
            )


def _parse_policy(raw: Any, where: str) -> AllowlistPolicy:
    t = _table(raw, where)
    _keys(t, {"required_isolation", "extra_modules", "import_aliases", "required_layers"}, set(), where)
    iso = t.get("required_isolation", "process")  # absent: the worker is the boundary
    if iso not in ISOLATION_MODES:
        raise _bad(
            f"{where}.required_isolation must be one of {', '.join(map(repr, ISOLATION_MODES))}",
            "allowlist.bad-value",
        )
    extra: dict[str, tuple[str, ...]] = {}
    for mod, attrs in _table(t.get("extra_modules", {}), f"{where}.extra_modules").items():
        if not _MODULE_RE.fullmatch(mod) or len(mod) > 200:
            raise _bad(f"{where}.extra_modules: {mod!r} is not a module name", "allowlist.bad-value")
        names = tuple(
            _str(a, f"{where}.extra_modules.{mod}[]", max_len=200)
            for a in _array(attrs, f"{where}.extra_modules.{mod}")
        )
        for a in names:
            if not _IDENT_RE.fullmatch(a) or a.startswith("_"):
                raise _bad(
                    f"{where}.extra_modules.{mod}: {a!r} is not an allowed attribute name",
                    "allowlist.bad-value",
                )
        extra[mod] = names
    aliases: dict[str, str] = {}
    for alias, target in _table(t.get("import_aliases", {}), f"{where}.import_aliases").items():
        target = _str(target, f"{where}.import_aliases.{alias}", max_len=200)
        if not _MODULE_RE.fullmatch(alias) or not _MODULE_RE.fullmatch(target):
            raise _bad(
                f"{where}.import_aliases: {alias!r} = {target!r} is not a module-name mapping",
                "allowlist.bad-value",
            )
        aliases[alias] = target
    _check_policy_extras(extra, aliases, where)
    layers = tuple(_str(x, f"{where}.required_layers[]", max_len=40) for x in _array(t.get("required_layers", []), f"{where}.required_layers"))
    unknown = sorted(set(layers) - set(KNOWN_LAYERS))
    if unknown:
        raise _bad(
            f"{where}.required_layers names unknown layers {unknown}",
            "allowlist.bad-value",
        )
    if layers and iso != "process":
        raise _bad(
            f"{where}.required_layers is set but required_isolation is not \"process\"",
            "allowlist.bad-value",
        )
    return AllowlistPolicy(required_isolation=iso, extra_modules=extra, import_aliases=aliases, required_layers=layers)
