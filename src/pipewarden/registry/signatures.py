"""Signatures over file manifests: sign a directory, verify k-of-n for a source.

What it decides: whether the files of a pipeline (``relpath -> sha256``) were signed, exactly as
they are, by at least ``k`` distinct, unexpired, unrevoked signers that the allowlist accepts for
the source. What it trusts: the allowlist object (already parsed and validated) and the ``files``
digests (computed by the loader from the bytes it read). The signature file is hostile input.

Formats (both fixed; see README "Signature file"):

* manifest payload (what is signed) — UTF-8 JSON, keys sorted, no whitespace, ASCII-escaped::

    {"expires":"2027-11-26T06:00:00Z","files":{"pipeline.py":"<sha256>"},
     "format":"pipewarden-manifest/1","key_id":"<sha256 of raw public key>",
     "signed_at":"2026-11-26T06:00:00Z","source":"org/repo"}      # source may be null = any source

* signature file ``pipewarden.sig`` — JSON ``{"format": "pipewarden-signatures/1", "signatures":
  [{"key_id", "payload" (base64 of the exact payload bytes), "sig" (base64 Ed25519)}]}``,
  written with sorted keys and 2-space indentation; any other byte layout is refused.

Each signature is checked over the exact payload bytes *before* the payload is parsed; the parsed
payload must re-encode to the same bytes (no parser differentials).
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipewarden import fsaccess
from pipewarden.errors import InputError, IntegrityError, NotAllowedError, PipewardenError, SignatureError
from pipewarden.fsaccess import replace_regular
from pipewarden.loader.digests import is_sha256_hex
from pipewarden.registry._time import (
    DEFAULT_SIGNATURE_LIFETIME,
    EXPIRY_SKEW,
    format_ts,
    is_expired,
    parse_ts,
    resolve_now,
)
from pipewarden.registry.allowlist import Allowlist, Signer, SourceRule
from pipewarden.registry.keys import PublicKey, SigningKey, b64decode_strict, b64encode, load_signing_key
from pipewarden.registry.modelsign import (
    MODEL_SIGNATURE_FILE,
    BadSignature,
    BundleError,
    ModelManifest,
    ModelSigningKey,
    SigstoreIdentity,
    certificate_matches,
    is_model_signature_file,
    is_unloaded_git_metadata,
    missing_extra_error,
    parse_bundle,
    sigstore_available,
    sigstore_certificate,
    verify_key_bundle,
    verify_sigstore_bundle,
)

__all__ = [
    "SIGNATURE_FILE",
    "MANIFEST_FORMAT",
    "SIGNATURES_FORMAT",
    "Reason",
    "Rejection",
    "SignatureVerdict",
    "MalformedSignatureFile",
    "canonical_manifest",
    "sign_files",
    "sign_dir",
    "verify_signed_files",
    "verify_dir",
    "is_signature_file",
    "walk_signed_dir",
    "MODEL_SIGNATURE_FILE",
]

#: The file inside a signed directory that holds its accumulated signatures.
SIGNATURE_FILE = "pipewarden.sig"
MANIFEST_FORMAT = "pipewarden-manifest/1"
SIGNATURES_FORMAT = "pipewarden-signatures/1"
MAX_SIGNATURE_FILE_BYTES = 1024 * 1024
MAX_SIGNATURES = 64
MAX_MANIFEST_FILES = 100_000
#: At most this many model-signing signature files (``model.sig``, ``NAME.model.sig``) count.
MAX_MODEL_SIGNATURES = 16


def is_signature_file(relpath: str) -> bool:
    """A signature file of a signed directory: never part of a manifest, never loaded as content.

    ``pipewarden.sig`` and model-signing's ``model.sig`` / ``NAME.model.sig``, at the top level.
    """
    return relpath == SIGNATURE_FILE or is_model_signature_file(relpath)


def walk_signed_dir(root: str | os.PathLike[str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """``(relpath -> sha256 of every file a manifest covers, model-signing signature files)``.

    The one walk behind signing, verifying and locking a directory (and the loader's local code
    reader uses the same predicate): every regular file except the signature files; a symlink or
    special file anywhere (signature files included) is refused by the walker.
    """
    entries = fsaccess.walk(root, exclude=frozenset({SIGNATURE_FILE, MODEL_SIGNATURE_FILE}),
                            what="signed or locked directory")
    files = {rel: fsaccess.hash_in(root, e.real) for rel, e in entries.items() if not is_signature_file(rel)}
    model_sigs = sorted(rel for rel in entries if is_model_signature_file(rel))
    if os.path.lexists(os.path.join(root, MODEL_SIGNATURE_FILE)):
        model_sigs.insert(0, MODEL_SIGNATURE_FILE)
    return files, tuple(model_sigs)


class MalformedSignatureFile(InputError, SignatureError):
    """The signature file cannot be parsed. Exit code 2 (``InputError``); also a ``SignatureError``."""


class Reason(str, enum.Enum):
    """Why a signature did not count, or why verification refused (stable identifiers)."""

    SOURCE_NOT_ALLOWED = "source-not-allowed"
    NO_SIGNATURES = "no-signatures"
    THRESHOLD_NOT_MET = "too-few-valid-signatures"
    UNKNOWN_SIGNER = "unknown-signer"
    REVOKED = "revoked-signer"
    SIGNER_EXPIRED = "signer-expired"
    BAD_SIGNATURE = "bad-signature"
    MALFORMED_PAYLOAD = "malformed-payload"
    WRONG_SOURCE = "signed-for-another-source"
    SIGNATURE_EXPIRED = "signature-expired"
    NOT_ACCEPTED = "signer-not-accepted-for-source"
    DUPLICATE = "duplicate-signature"
    MISSING_FILE = "missing-file"
    EXTRA_FILE = "unsigned-file"
    HASH_MISMATCH = "hash-mismatch"


_MANIFEST_REASONS = (Reason.MISSING_FILE, Reason.EXTRA_FILE, Reason.HASH_MISMATCH)


@dataclass(frozen=True)
class Rejection:
    """One signature that did not count: its key id, signer name if known, reason and detail."""

    key_id: str
    signer: str | None
    reason: Reason
    detail: str

    def describe(self) -> str:
        who = self.signer or (f"key {self.key_id[:16]}" if self.key_id else "unknown signer")
        return f"{who}: {self.reason.value} ({self.detail})"


@dataclass(frozen=True)
class SignatureVerdict:
    """The report of an accepted verification (verification raises when it refuses)."""

    source: str
    rules: tuple[SourceRule, ...]
    #: Distinct signer names whose signatures counted, sorted.
    signers: tuple[str, ...]
    rejected: tuple[Rejection, ...] = ()
    manifest: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "manifest", MappingProxyType(dict(self.manifest)))

    def summary(self) -> str:
        needs = ", ".join(f"{r.pattern!r} needs {r.threshold}" for r in self.rules)
        return f"source {self.source!r} accepted: signed by {', '.join(self.signers)} ({needs})"


def _refusal(
    cls: type[PipewardenError],
    reason: Reason,
    what: str,
    *,
    rule: str,
    fix: str,
    rejected: Sequence[Rejection] = (),
) -> PipewardenError:
    exc = cls(what, rule=rule, fix=fix)
    exc.reason = reason  # type: ignore[attr-defined]
    exc.rejected = tuple(rejected)  # type: ignore[attr-defined]
    return exc


# -- canonical bytes -------------------------------------------------------------------------
def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def _check_relpath(rel: object) -> str:
    if (
        not isinstance(rel, str)
        or not rel
        or len(rel) > 4096
        or rel.startswith("/")
        or "\\" in rel
        or "\x00" in rel
        or any(part in ("", ".", "..") for part in rel.split("/"))
    ):
        raise ValueError(f"manifest path {rel!r} is not a normalised relative POSIX path")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"manifest path {rel!r} is not UTF-8") from None
    return rel


def _checked_files(files: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(files, Mapping):
        raise TypeError("files must be a mapping relpath -> sha256 hex")
    out = {}
    for rel, digest in files.items():
        _check_relpath(rel)
        if not is_sha256_hex(digest):
            raise ValueError(f"digest of {rel!r} is not a lowercase sha256 hex string")
        if not is_signature_file(rel):  # signature files are never signed
            out[rel] = digest
    return out


def canonical_manifest(
    files: Mapping[str, str],
    *,
    key_id: str,
    source: str | None,
    expires: _dt.datetime,
    signed_at: _dt.datetime,
) -> bytes:
    """The exact bytes a signer signs (see the module docstring for the format)."""
    if source is not None and (not isinstance(source, str) or not source):
        raise ValueError("source must be a non-empty str or None")
    return _canonical_json(
        {
            "expires": format_ts(expires),
            "files": _checked_files(files),
            "format": MANIFEST_FORMAT,
            "key_id": key_id,
            "signed_at": format_ts(signed_at),
            "source": source,
        }
    )


@dataclass(frozen=True)
class _Envelope:
    key_id: str
    payload: bytes
    sig: bytes


@dataclass(frozen=True)
class _Payload:
    files: Mapping[str, str]
    key_id: str
    source: str | None
    expires: _dt.datetime
    signed_at: _dt.datetime


def _dump_signature_file(entries: Sequence[_Envelope]) -> bytes:
    doc = {
        "format": SIGNATURES_FORMAT,
        "signatures": [
            {"key_id": e.key_id, "payload": b64encode(e.payload), "sig": b64encode(e.sig)} for e in entries
        ],
    }
    return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("duplicate key")
    return d


def _malformed(what: str) -> MalformedSignatureFile:
    return MalformedSignatureFile(
        f"signature file is malformed: {what}",
        rule="sig.malformed",
        fix="re-sign the directory with `pipewarden sign`",
    )


def parse_signature_file(data: bytes) -> tuple[_Envelope, ...]:
    """Parse the outer envelope only (nothing inside a payload is looked at here)."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("signature file content must be bytes")
    data = bytes(data)
    if len(data) > MAX_SIGNATURE_FILE_BYTES:
        raise _malformed(f"larger than {MAX_SIGNATURE_FILE_BYTES} bytes")
    try:
        doc = json.loads(data.decode("ascii"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _malformed("not ASCII JSON") from None
    if (
        not isinstance(doc, dict)
        or set(doc) != {"format", "signatures"}
        or doc["format"] != SIGNATURES_FORMAT
    ):
        raise _malformed(f"not a {SIGNATURES_FORMAT} document")
    sigs = doc["signatures"]
    if not isinstance(sigs, list) or len(sigs) > MAX_SIGNATURES:
        raise _malformed(f"'signatures' is not a list of at most {MAX_SIGNATURES} entries")
    entries = []
    for i, s in enumerate(sigs):
        if not isinstance(s, dict) or set(s) != {"key_id", "payload", "sig"}:
            raise _malformed(f"signature #{i} does not have exactly key_id, payload, sig")
        if not is_sha256_hex(s["key_id"]):
            raise _malformed(f"signature #{i} key_id is not a sha256 hex string")
        try:
            payload = b64decode_strict(s["payload"], what=f"signature #{i} payload")
            sig = b64decode_strict(s["sig"], what=f"signature #{i} sig")
        except InputError as exc:
            raise _malformed(exc.what) from None
        if len(sig) != 64:
            raise _malformed(f"signature #{i} is {len(sig)} bytes, not 64")
        entries.append(_Envelope(s["key_id"], payload, sig))
    if _dump_signature_file(entries) != data:
        raise _malformed("not in canonical layout (hand-edited?)")
    return tuple(entries)


def _parse_payload(payload: bytes) -> _Payload:
    """Parse a payload whose signature already verified. ValueError when malformed."""
    doc = json.loads(payload.decode("ascii"), object_pairs_hook=_no_duplicate_keys)
    if not isinstance(doc, dict) or set(doc) != {
        "expires",
        "files",
        "format",
        "key_id",
        "signed_at",
        "source",
    }:
        raise ValueError("unexpected fields")
    if doc["format"] != MANIFEST_FORMAT:
        raise ValueError(f"format is not {MANIFEST_FORMAT}")
    files = doc["files"]
    if not isinstance(files, dict) or len(files) > MAX_MANIFEST_FILES:
        raise ValueError("files is not a table")
    source = doc["source"]
    if source is not None and (not isinstance(source, str) or not source):
        raise ValueError("source is not a string or null")
    if not is_sha256_hex(doc["key_id"]):
        raise ValueError("key_id is not sha256 hex")
    try:
        expires = parse_ts(doc["expires"], what="expires")
        signed_at = parse_ts(doc["signed_at"], what="signed_at")
    except InputError as exc:
        raise ValueError(exc.what) from None
    checked = _checked_files(files)
    if len(checked) != len(files):
        raise ValueError("the manifest lists a signature file")
    if (
        canonical_manifest(checked, key_id=doc["key_id"], source=source, expires=expires, signed_at=signed_at)
        != payload
    ):
        raise ValueError("payload is not in canonical form")
    return _Payload(MappingProxyType(checked), doc["key_id"], source, expires, signed_at)


# -- signing ---------------------------------------------------------------------------------
def sign_files(
    files: Mapping[str, str],
    key: SigningKey,
    *,
    source: str | None,
    expires: _dt.datetime | None = None,
    now: _dt.datetime | None = None,
    existing: bytes | None = None,
) -> bytes:
    """Return new signature-file bytes: ``existing`` signatures plus one by ``key`` over ``files``.

    A previous signature by the same key is replaced. ``expires`` defaults to one year from now
    and must lie more than the clock-skew tolerance in the future.
    """
    now = resolve_now(now).replace(microsecond=0)
    expires = now + DEFAULT_SIGNATURE_LIFETIME if expires is None else resolve_now(expires)
    if is_expired(expires, now):
        raise InputError(
            f"expiry {format_ts(expires)} is not in the future (beyond the {EXPIRY_SKEW} skew tolerance)",
            rule="sig.expiry-past",
            fix="pass a later --expires date",
        )
    key_id = key.public_key.key_id
    payload = canonical_manifest(files, key_id=key_id, source=source, expires=expires, signed_at=now)
    entries = [e for e in (parse_signature_file(existing) if existing else ()) if e.key_id != key_id]
    entries.append(_Envelope(key_id, payload, key.sign(payload)))
    if len(entries) > MAX_SIGNATURES:
        raise InputError(f"more than {MAX_SIGNATURES} signatures", rule="sig.too-many")
    return _dump_signature_file(entries)


def sign_dir(
    directory: str | os.PathLike[str],
    key: SigningKey | str | os.PathLike[str],
    *,
    source: str | None = None,
    expires: _dt.datetime | None = None,
    now: _dt.datetime | None = None,
) -> Path:
    """Sign every file of ``directory`` and add the signature to ``directory/SIGNATURE_FILE``."""
    root = Path(directory)
    signing = key if isinstance(key, SigningKey) else load_signing_key(key)
    files, _ = walk_signed_dir(root)
    sig_path = root / SIGNATURE_FILE
    existing = _read_signature_file(sig_path) if os.path.lexists(sig_path) else None
    replace_regular(
        sig_path, sign_files(files, signing, source=source, expires=expires, now=now, existing=existing)
    )
    return sig_path


def _read_signature_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise _malformed(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        import stat

        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise _malformed(f"{path} is not a regular file")
        data = fh.read(MAX_SIGNATURE_FILE_BYTES + 1)
    if len(data) > MAX_SIGNATURE_FILE_BYTES:
        raise _malformed(f"larger than {MAX_SIGNATURE_FILE_BYTES} bytes")
    return data


# -- verification ----------------------------------------------------------------------------
def _manifest_difference(signed: Mapping[str, str], present: Mapping[str, str]) -> tuple[Reason, str] | None:
    for rel in sorted(present):
        if rel not in signed:
            return Reason.EXTRA_FILE, f"{rel} is present but not signed (sha256 {present[rel]})"
    for rel in sorted(signed):
        if rel not in present:
            return Reason.MISSING_FILE, f"{rel} is signed (sha256 {signed[rel]}) but missing"
    for rel in sorted(signed):
        if signed[rel] != present[rel]:
            return Reason.HASH_MISMATCH, f"{rel}: signed sha256 {signed[rel]}, present sha256 {present[rel]}"
    return None


def verify_signed_files(
    files: Mapping[str, str],
    signature_bytes: bytes | None,
    allowlist: Allowlist,
    source: str,
    *,
    now: _dt.datetime,
    model_signatures: Mapping[str, bytes] | None = None,
) -> SignatureVerdict:
    """Accept ``files`` for ``source`` or raise. No I/O except reading a Sigstore signer's pinned
    trust-root file; the clock is the ``now`` argument.

    ``model_signatures`` maps the relpath of each OpenSSF model-signing signature file
    (``model.sig``, ``NAME.model.sig``) to its bytes; each counts like a pipewarden signature
    when it verifies for an allowlist signer's model-signing key or Sigstore identity and covers
    exactly the files present (see ``registry/modelsign.py``).

    Raises ``NotAllowedError`` (source not allowed), ``MalformedSignatureFile`` (InputError and
    SignatureError), ``SignatureError`` (too few valid signatures) or ``IntegrityError`` (a
    signature that would count covers other files than those present).
    """
    if not isinstance(allowlist, Allowlist):
        raise TypeError("allowlist must be a pipewarden.registry.Allowlist")
    if not isinstance(source, str) or not source:
        raise TypeError("source must be a non-empty str")
    now = resolve_now(now)
    try:
        present = _checked_files(files)
    except ValueError as exc:  # file names come from the (hostile) directory or repo listing
        raise InputError(
            f"the files of {source!r} cannot be described by a manifest: {exc}",
            rule="sig.bad-manifest",
            fix="remove or rename the offending file",
        ) from None

    # 1. The source must be allowed: every matching rule applies; no rule means not allowed.
    rules = allowlist.rules_for(source)
    if not rules:
        raise _refusal(
            NotAllowedError,
            Reason.SOURCE_NOT_ALLOWED,
            f"source {source!r} is not allowed by allowlist {allowlist.origin} (version {allowlist.version})",
            rule="allowlist.source-not-listed",
            fix=f"pipewarden allowlist allow {allowlist.origin} --source PATTERN --signers NAMES --threshold K",
        )
    # 2. Parse the envelope only.
    model_signatures = dict(model_signatures or {})
    if not signature_bytes and not model_signatures:
        raise _refusal(
            SignatureError,
            Reason.NO_SIGNATURES,
            f"source {source!r} has no {SIGNATURE_FILE} (and no model-signing {MODEL_SIGNATURE_FILE})",
            rule="sig.missing",
            fix=f"have accepted signers run `pipewarden sign DIR --key KEY` (signers: {', '.join(rules[0].signers)})",
        )
    envelopes = parse_signature_file(signature_bytes) if signature_bytes else ()
    # A rule that accepts a Sigstore signer cannot be decided without sigstore-python: fail closed.
    for rule in rules:
        for name in rule.signers:
            s = allowlist.signer_named(name)
            if s is not None and isinstance(s.public_key, SigstoreIdentity) and not sigstore_available():
                raise missing_extra_error(f"rule {rule.pattern!r} of {allowlist.origin} (Sigstore signer {name!r})")

    # 3. Per signature, in order: known key, not revoked, signer unexpired, signature verifies over
    #    the exact payload bytes; only then parse the payload; key ids agree, source binds,
    #    signature unexpired; finally compare the manifest with the files present.
    valid: dict[str, object] = {}  # signer name -> payload or manifest (first valid one)
    rejected: list[Rejection] = []
    mismatched: list[Rejection] = []
    for env in envelopes:
        revoked = allowlist.revoked_for_key(env.key_id)
        if revoked is not None:
            rejected.append(
                Rejection(
                    env.key_id,
                    revoked.name,
                    Reason.REVOKED,
                    "key revoked" + (f": {revoked.reason}" if revoked.reason else ""),
                )
            )
            continue
        signer = allowlist.signer_for_key(env.key_id)
        if signer is None or not isinstance(signer.public_key, PublicKey):
            rejected.append(Rejection(env.key_id, None, Reason.UNKNOWN_SIGNER, "key not in the allowlist"))
            continue
        if signer.expires is not None and is_expired(signer.expires, now):
            detail = f"signer expires {format_ts(signer.expires)}"
            rejected.append(Rejection(env.key_id, signer.name, Reason.SIGNER_EXPIRED, detail))
            continue
        if not signer.public_key.verify(env.sig, env.payload):
            rejected.append(
                Rejection(env.key_id, signer.name, Reason.BAD_SIGNATURE, "signature does not verify")
            )
            continue
        try:
            payload = _parse_payload(env.payload)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            rejected.append(Rejection(env.key_id, signer.name, Reason.MALFORMED_PAYLOAD, str(exc)[:200]))
            continue
        if payload.key_id != env.key_id:
            rejected.append(Rejection(env.key_id, signer.name, Reason.MALFORMED_PAYLOAD, "key id mismatch"))
            continue
        if payload.source is not None and payload.source != source:
            rejected.append(
                Rejection(env.key_id, signer.name, Reason.WRONG_SOURCE, f"signed for {payload.source!r}")
            )
            continue
        if is_expired(payload.expires, now):
            rejected.append(
                Rejection(
                    env.key_id,
                    signer.name,
                    Reason.SIGNATURE_EXPIRED,
                    f"signature expires {format_ts(payload.expires)}",
                )
            )
            continue
        diff = _manifest_difference(payload.files, present)
        if diff is not None:
            r = Rejection(env.key_id, signer.name, diff[0], diff[1])
            rejected.append(r)
            mismatched.append(r)
            continue
        if signer.name in valid:
            rejected.append(Rejection(env.key_id, signer.name, Reason.DUPLICATE, "counted once"))
            continue
        valid[signer.name] = payload

    # 3b. OpenSSF model-signing signatures: the same order (revoked, known, unexpired, verifies,
    #     then the manifest is parsed and compared with exactly the files present).
    if len(model_signatures) > MAX_MODEL_SIGNATURES:
        raise _malformed(f"more than {MAX_MODEL_SIGNATURES} model-signing signature files")
    for rel in sorted(model_signatures):
        outcome = _check_model_signature(rel, model_signatures[rel], allowlist, present, now)
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
            if outcome.reason in _MANIFEST_REASONS:
                mismatched.append(outcome)
            continue
        if outcome.name in valid:
            rejected.append(Rejection(outcome.key_id, outcome.name, Reason.DUPLICATE, "counted once"))
            continue
        valid[outcome.name] = rel

    # 4. Threshold: every matching rule needs k distinct valid signers among those it accepts.
    for rule in rules:
        counted = sorted(n for n in valid if n in rule.signers)
        if len(counted) >= rule.threshold:
            continue
        relevant_mismatch = [m for m in mismatched if m.signer in rule.signers]
        not_accepted = [
            Rejection("", n, Reason.NOT_ACCEPTED, f"not accepted for {rule.pattern!r}")
            for n in valid
            if n not in rule.signers
        ]
        details = "; ".join(r.describe() for r in [*rejected, *not_accepted]) or "none"
        if relevant_mismatch:
            first = relevant_mismatch[0]
            raise _refusal(
                IntegrityError,
                first.reason,
                f"files of {source!r} differ from what {first.signer} signed: {first.detail}",
                rule="sig.files-mismatch",
                fix="remove files that should not be there, or have the signers re-sign the directory",
                rejected=[*rejected, *not_accepted],
            )
        raise _refusal(
            SignatureError,
            Reason.THRESHOLD_NOT_MET,
            f"too few valid signatures for {source!r}: {len(counted)} of {rule.threshold} required by "
            f"rule {rule.pattern!r} (accepted signers: {', '.join(rule.signers)}); not counted: {details}",
            rule="sig.threshold",
            fix="have more accepted signers run `pipewarden sign`, or renew expired signatures",
            rejected=[*rejected, *not_accepted],
        )
    signed_by = sorted(n for n in valid if any(n in r.signers for r in rules))
    return SignatureVerdict(
        source=source, rules=rules, signers=tuple(signed_by), rejected=tuple(rejected), manifest=present
    )


def _model_manifest_difference(manifest: ModelManifest, present: Mapping[str, str]) -> tuple[Reason, str] | None:
    """Compare a model-signing manifest with the files present.

    Signature files named in the manifest are dropped (they are never loaded as content). A file
    present but absent from the manifest is refused unless it is git metadata pipewarden never
    reads (``.gitattributes``, ``.gitignore``, ``.github/``) *and* the signature's own
    ``ignore_paths`` names it (model-signing's default). Everything else must match exactly.
    """
    signed = {k: v for k, v in manifest.files.items() if not is_signature_file(k)}

    def ignored(rel: str) -> bool:
        return is_unloaded_git_metadata(rel) and any(
            rel == p.strip("/") or rel.startswith(p.strip("/") + "/") for p in manifest.ignore_paths if p.strip("/")
        )

    required = {k: v for k, v in present.items() if k in signed or not ignored(k)}
    return _manifest_difference(signed, required)


@dataclass(frozen=True)
class _Counted:
    name: str
    key_id: str


def _check_model_signature(
    rel: str, data: bytes, allowlist: Allowlist, present: Mapping[str, str], now: _dt.datetime
) -> _Counted | Rejection:
    """One model-signing signature file: the signer it counts for, or why it does not count."""
    try:
        bundle = parse_bundle(data, origin=rel)
    except BundleError as exc:
        return Rejection("", None, Reason.MALFORMED_PAYLOAD, f"{rel}: {exc}")
    signer: Signer | None
    if bundle.key_hint is not None:
        key_id = bundle.key_hint
        revoked = allowlist.revoked_for_key(key_id)
        if revoked is not None:
            why = "key revoked" + (f": {revoked.reason}" if revoked.reason else "")
            return Rejection(key_id, revoked.name, Reason.REVOKED, f"{rel}: {why}")
        signer = allowlist.signer_for_key(key_id)
        if signer is None or not isinstance(signer.public_key, ModelSigningKey):
            return Rejection(key_id, None, Reason.UNKNOWN_SIGNER, f"{rel}: model-signing key not in the allowlist")
    else:
        key_id = ""
        if not sigstore_available():
            return Rejection("", None, Reason.UNKNOWN_SIGNER,
                             f"{rel}: a certificate signature (needs pipewarden[model-signing] to check)")
        try:
            cert = sigstore_certificate(bundle)
        except BundleError as exc:
            return Rejection("", None, Reason.MALFORMED_PAYLOAD, f"{rel}: {exc}")
        for r in allowlist.revoked:
            if isinstance(r.public_key, SigstoreIdentity) and certificate_matches(cert, r.public_key):
                why = "identity revoked" + (f": {r.reason}" if r.reason else "")
                return Rejection(r.key_id, r.name, Reason.REVOKED, f"{rel}: {why}")
        signer = next(
            (s for s in allowlist.signers
             if isinstance(s.public_key, SigstoreIdentity) and certificate_matches(cert, s.public_key)),
            None,
        )
        if signer is None:
            return Rejection("", None, Reason.UNKNOWN_SIGNER,
                             f"{rel}: certificate identity is not a Sigstore signer of the allowlist")
        key_id = signer.key_id
    if signer.expires is not None and is_expired(signer.expires, now):
        return Rejection(key_id, signer.name, Reason.SIGNER_EXPIRED, f"signer expires {format_ts(signer.expires)}")
    try:
        if isinstance(signer.public_key, ModelSigningKey):
            manifest = verify_key_bundle(bundle, signer.public_key)
        else:
            assert isinstance(signer.public_key, SigstoreIdentity)
            manifest = verify_sigstore_bundle(bundle, signer.public_key)
    except BadSignature as exc:
        return Rejection(key_id, signer.name, Reason.BAD_SIGNATURE, f"{rel}: {exc}")
    except BundleError as exc:
        return Rejection(key_id, signer.name, Reason.MALFORMED_PAYLOAD, f"{rel}: {exc}")
    diff = _model_manifest_difference(manifest, present)
    if diff is not None:
        return Rejection(key_id, signer.name, diff[0], diff[1])
    return _Counted(signer.name, key_id)


def read_model_signatures(root: Path, names: Sequence[str]) -> dict[str, bytes]:
    """The bytes of the model-signing signature files ``names`` of ``root`` (no links, bounded)."""
    from pipewarden.registry.modelsign import MAX_BUNDLE_BYTES

    out = {}
    for rel in names[: MAX_MODEL_SIGNATURES + 1]:
        try:
            out[rel] = fsaccess.read_in(root, rel, links=False, max_bytes=MAX_BUNDLE_BYTES)
        except InputError as exc:
            raise _malformed(f"model-signing signature {rel}: {exc.what}") from None
    return out


def verify_dir(
    directory: str | os.PathLike[str], allowlist: Allowlist, source: str, now: _dt.datetime | None = None
) -> SignatureVerdict:
    """Hash every file of ``directory`` (same rules as signing) and :func:`verify_signed_files`.

    Both signature formats are read: ``pipewarden.sig`` and model-signing's ``model.sig`` /
    ``NAME.model.sig``.
    """
    root = Path(directory)
    files, model_sig_names = walk_signed_dir(root)
    sig_path = root / SIGNATURE_FILE
    signature = _read_signature_file(sig_path) if os.path.lexists(sig_path) else None
    return verify_signed_files(
        files, signature, allowlist, source, now=resolve_now(now),
        model_signatures=read_model_signatures(root, model_sig_names),
    )
