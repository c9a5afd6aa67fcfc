"""load_pipeline with an organisation allowlist and a lock file: enforced at the exec site."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import pipewarden
from pipewarden.errors import IntegrityError, NotAllowedError, SignatureError
from pipewarden.registry.lockfile import entry_for_local_code, entry_for_local_weights, write_lock
from pipewarden.registry.signatures import sign_dir
from tests._registry_support import _isolated_state, allowlist, new_key  # noqa: F401  (autouse fixture)


@pytest.fixture
def signed_pipeline(tmp_path, example_pipeline):
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(example_pipeline, code / "pipeline.py")
    alice, bob = new_key(), new_key()
    sign_dir(code, alice)
    sign_dir(code, bob)
    return code, alice, bob


def _load(weights, code, **kw):
    return pipewarden.load_pipeline(weights, custom_pipeline=code, trust_remote_code=True, isolation="inprocess", **kw)


def test_two_of_two_signatures_pin_the_code(tiny_weights, signed_pipeline, example_pipeline):
    code, alice, bob = signed_pipeline
    allow = allowlist({"alice": alice, "bob": bob}, [("local:**", ["alice", "bob"], 2)])
    gates: list[str] = []
    pipe = _load(tiny_weights, code, allowlist=allow, on_gate=lambda g, v: gates.append(g))
    assert "allowlist" in gates and "sha256 pin" not in gates
    torch.manual_seed(0)
    out = pipe()
    plain = _load(tiny_weights, example_pipeline, pipeline_sha256=pipewarden.loader.digests.sha256_file(example_pipeline))
    torch.manual_seed(0)
    assert torch.equal(out, plain())


def test_threshold_not_met_is_refused_before_exec(tiny_weights, signed_pipeline, monkeypatch):
    code, alice, bob = signed_pipeline
    carol = new_key()
    allow = allowlist({"alice": alice, "carol": carol}, [("local:**", ["alice", "carol"], 2)])
    import pipewarden.sandbox as sb

    monkeypatch.setattr(sb, "load_class", lambda *a, **k: pytest.fail("compiled despite refusal"))
    with pytest.raises(SignatureError):
        _load(tiny_weights, code, allowlist=allow)


def test_file_added_after_signing_is_refused(tiny_weights, signed_pipeline):
    code, alice, bob = signed_pipeline
    (code / "helper.py").write_text("x = 1\n")
    allow = allowlist({"alice": alice, "bob": bob}, [("local:**", ["alice", "bob"], 1)])
    with pytest.raises(IntegrityError):
        _load(tiny_weights, code, allowlist=allow)


def test_source_not_in_allowlist(tiny_weights, signed_pipeline):
    code, alice, bob = signed_pipeline
    allow = allowlist({"alice": alice}, [("acme/*", ["alice"], 1)])
    with pytest.raises(NotAllowedError):
        _load(tiny_weights, code, allowlist=allow)


def test_allowlist_from_env(tiny_weights, signed_pipeline, tmp_path, monkeypatch):
    code, alice, bob = signed_pipeline
    allow_file = tmp_path / "allow.toml"
    allow_file.write_text(
        f'version = 1\n[[signers]]\nname = "alice"\npublic_key = "{alice.public_key.text}"\n'
        '[[sources]]\npattern = "acme/*"\nsigners = ["alice"]\nthreshold = 1\n'
    )
    monkeypatch.setenv("PIPEWARDEN_ALLOWLIST", str(allow_file))
    with pytest.raises(NotAllowedError):
        _load(tiny_weights, code, pipeline_sha256=pipewarden.loader.digests.sha256_file(code / "pipeline.py"))


def test_required_isolation_is_a_minimum(tiny_weights, signed_pipeline):
    code, alice, bob = signed_pipeline
    allow = allowlist({"alice": alice}, [("local:**", ["alice"], 1)], policy='[policy]\nrequired_isolation = "process"')
    with pytest.raises(NotAllowedError) as info:
        _load(tiny_weights, code, allowlist=allow)
    assert "process" in str(info.value)


def test_lockfile_replaces_the_pin_and_catches_weight_tampering(tiny_weights, example_pipeline, tmp_path):
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    lock = tmp_path / "pipewarden.lock"
    write_lock(lock, [entry_for_local_code(example_pipeline.parent), entry_for_local_weights(weights)])
    pipe = _load(weights, example_pipeline.parent, lockfile=lock)
    torch.manual_seed(0)
    assert pipe().shape == (1, 3, 8, 8)
    f = weights / "scheduler" / "scheduler_config.json"
    f.write_text(f.read_text().replace("0.02", "0.03"))
    with pytest.raises(IntegrityError) as info:
        _load(weights, example_pipeline.parent, lockfile=lock)
    assert "scheduler/scheduler_config.json" in str(info.value)


def test_lockfile_without_entry_for_this_code(tiny_weights, example_pipeline, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(example_pipeline, other / "pipeline.py")
    lock = tmp_path / "pipewarden.lock"
    write_lock(lock, [entry_for_local_code(other), entry_for_local_weights(tiny_weights)])
    with pytest.raises(IntegrityError):
        _load(tiny_weights, example_pipeline.parent, lockfile=lock)


@pytest.mark.slow
def test_allowlist_required_layers_are_parsed_and_checked(tiny_weights, signed_pipeline):
    from pipewarden.errors import InputError
    from pipewarden.isolation import LAYER_NAMES
    from pipewarden.registry.allowlist import KNOWN_LAYERS

    assert set(KNOWN_LAYERS) == set(LAYER_NAMES)
    code, alice, bob = signed_pipeline
    with pytest.raises(InputError):
        allowlist({"alice": alice}, [("local:**", ["alice"], 1)], policy='[policy]\nrequired_isolation = "process"\nrequired_layers = ["moat"]')
    with pytest.raises(InputError):
        allowlist(
            {"alice": alice},
            [("local:**", ["alice"], 1)],
            policy='[policy]\nrequired_isolation = "inprocess"\nrequired_layers = ["seccomp"]',
        )
    allow = allowlist(
        {"alice": alice},
        [("local:**", ["alice"], 1)],
        policy='[policy]\nrequired_isolation = "process"\nrequired_layers = ["seccomp", "landlock-fs", "env"]',
    )
    assert allow.policy.required_layers == ("env", "landlock-fs", "seccomp")
    with pipewarden.load_pipeline(tiny_weights, custom_pipeline=code, trust_remote_code=True, allowlist=allow) as pipe:
        active = {s.name for s in pipe.layers if s.active}
        assert {"seccomp", "landlock-fs", "env"} <= active
        torch.manual_seed(0)
        assert pipe().shape == (1, 3, 8, 8)


@pytest.mark.slow
def test_process_mode_with_allowlist_and_lockfile_end_to_end(tiny_weights, signed_pipeline, example_pipeline, tmp_path):
    """The default isolation with allowlist= (signatures pin the code; its policy demands the
    process mode and layers) and lockfile= (pins every weight, re-verified in the worker)."""
    code, alice, bob = signed_pipeline
    allow = allowlist(
        {"alice": alice, "bob": bob},
        [("local:**", ["alice", "bob"], 2)],
        policy='[policy]\nrequired_isolation = "process"\nrequired_layers = ["env"]',
    )
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    lock = tmp_path / "pipewarden.lock"
    write_lock(lock, [entry_for_local_code(code), entry_for_local_weights(weights)])
    gates: list[str] = []
    pipe = pipewarden.load_pipeline(
        weights, custom_pipeline=code, trust_remote_code=True, allowlist=allow, lockfile=lock,
        on_gate=lambda g, v: gates.append(g),
    )
    try:
        assert pipe.worker_pid != os.getpid()
        torch.manual_seed(0)
        out = pipe(generator=torch.Generator().manual_seed(1), num_inference_steps=2)
    finally:
        pipe.close()
    assert {"allowlist", "lock file", "weights lock", "worker"} <= set(gates)
    plain = _load(tiny_weights, example_pipeline, pipeline_sha256=pipewarden.loader.digests.sha256_file(example_pipeline))
    torch.manual_seed(0)
    assert torch.equal(out, plain(generator=torch.Generator().manual_seed(1), num_inference_steps=2))
    # a weight changed after locking: the worker, which hashes what it loads, refuses it
    f = weights / "scheduler" / "scheduler_config.json"
    f.write_text(f.read_text().replace("0.02", "0.03"))
    with pytest.raises(IntegrityError, match="scheduler/scheduler_config.json"):
        pipewarden.load_pipeline(weights, custom_pipeline=code, trust_remote_code=True, allowlist=allow, lockfile=lock)
    # one file added to the signed, locked code directory: refused before anything runs
    (code / "helper.py").write_text("x = 1\n")
    with pytest.raises(IntegrityError):
        pipewarden.load_pipeline(weights, custom_pipeline=code, trust_remote_code=True, allowlist=allow, lockfile=lock)
