"""Python's ``random`` and NumPy's global generator states, as JSON, both ways across the wire.

Pipelines draw from these (``random.randint``, ``np.random.randn``) as well as from torch. The
host sends its states with every call and takes the worker's back afterwards, as it does for
torch's global RNG, so process mode draws exactly what in-process would. What comes back from
the worker is parsed here into a frozen value with every field checked (types, lengths, ranges)
before the host's generators are touched.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from pipewarden.errors import WorkerError

_MT_WORDS = 624
_U32 = 2**32


def _bad(what: str) -> WorkerError:
    return WorkerError(
        f"the worker sent a malformed RNG state: {what}",
        rule="worker.protocol",
        fix="the worker is broken or compromised; it was stopped",
    )


@dataclass(frozen=True)
class RngStates:
    """``random.getstate()`` and ``numpy.random.get_state()`` in checked, immutable form."""

    py_version: int
    py_words: tuple[int, ...]  # 624 state words + the position
    py_gauss: float | None
    np_words: tuple[int, ...]
    np_pos: int
    np_has_gauss: int
    np_gauss: float

    def to_json(self) -> dict[str, Any]:
        return {
            "py": [self.py_version, list(self.py_words), self.py_gauss],
            "np": [list(self.np_words), self.np_pos, self.np_has_gauss, self.np_gauss],
        }

    def apply(self) -> None:
        """Set this process's global generators to these states."""
        import numpy as np

        random.setstate((self.py_version, self.py_words, self.py_gauss))
        np.random.set_state(("MT19937", np.array(self.np_words, dtype=np.uint32), self.np_pos, self.np_has_gauss, self.np_gauss))


def capture() -> RngStates:
    """This process's current global ``random`` and NumPy states."""
    import numpy as np

    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    if kind != "MT19937":  # pragma: no cover - numpy's legacy generator is always MT19937
        raise ValueError(kind)
    return RngStates(int(version), tuple(int(w) for w in words), gauss, tuple(int(k) for k in np.asarray(keys).tolist()),
                     int(pos), int(has_gauss), float(cached))


def _int(value: Any, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value < hi:
        raise _bad(what)
    return value


def _float(value: Any, what: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _bad(what)
    return float(value)


def parse(value: Any) -> RngStates:
    """Validate a JSON value from the other side into ``RngStates`` (raises ``WorkerError``)."""
    if not isinstance(value, dict) or set(value) != {"py", "np"}:
        raise _bad("not an object with py and np")
    py, npv = value["py"], value["np"]
    if not isinstance(py, list) or len(py) != 3 or not isinstance(npv, list) or len(npv) != 4:
        raise _bad("wrong shape")
    version = _int(py[0], 3, 4, "random version")
    words = py[1]
    if not isinstance(words, list) or len(words) != _MT_WORDS + 1:
        raise _bad("random state length")
    py_words = tuple(_int(w, 0, _U32, "random state word") for w in words[:-1]) + (
        _int(words[-1], 0, _MT_WORDS + 1, "random position"),)
    py_gauss = None if py[2] is None else _float(py[2], "random gauss")
    keys = npv[0]
    if not isinstance(keys, list) or len(keys) != _MT_WORDS:
        raise _bad("numpy state length")
    np_words = tuple(_int(k, 0, _U32, "numpy state word") for k in keys)
    return RngStates(
        version, py_words, py_gauss, np_words,
        _int(npv[1], 0, _MT_WORDS + 1, "numpy position"),
        _int(npv[2], 0, 2, "numpy has_gauss"),
        _float(npv[3], "numpy gauss"),
    )
