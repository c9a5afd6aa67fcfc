"""Hub sources: a weights repo, a code repo (``pipeline.py``) or a community pipeline name.

What this module decides:

1. The revision is resolved to one 40-hex commit, once, by a single hub answer that also lists
   every file with its size and digest (``model_info``/``dataset_info`` with files metadata).
2. Every file is then fetched at that commit (never at the branch name again), through
   huggingface_hub into the standard HF cache, so a branch moved mid-load cannot mix commits.
3. Every file used — downloaded now or found in the cache — is re-hashed: LFS files against the
   hub's sha256, small files against their git blob SHA-1, and the cache blob must be named
   after that digest. A mismatch evicts the blob and its snapshot link, then raises
   ``IntegrityError``; nothing a later load would trust is left behind.
4. Weights: only ``*.safetensors`` and ``*.json`` are fetched.
5. ``HF_HUB_OFFLINE=1``: the commit comes from the cache's ``refs/`` (or is the 40-hex revision
   given), files from its snapshot, each verified against the digest its blob is named after.

What it trusts: nothing it executes — it executes nothing. Whether the code may run (opt-in,
``pipeline_sha256``, lock file, signatures) is decided by the caller with the digests recorded
here; the resolved commit is on the result so a refusal can print what to pin.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pipewarden.errors import FetchError, InputError, NotAllowedError
from pipewarden.loader import _hf
from pipewarden.loader.code import MODULE_FILE, CodeSource
from pipewarden.loader.digests import is_commit_hex
from pipewarden.loader.snapshot import FileRecord, Snapshot
from pipewarden.loader.spec import is_community_name, is_hub_repo_id  # the one spec parse (re-exported)

__all__ = [
    "COMMUNITY_MIRROR_ID",
    "WEIGHT_PATTERNS",
    "community_revision",
    "is_community_name",
    "is_hub_repo_id",
    "resolve_code",
    "resolve_weights",
]

#: diffusers' mirror of its community pipelines (a dataset repo; file ``<version>/<name>.py``).
COMMUNITY_MIRROR_ID = "diffusers/community-pipelines-mirror"
#: The only files fetched from a weights repo (tokenizer data files besides the JSON ones included).
WEIGHT_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.json", "*/merges.txt", "*/spiece.model")
#: Largest pipeline module and signature file read into memory.
MAX_SOURCE_BYTES = 4 * 1024 * 1024
MAX_SIGNATURE_BYTES = 1024 * 1024
MAX_MODEL_SIGNATURE_BYTES = 4 * 1024 * 1024
MAX_MODEL_SIGNATURE_FILES = 16
#: Bounds on what a code repo may make us download (its non-LFS files; LFS files are never fetched).
MAX_CODE_FILES = 10_000
MAX_CODE_DOWNLOAD_BYTES = 256 * 1024 * 1024
#: Directories never part of a code manifest (same rule as pipewarden.loader.local).
_IGNORED_DIRS = frozenset({"__pycache__", ".git"})
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


# ---------------------------------------------------------------------------------------------
# Names


def community_revision(revision: str | None) -> tuple[str, str | None]:
    """Map ``custom_revision`` for a community name to (mirror folder, mirror git revision).

    Same convention as diffusers 0.42.1 (``get_cached_module_file``): ``None`` -> the installed
    diffusers release (``"v0.42.1"``) or ``"main"`` for dev/pre-releases; ``"0.42.1"`` or
    ``"v0.42.1"`` -> that folder; ``"main"`` -> ``"main"``. Additionally a 40-hex commit pins the
    mirror dataset itself (folder: the installed diffusers version, as for ``None``).
    """
    if revision is None or is_commit_hex(revision):
        folder = _installed_diffusers_folder()
        return folder, (revision.lower() if revision is not None else None)
    if not isinstance(revision, str):
        raise TypeError(f"custom_revision must be a str, got {type(revision).__name__}")
    _hf.check_revision(revision)  # '..', control characters: InputError
    if revision == "main":
        return "main", None
    m = _VERSION.fullmatch(revision)
    if m:
        return "v" + ".".join(m.groups()), None
    raise ValueError(
        f"custom_revision {revision!r} is not valid for a community pipeline: use a diffusers version "
        "('0.42.1' or 'v0.42.1'), 'main', or a 40-hex commit of the community mirror"
    )


def _installed_diffusers_folder() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import InvalidVersion, Version

    try:
        v = Version(version("diffusers"))
    except (PackageNotFoundError, InvalidVersion):
        return "main"
    if v.is_prerelease or v.is_devrelease or v.local:
        return "main"
    return f"v{v.major}.{v.minor}.{v.micro}"


def _signature_file_name() -> str:
    try:
        from pipewarden.registry.signatures import SIGNATURE_FILE

        return SIGNATURE_FILE
    except ImportError:  # pragma: no cover - registry always ships with the package
        return "pipewarden.sig"


def _is_model_signature_file(relpath: str) -> bool:
    from pipewarden.registry.modelsign import is_model_signature_file

    return is_model_signature_file(relpath)


def _in_code_manifest(relpath: str) -> bool:
    return not any(part in _IGNORED_DIRS for part in relpath.split("/")[:-1])


# ---------------------------------------------------------------------------------------------
# Weights


def resolve_weights(
    repo_id: str,
    *,
    revision: str | None = None,
    token: Any = None,
    select: Callable[[list[str], bytes], list[str]] | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
) -> Snapshot:
    """Fetch (or find in the HF cache) and verify the files of a weights repo that the load reads.

    ``select(listing, model_index_bytes)`` (``loader.components.hub_selector``) picks them like
    diffusers: model_index.json first, then only the folders of the components the pipeline
    takes, their configs, tokenizer data files and the weight files of the chosen variant (no
    root checkpoints, no unused folders). Without ``select``: every safetensors/json file.
    Returns a Snapshot whose ``root`` is the HF cache snapshot directory of the resolved
    ``commit`` and whose ``files`` hold the sha256 of the bytes read (``source`` is the repo id).
    """
    if not is_hub_repo_id(repo_id):
        raise ValueError(f"not a hub repo id: {repo_id!r} (expected 'org/name')")
    if revision is not None:
        _hf.check_revision(revision)
    settings = _hf.HubSettings.current(cache_dir=cache_dir, local_files_only=local_files_only)
    storage = settings.storage_folder(repo_id, "model")

    expected: Mapping[str, _hf.RemoteFile | None]
    if settings.offline:
        commit = _hf.cached_commit(storage, revision, repo_id=repo_id)
        cached = _hf.list_snapshot(storage, commit, patterns=None)
        expected = {rel: None for rel in cached if _is_weight_file(rel) or select is not None}
    else:
        listing = _hf.repo_listing(repo_id, "model", revision, token=token, settings=settings)
        commit = listing.commit
        if listing.repo_id != repo_id:  # the hub's spelling decides trust (case-insensitive ids)
            repo_id = listing.repo_id
            storage = settings.storage_folder(repo_id, "model")
        expected = {rel: rf for rel, rf in listing.files.items() if _is_weight_file(rel) or select is not None}
        if not any(rel.endswith(".safetensors") for rel in expected):
            _refuse_no_safetensors(repo_id, commit, listing)
    if select is not None and "model_index.json" in expected:
        rf_index = expected["model_index.json"]
        if rf_index is not None:
            _hf.download((repo_id, "model"), rf_index, commit, token=token, settings=settings)
        vf = _hf.verify_entry(
            storage, commit, "model_index.json", expected=rf_index, keep_bytes=True, max_bytes=_hf.MAX_KEPT_BYTES,
            quiet=settings.quiet, repo_id=repo_id,
        )
        assert vf.data is not None
        chosen = set(select(sorted(expected), vf.data))
        expected = {rel: rf for rel, rf in expected.items() if rel in chosen}

    records: dict[str, FileRecord] = {}
    for rel in sorted(expected):
        rf = expected[rel]
        if rf is not None:
            _hf.download((repo_id, "model"), rf, commit, token=token, settings=settings)
        vf = _hf.verify_entry(storage, commit, rel, expected=rf, quiet=settings.quiet, repo_id=repo_id)
        records[rel] = vf.record
    if not records:
        raise FetchError(
            f"{repo_id}@{commit} has no safetensors or json files in the cache",
            rule="hub.offline-not-cached",
            fix="load it once online",
        )
    if not settings.offline:
        _hf.write_ref(storage, revision, commit)
    return Snapshot(
        root=_hf.snapshot_dir(storage, commit), source=repo_id, commit=commit, files=records, boundary=storage.parent
    )


def _is_weight_file(relpath: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatch(relpath, p) for p in WEIGHT_PATTERNS)


def _refuse_no_safetensors(repo_id: str, commit: str, listing: _hf.RepoListing) -> None:
    pickles = sorted(rel for rel in listing.files if rel.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise NotAllowedError(
            f"{repo_id}@{commit} has weights only in pickle formats ({', '.join(pickles[:5])})",
            rule="weights.pickle-refused",
            fix="use a revision with .safetensors weights (many repos have a 'refs/pr/N' conversion)",
        )
    raise InputError(
        f"{repo_id}@{commit} has no .safetensors files",
        rule="weights.file-missing",
        fix="check the repo id and revision",
    )


# ---------------------------------------------------------------------------------------------
# Code


def resolve_code(
    spec: str,
    *,
    kind: Literal["hub", "community"],
    revision: str | None = None,
    token: Any = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
) -> CodeSource:
    """Fetch and verify pipeline code: ``pipeline.py`` of hub repo ``spec``, or community pipeline ``spec``.

    Executes nothing and decides nothing about trust: the caller checks the opt-in and the pins
    against ``CodeSource.sha256`` / ``files`` / ``signature_bytes`` before anything runs.
    """
    settings = _hf.HubSettings.current(cache_dir=cache_dir, local_files_only=local_files_only)
    if kind == "hub":
        if not is_hub_repo_id(spec):
            raise ValueError(f"not a hub repo id: {spec!r} (expected 'org/name')")
        if revision is not None:
            _hf.check_revision(revision)
        return _resolve_hub_code(spec, revision, token, settings)
    if kind == "community":
        if not is_community_name(spec):
            raise ValueError(f"not a community pipeline name: {spec!r} (letters, digits, '_' and '-' only)")
        return _resolve_community_code(spec, revision, token, settings)
    raise ValueError(f"kind must be 'hub' or 'community', got {kind!r}")


def _resolve_hub_code(repo_id: str, revision: str | None, token: Any, settings: _hf.HubSettings) -> CodeSource:
    storage = settings.storage_folder(repo_id, "model")
    sig_name = _signature_file_name()
    kept_limits = {MODULE_FILE: MAX_SOURCE_BYTES, sig_name: MAX_SIGNATURE_BYTES}

    def kept_limit(rel: str) -> int | None:  # files read into memory: module and signatures
        if rel in kept_limits:
            return kept_limits[rel]
        return MAX_MODEL_SIGNATURE_BYTES if _is_model_signature_file(rel) else None

    expected: dict[str, _hf.RemoteFile | None]
    lfs_only: dict[str, str] = {}
    if settings.offline:
        commit = _hf.cached_commit(storage, revision, repo_id=repo_id)
        expected = {
            rel: None for rel in _hf.list_snapshot(storage, commit, patterns=None) if _in_code_manifest(rel)
        }
    else:
        listing = _hf.repo_listing(repo_id, "model", revision, token=token, settings=settings)
        commit = listing.commit
        if listing.repo_id != repo_id:  # the hub's spelling decides trust (case-insensitive ids)
            repo_id = listing.repo_id
            storage = settings.storage_folder(repo_id, "model")
        expected = {}
        for rel, rf in listing.files.items():
            if not _in_code_manifest(rel):
                continue
            limit = kept_limit(rel)
            if limit is not None and rf.size > limit:
                raise InputError(
                    f"{repo_id}@{commit}: {rel} is {rf.size} bytes, more than {limit}",
                    rule="file.too-large",
                )
            if rf.is_lfs and limit is None:
                # Never executed: take its sha256 from the hub instead of downloading large blobs.
                assert rf.lfs_sha256 is not None
                lfs_only[rel] = rf.lfs_sha256
            else:
                expected[rel] = rf
        fetched = sum(rf.size for rf in expected.values() if rf is not None)
        if len(expected) + len(lfs_only) > MAX_CODE_FILES or fetched > MAX_CODE_DOWNLOAD_BYTES:
            raise InputError(
                f"{repo_id}@{commit} holds {len(expected) + len(lfs_only)} files, {fetched} bytes outside LFS",
                rule="code.repo-too-large",
                fix="keep the pipeline in a small repo of its own",
            )
    if sum(1 for rel in expected if _is_model_signature_file(rel)) > MAX_MODEL_SIGNATURE_FILES:
        raise InputError(
            f"{repo_id}@{commit} holds more than {MAX_MODEL_SIGNATURE_FILES} model-signing signature files",
            rule="file.too-large",
            fix="keep one model.sig / NAME.model.sig per signer",
        )
    if MODULE_FILE not in expected:
        raise InputError(
            f"{repo_id}@{commit} has no {MODULE_FILE}" + (" in the cache" if settings.offline else ""),
            rule="code.module-missing",
            fix="check custom_pipeline and custom_revision"
            + ("; load it once online" if settings.offline else ""),
        )

    files: dict[str, str] = dict(lfs_only)
    source_bytes: bytes | None = None
    signature_bytes: bytes | None = None
    model_signatures: dict[str, bytes] = {}
    for rel in sorted(expected):
        entry = expected[rel]
        if entry is not None:
            _hf.download((repo_id, "model"), entry, commit, token=token, settings=settings)
        limit = kept_limit(rel)
        vf = _hf.verify_entry(
            storage,
            commit,
            rel,
            expected=entry,
            keep_bytes=limit is not None,
            max_bytes=limit if limit is not None else _hf.MAX_KEPT_BYTES,
            quiet=settings.quiet,
            repo_id=repo_id,
        )
        if rel == sig_name:
            signature_bytes = vf.data
            continue
        if _is_model_signature_file(rel):
            assert vf.data is not None
            model_signatures[rel] = vf.data
            continue
        if rel == MODULE_FILE:
            source_bytes = vf.data
        files[rel] = vf.record.sha256
    assert source_bytes is not None
    if not settings.offline:
        _hf.write_ref(storage, revision, commit)
    return CodeSource(
        kind="hub",
        source_id=repo_id,
        commit=commit,
        module_relpath=MODULE_FILE,
        source_bytes=source_bytes,
        sha256=files[MODULE_FILE],
        files=files,
        signature_bytes=signature_bytes,
        root=_hf.snapshot_dir(storage, commit),
        model_signatures=model_signatures,
    )


def _resolve_community_code(name: str, revision: str | None, token: Any, settings: _hf.HubSettings) -> CodeSource:
    folder, mirror_revision = community_revision(revision)
    relpath = f"{folder}/{name}.py"
    storage = settings.storage_folder(COMMUNITY_MIRROR_ID, "dataset")

    rf: _hf.RemoteFile | None = None
    if settings.offline:
        commit = _hf.cached_commit(storage, mirror_revision, repo_id=COMMUNITY_MIRROR_ID)
        if not (_hf.snapshot_dir(storage, commit) / relpath).exists():
            raise FetchError(
                f"offline and community pipeline {name!r} ({relpath}) is not in the cache at {commit}",
                rule="hub.offline-not-cached",
                fix="load it once online",
            )
    else:
        # The mirror holds every pipeline of every diffusers release: resolve the commit, then ask
        # for this one file's metadata at that commit instead of listing the whole dataset.
        commit = _hf.resolve_commit(
            COMMUNITY_MIRROR_ID, "dataset", mirror_revision, token=token, settings=settings
        )
        found = _hf.paths_info(
            COMMUNITY_MIRROR_ID, "dataset", commit, [relpath], token=token, settings=settings
        )
        rf = found.get(relpath)
        if rf is None:
            raise FetchError(
                f"community pipeline {name!r} is not in {COMMUNITY_MIRROR_ID} at {folder!r} (commit {commit})",
                rule="hub.community-not-found",
                fix="check the name, or pass custom_revision='main' or another diffusers version",
            )
        if rf.size > MAX_SOURCE_BYTES:
            raise InputError(
                f"{relpath} is {rf.size} bytes, more than {MAX_SOURCE_BYTES}",
                rule="file.too-large",
            )
        _hf.download((COMMUNITY_MIRROR_ID, "dataset"), rf, commit, token=token, settings=settings)
    vf = _hf.verify_entry(
        storage,
        commit,
        relpath,
        expected=rf,
        keep_bytes=True,
        max_bytes=MAX_SOURCE_BYTES,
        quiet=settings.quiet,
        repo_id=COMMUNITY_MIRROR_ID,
    )
    assert vf.data is not None
    if not settings.offline:
        _hf.write_ref(storage, mirror_revision, commit)
    return CodeSource(
        kind="community",
        source_id=name,
        commit=commit,
        module_relpath=relpath,
        source_bytes=vf.data,
        sha256=vf.record.sha256,
        files={relpath: vf.record.sha256},
        signature_bytes=None,
        root=_hf.snapshot_dir(storage, commit),
    )
