"""Read a weights file once, hash it while it is read, and parse safetensors with zero copies.

Why not ``safetensors.safe_open``: it memory-maps the file, so the bytes used later may differ
from the bytes hashed (another writer can change the file under the mapping). Why not
``safetensors.torch.load(bytes)``: correct, but it copies every tensor once more. Here the file
is read into one private ``bytearray`` in chunks while a second thread hashes each chunk as soon
as it lands (reading and hashing overlap on two cores); the tensors are then views of that buffer
(``torch.frombuffer``), which nobody else can write. Nothing built from the buffer is returned
before the caller has compared the digest.

The parser validates the whole header (dtypes, shapes, offsets inside the buffer, ranges that
tile the data section without overlap) and raises ``InputError`` on anything malformed; it is
memory-safe by construction (Python slicing and ``torch.frombuffer`` bounds checks).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import mmap
import os
import queue
import stat
import sys
import threading
from typing import Any, BinaryIO

from pipewarden.errors import InputError

CHUNK = 8 * 1024 * 1024
MAX_HEADER = 100 * 1024 * 1024
_DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def _private_buffer(size: int) -> bytearray | mmap.mmap:
    """A private, writable buffer for ``size`` bytes that nobody else can map or write.

    Large buffers are anonymous mappings: no zero-fill pass in user space (``bytearray`` writes
    every byte once before the read does). Transparent huge pages are *not* requested: with the
    usual ``defrag=madvise`` setting a ``MADV_HUGEPAGE`` region makes the kernel compact memory
    on every fault, measured at 5x the system time of 4 KiB pages (2.4 s vs 0.47 s for 860 MB) on
    a machine whose memory is fragmented; the 4 KiB faults still outpace SHA-256.
    """
    if size < 2 * CHUNK:
        return bytearray(size)
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def read_and_hash(source: str | os.PathLike[str] | BinaryIO) -> tuple[bytearray | mmap.mmap, str]:
    """Read the whole file into a private buffer; return it with the sha256 of exactly its bytes.

    ``source`` is an open binary file (from ``pipewarden.fsaccess.open_in``, which follows links
    only inside the snapshot's boundary, never blocks and checks it is a regular file) or a path,
    opened without following a final link.
    """
    if isinstance(source, (str, os.PathLike)):
        from pipewarden import fsaccess

        parent, name = os.path.split(os.path.abspath(source))
        with fsaccess.open_in(parent, name, links=False) as fh:
            return read_and_hash(fh)
    fd = source.fileno()
    where = str(getattr(source, "name", "weights file"))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{where} is not a regular file", rule="file.not-regular")
    buf, digest = read_fd(fd, st.st_size, hash_=True, where=where)
    assert digest is not None
    return buf, digest


#: Without hashing, a file at least this big is read as several ranges in parallel threads.
PARALLEL_READ_MIN = 4 * CHUNK
#: Each parallel range is at least this big.
RANGE_MIN = 2 * CHUNK


def _read_threads(size: int) -> int:
    return max(1, min(os.cpu_count() or 1, size // RANGE_MIN))


def _read_ranges(fd: int, view: memoryview, size: int, parts: int) -> int:
    """Fill ``view[:size]`` from ``fd`` with ``parts`` threads, each ``preadv``-ing one range.

    Returns the number of bytes read before the first short range (``size`` when complete).
    Copying into fresh anonymous memory is bound by page allocation (a fault per 4 KiB page),
    which is work per core: with one thread per core a big file lands in about 1/parts the time.
    """
    bounds = [size * i // parts // 4096 * 4096 for i in range(parts)] + [size]
    short: list[int] = []
    errors: list[BaseException] = []

    def _one(lo: int, hi: int) -> None:
        try:
            pos = lo
            while pos < hi:
                n = os.preadv(fd, [view[pos : min(hi, pos + CHUNK)]], pos)
                if not n:
                    short.append(pos)
                    return
                pos += n
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(_one, bounds[i], bounds[i + 1]), name="pipewarden-read-range", daemon=True)
        for i in range(1, parts)
    ]
    for t in threads:
        t.start()
    try:
        _one(bounds[0], bounds[1])
    finally:
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return min(short) if short else size


def read_fd(fd: int, size: int, *, hash_: bool, where: str) -> tuple[bytearray | mmap.mmap, str | None]:
    """Read ``size`` bytes of an open regular file into a private buffer (hashing while reading).

    Reading and hashing overlap: the main thread reads chunk after chunk while a second thread
    hashes each chunk as soon as it lands. Without ``hash_`` the digest returned is None and a
    big file is read as one range per core in parallel (``preadv`` at offsets). Raises
    ``InputError`` when the file is shorter or longer than ``size``.
    """
    buf = _private_buffer(size)
    view = memoryview(buf)
    digest = hashlib.sha256() if hash_ else None
    got = 0
    with contextlib.suppress(OSError, AttributeError):  # advice only (cold cache: bigger readahead)
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_SEQUENTIAL)
    try:
        if digest is None and size >= PARALLEL_READ_MIN and _read_threads(size) > 1:
            got = _read_ranges(fd, view, size, _read_threads(size))
            if got != size or os.pread(fd, 1, size):
                raise _changed_size(where)
            return buf, None
        if digest is None or size < 2 * CHUNK:  # small or no hashing: no thread
            while got < size:
                n = os.readv(fd, [view[got : got + CHUNK]])
                if not n:
                    break
                got += n
            if digest is not None:
                digest.update(view[:got])
        else:
            ready: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
            hasher = digest

            def _hasher() -> None:
                while (item := ready.get()) is not None:
                    hasher.update(view[item[0] : item[1]])

            worker = threading.Thread(target=_hasher, name="pipewarden-hash", daemon=True)
            worker.start()
            try:
                while got < size:
                    n = os.readv(fd, [view[got : got + CHUNK]])
                    if not n:
                        break
                    ready.put((got, got + n))
                    got += n
            finally:
                ready.put(None)
                worker.join()
        grew = os.read(fd, 1)
    finally:
        view.release()
    if got != size or grew:
        raise _changed_size(where)
    return buf, digest.hexdigest() if digest is not None else None


def _changed_size(where: str) -> InputError:
    return InputError(
        f"{where} changed size while it was read",
        rule="weights.changed-while-read",
        fix="retry when nothing else is writing the file",
    )


def _bad(where: str, why: str) -> InputError:
    return InputError(
        f"{where} is not a valid safetensors file: {why}",
        rule="weights.malformed-safetensors",
        fix="re-download or re-convert the weights",
    )


#: Most dimensions a tensor may have (torch allows 64; real weights use at most 5).
MAX_DIMS = 16


def parse(buf: bytearray | mmap.mmap, *, where: str) -> dict[str, Any]:
    """Tensors as zero-copy views of ``buf`` (validated header; no code runs)."""
    import torch

    if sys.byteorder != "little":  # pragma: no cover - safetensors data is little-endian
        from safetensors.torch import load

        return load(bytes(buf))
    total = len(buf)
    if total < 8:
        raise _bad(where, "shorter than its 8-byte header length")
    n = int.from_bytes(buf[:8], "little")
    if n > MAX_HEADER or 8 + n > total:
        raise _bad(where, f"header length {n} does not fit in {total} bytes")
    try:
        header = json.loads(bytes(buf[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad(where, "header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise _bad(where, "header is not a JSON object")
    base = 8 + n
    data_len = total - base
    spans: list[tuple[int, int]] = []
    out: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in info.items()):
                raise _bad(where, "__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _bad(where, f"entry {name!r} must have exactly dtype, shape, data_offsets")
        dtype_name = _DTYPE_NAMES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        dtype = getattr(torch, dtype_name, None) if dtype_name else None
        if dtype is None:
            raise _bad(where, f"entry {name!r} has unsupported dtype {info['dtype']!r}")
        shape = info["shape"]
        offs = info["data_offsets"]
        if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(type(d) is int and d >= 0 for d in shape)):
            raise _bad(where, f"entry {name!r} has an invalid shape")
        if math.prod(max(d, 1) for d in shape) >= 1 << 62:  # even with a zero dim: torch cannot index it
            raise _bad(where, f"entry {name!r} has a shape whose element count overflows")
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)):
            raise _bad(where, f"entry {name!r} has invalid data_offsets")
        start, end = offs
        numel = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not (0 <= start <= end <= data_len) or end - start != numel * itemsize:
            raise _bad(where, f"entry {name!r} data_offsets {offs} do not match its shape and dtype")
        spans.append((start, end))
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        elif (base + start) % itemsize == 0:
            out[name] = torch.frombuffer(buf, dtype=dtype, count=numel, offset=base + start).view(shape)
        else:  # unaligned (not produced by the safetensors library): copy to an aligned tensor
            out[name] = torch.frombuffer(bytearray(buf[base + start : base + end]), dtype=dtype).view(shape)
    spans.sort()
    pos = 0
    for start, end in spans:
        if start != pos:
            raise _bad(where, "tensor data ranges overlap or leave holes")
        pos = end
    if pos != data_len:
        raise _bad(where, "trailing bytes after the last tensor")
    return out
