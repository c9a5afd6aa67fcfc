"""Red team 9H F10: ``pipewarden demo`` in a folder someone else laid out.

The demo wrote its fixture with ``Path.write_text`` (through links planted under ``demo-output``,
e.g. committed to a cloned repo) and plain diffusers re-read ``pipeline/pipeline.py`` from disk
after the sandbox had read it (a swap ran unsandboxed). Now every write goes through fsaccess and
plain diffusers executes the very string the demo pinned. Each test checks the victim is
unchanged (or the swapped-in code never ran), not just the exit code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipewarden.cli import main

ORIGINAL = "ORIGINAL victim content\n"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    from pipewarden._fixtures import fit_demo_weights

    return fit_demo_weights(tmp_path_factory.mktemp("demo-weights") / "weights", iterations=2)


@pytest.fixture
def world(tmp_path, monkeypatch, fitted) -> Path:
    """tmp/cwd is the current directory (a cloned repo, say) with demo-output/ in it."""
    import shutil

    cwd = tmp_path / "cwd"
    (cwd / "demo-output").mkdir(parents=True)
    shutil.copytree(fitted, cwd / "demo-output" / "weights")
    (tmp_path / "victim").write_text(ORIGINAL)
    (tmp_path / "victimdir").mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


def _victims_untouched(tmp: Path) -> None:
    assert (tmp / "victim").read_text() == ORIGINAL, "the demo wrote through a planted link"
    assert list((tmp / "victimdir").iterdir()) == [], "the demo created files through a planted folder link"


def _demo() -> int:
    return main(["demo", "--isolation", "inprocess", "--steps", "2"])


@pytest.mark.parametrize(
    "door",
    ["source-link", "source-folder-link", "vetted-source-link", "png-link", "out-folder-link", "weights-link",
     "absolute-out"],
)
def test_the_demo_never_writes_through_a_planted_link(world, door, capsys):
    out = world / "cwd" / "demo-output"
    argv_out = None
    if door == "source-link":  # the red team's door
        (out / "malicious_1").mkdir()
        os.symlink("../../../victim", out / "malicious_1" / "pipeline.py")
    elif door == "source-folder-link":
        os.symlink("../../victimdir", out / "malicious_2")
    elif door == "vetted-source-link":
        (out / "pipeline").mkdir()
        os.symlink(world / "victim", out / "pipeline" / "pipeline.py")
    elif door == "png-link":
        os.symlink("../../victim", out / "demo.png")
    elif door == "out-folder-link":
        import shutil

        shutil.move(out / "weights", world / "victimdir-weights")
        out.rmdir()
        os.symlink("../victimdir", world / "cwd" / "demo-output")
    elif door == "weights-link":
        import shutil

        shutil.rmtree(out / "weights")
        os.symlink("../../victimdir", out / "weights")
    else:  # the same planted link, --out spelled absolute
        (out / "malicious_1").mkdir()
        os.symlink("../../../victim", out / "malicious_1" / "pipeline.py")
        argv_out = str(out)
    argv = ["demo", "--isolation", "inprocess", "--steps", "2"] + (["--out", argv_out] if argv_out else [])
    assert main(argv) == 2
    _victims_untouched(world)
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_plain_diffusers_runs_the_pinned_source_not_a_file_swapped_in_after_the_sandbox(world, monkeypatch, capsys):
    import pipewarden

    marker = world / "pwned"
    evil = (
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran unsandboxed')\n"
    )
    real_load = pipewarden.load_pipeline

    def load_then_swap(*args, **kwargs):  # noqa: ANN002, ANN003
        pipe = real_load(*args, **kwargs)
        code = Path(kwargs["custom_pipeline"])
        if code.name == "pipeline":  # the vetted pipeline: swap its file once the sandbox has it
            source = (code / "pipeline.py").read_text()
            (code / "pipeline.py").write_text(evil + source)
        return pipe

    monkeypatch.setattr(pipewarden, "load_pipeline", load_then_swap)
    assert _demo() == 0
    assert not marker.exists(), "plain diffusers ran the file swapped in after the sandbox read it"
    assert "bit-identical: sandboxed" in capsys.readouterr().out
    _victims_untouched(world)


@pytest.mark.slow
def test_the_demo_still_runs_in_a_fresh_folder_and_reuses_its_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    from pipewarden.cli import demo

    calls = []
    real_fit = demo._fit_weights

    def counting_fit(out, weights):  # noqa: ANN001
        calls.append(weights)
        from pipewarden._fixtures import fit_demo_weights

        monkeypatch.setattr("pipewarden._fixtures.fit_demo_weights",
                            lambda d: fit_demo_weights(d, iterations=2))
        return real_fit(out, weights)

    monkeypatch.setattr(demo, "_fit_weights", counting_fit)
    assert _demo() == 0
    assert _demo() == 0
    assert len(calls) == 1  # the second run reuses the weights the first one fitted
    assert (tmp_path / "demo-output" / "demo.png").is_file()
    assert not [p for p in (tmp_path / "demo-output").iterdir() if p.name.startswith(".weights-")]
    assert "bit-identical: sandboxed" in capsys.readouterr().out
