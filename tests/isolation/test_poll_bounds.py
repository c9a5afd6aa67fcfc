"""Red team 9H F12: waits on the worker's pipes never hand poll() more than a C int of
milliseconds, however far the deadline (``Limits.wall_s`` may be huge but must be finite)."""

from __future__ import annotations

import os
import time

import pytest

from pipewarden.isolation.wire import framing
from pipewarden.limits import Limits


@pytest.mark.parametrize("left", [1e308, 1e12, 2.2e6, 3600.0, 0.5, 0.0, -1.0])
def test_poll_ms_fits_a_c_int_and_is_positive(left):
    ms = framing.poll_ms(left)
    assert 1 <= ms <= framing.MAX_POLL_MS + 1 < 2**31
    if 0 < left < 3600:
        assert ms == int(left * 1000) + 1


@pytest.mark.parametrize("far", [1e308, 1e12])
def test_a_frame_is_read_before_a_far_deadline(far):
    r, w = os.pipe()
    try:
        os.write(w, framing.encode_frame({"kind": "ready"}))
        frame = framing.read_frame(r, max_bytes=1 << 20, deadline=time.monotonic() + far)
        assert frame.header == {"kind": "ready"}
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0, -1])
def test_limits_refuse_an_infinite_or_non_positive_wall_clock(value):
    with pytest.raises(ValueError, match="positive finite"):
        Limits(wall_s=value)
