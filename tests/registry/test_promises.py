"""Issue 12 flaw 9: promises kept. A locked weights directory holds exactly the locked files (an
extra file is refused, as README.md says), and an allowlist's import_aliases are validated when
the allowlist is loaded, with a clean error, never when code is loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import pipewarden
from pipewarden.cli import main
from pipewarden.errors import InputError, IntegrityError
from pipewarden.registry.allowlist import Allowlist
from pipewarden.registry.lockfile import entry_for_local_code, entry_for_local_weights, write_lock
from tests._registry_support import _isolated_state  # noqa: F401  (autouse)


@pytest.fixture
def locked(tmp_path, tiny_weights, example_pipeline):
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    lock = tmp_path / "pipewarden.lock"
    write_lock(lock, [entry_for_local_code(example_pipeline.parent), entry_for_local_weights(weights)])
    return weights, example_pipeline.parent, lock


def _load(weights: Path, code: Path, lock: Path, isolation: str = "inprocess"):
    return pipewarden.load_pipeline(weights, custom_pipeline=code, trust_remote_code=True, lockfile=lock, isolation=isolation)


EXTRAS = [
    "extra.txt",
    ".hidden",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/notes.json",
    "new_dir/deep/file.bin",
    "scheduler/scheduler_config.json.bak",
]


@pytest.mark.parametrize("extra", EXTRAS)
def test_an_extra_file_in_a_locked_weights_dir_is_refused(locked, extra):
    weights, code, lock = locked
    _load(weights, code, lock)  # the locked directory loads
    path = weights / extra
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"planted")
    with pytest.raises(IntegrityError) as info:
        _load(weights, code, lock)
    assert extra in str(info.value) and "not in the lock file" in str(info.value)


def test_an_extra_file_is_refused_in_process_mode_too(locked):
    weights, code, lock = locked
    (weights / "unet" / "extra.safetensors").write_bytes(b"planted")
    with pytest.raises(IntegrityError, match="unet/extra.safetensors"):
        _load(weights, code, lock, isolation="process")


def test_the_signature_file_never_counts_as_extra(locked):
    weights, code, lock = locked
    (weights / "pipewarden.sig").write_text("{}")
    _load(weights, code, lock)


# --------------------------------------------------------------------------- import_aliases


BAD_ALIASES = [
    ('x = "subprocess"', "subprocess"),
    ('x = "ctypes"', "ctypes"),
    ('x = "importlib"', "importlib"),
    ('x = "no_such_module_anywhere"', "no_such_module_anywhere"),
    ('torch = "diffusers"', "shadow"),
    ('"a.b" = "diffusers"', "a.b"),
]


def _allowlist_text(alias_line: str) -> str:
    return f"version = 1\n[policy.import_aliases]\n{alias_line}\n"


@pytest.mark.parametrize(("line", "named"), BAD_ALIASES)
def test_forbidden_import_alias_is_refused_when_the_allowlist_loads(line, named):
    with pytest.raises(InputError) as info:
        Allowlist.from_bytes(_allowlist_text(line).encode())
    assert named in str(info.value)


@pytest.mark.parametrize(("line", "named"), BAD_ALIASES[:2])
def test_forbidden_import_alias_is_a_clean_error_everywhere(tmp_path, monkeypatch, capsys, tiny_weights, example_pipeline, line, named):
    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "allowlist.toml"
    path.write_text(_allowlist_text(line))
    assert main(["allowlist", "show", str(path)]) == 2
    assert main(["audit", str(example_pipeline), "--allowlist", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and named in err
    with pytest.raises(InputError, match=named):
        pipewarden.load_pipeline(
            tiny_weights, custom_pipeline=example_pipeline, trust_remote_code=True, allowlist=path, isolation="inprocess"
        )


@pytest.mark.parametrize("line", ['MuseVdiffusers = "diffusers"', 'tch = "torch"'])
def test_allowed_import_aliases_still_load(line):
    allow = Allowlist.from_bytes(_allowlist_text(line).encode())
    assert allow.import_aliases
