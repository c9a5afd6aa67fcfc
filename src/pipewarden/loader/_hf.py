"""The seam to ``huggingface_hub``: hub metadata in, verified cache files out.

What this module decides:

* hub answers are parsed once into frozen records (``RemoteFile``, ``RepoListing``); a listing
  without per-file metadata, with unsafe paths or with a malformed commit is refused;
* a file is used only after its bytes were hashed: LFS files must match the hub's sha256 and
  size, other files their git blob SHA-1, and the cache blob a snapshot entry points to must be
  named after that same digest (``blobs/<sha256>`` or ``blobs/<git sha1>``);
* a file that fails verification is evicted (its blob and its snapshot entry) before the error
  is raised, so no later load can pick it up;
* every ``huggingface_hub``/``httpx2`` exception is wrapped here into ``FetchError`` (could not
  get bytes) or ``IntegrityError`` (got bytes that do not match).

What it trusts: the hub's metadata for which digest a file must have (pins, lock files and
signatures are checked by the caller against the digests recorded here), and nothing in the
cache: cache hits are re-hashed on every load.

Settings are read at call time from ``huggingface_hub.constants`` — the very values diffusers
uses in the same process (``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE``) — so files diffusers
downloaded are found and reused. Offline mode and quiet progress are also read from the
environment at call time (``HF_HUB_OFFLINE``, ``PIPEWARDEN_QUIET``,
``HF_HUB_DISABLE_PROGRESS_BARS``), because ``huggingface_hub`` reads those only at import.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipewarden.errors import FetchError, IntegrityError, PipewardenError
from pipewarden.loader.digests import CHUNK, is_commit_hex, is_sha256_hex
from pipewarden.loader.snapshot import FileRecord

#: Files at least this big get a hashing progress bar.
HASH_PROGRESS_MIN_BYTES = 32 * 1024 * 1024
#: Read timeout (seconds of silence) for hub API answers; huggingface_hub's client has none by default.
API_TIMEOUT_S = 30.0
#: Bytes kept in memory when the caller asks for them (code files); bigger files are refused.
MAX_KEPT_BYTES = 4 * 1024 * 1024
#: A ref file holds one 40-hex commit id.
MAX_REF_BYTES = 1024

_TRUE = {"1", "ON", "YES", "TRUE"}
_SHARED_NAME = re.compile(r"[0-9a-f]{64}")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class HubSettings:
    """Where to talk to and where to cache, read once per resolve call."""

    endpoint: str
    cache_dir: Path
    offline: bool
    quiet: bool

    @classmethod
    def current(cls, *, cache_dir: str | None = None, local_files_only: bool = False) -> HubSettings:
        from huggingface_hub import constants
        from huggingface_hub.utils import are_progress_bars_disabled

        offline = (
            bool(constants.HF_HUB_OFFLINE) or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
        )
        quiet = (
            _env_true("PIPEWARDEN_QUIET")
            or _env_true("HF_HUB_DISABLE_PROGRESS_BARS")
            or are_progress_bars_disabled()
        )
        # cache_dir= and local_files_only= mean what they mean in diffusers' from_pretrained.
        cache = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser().resolve()
        return cls(
            endpoint=str(constants.ENDPOINT).rstrip("/"), cache_dir=cache, offline=offline or local_files_only, quiet=quiet
        )

    def storage_folder(self, repo_id: str, repo_type: str) -> Path:
        from huggingface_hub.file_download import repo_folder_name

        return self.cache_dir / repo_folder_name(repo_id=repo_id, repo_type=repo_type)


from pipewarden.loader._hf_parse import (  # noqa: E402,F401  (re-exported)
    RemoteFile,
    RepoListing,
    _parse_sibling,
    canonical_id,
    check_relpath,
    check_revision,
    parse_listing,
    parse_path_info,
)

# ---------------------------------------------------------------------------------------------
# Error wrapping (the only place that knows huggingface_hub's exception types)


@contextlib.contextmanager
def hub_errors(what: str, *, repo_id: str, repo_type: str = "model") -> Iterator[None]:
    """Turn huggingface_hub / HTTP failures during ``what`` into FetchError."""
    from huggingface_hub.errors import (
        FileMetadataError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    kind = "" if repo_type == "model" else f"{repo_type} "
    try:
        yield
    except PipewardenError:
        raise
    except GatedRepoError:
        raise FetchError(
            f"{kind}repo {repo_id} is gated: {what} was refused",
            rule="hub.gated",
            fix="accept the terms on the hub and pass token= (or log in with `hf auth login`)",
        ) from None
    except RepositoryNotFoundError:
        raise FetchError(
            f"{kind}repo {repo_id} was not found (or is private): {what} failed",
            rule="hub.repo-not-found",
            fix="check the repo id, or pass token= for a private repo",
        ) from None
    except RevisionNotFoundError:
        raise FetchError(
            f"{kind}repo {repo_id} has no such revision: {what} failed",
            rule="hub.revision-not-found",
            fix="check revision= / custom_revision=",
        ) from None
    except RemoteEntryNotFoundError:
        raise FetchError(
            f"{what}: the file is not in {kind}repo {repo_id} at that commit",
            rule="hub.file-not-found",
            fix="check the file name and the revision",
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise FetchError(
            f"{what}: {kind}repo {repo_id} is not reachable and not in the local cache ({_short(exc)})",
            rule="hub.unreachable",
            fix="check the network, or download it once online; HF_HUB_OFFLINE=1 uses the cache alone",
        ) from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise FetchError(
            f"{what}: the hub answered HTTP {status} for {kind}repo {repo_id}",
            rule="hub.http-error",
            fix="retry later; HF_HUB_OFFLINE=1 loads from the local cache",
        ) from None
    except FileMetadataError as exc:
        raise FetchError(
            f"{what}: the endpoint did not answer like a Hugging Face Hub ({_short(exc)})",
            rule="hub.metadata-missing",
            fix="check HF_ENDPOINT and proxies",
        ) from None
    except OSError as exc:
        if "consistency check failed" in str(exc).lower():  # huggingface_hub's size check: truncated body
            raise FetchError(
                f"{what} from {kind}repo {repo_id} was incomplete: {_short(exc)}",
                rule="hub.truncated",
                fix="retry; nothing partial was kept",
            ) from None
        raise FetchError(
            f"{what} from {kind}repo {repo_id} failed: {type(exc).__name__}: {_short(exc)}",
            rule="hub.cache-unwritable",
            fix="check the network, the cache directory's permissions and free space",
        ) from None
    except Exception as exc:
        import httpx2

        if isinstance(exc, httpx2.HTTPError):
            raise FetchError(
                f"{what} from {kind}repo {repo_id} failed: {type(exc).__name__}: {_short(exc)}",
                rule="hub.http-error",
                fix="check the network and retry; HF_HUB_OFFLINE=1 loads from the local cache",
            ) from None
        raise


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Hub calls


def repo_listing(
    repo_id: str, repo_type: str, revision: str | None, *, token: Any, settings: HubSettings
) -> RepoListing:
    """Resolve ``revision`` to one commit and list every file there, in ONE hub answer."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=settings.endpoint)
    info: Any
    with hub_errors(f"resolving {revision or 'the default branch'}", repo_id=repo_id, repo_type=repo_type):
        if repo_type == "dataset":
            info = api.dataset_info(
                repo_id, revision=revision, files_metadata=True, token=token, timeout=API_TIMEOUT_S
            )
        else:
            info = api.model_info(
                repo_id, revision=revision, files_metadata=True, token=token, timeout=API_TIMEOUT_S
            )
    return parse_listing(repo_id, repo_type, info, requested=revision)


def resolve_commit(
    repo_id: str, repo_type: str, revision: str | None, *, token: Any, settings: HubSettings
) -> str:
    """Resolve ``revision`` to a commit without listing files (for huge repos, e.g. the community mirror)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=settings.endpoint)
    info: Any
    with hub_errors(f"resolving {revision or 'the default branch'}", repo_id=repo_id, repo_type=repo_type):
        if repo_type == "dataset":
            info = api.dataset_info(
                repo_id, revision=revision, expand=["sha"], token=token, timeout=API_TIMEOUT_S
            )
        else:
            info = api.model_info(
                repo_id, revision=revision, expand=["sha"], token=token, timeout=API_TIMEOUT_S
            )
    return parse_listing(repo_id, repo_type, _NoSiblings(info), requested=revision).commit


class _NoSiblings:
    def __init__(self, info: Any) -> None:
        self.sha = getattr(info, "sha", None)
        self.siblings = ()


def paths_info(
    repo_id: str, repo_type: str, commit: str, paths: Iterable[str], *, token: Any, settings: HubSettings
) -> dict[str, RemoteFile]:
    """Metadata of a few files at ``commit`` (missing files are absent from the result)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=settings.endpoint)
    with hub_errors("listing files", repo_id=repo_id, repo_type=repo_type):
        entries = api.get_paths_info(repo_id, list(paths), repo_type=repo_type, revision=commit, token=token)
    out: dict[str, RemoteFile] = {}
    for e in entries:
        if isinstance(e, RepoFile):
            rf = parse_path_info(e)
            out[rf.relpath] = rf
    return out


def download(
    listing_repo: tuple[str, str], rf: RemoteFile, commit: str, *, token: Any, settings: HubSettings
) -> Path:
    """Fetch one file at ``commit`` into the HF cache (or find it there); return its snapshot path.

    huggingface_hub writes to a process-unique temporary file and renames it into ``blobs/`` only
    when the size matches; we verify the content right after (see ``verify_entry``).
    """
    from huggingface_hub import hf_hub_download

    repo_id, repo_type = listing_repo
    kwargs: dict[str, Any] = {}
    if settings.quiet:
        kwargs["tqdm_class"] = _quiet_tqdm_class()
    with hub_errors(f"downloading {rf.relpath}", repo_id=repo_id, repo_type=repo_type):
        got = hf_hub_download(
            repo_id,
            rf.relpath,
            repo_type=repo_type,
            revision=commit,
            cache_dir=settings.cache_dir,
            endpoint=settings.endpoint,
            token=token,
            **kwargs,
        )
    storage = settings.storage_folder(repo_id, repo_type)
    expected = snapshot_dir(storage, commit) / rf.relpath
    if Path(os.path.abspath(got)) != Path(os.path.abspath(expected)):
        # The hub's X-Repo-Commit for this file named another commit than the one we resolved.
        evict(storage, Path(got))
        raise IntegrityError(
            f"{repo_id}: {rf.relpath} was served from another commit than {commit} ({got})",
            rule="hub.commit-changed",
            fix="retry; if it persists do not load from this endpoint",
        )
    return expected


_QUIET_TQDM: type | None = None


def _quiet_tqdm_class() -> type:
    global _QUIET_TQDM
    if _QUIET_TQDM is None:
        from huggingface_hub.utils import tqdm as hf_tqdm

        class QuietTqdm(hf_tqdm):  # type: ignore[misc,valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

        _QUIET_TQDM = QuietTqdm
    return _QUIET_TQDM


# ---------------------------------------------------------------------------------------------
# Cache layout


def snapshot_dir(storage: Path, commit: str) -> Path:
    return storage / "snapshots" / commit


def write_ref(storage: Path, revision: str | None, commit: str) -> None:
    """Record ``revision -> commit`` in ``refs/`` atomically (what offline mode resolves from).

    Read and written through ``fsaccess`` (red team 9H F16): a ``refs`` folder or ref that is a
    link, a FIFO or a huge file is never followed, blocked on or read whole.
    """
    from pipewarden import fsaccess

    rev = "main" if revision is None else revision
    if is_commit_hex(rev):
        return
    rel = f"refs/{check_revision(rev)}"
    try:
        if fsaccess.read_in(storage, rel, links=False, max_bytes=MAX_REF_BYTES).decode("ascii").strip() == commit:
            return
    except (PipewardenError, UnicodeDecodeError):
        pass
    try:
        fsaccess.write_in(storage, rel, commit.encode("ascii"))
    except PipewardenError:
        pass  # a read-only cache still loads; offline mode then needs a commit pin


def cached_commit(storage: Path, revision: str | None, *, repo_id: str) -> str:
    """Offline: the commit ``revision`` pointed to when it was last resolved online.

    The ref is read through ``fsaccess`` (no link, never blocking on a FIFO, bounded).
    """
    from pipewarden import fsaccess

    rev = "main" if revision is None else check_revision(revision)
    if is_commit_hex(rev):
        commit = rev.lower()
    else:
        ref = storage / "refs" / rev
        try:
            raw = fsaccess.read_in(storage, f"refs/{rev}", links=False, max_bytes=MAX_REF_BYTES)
        except PipewardenError as exc:
            if "is missing from" not in exc.what and "cannot open directory" not in exc.what:
                raise IntegrityError(
                    f"cache ref {ref} cannot be read ({exc.what})",
                    rule="hub.bad-commit",
                    fix=f"remove {ref} and load once online, or pass the 40-hex commit as revision",
                ) from None
            raise FetchError(
                f"offline and {repo_id}@{rev} was never resolved in the cache ({ref})",
                rule="hub.offline-not-cached",
                fix="load it once online, or pass the 40-hex commit as revision",
            ) from None
        try:
            commit = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            commit = ""
        if not is_commit_hex(commit):
            raise IntegrityError(
                f"cache ref {ref} does not hold a commit id", rule="hub.bad-commit"
            )
    if not snapshot_dir(storage, commit).is_dir():
        raise FetchError(
            f"offline and {repo_id}@{commit} is not in the cache",
            rule="hub.offline-not-cached",
            fix="load it once online",
        )
    return commit


def list_snapshot(storage: Path, commit: str, *, patterns: tuple[str, ...] | None) -> list[str]:
    """Relpaths present in a cached snapshot (optionally filtered by fnmatch patterns).

    Listed with ``fsaccess.walk`` (red team 9H F15: bounded depth and count, never a traceback);
    links are listed by name, unresolved: ``verify_entry`` checks (and evicts) each one.
    """
    from pipewarden import fsaccess

    root = snapshot_dir(storage, commit)
    entries = fsaccess.walk(root, list_links=True, ignored_dirs=frozenset(), what="cache snapshot")
    return [
        check_relpath(rel)
        for rel in entries
        if patterns is None or any(fnmatch.fnmatch(rel, p) for p in patterns)
    ]


# ---------------------------------------------------------------------------------------------
# Verification


@dataclass(frozen=True)
class VerifiedFile:
    record: FileRecord
    data: bytes | None  # the exact bytes hashed, when asked for


def verify_entry(
    storage: Path,
    commit: str,
    relpath: str,
    *,
    expected: RemoteFile | None,
    keep_bytes: bool = False,
    max_bytes: int = MAX_KEPT_BYTES,
    quiet: bool = True,
    repo_id: str = "",
) -> VerifiedFile:
    """Hash a cached snapshot entry and check it; evict it and raise IntegrityError on mismatch.

    With ``expected`` (online): the content must match the hub's sha256 (LFS) or git blob id,
    and the blob the entry points to must be named after that digest. Without (offline): the
    blob must be named after a digest, and the content must hash to that name.
    """
    pointer = snapshot_dir(storage, commit) / relpath
    label = f"{repo_id}@{commit[:12]}:{relpath}" if repo_id else relpath

    def refuse(what: str, rule: str) -> IntegrityError:
        evict(storage, pointer)
        return IntegrityError(
            f"{label}: {what}",
            rule=rule,
            fix="the cache entry was removed; load again to re-download it, and check the network/mirror if it recurs",
        )

    blob_name = _blob_name(storage, pointer)
    if blob_name is None and expected is None:
        raise refuse(
            "the cache entry is not a link to a content-addressed blob, so it cannot be verified offline",
            "hub.cache-link",
        )
    if expected is not None and blob_name is not None and blob_name != expected.etag:
        raise refuse(
            f"the cache blob is {blob_name} but the hub publishes {expected.etag}",
            "hub.digest-mismatch",
        )
    if expected is not None and expected.size > max_bytes and keep_bytes:
        raise IntegrityError(
            f"{label} is {expected.size} bytes, more than {max_bytes}", rule="file.too-large"
        )

    from pipewarden import fsaccess

    try:
        # Links are followed only inside the cache folder (snapshot -> blobs/ -> shared store).
        fh_in = fsaccess.open_in(storage.parent, relpath, root=snapshot_dir(storage, commit))
    except PipewardenError as exc:
        raise refuse(f"the cached file cannot be read ({exc.what})", "file.unreadable") from None
    with fh_in as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise refuse("the cached entry is not a regular file", "file.unreadable")
        size = st.st_size
        if keep_bytes and size > max_bytes:
            raise refuse(
                f"the cached file is {size} bytes, more than {max_bytes}", "file.too-large"
            )
        sha = hashlib.sha256()
        git = hashlib.sha1(usedforsecurity=False)
        git.update(b"blob %d\0" % size)
        kept = bytearray() if keep_bytes else None
        bar = _hash_bar(label, size, quiet)
        read = 0
        try:
            while True:
                chunk = fh.read(CHUNK)
                if not chunk:
                    break
                read += len(chunk)
                sha.update(chunk)
                git.update(chunk)
                if kept is not None:
                    kept += chunk
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if read != size:
        raise refuse(
            f"the cached file changed while it was read ({read} != {size} bytes)", "weights.changed-while-read"
        )
    sha256, git_sha1 = sha.hexdigest(), git.hexdigest()

    if expected is not None:
        if size != expected.size:
            raise refuse(f"size {size} != {expected.size} published by the hub", "hub.digest-mismatch")
        if expected.lfs_sha256 is not None and sha256 != expected.lfs_sha256:
            raise refuse(
                f"sha256 {sha256} != {expected.lfs_sha256} published by the hub",
                "hub.digest-mismatch",
            )
        if expected.lfs_sha256 is None and git_sha1 != expected.git_oid:
            raise refuse(
                f"git blob id {git_sha1} != {expected.git_oid} published by the hub",
                "hub.digest-mismatch",
            )
    else:
        assert blob_name is not None
        if is_sha256_hex(blob_name):
            ok = sha256 == blob_name
        elif is_commit_hex(blob_name):
            ok = git_sha1 == blob_name
        else:
            ok = False
        if not ok:
            raise refuse(
                f"the content does not hash to its blob name {blob_name}",
                "hub.digest-mismatch",
            )
    record = FileRecord(relpath=relpath, sha256=sha256, size=size)
    return VerifiedFile(record=record, data=bytes(kept) if kept is not None else None)


def _blob_entry(pointer: Path) -> Path | None:
    """The repo blob entry (``<storage>/blobs/<name>``) a snapshot link points to: its first hop only.

    None when the snapshot entry is not a symlink (platforms without symlinks store copies).
    """
    try:
        if not stat.S_ISLNK(os.lstat(pointer).st_mode):
            return None
        target = os.readlink(pointer)
    except OSError:
        return None
    return Path(os.path.normpath(os.path.join(os.path.dirname(pointer), target)))


def _is_shared_store_file(path: Path, storage: Path) -> bool:
    """huggingface_hub's cache-wide store of Xet files: ``<cache>/blobs/<2 hex>/<64 hex>``."""
    store = Path(os.path.realpath(storage.parent / "blobs"))
    return (
        path.parent.parent == store
        and _SHARED_NAME.fullmatch(path.name) is not None
        and path.parent.name == path.name[:2]
    )


def _blob_name(storage: Path, pointer: Path) -> str | None:
    """Name of the blob a snapshot link points to; None when the entry is a plain file.

    The link must point into this repo's ``blobs/``; that entry is a regular file, or a link into
    huggingface_hub's shared Xet store. Anything else is refused (and the snapshot entry removed).
    """
    entry = _blob_entry(pointer)
    if entry is None:
        return None
    blobs = Path(os.path.realpath(storage / "blobs"))
    final = Path(os.path.realpath(entry))
    in_blobs = Path(os.path.realpath(entry.parent)) == blobs
    if not in_blobs or not (final == blobs / entry.name or _is_shared_store_file(final, storage)):
        evict(storage, pointer)
        raise IntegrityError(
            f"cache entry {pointer} points outside the repo's blobs/ folder ({final})",
            rule="hub.cache-link",
            fix="the entry was removed; load again to re-download it",
        )
    return entry.name


def evict(storage: Path, pointer: Path) -> None:
    """Remove a snapshot entry, the repo blob it links to and, for Xet files, the shared store file.

    Only paths inside this cache are ever removed, by name from a directory descriptor opened
    without following links (``fsaccess.remove_in``): a link that leads elsewhere loses the link,
    never its target, and a snapshot folder swapped for a link to elsewhere loses nothing.
    """
    from pipewarden import fsaccess

    cache = storage.parent
    try:
        rel_pointer = Path(os.path.abspath(pointer)).relative_to(os.path.abspath(storage)).as_posix()
    except ValueError:
        return
    entry = _blob_entry(pointer)
    if entry is not None:
        try:
            rel_entry = Path(entry).relative_to(os.path.abspath(storage)).as_posix()
        except ValueError:
            rel_entry = ""
        parts = rel_entry.split("/")
        if len(parts) == 2 and parts[0] == "blobs" and parts[1] not in ("", ".", ".."):
            try:
                final = fsaccess.resolve_in(cache, f"{storage.name}/{rel_entry}")
            except PipewardenError:
                final = ""
            if _is_shared_store_file(cache / final, storage) and final.startswith("blobs/"):
                fsaccess.remove_in(cache, final)
            fsaccess.remove_in(storage, rel_entry)
    fsaccess.remove_in(storage, rel_pointer)


def _hash_bar(label: str, size: int, quiet: bool) -> Any:
    if quiet or size < HASH_PROGRESS_MIN_BYTES:
        return None
    from pipewarden._progress import byte_bar

    # huggingface_hub's units (decimal), on a terminal only: the same file shows the same size
    # in the download bar and in this one.
    return byte_bar(size, f"verifying {label}", leave=False)
