"""Signatures: k-of-n over exactly the files present, expiry with skew, revocation, order of checks."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat

import pytest

from pipewarden.errors import InputError, IntegrityError, NotAllowedError, SignatureError
from pipewarden.registry import signatures as sigmod
from pipewarden.registry._time import EXPIRY_SKEW
from pipewarden.registry.signatures import (
    SIGNATURE_FILE,
    MalformedSignatureFile,
    Reason,
    canonical_manifest,
    sign_dir,
    verify_dir,
    verify_signed_files,
)
from tests._registry_support import (
    FILES_BYTES,
    LATER,
    NOW,
    _isolated_state,  # noqa: F401  (autouse)
    allowlist,
    digests,
    new_key,
    signed,
)

SOURCE = "acme/pipes"
FILES = digests(FILES_BYTES)


@pytest.fixture(scope="module")
def keys():
    return {n: new_key() for n in ("alice", "bob", "carol", "mallory")}


def _reasons(exc: pytest.ExceptionInfo) -> set[Reason]:
    return {r.reason for r in exc.value.rejected}


# -- acceptance --------------------------------------------------------------------------------
def test_two_of_two_accepted(keys):
    allow = allowlist({"alice": keys["alice"], "bob": keys["bob"]}, [("acme/*", ["alice", "bob"], 2)])
    verdict = verify_signed_files(FILES, signed(FILES, keys["alice"], keys["bob"]), allow, SOURCE, now=NOW)
    assert verdict.signers == ("alice", "bob")
    assert verdict.rules[0].pattern == "acme/*"
    assert dict(verdict.manifest) == FILES


def test_source_bound_signature_accepted_for_that_source(keys):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    sig = signed(FILES, keys["alice"], source=SOURCE)
    assert verify_signed_files(FILES, sig, allow, SOURCE, now=NOW).signers == ("alice",)


# -- refusals, named after the attack --------------------------------------------------------------
def test_threshold_not_met(keys):
    allow = allowlist({"alice": keys["alice"], "bob": keys["bob"]}, [("acme/*", ["alice", "bob"], 2)])
    with pytest.raises(SignatureError) as exc:
        verify_signed_files(FILES, signed(FILES, keys["alice"]), allow, SOURCE, now=NOW)
    assert exc.value.reason is Reason.THRESHOLD_NOT_MET
    assert "1 of 2" in str(exc.value)


def test_duplicate_signatures_by_one_key_count_once(keys):
    allow = allowlist({"alice": keys["alice"], "bob": keys["bob"]}, [("acme/*", ["alice", "bob"], 2)])
    first = sigmod.parse_signature_file(signed(FILES, keys["alice"], now=NOW))
    second = sigmod.parse_signature_file(signed(FILES, keys["alice"], now=NOW + dt.timedelta(seconds=5)))
    assert first[0].payload != second[0].payload  # two distinct, individually valid signatures
    both = sigmod._dump_signature_file([*first, *second])
    with pytest.raises(SignatureError) as exc:
        verify_signed_files(FILES, both, allow, SOURCE, now=NOW + dt.timedelta(minutes=1))
    assert Reason.DUPLICATE in _reasons(exc)
    assert "1 of 2" in str(exc.value)


def test_one_signer_under_two_names_is_refused_at_parse(keys):
    with pytest.raises(InputError, match="share one public key"):
        allowlist({"alice": keys["alice"], "alias": keys["alice"]}, [("acme/*", ["alice", "alias"], 2)])


def test_unknown_signer_never_counts(keys):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    with pytest.raises(SignatureError) as exc:
        verify_signed_files(FILES, signed(FILES, keys["mallory"]), allow, SOURCE, now=NOW)
    assert _reasons(exc) == {Reason.UNKNOWN_SIGNER}


def test_unknown_signer_alongside_a_valid_one_does_not_block(keys):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    verdict = verify_signed_files(
        FILES, signed(FILES, keys["mallory"], keys["alice"]), allow, SOURCE, now=NOW
    )
    assert verdict.signers == ("alice",)
    assert [r.reason for r in verdict.rejected] == [Reason.UNKNOWN_SIGNER]


def test_listed_signer_not_accepted_for_this_source(keys):
    allow = allowlist({"alice": keys["alice"], "bob": keys["bob"]}, [("acme/*", ["alice"], 1)])
    with pytest.raises(SignatureError) as exc:
        verify_signed_files(FILES, signed(FILES, keys["bob"]), allow, SOURCE, now=NOW)
    assert Reason.NOT_ACCEPTED in _reasons(exc)


@pytest.mark.parametrize(
    ("minutes_before_expiry", "accepted"),
    [(60, True), (6, True), (4, False), (0, False), (-60, False)],
)
def test_expired_signature_with_conservative_skew(keys, minutes_before_expiry, accepted):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    sig = signed(FILES, keys["alice"], expires=LATER)
    now = LATER - dt.timedelta(minutes=minutes_before_expiry)
    assert EXPIRY_SKEW == dt.timedelta(minutes=5)
    if accepted:
        assert verify_signed_files(FILES, sig, allow, SOURCE, now=now).signers == ("alice",)
    else:
        with pytest.raises(SignatureError) as exc:
            verify_signed_files(FILES, sig, allow, SOURCE, now=now)
        assert _reasons(exc) == {Reason.SIGNATURE_EXPIRED}


def test_expired_signer_in_allowlist(keys):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)], expires={"alice": "2026-11-01"})
    with pytest.raises(SignatureError) as exc:
        verify_signed_files(
            FILES, signed(FILES, keys["alice"], now=NOW - dt.timedelta(days=60)), allow, SOURCE, now=NOW
        )
    assert _reasons(exc) == {Reason.SIGNER_EXPIRED}


def test_revoked_signer(keys):
    allow = allowlist({"alice": keys["alice"], "bob": keys["bob"]}, [("acme/*", ["alice", "bob"], 1)])
    sig = signed(FILES, keys["bob"])
    assert verify_signed_files(FILES, sig, allow, SOURCE, now=NOW).signers == ("bob",)
    revoked = allow.with_revoked("bob", reason="laptop stolen")
    with pytest.raises(SignatureError) as exc:
        verify_signed_files(FILES, sig, revoked, SOURCE, now=NOW)
    assert _reasons(exc) == {Reason.REVOKED}
    assert "laptop stolen" in str(exc.value)


# "ACME/pipes" is not here: the hub resolves ids case-insensitively, so it IS acme/pipes and meets
# the rules written for it (issue 12 flaw 8; tests/registry/test_identity.py).
@pytest.mark.parametrize("source", ["acme/sub/pipes", "acmex/pipes", "other/pipes", "acme", "local:/acme/pipes"])
def test_source_glob_mismatch_is_not_allowed(keys, source):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    with pytest.raises(NotAllowedError) as exc:
        verify_signed_files(FILES, signed(FILES, keys["alice"]), allow, source, now=NOW)
    assert exc.value.reason is Reason.SOURCE_NOT_ALLOWED


def test_double_star_crosses_segments(keys):
    allow = allowlist({"alice": keys["alice"]}, [("local:/srv/**", ["alice"], 1)])
    sig = signed(FILES, keys["alice"])
    assert verify_signed_files(FILES, sig, allow, "local:/srv/a/b", now=NOW).signers == ("alice",)
    with pytest.raises(NotAllowedError):
        verify_signed_files(FILES, sig, allow, "local:/home/a", now=NOW)


def test_every_matching_rule_must_be_met(keys):
    allow = allowlist(
        {"alice": keys["alice"], "bob": keys["bob"]},
        [("acme/*", ["alice", "bob"], 1), ("acme/pipes", ["alice", "bob"], 2)],
    )
    sig = signed(FILES, keys["alice"])
    assert verify_signed_files(FILES, sig, allow, "acme/other", now=NOW).signers == ("alice",)
    with pytest.raises(SignatureError, match="'acme/pipes'"):
        verify_signed_files(FILES, sig, allow, SOURCE, now=NOW)


def test_signature_for_another_source_does_not_count(keys):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    with pytest.raises(SignatureError) as exc:
        verify_signed_files(FILES, signed(FILES, keys["alice"], source="acme/other"), allow, SOURCE, now=NOW)
    assert _reasons(exc) == {Reason.WRONG_SOURCE}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: {**f, "evil.py": "0" * 64}, Reason.EXTRA_FILE),
        (lambda f: {k: v for k, v in f.items() if k != "README.md"}, Reason.MISSING_FILE),
        (lambda f: {**f, "pipeline.py": "f" * 64}, Reason.HASH_MISMATCH),
    ],
    ids=["extra-unsigned-file", "missing-file", "hash-mismatch"],
)
def test_files_differ_from_manifest(keys, change, reason):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    with pytest.raises(IntegrityError) as exc:
        verify_signed_files(change(FILES), signed(FILES, keys["alice"]), allow, SOURCE, now=NOW)
    assert exc.value.reason is reason
    if reason is Reason.HASH_MISMATCH:
        assert FILES["pipeline.py"] in str(exc.value) and "f" * 64 in str(exc.value)


def test_no_signature_file(keys):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    for empty in (None, b""):
        with pytest.raises(SignatureError) as exc:
            verify_signed_files(FILES, empty, allow, SOURCE, now=NOW)
        assert exc.value.reason is Reason.NO_SIGNATURES


def test_empty_allowlist_fails_closed(keys):
    allow = allowlist({})
    with pytest.raises(NotAllowedError):
        verify_signed_files(FILES, signed(FILES, keys["alice"]), allow, SOURCE, now=NOW)


# -- order: signature over exact bytes before the payload is parsed ----------------------------------
def test_payload_is_not_parsed_before_its_signature_verifies(keys, monkeypatch):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    calls = []
    monkeypatch.setattr(
        sigmod, "_parse_payload", lambda p: calls.append(p) or (_ for _ in ()).throw(AssertionError)
    )
    hostile = b'{"files": {"__proto__": 1}, "evil": ' + b"[" * 5000
    env = sigmod._Envelope(keys["alice"].public_key.key_id, hostile, keys["mallory"].sign(hostile))
    with pytest.raises(SignatureError) as exc:
        verify_signed_files(FILES, sigmod._dump_signature_file([env]), allow, SOURCE, now=NOW)
    assert _reasons(exc) == {Reason.BAD_SIGNATURE}
    assert calls == []


def test_validly_signed_but_non_canonical_payload_is_refused(keys):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    k = keys["alice"]
    canonical = canonical_manifest(
        FILES, key_id=k.public_key.key_id, source=None, expires=LATER, signed_at=NOW
    )
    pretty = json.dumps(json.loads(canonical), indent=1, sort_keys=True).encode()
    env = sigmod._Envelope(k.public_key.key_id, pretty, k.sign(pretty))
    with pytest.raises(SignatureError) as exc:
        verify_signed_files(FILES, sigmod._dump_signature_file([env]), allow, SOURCE, now=NOW)
    assert _reasons(exc) == {Reason.MALFORMED_PAYLOAD}


def test_envelope_key_id_must_match_signed_key_id(keys):
    allow = allowlist({"alice": keys["alice"], "bob": keys["bob"]}, [("acme/*", ["alice", "bob"], 2)])
    alice = sigmod.parse_signature_file(signed(FILES, keys["alice"]))[0]
    # bob's envelope claims a payload that alice's key id is inside of: verify uses bob's key -> bad sig
    forged = sigmod._Envelope(keys["bob"].public_key.key_id, alice.payload, alice.sig)
    with pytest.raises(SignatureError) as exc:
        verify_signed_files(FILES, sigmod._dump_signature_file([alice, forged]), allow, SOURCE, now=NOW)
    assert Reason.BAD_SIGNATURE in _reasons(exc)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.replace(b'  "format"', b'\t"format"'),
        lambda s: s.rstrip(b"\n"),
        lambda s: s.replace(b'"format": "pipewarden-signatures/1"', b'"format": "pipewarden-signatures/2"'),
        lambda s: s.replace(b"{", b'{"x": 1, ', 1),
        lambda s: b"\xef\xbb\xbf" + s,
    ],
    ids=["whitespace", "no-final-newline", "format", "extra-key", "bom"],
)
def test_signature_file_layout_is_strict(keys, mutate):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    good = signed(FILES, keys["alice"])
    bad = mutate(good)
    assert bad != good
    with pytest.raises(MalformedSignatureFile) as exc:
        verify_signed_files(FILES, bad, allow, SOURCE, now=NOW)
    assert isinstance(exc.value, SignatureError) and exc.value.exit_code == 2


def test_non_canonical_base64_refused(keys):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    doc = json.loads(signed(FILES, keys["alice"]))
    sig = doc["signatures"][0]["sig"]
    assert sig.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = sig[-3]  # final data char: its 4 low bits are padding
    doc["signatures"][0]["sig"] = sig[:-3] + alphabet[alphabet.index(last) ^ 1] + "=="
    data = (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()
    with pytest.raises(MalformedSignatureFile, match="canonical base64"):
        verify_signed_files(FILES, data, allow, SOURCE, now=NOW)


def test_signing_replaces_own_previous_signature(keys):
    first = signed(FILES, keys["alice"], keys["bob"])
    again = sigmod.sign_files(FILES, keys["alice"], source=None, expires=LATER, now=NOW, existing=first)
    ids = [e.key_id for e in sigmod.parse_signature_file(again)]
    assert sorted(ids) == sorted({keys["alice"].public_key.key_id, keys["bob"].public_key.key_id})


def test_sign_refuses_expiry_in_the_past(keys):
    with pytest.raises(InputError):
        sigmod.sign_files(FILES, keys["alice"], source=None, expires=NOW - dt.timedelta(days=1), now=NOW)
    with pytest.raises(InputError):  # within the skew tolerance counts as past
        sigmod.sign_files(FILES, keys["alice"], source=None, expires=NOW + dt.timedelta(minutes=2), now=NOW)


def test_naive_now_is_caller_misuse(keys):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    with pytest.raises(ValueError):
        verify_signed_files(FILES, signed(FILES, keys["alice"]), allow, SOURCE, now=dt.datetime(2026, 1, 1))


# -- directories ------------------------------------------------------------------------------------
def _write_tree(root, files):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_sign_and_verify_dir_every_regular_file_counts(tmp_path, keys):
    _write_tree(tmp_path, {**FILES_BYTES, ".hidden": b"x"})
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "pipeline.cpython-311.pyc").write_bytes(b"ignored")
    allow = allowlist({"alice": keys["alice"]}, [("local:**", ["alice"], 1)])
    sign_dir(tmp_path, keys["alice"], now=NOW, expires=LATER)
    verdict = verify_dir(tmp_path, allow, f"local:{tmp_path}", now=NOW)
    assert set(verdict.manifest) == {*FILES_BYTES, ".hidden"}
    (tmp_path / ".hidden").write_bytes(b"y")
    with pytest.raises(IntegrityError, match=r"\.hidden"):
        verify_dir(tmp_path, allow, f"local:{tmp_path}", now=NOW)


def test_added_file_after_signing_is_refused(tmp_path, keys):
    _write_tree(tmp_path, FILES_BYTES)
    allow = allowlist({"alice": keys["alice"]}, [("local:**", ["alice"], 1)])
    sign_dir(tmp_path, keys["alice"], now=NOW, expires=LATER)
    (tmp_path / "sub" / "extra.py").write_bytes(b"import os\n")
    with pytest.raises(IntegrityError) as exc:
        verify_dir(tmp_path, allow, "local:x", now=NOW)
    assert exc.value.reason is Reason.EXTRA_FILE and "sub/extra.py" in str(exc.value)


@pytest.mark.parametrize("kind", ["file-symlink", "dir-symlink", "fifo"])
def test_sign_refuses_links_and_special_files_and_writes_nothing(tmp_path, keys, kind):
    _write_tree(tmp_path, FILES_BYTES)
    outside = tmp_path.parent / f"outside-{kind}"
    outside.mkdir(exist_ok=True)
    (outside / "secret").write_bytes(b"secret")
    if kind == "file-symlink":
        os.symlink(outside / "secret", tmp_path / "link")
    elif kind == "dir-symlink":
        os.symlink(outside, tmp_path / "linkdir")
    else:
        os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputError):
        sign_dir(tmp_path, keys["alice"], now=NOW, expires=LATER)
    assert not (tmp_path / SIGNATURE_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_sign_refuses_to_overwrite_a_malformed_signature_file(tmp_path, keys):
    _write_tree(tmp_path, FILES_BYTES)
    (tmp_path / SIGNATURE_FILE).write_bytes(b"not json")
    with pytest.raises(InputError):
        sign_dir(tmp_path, keys["alice"], now=NOW, expires=LATER)
    assert (tmp_path / SIGNATURE_FILE).read_bytes() == b"not json"


def test_signature_file_mode_is_readable(tmp_path, keys):
    _write_tree(tmp_path, FILES_BYTES)
    path = sign_dir(tmp_path, keys["alice"], now=NOW, expires=LATER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_manifest_matches_what_the_loader_reports(tmp_path, keys):
    """The signed file set is exactly ``CodeSource.files`` of the local loader."""
    from pipewarden.loader.local import resolve_local_code

    _write_tree(tmp_path, {**FILES_BYTES, ".hidden": b"x"})
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"ignored")
    sign_dir(tmp_path, keys["alice"], now=NOW, expires=LATER)
    code = resolve_local_code(tmp_path)
    allow = allowlist({"alice": keys["alice"]}, [("local:**", ["alice"], 1)])
    verdict = verify_signed_files(code.files, code.signature_bytes, allow, code.source_id, now=NOW)
    assert dict(verdict.manifest) == dict(code.files)


@pytest.mark.parametrize(
    "name", ["../escape.py", "/abs.py", "a//b.py", "./a.py", "a\\b.py", "bad\udcff.py", ""]
)
def test_hostile_file_names_from_a_listing_are_input_errors(keys, name):
    allow = allowlist({"alice": keys["alice"]}, [("acme/*", ["alice"], 1)])
    with pytest.raises(InputError):
        verify_signed_files({**FILES, name: "0" * 64}, signed(FILES, keys["alice"]), allow, SOURCE, now=NOW)


def test_verify_dir_takes_time_from_the_clock_seam(tmp_path, keys, monkeypatch):
    from pipewarden.registry import _time

    _write_tree(tmp_path, FILES_BYTES)
    allow = allowlist({"alice": keys["alice"]}, [("local:**", ["alice"], 1)])
    sign_dir(tmp_path, keys["alice"], now=NOW, expires=LATER)
    monkeypatch.setattr(_time, "clock", lambda: NOW)
    assert verify_dir(tmp_path, allow, "local:x").signers == ("alice",)
    monkeypatch.setattr(_time, "clock", lambda: LATER)
    with pytest.raises(SignatureError) as exc:
        verify_dir(tmp_path, allow, "local:x")
    assert _reasons(exc) == {Reason.SIGNATURE_EXPIRED}
