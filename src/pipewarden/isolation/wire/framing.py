"""Framed messages over pipes: a JSON header plus raw bytes, bounded, never pickled.

Frame layout (big endian)::

    b"PWF1" | u32 header length | u64 payload length | header (UTF-8 JSON object) | payload

Decides the frame format and the bounds; trusts nothing it reads. ``read_frame`` checks the
magic and both lengths against ``max_bytes`` *before* reading the body, so a hostile worker can
make the host read at most ``max_bytes`` + 16 bytes per message. JSON is parsed with the
standard library parser (no object hooks); the payload is returned as bytes for the codec.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipewarden.errors import ResourceLimitError, WorkerError

MAGIC = b"PWF1"
_PREFIX = struct.Struct(">4sIQ")
MAX_HEADER_BYTES = 16 * 1024 * 1024


class FrameTimeout(Exception):
    """The deadline passed before a whole frame arrived (the host turns this into a kill)."""


class PeerClosed(Exception):
    """The other end closed the pipe before a whole frame arrived (or at a frame boundary)."""

    def __init__(self, partial: bool) -> None:
        super().__init__("peer closed the pipe" + (" mid-frame" if partial else ""))
        self.partial = partial


@dataclass(frozen=True)
class Frame:
    header: dict
    payload: bytes


def encode_frame(header: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":"), allow_nan=True).encode("utf-8")
    return _PREFIX.pack(MAGIC, len(head), len(payload)) + head + payload


def write_frame(fd: int, header: dict, payload: bytes | memoryview = b"") -> None:
    head = json.dumps(header, separators=(",", ":"), allow_nan=True).encode("utf-8")
    chunks = [memoryview(_PREFIX.pack(MAGIC, len(head), len(payload)) + head)]
    if len(payload):
        chunks.append(memoryview(payload).cast("B"))
    for chunk in chunks:
        view = chunk
        while len(view):
            n = os.write(fd, view)
            view = view[n:]


#: How often (seconds) a waiting reader calls its ``on_wait`` check.
WAIT_SLICE_S = 0.5

#: The longest single poll() wait (ms): poll takes a C int, so a far deadline (``Limits.wall_s``
#: of years, ``audit --run-timeout 1e308``) is waited for in slices, not overflowed (red team 9H F12).
MAX_POLL_MS = 3_600_000


def poll_ms(left: float) -> int:
    """Milliseconds to wait for ``left`` seconds, at least 1, at most ``MAX_POLL_MS``."""
    if not left > 0:
        return 1
    return min(MAX_POLL_MS, int(min(left, MAX_POLL_MS / 1000) * 1000)) + 1


def _read_exact(
    fd: int, n: int, deadline: float | None, *, started: bool, on_wait: Callable[[], None] | None = None
) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    poller = None
    if deadline is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while got < n:
        if poller is not None and deadline is not None:
            left = deadline - time.monotonic()
            if on_wait is not None:
                left = min(left, WAIT_SLICE_S)
            if left <= 0 or not poller.poll(poll_ms(left)):
                if time.monotonic() >= deadline:
                    raise FrameTimeout()
                if on_wait is not None:
                    on_wait()
                continue
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise PeerClosed(partial=started or got > 0)
        got += k
    return bytes(buf)


def read_frame(
    fd: int, *, max_bytes: int, deadline: float | None = None, on_wait: Callable[[], None] | None = None
) -> Frame:
    """Read one frame; ResourceLimitError if it announces more than ``max_bytes``.

    With a ``deadline``, ``on_wait`` (if given) is called about every ``WAIT_SLICE_S`` while no
    byte arrives; what it raises ends the read.

    WorkerError for a bad magic or a header that is not a JSON object; PeerClosed on EOF;
    FrameTimeout when ``deadline`` (time.monotonic) passes.
    """
    prefix = _read_exact(fd, _PREFIX.size, deadline, started=False, on_wait=on_wait)
    magic, head_len, payload_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise WorkerError(
            "the worker sent a malformed frame (bad magic)",
            rule="wire.framing",
            fix="the worker is broken or compromised; it was stopped",
        )
    if head_len + payload_len <= max_bytes and head_len > min(MAX_HEADER_BYTES, max_bytes):
        raise ResourceLimitError(
            f"the worker sent a message header of {head_len} bytes, over the header limit of "
            f"{min(MAX_HEADER_BYTES, max_bytes)} bytes",
            rule="limits.message-size",
            fix="return large data as tensors or arrays, not as JSON lists",
        )
    if head_len + payload_len > max_bytes:
        raise ResourceLimitError(
            f"the worker sent a message of {head_len + payload_len} bytes, over the limit of {max_bytes}",
            rule="limits.message-size",
            fix="raise Limits(max_message_mb=...) if the output really is that large",
        )
    head = _read_exact(fd, head_len, deadline, started=True, on_wait=on_wait)
    payload = _read_exact(fd, payload_len, deadline, started=True, on_wait=on_wait) if payload_len else b""
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WorkerError(
            f"the worker sent a malformed frame header ({type(exc).__name__})",
            rule="wire.framing",
            fix="the worker is broken or compromised; it was stopped",
        ) from None
    if not isinstance(header, dict):
        raise WorkerError(
            "the worker sent a frame header that is not a JSON object",
            rule="wire.framing",
            fix="the worker is broken or compromised; it was stopped",
        )
    return Frame(header, payload)
