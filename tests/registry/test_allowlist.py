"""Allowlist files: strict parsing, policy settings, CLI-free editing, rollback protection, keys."""

from __future__ import annotations

import dataclasses
import json
import os
import stat

import pytest

from pipewarden.errors import InputError, IntegrityError
from pipewarden.registry import keys as keymod
from pipewarden.registry._state import VersionStore
from pipewarden.registry.allowlist import Allowlist, empty_allowlist
from pipewarden.registry.keys import PublicKey, generate_keypair, load_signing_key
from tests._registry_support import (
    _isolated_state,  # noqa: F401  (autouse)
    allowlist,
    new_key,
)

ALICE = new_key()
BOB = new_key()


def _toml(body: str) -> bytes:
    return body.encode()


GOOD = f"""
version = 7

[policy]
required_isolation = "process"

[policy.extra_modules]
einops = ["rearrange", "repeat"]

[policy.import_aliases]
MuseVdiffusers = "diffusers"

[[signers]]
name = "alice"
public_key = "{ALICE.public_key.text}"
expires = 2027-01-01

[[signers]]
name = "bob"
public_key = "{BOB.public_key.text}"
expires = 2027-01-01T12:00:00+02:00

[[sources]]
pattern = "acme/*"
signers = ["alice", "bob"]
threshold = 2
"""


def test_parses_into_frozen_objects():
    a = Allowlist.from_bytes(_toml(GOOD))
    assert a.version == 7
    assert a.required_isolation == "process"
    assert dict(a.extra_modules) == {"einops": ("rearrange", "repeat")}
    assert dict(a.import_aliases) == {"MuseVdiffusers": "diffusers"}
    assert a.signer_named("bob").expires.isoformat() == "2027-01-01T10:00:00+00:00"
    assert a.sources[0].threshold == 2 and a.sources[0].signers == ("alice", "bob")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.version = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.extra_modules["os"] = ("system",)  # type: ignore[index]


def test_round_trips_through_writer():
    a = Allowlist.from_bytes(_toml(GOOD))
    b = Allowlist.from_bytes(a.to_toml().encode())
    assert (b.version, b.signers, b.sources, b.policy) == (a.version, a.signers, a.sources, a.policy)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("", "missing key"),
        ("version = 0", "version"),
        ("version = true", "version"),
        ('version = "1"', "version"),
        ("version = 1\nsigner = []", "unknown key"),
        ('version = 1\n[policy]\nrequired_isolation = "none"', "required_isolation"),
        ("version = 1\n[policy]\nsandbox = false", "unknown key"),
        ('version = 1\n[policy.extra_modules]\nos = ["_exit"]', "attribute name"),
        ('version = 1\n[policy.extra_modules]\nos = ["*"]', "attribute name"),
        ('version = 1\n[policy.extra_modules]\n"os;x" = ["a"]', "module name"),
        ('version = 1\n[[signers]]\nname = "a b"\npublic_key = "ed25519:AAAA"', "not valid"),
        ('version = 1\n[[signers]]\nname = "a"\npublic_key = "ed25519:AAAA"', "bytes, not 32"),
        ('version = 1\n[[signers]]\nname = "a"\npublic_key = "rsa:AAAA"', "ed25519"),
        (
            f'version = 1\n[[signers]]\nname = "a"\npublic_key = "{ALICE.public_key.text}"\nexpires = 2027-01-01T00:00:00',
            "time zone",
        ),
        (
            f'version = 1\n[[signers]]\nname = "a"\npublic_key = "{ALICE.public_key.text}"\ncolour = 1',
            "unknown key",
        ),
        (
            'version = 1\n[[sources]]\npattern = "acme/*"\nsigners = ["ghost"]\nthreshold = 1',
            "unknown signer",
        ),
        (
            f'version = 1\n[[signers]]\nname = "a"\npublic_key = "{ALICE.public_key.text}"\n'
            '[[sources]]\npattern = "acme/*"\nsigners = ["a"]\nthreshold = 2',
            "threshold",
        ),
        (
            f'version = 1\n[[signers]]\nname = "a"\npublic_key = "{ALICE.public_key.text}"\n'
            '[[sources]]\npattern = "acme/*"\nsigners = ["a"]\nthreshold = 0',
            "threshold",
        ),
        (
            f'version = 1\n[[signers]]\nname = "a"\npublic_key = "{ALICE.public_key.text}"\n'
            '[[sources]]\npattern = "acme/[ab]"\nsigners = ["a"]\nthreshold = 1',
            "pattern",
        ),
        (
            f'version = 1\n[[signers]]\nname = "a"\npublic_key = "{ALICE.public_key.text}"\n'
            f'[[revoked]]\nname = "b"\npublic_key = "{ALICE.public_key.text}"',
            "revoked key",
        ),
        ("version = 1\nversion = 2", "TOML"),
        ("\xff", "UTF-8"),
    ],
)
def test_strict_validation_refuses(body, match):
    data = body.encode("latin-1") if body == "\xff" else body.encode()
    with pytest.raises(InputError, match=match):
        Allowlist.from_bytes(data)


def test_empty_allowlist_allows_nothing():
    a = Allowlist.from_bytes(b"version = 1\n")
    assert a.rules_for("acme/pipes") == () and a.rules_for("local:/x") == ()


def test_isolation_policy_ordering():
    pol = Allowlist.from_bytes(_toml(GOOD)).policy
    assert pol.allows_isolation("process") and not pol.allows_isolation("inprocess")
    assert not pol.allows_isolation("bogus")
    lax = Allowlist.from_bytes(b'version = 1\n[policy]\nrequired_isolation = "inprocess"\n').policy
    assert lax.allows_isolation("process") and lax.allows_isolation("inprocess")


def test_edits_bump_version_and_revalidate():
    a = empty_allowlist().with_signer("alice", ALICE.public_key)
    assert a.version == 1
    a = a.with_signer("bob", BOB.public_key).with_rule("acme/*", ["alice", "bob"], 2)
    assert a.version == 3
    with pytest.raises(InputError, match="not in the allowlist"):
        a.with_rule("x/*", ["carol"], 1)
    with pytest.raises(InputError, match="threshold"):
        a.with_rule("x/*", ["alice"], 2)
    r = a.with_revoked("bob", reason="left")
    assert r.version == 4 and r.signer_named("bob") is None and r.revoked[0].name == "bob"
    assert r.sources[0].signers == ("alice", "bob")  # the rule still names bob: he now counts as revoked
    with pytest.raises(InputError, match="revoked"):
        r.with_signer("bob2", BOB.public_key)  # a revoked key cannot come back under a new name
    with pytest.raises(InputError, match="already listed"):
        r.with_signer("alias", ALICE.public_key)


# -- rollback protection ------------------------------------------------------------------------------
def test_version_rollback_refused_with_state_in_cache_dir(tmp_path, monkeypatch):
    state_dir = tmp_path / "state"
    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(state_dir))
    path = tmp_path / "org.toml"
    v1 = allowlist({"alice": ALICE}, [("acme/*", ["alice"], 1)], version=1).to_toml().encode()
    v2 = allowlist({"alice": ALICE}, [("acme/*", ["alice"], 1)], version=2).to_toml().encode()
    path.write_bytes(v1)
    assert Allowlist.load(path).version == 1
    path.write_bytes(v2)
    assert Allowlist.load(path).version == 2
    recorded = json.loads((state_dir / "state.json").read_text())["allowlist_versions"]
    assert list(recorded.values()) == [2]
    path.write_bytes(v1)
    with pytest.raises(IntegrityError, match="version 1, but version 2 was seen"):
        Allowlist.load(path)
    assert json.loads((state_dir / "state.json").read_text())["allowlist_versions"] == recorded  # not lowered
    # The explicit opt-out is keyword-only and named unsafe_.
    assert Allowlist.load(path, unsafe_skip_rollback_check=True).version == 1


def test_rollback_state_is_per_file(tmp_path):
    store = VersionStore(tmp_path / "state")
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_bytes(b"version = 5\n")
    b.write_bytes(b"version = 1\n")
    Allowlist.load(a, version_store=store)
    assert Allowlist.load(b, version_store=store).version == 1


def test_corrupt_state_fails_closed(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text("[1, 2")
    f = tmp_path / "a.toml"
    f.write_bytes(b"version = 1\n")
    with pytest.raises(InputError, match="state file"):
        Allowlist.load(f, version_store=VersionStore(state))
    (state / "state.json").write_text('["not", "a", "dict"]')
    with pytest.raises(InputError, match="state file"):
        Allowlist.load(f, version_store=VersionStore(state))


def test_state_dir_resolution(monkeypatch, tmp_path):
    from pipewarden.registry._state import default_state_dir

    assert default_state_dir({"PIPEWARDEN_STATE_DIR": "/x"}).as_posix() == "/x"
    assert default_state_dir({"XDG_CACHE_HOME": "/c"}).as_posix() == "/c/pipewarden"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_state_dir({}) == tmp_path / ".cache" / "pipewarden"


# -- keys ---------------------------------------------------------------------------------------------
def test_keygen_writes_0600_private_key_and_pasteable_public_key(tmp_path):
    old = os.umask(0)
    try:
        key, pub = generate_keypair("alice", tmp_path / "keys")
    finally:
        os.umask(old)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    text = pub.read_text()
    assert text.count("\n") == 1 and text.startswith("ed25519:")
    assert PublicKey.from_text(text) == load_signing_key(key).public_key


def test_keygen_creates_the_key_0600_exclusively_from_the_first_instant(tmp_path, monkeypatch):
    calls = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **kw):
        calls.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(keymod.os, "open", spy)
    key, _ = generate_keypair("alice", tmp_path)
    ((path, flags, mode),) = [c for c in calls if c[0] == str(key)]
    assert flags & os.O_CREAT and flags & os.O_EXCL and flags & os.O_NOFOLLOW
    assert mode == 0o600


def test_keygen_never_overwrites(tmp_path):
    key, _ = generate_keypair("alice", tmp_path)
    before = key.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        generate_keypair("alice", tmp_path)
    assert key.read_bytes() == before


def test_keygen_refuses_a_planted_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    os.symlink(target, tmp_path / "alice.key")
    with pytest.raises(InputError):
        generate_keypair("alice", tmp_path)
    assert not target.exists()


def test_private_key_readable_by_others_is_refused(tmp_path):
    key, pub = generate_keypair("alice", tmp_path)
    os.chmod(key, 0o644)
    with pytest.raises(InputError, match="chmod 600"):
        load_signing_key(key)
    os.chmod(key, 0o600)
    os.chmod(pub, 0o600)
    with pytest.raises(InputError, match="not an unencrypted PEM private key"):
        load_signing_key(pub)  # a .pub file is not a private key (mode fine, content wrong)


def test_public_key_text_is_strict():
    good = ALICE.public_key.text
    assert PublicKey.from_text(f"  {good}\n") == ALICE.public_key
    for bad in ("", "ed25519:", good[:-2], good + "A", "ED25519:" + good[8:], good.replace("=", "")):
        with pytest.raises(InputError):
            PublicKey.from_text(bad)


def test_signing_key_never_shows_material():
    k = new_key()
    assert "PRIVATE" not in repr(k)
    with pytest.raises(TypeError):
        __import__("pickle").dumps(k)


@pytest.mark.parametrize(
    ("pattern", "source", "expected"),
    [
        ("acme/*", "acme/pipes", True),
        ("acme/*", "acme/a/b", False),
        ("acme/*", "acmex/pipes", False),
        ("local:**", "local:/a/b/c", True),
        ("local:/srv/**", "local:/srvx", False),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("*", "x/y", False),
        ("**", "x/y", True),
        ("org/repo", "org/repo", True),
        ("org/repo", "org/repo2", False),
        ("one_step_*", "one_step_unet", True),
        ("acme/*", "ACME/pipes", False),
    ],
)
def test_glob_semantics(pattern, source, expected):
    from pipewarden.registry.allowlist import glob_match

    assert glob_match(pattern, source) is expected


def test_pathological_pattern_matches_quickly():
    import time

    from pipewarden.registry.allowlist import glob_match

    t = time.perf_counter()
    assert glob_match("*a" * 120 + "b", "a" * 2000) is False
    assert time.perf_counter() - t < 5


def test_an_allowlist_without_required_isolation_demands_the_worker():
    """Issue 12: the worker is the security boundary, so an allowlist that says nothing requires it."""
    from pipewarden.registry.allowlist import AllowlistPolicy, _parse_policy

    assert _parse_policy({}, "policy").required_isolation == "process"
    assert not _parse_policy({}, "policy").allows_isolation("inprocess")
    assert _parse_policy({"required_isolation": "inprocess"}, "policy").allows_isolation("inprocess")
    assert AllowlistPolicy().required_isolation == "process"
