"""The registry commands end to end through ``pipewarden.cli.main``: exit codes 0 / 1 / 2."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipewarden.cli import main
from pipewarden.registry.signatures import SIGNATURE_FILE
from tests._registry_support import _isolated_state  # noqa: F401  (autouse)


@pytest.fixture
def org(tmp_path, monkeypatch):
    """Keys for alice and bob, an allowlist needing both for local:**, and a pipeline dir."""
    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(tmp_path / "state"))
    keys = tmp_path / "keys"
    assert main(["keygen", "--name", "alice", "--out", str(keys)]) == 0
    assert main(["keygen", "--name", "bob", "--out", str(keys)]) == 0
    allow = tmp_path / "org.toml"
    assert (
        main(
            [
                "allowlist",
                "add-signer",
                str(allow),
                "--name",
                "alice",
                "--public-key",
                str(keys / "alice.pub"),
            ]
        )
        == 0
    )
    pub = (keys / "bob.pub").read_text().strip()
    assert main(["allowlist", "add-signer", str(allow), "--name", "bob", "--public-key", pub]) == 0
    assert (
        main(
            [
                "allowlist",
                "allow",
                str(allow),
                "--source",
                "local:**",
                "--signers",
                "alice,bob",
                "--threshold",
                "2",
            ]
        )
        == 0
    )
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "pipeline.py").write_text("# pipeline\n")
    return tmp_path, keys, allow, pipe


def test_walkthrough_exit_codes(org, capsys):
    tmp_path, keys, allow, pipe = org
    assert stat.S_IMODE((keys / "alice.key").stat().st_mode) == 0o600
    src = f"local:{pipe}"
    assert main(["verify", str(pipe), "--allowlist", str(allow), "--source", src]) == 1  # unsigned
    assert main(["sign", str(pipe), "--key", str(keys / "alice.key")]) == 0
    capsys.readouterr()
    assert main(["verify", str(pipe), "--allowlist", str(allow), "--source", src]) == 1  # 1 of 2
    assert "1 of 2" in capsys.readouterr().err
    assert main(["sign", str(pipe), "--key", str(keys / "bob.key"), "--expires", "2099-01-01"]) == 0
    assert main(["verify", str(pipe), "--allowlist", str(allow), "--source", src]) == 0
    out = capsys.readouterr().out
    assert "alice, bob" in out
    assert main(["verify", str(pipe), "--allowlist", str(allow), "--source", "acme/pipes"]) == 1
    assert "NotAllowedError" in capsys.readouterr().err
    (pipe / "pipeline.py").write_text("import os\n")
    assert main(["verify", str(pipe), "--allowlist", str(allow), "--source", src]) == 1
    err = capsys.readouterr().err
    assert "IntegrityError" in err and "pipeline.py" in err and "Traceback" not in err


def test_revoke_via_cli(org, capsys):
    tmp_path, keys, allow, pipe = org
    for k in ("alice", "bob"):
        assert main(["sign", str(pipe), "--key", str(keys / f"{k}.key")]) == 0
    assert main(["allowlist", "revoke", str(allow), "--name", "bob", "--reason", "left"]) == 0
    assert "can no longer be met" in capsys.readouterr().err
    assert main(["verify", str(pipe), "--allowlist", str(allow), "--source", f"local:{pipe}"]) == 1
    assert "revoked-signer" in capsys.readouterr().err
    assert main(["allowlist", "show", str(allow)]) == 0
    assert "version 4" in capsys.readouterr().out


def test_rollback_via_cli(org, capsys):
    tmp_path, keys, allow, pipe = org
    v3 = allow.read_bytes()
    assert (
        main(
            [
                "allowlist",
                "add-signer",
                str(allow),
                "--name",
                "carol",
                "--public-key",
                str(keys / "alice.pub"),
            ]
        )
        == 2
    )  # same key under a second name: refused, input error
    main(["keygen", "--name", "carol", "--out", str(keys)])
    assert (
        main(
            [
                "allowlist",
                "add-signer",
                str(allow),
                "--name",
                "carol",
                "--public-key",
                str(keys / "carol.pub"),
            ]
        )
        == 0
    )
    allow.write_bytes(v3)
    capsys.readouterr()
    assert main(["allowlist", "show", str(allow)]) == 1
    assert "rollback" in capsys.readouterr().err


def test_lock_cli(org, tiny_weights, capsys):
    tmp_path, keys, allow, pipe = org
    out = tmp_path / "pipewarden.lock"
    assert (
        main(["lock", "--weights", str(tiny_weights), "--custom-pipeline", str(pipe), "--out", str(out)]) == 0
    )
    text = out.read_text()
    # local sources are written relative to the lock file's directory
    assert f'source = "local:{os.path.relpath(pipe, tmp_path)}"' in text and "diffusion_pytorch_model.safetensors" in text
    assert main(["lock", "--out", str(out)]) == 2
    assert main(["lock", "--custom-pipeline", "no/such/path.py", "--out", str(out)]) == 2
    assert out.read_text() == text


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "{pipe}", "--allowlist", "{tmp}/missing.toml", "--source", "x"],
        ["verify", "{tmp}/nodir", "--allowlist", "{allow}", "--source", "x"],
        ["verify", "{pipe}", "--source", "x"],
        ["sign", "{pipe}", "--key", "{keys}/alice.pub"],
        ["sign", "{pipe}", "--key", "{keys}/alice.key", "--expires", "2020-01-01"],
        ["sign", "{pipe}", "--key", "{keys}/alice.key", "--expires", "tomorrow"],
        ["keygen", "--name", "../evil", "--out", "{keys}"],
        ["allowlist", "allow", "{allow}", "--source", "x/*", "--signers", "alice", "--threshold", "two"],
        ["allowlist", "allow", "{allow}", "--source", "x/*", "--signers", "alice", "--threshold", "3"],
        ["allowlist", "add-signer", "{allow}", "--name", "dave", "--public-key", "ed25519:nope"],
        ["allowlist", "revoke", "{allow}", "--name", "nobody"],
        ["allowlist"],
    ],
)
def test_unusable_input_exits_2(org, argv, capsys):
    tmp_path, keys, allow, pipe = org
    before = allow.read_bytes()
    args = [a.format(pipe=pipe, tmp=tmp_path, allow=allow, keys=keys) for a in argv]
    assert main(args) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert allow.read_bytes() == before
    assert not (pipe / SIGNATURE_FILE).exists()


@settings(max_examples=30, deadline=None)
@given(garbage=st.binary(max_size=300), which=st.sampled_from(["allowlist", "signature"]))
def test_garbage_files_exit_2_never_traceback(tmp_path_factory, garbage, which):
    import contextlib
    import io
    import os
    from unittest import mock

    d = tmp_path_factory.mktemp("g")
    pipe = d / "pipe"
    pipe.mkdir()
    (pipe / "pipeline.py").write_text("x = 1\n")
    allow = d / "org.toml"
    allow.write_bytes(
        b'version = 1\n[[sources]]\npattern = "x"\nsigners = ["a"]\nthreshold = 1\n'
        b'[[signers]]\nname = "a"\npublic_key = "ed25519:' + b"A" * 43 + b'="\n'
    )
    if which == "allowlist":
        allow.write_bytes(garbage)
    else:
        (pipe / SIGNATURE_FILE).write_bytes(garbage)
    err = io.StringIO()
    state = {"PIPEWARDEN_STATE_DIR": str(d / "state")}
    with (
        mock.patch.dict(os.environ, state),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        rc = main(["verify", str(pipe), "--allowlist", str(allow), "--source", "x"])
    assert rc in (1, 2) and "Traceback" not in err.getvalue()
    if which == "signature" and garbage:
        assert rc == 2


def test_edit_of_a_rolled_back_allowlist_is_refused_before_writing(org, capsys):
    tmp_path, keys, allow, pipe = org
    v3 = allow.read_bytes()
    assert main(["allowlist", "policy", str(allow), "--required-isolation", "process"]) == 0
    allow.write_bytes(v3)
    assert main(["allowlist", "revoke", str(allow), "--name", "bob"]) == 1
    assert allow.read_bytes() == v3


def test_recreated_allowlist_continues_above_the_version_seen(org):
    tmp_path, keys, allow, pipe = org
    allow.unlink()
    assert (
        main(
            [
                "allowlist",
                "add-signer",
                str(allow),
                "--name",
                "alice",
                "--public-key",
                str(keys / "alice.pub"),
            ]
        )
        == 0
    )
    assert "version = 4" in allow.read_text()
    assert main(["allowlist", "show", str(allow)]) == 0


def test_policy_cli(org, capsys):
    from pipewarden.registry.allowlist import Allowlist

    tmp_path, keys, allow, pipe = org
    argv = [
        "allowlist",
        "policy",
        str(allow),
        "--required-isolation",
        "process",
        "--extra-module",
        "einops=rearrange,repeat",
        "--import-alias",
        "MuseVdiffusers=diffusers",
    ]
    assert main(argv) == 0
    a = Allowlist.load(allow)
    assert a.required_isolation == "process" and dict(a.extra_modules) == {"einops": ("rearrange", "repeat")}
    assert dict(a.import_aliases) == {"MuseVdiffusers": "diffusers"}
    assert (
        main(["allowlist", "policy", str(allow), "--extra-module", "einops=", "--required-isolation", "none"])
        == 0
    )
    a = Allowlist.load(allow)
    assert a.required_isolation == "inprocess" and dict(a.extra_modules) == {} and a.version == 5
    before = allow.read_bytes()
    assert main(["allowlist", "policy", str(allow), "--extra-module", "os=_exit"]) == 2
    assert main(["allowlist", "policy", str(allow)]) == 2
    assert allow.read_bytes() == before


def test_lock_refuses_to_overwrite_a_garbage_lock(org, tiny_weights):
    tmp_path, keys, allow, pipe = org
    out = tmp_path / "pipewarden.lock"
    out.write_bytes(b"\x00garbage")
    assert main(["lock", "--custom-pipeline", str(pipe), "--out", str(out)]) == 2
    assert out.read_bytes() == b"\x00garbage"
