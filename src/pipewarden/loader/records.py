"""Verified-digest records: after a file was fully hashed, an unchanged file skips the re-hash.

What a record says: "the file with this (st_dev, st_ino, size, mtime_ns, ctime_ns) had these
bytes (sha256) when it was read in full at ``verified_ns``". A later load trusts it only when the
``fstat`` of its *open descriptor* matches every field, the record is not racy, and nobody but the
user (or root) can write the file. Anything else is a full re-hash. The bytes are still read once
into private memory on a hit (a later write to the file cannot change loaded tensors), and the
descriptor is ``fstat``-ed again after the read: a change during the read re-hashes the bytes held.

Why ctime: the kernel sets it on every change of content or metadata (write, truncate, chmod,
``touch``, rename-over gives a new inode), and only the kernel can set it (``utime`` sets mtime
and atime, and sets ctime to *now*). Racy records (git's "racy clean" problem): a write in the
same timestamp tick as the recorded ctime would leave ctime unchanged, so a record whose ctime is
not older than its verification time by more than the filesystem's timestamp granularity is not
trusted (the next load re-hashes and re-records it). Files writable by another user are never
trusted by record: a writer holding a shared writable mapping can change a page that is already
dirty without a new ctime, so only files that no other (non-root) user can write qualify.

Where fs-verity is enabled on a file, its kernel-computed digest identifies the contents (the
file cannot change while verity is on), so a record keyed by that digest needs no timestamps.

Who writes records: only the host, from bytes it hashed itself (``DigestStore``). The isolated
worker gets the host's matching records in its load request (``FixedRecords``, read-only) and
never opens the store.

The store: one JSON file under the user's cache dir (``PIPEWARDEN_DIGEST_STORE`` overrides the
path), 0600 in a 0700 directory, replaced atomically (temp file + ``rename``), at most
``MAX_RECORDS`` entries (oldest dropped) and ``MAX_STORE_BYTES`` bytes. A store that is not a
regular file owned by the user with mode 0600, is oversized, or does not parse is ignored (all
misses) and replaced by the next write.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pipewarden.loader.digests import is_sha256_hex

STORE_ENV = "PIPEWARDEN_DIGEST_STORE"
REVERIFY_ENV = "PIPEWARDEN_REVERIFY"
STORE_FORMAT = "pipewarden-digest-records/1"
MAX_RECORDS = 4096
MAX_STORE_BYTES = 2 * 1024 * 1024
#: Margin for filesystems with nanosecond timestamps (the kernel stamps files from a coarse clock
#: that lags by up to a tick, 1-10 ms; 100 ms leaves room).
FINE_GRANULARITY_NS = 100_000_000
#: Filesystems whose timestamps are whole seconds (ext3, HFS+, some network filesystems) or
#: two seconds (FAT).
COARSE_GRANULARITY_NS = 2_000_000_000

Reverify = Literal["auto", "always"]

#: The clock records are stamped with (replaced by tests to simulate an old record).
_now_ns: Callable[[], int] = time.time_ns


def resolve_reverify(value: str | None) -> Reverify:
    """``reverify=`` argument, else ``PIPEWARDEN_REVERIFY``, else ``"auto"``."""
    if value is None:
        env = os.environ.get(REVERIFY_ENV, "").strip().lower()
        if env in ("", "auto"):
            return "auto"
        if env == "always":
            return "always"
        raise ValueError(f"{REVERIFY_ENV} must be 'auto' or 'always', got {env!r}")
    if value not in ("auto", "always"):
        raise ValueError(f"reverify must be 'auto' or 'always', got {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class FileIdentity:
    """What ``fstat`` says about a file; equal identities = no change the kernel knows of."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Record:
    identity: FileIdentity
    sha256: str
    verified_ns: int
    verity: str = ""  # "alg:hexdigest" from FS_IOC_MEASURE_VERITY, when the file had fs-verity on

    def to_json(self) -> list[object]:
        i = self.identity
        return [i.dev, i.ino, i.size, i.mtime_ns, i.ctime_ns, self.sha256, self.verified_ns, self.verity]

    @classmethod
    def from_json(cls, raw: object) -> Record | None:
        """Strict parse of one stored entry; None for anything malformed."""
        if not isinstance(raw, list) or len(raw) != 8:
            return None
        *nums, sha, verified, verity = raw
        ints = [*nums, verified]
        if not all(type(n) is int and 0 <= n < 1 << 64 for n in ints):
            return None
        if not is_sha256_hex(sha) or not isinstance(verity, str) or len(verity) > 200:
            return None
        return cls(FileIdentity(*nums), sha, verified, verity)


def granularity_ns(st: os.stat_result) -> int:
    """The timestamp granularity to assume for the filesystem holding this file."""
    if st.st_ctime_ns % 1_000_000_000 == 0 and st.st_mtime_ns % 1_000_000_000 == 0:
        return COARSE_GRANULARITY_NS
    return FINE_GRANULARITY_NS


def is_racy(record: Record, st: os.stat_result) -> bool:
    """True when a change in the same timestamp tick as the record's ctime could go unseen."""
    return record.identity.ctime_ns + granularity_ns(st) >= record.verified_ns


def writable_by_others(st: os.stat_result, owner: int | None = None) -> bool:
    """Another non-root user can write this file (group/other write bit, or owned by them).

    ``owner``: the uid of the user whose records these are (default: this process's euid; the
    worker, which may run under its own uid, is told the host's).
    """
    me = os.geteuid() if owner is None else owner
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)) or st.st_uid not in (me, 0)


def trusted(record: Record | None, st: os.stat_result, *, verity: str = "", owner: int | None = None) -> bool:
    """Whether ``record`` vouches for the file whose descriptor's fstat is ``st``."""
    if record is None or not stat.S_ISREG(st.st_mode):
        return False
    if verity:  # kernel-enforced contents: the verity digest alone identifies them
        return record.verity == verity and record.identity.size == st.st_size
    if FileIdentity.of(st) != record.identity:
        return False
    return not is_racy(record, st) and not writable_by_others(st, owner)


# ---------------------------------------------------------------------------------------------
# fs-verity (optional)

_FS_IOC_MEASURE_VERITY = 0xC0046686
_VERITY_ALGS = {1: "sha256", 2: "sha512"}


def verity_digest(fd: int) -> str:
    """``"sha256:<hex>"`` of the file's fs-verity digest, or "" when verity is not enabled."""
    buf = bytearray(struct.pack("=HH", 0, 64) + bytes(64))
    try:
        fcntl.ioctl(fd, _FS_IOC_MEASURE_VERITY, buf, True)
    except OSError:  # ENODATA (not enabled), ENOTTY/EOPNOTSUPP (filesystem lacks it), ...
        return ""
    alg, size = struct.unpack_from("=HH", buf)
    name = _VERITY_ALGS.get(alg)
    if name is None or not 0 < size <= 64:
        return ""
    return f"{name}:{bytes(buf[4 : 4 + size]).hex()}"


# ---------------------------------------------------------------------------------------------
# Where records come from


class RecordSource(Protocol):
    """Looks records up; ``add`` is a no-op for read-only sources (the worker)."""

    def lookup(self, st: os.stat_result, *, verity: str = "") -> Record | None: ...

    def add(self, record: Record) -> None: ...


class NoRecords:
    """``reverify="always"``: every byte is hashed on every load."""

    def lookup(self, st: os.stat_result, *, verity: str = "") -> Record | None:
        return None

    def add(self, record: Record) -> None:
        return None


class FixedRecords:
    """Records handed over by the host (the worker's view): lookups only, never written.

    ``owner`` is the host's euid (the worker may run under a uid of its own).
    """

    def __init__(self, records: Iterable[Record], *, owner: int | None = None) -> None:
        self.owner = owner
        self._by_key: dict[tuple[int, int], Record] = {}
        self._by_verity: dict[str, Record] = {}
        for r in records:
            self._by_key[(r.identity.dev, r.identity.ino)] = r
            if r.verity:
                self._by_verity[r.verity] = r

    def lookup(self, st: os.stat_result, *, verity: str = "") -> Record | None:
        if verity and verity in self._by_verity:
            return self._by_verity[verity]
        return self._by_key.get((st.st_dev, st.st_ino))

    def add(self, record: Record) -> None:
        return None

    def to_json(self) -> list[list[object]]:
        return [r.to_json() for r in self._by_key.values()]

    @classmethod
    def from_json(cls, raw: object, *, owner: int | None = None) -> FixedRecords:
        items = raw if isinstance(raw, list) else []
        return cls((r for r in (Record.from_json(x) for x in items[:MAX_RECORDS]) if r is not None), owner=owner)


def _private_dir_problem(directory: Path) -> str | None:
    try:
        st = os.lstat(directory)
    except OSError:
        return "its directory is missing"
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"its directory {directory} is not a private directory of this user"
    return None


def read_private_json(path: Path, fmt: str, max_bytes: int) -> tuple[dict | None, str | None]:
    """A per-user cache document ``{"format": fmt, "records": [...]}``, or (None, why not).

    Refused (None): not a regular file (symlinks are not followed), not owned by this user, any
    group/other permission bit, a directory others can write, more than ``max_bytes``, not
    UTF-8 JSON of that shape. A missing file is (None, None).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot open: {exc.strerror}"
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_uid != os.geteuid():
            return None, f"owned by uid {st.st_uid}, not by this user"
        if stat.S_IMODE(st.st_mode) & 0o077:
            return None, f"mode {stat.S_IMODE(st.st_mode):o} is not 600"
        problem = _private_dir_problem(path.parent)
        if problem:
            return None, problem
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        return None, f"larger than {max_bytes} bytes"
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, "not UTF-8 JSON"
    if not isinstance(doc, dict) or doc.get("format") != fmt or not isinstance(doc.get("records"), list):
        return None, f"not a {fmt} document"
    return doc, None


def write_private_json(path: Path, fmt: str, records: list, max_bytes: int) -> bool:
    """Replace ``path`` atomically with ``{"format": fmt, "records": records}`` (0600, in a 0700
    directory created if missing). Oldest (first) records are dropped to stay under
    ``max_bytes``. False, with nothing written, where the directory is not private to the user
    or on any I/O error."""
    try:
        parent = path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _private_dir_problem(parent):
            return False
        doc = {"format": fmt, "records": records}
        data = json.dumps(doc, separators=(",", ":")).encode()
        while len(data) > max_bytes and records:
            records = records[len(records) // 4 + 1 :]
            doc["records"] = records
            data = json.dumps(doc, separators=(",", ":")).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        return False
    return True


def default_store_path() -> Path:
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pipewarden" / "verified-digests.json"


class DigestStore:
    """The host's per-user store. Reads once (lazily); ``flush`` merges and replaces atomically."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self._records: dict[tuple[int, int], Record] | None = None
        self._pending: dict[tuple[int, int], Record] = {}
        self.problem: str | None = None  # why the stored file was ignored, if it was

    # -- reading -------------------------------------------------------------------------------

    def _read(self) -> dict[tuple[int, int], Record]:
        """The stored records, or {} for a store that is absent, unsafe or malformed."""
        doc, problem = read_private_json(self.path, STORE_FORMAT, MAX_STORE_BYTES)
        if problem:
            self.problem = problem
        if doc is None:
            return {}
        out: dict[tuple[int, int], Record] = {}
        for raw in doc["records"][:MAX_RECORDS]:
            rec = Record.from_json(raw)
            if rec is None:
                self.problem = "malformed entries were dropped"
                continue
            out[(rec.identity.dev, rec.identity.ino)] = rec
        return out

    def records(self) -> dict[tuple[int, int], Record]:
        if self._records is None:
            self._records = self._read()
        return self._records

    def lookup(self, st: os.stat_result, *, verity: str = "") -> Record | None:
        key = (st.st_dev, st.st_ino)
        rec = self._pending.get(key) or self.records().get(key)
        if rec is None and verity:
            rec = next((r for r in self.records().values() if r.verity == verity), None)
        return rec

    # -- writing -------------------------------------------------------------------------------

    def add(self, record: Record) -> None:
        self._pending[(record.identity.dev, record.identity.ino)] = record

    def flush(self) -> bool:
        """Merge pending records into the stored ones and replace the file atomically.

        Returns False (and writes nothing) where the store's directory is not private to the
        user; never raises for I/O problems (a record is an optimisation, not a requirement).
        """
        if not self._pending:
            return True
        merged = dict(self._read())  # re-read: keep what other processes wrote meanwhile
        merged.update(self._pending)
        keep = sorted(merged.values(), key=lambda r: r.verified_ns)[-MAX_RECORDS:]
        if not write_private_json(self.path, STORE_FORMAT, [r.to_json() for r in keep], MAX_STORE_BYTES):
            return False
        self._records = {(r.identity.dev, r.identity.ino): r for r in keep}
        self._pending.clear()
        return True

    def matching(self, stats: Mapping[str, tuple[os.stat_result, str]]) -> dict[str, Record]:
        """relpath -> the record that vouches for it now (for the worker's load request)."""
        out: dict[str, Record] = {}
        for rel, (st, verity) in stats.items():
            rec = self.lookup(st, verity=verity)
            if rec is not None and trusted(rec, st, verity=verity):
                out[rel] = rec
        return out


def records_for(reverify: str | None) -> RecordSource:
    """The host's record source for one load: the user's store, or none for ``"always"``."""
    return NoRecords() if resolve_reverify(reverify) == "always" else DigestStore()


# ---------------------------------------------------------------------------------------------
# The one read path: bytes once into private memory, hashed unless a record vouches for them


@dataclass(frozen=True)
class VerifiedRead:
    """The bytes read (private), their sha256, and whether they were hashed in this load."""

    data: object  # bytearray | mmap.mmap
    sha256: str
    hashed: bool
    how: str  # "hashed", "record", "fs-verity record", "re-hashed (changed while read)"


def _hash_buffer(buf: object) -> str:
    import hashlib

    return hashlib.sha256(memoryview(buf)).hexdigest()  # type: ignore[arg-type]


def read_verified_file(
    path: str | os.PathLike[str],
    *,
    expected: str | None,
    records: RecordSource,
    where: str | None = None,
    open_fd: Callable[[], int] | None = None,
) -> VerifiedRead:
    """Read a whole regular file once into private memory and establish the sha256 of those bytes.

    The digest is hashed from the bytes read unless ``records`` holds a trusted record for the
    open descriptor's ``fstat`` (see ``trusted``) that agrees with ``expected`` (when pinned) and
    the descriptor's ``fstat`` is unchanged after the read. After a full hash of a file that did
    not change while it was read (and matched ``expected``, when pinned), a record is added.
    The caller compares the digest with its pin; this function decides nothing about trust.
    ``open_fd`` opens the file instead of ``path`` (``pipewarden.fsaccess.open_fd_in``: links
    followed only inside the snapshot's boundary, e.g. the HF cache's snapshot entries into blobs/).
    """
    from pipewarden.errors import InputError
    from pipewarden.loader import _safetensors

    name = where or os.fspath(path)
    fd = open_fd() if open_fd is not None else os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        st0 = os.fstat(fd)
        if not stat.S_ISREG(st0.st_mode):
            raise InputError(f"{name} is not a regular file", rule="file.not-regular")
        os.set_blocking(fd, True)
        verity = verity_digest(fd)
        rec = records.lookup(st0, verity=verity)
        owner = getattr(records, "owner", None)
        if rec is not None and trusted(rec, st0, verity=verity, owner=owner) and (expected is None or rec.sha256 == expected):
            buf, _ = _safetensors.read_fd(fd, st0.st_size, hash_=False, where=name)
            st1 = os.fstat(fd)
            if verity or FileIdentity.of(st1) == FileIdentity.of(st0):
                return VerifiedRead(buf, rec.sha256, False, "fs-verity record" if verity else "record")
            return VerifiedRead(buf, _hash_buffer(buf), True, "re-hashed (changed while read)")
        started = _now_ns()
        buf, digest = _safetensors.read_fd(fd, st0.st_size, hash_=True, where=name)
        assert digest is not None
        st1 = os.fstat(fd)
        unchanged = FileIdentity.of(st1) == FileIdentity.of(st0)
        if unchanged and (expected is None or digest == expected):
            records.add(Record(FileIdentity.of(st0), digest, started, verity))
        return VerifiedRead(buf, digest, True, "hashed")
    finally:
        os.close(fd)


def verify_file_digest(
    path: str | os.PathLike[str],
    *,
    expected: str | None,
    records: RecordSource,
    open_fd: Callable[[], int] | None = None,
) -> Record | None:
    """Host side of a process-mode load: make sure a trusted record vouches for this file.

    Returns the record the worker may use (a trusted existing one, or a new one after a full
    streaming hash of a file that did not change while it was hashed and matched ``expected``),
    or None: the worker then hashes the file itself. No hash is spent on a file whose record
    would be racy (just written) or that another user can write: the worker could not use the
    record, and would hash the bytes a second time.
    """
    import hashlib

    from pipewarden.errors import PipewardenError

    try:
        fd = open_fd() if open_fd is not None else os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except (OSError, PipewardenError):
        return None  # the worker's own read reports the problem
    try:
        st0 = os.fstat(fd)
        if not stat.S_ISREG(st0.st_mode):
            return None
        verity = verity_digest(fd)
        rec = records.lookup(st0, verity=verity)
        if rec is not None and trusted(rec, st0, verity=verity):
            return rec if expected is None or rec.sha256 == expected else None
        started = _now_ns()
        if not verity and (writable_by_others(st0) or st0.st_ctime_ns + granularity_ns(st0) >= started):
            return None
        os.set_blocking(fd, True)
        h = hashlib.sha256()
        chunk = bytearray(1 << 22)
        view = memoryview(chunk)
        while n := os.readv(fd, [chunk]):
            h.update(view[:n])
        view.release()
        st1 = os.fstat(fd)
        digest = h.hexdigest()
        if FileIdentity.of(st1) != FileIdentity.of(st0) or (expected is not None and digest != expected):
            return None  # the worker hashes it and reports the mismatch with the usual error
        new = Record(FileIdentity.of(st0), digest, started, verity)
        records.add(new)
        return new
    except OSError:
        return None
    finally:
        os.close(fd)
