"""Progress output like the Hugging Face stack: same units as huggingface_hub, TTY only, quiet env."""

from __future__ import annotations

import io

import pytest

from pipewarden import _progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def loud(monkeypatch):
    import huggingface_hub.utils

    monkeypatch.delenv("PIPEWARDEN_QUIET", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(huggingface_hub.utils, "are_progress_bars_disabled", lambda *a, **k: False)


def test_byte_bar_uses_huggingface_hub_units(loud):
    """The same file must show the same size in the hub's download bar and in ours."""
    from tqdm.auto import tqdm

    size = 143_000_000  # shown as 136M with 1024 divisors
    ours, hubs = _Terminal(), _Terminal()
    bar = _progress.byte_bar(size, "verifying x", file=ours)
    bar.update(size)
    bar.close()
    # what huggingface_hub's http_get draws: tqdm(unit="B", unit_scale=True, total=...)
    ref = tqdm(total=size, unit="B", unit_scale=True, desc="verifying x", file=hubs)
    ref.update(size)
    ref.close()
    assert "143M/143M" in ours.getvalue()
    assert "136M" not in ours.getvalue()
    assert ours.getvalue().split("|")[-1].split("[")[0] == hubs.getvalue().split("|")[-1].split("[")[0]


def test_bars_only_on_a_terminal(loud):
    pipe = io.StringIO()  # not a TTY: a CI log
    bar = _progress.progress_bar(total=3, file=pipe)
    bar.update(3)
    bar.close()
    assert pipe.getvalue() == ""
    term = _Terminal()
    bar = _progress.progress_bar(total=3, file=term)
    bar.update(3)
    bar.close()
    assert "3/3" in term.getvalue()


@pytest.mark.parametrize("var", ["PIPEWARDEN_QUIET", "HF_HUB_DISABLE_PROGRESS_BARS"])
def test_quiet_variables_silence_bars_and_notes(loud, monkeypatch, var, capsys):
    monkeypatch.setenv(var, "1")
    term = _Terminal()
    bar = _progress.progress_bar(total=3, file=term, disable=False)
    bar.update(3)
    bar.close()
    assert term.getvalue() == ""
    monkeypatch.setattr("sys.stderr", _Terminal())
    _progress.status("starting")
    import sys

    assert sys.stderr.getvalue() == ""


def test_status_note_on_a_terminal_only(loud, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    _progress.status("starting the worker")
    assert sys.stderr.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", _Terminal())
    _progress.status("starting the worker")
    assert sys.stderr.getvalue() == "starting the worker\n"
