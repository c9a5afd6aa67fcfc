"""CLI polish: help everywhere, advice that works, validated sources, notes instead of surprises."""

from __future__ import annotations

import argparse
import os
import shutil

import pytest

from pipewarden.cli import EXIT_CODES_HELP, build_parser, main


def _walk(parser: argparse.ArgumentParser, path: str = "pipewarden"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def test_every_command_and_option_has_help():
    missing = []
    for path, parser in _walk(build_parser()):
        if path != "pipewarden" and not parser.description:
            missing.append(f"{path}: no description")
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if not choice.help:
                        missing.append(f"{path} {choice.dest}: no help")
                continue
            if not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}: no help")
    assert missing == []


def test_top_level_help_lists_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert EXIT_CODES_HELP.splitlines()[0] in out
    for code in ("0 ", "1 ", "2 ", "130", "141"):
        assert f"  {code}" in out


def test_sign_with_a_public_key_says_to_use_the_private_key(tmp_path, capsys):
    assert main(["keygen", "--name", "alice", "--out", str(tmp_path / "keys")]) == 0
    pub = tmp_path / "keys" / "alice.pub"
    os.chmod(pub, 0o644)
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "pipeline.py").write_text("x = 1\n")
    capsys.readouterr()
    assert main(["sign", str(tmp_path / "pipe"), "--key", str(pub)]) == 2
    err = capsys.readouterr().err
    assert "chmod" not in err
    assert "public key" in err and "alice.key" in err
    assert not (tmp_path / "pipe" / "pipewarden.sig").exists()


def test_a_readable_private_key_still_gets_the_chmod_advice(tmp_path, capsys):
    assert main(["keygen", "--name", "bob", "--out", str(tmp_path)]) == 0
    key = tmp_path / "bob.key"
    os.chmod(key, 0o644)
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "pipeline.py").write_text("x = 1\n")
    capsys.readouterr()
    assert main(["sign", str(tmp_path / "pipe"), "--key", str(key)]) == 2
    assert f"chmod 600 {key}" in capsys.readouterr().err
    os.chmod(key, 0o600)  # and the advice works
    assert main(["sign", str(tmp_path / "pipe"), "--key", str(key)]) == 0


def test_bad_expires_quotes_the_formats_the_help_gives(tmp_path, capsys):
    assert main(["keygen", "--name", "carol", "--out", str(tmp_path)]) == 0
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "pipeline.py").write_text("x = 1\n")
    capsys.readouterr()
    assert main(["sign", str(tmp_path / "pipe"), "--key", str(tmp_path / "carol.key"), "--expires", "tomorrow"]) == 2
    err = capsys.readouterr().err
    assert "YYYY-MM-DD (start of that day, UTC) or YYYY-MM-DDTHH:MM:SSZ" in err
    sign_help = next(p for path, p in _walk(build_parser()) if path == "pipewarden sign").format_help()
    assert "YYYY-MM-DD (start of that day, UTC) or" in " ".join(sign_help.split())


@pytest.mark.parametrize("bad", ["local:my_pipeline", "not a source", "community:bad-name!", "a/b/c"])
def test_source_values_are_validated(tmp_path, capsys, bad):
    assert main(["keygen", "--name", "dave", "--out", str(tmp_path)]) == 0
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "pipeline.py").write_text("x = 1\n")
    capsys.readouterr()
    assert main(["sign", str(tmp_path / "pipe"), "--key", str(tmp_path / "dave.key"), "--source", bad]) == 2
    assert not (tmp_path / "pipe" / "pipewarden.sig").exists()
    assert "--source" in capsys.readouterr().err


def test_source_values_map_to_the_ids_loads_use(tmp_path, monkeypatch):
    from pipewarden.cli._common import source_id_arg

    (tmp_path / "pipe").mkdir()
    monkeypatch.chdir(tmp_path)
    assert source_id_arg("acme/pipes") == "acme/pipes"
    assert source_id_arg("community:one_step_unet") == "one_step_unet"
    assert source_id_arg("pipe") == f"local:{(tmp_path / 'pipe').resolve()}"
    assert source_id_arg("local:pipe") == f"local:{(tmp_path / 'pipe').resolve()}"
    assert source_id_arg(f"local:{tmp_path}/pipe") == f"local:{(tmp_path / 'pipe').resolve()}"


def test_replacing_your_own_signature_says_so(tmp_path, capsys):
    assert main(["keygen", "--name", "erin", "--out", str(tmp_path)]) == 0
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "pipeline.py").write_text("x = 1\n")
    key = str(tmp_path / "erin.key")
    assert main(["sign", str(tmp_path / "pipe"), "--key", key]) == 0
    assert "replaced" not in capsys.readouterr().err
    assert main(["sign", str(tmp_path / "pipe"), "--key", key, "--source", "acme/pipes"]) == 0
    err = capsys.readouterr().err
    # `sign` binds to the directory's own local: id by default (issue 12 flaw 8)
    assert "replaced your earlier signature (for source 'local:" in err


def test_audit_with_no_paths_is_a_clean_run_with_a_note(capsys, tmp_path):
    assert main(["audit"]) == 0
    assert "no paths given" in capsys.readouterr().err
    out = tmp_path / "report.sarif"
    assert main(["audit", "--format", "sarif", "--output", str(out)]) == 0
    assert out.is_file()


def test_local_lock_entries_are_relative_and_match_another_checkout(tmp_path, capsys):
    import pipewarden
    from pipewarden._fixtures import build_weights, write_example_pipeline
    from pipewarden.loader.digests import sha256_file

    laptop = tmp_path / "laptop" / "repo"
    build_weights(laptop / "weights", seed=1)
    code = write_example_pipeline(laptop / "pipeline")
    lock = laptop / "pipewarden.lock"
    assert main(["lock", "--weights", str(laptop / "weights"), "--custom-pipeline", str(laptop / "pipeline"),
                 "--out", str(lock)]) == 0
    text = lock.read_text()
    assert 'source = "local:weights"' in text and 'source = "local:pipeline"' in text
    assert str(tmp_path) not in text
    ci = tmp_path / "ci" / "checkout"
    shutil.copytree(laptop, ci)
    pipe = pipewarden.load_pipeline(
        str(ci / "weights"), custom_pipeline=str(ci / "pipeline"), trust_remote_code=True,
        pipeline_sha256=sha256_file(code), lockfile=str(ci / "pipewarden.lock"), isolation="inprocess",
    )
    assert pipe(num_inference_steps=1).shape == (1, 3, 8, 8)
    # a changed file in the checkout is still refused
    from pipewarden.errors import IntegrityError

    (ci / "weights" / "scheduler" / "scheduler_config.json").write_text("{}\n")
    with pytest.raises(IntegrityError):
        pipewarden.load_pipeline(
            str(ci / "weights"), custom_pipeline=str(ci / "pipeline"), trust_remote_code=True,
            pipeline_sha256=sha256_file(code), lockfile=str(ci / "pipewarden.lock"), isolation="inprocess",
        )


def test_old_absolute_lock_entries_are_still_read(tmp_path):
    from pipewarden.registry import _toml
    from pipewarden.registry.lockfile import _HEADER, LockEntry, Lockfile  # noqa: F401

    doc = {"format": "pipewarden-lock/1", "entries": [
        {"source": f"local:{tmp_path}/w", "role": "weights", "files": {"a.json": "0" * 64}}]}
    data = _toml.dumps(doc, header=_HEADER).encode()
    (tmp_path / "sub").mkdir()
    lock_path = tmp_path / "sub" / "pipewarden.lock"
    lock_path.write_bytes(data)
    lock = Lockfile.load(lock_path)
    assert lock.entry_for(f"local:{tmp_path}/w", "weights") is not None
    assert lock.to_toml().encode() == data  # and written back unchanged


def test_a_named_command_builds_only_its_own_parser_with_the_same_help():
    """``pipewarden audit ...`` imports only the audit command's module (start-up time counts in
    the audit's throughput); the parser it gets is the one the full parser holds for that name."""
    from pipewarden.cli import _COMMAND_MODULES, _COMMAND_OF

    full = dict(_walk(build_parser()))
    for command, module in _COMMAND_OF.items():
        assert module in _COMMAND_MODULES
        only = dict(_walk(build_parser(command)))
        assert f"pipewarden {command}" in only
        for path, parser in only.items():
            if path != "pipewarden":
                assert path in full
                assert parser.format_help() == full[path].format_help(), path
        # the module really registers that command (a renamed command cannot go stale here)
        sub = argparse.ArgumentParser(prog="pipewarden").add_subparsers()
        __import__(module, fromlist=["add_parsers"]).add_parsers(sub)
        assert command in sub.choices
    # anything else (a typo, --help) gets every command, so its errors list them all
    assert dict(_walk(build_parser("audt"))).keys() == full.keys()
    assert dict(_walk(build_parser(None))).keys() == full.keys()


def test_audit_usage_errors_are_unchanged_by_the_short_parser(capsys):
    assert main(["audit", "--format", "xml", "x.py"]) == 2
    short = capsys.readouterr().err
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["audit", "--format", "xml", "x.py"])
    assert capsys.readouterr().err == short
    assert "usage: pipewarden audit" in short
