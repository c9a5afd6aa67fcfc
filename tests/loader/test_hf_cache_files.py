"""Red team 9H F15/F16: the HF cache's own files (refs, snapshot listing) go through fsaccess.

``refs/<rev>`` used to be read with ``Path.read_text`` (a FIFO hung the offline load forever, a
link was followed) and written with ``mkdir``/``write_text`` through a linked ``refs`` folder;
``list_snapshot`` used ``os.walk`` (a 1100-deep folder chain was a RecursionError traceback).
Each test checks the absence of the effect (no hang, victim file and folder unchanged, a clean
named error), and that the real layout still resolves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipewarden.errors import FetchError, InputError, IntegrityError, PipewardenError
from pipewarden.loader import _hf

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "f" * 40


def _no_hang(fn: Callable[[], Any], *, fifo: Path) -> Any:
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
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # release the blocked open
        os.close(fd)
        t.join(5)
        pytest.fail("blocked on a FIFO (hang guard; not a timing assertion)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def storage(tmp_path) -> Path:
    s = tmp_path / "hub" / "models--acme--pipes"
    (s / "blobs").mkdir(parents=True)
    (s / "refs").mkdir()
    (s / "snapshots" / COMMIT).mkdir(parents=True)
    return s


@pytest.fixture
def victim(tmp_path) -> Path:
    v = tmp_path / "victim"
    v.mkdir()
    (v / "main").write_text(OTHER)
    return v


def _victim_untouched(victim: Path) -> None:
    assert (victim / "main").read_text() == OTHER
    assert sorted(p.name for p in victim.iterdir()) == ["main"]


def test_a_fifo_ref_is_refused_without_blocking(storage):
    os.mkfifo(storage / "refs" / "main")
    with pytest.raises(IntegrityError, match="not a regular file"):
        _no_hang(lambda: _hf.cached_commit(storage, None, repo_id="acme/pipes"), fifo=storage / "refs" / "main")


def test_a_fifo_ref_does_not_block_write_ref(storage):
    fifo = storage / "refs" / "main"
    os.mkfifo(fifo)
    _no_hang(lambda: _hf.write_ref(storage, None, COMMIT), fifo=fifo)
    assert (storage / "refs" / "main").read_text() == COMMIT  # replaced by name, not written into


@pytest.mark.parametrize("door", ["ref-link", "refs-folder-link"])
def test_a_linked_ref_is_not_followed_when_read(storage, victim, door):
    """Offline, a ref that leads out of the cache names no commit (the victim holds a valid one)."""
    (storage / "snapshots" / OTHER).mkdir()
    if door == "ref-link":
        os.symlink(victim / "main", storage / "refs" / "main")
    else:
        (storage / "refs").rmdir()
        os.symlink(victim, storage / "refs")
    with pytest.raises(PipewardenError) as exc:
        _hf.cached_commit(storage, None, repo_id="acme/pipes")
    assert OTHER not in str(exc.value)
    _victim_untouched(victim)


@pytest.mark.parametrize("door", ["ref-link", "refs-folder-link", "nested-refs-folder-link"])
def test_write_ref_never_writes_through_a_link(storage, victim, door):
    rev = None
    if door == "ref-link":
        os.symlink(victim / "main", storage / "refs" / "main")
    elif door == "refs-folder-link":
        (storage / "refs").rmdir()
        os.symlink(victim, storage / "refs")
    else:  # revision "refs/pr/1" lives in refs/refs/pr/1
        os.symlink(victim, storage / "refs" / "refs")
        rev = "refs/pr/1"
    _hf.write_ref(storage, rev, COMMIT)
    _victim_untouched(victim)


def test_a_huge_ref_is_refused_unread(storage):
    (storage / "refs" / "main").write_bytes(COMMIT.encode() + b" " * (4 * 1024 * 1024))
    with pytest.raises(IntegrityError):
        _hf.cached_commit(storage, None, repo_id="acme/pipes")


def test_refs_still_round_trip(storage):
    _hf.write_ref(storage, None, COMMIT)
    _hf.write_ref(storage, "refs/pr/1", COMMIT)
    assert _hf.cached_commit(storage, None, repo_id="acme/pipes") == COMMIT
    assert _hf.cached_commit(storage, "refs/pr/1", repo_id="acme/pipes") == COMMIT
    assert (storage / "refs" / "refs" / "pr" / "1").read_text() == COMMIT
    assert not [p for p in (storage / "refs").rglob("*.tmp")]


def test_a_missing_ref_is_not_cached(storage):
    with pytest.raises(FetchError):
        _hf.cached_commit(storage, None, repo_id="acme/pipes")


def test_a_very_deep_snapshot_is_a_clean_error_not_a_traceback(storage):
    """The red team nested 1100 levels (os.walk's recursion limit); the walker's bound is 64, so
    100 levels show the bound without leaving a tree pytest's own cleanup cannot remove."""
    d = storage / "snapshots" / COMMIT
    deep = d.joinpath(*["a"] * 100)
    deep.mkdir(parents=True)
    (deep / "x.txt").write_text("x")
    with pytest.raises(InputError, match="nested more than"):
        _hf.list_snapshot(storage, COMMIT, patterns=None)


def test_the_listing_holds_links_unresolved_and_files(storage):
    snap = storage / "snapshots" / COMMIT
    (storage / "blobs" / ("a" * 64)).write_text("{}")
    (snap / "unet").mkdir()
    os.symlink(f"../../../blobs/{'a' * 64}", snap / "unet" / "config.json")
    os.symlink("/nowhere", snap / "dangling.json")  # listed; verify_entry refuses and evicts it
    (snap / "__pycache__").mkdir()
    (snap / "__pycache__" / "x.pyc").write_bytes(b"")
    assert _hf.list_snapshot(storage, COMMIT, patterns=None) == [
        "__pycache__/x.pyc", "dangling.json", "unet/config.json",
    ]
    assert _hf.list_snapshot(storage, COMMIT, patterns=("*.json",)) == ["dangling.json", "unet/config.json"]
