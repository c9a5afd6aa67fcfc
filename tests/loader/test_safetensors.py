"""The loader's zero-copy safetensors reader: same tensors as the library, garbage refused."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from pipewarden.errors import InputError
from pipewarden.loader._safetensors import parse, read_and_hash
from pipewarden.loader.digests import sha256_bytes


def _sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 4, generator=g),
        "b.bias": torch.randn(5, generator=g).to(torch.float16),
        "c": torch.arange(7, dtype=torch.int64),
        "d": torch.tensor([True, False, True]),
        "e": torch.randn(2, 2, generator=g).to(torch.bfloat16),
        "empty": torch.zeros(0, 3),
    }


def test_parse_matches_safetensors_library(tmp_path):
    tensors = _sample()
    blob = save(tensors, metadata={"format": "pt"})
    path = tmp_path / "w.safetensors"
    path.write_bytes(blob)
    buf, digest = read_and_hash(path)
    assert digest == sha256_bytes(blob)
    got = parse(buf, where="w.safetensors")
    assert set(got) == set(tensors)
    for name, t in tensors.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name


def test_read_and_hash_large_file_chunked(tmp_path):
    # Larger than two chunks: the threaded path.
    t = {"x": torch.arange(6 * 1024 * 1024, dtype=torch.float32)}
    blob = save(t)
    path = tmp_path / "big.safetensors"
    path.write_bytes(blob)
    buf, digest = read_and_hash(path)
    assert bytes(buf) == blob and digest == sha256_bytes(blob)
    assert torch.equal(parse(buf, where="big")["x"], t["x"])


def _with_header(header: dict, data: bytes) -> bytearray:
    h = json.dumps(header).encode()
    return bytearray(struct.pack("<Q", len(h)) + h + data)


@pytest.mark.parametrize(
    "buf",
    [
        bytearray(b""),
        bytearray(b"\x01\x00"),
        bytearray(struct.pack("<Q", 10**12)),
        _with_header({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\x00" * 8),
        _with_header({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\x00" * 8),
        _with_header({"x": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4),
        _with_header({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\x00" * 4),
        _with_header({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 8),
        _with_header([], b""),  # type: ignore[arg-type]
    ],
    ids=["empty", "short", "huge-header", "out-of-bounds", "overlap", "bad-dtype", "neg-shape", "trailing", "not-object"],
)
def test_malformed_files_are_input_errors(buf):
    with pytest.raises(InputError):
        parse(buf, where="bad.safetensors")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=600))
def test_random_bytes_never_crash(data, cut):
    blob = bytearray(save({"t": torch.ones(3)}))
    mutated = blob[:cut] + bytearray(data) if cut < len(blob) else bytearray(data)
    try:
        parse(mutated, where="fuzz")
    except InputError:
        pass


@pytest.fixture
def ranges(monkeypatch):
    """Make the parallel range reader split even a small file: 4 ranges, 4 KiB chunks."""
    from pipewarden.loader import _safetensors

    monkeypatch.setattr(_safetensors, "PARALLEL_READ_MIN", 1)
    monkeypatch.setattr(_safetensors, "CHUNK", 4096)
    calls: list[int] = []
    real = _safetensors._read_ranges

    def counting(fd, view, size, parts):
        calls.append(parts)
        return real(fd, view, size, parts)

    monkeypatch.setattr(_safetensors, "_read_threads", lambda size: 4)
    monkeypatch.setattr(_safetensors, "_read_ranges", counting)
    return calls


def test_parallel_range_read_is_exact_and_private(tmp_path, ranges):
    import os

    from pipewarden.loader._safetensors import read_fd

    blob = save({"x": torch.arange(300_000, dtype=torch.float32)})  # ~1.2 MB, not a multiple of 4 KiB
    path = tmp_path / "w.safetensors"
    path.write_bytes(blob)
    fd = os.open(path, os.O_RDONLY)
    try:
        buf, digest = read_fd(fd, len(blob), hash_=False, where="w")
    finally:
        os.close(fd)
    assert ranges == [4] and digest is None  # the parallel path ran
    assert bytes(buf) == blob
    x = parse(buf, where="w")["x"]
    path.write_bytes(bytes(len(blob)))  # the file is zeroed in place afterwards ...
    assert bytes(buf) == blob and torch.equal(x, torch.arange(300_000, dtype=torch.float32))  # ... the buffer is not


@pytest.mark.parametrize("delta", [-1, +1, -5000])
def test_parallel_range_read_refuses_a_file_of_another_size(tmp_path, ranges, delta):
    import os

    from pipewarden.loader._safetensors import read_fd

    blob = bytes(range(256)) * 4000
    path = tmp_path / "w.bin"
    path.write_bytes(blob)
    fd = os.open(path, os.O_RDONLY)
    try:
        # The size the caller fstat-ed differs from what is there now: shrunk (+) or grew (-).
        with pytest.raises(InputError) as exc:
            read_fd(fd, len(blob) - delta, hash_=False, where="w")
    finally:
        os.close(fd)
    assert exc.value.rule == "weights.changed-while-read" and ranges == [4]
