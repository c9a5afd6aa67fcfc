"""Issue 12 flaw 7: the host treats every path as hostile (one file-access layer).

Families of doors: symlinks in weights dirs (file, folder, dangling, loop, absolute, relative),
the worker's Landlock list, HF cache eviction through links, allowlist edits through a link,
audit reports written through a planted link, FIFOs as every kind of input, and the one
directory walker. Each test checks the absence of the side effect (secret not read, file not
deleted, link target unchanged), not just an exception.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipewarden import fsaccess
from pipewarden.errors import InputError, IntegrityError, PipewardenError
from tests._registry_support import _isolated_state  # noqa: F401  (autouse)

SECRET = b'{"aws_secret_access_key": "AKIA-SECRET-DO-NOT-LEAK", "num_train_timesteps": 7}'


def _no_hang(fn: Callable[[], Any], *, fifo: Path | None = None) -> Any:
    """Run ``fn``; if it blocks (a FIFO opened for reading), unblock it and fail the test."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():
        if fifo is not None:  # release the blocked open so the thread can end
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        t.join(5)
        pytest.fail(f"{fn} blocked (hang guard; not a timing assertion)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def weights(tmp_path, tiny_weights) -> Path:
    dst = tmp_path / "weights"
    shutil.copytree(tiny_weights, dst)
    return dst


@pytest.fixture
def secret(tmp_path) -> Path:
    outside = tmp_path / "home" / ".aws"
    outside.mkdir(parents=True)
    path = outside / "credentials.json"
    path.write_bytes(SECRET)
    return path


def _load(weights: Path, example_pipeline: Path, isolation: str = "inprocess") -> Any:
    import pipewarden
    from pipewarden.loader.digests import sha256_file

    return pipewarden.load_pipeline(
        weights,
        custom_pipeline=example_pipeline,
        trust_remote_code=True,
        pipeline_sha256=sha256_file(example_pipeline),
        isolation=isolation,
    )


# --------------------------------------------------------------------------- weights directories


def _plant(weights: Path, secret: Path, door: str) -> None:
    sched = weights / "scheduler" / "scheduler_config.json"
    if door == "file-absolute":
        sched.unlink()
        os.symlink(secret, sched)
    elif door == "file-relative":
        sched.unlink()
        os.symlink(os.path.relpath(secret, sched.parent), sched)
    elif door == "folder":
        shutil.copytree(weights / "scheduler", secret.parent / "sched")
        (secret.parent / "sched" / "scheduler_config.json").write_bytes(SECRET)
        shutil.rmtree(weights / "scheduler")
        os.symlink(secret.parent / "sched", weights / "scheduler")
    elif door == "chain":  # a link inside the root that leads to a link out of it
        os.symlink(secret, weights / "hop")
        sched.unlink()
        os.symlink("../hop", sched)
    elif door == "dotdot":
        sched.unlink()
        os.symlink("../../home/.aws/credentials.json", sched)
    else:  # pragma: no cover
        raise AssertionError(door)


DOORS = ["file-absolute", "file-relative", "folder", "chain", "dotdot"]


@pytest.mark.parametrize("door", DOORS)
def test_weights_link_out_of_the_dir_is_refused_inprocess(weights, secret, example_pipeline, door, monkeypatch):
    _plant(weights, secret, door)
    read: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):  # noqa: ANN001
        read.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    with pytest.raises(InputError) as exc:
        _load(weights, example_pipeline)
    monkeypatch.undo()
    assert "symlink" in str(exc.value) or "outside" in str(exc.value)
    assert not any("credentials" in p for p in read), "the secret was opened"


@pytest.mark.parametrize("door", ["file-absolute", "folder"])
def test_weights_link_out_of_the_dir_is_refused_in_process_mode(weights, secret, example_pipeline, door):
    _plant(weights, secret, door)
    with pytest.raises(InputError):
        _load(weights, example_pipeline, isolation="process")


@pytest.mark.parametrize("door", DOORS)
def test_components_never_read_a_link_out_even_past_the_listing(weights, secret, door):
    """The reader itself refuses (a Snapshot built elsewhere, e.g. in the worker, gets no secret)."""
    from pipewarden.loader.components import load_components
    from pipewarden.loader.snapshot import FileRecord, Snapshot

    listed = {p.relative_to(weights).as_posix() for p in weights.rglob("*") if p.is_file()}
    _plant(weights, secret, door)  # after the listing: as if swapped in between listing and reading
    snap = Snapshot(root=weights, source="local:x", commit=None, files={rel: FileRecord(rel, "", 1) for rel in listed})
    with pytest.raises(InputError, match="symlink|outside|above"):
        load_components(snap)


def test_worker_landlock_list_never_adds_a_link_target_outside(weights, secret):
    from pipewarden.isolation import _read_paths
    from pipewarden.loader.local import resolve_local_weights

    snap = resolve_local_weights(weights)
    (weights / "scheduler" / "scheduler_config.json").unlink()
    os.symlink(secret, weights / "scheduler" / "scheduler_config.json")
    with pytest.raises(InputError):
        _read_paths(snap)


@pytest.mark.parametrize("kind", ["dangling", "loop", "self"])
def test_broken_links_are_clean_errors(weights, example_pipeline, kind):
    sched = weights / "scheduler" / "scheduler_config.json"
    sched.unlink()
    if kind == "dangling":
        os.symlink("does-not-exist.json", sched)
    elif kind == "loop":
        os.symlink("b.json", weights / "scheduler" / "a.json")
        os.symlink("a.json", weights / "scheduler" / "b.json")
        os.symlink("a.json", sched)
    else:
        os.symlink("scheduler_config.json", sched)
    with pytest.raises(InputError):
        _load(weights, example_pipeline)


def test_links_inside_the_weights_dir_still_load(weights, example_pipeline):
    store = weights / "store"
    store.mkdir()
    unet = weights / "unet" / "diffusion_pytorch_model.safetensors"
    shutil.move(unet, store / "unet.safetensors")
    os.symlink("../store/unet.safetensors", unet)
    pipe = _load(weights, example_pipeline)
    assert pipe.unet is not None


@pytest.mark.parametrize("isolation", ["inprocess", "process"])
def test_an_hf_cache_snapshot_dir_loads_as_a_local_path(tmp_path, tiny_weights, example_pipeline, isolation):
    """Passing ``<cache>/models--a--b/snapshots/<commit>`` works: its links stay inside the cache
    (in the worker too, where Landlock lets it read the blobs but not list the cache folders)."""
    storage = tmp_path / "hub" / "models--acme--tiny"
    snap = storage / "snapshots" / ("a" * 40)
    (storage / "blobs").mkdir(parents=True)
    for src in sorted(tiny_weights.rglob("*")):
        if src.is_file():
            rel = src.relative_to(tiny_weights)
            blob = storage / "blobs" / f"blob{len(list((storage / 'blobs').iterdir()))}"
            shutil.copyfile(src, blob)
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, (snap / rel).parent), snap / rel)
    pipe = _load(snap, example_pipeline, isolation=isolation)
    assert pipe.scheduler is not None


@pytest.mark.parametrize("kind", ["fifo", "socket-like-dir"])
def test_special_files_in_weights_never_block(weights, example_pipeline, kind):
    sched = weights / "scheduler" / "scheduler_config.json"
    sched.unlink()
    if kind == "fifo":
        os.mkfifo(sched)
    else:
        sched.mkdir()
    with pytest.raises(InputError):
        _no_hang(lambda: _load(weights, example_pipeline), fifo=sched if kind == "fifo" else None)


# --------------------------------------------------------------------------- HF cache eviction


def _cache_with_bad_entry(tmp_path: Path, door: str) -> tuple[Path, str, Path]:
    """A cache storage whose snapshot entry leads out of the cache; returns (storage, relpath, victim)."""
    cache = tmp_path / "hub"
    storage = cache / "models--acme--tiny"
    commit = "c" * 40
    snap = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    outside = tmp_path / "precious"
    outside.mkdir()
    victim = outside / "config.json"
    victim.write_bytes(b"user data")
    if door == "folder-link":
        os.symlink(outside, snap / "unet")
        rel = "unet/config.json"
    elif door == "snapshot-link":
        shutil.rmtree(snap)
        os.symlink(outside, snap)
        rel = "config.json"
    elif door == "blobs-link":
        shutil.rmtree(storage / "blobs")
        os.symlink(outside, storage / "blobs")
        os.symlink("../../blobs/config.json", snap / "config.json")
        rel = "config.json"
    elif door == "absolute-link":
        os.symlink(victim, snap / "config.json")
        rel = "config.json"
    else:  # pragma: no cover
        raise AssertionError(door)
    return storage, rel, victim


@pytest.mark.parametrize("door", ["folder-link", "snapshot-link", "blobs-link", "absolute-link"])
@pytest.mark.parametrize("online", [True, False])
def test_cache_eviction_never_deletes_outside_the_cache(tmp_path, door, online):
    from pipewarden.loader import _hf

    storage, rel, victim = _cache_with_bad_entry(tmp_path, door)
    expected = None
    if online:
        expected = _hf.RemoteFile(relpath=rel, size=3, git_oid="0" * 40, lfs_sha256="0" * 64)
    commit = "c" * 40
    try:
        _hf.verify_entry(storage, commit, rel, expected=expected)
    except (IntegrityError, InputError):
        pass
    assert victim.read_bytes() == b"user data", "a file outside the cache was deleted or changed"
    _hf.evict(storage, _hf.snapshot_dir(storage, commit) / rel)
    assert victim.read_bytes() == b"user data"
    assert victim.parent.is_dir()


def test_eviction_still_removes_a_tampered_entry_inside_the_cache(tmp_path):
    from pipewarden.loader import _hf

    storage = tmp_path / "hub" / "models--acme--tiny"
    commit = "d" * 40
    snap = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    blob = storage / "blobs" / ("e" * 64)
    blob.write_bytes(b"tampered")
    os.symlink(f"../../blobs/{'e' * 64}", snap / "x.json")
    with pytest.raises(IntegrityError):
        _hf.verify_entry(storage, commit, "x.json", expected=None)
    assert not os.path.lexists(snap / "x.json") and not blob.exists()


# --------------------------------------------------------------------------- registry files


def _allowlist_text(version: int) -> str:
    from tests._registry_support import new_key

    key = new_key()
    return (
        f"version = {version}\n[[signers]]\nname = \"alice\"\npublic_key = \"{key.public_key.text}\"\n"
        '[[sources]]\npattern = "local:**"\nsigners = ["alice"]\nthreshold = 1\n'
    )


def test_allowlist_revoke_through_a_link_edits_the_real_file(tmp_path, monkeypatch, capsys):
    from pipewarden.cli import main
    from pipewarden.registry.allowlist import Allowlist

    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(tmp_path / "state"))
    real = tmp_path / "data" / "allowlist.toml"
    real.parent.mkdir()
    real.write_text(_allowlist_text(3))
    link = tmp_path / "link.toml"
    os.symlink(os.path.relpath(real, tmp_path), link)
    assert main(["allowlist", "revoke", str(link), "--name", "alice"]) == 0
    assert link.is_symlink(), "the link was replaced by a new file"
    after = Allowlist.from_bytes(real.read_bytes())
    assert after.version == 4 and [r.name for r in after.revoked] == ["alice"]


def test_allowlist_edit_through_a_dangling_link_is_refused(tmp_path, monkeypatch):
    from pipewarden.cli import main

    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(tmp_path / "state"))
    link = tmp_path / "link.toml"
    os.symlink("nowhere.toml", link)
    assert main(["allowlist", "revoke", str(link), "--name", "alice"]) == 2
    assert link.is_symlink() and not (tmp_path / "nowhere.toml").exists()


def test_swapped_allowlist_link_cannot_roll_back(tmp_path, monkeypatch):
    """Kubernetes ConfigMaps: allowlist.toml -> ..data/allowlist.toml, ..data swapped on update."""
    from pipewarden.registry.allowlist import Allowlist

    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(tmp_path / "state"))
    mount = tmp_path / "mount"
    for name, version in (("..2026_v5", 5), ("..2026_v2", 2)):
        (mount / name).mkdir(parents=True)
        (mount / name / "allowlist.toml").write_text(_allowlist_text(version))
    os.symlink("..2026_v5", mount / "..data")
    os.symlink("..data/allowlist.toml", mount / "allowlist.toml")
    assert Allowlist.load(mount / "allowlist.toml").version == 5
    os.unlink(mount / "..data")
    os.symlink("..2026_v2", mount / "..data")
    with pytest.raises(IntegrityError, match="version 2"):
        Allowlist.load(mount / "allowlist.toml")


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_group_or_world_writable_allowlist_is_refused(tmp_path, monkeypatch, mode):
    from pipewarden.registry.allowlist import Allowlist

    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "allowlist.toml"
    path.write_text(_allowlist_text(1))
    os.chmod(path, mode)
    with pytest.raises(PipewardenError, match="written by others"):
        Allowlist.load(path)
    assert not (tmp_path / "state" / "state.json").exists(), "a refused allowlist left a rollback record"


def _fifo_doors() -> list[str]:
    return ["allowlist", "lock", "key", "state", "audit-allowlist", "public-key", "signature", "pipeline"]


@pytest.mark.parametrize("door", _fifo_doors())
def test_fifos_never_hang(tmp_path, monkeypatch, door):
    from pipewarden.cli import main

    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(tmp_path / "state"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "pipeline.py").write_text("x = 1\n")
    if door == "allowlist":
        from pipewarden.registry.allowlist import Allowlist

        call: Callable[[], Any] = lambda: Allowlist.load(fifo)  # noqa: E731
    elif door == "lock":
        from pipewarden.registry.lockfile import Lockfile

        call = lambda: Lockfile.load(fifo)  # noqa: E731
    elif door == "key":
        from pipewarden.registry.keys import load_signing_key

        call = lambda: load_signing_key(fifo)  # noqa: E731
    elif door == "state":
        (tmp_path / "state").mkdir()
        os.mkfifo(tmp_path / "state" / "state.json")
        fifo = tmp_path / "state" / "state.json"
        from pipewarden.registry._state import VersionStore

        call = lambda: VersionStore(tmp_path / "state").seen("x")  # noqa: E731
    elif door == "audit-allowlist":
        call = lambda: main(["audit", str(pipe), "--allowlist", str(fifo)])  # noqa: E731
    elif door == "public-key":
        call = lambda: main(["allowlist", "add-signer", str(tmp_path / "a.toml"), "--name", "x", "--public-key", str(fifo)])  # noqa: E731
    elif door == "signature":
        from pipewarden.loader.local import resolve_local_code

        fifo = pipe / "pipewarden.sig"
        os.mkfifo(fifo)
        call = lambda: resolve_local_code(pipe)  # noqa: E731
    else:
        from pipewarden.loader.local import resolve_local_code

        (pipe / "pipeline.py").unlink()
        os.mkfifo(pipe / "pipeline.py")
        fifo = pipe / "pipeline.py"
        call = lambda: resolve_local_code(pipe)  # noqa: E731
    try:
        result = _no_hang(call, fifo=fifo)
    except PipewardenError:
        return
    assert result in (1, 2), f"{door}: a FIFO was accepted"


# --------------------------------------------------------------------------- audit --output


@pytest.mark.parametrize("door", ["final-link", "folder-link", "fifo", "dangling-link"])
def test_audit_output_never_writes_through_a_planted_link(tmp_path, monkeypatch, door):
    from pipewarden.cli import main

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pipeline.py").write_text("import os\nos.system('x')\n")
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir()
    victim.write_text("original\n")
    monkeypatch.chdir(repo)
    if door == "final-link":
        os.symlink(victim, repo / "report.sarif")
        out = "report.sarif"
    elif door == "folder-link":
        os.symlink(victim.parent, repo / "reports")
        out = "reports/.bashrc"
    elif door == "dangling-link":
        os.symlink(tmp_path / "home" / "new-file", repo / "report.sarif")
        out = "report.sarif"
    else:
        os.mkfifo(repo / "report.sarif")
        out = "report.sarif"
    rc = _no_hang(lambda: main(["audit", ".", "--format", "sarif", "--output", out]))
    assert rc == 2
    assert victim.read_text() == "original\n"
    assert not (tmp_path / "home" / "new-file").exists()


def test_audit_output_overwrites_a_regular_file(tmp_path, monkeypatch):
    from pipewarden.cli import main

    (tmp_path / "p.py").write_text("x = 1\n")
    (tmp_path / "out.json").write_text("old" * 1000)
    monkeypatch.chdir(tmp_path)
    main(["audit", "p.py", "--format", "json", "--output", "out.json"])
    json.loads((tmp_path / "out.json").read_text())


def test_signing_never_writes_through_a_signature_link(tmp_path):
    from pipewarden.registry.signatures import SIGNATURE_FILE, sign_dir
    from tests._registry_support import new_key

    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "pipeline.py").write_text("x = 1\n")
    victim = tmp_path / "victim"
    victim.write_text("original")
    os.symlink(victim, pipe / SIGNATURE_FILE)
    with pytest.raises(PipewardenError):
        sign_dir(pipe, new_key())
    assert victim.read_text() == "original" and (pipe / SIGNATURE_FILE).is_symlink()


# --------------------------------------------------------------------------- one walker


def _tree(tmp_path: Path, case: str) -> Path:
    root = tmp_path / case
    root.mkdir()
    (root / "pipeline.py").write_text("x = 1\n")
    (root / "sub").mkdir()
    (root / "sub" / "a.json").write_text("{}")
    if case == "non-utf8":
        os.close(os.open(os.path.join(os.fsencode(root), b"bad-\xff.json"), os.O_CREAT | os.O_WRONLY, 0o644))
    elif case == "control-char":
        (root / "bad\nname.json").write_text("{}")
    elif case == "fifo":
        os.mkfifo(root / "sub" / "f")
    elif case == "file-link":
        os.symlink("a.json", root / "sub" / "l.json")
    elif case == "dir-link":
        os.symlink("sub", root / "sub2")
    elif case == "pycache":
        (root / "__pycache__").mkdir()
        (root / "__pycache__" / "x.pyc").write_bytes(b"\0")
        (root / ".git").mkdir()
        (root / ".git" / "HEAD").write_text("ref")
    elif case == "pycache-link":
        os.symlink(tmp_path, root / "__pycache__")
    elif case == "hidden":
        (root / ".env").write_text("K=V")
    return root


WALK_CASES = ["plain", "non-utf8", "control-char", "fifo", "file-link", "dir-link", "pycache", "pycache-link", "hidden"]


@pytest.mark.parametrize("case", WALK_CASES)
def test_one_walker_for_code_manifests_and_locks(tmp_path, case):
    """Loader, signer and lock agree on every tree: same files, or all refuse."""
    from pipewarden.loader.local import resolve_local_code
    from pipewarden.registry._files import walk_files
    from pipewarden.registry.lockfile import entry_for_local_code

    root = _tree(tmp_path, case)
    outcomes = []
    for fn in (
        lambda: set(resolve_local_code(root).files),
        lambda: set(walk_files(root)),
        lambda: set(entry_for_local_code(root).files),
    ):
        try:
            outcomes.append(_no_hang(fn))
        except InputError:
            outcomes.append("refused")
    assert outcomes[0] == outcomes[1] == outcomes[2], outcomes
    if case in ("plain", "pycache", "hidden"):
        assert outcomes[0] != "refused"
        assert not any("__pycache__" in p or p.startswith(".git/") for p in outcomes[0])
    else:
        assert outcomes[0] == "refused"


def test_walker_bounds_files(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(12):
        (root / f"f{i}").write_text("x")
    with pytest.raises(InputError, match="more than 10 files"):
        fsaccess.walk(root, max_files=10)


def test_open_in_refuses_a_link_swapped_in_after_resolution(tmp_path, monkeypatch):
    """TOCTOU: the open itself uses O_NOFOLLOW on every component."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("ok")
    (tmp_path / "secret").write_text("secret")
    real_resolve = fsaccess._resolve_parts

    def swap(*args: Any, **kwargs: Any) -> list[str]:
        out = real_resolve(*args, **kwargs)
        shutil.rmtree(root / "d")
        os.symlink(tmp_path, root / "d")
        os.rename(tmp_path / "secret", tmp_path / "f")
        return out

    monkeypatch.setattr(fsaccess, "_resolve_parts", swap)
    with pytest.raises(InputError, match="symlink"):
        fsaccess.read_in(root, "d/f")


@pytest.mark.parametrize("target", ["outside", "dangling"])
def test_audit_never_reads_a_planted_link_out_of_the_tree(tmp_path, monkeypatch, capsys, target):
    from pipewarden.cli import main

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "ok.py").write_text("x = 1\n")
    secret = tmp_path / "secret.py"
    secret.write_text("API_KEY = 'hunter2'\nthis is not python\n")
    os.symlink(secret if target == "outside" else tmp_path / "nope.py", repo / "link.py")
    read: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):  # noqa: ANN001
        read.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    rc = main(["audit", str(repo), "--format", "json", "--no-cache"])
    monkeypatch.undo()
    out = capsys.readouterr()
    assert rc == 2 and "hunter2" not in out.out + out.err
    assert not any(p.endswith("secret.py") for p in read)


def test_audit_follows_a_link_inside_the_tree(tmp_path, capsys):
    from pipewarden.cli import main

    repo = tmp_path / "repo"
    (repo / "real").mkdir(parents=True)
    (repo / "real" / "a.py").write_text("x = 1\n")
    os.symlink("real/a.py", repo / "b.py")
    main(["audit", str(repo), "--format", "json", "--no-cache"])
    assert "Traceback" not in capsys.readouterr().err
