"""Admission: the one trust decision of a load, as a state machine.

In the manner of python-tuf's trusted metadata set, one object walks a load through its gates
in a fixed order and is the only code that creates the typed results the later stages accept::

    Admission(...)            kill switch -> opt-in          (before anything is fetched)
      .admit_code(code)       kill switch -> digests agree -> allowlist (source, isolation,
                              k-of-n signatures over every file) -> lock (commit + files) ->
                              pin (pipeline_sha256)  -> AdmittedCode, or raise if not pinned
      .admit_weights(snap)    only after admit_code: lock (entry, commit, published digests)
                                                     -> AdmittedWeights

Every gate raises a named ``PipewardenError`` on refusal; nothing returns "no". The caller
(``pipewarden._api.load_pipeline``) resolves the code, admits it, and only then resolves (and, on
the hub, downloads) the weights, so an unpinned or mis-pinned pipeline costs no weight download.

``PIPEWARDEN_DISABLE_REMOTE_CODE`` has one meaning: no custom pipeline runs, whatever its source
(local directory, hub repo or community name).

Decides: whether this code may run and against which digests the weights are compared while
they are loaded. Trusts: the ``CodeSource`` and ``Snapshot`` digests as *claims* (the code's are
re-checked here against the bytes that will run; the weights' are compared while each file is
read, in this process and again in the worker), the parsed ``Allowlist``/``Lockfile`` objects,
and the process environment for the kill switch and ``$PIPEWARDEN_ALLOWLIST``.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from pipewarden.errors import IntegrityError, NotAllowedError, ScanError, TrustRequiredError
from pipewarden.loader.code import CodeSource
from pipewarden.loader.digests import parse_sha256, sha256_bytes
from pipewarden.loader.snapshot import FileRecord, Snapshot
from pipewarden.registry._time import resolve_now
from pipewarden.registry.allowlist import Allowlist
from pipewarden.registry.lockfile import LockEntry, Lockfile
from pipewarden.registry.signatures import SignatureVerdict, verify_signed_files

__all__ = [
    "ALLOWLIST_ENV",
    "DISABLE_REMOTE_CODE_ENV",
    "Admission",
    "AdmittedCode",
    "AdmittedWeights",
    "GateReporter",
    "load_allowlist_from_env",
    "remote_code_disabled",
]

DISABLE_REMOTE_CODE_ENV = "PIPEWARDEN_DISABLE_REMOTE_CODE"
ALLOWLIST_ENV = "PIPEWARDEN_ALLOWLIST"

GateReporter = Callable[[str, str], None]
Pin = Literal["signatures", "lockfile", "pipeline_sha256"]

# Only this module holds the key that AdmittedCode / AdmittedWeights require.
_KEY = object()


def remote_code_disabled(env: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(DISABLE_REMOTE_CODE_ENV, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def load_allowlist_from_env(env: Mapping[str, str] | None = None, **load_kwargs) -> Allowlist | None:
    """The allowlist named by ``$PIPEWARDEN_ALLOWLIST`` (with rollback check), or None if unset."""
    value = (os.environ if env is None else env).get(ALLOWLIST_ENV, "").strip()
    if not value:
        return None
    return Allowlist.load(value, **load_kwargs)


def _as_allowlist(a: object, env: Mapping[str, str] | None) -> Allowlist | None:
    if a is None:
        return load_allowlist_from_env(env)
    if isinstance(a, Allowlist):
        return a
    if isinstance(a, (str, os.PathLike)):
        return Allowlist.load(Path(a))
    raise TypeError("allowlist must be a path or a pipewarden.registry.allowlist.Allowlist")


def _as_lockfile(lk: object) -> Lockfile | None:
    if lk is None or isinstance(lk, Lockfile):
        return lk
    if isinstance(lk, (str, os.PathLike)):
        return Lockfile.load(Path(lk))
    raise TypeError("lockfile must be a path or a pipewarden.registry.lockfile.Lockfile")


@dataclass(frozen=True)
class AdmittedCode:
    """Pipeline code that passed every gate. Only :class:`Admission` creates one."""

    code: CodeSource
    #: Which pins matched: any of "signatures", "lockfile", "pipeline_sha256" (never empty).
    pins: tuple[Pin, ...]
    gates: tuple[tuple[str, str], ...]
    import_aliases: Mapping[str, str] = field(default_factory=dict)
    extra_modules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    required_isolation: str | None = None
    required_layers: tuple[str, ...] = ()
    signature: SignatureVerdict | None = None
    lock_entry: LockEntry | None = None
    allowlist_version: int | None = None
    _key: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._key is not _KEY:
            raise TypeError("AdmittedCode is created only by pipewarden.registry.admission.Admission")
        if not self.pins:
            raise TypeError("AdmittedCode needs at least one pin")
        object.__setattr__(self, "import_aliases", MappingProxyType(dict(self.import_aliases)))
        object.__setattr__(self, "extra_modules", MappingProxyType(dict(self.extra_modules)))

    @property
    def sha256(self) -> str:
        return self.code.sha256

    def source_text(self) -> str:
        """The exact admitted bytes, re-hashed right before they are handed to the compiler."""
        if sha256_bytes(self.code.source_bytes) != self.code.sha256:  # defence in depth
            raise IntegrityError(
                "the admitted pipeline bytes changed in memory",
                rule="trust.bytes-changed",
                fix="report this as a bug",
            )
        try:
            return self.code.source_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScanError(
                f"{self.code.module_relpath} is not valid UTF-8 (byte {exc.start})",
                rule="code.utf8",
                fix="save the file as UTF-8",
            ) from None


@dataclass(frozen=True)
class AdmittedWeights:
    """Weights admitted for a load whose code was admitted. Only :class:`Admission` creates one.

    ``expected`` maps relpath -> sha256 that each file must hash to while it is loaded (the lock
    file's digests when there is a lock, else the hub's published ones); ``pinned`` is the
    snapshot with those digests filled in, which the worker re-verifies file by file.
    """

    snapshot: Snapshot
    expected: Mapping[str, str]
    lock_entry: LockEntry | None = None
    _key: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._key is not _KEY:
            raise TypeError("AdmittedWeights is created only by pipewarden.registry.admission.Admission")
        object.__setattr__(self, "expected", MappingProxyType(dict(self.expected)))

    @property
    def pinned(self) -> Snapshot:
        snap = self.snapshot
        return Snapshot(
            root=snap.root,
            source=snap.source,
            commit=snap.commit,
            files={
                rel: FileRecord(relpath=rel, sha256=self.expected.get(rel, rec.sha256), size=rec.size)
                for rel, rec in snap.files.items()
            },
            boundary=snap.boundary,
        )


class Admission:
    """The gates of one load, in order. States: opted-in -> code admitted -> weights admitted.

    Construction checks the kill switch and the opt-in (so a refusal costs no download) and
    parses the pins; :meth:`admit_code` and then :meth:`admit_weights` do the rest. Calling them
    out of order is a programming error (``RuntimeError``).
    """

    def __init__(
        self,
        *,
        trust_remote_code: bool,
        pipeline_sha256: str | None = None,
        lockfile: Lockfile | str | os.PathLike[str] | None = None,
        allowlist: Allowlist | str | os.PathLike[str] | None = None,
        isolation: str | None = None,
        import_aliases: Mapping[str, str] | None = None,
        source: str = "custom_pipeline",
        report: GateReporter | None = None,
        env: Mapping[str, str] | None = None,
        now: _dt.datetime | None = None,
    ) -> None:
        if not isinstance(trust_remote_code, bool):
            raise TypeError("trust_remote_code must be a bool")
        self._env = env
        self._now = now
        self._report: GateReporter = report or (lambda gate, verdict: None)
        self._gates: list[tuple[str, str]] = []
        self._isolation = isolation
        self._import_aliases = dict(import_aliases or {})
        self._code: AdmittedCode | None = None
        self._weights: AdmittedWeights | None = None
        # 1. Kill switch, 2. opt-in: before anything is resolved or fetched.
        self._check_kill_switch(source)
        if trust_remote_code is not True:
            raise TrustRequiredError(
                f"pipeline code from {source} would be executed, but trust_remote_code is not True",
                rule="trust.opt-in",
                fix="read the code, then pass trust_remote_code=True together with a pin (pipeline_sha256=...)",
            )
        self._passed("opt-in", "trust_remote_code=True")
        self._pin = parse_sha256(pipeline_sha256, what="pipeline_sha256") if pipeline_sha256 is not None else None
        self.allowlist = _as_allowlist(allowlist, env)
        self.lock = _as_lockfile(lockfile)

    # -- helpers ------------------------------------------------------------------------------

    def _passed(self, gate: str, verdict: str) -> None:
        self._gates.append((gate, verdict))
        self._report(gate, verdict)

    def _check_kill_switch(self, where: str) -> None:
        if remote_code_disabled(self._env):
            raise NotAllowedError(
                f"refusing to run pipeline code from {where}: {DISABLE_REMOTE_CODE_ENV} is set",
                rule="trust.kill-switch",
                fix=f"unset {DISABLE_REMOTE_CODE_ENV} to allow vetted pipeline code",
            )
        if not self._gates or self._gates[0][0] != "kill switch":
            self._passed("kill switch", f"{DISABLE_REMOTE_CODE_ENV} not set")

    # -- code ---------------------------------------------------------------------------------

    def admit_code(self, code: CodeSource) -> AdmittedCode:
        """Every code gate against the exact bytes that will be compiled; raises unless pinned."""
        if self._code is not None:
            raise RuntimeError("Admission.admit_code was already called for this load")
        where = code.source_id + (f"@{code.commit}" if code.commit else "")
        # Again at the exec site (the environment may have changed while the code was fetched).
        self._check_kill_switch(where)
        # The digests checked below must be those of the bytes that will run.
        actual = sha256_bytes(code.source_bytes)
        recorded = code.files.get(code.module_relpath)
        if code.sha256 != actual or recorded != actual:
            raise IntegrityError(
                f"{code.module_relpath} of {code.source_id!r}: recorded sha256 {recorded or code.sha256}, "
                f"bytes to run have sha256 {actual}",
                rule="trust.bytes-changed",
                fix="reload; if it persists the file is changing under the loader",
            )
        pins: list[Pin] = []
        allow, verdict = self.allowlist, None
        # 3. Allowlist: isolation mode, source, k-of-n signatures over exactly code.files.
        if allow is not None:
            if self._isolation is not None and not allow.policy.allows_isolation(self._isolation):
                raise NotAllowedError(
                    f"isolation {self._isolation!r} is weaker than {allow.required_isolation!r} required by {allow.origin}",
                    rule="trust.isolation-required",
                    fix=f"use isolation={allow.required_isolation!r}",
                )
            verdict = verify_signed_files(
                code.files, code.signature_bytes, allow, code.source_id, now=resolve_now(self._now),
                model_signatures=code.model_signatures,
            )
            pins.append("signatures")
            signers = ", ".join(verdict.signers) or "the required signers"
            self._passed("allowlist", f"source {code.source_id} allowed; signed by {signers}")
        # 4. Lock file: the entry, its commit and every file.
        entry = None
        if self.lock is not None:
            entry = self.lock.entry_for(code.source_id, "code")
            if entry is None:
                raise IntegrityError(
                    f"pipeline code {code.source_id!r} is not in lock file {self.lock.origin}",
                    rule="lock.source-unlocked",
                    fix="add it with `pipewarden lock --custom-pipeline ...`, or drop lockfile=",
                )
            entry.check_commit(code.commit, what="pipeline code")
            entry.check_files(code.files, what="pipeline code files")
            pins.append("lockfile")
            self._passed("lock file", f"{len(code.files)} code file(s) match the lock")
        # 5. The explicit pin of the module file.
        if self._pin is not None:
            if self._pin != actual:
                raise IntegrityError(
                    f"{code.module_relpath} of {code.source_id!r}: pipeline_sha256 pins {self._pin}, found sha256 {actual}",
                    rule="trust.pin-mismatch",
                    fix="review the new source and update the pin, or load the pinned revision",
                )
            pins.append("pipeline_sha256")
            self._passed("sha256 pin", f"{actual} matches")
        if not pins:
            commit = f" at commit {code.commit}" if code.commit else ""
            raise NotAllowedError(
                f"pipeline code from {code.source_id}{commit} is not pinned (its sha256 is {code.sha256})",
                rule="trust.code-unpinned",
                fix=(
                    f"after reading the code, pass pipeline_sha256={code.sha256!r}"
                    + (f" and custom_revision={code.commit!r}" if code.commit else "")
                ),
            )
        aliases = {**self._import_aliases, **dict(allow.import_aliases if allow else {})}  # the organisation's win
        self._code = AdmittedCode(
            code=code,
            pins=tuple(pins),
            gates=tuple(self._gates),
            import_aliases=aliases,
            extra_modules=dict(allow.extra_modules) if allow else {},
            required_isolation=allow.required_isolation if allow else None,
            required_layers=tuple(allow.policy.required_layers) if allow else (),
            signature=verdict,
            lock_entry=entry,
            allowlist_version=allow.version if allow else None,
            _key=_KEY,
        )
        return self._code

    # -- weights ------------------------------------------------------------------------------

    def admit_weights(self, weights: Snapshot) -> AdmittedWeights:
        """The weights' lock entry and commit; the digests each file must match when loaded.

        Only after :meth:`admit_code`: no weight is read or fetched for code that is not admitted.
        """
        if self._code is None:
            raise RuntimeError("Admission.admit_weights before admit_code: the code pin is checked first")
        if self._weights is not None:
            raise RuntimeError("Admission.admit_weights was already called for this load")
        expected: dict[str, str] = {k: v.sha256 for k, v in weights.files.items() if v.sha256}
        entry = None
        if self.lock is not None:
            entry = self.lock.entry_for(weights.source, "weights")
            if entry is None:
                raise IntegrityError(
                    f"weights {weights.source!r} are not in lock file {self.lock.origin}",
                    rule="lock.source-unlocked",
                    fix="add them with `pipewarden lock --weights ...`, or drop lockfile=",
                )
            entry.check_commit(weights.commit, what="weights")
            entry.check_names(weights.files, what="weights files")  # an extra (unread) file is refused too
            # Digests the hub published for this commit must be the locked ones (a file the lock
            # does not name is refused here; a locked file that is absent is refused when read).
            published = {k: v for k, v in expected.items() if v}
            if published:
                entry.check_files({**{k: v for k, v in entry.files.items() if k not in published}, **published}, what="weights files")
            # Every file the loader reads must be in the lock; each is compared while it is loaded.
            expected = dict(entry.files)
            self._passed("weights lock", f"{weights.source} matches the lock ({len(entry.files)} file(s))")
        # Weights read from the very directory (or hub repo at the same commit) whose signatures
        # admitted the code: the signed digests pin every file the loader reads, so a file
        # changed after admission (or any unsigned file the load uses) is refused while loading.
        signed = self._signed_weights_pins(weights)
        if signed:
            if entry is not None:
                differ = sorted(rel for rel in set(signed) & set(expected) if signed[rel] != expected[rel])
                if differ:
                    raise IntegrityError(
                        f"weights {weights.source!r}: {differ[0]} is locked with sha256 {expected[differ[0]]} "
                        f"but signed with sha256 {signed[differ[0]]}",
                        rule="sig.files-mismatch",
                        fix="re-lock the weights, or have the signers re-sign the directory",
                    )
            else:
                expected = signed
            self._passed("weights signatures", f"{weights.source}: every file used must match the signed digests ({len(signed)} file(s))")
        self._weights = AdmittedWeights(snapshot=weights, expected=expected, lock_entry=entry, _key=_KEY)
        return self._weights

    def _signed_weights_pins(self, weights: Snapshot) -> dict[str, str]:
        """The signed digests when the weights are the signed code directory itself, else {}."""
        code = self._code
        if code is None or code.signature is None:
            return {}
        if weights.source != code.code.source_id or weights.commit != code.code.commit:
            return {}
        return dict(code.signature.manifest)

    @property
    def gates(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._gates)
