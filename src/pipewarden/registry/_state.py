"""Rollback protection state: the highest allowlist ``version`` seen, per allowlist file.

Kept in the user's cache dir: ``$PIPEWARDEN_STATE_DIR/state.json``, else
``$XDG_CACHE_HOME/pipewarden/state.json``, else ``~/.cache/pipewarden/state.json``. The state is
trusted as the user's own record; a corrupt state file fails closed (``InputError``) rather than
silently forgetting what was seen. Updates take an exclusive ``flock`` and keep the maximum.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from pipewarden.errors import InputError, IntegrityError
from pipewarden.registry._files import atomic_write

STATE_FORMAT = "pipewarden-state/1"
_MAX_STATE = 4 * 1024 * 1024


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("PIPEWARDEN_STATE_DIR"):
        return Path(env["PIPEWARDEN_STATE_DIR"])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "pipewarden"
    return Path.home() / ".cache" / "pipewarden"


class VersionStore:
    """Highest version seen per identity, stored in ``<dir>/state.json``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "state.json"

    @classmethod
    def default(cls) -> VersionStore:
        return cls(default_state_dir())

    def _read(self) -> dict[str, int]:
        from pipewarden.fsaccess import read_user_file

        if not os.path.lexists(self.path):
            return {}
        try:
            data = read_user_file(self.path, limit=_MAX_STATE, what="state file")
        except InputError as exc:
            raise self._corrupt(exc.what) from None
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise self._corrupt("it is not valid JSON") from None
        versions = doc.get("allowlist_versions") if isinstance(doc, dict) else None
        if (
            len(data) > _MAX_STATE
            or not isinstance(doc, dict)
            or doc.get("format") != STATE_FORMAT
            or not isinstance(versions, dict)
            or not all(isinstance(k, str) and type(v) is int for k, v in versions.items())
        ):
            raise self._corrupt("its content is not a pipewarden state file")
        return dict(versions)

    def _corrupt(self, why: str) -> InputError:
        return InputError(
            f"pipewarden state file {self.path} is unusable: {why}",
            rule="allowlist.state-corrupt",
            fix=f"delete {self.path} (forgets versions seen) or set PIPEWARDEN_STATE_DIR",
        )

    def seen(self, identity: str) -> int | None:
        return self._read().get(identity)

    def check(self, identity: str, version: int, *, what: str) -> None:
        """Refuse ``version`` below the highest seen for ``identity`` (records nothing)."""
        seen = self.seen(identity)
        if seen is not None and version < seen:
            raise _rollback(what, version, seen)

    def check_and_record(self, identity: str, version: int, *, what: str) -> None:
        """Refuse ``version`` below the highest seen for ``identity``; then record the maximum."""
        import fcntl

        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = os.open(self.directory / "state.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise InputError(
                f"cannot write rollback state in {self.directory}: {exc.strerror}",
                rule="allowlist.state-unwritable",
                fix="set PIPEWARDEN_STATE_DIR to a writable directory",
            ) from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            versions = self._read()
            seen = versions.get(identity)
            if seen is not None and version < seen:
                raise _rollback(what, version, seen)
            if seen is None or version > seen:
                versions[identity] = version
                doc = {"format": STATE_FORMAT, "allowlist_versions": dict(sorted(versions.items()))}
                atomic_write(self.path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), mode=0o600)
        finally:
            os.close(lock_fd)


def _rollback(what: str, version: int, seen: int) -> IntegrityError:
    return IntegrityError(
        f"{what} has version {version}, but version {seen} was seen before",
        rule="allowlist.rollback",
        fix=f"use the newest allowlist; if the older one is intended, publish it with a version above {seen}",
    )
