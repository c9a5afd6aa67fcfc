"""Verified-digest records: an unchanged file skips the re-hash; any change is a full re-hash.

Every test that expects a hit first makes the record old (the clock used to stamp it is moved
forward, as if the file had been verified well after its last change), because a record written
within the filesystem's timestamp granularity of the file's ctime is racy and never trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import time
from pathlib import Path

import pytest
import torch

from pipewarden.errors import IntegrityError
from pipewarden.loader import _safetensors, records
from pipewarden.loader.components import load_components, worker_records
from pipewarden.loader.digests import sha256_file
from pipewarden.loader.local import resolve_local_weights
from pipewarden.loader.records import (
    MAX_STORE_BYTES,
    DigestStore,
    FixedRecords,
    NoRecords,
    Record,
    read_verified_file,
    records_for,
    resolve_reverify,
)

UNET = "unet/diffusion_pytorch_model.safetensors"


class HashCounter:
    """Counts full hashes of weight files (the read path with hashing on)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hashed: list[int] = []
        self.reads = 0
        real = _safetensors.read_fd

        def counting(fd, size, *, hash_, where):
            self.reads += 1
            if hash_:
                self.hashed.append(size)
            return real(fd, size, hash_=hash_, where=where)

        monkeypatch.setattr(_safetensors, "read_fd", counting)


@pytest.fixture
def weights(tmp_path, tiny_weights) -> Path:
    dst = tmp_path / "w"
    shutil.copytree(tiny_weights, dst)
    return dst


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache" / "verified-digests.json"
    monkeypatch.setenv("PIPEWARDEN_DIGEST_STORE", str(path))
    return path


def _old_clock(monkeypatch, seconds: float = 30.0) -> None:
    """Records made from now on are stamped ``seconds`` in the future (i.e. not racy)."""
    monkeypatch.setattr(records, "_now_ns", lambda: time.time_ns() + int(seconds * 1e9))


def _all_pins(weights: Path) -> dict[str, str]:
    return {rel: sha256_file(weights / rel) for rel in resolve_local_weights(weights).files}


def _load(weights: Path, *, reverify: str | None = None):
    snap = resolve_local_weights(weights)
    return load_components(snap, expected=_all_pins(weights), records=records_for(reverify))


def _flip_byte_keep_size_and_mtime(path: Path, offset: int = -5) -> None:
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(offset, os.SEEK_END)
        b = fh.read(1)
        fh.seek(offset, os.SEEK_END)
        fh.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    st2 = os.stat(path)
    assert (st2.st_size, st2.st_mtime_ns, st2.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def test_unchanged_file_is_not_rehashed_and_loads_the_same_tensors(weights, store, monkeypatch):
    _old_clock(monkeypatch)
    counter = HashCounter(monkeypatch)
    first = _load(weights)
    assert counter.hashed and store.is_file()
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    n = len(counter.hashed)
    second = _load(weights)
    assert len(counter.hashed) == n  # no new hash: the record vouched for the file
    assert counter.reads == 2 * n  # ... but the bytes were read again, once
    a, b = first["unet"].state_dict(), second["unet"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loaded_tensors_are_private_copies(weights, store, monkeypatch):
    _old_clock(monkeypatch)
    _load(weights)
    unet = _load(weights)["unet"]  # a record hit
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    data = bytearray((weights / UNET).read_bytes())
    n = int.from_bytes(data[:8], "little")
    data[8 + n :] = bytes(len(data) - 8 - n)  # zero every tensor byte in the file
    (weights / UNET).write_bytes(bytes(data))
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_one_byte_edit_keeping_size_and_mtime_is_caught_by_ctime(weights, store, monkeypatch):
    _old_clock(monkeypatch)
    counter = HashCounter(monkeypatch)
    pins = _all_pins(weights)
    snap = resolve_local_weights(weights)
    load_components(snap, expected=pins, records=records_for(None))
    n = len(counter.hashed)
    _flip_byte_keep_size_and_mtime(weights / UNET)
    with pytest.raises(IntegrityError, match="its pin says"):
        load_components(snap, expected=pins, records=records_for(None))
    assert len(counter.hashed) == n + 1  # the file was hashed again, not vouched for


def test_one_byte_edit_without_pin_reports_the_new_digest(weights, store, monkeypatch):
    _old_clock(monkeypatch)
    snap = resolve_local_weights(weights)
    before: dict[str, str] = {}
    load_components(snap, expected={}, digests_out=before, records=records_for(None))
    _flip_byte_keep_size_and_mtime(weights / UNET)
    after: dict[str, str] = {}
    load_components(snap, expected={}, digests_out=after, records=records_for(None))
    assert after[UNET] == sha256_file(weights / UNET) != before[UNET]


def test_file_replaced_by_rename_is_caught_by_inode(weights, store, monkeypatch):
    _old_clock(monkeypatch)
    counter = HashCounter(monkeypatch)
    path = weights / UNET
    pins = _all_pins(weights)
    snap = resolve_local_weights(weights)
    load_components(snap, expected=pins, records=records_for(None))
    n = len(counter.hashed)
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    tmp = weights / "unet" / "new.tmp"
    tmp.write_bytes(bytes(data))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)
    assert os.stat(path).st_ino != st.st_ino
    with pytest.raises(IntegrityError):
        load_components(snap, expected=pins, records=records_for(None))
    assert len(counter.hashed) == n + 1


def test_chmod_or_touch_means_a_rehash(weights, store, monkeypatch):
    _old_clock(monkeypatch)
    counter = HashCounter(monkeypatch)
    _load(weights)
    n = len(counter.hashed)
    os.chmod(weights / UNET, 0o600)  # metadata only: ctime moves, so the record no longer matches
    _load(weights)
    assert len(counter.hashed) == n + 1


def test_record_written_within_the_racy_window_is_not_trusted(weights, store, monkeypatch):
    counter = HashCounter(monkeypatch)
    # Verification stamped at the file's own ctime (what a real clock gives right after a write,
    # without depending on how busy the machine is): the record is stored but must not be trusted.
    ctime_ns = os.stat(weights / UNET).st_ctime_ns
    monkeypatch.setattr(records, "_now_ns", lambda: ctime_ns)
    _load(weights)
    assert store.is_file()
    stored = json.loads(store.read_text())["records"]
    assert stored, "the record is written"
    n = len(counter.hashed)
    _load(weights)
    assert len(counter.hashed) == n + 1
    # the same holds for a record forged to look recent by any margin below the granularity
    st = os.stat(weights / UNET)
    rec = Record(records.FileIdentity.of(st), sha256_file(weights / UNET), st.st_ctime_ns + records.FINE_GRANULARITY_NS)
    assert not records.trusted(rec, st)
    assert records.trusted(Record(rec.identity, rec.sha256, rec.verified_ns + 1), st)


def test_reverify_always_hashes_every_time(weights, store, monkeypatch):
    _old_clock(monkeypatch)
    counter = HashCounter(monkeypatch)
    _load(weights)  # leaves a good record
    n = len(counter.hashed)
    for _ in range(3):
        _load(weights, reverify="always")
    assert len(counter.hashed) == n + 3
    monkeypatch.setenv("PIPEWARDEN_REVERIFY", "always")
    _load(weights)
    assert len(counter.hashed) == n + 4
    monkeypatch.setenv("PIPEWARDEN_REVERIFY", "sometimes")
    with pytest.raises(ValueError, match="PIPEWARDEN_REVERIFY"):
        resolve_reverify(None)
    with pytest.raises(ValueError):
        resolve_reverify("never")


def test_load_pipeline_reverify_always_hashes_every_time(tiny_weights, example_pipeline, tmp_path, store, monkeypatch):
    import pipewarden

    w = tmp_path / "w2"
    shutil.copytree(tiny_weights, w)
    _old_clock(monkeypatch)
    counter = HashCounter(monkeypatch)
    pin = sha256_file(example_pipeline)
    kw = {"custom_pipeline": example_pipeline, "trust_remote_code": True, "pipeline_sha256": pin, "isolation": "inprocess"}
    pipewarden.load_pipeline(w, **kw)
    pipewarden.load_pipeline(w, **kw)
    assert len(counter.hashed) == 1  # the second load was vouched for by the record
    pipewarden.load_pipeline(w, reverify="always", **kw)
    pipewarden.load_pipeline(w, reverify="always", **kw)
    assert len(counter.hashed) == 3
    with pytest.raises(ValueError, match="reverify"):
        pipewarden.load_pipeline(w, reverify="never", **kw)


def test_change_during_the_read_rehashes_the_bytes_held(weights, store, monkeypatch):
    _old_clock(monkeypatch)
    _load(weights)
    path = weights / UNET
    real = _safetensors.read_fd

    def read_then_touch(fd, size, *, hash_, where):
        out = real(fd, size, hash_=hash_, where=where)
        os.chmod(path, 0o640)  # a change the kernel stamps while "the read" is in progress
        return out

    monkeypatch.setattr(_safetensors, "read_fd", read_then_touch)
    got = read_verified_file(path, expected=None, records=DigestStore())
    assert got.how == "re-hashed (changed while read)" and got.hashed
    assert got.sha256 == sha256_file(path)


def test_file_writable_by_others_is_never_vouched_for(weights, store, monkeypatch):
    _old_clock(monkeypatch)
    counter = HashCounter(monkeypatch)
    os.chmod(weights / UNET, 0o664)
    _load(weights)
    _load(weights)
    assert len(counter.hashed) == 2
    st = os.stat(weights / UNET)
    assert records.writable_by_others(st)
    # a file owned by another (non-root) user: that user can write it, so no record vouches for it
    fields = list(os.stat(weights / "model_index.json"))
    fields[4] = 4242  # st_uid
    foreign = os.stat_result(fields)
    assert records.writable_by_others(foreign, owner=4243)
    assert not records.writable_by_others(foreign, owner=4242)


def _good_store(weights: Path, store: Path, monkeypatch) -> None:
    _old_clock(monkeypatch)
    _load(weights)
    assert store.is_file()


@pytest.mark.parametrize(
    "damage",
    ["corrupt", "truncated", "oversized", "foreign", "mode644", "symlink", "wrong_format", "bad_entries", "group_dir"],
)
def test_unsafe_or_damaged_store_is_never_trusted(weights, store, monkeypatch, damage):
    _good_store(weights, store, monkeypatch)
    counter = HashCounter(monkeypatch)
    text = store.read_text()
    if damage == "corrupt":
        store.write_bytes(b"\xff\xfe{not json")
    elif damage == "truncated":
        store.write_text(text[: len(text) // 2])
    elif damage == "oversized":
        store.write_text(text[:-1] + " " * MAX_STORE_BYTES + "}")
    elif damage == "foreign":
        real = os.geteuid()
        monkeypatch.setattr(records.os, "geteuid", lambda: real + 4242)  # the store's owner is now "someone else"
    elif damage == "mode644":
        os.chmod(store, 0o644)
    elif damage == "symlink":
        target = store.with_name("elsewhere.json")
        store.rename(target)
        store.symlink_to(target)
    elif damage == "wrong_format":
        doc = json.loads(text)
        doc["format"] = "something-else/9"
        store.write_text(json.dumps(doc))
    elif damage == "bad_entries":
        doc = json.loads(text)
        doc["records"] = [[*r[:5], "0" * 63 + "g", *r[6:]] for r in doc["records"]] + [[-1] * 8, "x", None]
        store.write_text(json.dumps(doc))
    elif damage == "group_dir":
        os.chmod(store.parent, 0o770)
    if damage in ("corrupt", "truncated", "oversized", "wrong_format", "bad_entries"):
        os.chmod(store, 0o600)
    s = DigestStore()
    assert s.records() == {}
    assert s.problem
    _load(weights)  # must hash: nothing in that store is trusted
    assert len(counter.hashed) == 1


def test_forged_record_in_a_safe_store_does_not_hide_a_change(weights, store, monkeypatch):
    """A record is only an identity -> digest claim; a changed file never matches it."""
    _good_store(weights, store, monkeypatch)
    _flip_byte_keep_size_and_mtime(weights / UNET)
    with pytest.raises(IntegrityError):
        load_components(resolve_local_weights(weights), expected={**_all_pins(weights), UNET: json.loads(store.read_text())["records"][0][5]},
                        records=records_for(None))


def test_store_is_bounded_and_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "c" / "s.json"
    monkeypatch.setattr(records, "MAX_RECORDS", 50)
    s = DigestStore(path)
    for i in range(120):
        s.add(Record(records.FileIdentity(1, i, 10, 5, 5), "a" * 64, 10_000_000_000 + i))
        if i % 40 == 0:
            assert s.flush()
    assert s.flush()
    doc = json.loads(path.read_text())
    assert len(doc["records"]) == 50
    assert {r[1] for r in doc["records"]} == set(range(70, 120))  # the newest kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]  # no temp files left


def test_store_in_a_foreign_directory_is_not_written(tmp_path):
    d = tmp_path / "shared"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    s = DigestStore(d / "s.json")
    s.add(Record(records.FileIdentity(1, 2, 3, 4, 5), "b" * 64, 99))
    assert not s.flush()
    assert not (d / "s.json").exists()


def test_worker_view_is_read_only_and_checks_its_own_fstat(weights, store, monkeypatch):
    _old_clock(monkeypatch)
    snap = resolve_local_weights(weights)
    pins = _all_pins(weights)
    recs = worker_records(snap, expected=pins, records=records_for(None))
    assert len(recs) == 1 and recs[0][5] == pins[UNET]
    before = store.read_bytes()
    view = FixedRecords.from_json(json.loads(json.dumps(recs)), owner=os.geteuid())
    counter = HashCounter(monkeypatch)
    load_components(snap, expected=pins, records=view)
    assert counter.hashed == []  # vouched for by the host's record
    view.add(Record(records.FileIdentity(9, 9, 9, 9, 9), "c" * 64, 1))
    assert view.lookup(os.stat(weights / "model_index.json")) is None
    assert store.read_bytes() == before  # the worker's view never writes the host's store
    _flip_byte_keep_size_and_mtime(weights / UNET)
    with pytest.raises(IntegrityError):
        load_components(snap, expected=pins, records=view)
    # owned by the host's uid, but the worker runs as another uid: still vouched for (owner=host)
    other = FixedRecords.from_json(recs, owner=os.geteuid() + 1)
    assert isinstance(NoRecords().lookup(os.stat(weights / UNET)), type(None))
    assert other.owner == os.geteuid() + 1


def test_host_does_not_hash_for_the_worker_when_the_record_would_be_racy(weights, store, monkeypatch):
    counter = HashCounter(monkeypatch)
    calls = []
    real_sha = records.verify_file_digest

    def spy(path, **kw):
        calls.append(path)
        return real_sha(path, **kw)

    monkeypatch.setattr(records, "verify_file_digest", spy)
    snap = resolve_local_weights(weights)
    assert worker_records(snap, expected={}, records=records_for(None)) == []  # just written: racy
    assert calls and counter.hashed == []
    assert worker_records(snap, expected={}, records=records_for("always")) == []


def test_process_mode_uses_records_and_still_catches_an_edit(tiny_weights, example_pipeline, tmp_path, store, monkeypatch):
    import pipewarden

    w = tmp_path / "w3"
    shutil.copytree(tiny_weights, w)
    _old_clock(monkeypatch)
    pin = sha256_file(example_pipeline)
    kw = {"custom_pipeline": example_pipeline, "trust_remote_code": True, "pipeline_sha256": pin}
    pipe = pipewarden.load_pipeline(w, **kw)
    pipe.close() if hasattr(pipe, "close") else None
    doc = json.loads(store.read_text())
    assert any(r[5] == sha256_file(w / UNET) for r in doc["records"])  # written by the host
    # a locked weights file changed in place (size and mtime kept): the worker must refuse it
    from pipewarden.loader.local import resolve_local_code
    from pipewarden.registry.lockfile import LockEntry, Lockfile

    snap = resolve_local_weights(w)
    digests: dict[str, str] = {}
    load_components(snap, expected={}, digests_out=digests, records=NoRecords())
    code = resolve_local_code(example_pipeline)
    lock = Lockfile(
        entries=(
            LockEntry(source=snap.source, role="weights", files=digests, commit=None),
            LockEntry(source=code.source_id, role="code", files=dict(code.files), commit=None),
        )
    )
    pipewarden.load_pipeline(w, lockfile=lock, **kw)  # record hit in the worker: loads
    _flip_byte_keep_size_and_mtime(w / UNET)
    with pytest.raises(IntegrityError, match="its pin says"):
        pipewarden.load_pipeline(w, lockfile=lock, **kw)


def test_fs_verity_digest_is_used_where_enabled(tmp_path, store):
    path = tmp_path / "v.bin"
    path.write_bytes(os.urandom(1 << 16))
    fd = os.open(path, os.O_RDONLY)
    try:
        # FS_IOC_ENABLE_VERITY with struct fsverity_enable_arg {version=1, hash_algorithm=1 (sha256),
        # block_size=4096, salt_size=0, salt_ptr=0, sig_size=0, reserved...}
        import fcntl

        arg = struct.pack("=IIIIQIIQ88x", 1, 1, 4096, 0, 0, 0, 0, 0)
        try:
            fcntl.ioctl(fd, 0x40806685, arg)
        except OSError as exc:
            pytest.skip(f"fs-verity is not available on the filesystem of {tmp_path} ({exc.strerror})")
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        verity = records.verity_digest(fd)
    finally:
        os.close(fd)
    assert verity.startswith("sha256:")
    first = read_verified_file(path, expected=None, records=(s := DigestStore()))
    s.flush()
    second = read_verified_file(path, expected=None, records=DigestStore())
    assert first.hashed and not second.hashed and second.how == "fs-verity record"
    assert second.sha256 == sha256_file(path)


def test_record_hit_read_in_parallel_ranges_is_private(weights, store, monkeypatch):
    """A record hit reads big files as parallel ranges: same tensors, and still a private copy."""
    _old_clock(monkeypatch)
    first = _load(weights)
    parts: list[int] = []
    real = _safetensors._read_ranges

    def counting(fd, view, size, n):
        parts.append(n)
        return real(fd, view, size, n)

    monkeypatch.setattr(_safetensors, "PARALLEL_READ_MIN", 1)
    monkeypatch.setattr(_safetensors, "CHUNK", 4096)
    monkeypatch.setattr(_safetensors, "_read_threads", lambda size: 3)
    monkeypatch.setattr(_safetensors, "_read_ranges", counting)
    unet = _load(weights)["unet"]  # a record hit, every weight file read in 3 ranges
    assert parts and set(parts) == {3}
    a, b = first["unet"].state_dict(), unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    before = {k: v.clone() for k, v in b.items()}
    data = bytearray((weights / UNET).read_bytes())
    n = int.from_bytes(data[:8], "little")
    with open(weights / UNET, "r+b") as fh:  # in place: same inode, every tensor byte zeroed
        fh.seek(8 + n)
        fh.write(bytes(len(data) - 8 - n))
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(before[k], torch.zeros_like(before[k])) for k in before)
