"""Red team 9H F17: the shipped GitHub Actions recipe must list every pipeline file a change can
alter. Its "List changed pipeline files" step runs here, as written, in a scratch git repository:
a PR that turns a reviewed ``style.py`` into a symlink to a ``.txt`` file (a type change, which
``--diff-filter=ACMR`` dropped), a later PR that edits only that ``.txt``, and a file whose name
git would C-quote."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipewarden.audit.static import audit_paths

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "examples" / "ci" / "github-actions.yml"
CLEAN = "from diffusers import DiffusionPipeline\n\n\nclass StylePipeline(DiffusionPipeline):\n    pass\n"
EVIL = "import subprocess\n" + CLEAN + "\nsubprocess.run('id', shell=True)\n"

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("bash") is None,
                                reason="needs git and bash")


def _workflow() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def _step(name: str) -> str:
    [step] = [s for s in _workflow()["jobs"]["audit"]["steps"] if s.get("name") == name]
    return step["run"]


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


def _listed(repo: Path, base: str, head: str) -> list[str]:
    """Run the list step as GitHub would (expressions substituted), return the files it lists."""
    values = {"github.event_name": "pull_request", "github.event.pull_request.base.sha": base,
              "github.event.before": base, "github.sha": head}
    script = re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: values[m.group(1)], _step("List changed pipeline files"))
    output = repo / "gh_output"
    output.write_text("")
    subprocess.run(["bash", "-e", "-c", script], cwd=repo, check=True, capture_output=True,
                   env={**os.environ, "GITHUB_OUTPUT": str(output)})
    listed = [p for p in (repo / "changed.lst").read_bytes().decode().split("\0") if p]
    assert f"count={len(listed)}" in output.read_text()
    (repo / "changed.lst").unlink()
    return listed


def test_the_workflow_runs_on_every_change():
    on = _workflow().get("on") or _workflow().get(True)  # YAML 1.1 reads the key `on` as True
    for event in ("pull_request", "push"):
        assert not (on.get(event) or {}).get("paths"), "a paths filter skips changes to a link's target"


def test_a_pipeline_turned_into_a_symlink_and_its_target_are_listed(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pipelines" / "data").mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "pipelines" / "style.py").write_text(CLEAN)
    (repo / "pipelines" / "data" / "style_impl.txt").write_text("notes\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    base = _git(repo, "rev-parse", "HEAD").strip()

    # PR 1: style.py becomes a link to the .txt, which now holds the payload (a type change, T)
    (repo / "pipelines" / "data" / "style_impl.txt").write_text(EVIL)
    (repo / "pipelines" / "style.py").unlink()
    os.symlink("data/style_impl.txt", repo / "pipelines" / "style.py")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "pr1")
    head = _git(repo, "rev-parse", "HEAD").strip()
    assert "T\tpipelines/style.py" in _git(repo, "diff", "--name-status", base, head)
    listed = _listed(repo, base, head)
    assert listed == ["pipelines/style.py"]
    report = audit_paths([repo / p for p in listed])
    assert report.exit_code == 1  # the audit of what was listed fails the job

    # PR 2: only the link's target changes; the link is still audited
    (repo / "pipelines" / "data" / "style_impl.txt").write_text(EVIL + "\n# more\n")
    _git(repo, "commit", "-qam", "pr2")
    assert _listed(repo, head, _git(repo, "rev-parse", "HEAD").strip()) == ["pipelines/style.py"]


def test_names_git_would_quote_are_listed_as_they_are(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "README").write_text("x\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    base = _git(repo, "rev-parse", "HEAD").strip()
    name = "pipé line\t1.py"
    (repo / name).write_text(EVIL)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "pr")
    assert _listed(repo, base, _git(repo, "rev-parse", "HEAD").strip()) == [name]
