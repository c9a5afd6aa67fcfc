"""Progress output shared by every part of pipewarden, the way the Hugging Face stack does it.

Bars are drawn only on a terminal (tqdm's ``disable=None``), sizes use huggingface_hub's
units (``unit="B", unit_scale=True``: decimal, so a file shows the same size in both), and
everything is silenced by ``PIPEWARDEN_QUIET`` or ``HF_HUB_DISABLE_PROGRESS_BARS`` (read at
call time) or huggingface_hub's ``disable_progress_bars()``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

_TRUE = {"1", "true", "yes", "on"}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def quiet() -> bool:
    """True when the user asked for no progress output."""
    if _env_true("PIPEWARDEN_QUIET") or _env_true("HF_HUB_DISABLE_PROGRESS_BARS"):
        return True
    hub = sys.modules.get("huggingface_hub.utils")
    are_disabled = getattr(hub, "are_progress_bars_disabled", None)
    if callable(are_disabled):
        try:
            return bool(are_disabled())
        except Exception:  # noqa: BLE001 - a foreign helper must not break a load
            return False
    return False


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar: on a terminal only unless ``disable`` is given; off when quiet."""
    from tqdm.auto import tqdm

    if quiet():
        kwargs["disable"] = True
    else:
        kwargs.setdefault("disable", None)  # None: only when the stream is a terminal
    return tqdm(**kwargs)


def byte_bar(total: int, desc: str, **kwargs: Any) -> Any:
    """A bar over bytes in huggingface_hub's units (decimal: 143M, never 136M for the same file)."""
    return progress_bar(total=total, unit="B", unit_scale=True, desc=desc, **kwargs)


def status(message: str) -> None:
    """A one-line note on stderr (a terminal only, unless quiet), e.g. while a worker starts."""
    if quiet():
        return
    stream = sys.stderr
    try:
        if not stream.isatty():
            return
        stream.write(message + "\n")
        stream.flush()
    except (OSError, ValueError, AttributeError):
        pass
