"""registry: decides what is trusted (allowlists, signers, lock files). Executes nothing.

Public API (re-exported here)::

    Allowlist.load(path) / Allowlist.from_bytes(b)       -> frozen, validated allowlist
    verify_signed_files(files, signature_bytes, allowlist, source, *, now) -> SignatureVerdict
    verify_dir(dir, allowlist, source, now=None)          -> SignatureVerdict
    sign_dir(dir, key, *, source=None, expires=None)      -> path of the signature file
    Lockfile.load(path), LockEntry.check_files(actual, what=...), write_lock(path, entries)
    decide(code, *, allowlist, lockfile, pipeline_sha256, isolation=None, now=None) -> TrustDecision
    load_allowlist_from_env()                             -> Allowlist | None ($PIPEWARDEN_ALLOWLIST)

Verification raises (``NotAllowedError``, ``SignatureError``, ``IntegrityError``, ``InputError``);
reports are returned in addition. Nothing here imports torch.
"""

from __future__ import annotations

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
from pipewarden.registry.trust import TrustDecision, check_weights_lock, decide, load_allowlist_from_env

__all__ = [
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
    "TrustDecision",
    "check_weights_lock",
    "decide",
    "generate_keypair",
    "load_allowlist_from_env",
    "load_signing_key",
    "sign_dir",
    "verify_dir",
    "verify_signed_files",
    "write_lock",
]
