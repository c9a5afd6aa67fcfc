"""Red team 9H F11: an allowlist another user can change is refused, whatever its mode bits say.

A 0644 allowlist *owned by another user* was accepted (only the group/other write bits were
checked); its owner rewrote it and the victim's next ``verify`` trusted her pipeline. Now the
allowlist must be owned by the user or root, and sit in a folder no other user may write
(unless sticky and owned by the user or root). Each refusal is checked for its absence of
effect: no rollback record is written, the CLI exits non-zero, the loader refuses.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipewarden.cli import main
from pipewarden.errors import PipewardenError
from tests._registry_support import _isolated_state, new_key  # noqa: F401  (autouse)

OTHER_UID = 4321


def _text(version: int) -> str:
    key = new_key()
    return (
        f'version = {version}\n[[signers]]\nname = "alice"\npublic_key = "{key.public_key.text}"\n'
        '[[sources]]\npattern = "local:**"\nsigners = ["alice"]\nthreshold = 1\n'
    )


def _owned_by_another_user(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` another user's: chown as root, else run as if this process were another uid."""
    if os.geteuid() == 0:
        os.chown(path, OTHER_UID, -1)
    else:
        me = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: me + 1)


def _fake_folder_owner(folder: Path, monkeypatch: pytest.MonkeyPatch, uid: int) -> None:
    real_stat = os.stat

    def fake(path, *args, **kwargs):  # noqa: ANN001
        st = real_stat(path, *args, **kwargs)
        if not args and not kwargs and os.fspath(path) == str(folder):
            fields = list(st)
            fields[stat.ST_UID] = uid
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(os, "stat", fake)


@pytest.fixture
def state(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(d))
    return d


def _refused_everywhere(path: Path, state: Path, tmp_path: Path) -> None:
    from pipewarden.registry.allowlist import Allowlist

    with pytest.raises(PipewardenError, match="written by others|replaced by others") as exc:
        Allowlist.load(path)
    assert exc.value.rule == "allowlist.writable"
    assert main(["allowlist", "show", str(path)]) == 2
    assert main(["verify", str(tmp_path), "--allowlist", str(path), "--source", "x/y"]) == 2
    assert not (state / "state.json").exists(), "a refused allowlist left a rollback record"


def test_an_allowlist_owned_by_another_user_is_refused(tmp_path, monkeypatch, state):
    shared = tmp_path / "shared"
    shared.mkdir()
    path = shared / "org.toml"
    path.write_text(_text(1))
    os.chmod(path, 0o644)
    _owned_by_another_user(path, monkeypatch)
    _refused_everywhere(path, state, tmp_path)


def test_an_allowlist_in_a_folder_others_may_write_is_refused(tmp_path, state):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    path = shared / "org.toml"
    path.write_text(_text(1))
    os.chmod(path, 0o644)
    _refused_everywhere(path, state, tmp_path)


def test_an_allowlist_in_a_folder_another_user_owns_is_refused(tmp_path, monkeypatch, state):
    """The folder's owner can rename anything in it, sticky or not."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1755)
    path = shared / "org.toml"
    path.write_text(_text(1))
    os.chmod(path, 0o644)
    _fake_folder_owner(shared, monkeypatch, OTHER_UID if os.geteuid() != OTHER_UID else OTHER_UID + 1)
    _refused_everywhere(path, state, tmp_path)


def test_an_allowlist_reached_through_a_link_is_judged_where_it_lives(tmp_path, state):
    """A private link to a file in a folder others may write is still a file others may replace."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    (shared / "org.toml").write_text(_text(1))
    os.chmod(shared / "org.toml", 0o644)
    mine = tmp_path / "mine"
    mine.mkdir()
    os.symlink(shared / "org.toml", mine / "org.toml")
    _refused_everywhere(mine / "org.toml", state, tmp_path)


@pytest.mark.parametrize("folder_mode", [0o755, 0o700, 0o1777])
def test_own_allowlists_in_private_or_sticky_folders_still_load(tmp_path, state, folder_mode):
    from pipewarden.registry.allowlist import Allowlist

    folder = tmp_path / "conf"
    folder.mkdir()
    os.chmod(folder, folder_mode)
    path = folder / "org.toml"
    path.write_text(_text(1))
    os.chmod(path, 0o644)
    assert Allowlist.load(path).version == 1
    assert main(["allowlist", "show", str(path)]) == 0

