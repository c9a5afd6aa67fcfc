"""Red team 9H F7: ``audit --output`` follows no planted folder link, whatever the path's spelling.

The folder-link check used to run only for relative paths, so ``$PWD/repo/reports/audit.txt``
(as CI scripts write ``$GITHUB_WORKSPACE/...``) with ``repo/reports -> ../victim`` overwrote
``victim/audit.txt``. The rule now (``fsaccess._output_folder``) is the same for every spelling:
a symlinked folder is followed only on the way down to the current directory (a link above it
that leads to it or to another folder above it); in or below the current directory, and off the
way to it, every folder must be real. Families: relative vs absolute, ``.``/``//``/``..``
spellings, link depth, absolute vs relative link targets, links that climb back up, trees
outside the current directory. Each test checks the victim file is unchanged and nothing new was
written beside it, not just the exit code; the legitimate spellings still write the report.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._registry_support import _isolated_state  # noqa: F401  (autouse)

ORIGINAL = "ORIGINAL\n"


@pytest.fixture
def world(tmp_path, monkeypatch) -> Path:
    """tmp/work (the current directory) holds repo/ (the audited tree); tmp/victim holds a file."""
    work = tmp_path / "work"
    repo = work / "repo"
    repo.mkdir(parents=True)
    (repo / "a.py").write_text("x = 1\n")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "audit.txt").write_text(ORIGINAL)
    monkeypatch.chdir(work)
    return tmp_path


def _audit(out: str) -> int:
    from pipewarden.cli import main

    return main(["audit", "--no-cache", "repo/a.py", "--output", out])


def _victim_untouched(tmp: Path) -> None:
    victim = tmp / "victim"
    assert (victim / "audit.txt").read_text() == ORIGINAL, "the report overwrote a file outside the tree"
    assert sorted(p.name for p in victim.iterdir()) == ["audit.txt"], "the report was created outside the tree"


def _spell(tmp: Path, how: str, rel: str) -> str:
    work = tmp / "work"
    return {
        "relative": rel,
        "dot-relative": "./" + rel.replace("/", "/./"),
        "absolute": f"{work}/{rel}",
        "double-slash": f"{work}//{rel.replace('/', '//')}",
        "dotdot-absolute": f"{work}/repo/../{rel}",
        "dotdot-relative": f"repo/../{rel}",
        "through-parent": f"../work/{rel}",
    }[how]


SPELLINGS = ["relative", "dot-relative", "absolute", "double-slash", "dotdot-absolute", "dotdot-relative",
             "through-parent"]


@pytest.mark.parametrize("how", SPELLINGS)
@pytest.mark.parametrize(
    "plant",
    ["depth1-relative", "depth1-absolute-target", "depth2", "climbs-to-tmp", "climbs-to-cwd-parent", "chain"],
)
def test_a_planted_folder_link_is_refused_whatever_the_spelling(world, how, plant, capsys):
    repo = world / "work" / "repo"
    victim = world / "victim"
    if plant == "depth1-relative":  # the red team's door
        os.symlink("../../victim", repo / "reports")
        rel = "repo/reports/audit.txt"
    elif plant == "depth1-absolute-target":
        os.symlink(victim, repo / "reports")
        rel = "repo/reports/audit.txt"
    elif plant == "depth2":
        (repo / "ci").mkdir()
        os.symlink("../../../victim", repo / "ci" / "reports")
        rel = "repo/ci/reports/audit.txt"
    elif plant == "climbs-to-tmp":  # a link that leads to a folder above the current directory
        os.symlink("../..", repo / "up")
        rel = "repo/up/victim/audit.txt"
    elif plant == "climbs-to-cwd-parent":
        os.symlink("..", repo / "up")
        rel = "repo/up/../victim/audit.txt"
    else:  # a real folder, then a link to a link
        (repo / "out").mkdir()
        os.symlink("../../../victim", repo / "hop")
        os.symlink("../hop", repo / "out" / "reports")
        rel = "repo/out/reports/audit.txt"
    rc = _audit(_spell(world, how, rel))
    assert rc == 2
    _victim_untouched(world)
    assert "symlink" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_a_planted_link_in_a_tree_outside_the_current_directory_is_refused(world, how):
    other = world / "other"
    other.mkdir()
    os.symlink("../victim", other / "reports")
    out = f"{other}/reports/audit.txt" if how == "absolute" else "../other/reports/audit.txt"
    assert _audit(out) == 2
    _victim_untouched(world)


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_the_report_file_itself_as_a_link_is_refused_whatever_the_spelling(world, how):
    repo = world / "work" / "repo"
    os.symlink(world / "victim" / "audit.txt", repo / "audit.txt")
    assert _audit(f"{repo}/audit.txt" if how == "absolute" else "repo/audit.txt") == 2
    _victim_untouched(world)


# --------------------------------------------------------------------------- what still works


@pytest.mark.parametrize("how", SPELLINGS)
def test_real_folders_get_the_report_whatever_the_spelling(world, how):
    (world / "work" / "repo" / "reports").mkdir()
    assert _audit(_spell(world, how, "repo/reports/audit.txt")) == 1  # a.py has a PW010 finding
    assert "PW010" in (world / "work" / "repo" / "reports" / "audit.txt").read_text()
    _victim_untouched(world)


def test_a_real_folder_outside_the_current_directory_gets_the_report(world):
    out = world / "elsewhere" / "audit.txt"
    out.parent.mkdir()
    assert _audit(str(out)) == 1
    assert "PW010" in out.read_text()


def test_a_link_above_the_current_directory_that_leads_to_it_is_followed(world):
    """Like /home -> /usr/home: the user works below it, so it is theirs, not the tree's."""
    os.symlink("work", world / "alias")
    (world / "work" / "repo" / "reports").mkdir()
    assert _audit(f"{world}/alias/repo/reports/audit.txt") == 1
    assert "PW010" in (world / "work" / "repo" / "reports" / "audit.txt").read_text()


def test_a_link_above_the_current_directory_still_cannot_reach_a_planted_one(world):
    os.symlink("work", world / "alias")
    os.symlink("../../victim", world / "work" / "repo" / "reports")
    assert _audit(f"{world}/alias/repo/reports/audit.txt") == 2
    _victim_untouched(world)


def test_a_link_above_the_current_directory_that_leads_elsewhere_is_refused(world):
    """A link off the way to the current directory is not known to be the user's."""
    os.symlink("victim", world / "alias")
    assert _audit(f"{world}/alias/audit.txt") == 2
    _victim_untouched(world)
