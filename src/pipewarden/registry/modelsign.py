"""OpenSSF ``model-signing`` signatures as allowlist evidence (issue 16 part 3).

What it decides: whether one ``model-signing`` signature file (a Sigstore bundle holding a DSSE
envelope over an in-toto statement whose predicate lists ``file -> sha256``) was made by a given
allowlist credential, and which files with which digests it covers. Counting signatures against
thresholds, revocation order and comparing the covered files with the files present stay in
:func:`pipewarden.registry.signatures.verify_signed_files`, next to pipewarden's own format.
What it trusts: the allowlist credentials (already parsed) and, for Sigstore certificates, the
trust-root file the allowlist pins by sha256. The signature files are hostile input: they enter
through :func:`parse_bundle` / :func:`parse_statement` only and become frozen objects.

Two kinds of credentials (one per allowlist signer):

* :class:`ModelSigningKey` (``model_signing_key = "ecdsa-p256:<base64 DER SubjectPublicKeyInfo>"``):
  model-signing's key-based signatures (``model_signing sign key``: ECDSA P-256/P-384/P-521, the
  curves model-signing supports). Verified here with ``cryptography`` (a core dependency), fully
  offline. The key id is model-signing's own key hint: sha256 hex of the PEM public key.
* :class:`SigstoreIdentity` (``sigstore_identity`` + ``sigstore_issuer`` + a pinned trust-root
  file): Sigstore certificate signatures (``model_signing sign sigstore``). Verified with
  ``sigstore-python`` (installed by the ``model-signing`` extra) against the trusted root read
  from that file: certificate chain, SCT, transparency-log inclusion proof and checkpoint,
  identity and issuer. No network: no TUF refresh, no Rekor lookup.

What is refused (every refusal is a :class:`Rejection`-style reason string or a
``PipewardenError`` with a registered rule): any media type, payload type, statement type or
predicate type other than model-signing v1.0 (``https://model_signing/signature/v1.0``; the
pre-1.0 ``Digests/v0.1`` form does not bind the file list and is refused), more than one DSSE
signature, the pre-1.0 PAE encoding, serialization other than ``files`` with ``sha256``, a
resource whose algorithm is not sha256, a non-normalised or duplicate file name, and a root
digest that does not match the resources.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipewarden.errors import InputError, NotAllowedError
from pipewarden.loader.digests import is_sha256_hex

__all__ = [
    "MODEL_SIGNATURE_FILE",
    "MODEL_SIGNATURE_SUFFIX",
    "EXTRA",
    "ModelSigningKey",
    "SigstoreIdentity",
    "ModelSigningBundle",
    "ModelManifest",
    "BundleError",
    "BadSignature",
    "certificate_matches",
    "sigstore_certificate",
    "is_unloaded_git_metadata",
    "is_model_signature_file",
    "parse_bundle",
    "parse_statement",
    "verify_key_bundle",
    "verify_sigstore_bundle",
    "sigstore_available",
    "missing_extra_error",
    "UNLOADED_GIT_METADATA",
]

#: model-signing's default signature file name; ``<name>.model.sig`` holds further signers'.
MODEL_SIGNATURE_FILE = "model.sig"
MODEL_SIGNATURE_SUFFIX = ".model.sig"
#: The pipewarden extra that installs model-signing (and sigstore-python).
EXTRA = "model-signing"
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
MAX_TRUST_ROOT_BYTES = 4 * 1024 * 1024
MAX_RESOURCES = 100_000

_KEY_BUNDLE_MEDIA_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.bundle.v0.3+json",
    }
)
_SIGSTORE_BUNDLE_MEDIA_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
    }
)
_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
_PREDICATE_TYPE = "https://model_signing/signature/v1.0"
_TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"

#: Files model-signing leaves out of its manifest by default (``--ignore-git-paths``) that
#: pipewarden never reads: a model-signing signature may leave these unsigned when its own
#: ``ignore_paths`` names them. Everything else present must be in the manifest.
UNLOADED_GIT_METADATA = (".gitattributes", ".gitignore", ".github")

_CURVES = {"secp256r1": "p256", "secp384r1": "p384", "secp521r1": "p521"}
_CURVE_NAMES = {v: k for k, v in _CURVES.items()}


def is_unloaded_git_metadata(relpath: str) -> bool:
    """``.gitattributes``, ``.gitignore`` or a file under ``.github/`` (top level)."""
    return relpath in (".gitattributes", ".gitignore") or relpath.startswith(".github/")


def is_model_signature_file(relpath: str) -> bool:
    """``model.sig`` or ``<name>.model.sig`` at the top level of a signed directory."""
    return "/" not in relpath and (
        relpath == MODEL_SIGNATURE_FILE
        or (relpath.endswith(MODEL_SIGNATURE_SUFFIX) and len(relpath) > len(MODEL_SIGNATURE_SUFFIX))
    )


class BundleError(ValueError):
    """A model-signing signature file that cannot be used (the message says why)."""


class BadSignature(BundleError):
    """The bundle is well-formed but its signature does not verify for the credential."""


# -- credentials --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSigningKey:
    """An ECDSA public key (DER SubjectPublicKeyInfo) accepted for model-signing key signatures."""

    spki: bytes

    def __post_init__(self) -> None:
        self._load()  # validates: an EC key on a supported curve

    def _load(self) -> Any:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        try:
            key = load_der_public_key(self.spki)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a DER public key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
            raise ValueError("model-signing keys are ECDSA P-256, P-384 or P-521")
        return key

    @property
    def curve(self) -> str:
        return _CURVES[self._load().curve.name]

    @property
    def pem(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return bytes(self._load().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))

    @property
    def key_id(self) -> str:
        """model-signing's key hint: sha256 hex of the PEM public key (its "fingerprint")."""
        return hashlib.sha256(self.pem).hexdigest()

    @property
    def text(self) -> str:
        return f"ecdsa-{self.curve}:" + base64.b64encode(self.spki).decode("ascii")

    @property
    def kind(self) -> str:
        return "model-signing key"

    def describe(self) -> str:
        return f"{self.text[:40]}... (model-signing key, fingerprint {self.key_id[:16]})"

    @classmethod
    def from_text(cls, text: object, *, what: str = "model_signing_key") -> ModelSigningKey:
        """Parse ``ecdsa-p256:<canonical base64 of the DER SubjectPublicKeyInfo>``."""
        if not isinstance(text, str) or ":" not in text:
            raise _bad_key(what, "is not of the form 'ecdsa-p256:<base64>'")
        prefix, _, b64 = text.strip().partition(":")
        if not prefix.startswith("ecdsa-") or prefix[6:] not in _CURVE_NAMES:
            raise _bad_key(what, "does not start with ecdsa-p256:, ecdsa-p384: or ecdsa-p521:")
        try:
            raw = base64.b64decode(b64.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise _bad_key(what, "is not valid base64") from None
        if base64.b64encode(raw).decode("ascii") != b64:
            raise _bad_key(what, "is not canonical base64")
        try:
            key = cls(raw)
        except ValueError as exc:
            raise _bad_key(what, str(exc)) from None
        if key.curve != prefix[6:]:
            raise _bad_key(what, f"says {prefix} but the key is on curve {key.curve}")
        if key.spki != key._canonical_spki():
            raise _bad_key(what, "is not the canonical DER encoding")
        return key

    def _canonical_spki(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return bytes(self._load().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))

    @classmethod
    def from_pem(cls, data: bytes, *, what: str = "public key file") -> ModelSigningKey:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

        try:
            key = load_pem_public_key(data)
            der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            return cls(bytes(der))
        except (ValueError, TypeError) as exc:
            raise _bad_key(what, f"is not a PEM ECDSA public key ({str(exc)[:100]})") from None

    def __repr__(self) -> str:
        return f"ModelSigningKey({self.text[:32]}...)"


def _bad_key(what: str, why: str) -> InputError:
    return InputError(
        f"{what} {why}",
        rule="modelsign.bad-key",
        fix="pass the PEM public key model-signing verifies with (`allowlist add-signer --model-signing-key FILE.pem`)",
    )


@dataclass(frozen=True)
class SigstoreIdentity:
    """A Sigstore signer: certificate identity + OIDC issuer, verified against a pinned trust root.

    ``trust_root`` is the path as written in the allowlist, ``trust_root_path`` where it resolves
    (relative to the allowlist's directory); ``trust_root_sha256`` pins the file's bytes. Revoked
    identities carry no trust root (``trust_root == ""``).
    """

    identity: str
    issuer: str
    trust_root: str = ""
    trust_root_sha256: str = ""
    trust_root_path: Path | None = field(default=None, compare=False)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(f"sigstore-identity\x00{self.identity}\x00{self.issuer}".encode()).hexdigest()

    @property
    def text(self) -> str:
        return f"sigstore:{self.identity} (issuer {self.issuer})"

    @property
    def kind(self) -> str:
        return "Sigstore identity"

    def describe(self) -> str:
        root = f", trust root {self.trust_root} sha256 {self.trust_root_sha256[:16]}" if self.trust_root else ""
        return f"{self.text}{root}"


# -- the parsing boundary -------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSigningBundle:
    """One parsed model-signing signature file (nothing in it verified yet)."""

    origin: str
    media_type: str
    #: model-signing's key hint (sha256 hex of the signer's PEM public key) for key signatures.
    key_hint: str | None
    #: True when the bundle carries a signing certificate (Sigstore or certificate signatures).
    has_certificate: bool
    payload_type: str
    payload: bytes
    signature: bytes
    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class ModelManifest:
    """The verified statement of a model-signing signature: ``relpath -> sha256`` and its options."""

    model_name: str
    files: Mapping[str, str]
    ignore_paths: tuple[str, ...]
    allow_symlinks: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("duplicate key")
    return d


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleError(f"{what} is not UTF-8 JSON without duplicate keys") from None


def _b64(v: object, what: str) -> bytes:
    if not isinstance(v, str):
        raise BundleError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(v.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BundleError(f"{what} is not valid base64") from None


def _obj(v: object, what: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise BundleError(f"{what} is not an object")
    return v


def parse_bundle(data: bytes, *, origin: str) -> ModelSigningBundle:
    """Parse a model-signing signature file into a frozen bundle (raises :class:`BundleError`)."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("bundle content must be bytes")
    data = bytes(data)
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"larger than {MAX_BUNDLE_BYTES} bytes")
    doc = _obj(_json(data, "the bundle"), "the bundle")
    media_type = doc.get("mediaType")
    if media_type not in _KEY_BUNDLE_MEDIA_TYPES | _SIGSTORE_BUNDLE_MEDIA_TYPES:
        raise BundleError(f"media type {str(media_type)[:80]!r} is not a Sigstore bundle model-signing writes")
    material = _obj(doc.get("verificationMaterial"), "verificationMaterial")
    envelope = _obj(doc.get("dsseEnvelope"), "dsseEnvelope (model-signing signs DSSE envelopes)")
    if "messageSignature" in doc:
        raise BundleError("the bundle holds a message signature, not a DSSE envelope")
    payload_type = envelope.get("payloadType")
    if payload_type != _PAYLOAD_TYPE:
        raise BundleError(f"payload type {str(payload_type)[:80]!r} is not {_PAYLOAD_TYPE}")
    sigs = envelope.get("signatures")
    if not isinstance(sigs, list) or len(sigs) != 1:
        raise BundleError("the DSSE envelope must hold exactly one signature")
    sig = _b64(_obj(sigs[0], "signature").get("sig"), "the DSSE signature")
    payload = _b64(envelope.get("payload"), "the DSSE payload")
    key_hint = None
    public_key = material.get("publicKey")
    if public_key is not None:
        hint = _obj(public_key, "verificationMaterial.publicKey").get("hint")
        if not isinstance(hint, str) or not is_sha256_hex(hint):
            raise BundleError(
                "verificationMaterial.publicKey.hint is not a sha256 key hint (signed with model-signing < 1.0?)"
            )
        key_hint = hint
    has_cert = "certificate" in material or "x509CertificateChain" in material
    if (key_hint is None) == (not has_cert):
        raise BundleError("the bundle must name exactly one of a public key hint or a certificate")
    return ModelSigningBundle(
        origin=origin,
        media_type=str(media_type),
        key_hint=key_hint,
        has_certificate=has_cert,
        payload_type=_PAYLOAD_TYPE,
        payload=payload,
        signature=sig,
        raw=data,
    )


def _check_relpath(rel: object) -> str:
    from pipewarden.registry.signatures import _check_relpath as check

    return check(rel)


def parse_statement(payload: bytes) -> ModelManifest:
    """Parse a verified DSSE payload (in-toto statement, model-signing v1.0 predicate)."""
    doc = _obj(_json(payload, "the signed statement"), "the signed statement")
    if doc.get("_type") != _STATEMENT_TYPE:
        raise BundleError(f"statement type is not {_STATEMENT_TYPE}")
    if doc.get("predicateType") != _PREDICATE_TYPE:
        raise BundleError(
            f"predicate type {str(doc.get('predicateType'))[:80]!r} is not {_PREDICATE_TYPE} "
            "(re-sign with model-signing >= 1.0)"
        )
    subjects = doc.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise BundleError("the statement must have exactly one subject")
    subject = _obj(subjects[0], "subject")
    name = subject.get("name")
    root = _obj(subject.get("digest"), "subject digest").get("sha256")
    if not isinstance(name, str) or not isinstance(root, str) or not is_sha256_hex(root):
        raise BundleError("the subject has no name or sha256 digest")
    predicate = _obj(doc.get("predicate"), "predicate")
    ser = _obj(predicate.get("serialization"), "predicate.serialization")
    if ser.get("method") != "files":
        raise BundleError(
            f"serialization method {str(ser.get('method'))[:40]!r} is not 'files' "
            "(sign with model-signing's default file serialization, not shards)"
        )
    if ser.get("hash_type") != "sha256":
        raise BundleError(
            f"hash type {str(ser.get('hash_type'))[:40]!r} is not sha256 (sign with --hash sha256, the default)"
        )
    allow_symlinks = ser.get("allow_symlinks", False)
    if not isinstance(allow_symlinks, bool):
        raise BundleError("serialization.allow_symlinks is not a boolean")
    ignore = ser.get("ignore_paths", [])
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
        raise BundleError("serialization.ignore_paths is not a list of strings")
    resources = predicate.get("resources")
    if not isinstance(resources, list) or len(resources) > MAX_RESOURCES:
        raise BundleError("predicate.resources is not a bounded list")
    files: dict[str, str] = {}
    hasher = hashlib.sha256()
    for r in resources:
        r = _obj(r, "resource")
        rel, algo, digest = r.get("name"), r.get("algorithm"), r.get("digest")
        if algo != "sha256" or not isinstance(digest, str) or not is_sha256_hex(digest):
            raise BundleError(f"resource {str(rel)[:80]!r} is not a sha256 digest")
        try:
            rel = _check_relpath(rel)
        except ValueError as exc:
            raise BundleError(str(exc)) from None
        if rel in files:
            raise BundleError(f"resource {rel!r} is listed twice")
        files[rel] = digest
        hasher.update(bytes.fromhex(digest))
    if hasher.hexdigest() != root:
        raise BundleError("the subject digest does not match the listed resources")
    return ModelManifest(
        model_name=name, files=files, ignore_paths=tuple(ignore), allow_symlinks=allow_symlinks
    )


# -- verification -------------------------------------------------------------------------------
def _pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def verify_key_bundle(bundle: ModelSigningBundle, key: ModelSigningKey) -> ModelManifest:
    """Verify a key-based bundle made by ``key``; return its manifest (raises :class:`BundleError`)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if bundle.media_type not in _KEY_BUNDLE_MEDIA_TYPES or bundle.key_hint is None:
        raise BundleError("not a model-signing key signature")
    if bundle.key_hint != key.key_id:
        raise BundleError("the bundle names another key")
    algo = {"p256": hashes.SHA256(), "p384": hashes.SHA384(), "p521": hashes.SHA512()}[key.curve]
    try:
        key._load().verify(bundle.signature, _pae(bundle.payload_type, bundle.payload), ec.ECDSA(algo))
    except InvalidSignature:
        raise BadSignature("signature does not verify") from None
    return parse_statement(bundle.payload)


def sigstore_available() -> bool:
    try:
        import sigstore.verify  # noqa: F401
    except ImportError:
        return False
    return True


def missing_extra_error(what: str) -> NotAllowedError:
    return NotAllowedError(
        f"{what} needs the optional model-signing support, which is not installed",
        rule="modelsign.extra-missing",
        fix=f"pip install 'pipewarden[{EXTRA}]' (installs model-signing and sigstore-python)",
    )


def _trust_root_error(ident: SigstoreIdentity, why: str) -> InputError:
    return InputError(
        f"Sigstore trust root {ident.trust_root} of identity {ident.identity!r}: {why}",
        rule="modelsign.trust-root",
        fix="point sigstore_trust_root at the trusted_root.json you reviewed and update "
        "sigstore_trust_root_sha256 (`pipewarden allowlist add-signer ... --sigstore-trust-root FILE`)",
    )


def load_trusted_root(ident: SigstoreIdentity) -> Any:
    """Read the pinned trust-root file (no network; sha256 must match the allowlist's pin)."""
    from pipewarden.fsaccess import read_user_file

    if ident.trust_root_path is None:
        raise _trust_root_error(ident, "no trust root is configured")
    try:
        data = read_user_file(ident.trust_root_path, limit=MAX_TRUST_ROOT_BYTES, what="Sigstore trust root")
    except InputError as exc:
        raise _trust_root_error(ident, exc.what) from None
    if hashlib.sha256(data).hexdigest() != ident.trust_root_sha256:
        raise _trust_root_error(
            ident, f"its sha256 is {hashlib.sha256(data).hexdigest()}, the allowlist pins {ident.trust_root_sha256}"
        )
    try:
        doc = _obj(_json(data, "the trust root"), "the trust root")
    except BundleError as exc:
        raise _trust_root_error(ident, str(exc)) from None
    if doc.get("mediaType") != _TRUSTED_ROOT_MEDIA_TYPE:
        raise _trust_root_error(ident, f"media type is not {_TRUSTED_ROOT_MEDIA_TYPE}")
    if not sigstore_available():
        raise missing_extra_error(f"Sigstore signer {ident.identity!r}")
    from sigstore.models import TrustedRoot
    from sigstore_models.trustroot import v1 as trustroot_v1

    try:
        return TrustedRoot(trustroot_v1.TrustedRoot.from_json(data))
    except Exception as exc:  # sigstore's parser raises its own and pydantic's errors
        raise _trust_root_error(ident, f"not a Sigstore trusted root ({type(exc).__name__})") from None


def sigstore_certificate(bundle: ModelSigningBundle) -> Any:
    """The signing certificate of a Sigstore bundle, as sigstore-python parses the bundle.

    Raises :class:`BundleError` when sigstore-python refuses the bundle's structure (for example a
    bundle without a transparency-log entry).
    """
    from sigstore.models import Bundle

    try:
        return Bundle.from_json(bundle.raw).signing_certificate
    except Exception as exc:  # sigstore raises its own, pydantic's and cryptography's errors
        raise BundleError(f"not a Sigstore bundle sigstore-python accepts: {str(exc)[:200]}") from None


def certificate_matches(certificate: Any, ident: SigstoreIdentity) -> bool:
    """True when ``certificate`` names ``ident`` (identity and issuer): a selector, not verification."""
    from sigstore.verify.policy import Identity

    try:
        Identity(identity=ident.identity, issuer=ident.issuer).verify(certificate)
    except Exception:  # a policy mismatch or an unparsable extension: not this identity
        return False
    return True


def verify_sigstore_bundle(bundle: ModelSigningBundle, ident: SigstoreIdentity) -> ModelManifest:
    """Verify a Sigstore bundle offline for ``ident``; return its manifest (raises :class:`BundleError`).

    Raises ``InputError`` (``modelsign.trust-root``) when the pinned trust root is unusable and
    ``NotAllowedError`` (``modelsign.extra-missing``) when sigstore-python is not installed.
    """
    if not bundle.has_certificate:
        raise BundleError("not a certificate signature")
    trusted_root = load_trusted_root(ident)
    from sigstore.models import Bundle
    from sigstore.verify import Verifier
    from sigstore.verify.policy import Identity

    try:
        sb = Bundle.from_json(bundle.raw)
        verifier = Verifier(trusted_root=trusted_root)
        payload_type, payload = verifier.verify_dsse(sb, Identity(identity=ident.identity, issuer=ident.issuer))
    except Exception as exc:  # noqa: BLE001 - every sigstore failure is "does not verify"
        raise BadSignature(f"Sigstore verification failed: {str(exc)[:200]}") from None
    if payload_type != _PAYLOAD_TYPE:
        raise BundleError(f"payload type is not {_PAYLOAD_TYPE}")
    if payload != bundle.payload:  # the payload we parsed is the payload sigstore verified
        raise BundleError("the verified payload differs from the bundle's")
    return parse_statement(payload)


def sigstore_identity(
    identity: str,
    issuer: str,
    trust_root: str,
    trust_root_sha256: str,
    *,
    base_dir: str | os.PathLike[str] | None,
) -> SigstoreIdentity:
    """Build a :class:`SigstoreIdentity`, resolving ``trust_root`` against ``base_dir``."""
    p = Path(trust_root).expanduser()
    if not p.is_absolute():
        p = Path(base_dir if base_dir is not None else ".") / p
    return SigstoreIdentity(identity, issuer, trust_root, trust_root_sha256, Path(os.path.abspath(p)))
