"""registry: decides what may run. Executes nothing, imports no torch.

Decides: which pipeline code may run and against which digests its weights are checked. The one
decision is :class:`~pipewarden.registry.admission.Admission` (kill switch -> opt-in ->
allowlist (source + signatures) -> lock -> pin, for code and then weights), the only creator of
``AdmittedCode`` / ``AdmittedWeights``. Trusts: its parsed inputs (allowlist and lock file TOML
are parsed strictly into frozen objects; signature files are verified Ed25519 over canonical
manifests, or OpenSSF model-signing bundles verified by ``modelsign``: ECDSA keys, or Sigstore
certificates against a pinned local trust root), the process environment (kill switch, ``$PIPEWARDEN_ALLOWLIST``,
``$PIPEWARDEN_STATE_DIR``) and the digests the loader computed (as claims it compares).

Public API (re-exported here)::

    Admission(trust_remote_code=..., pipeline_sha256=..., lockfile=..., allowlist=..., isolation=...)
        .admit_code(code) -> AdmittedCode ; .admit_weights(snapshot) -> AdmittedWeights

    Allowlist.load(path) / Allowlist.from_bytes(b)       -> frozen, validated allowlist
    verify_signed_files(files, signature_bytes, allowlist, source, *, now, model_signatures=None)
                                                          -> SignatureVerdict
    verify_dir(dir, allowlist, source, now=None)          -> SignatureVerdict
    sign_dir(dir, key, *, source=None, expires=None)      -> path of the signature file
    Lockfile.load(path), LockEntry.check_files(actual, what=...), write_lock(path, entries)
    load_allowlist_from_env()                             -> Allowlist | None ($PIPEWARDEN_ALLOWLIST)

Verification raises (``NotAllowedError``, ``SignatureError``, ``IntegrityError``, ``InputError``);
reports are returned in addition. Nothing here imports torch.
"""

from __future__ import annotations

from pipewarden.registry.admission import Admission, AdmittedCode, AdmittedWeights, load_allowlist_from_env
from pipewarden.registry.allowlist import Allowlist, AllowlistPolicy, RevokedSigner, Signer, SourceRule
from pipewarden.registry.keys import PublicKey, generate_keypair, load_signing_key
from pipewarden.registry.lockfile import LOCK_FILE, LockEntry, Lockfile, write_lock
from pipewarden.registry.signatures import (
    SIGNATURE_FILE,
    MalformedSignatureFile,
    Reason,
    Rejection,
    SignatureVerdict,
    sign_dir,
    verify_dir,
    verify_signed_files,
)

__all__ = [
    "Admission",
    "AdmittedCode",
    "AdmittedWeights",
    "Allowlist",
    "AllowlistPolicy",
    "LOCK_FILE",
    "LockEntry",
    "Lockfile",
    "MalformedSignatureFile",
    "PublicKey",
    "Reason",
    "Rejection",
    "RevokedSigner",
    "SIGNATURE_FILE",
    "SignatureVerdict",
    "Signer",
    "SourceRule",
    "generate_keypair",
    "load_allowlist_from_env",
    "load_signing_key",
    "sign_dir",
    "verify_dir",
    "verify_signed_files",
    "write_lock",
]
