"""Issue 12 flaw 8: identity. Trust is matched against the hub's canonical id, signatures are
bound to a source by default, rollback is keyed by the allowlist's own identity (the path as
named), and a trust file others can write is refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import pipewarden
from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE
from pipewarden.cli import main
from pipewarden.errors import PipewardenError, SignatureError
from pipewarden.registry.signatures import SIGNATURE_FILE
from tests._registry_support import _isolated_state, allowlist, new_key  # noqa: F401  (autouse)
from tests.fakehub import FakeHub, use_fake_hub

SOURCE = EXAMPLE_PIPELINE_SOURCE.encode()


@pytest.mark.parametrize("spelling", ["acme/critical", "acme/Critical", "ACME/CRITICAL", "Acme/cRiTiCaL"])
def test_every_spelling_of_a_hub_id_meets_the_narrow_rule(spelling):
    keys = {"a": new_key(), "b": new_key()}
    allow = allowlist(keys, [("acme/*", ["a"], 1), ("acme/critical", ["a", "b"], 2)])
    rules = allow.rules_for(spelling)
    assert {r.pattern for r in rules} == {"acme/*", "acme/critical"}


def test_local_paths_stay_case_sensitive():
    keys = {"a": new_key()}
    allow = allowlist(keys, [("local:/srv/Pipes/**", ["a"], 1)])
    assert allow.rules_for("local:/srv/Pipes/x")
    assert not allow.rules_for("local:/srv/pipes/x")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as h:
        use_fake_hub(monkeypatch, h, tmp_path)
        h.add_commit("acme/critical", {"pipeline.py": SOURCE})
        yield h


@pytest.mark.parametrize("spelling", ["acme/Critical", "ACME/critical"])
def test_hub_code_is_identified_by_the_hubs_spelling(hub, spelling):
    from pipewarden.loader.hub import resolve_code

    code = resolve_code(spelling, kind="hub")
    assert code.source_id == "acme/critical"


@pytest.mark.parametrize("spelling", ["acme/Critical", "ACME/CRITICAL"])
def test_other_spelling_cannot_skip_a_2_of_2_rule_end_to_end(hub, spelling, tiny_weights):
    """Signed by one of the two reviewers the narrow rule needs: refused whatever the spelling."""
    from pipewarden.registry.signatures import sign_files

    a, b = new_key(), new_key()
    allow = allowlist({"a": a, "b": b}, [("acme/*", ["a"], 1), ("acme/critical", ["a", "b"], 2)])
    files = {"pipeline.py": hashlib.sha256(SOURCE).hexdigest()}
    sig = sign_files(files, a, source=None)
    hub.add_commit("acme/critical", {"pipeline.py": SOURCE, SIGNATURE_FILE: sig})
    with pytest.raises(SignatureError, match="1 of 2|2"):
        pipewarden.load_pipeline(
            tiny_weights, custom_pipeline=spelling, trust_remote_code=True, allowlist=allow, isolation="inprocess"
        )


# --------------------------------------------------------------------------- sign binds by default


@pytest.fixture
def signer(tmp_path):
    keys = tmp_path / "keys"
    assert main(["keygen", "--name", "alice", "--out", str(keys)]) == 0
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "pipeline.py").write_text("# pipeline\n")
    allow = tmp_path / "org.toml"
    assert main(["allowlist", "add-signer", str(allow), "--name", "alice", "--public-key", str(keys / "alice.pub")]) == 0
    assert main(["allowlist", "allow", str(allow), "--source", "**", "--signers", "alice", "--threshold", "1"]) == 0
    return keys / "alice.key", pipe, allow


def test_sign_binds_to_the_directory_by_default(signer, tmp_path, capsys):
    key, pipe, allow = signer
    assert main(["sign", str(pipe), "--key", str(key)]) == 0
    assert "valid for any source" not in capsys.readouterr().out
    assert main(["verify", str(pipe), "--allowlist", str(allow), "--source", f"local:{pipe.resolve()}"]) == 0
    # the same signed files elsewhere, or claimed as a hub repo, do not count
    assert main(["verify", str(pipe), "--allowlist", str(allow), "--source", "evil/copy"]) == 1
    assert main(["verify", str(pipe), "--allowlist", str(allow), "--source", f"local:{tmp_path}/copy"]) == 1


def test_sign_any_source_is_explicit(signer, capsys):
    key, pipe, allow = signer
    assert main(["sign", str(pipe), "--key", str(key), "--any-source"]) == 0
    assert "valid for any source" in capsys.readouterr().out
    assert main(["verify", str(pipe), "--allowlist", str(allow), "--source", "acme/anything"]) == 0


def test_sign_source_and_any_source_conflict(signer):
    key, pipe, _ = signer
    assert main(["sign", str(pipe), "--key", str(key), "--any-source", "--source", "a/b"]) == 2
    assert not (pipe / SIGNATURE_FILE).exists()


# --------------------------------------------------------------------------- rollback identity


def _text(version: int) -> str:
    key = new_key()
    return (
        f'version = {version}\n[[signers]]\nname = "alice"\npublic_key = "{key.public_key.text}"\n'
        '[[sources]]\npattern = "local:**"\nsigners = ["alice"]\nthreshold = 1\n'
    )


@pytest.mark.parametrize("swap", ["file-link", "dir-link"])
def test_rollback_through_a_swapped_link_is_refused(tmp_path, monkeypatch, swap):
    from pipewarden.errors import IntegrityError
    from pipewarden.registry.allowlist import Allowlist

    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(tmp_path / "state"))
    new, old = tmp_path / "v7", tmp_path / "v3"
    for d, v in ((new, 7), (old, 3)):
        d.mkdir()
        (d / "allowlist.toml").write_text(_text(v))
    if swap == "file-link":
        named = tmp_path / "allowlist.toml"
        os.symlink(new / "allowlist.toml", named)
        Allowlist.load(named)
        os.unlink(named)
        os.symlink(old / "allowlist.toml", named)
    else:
        os.symlink(new, tmp_path / "current")
        named = tmp_path / "current" / "allowlist.toml"
        Allowlist.load(named)
        os.unlink(tmp_path / "current")
        os.symlink(old, tmp_path / "current")
    with pytest.raises(IntegrityError, match="version 3"):
        Allowlist.load(named)


def test_writable_allowlist_refused_by_the_cli_and_the_loader(tmp_path, monkeypatch, tiny_weights):
    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "allowlist.toml"
    path.write_text(_text(1))
    os.chmod(path, 0o666)
    assert main(["allowlist", "show", str(path)]) != 0
    assert main(["verify", str(tmp_path), "--allowlist", str(path), "--source", "x/y"]) != 0
    with pytest.raises(PipewardenError, match="written by others"):
        pipewarden.load_pipeline(
            tiny_weights, custom_pipeline=Path(__file__), trust_remote_code=True, allowlist=path, isolation="inprocess"
        )
    os.chmod(path, 0o644)
    assert main(["allowlist", "show", str(path)]) == 0
