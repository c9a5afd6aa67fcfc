"""The trust decision for one pipeline load: kill switch, allowlist, signatures, lock, pins.

Pure checks for the loader (``pipewarden._api``), which enforces the result at the exec site.
What it trusts: the ``CodeSource`` digests (the loader computed them from the bytes it keeps),
re-checked here against ``source_bytes`` so the bytes that will run are the bytes verified.
Order (cheap policy first, every step raises): 1. ``PIPEWARDEN_DISABLE_REMOTE_CODE``;
2. the code's own digests agree with its bytes; 3. allowlist: source allowed, isolation mode
allowed, k-of-n signatures over exactly ``code.files``; 4. lock file entry (commit + every file);
5. ``pipeline_sha256``. The returned :class:`TrustDecision` is a report, never a substitute for
the exceptions.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from pipewarden.errors import IntegrityError, NotAllowedError
from pipewarden.loader.digests import parse_sha256, sha256_bytes
from pipewarden.registry._time import resolve_now
from pipewarden.registry.allowlist import Allowlist
from pipewarden.registry.lockfile import LockEntry, Lockfile
from pipewarden.registry.signatures import SignatureVerdict, verify_signed_files

if TYPE_CHECKING:
    from pipewarden.loader.code import CodeSource

__all__ = [
    "DISABLE_REMOTE_CODE_ENV",
    "ALLOWLIST_ENV",
    "TrustDecision",
    "decide",
    "check_weights_lock",
    "load_allowlist_from_env",
    "remote_code_disabled",
]

DISABLE_REMOTE_CODE_ENV = "PIPEWARDEN_DISABLE_REMOTE_CODE"
ALLOWLIST_ENV = "PIPEWARDEN_ALLOWLIST"
#: Code kinds that count as remote code for the kill switch.
REMOTE_KINDS = frozenset({"hub", "community"})


@dataclass(frozen=True)
class TrustDecision:
    """What was checked for one code source and the policy the loader must apply."""

    source_id: str
    kind: str
    commit: str | None
    sha256: str
    #: Which pins matched: any of "pipeline_sha256", "lockfile", "signatures".
    pins: tuple[str, ...]
    signature: SignatureVerdict | None = None
    lock_entry: LockEntry | None = None
    allowlist_version: int | None = None
    required_isolation: str | None = None
    extra_modules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    import_aliases: Mapping[str, str] = field(default_factory=dict)
    required_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_modules", MappingProxyType(dict(self.extra_modules)))
        object.__setattr__(self, "import_aliases", MappingProxyType(dict(self.import_aliases)))

    @property
    def pinned(self) -> bool:
        """True when the exact code bytes are pinned (by hash, lock file or signatures)."""
        return bool(self.pins)


def remote_code_disabled(env: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(DISABLE_REMOTE_CODE_ENV, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def load_allowlist_from_env(env: Mapping[str, str] | None = None, **load_kwargs) -> Allowlist | None:
    """The allowlist named by ``$PIPEWARDEN_ALLOWLIST`` (with rollback check), or None if unset."""
    value = (os.environ if env is None else env).get(ALLOWLIST_ENV, "").strip()
    if not value:
        return None
    return Allowlist.load(value, **load_kwargs)


def _as_allowlist(a: Allowlist | str | os.PathLike[str] | None) -> Allowlist | None:
    if a is None or isinstance(a, Allowlist):
        return a
    if isinstance(a, (str, os.PathLike)):
        return Allowlist.load(Path(a))
    raise TypeError("allowlist must be an Allowlist, a path or None")


def _as_lockfile(lk: Lockfile | str | os.PathLike[str] | None) -> Lockfile | None:
    if lk is None or isinstance(lk, Lockfile):
        return lk
    if isinstance(lk, (str, os.PathLike)):
        return Lockfile.load(Path(lk))
    raise TypeError("lockfile must be a Lockfile, a path or None")


def decide(
    code: CodeSource,
    *,
    allowlist: Allowlist | str | os.PathLike[str] | None,
    lockfile: Lockfile | str | os.PathLike[str] | None,
    pipeline_sha256: str | None,
    isolation: str | None = None,
    now: _dt.datetime | None = None,
    env: Mapping[str, str] | None = None,
) -> TrustDecision:
    """Check one code source against every configured trust rule; raise on the first refusal."""
    allow = _as_allowlist(allowlist)
    lock = _as_lockfile(lockfile)
    pin = parse_sha256(pipeline_sha256, what="pipeline_sha256") if pipeline_sha256 is not None else None

    # 1. Kill switch: no remote code at all.
    if code.kind in REMOTE_KINDS and remote_code_disabled(env):
        raise NotAllowedError(
            f"remote pipeline code {code.source_id!r} refused: {DISABLE_REMOTE_CODE_ENV}=1",
            rule="trust.kill-switch",
            fix=f"unset {DISABLE_REMOTE_CODE_ENV} or use a local, reviewed copy of the pipeline",
        )

    # 2. The digests we verify must be those of the bytes that will run.
    actual = sha256_bytes(code.source_bytes)
    recorded = code.files.get(code.module_relpath)
    if code.sha256 != actual or recorded != actual:
        raise IntegrityError(
            f"{code.module_relpath} of {code.source_id!r}: recorded sha256 {recorded or code.sha256}, "
            f"bytes to run have sha256 {actual}",
            rule="trust.bytes-changed",
            fix="reload; if it persists the file is changing under the loader",
        )

    pins: list[str] = []
    verdict = None
    # 3. Allowlist: source, isolation mode, signatures.
    if allow is not None:
        if isolation is not None and not allow.policy.allows_isolation(isolation):
            raise NotAllowedError(
                f"isolation {isolation!r} is weaker than {allow.required_isolation!r} required by {allow.origin}",
                rule="trust.isolation-required",
                fix=f"use isolation={allow.required_isolation!r}",
            )
        verdict = verify_signed_files(
            code.files, code.signature_bytes, allow, code.source_id, now=resolve_now(now)
        )
        pins.append("signatures")

    # 4. Lock file: commit and every file.
    entry = None
    if lock is not None:
        entry = lock.entry_for(code.source_id, "code")
        if entry is None:
            raise IntegrityError(
                f"pipeline code {code.source_id!r} is not in lock file {lock.origin}",
                rule="lock.source-unlocked",
                fix="add it with `pipewarden lock --custom-pipeline ...`, or drop lockfile=",
            )
        entry.check_commit(code.commit, what="pipeline code")
        entry.check_files(code.files, what="pipeline code files")
        pins.append("lockfile")

    # 5. Explicit pin of the module file.
    if pin is not None:
        if pin != actual:
            raise IntegrityError(
                f"{code.module_relpath} of {code.source_id!r}: pipeline_sha256 pins {pin}, found sha256 {actual}",
                rule="trust.pin-mismatch",
                fix="review the new source and update the pin, or load the pinned revision",
            )
        pins.append("pipeline_sha256")

    return TrustDecision(
        source_id=code.source_id,
        kind=code.kind,
        commit=code.commit,
        sha256=actual,
        pins=tuple(pins),
        signature=verdict,
        lock_entry=entry,
        allowlist_version=allow.version if allow is not None else None,
        required_isolation=allow.required_isolation if allow is not None else None,
        extra_modules=allow.extra_modules if allow is not None else {},
        import_aliases=allow.import_aliases if allow is not None else {},
        required_layers=allow.policy.required_layers if allow is not None else (),
    )


def check_weights_lock(
    lockfile: Lockfile | str | os.PathLike[str] | None,
    source: str,
    commit: str | None,
    files: Mapping[str, str],
) -> LockEntry | None:
    """With a lock file, refuse weights whose source, commit or any file differs. None without one."""
    lock = _as_lockfile(lockfile)
    if lock is None:
        return None
    entry = lock.entry_for(source, "weights")
    if entry is None:
        raise IntegrityError(
            f"weights {source!r} are not in lock file {lock.origin}",
            rule="lock.source-unlocked",
            fix="add them with `pipewarden lock --weights ...`, or drop lockfile=",
        )
    entry.check_commit(commit, what="weights")
    entry.check_files(files, what="weights files")
    return entry
