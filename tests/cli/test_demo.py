"""``pipewarden demo``: three refusals with their rules, a bit-identical comparison, a PNG."""

from __future__ import annotations

import pytest

from pipewarden.cli import main


@pytest.mark.parametrize("steps", ["0", "-3", "x"])
def test_steps_are_validated(capsys, steps, tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--steps", steps]) == 2
    err = capsys.readouterr().err
    assert "--steps" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # refused before doing anything


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["process", "inprocess"])
def test_demo_shows_refusals_bit_identity_and_a_png(tmp_path, capsys, isolation):
    from PIL import Image

    from pipewarden._fixtures import fit_demo_weights

    fit_demo_weights(tmp_path / "weights", iterations=2)  # the demo reuses fitted weights
    assert main(["demo", "--out", str(tmp_path), "--steps", "3", "--isolation", isolation]) == 0
    out = capsys.readouterr().out
    stopped = [line for line in out.splitlines() if line.strip().startswith("[stopped")]
    assert len(stopped) == 3
    rules = [line for line in out.splitlines() if line.strip().startswith("PolicyViolation [")]
    assert len(rules) == 3 and len({r.split("[")[1].split("]")[0] for r in rules}) == 3  # three different rules
    assert "NOT STOPPED" not in out
    assert "bit-identical: sandboxed" in out
    png = tmp_path / "demo.png"
    with Image.open(png) as img:
        assert img.size == (256, 256)


@pytest.mark.slow
def test_one_step_is_bit_identical_too(tmp_path, capsys):
    """The seed's one-step path draws its noise from torch's global RNG: both runs are seeded."""
    from pipewarden._fixtures import fit_demo_weights

    fit_demo_weights(tmp_path / "weights", iterations=2)
    assert main(["demo", "--out", str(tmp_path), "--steps", "1", "--isolation", "process"]) == 0
    out = capsys.readouterr().out
    assert "bit-identical: sandboxed" in out and "DIFFERENT" not in out


def test_the_demo_picture_is_a_smiley_not_noise():
    """The pattern the UNet is fitted to: a yellow face on blue, dark eyes (not random pixels)."""
    import numpy as np

    from pipewarden._fixtures import draw_smiley

    arr = np.array(draw_smiley(16)).astype(int)
    assert arr[0, 0, 2] > 120 and arr[0, 0, 0] < 60  # blue corner
    assert arr[8, 4, 0] > 200 and arr[8, 4, 1] > 150  # yellow face
    assert arr[6, 5].sum() < 250 and arr[6, 10].sum() < 250  # two dark eyes
