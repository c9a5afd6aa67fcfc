"""The one error tree of pipewarden.

Every refusal raises a subclass of :class:`PipewardenError`. A message answers three questions:
what was refused, which rule refused it, and what the user can do about it. The CLI prints
``diagnostics()`` without a traceback and exits 1 (refused) or 2 (unusable input).

Split by who is at fault (see STYLE.md): programming mistakes by the caller (wrong argument
types, unknown keyword values) raise ``TypeError``/``ValueError``; hostile or broken input
(files, TOML, signatures, worker messages, pipeline source) raises a ``PipewardenError``.
Third-party exceptions are wrapped at the seam where they occur, and the wrapped exception is
never a carrier of a real object to sandboxed code (sandbox errors are raised fresh).
"""

from __future__ import annotations

from pipewarden.rules import is_registered, lookup

__all__ = [
    "PipewardenError",
    "TrustRequiredError",
    "IntegrityError",
    "SignatureError",
    "NotAllowedError",
    "ScanError",
    "PolicyViolation",
    "ResourceLimitError",
    "InputError",
    "FetchError",
    "WorkerError",
    "PolicyError",
]


class PipewardenError(Exception):
    """Base of every refusal. ``what``/``rule``/``fix`` are kept as attributes for tools."""

    #: Exit code the CLI uses for this kind of error (1 = refused, 2 = unusable input).
    exit_code: int = 1

    def __init__(self, what: str, *, rule: str, fix: str = "") -> None:
        if not is_registered(rule):
            # A programming error in pipewarden, never a user's: every raise site names an id
            # registered in pipewarden/rules.py (tests/test_rules.py checks them all statically).
            raise ValueError(f"unregistered rule id {rule!r}: add it to pipewarden/rules.py")
        self.what = str(what)
        self.rule = str(rule)
        self.fix = str(fix)
        super().__init__(self._render())

    @property
    def rule_meaning(self) -> str:
        """The registry's one-line meaning of ``rule``."""
        info = lookup(self.rule)
        return info.meaning if info is not None else ""

    def _render(self) -> str:
        parts = [self.what.rstrip(".") + "."]
        if self.rule:
            parts.append(f"Rule {self.rule}: {self.rule_meaning.rstrip('.')}.")
        if self.fix:
            parts.append(f"To proceed: {self.fix.rstrip('.')}.")
        return " ".join(parts)

    def diagnostics(self) -> str:
        """A human-readable multi-line explanation, printed by the CLI."""
        lines = [f"{type(self).__name__}: {self.what.rstrip('.')}."]
        if self.rule:
            lines.append(f"  rule: {self.rule} ({self.rule_meaning})")
        if self.fix:
            lines.append(f"  to proceed: {self.fix}")
        return "\n".join(lines)

    # Exceptions raised inside the sandbox must never carry host objects; keep pickling and
    # copying trivial (strings only).
    def __reduce__(self):  # pragma: no cover - exercised indirectly
        return (_rebuild, (type(self).__name__, self.what, self.rule, self.fix))


def _rebuild(name: str, what: str, rule: str, fix: str) -> PipewardenError:
    cls = _BY_NAME.get(name, PipewardenError)
    return cls(what, rule=rule, fix=fix)


class TrustRequiredError(PipewardenError):
    """Remote code would run but the caller did not opt in (``trust_remote_code=True``)."""


class IntegrityError(PipewardenError):
    """Bytes do not match their pin (sha256, lock file, git blob id, hub metadata)."""


class SignatureError(PipewardenError):
    """Signatures are missing, malformed, expired, revoked, by unknown keys or below threshold."""


class NotAllowedError(PipewardenError):
    """A source, component class, file format or mode that the active policy does not allow."""


class ScanError(PipewardenError):
    """The pipeline source failed static vetting (parse error, not exactly one pipeline class)."""


class PolicyViolation(PipewardenError):
    """Sandboxed code tried something outside the sandbox policy (compile time or run time)."""


class ResourceLimitError(PipewardenError):
    """A resource limit (memory, CPU, wall clock, message size, file size) was exceeded."""


class InputError(PipewardenError):
    """Input is unusable: malformed TOML/JSON, unreadable file, missing model_index.json, ..."""

    exit_code = 2


class FetchError(PipewardenError):
    """A download failed (HTTP error, truncated body, offline without a cached copy)."""


class WorkerError(PipewardenError):
    """The isolated worker crashed, hung up, or sent a malformed message."""


class PolicyError(InputError, ValueError):
    """The sandbox policy data is malformed (unknown key or value) or names a class or module that
    does not resolve in the installed libraries (the policy fails closed)."""


_BY_NAME: dict[str, type[PipewardenError]] = {
    c.__name__: c
    for c in (
        PipewardenError,
        TrustRequiredError,
        IntegrityError,
        SignatureError,
        NotAllowedError,
        ScanError,
        PolicyViolation,
        ResourceLimitError,
        InputError,
        FetchError,
        WorkerError,
        PolicyError,
    )
}


def error_class(name: str) -> type[PipewardenError]:
    """Map a class name received from a worker (JSON) to a local class; unknown -> base."""
    return _BY_NAME.get(name, PipewardenError)


class InProcessIsolationWarning(UserWarning):
    """``isolation="inprocess"``: the language sandbox is defence in depth for reviewed code, not a
    security boundary against a determined attacker (the worker process is; see SECURITY.md)."""
