"""Red team 9H F1: a weights folder *shaped* like an HF cache snapshot widens nothing.

``<dir>/models--x--y/snapshots/<c>/`` next to a ``blobs/`` folder used to make every file under
``<dir>`` reachable through a link (the boundary became the folder containing ``models--x--y``).
Now a snapshot entry may link only to its repo's own ``blobs/<name>``, and that blob only into
the cache-wide shared Xet store (``<cache>/blobs/<xx>/<64 hex>``), exactly huggingface_hub's
layout. Families of doors: link depths (cache root, storage folder), ``..`` spellings, absolute
targets, a sibling repo, another snapshot, the shared store reached the wrong way, symlinked
folders (snapshot subfolder, repo ``blobs/``, shared store), and a storage folder under another
name. Every door goes through each reader (listing, component reader, the worker's Landlock list,
the lock writer, a whole load in both isolation modes for the red team's own door) and the test
checks that the secret was never opened and never reached a config or a lock, not just that
something raised. The real layouts (plain, Xet shared store, absolute links) still load.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipewarden import fsaccess
from pipewarden.errors import InputError
from tests._registry_support import _isolated_state  # noqa: F401  (autouse)

MARK = "AKIA-VICTIM-SECRET-9H"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "f" * 40
SCHED = "scheduler/scheduler_config.json"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _secret_bytes(tiny_weights: Path) -> bytes:
    """A scheduler config the victim keeps outside any weights folder (valid, plus a secret key)."""
    import json

    cfg = json.loads((tiny_weights / SCHED).read_text())
    cfg["aws_secret_access_key"] = MARK
    return json.dumps(cfg).encode()


@dataclass
class Layout:
    home: Path  # the folder the victim dropped the "cache snapshot" into (the cache folder by shape)
    storage: Path
    snap: Path
    secret: Path  # the one file holding the secret (where each door put it)


def _build(tmp_path: Path, tiny_weights: Path, *, storage_name: str = "models--acme--w") -> Layout:
    """huggingface_hub's layout: every file a blob named by its sha256, each entry a relative link."""
    home = tmp_path / "victimhome"
    storage = home / storage_name
    snap = storage / "snapshots" / COMMIT
    (storage / "blobs").mkdir(parents=True)
    for src in sorted(tiny_weights.rglob("*")):
        if not src.is_file():
            continue
        rel = src.relative_to(tiny_weights)
        blob = storage / "blobs" / _sha(src)
        shutil.copyfile(src, blob)
        entry = snap / rel
        entry.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, entry.parent), entry)
    return Layout(home=home, storage=storage, snap=snap, secret=home / "secret_scheduler.json")


def _relink(path: Path, target: str | Path) -> None:
    path.unlink()
    os.symlink(target, path)


def _xet(storage: Path, blob: Path, data: bytes | None = None) -> Path:
    """Move a repo blob into the cache-wide shared store as huggingface_hub does (blob -> ../../blobs/xx/h)."""
    h = hashlib.sha256(b"xet:" + blob.name.encode()).hexdigest()
    store = storage.parent / "blobs" / h[:2] / h
    store.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        os.replace(blob, store)
    else:
        store.write_bytes(data)
        blob.unlink()
    os.symlink(os.path.relpath(store, blob.parent), blob)
    return store


def _plant(lay: Layout, door: str, secret: bytes) -> None:
    """Make ``snapshots/<c>/scheduler/scheduler_config.json`` lead to a file holding ``secret``."""
    entry = lay.snap / SCHED
    sched_blob = lay.storage / "blobs" / os.path.basename(os.readlink(entry))
    home, storage = lay.home, lay.storage

    def put(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(secret)
        lay.secret = path

    if door == "cache-root":  # the red team's door: 4 levels up is the folder holding models--x--y
        put(home / "secret_scheduler.json")
        _relink(entry, "../../../../secret_scheduler.json")
    elif door == "storage-folder":  # 3 levels up: the repo's storage folder, not its blobs/
        put(storage / "secret.json")
        _relink(entry, "../../../secret.json")
    elif door == "sibling-repo":
        put(home / "models--other--repo" / "blobs" / ("a" * 64))
        _relink(entry, f"../../../../models--other--repo/blobs/{'a' * 64}")
    elif door == "other-snapshot":
        put(storage / "snapshots" / OTHER_COMMIT / SCHED)
        _relink(entry, f"../../{OTHER_COMMIT}/{SCHED}")
    elif door == "dotdot-through-blobs":  # names blobs/ but climbs out of it again
        put(home / "secret_scheduler.json")
        _relink(entry, "../../../blobs/../../secret_scheduler.json")
    elif door == "dotdot-into-blobs-name":
        put(home / "secret_scheduler.json")
        _relink(entry, "../../../blobs/../../secret_scheduler.json/..")
    elif door == "absolute-cache-root":
        put(home / "secret_scheduler.json")
        _relink(entry, home / "secret_scheduler.json")
    elif door == "absolute-sibling-blobs":
        put(home / "models--other--repo" / "blobs" / ("b" * 64))
        _relink(entry, home / "models--other--repo" / "blobs" / ("b" * 64))
    elif door == "store-directly":  # the shared store, but not through the repo's own blob
        h = "c" * 64
        put(home / "blobs" / h[:2] / h)
        _relink(entry, f"../../../../blobs/{h[:2]}/{h}")
    elif door == "blob-to-cache-root":  # second hop: the repo blob links out
        put(home / "secret_scheduler.json")
        _relink(sched_blob, "../../secret_scheduler.json")
    elif door == "blob-to-sibling":
        put(home / "models--other--repo" / "blobs" / ("d" * 64))
        _relink(sched_blob, f"../../models--other--repo/blobs/{'d' * 64}")
    elif door == "blob-to-misnamed-store":  # store-like, but the prefix folder is not the hash's
        h = "e" * 64
        put(home / "blobs" / "zz" / h)
        _relink(sched_blob, f"../../blobs/zz/{h}")
    elif door == "blob-above-cache":
        h = "1" * 64
        put(home.parent / "elsewhere" / "blobs" / h[:2] / h)
        _relink(sched_blob, f"../../../elsewhere/blobs/{h[:2]}/{h}")
    elif door == "store-folder-link":  # <cache>/blobs is a link to the victim's folder
        h = "2" * 64
        put(home.parent / "vault" / h[:2] / h)
        os.symlink("../vault", home / "blobs")
        _relink(sched_blob, f"../../blobs/{h[:2]}/{h}")
    elif door == "store-entry-link":  # the store file itself is a link out
        h = "3" * 64
        put(home.parent / "vault" / "secret.json")
        (home / "blobs" / h[:2]).mkdir(parents=True)
        os.symlink(lay.secret, home / "blobs" / h[:2] / h)
        _relink(sched_blob, f"../../blobs/{h[:2]}/{h}")
    elif door == "snapshot-subfolder-link":
        vault = home / "vault_sched"
        put(vault / "scheduler_config.json")
        shutil.rmtree(lay.snap / "scheduler")
        os.symlink("../../../vault_sched", lay.snap / "scheduler")
    elif door == "repo-blobs-link":  # blobs/ of the repo is a link: no cache layout at all
        vault = home / "vault_blobs"
        vault.mkdir()
        for b in (storage / "blobs").iterdir():
            shutil.copyfile(b, vault / b.name)
        put(vault / sched_blob.name)
        shutil.rmtree(storage / "blobs")
        os.symlink("../vault_blobs", storage / "blobs")
    else:  # pragma: no cover
        raise AssertionError(door)


DOORS = [
    "cache-root",
    "storage-folder",
    "sibling-repo",
    "other-snapshot",
    "dotdot-through-blobs",
    "dotdot-into-blobs-name",
    "absolute-cache-root",
    "absolute-sibling-blobs",
    "store-directly",
    "blob-to-cache-root",
    "blob-to-sibling",
    "blob-to-misnamed-store",
    "blob-above-cache",
    "store-folder-link",
    "store-entry-link",
    "snapshot-subfolder-link",
    "repo-blobs-link",
]


@pytest.fixture
def secret(tiny_weights) -> bytes:
    return _secret_bytes(tiny_weights)


def _opened(monkeypatch: pytest.MonkeyPatch, fn: Callable[[], Any]) -> tuple[Any, BaseException | None, list[str]]:
    """Run ``fn`` recording every path ``os.open`` was asked for (by name, or below a descriptor)."""
    seen: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):  # noqa: ANN001
        seen.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    try:
        return fn(), None, seen
    except InputError as exc:
        return None, exc, seen
    finally:
        monkeypatch.setattr(os, "open", real_open)


def _secret_opened(seen: list[str], lay: Layout) -> bool:
    name = lay.secret.name
    return any(os.path.basename(p) == name for p in seen)


def _refused(exc: BaseException | None) -> None:
    assert isinstance(exc, InputError), "the planted link was accepted"
    assert exc.rule in ("file.link-outside", "weights.file-missing"), exc
    assert MARK not in str(exc)


@pytest.mark.parametrize("door", DOORS)
def test_listing_refuses_a_snapshot_link_out_of_its_blobs(tmp_path, tiny_weights, secret, door, monkeypatch):
    from pipewarden.loader.local import resolve_local_weights

    lay = _build(tmp_path, tiny_weights)
    _plant(lay, door, secret)
    snap, exc, seen = _opened(monkeypatch, lambda: resolve_local_weights(lay.snap))
    _refused(exc)
    assert snap is None and not _secret_opened(seen, lay)


@pytest.mark.parametrize("door", DOORS)
def test_reader_refuses_a_snapshot_link_out_even_past_the_listing(tmp_path, tiny_weights, secret, door, monkeypatch):
    """A Snapshot listed before the link was planted (or built in the worker): the reader refuses."""
    from pipewarden.loader.components import load_components
    from pipewarden.loader.local import resolve_local_weights

    lay = _build(tmp_path, tiny_weights)
    listed = resolve_local_weights(lay.snap)
    _plant(lay, door, secret)
    comps, exc, seen = _opened(monkeypatch, lambda: load_components(listed))
    _refused(exc)
    assert comps is None and not _secret_opened(seen, lay)


@pytest.mark.parametrize("door", DOORS)
def test_worker_landlock_list_never_holds_a_file_outside_the_repo_blobs(tmp_path, tiny_weights, secret, door):
    from pipewarden.isolation import _read_paths
    from pipewarden.loader.local import resolve_local_weights

    lay = _build(tmp_path, tiny_weights)
    listed = resolve_local_weights(lay.snap)
    _plant(lay, door, secret)
    paths: tuple[str, ...] = ()
    with pytest.raises(InputError) as exc:
        paths = _read_paths(listed)
    _refused(exc.value)
    assert not any(os.path.realpath(p) == os.path.realpath(lay.secret) for p in paths)


@pytest.mark.parametrize("door", DOORS)
def test_lock_never_pins_a_file_outside_the_repo_blobs(tmp_path, tiny_weights, secret, door, capsys):
    """``pipewarden lock --weights`` used to pin the linked secret's digest without comment."""
    from pipewarden.cli import main

    lay = _build(tmp_path, tiny_weights)
    _plant(lay, door, secret)
    lock = tmp_path / "pipewarden.lock"
    rc = main(["lock", "--weights", str(lay.snap), "--out", str(lock)])
    assert rc == 2
    assert not lock.exists()
    out, err = capsys.readouterr()
    assert MARK not in out + err and hashlib.sha256(secret).hexdigest() not in out + err


@pytest.mark.parametrize("door", ["cache-root", "sibling-repo", "blob-to-cache-root", "absolute-cache-root"])
def test_the_red_team_load_gets_no_secret_inprocess(tmp_path, tiny_weights, example_pipeline, secret, door, monkeypatch):
    lay = _build(tmp_path, tiny_weights)
    _plant(lay, door, secret)
    pipe, exc, seen = _opened(monkeypatch, lambda: _load(lay.snap, example_pipeline, "inprocess"))
    if pipe is not None:
        assert MARK not in str(dict(pipe.scheduler.config)), "the secret reached the pipeline's config"
    _refused(exc)
    assert not _secret_opened(seen, lay)


@pytest.mark.parametrize("door", ["cache-root", "blob-to-sibling"])
def test_the_red_team_load_gets_no_secret_in_process_mode(tmp_path, tiny_weights, example_pipeline, secret, door):
    lay = _build(tmp_path, tiny_weights)
    _plant(lay, door, secret)
    try:
        pipe = _load(lay.snap, example_pipeline, "process")
    except InputError as exc:
        _refused(exc)
    else:  # pragma: no cover - the flaw
        assert MARK not in str(dict(pipe.scheduler.config)), "the secret reached the pipeline's config"
        pytest.fail("the planted link was accepted")


def _load(weights: Path, example_pipeline: Path, isolation: str) -> Any:
    import pipewarden
    from pipewarden.loader.digests import sha256_file

    return pipewarden.load_pipeline(
        weights,
        custom_pipeline=example_pipeline,
        trust_remote_code=True,
        pipeline_sha256=sha256_file(example_pipeline),
        isolation=isolation,
    )


def test_other_storage_names_get_the_same_rule(tmp_path, tiny_weights, secret):
    """``<x>/snapshots/<c>`` (any name) + ``<x>/blobs``: links only into ``<x>/blobs``, nowhere above."""
    from pipewarden.loader.local import resolve_local_weights

    lay = _build(tmp_path, tiny_weights, storage_name="acme")
    assert fsaccess.hf_cache_boundary(lay.snap) == lay.storage
    for target, place in [("../../../secret.json", lay.storage), ("../../../../secret.json", lay.home)]:
        (place / "secret.json").write_bytes(secret)
        _relink(lay.snap / SCHED, target)
        with pytest.raises(InputError) as exc:
            resolve_local_weights(lay.snap)
        _refused(exc.value)


# --------------------------------------------------------------------------- the real layouts still load


def _xet_everything(lay: Layout) -> list[Path]:
    return [_xet(lay.storage, blob) for blob in sorted((lay.storage / "blobs").iterdir())]


@pytest.mark.parametrize("isolation", ["inprocess", "process"])
def test_a_snapshot_with_xet_shared_store_blobs_loads(tmp_path, tiny_weights, example_pipeline, isolation):
    lay = _build(tmp_path, tiny_weights)
    stores = _xet_everything(lay)
    pipe = _load(lay.snap, example_pipeline, isolation)
    assert pipe.scheduler is not None
    assert all(s.is_file() for s in stores)


def test_a_snapshot_with_absolute_links_into_its_blobs_loads(tmp_path, tiny_weights, example_pipeline):
    """huggingface_hub writes absolute links where a relative one cannot be made (other volume)."""
    lay = _build(tmp_path, tiny_weights)
    for entry in sorted(p for p in lay.snap.rglob("*") if p.is_symlink()):
        _relink(entry, os.path.realpath(entry))
    pipe = _load(lay.snap, example_pipeline, "inprocess")
    assert pipe.scheduler is not None


def test_lock_of_a_real_snapshot_pins_the_blob_bytes(tmp_path, tiny_weights):
    from pipewarden.registry.lockfile import entry_for_local_weights

    lay = _build(tmp_path, tiny_weights)
    _xet(lay.storage, lay.storage / "blobs" / os.path.basename(os.readlink(lay.snap / SCHED)))
    entry = entry_for_local_weights(lay.snap)
    assert entry.files[SCHED] == _sha(tiny_weights / SCHED)
    assert set(entry.files) == {p.relative_to(tiny_weights).as_posix() for p in tiny_weights.rglob("*") if p.is_file()}


def test_the_landlock_list_of_a_real_snapshot_is_its_blobs(tmp_path, tiny_weights):
    from pipewarden.isolation import _read_paths
    from pipewarden.loader.local import resolve_local_weights

    lay = _build(tmp_path, tiny_weights)
    store = _xet(lay.storage, lay.storage / "blobs" / os.path.basename(os.readlink(lay.snap / SCHED)))
    paths = _read_paths(resolve_local_weights(lay.snap))
    extra = {Path(p) for p in paths} - {lay.snap, Path(os.path.realpath(lay.snap))}
    blobs = {lay.storage / "blobs" / b.name for b in (lay.storage / "blobs").iterdir() if not b.is_symlink()}
    assert extra == blobs | {store}
