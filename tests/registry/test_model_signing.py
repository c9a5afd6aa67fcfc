"""Issue 16 part 3: OpenSSF model-signing signatures as allowlist evidence.

A pipeline directory (code + a weights file) is signed with the real ``model-signing`` library and
CLI using a key generated here; pipewarden verifies it (``pipewarden verify``, ``verify_dir``,
``load_pipeline`` in both isolation modes), counts it toward k-of-n thresholds next to
pipewarden's own Ed25519 signatures, and refuses the same tampering as its own format.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import model_signing
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

import pipewarden
from pipewarden._fixtures import write_example_pipeline
from pipewarden.cli import main
from pipewarden.errors import InputError, IntegrityError, NotAllowedError, PipewardenError, SignatureError
from pipewarden.registry import modelsign
from pipewarden.registry.allowlist import Allowlist
from pipewarden.registry.keys import generate_keypair
from pipewarden.registry.lockfile import entry_for_local_code
from pipewarden.registry.modelsign import ModelSigningKey
from pipewarden.registry.signatures import Reason, sign_dir, verify_dir
from tests._registry_support import _isolated_state  # noqa: F401  (autouse)
from tests.registry._fake_sigstore import FakeSigstore, statement_for

UTC = dt.timezone.utc


# -- helpers ---------------------------------------------------------------------------------
def ec_keypair(directory: Path, name: str, curve: ec.EllipticCurve | None = None) -> tuple[Path, Path]:
    """A model-signing key pair (PEM), as `openssl ecparam -genkey` would write it."""
    private = ec.generate_private_key(curve or ec.SECP256R1())
    key = directory / f"{name}.pem"
    pub = directory / f"{name}.pub.pem"
    key.write_bytes(private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    pub.write_bytes(private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return key, pub


def ms_sign(model: Path, private_key: Path, signature: Path | None = None, *, hashing=None) -> Path:
    """Sign ``model`` with the model-signing library (its default configuration)."""
    signature = signature or model / "model.sig"
    config = model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key)
    if hashing is not None:
        config = config.set_hashing_config(hashing)
    config.sign(model, signature)
    return signature


def ms_text(pub: Path) -> str:
    return ModelSigningKey.from_pem(pub.read_bytes()).text


def allowlist_text(signers: dict[str, str], rules, *, extra: str = "") -> str:
    lines = ["version = 1", "[policy]", 'required_isolation = "inprocess"']
    for name, entry in signers.items():
        lines += ["[[signers]]", f'name = "{name}"', entry]
    lines.append(extra)
    for pattern, names, k in rules:
        quoted = ", ".join(f'"{n}"' for n in names)
        lines += ["[[sources]]", f'pattern = "{pattern}"', f"signers = [{quoted}]", f"threshold = {k}"]
    return "\n".join(lines) + "\n"


def ms_entry(pub: Path, *, expires: str | None = None) -> str:
    return f'model_signing_key = "{ms_text(pub)}"' + (f"\nexpires = {expires}" if expires else "")


def pw_entry(pub: Path) -> str:
    return f'public_key = "{pub.read_text().strip()}"'


def write_allowlist(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


@pytest.fixture
def model(tmp_path) -> Path:
    """A pipeline directory with code, config and a (tiny) weights file."""
    d = tmp_path / "pipe"
    write_example_pipeline(d)
    (d / "README.md").write_text("# a pipeline\n")
    (d / "weights").mkdir()
    (d / "weights" / "unet.safetensors").write_bytes(os.urandom(256))
    (d / "weights" / "config.json").write_text('{"in_channels": 3}\n')
    (d / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    return d


@pytest.fixture
def keys(tmp_path):
    kd = tmp_path / "keys"
    kd.mkdir()
    return kd


def _source(d: Path) -> str:
    return f"local:{d.resolve()}"


def _al(text: str) -> Allowlist:
    return Allowlist.from_bytes(text.encode(), origin="<test>")


# -- accepted ----------------------------------------------------------------------------------
def test_a_directory_signed_with_the_model_signing_cli_verifies(model, keys, tmp_path, capsys):
    priv, pub = ec_keypair(keys, "ml")
    proc = subprocess.run(
        [sys.executable, "-m", "model_signing", "sign", "key", str(model), "--private_key", str(priv),
         "--signature", str(model / "model.sig")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    path = write_allowlist(tmp_path / "org.toml", allowlist_text({"ml": ms_entry(pub)}, [("local:**", ["ml"], 1)]))
    assert main(["verify", str(model), "--allowlist", str(path), "--source", str(model)]) == 0
    assert "signed by ml" in capsys.readouterr().out
    # and the same bytes, one byte changed, are refused by the same command
    (model / "pipeline.py").write_bytes((model / "pipeline.py").read_bytes() + b"#")
    assert main(["verify", str(model), "--allowlist", str(path), "--source", str(model)]) == 1
    assert "pipeline.py" in capsys.readouterr().err


def test_the_library_signature_verifies_and_the_verdict_lists_the_signer(model, keys):
    priv, pub = ec_keypair(keys, "ml")
    ms_sign(model, priv)
    verdict = verify_dir(model, _al(allowlist_text({"ml": ms_entry(pub)}, [("**", ["ml"], 1)])), _source(model))
    assert verdict.signers == ("ml",)
    assert set(verdict.manifest) == {"pipeline.py", "README.md", "weights/unet.safetensors",
                                     "weights/config.json", ".gitattributes"}


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_every_curve_model_signing_supports_verifies(model, keys, curve):
    priv, pub = ec_keypair(keys, "ml", curve)
    ms_sign(model, priv)
    assert verify_dir(model, _al(allowlist_text({"ml": ms_entry(pub)}, [("**", ["ml"], 1)])), _source(model)).signers == ("ml",)


@pytest.mark.parametrize("order", ["pipewarden-first", "model-signing-first"])
def test_two_of_two_counts_one_pipewarden_and_one_model_signing_signature(model, keys, order):
    priv, pub = ec_keypair(keys, "ml")
    pw_key, pw_pub = generate_keypair("alice", keys)
    text = allowlist_text({"alice": pw_entry(pw_pub), "ml": ms_entry(pub)}, [("local:**", ["alice", "ml"], 2)])
    allow = _al(text)
    if order == "pipewarden-first":
        sign_dir(model, pw_key, source=_source(model))
        with pytest.raises(SignatureError, match="1 of 2"):
            verify_dir(model, allow, _source(model))
        ms_sign(model, priv)  # its manifest lists pipewarden.sig: a signature file, never content
    else:
        ms_sign(model, priv)
        with pytest.raises(SignatureError, match="1 of 2"):
            verify_dir(model, allow, _source(model))
        sign_dir(model, pw_key, source=_source(model))  # model.sig is not in pipewarden's manifest
    assert verify_dir(model, allow, _source(model)).signers == ("alice", "ml")


def test_two_model_signing_signers_use_named_signature_files(model, keys):
    a_priv, a_pub = ec_keypair(keys, "a")
    b_priv, b_pub = ec_keypair(keys, "b")
    ms_sign(model, a_priv)
    ms_sign(model, b_priv, model / "bob.model.sig")
    allow = _al(allowlist_text({"a": ms_entry(a_pub), "b": ms_entry(b_pub)}, [("**", ["a", "b"], 2)]))
    assert verify_dir(model, allow, _source(model)).signers == ("a", "b")
    # the same signer twice is one signature
    shutil.copy(model / "model.sig", model / "bob.model.sig")
    with pytest.raises(SignatureError) as info:
        verify_dir(model, allow, _source(model))
    assert any(r.reason is Reason.DUPLICATE for r in info.value.rejected)


# -- the same tamper tests as pipewarden's own format ----------------------------------------
COVERED = ["pipeline.py", "README.md", "weights/unet.safetensors", "weights/config.json"]


@pytest.fixture
def signed(model, keys):
    priv, pub = ec_keypair(keys, "ml")
    ms_sign(model, priv)
    allow = _al(allowlist_text({"ml": ms_entry(pub)}, [("**", ["ml"], 1)]))
    verify_dir(model, allow, _source(model))  # accepted before the change
    return model, allow, priv, pub


@pytest.mark.parametrize("rel", COVERED)
@pytest.mark.parametrize("where", [0, -1])
def test_any_one_byte_change_to_a_covered_file_is_refused(signed, rel, where):
    model, allow, _, _ = signed
    data = bytearray((model / rel).read_bytes())
    data[where] ^= 0x01
    (model / rel).write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as info:
        verify_dir(model, allow, _source(model))
    assert info.value.rule == "sig.files-mismatch" and info.value.reason is Reason.HASH_MISMATCH
    assert rel in info.value.what


@pytest.mark.parametrize("extra", ["extra.py", "weights/extra.safetensors", "deep/new/file.json", ".hidden",
                                   "pipewarden.sig.bak", "model.sig.txt"])
def test_an_added_file_is_refused(signed, extra):
    model, allow, _, _ = signed
    (model / extra).parent.mkdir(parents=True, exist_ok=True)
    (model / extra).write_bytes(b"planted")
    with pytest.raises(IntegrityError) as info:
        verify_dir(model, allow, _source(model))
    assert info.value.reason is Reason.EXTRA_FILE and extra in info.value.what


@pytest.mark.parametrize("rel", COVERED)
def test_a_removed_file_is_refused(signed, rel):
    model, allow, _, _ = signed
    (model / rel).unlink()
    with pytest.raises(IntegrityError) as info:
        verify_dir(model, allow, _source(model))
    assert info.value.reason is Reason.MISSING_FILE and rel in info.value.what


def test_a_signature_swapped_from_another_directory_is_refused(signed, tmp_path):
    model, allow, priv, _ = signed
    other = tmp_path / "other"
    write_example_pipeline(other)
    ms_sign(other, priv)  # a genuine signature by the same key, over other files
    shutil.copy(other / "model.sig", model / "model.sig")
    with pytest.raises(IntegrityError) as info:
        verify_dir(model, allow, _source(model))
    assert info.value.rule == "sig.files-mismatch"


def _rewrite_payload(sig_path: Path, change) -> None:
    bundle = json.loads(sig_path.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    change(statement)
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig_path.write_text(json.dumps(bundle))


def test_a_statement_edited_to_match_changed_files_is_refused(signed):
    model, allow, _, _ = signed
    (model / "pipeline.py").write_bytes(b"print('evil')\n")
    new = hashlib.sha256(b"print('evil')\n").hexdigest()

    def change(statement):
        for r in statement["predicate"]["resources"]:
            if r["name"] == "pipeline.py":
                r["digest"] = new
        h = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in statement["predicate"]["resources"]))
        statement["subject"][0]["digest"]["sha256"] = h.hexdigest()

    _rewrite_payload(model / "model.sig", change)
    with pytest.raises(SignatureError) as info:
        verify_dir(model, allow, _source(model))
    assert info.value.rule == "sig.threshold"
    assert [r.reason for r in info.value.rejected] == [Reason.BAD_SIGNATURE]


def test_a_wrong_key_is_refused(signed, keys):
    model, _, _, _ = signed
    _, other_pub = ec_keypair(keys, "other")
    allow = _al(allowlist_text({"ml": ms_entry(other_pub)}, [("**", ["ml"], 1)]))
    with pytest.raises(SignatureError) as info:
        verify_dir(model, allow, _source(model))
    assert [r.reason for r in info.value.rejected] == [Reason.UNKNOWN_SIGNER]


def test_a_forged_key_hint_does_not_verify(signed, keys):
    """A bundle signed by another key that names the allowlisted key's fingerprint."""
    model, allow, _, pub = signed
    other_priv, _ = ec_keypair(keys, "other")
    ms_sign(model, other_priv)
    bundle = json.loads((model / "model.sig").read_text())
    bundle["verificationMaterial"]["publicKey"]["hint"] = ModelSigningKey.from_pem(pub.read_bytes()).key_id
    (model / "model.sig").write_text(json.dumps(bundle))
    with pytest.raises(SignatureError) as info:
        verify_dir(model, allow, _source(model))
    assert [r.reason for r in info.value.rejected] == [Reason.BAD_SIGNATURE]


def test_an_expired_signer_is_refused(signed):
    model, _, _, pub = signed
    allow = _al(allowlist_text({"ml": ms_entry(pub, expires="2020-01-01")}, [("**", ["ml"], 1)]))
    with pytest.raises(SignatureError) as info:
        verify_dir(model, allow, _source(model))
    assert [r.reason for r in info.value.rejected] == [Reason.SIGNER_EXPIRED]


def test_a_revoked_key_is_refused(signed, keys):
    model, allow, _, pub = signed
    _, other = ec_keypair(keys, "other")
    text = allowlist_text({"fresh": ms_entry(other)}, [("**", ["fresh"], 1)],
                          extra=f'[[revoked]]\nname = "ml"\nmodel_signing_key = "{ms_text(pub)}"\nreason = "leaked"')
    with pytest.raises(SignatureError) as info:
        verify_dir(model, _al(text), _source(model))
    assert [r.reason for r in info.value.rejected] == [Reason.REVOKED]
    # revoking through the editing API moves the key to [[revoked]] for good
    revoked = allow.with_revoked("ml", reason="leaked")
    assert revoked.revoked_for_key(ModelSigningKey.from_pem(pub.read_bytes()).key_id) is not None
    with pytest.raises(InputError, match="revoked"):
        revoked.with_signer("ml2", ModelSigningKey.from_pem(pub.read_bytes()))


def test_a_model_signing_key_never_verifies_a_pipewarden_envelope(model, keys):
    """A pipewarden.sig envelope claiming the model-signing key's id does not reach ECDSA code."""
    _, pub = ec_keypair(keys, "ml")
    pw_key, _ = generate_keypair("mallory", keys)
    sign_dir(model, pw_key, source=None)
    raw = json.loads((model / "pipewarden.sig").read_text())
    raw["signatures"][0]["key_id"] = ModelSigningKey.from_pem(pub.read_bytes()).key_id
    (model / "pipewarden.sig").write_text(json.dumps(raw, sort_keys=True, indent=2) + "\n")
    allow = _al(allowlist_text({"ml": ms_entry(pub)}, [("**", ["ml"], 1)]))
    with pytest.raises(SignatureError) as info:
        verify_dir(model, allow, _source(model))
    assert [r.reason for r in info.value.rejected] == [Reason.UNKNOWN_SIGNER]


# -- what the manifest covers: ignore paths, symlinks, hashing options ---------------------------
def test_git_metadata_ignored_by_model_signing_is_accepted_only_when_the_signature_says_so(model, keys):
    priv, pub = ec_keypair(keys, "ml")
    (model / ".github").mkdir()
    (model / ".github" / "workflow.yml").write_text("on: push\n")
    ms_sign(model, priv)  # default: .gitattributes, .gitignore, .github are ignored
    allow = _al(allowlist_text({"ml": ms_entry(pub)}, [("**", ["ml"], 1)]))
    assert verify_dir(model, allow, _source(model)).signers == ("ml",)
    # a signature that does not list them as ignored must cover them
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[], ignore_git_paths=False)
    ms_sign(model, priv, hashing=hashing)
    assert verify_dir(model, allow, _source(model)).signers == ("ml",)
    (model / ".gitattributes").write_text("changed\n")
    with pytest.raises(IntegrityError, match=".gitattributes"):
        verify_dir(model, allow, _source(model))


def test_other_ignored_paths_must_not_be_present(model, keys):
    """--ignore-paths README.md leaves README.md unsigned: pipewarden refuses it as unsigned."""
    priv, pub = ec_keypair(keys, "ml")
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=["README.md", "weights"])
    ms_sign(model, priv, hashing=hashing)
    allow = _al(allowlist_text({"ml": ms_entry(pub)}, [("**", ["ml"], 1)]))
    with pytest.raises(IntegrityError) as info:
        verify_dir(model, allow, _source(model))
    assert info.value.reason is Reason.EXTRA_FILE and "README.md" in info.value.what


def test_a_symlink_signed_with_allow_symlinks_is_refused(model, keys, tmp_path):
    priv, pub = ec_keypair(keys, "ml")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"outside the directory")
    os.symlink(outside, model / "weights" / "linked.safetensors")
    hashing = model_signing.hashing.Config().set_allow_symlinks(True)
    ms_sign(model, priv, hashing=hashing)
    statement = json.loads(base64.b64decode(json.loads((model / "model.sig").read_text())["dsseEnvelope"]["payload"]))
    assert "weights/linked.safetensors" in {r["name"] for r in statement["predicate"]["resources"]}
    allow = _al(allowlist_text({"ml": ms_entry(pub)}, [("**", ["ml"], 1)]))
    with pytest.raises(InputError, match="link"):
        verify_dir(model, allow, _source(model))


@pytest.mark.parametrize(
    "configure, why",
    [
        (lambda c: c.use_shard_serialization(), "not 'files'"),
        (lambda c: c.use_file_serialization(hashing_algorithm="blake2"), "not sha256"),
    ],
)
def test_manifests_pipewarden_cannot_compare_are_refused(model, keys, configure, why):
    priv, pub = ec_keypair(keys, "ml")
    ms_sign(model, priv, hashing=configure(model_signing.hashing.Config()))
    allow = _al(allowlist_text({"ml": ms_entry(pub)}, [("**", ["ml"], 1)]))
    with pytest.raises(SignatureError) as info:
        verify_dir(model, allow, _source(model))
    assert [r.reason for r in info.value.rejected] == [Reason.MALFORMED_PAYLOAD]
    assert why in info.value.rejected[0].detail


def test_a_pre_1_0_predicate_is_refused(signed):
    model, allow, _, _ = signed

    def change(statement):
        statement["predicateType"] = "https://model_signing/Digests/v0.1"

    _rewrite_payload(model / "model.sig", change)
    with pytest.raises(SignatureError) as info:
        verify_dir(model, allow, _source(model))
    assert info.value.rejected[0].reason in (Reason.BAD_SIGNATURE, Reason.MALFORMED_PAYLOAD)


@pytest.mark.parametrize("garbage", [b"", b"not json", b"{}", b'{"mediaType": 1}', b"[" * 10000])
def test_a_malformed_model_sig_counts_for_nothing(model, keys, garbage):
    _, pub = ec_keypair(keys, "ml")
    (model / "model.sig").write_bytes(garbage)
    allow = _al(allowlist_text({"ml": ms_entry(pub)}, [("**", ["ml"], 1)]))
    with pytest.raises(SignatureError) as info:
        verify_dir(model, allow, _source(model))
    assert [r.reason for r in info.value.rejected] == [Reason.MALFORMED_PAYLOAD]


def test_a_model_sig_symlink_is_refused(model, keys, tmp_path):
    priv, pub = ec_keypair(keys, "ml")
    ms_sign(model, priv, tmp_path / "elsewhere.sig")
    os.symlink(tmp_path / "elsewhere.sig", model / "model.sig")
    allow = _al(allowlist_text({"ml": ms_entry(pub)}, [("**", ["ml"], 1)]))
    with pytest.raises(PipewardenError):
        verify_dir(model, allow, _source(model))


def test_lock_and_pipewarden_manifests_leave_model_signatures_out(model, keys):
    priv, _ = ec_keypair(keys, "ml")
    ms_sign(model, priv)
    ms_sign(model, priv, model / "x.model.sig")
    entry = entry_for_local_code(model)
    assert "model.sig" not in entry.files and "x.model.sig" not in entry.files
    assert "pipeline.py" in entry.files


# -- load_pipeline through the allowlist -------------------------------------------------------
@pytest.mark.parametrize("isolation", ["inprocess", "process"])
def test_load_pipeline_accepts_a_model_signing_signature_and_refuses_a_change(
    model, keys, tmp_path, tiny_weights, isolation
):
    priv, pub = ec_keypair(keys, "ml")
    ms_sign(model, priv)
    path = write_allowlist(tmp_path / "org.toml", allowlist_text({"ml": ms_entry(pub)}, [("local:**", ["ml"], 1)]))
    gates: list[tuple[str, str]] = []
    pipe = pipewarden.load_pipeline(tiny_weights, custom_pipeline=model, trust_remote_code=True,
                                    allowlist=path, isolation=isolation, on_gate=lambda g, v: gates.append((g, v)))
    try:
        assert ("allowlist", f"source {_source(model)} allowed; signed by ml") in gates
        assert any(g == "sandbox" for g, _ in gates)
    finally:
        close = getattr(pipe, "close", None)
        if close is not None:
            close()
    (model / "weights" / "config.json").write_text('{"in_channels": 4}\n')
    gates.clear()
    with pytest.raises(IntegrityError, match="weights/config.json"):
        pipewarden.load_pipeline(tiny_weights, custom_pipeline=model, trust_remote_code=True,
                                 allowlist=path, isolation=isolation, on_gate=lambda g, v: gates.append((g, v)))
    assert not any(g in ("sandbox", "worker", "components") for g, _ in gates)  # nothing ran


# -- allowlist entries ---------------------------------------------------------------------------
def test_allowlist_round_trips_model_signing_and_sigstore_signers(tmp_path, keys):
    _, pub = ec_keypair(keys, "ml")
    root = tmp_path / "trusted_root.json"
    root.write_text('{"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}')
    digest = hashlib.sha256(root.read_bytes()).hexdigest()
    text = allowlist_text(
        {
            "ml": ms_entry(pub),
            "ci": 'sigstore_identity = "https://github.com/acme/m/.github/workflows/sign.yml@refs/heads/main"\n'
                  'sigstore_issuer = "https://token.actions.githubusercontent.com"\n'
                  f'sigstore_trust_root = "trusted_root.json"\nsigstore_trust_root_sha256 = "{digest}"',
        },
        [("**", ["ml", "ci"], 1)],
    )
    path = write_allowlist(tmp_path / "org.toml", text)
    allow = Allowlist.load(path)
    ci = allow.signer_named("ci")
    assert ci is not None and ci.public_key.trust_root_path == root
    again = Allowlist.from_bytes(allow.to_toml().encode(), origin=str(path))
    assert again.signers == allow.signers
    revoked = again.with_revoked("ci", reason="rotated")
    assert "sigstore_trust_root" not in revoked.to_toml().split("[[revoked]]")[1]
    assert revoked.revoked[0].key_id == ci.key_id


@pytest.mark.parametrize(
    "entry, rule",
    [
        ('model_signing_key = "ecdsa-p256:AAAA"', "modelsign.bad-key"),
        ('model_signing_key = "rsa:AAAA"', "modelsign.bad-key"),
        ('public_key = "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="\nmodel_signing_key = "x"', "allowlist.bad-value"),
        ('sigstore_identity = "a@b.c"', "allowlist.missing-key"),
        ('sigstore_identity = "a@b.c"\nsigstore_issuer = "http://insecure"\nsigstore_trust_root = "r.json"\n'
         f'sigstore_trust_root_sha256 = "{"0" * 64}"', "allowlist.bad-value"),
        ('sigstore_identity = "a@b.c"\nsigstore_issuer = "https://i"\nsigstore_trust_root = "r.json"\n'
         'sigstore_trust_root_sha256 = "nothex"', "allowlist.bad-value"),
        ("", "allowlist.missing-key"),
    ],
)
def test_malformed_signer_entries_are_refused(entry, rule):
    with pytest.raises(InputError) as info:
        _al(allowlist_text({"x": entry}, []))
    assert info.value.rule == rule


def test_a_p256_key_text_on_another_curve_is_refused(keys):
    _, pub = ec_keypair(keys, "ml", ec.SECP384R1())
    text = ms_text(pub).replace("ecdsa-p384:", "ecdsa-p256:")
    with pytest.raises(InputError, match="curve p384"):
        ModelSigningKey.from_text(text)


def test_cli_add_signer_takes_a_model_signing_key_and_a_sigstore_identity(tmp_path, keys, capsys, model):
    priv, pub = ec_keypair(keys, "ml")
    root = tmp_path / "trusted_root.json"
    root.write_text('{"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}')
    org = tmp_path / "org.toml"
    assert main(["allowlist", "add-signer", str(org), "--name", "ml", "--model-signing-key", str(pub)]) == 0
    assert main(["allowlist", "add-signer", str(org), "--name", "ci", "--sigstore-identity", "me@example.com",
                 "--sigstore-issuer", "https://accounts.google.com", "--sigstore-trust-root", str(root)]) == 0
    assert main(["allowlist", "add-signer", str(org), "--name", "bad", "--sigstore-identity", "me@example.com"]) == 2
    assert main(["allowlist", "allow", str(org), "--source", "local:**", "--signers", "ml", "--threshold", "1"]) == 0
    assert main(["allowlist", "show", str(org)]) == 0
    out = capsys.readouterr().out
    assert "model-signing key, fingerprint" in out and "sigstore:me@example.com" in out
    assert 'sigstore_trust_root = "trusted_root.json"' in org.read_text()
    ms_sign(model, priv)
    assert main(["verify", str(model), "--allowlist", str(org), "--source", str(model)]) == 0


# -- Sigstore certificate signatures: offline, pinned trust root, fail closed --------------------
IDENTITY, ISSUER = "me@example.com", "https://accounts.example.com"


def sigstore_entry(root: Path, *, identity: str = IDENTITY, issuer: str = ISSUER, digest: str | None = None,
                   expires: str | None = None) -> str:
    digest = digest or hashlib.sha256(root.read_bytes()).hexdigest()
    return (f'sigstore_identity = "{identity}"\nsigstore_issuer = "{issuer}"\n'
            f'sigstore_trust_root = "{root.name}"\nsigstore_trust_root_sha256 = "{digest}"'
            + (f"\nexpires = {expires}" if expires else ""))


@pytest.fixture
def fake_sigstore(tmp_path):
    instance = FakeSigstore()
    (tmp_path / "trusted_root.json").write_bytes(instance.trusted_root())
    return instance


@pytest.fixture
def no_network(monkeypatch):
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def sigstore_sign(model: Path, instance: FakeSigstore, name: str = "model.sig", **kw) -> Path:
    statement = statement_for(model)
    path = model / name
    path.write_bytes(instance.sign_statement(statement, identity=kw.get("identity", IDENTITY),
                                             issuer=kw.get("issuer", ISSUER)))
    return path


def _sigstore_allow(tmp_path: Path, entry: str, *, extra: str = "", others: dict[str, str] | None = None,
                    threshold: int = 1) -> Allowlist:
    signers = {"ci": entry, **(others or {})}
    text = allowlist_text(signers, [("local:**", list(signers), threshold)], extra=extra)
    return Allowlist.load(write_allowlist(tmp_path / "org.toml", text))


def test_a_sigstore_signature_verifies_offline_against_the_pinned_trust_root(
    tmp_path, model, fake_sigstore, no_network
):
    sigstore_sign(model, fake_sigstore)
    allow = _sigstore_allow(tmp_path, sigstore_entry(tmp_path / "trusted_root.json"))
    assert verify_dir(model, allow, _source(model)).signers == ("ci",)
    assert no_network == []  # nothing tried to reach Rekor, Fulcio, a CT log or TUF
    (model / "weights" / "unet.safetensors").write_bytes(b"\x00" + (model / "weights" / "unet.safetensors").read_bytes()[1:])
    with pytest.raises(IntegrityError, match="weights/unet.safetensors"):
        verify_dir(model, allow, _source(model))
    assert no_network == []


def test_a_sigstore_signature_counts_with_a_pipewarden_signature(tmp_path, model, keys, fake_sigstore, no_network):
    pw_key, pw_pub = generate_keypair("alice", keys)
    allow = _sigstore_allow(tmp_path, sigstore_entry(tmp_path / "trusted_root.json"),
                            others={"alice": pw_entry(pw_pub)}, threshold=2)
    sign_dir(model, pw_key, source=_source(model))
    with pytest.raises(SignatureError, match="1 of 2"):
        verify_dir(model, allow, _source(model))
    sigstore_sign(model, fake_sigstore)
    assert verify_dir(model, allow, _source(model)).signers == ("alice", "ci")


@pytest.mark.parametrize("who", [{"identity": "someone@example.com"}, {"issuer": "https://other.example.com"}])
def test_another_identity_or_issuer_does_not_count(tmp_path, model, fake_sigstore, no_network, who):
    sigstore_sign(model, fake_sigstore, **who)
    allow = _sigstore_allow(tmp_path, sigstore_entry(tmp_path / "trusted_root.json"))
    with pytest.raises(SignatureError) as info:
        verify_dir(model, allow, _source(model))
    assert [r.reason for r in info.value.rejected] == [Reason.UNKNOWN_SIGNER]


def test_a_certificate_from_another_sigstore_instance_is_refused(tmp_path, model, fake_sigstore, no_network):
    sigstore_sign(model, FakeSigstore())  # same identity and issuer, another CA and logs
    allow = _sigstore_allow(tmp_path, sigstore_entry(tmp_path / "trusted_root.json"))
    with pytest.raises(SignatureError) as info:
        verify_dir(model, allow, _source(model))
    assert [r.reason for r in info.value.rejected] == [Reason.BAD_SIGNATURE]
    assert no_network == []


@pytest.mark.parametrize("part", ["tlog-body", "checkpoint", "payload", "no-tlog"])
def test_a_tampered_sigstore_bundle_is_refused(tmp_path, model, fake_sigstore, no_network, part):
    path = sigstore_sign(model, fake_sigstore)
    bundle = json.loads(path.read_text())
    entry = bundle["verificationMaterial"]["tlogEntries"][0]
    if part == "tlog-body":
        body = json.loads(base64.b64decode(entry["canonicalizedBody"]))
        body["spec"]["payloadHash"]["value"] = "0" * 64
        entry["canonicalizedBody"] = base64.b64encode(json.dumps(body).encode()).decode()
    elif part == "checkpoint":
        entry["inclusionProof"]["checkpoint"]["envelope"] = entry["inclusionProof"]["checkpoint"]["envelope"].replace(
            "\n1\n", "\n2\n", 1)
    elif part == "payload":
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        statement["subject"][0]["name"] = "renamed"
        bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    else:
        bundle["verificationMaterial"]["tlogEntries"] = []
    path.write_text(json.dumps(bundle))
    allow = _sigstore_allow(tmp_path, sigstore_entry(tmp_path / "trusted_root.json"))
    with pytest.raises(SignatureError) as info:
        verify_dir(model, allow, _source(model))
    expected = Reason.MALFORMED_PAYLOAD if part == "no-tlog" else Reason.BAD_SIGNATURE
    assert [r.reason for r in info.value.rejected] == [expected]
    assert no_network == []


def test_a_revoked_or_expired_sigstore_signer_is_refused(tmp_path, model, fake_sigstore, no_network):
    sigstore_sign(model, fake_sigstore)
    root = tmp_path / "trusted_root.json"
    expired = _sigstore_allow(tmp_path, sigstore_entry(root, expires="2020-01-01"))
    with pytest.raises(SignatureError) as info:
        verify_dir(model, expired, _source(model))
    assert [r.reason for r in info.value.rejected] == [Reason.SIGNER_EXPIRED]
    revoked = _sigstore_allow(tmp_path, sigstore_entry(root, identity="fresh@example.com"),
                              extra=f'[[revoked]]\nname = "old"\nsigstore_identity = "{IDENTITY}"\n'
                                    f'sigstore_issuer = "{ISSUER}"\nreason = "left"')
    with pytest.raises(SignatureError) as info:
        verify_dir(model, revoked, _source(model))
    assert [r.reason for r in info.value.rejected] == [Reason.REVOKED]


def test_a_trust_root_that_changed_since_it_was_pinned_is_refused(tmp_path, model, fake_sigstore):
    sigstore_sign(model, fake_sigstore)
    allow = _sigstore_allow(tmp_path, sigstore_entry(tmp_path / "trusted_root.json", digest="0" * 64))
    with pytest.raises(InputError) as info:
        verify_dir(model, allow, _source(model))
    assert info.value.rule == "modelsign.trust-root"


def test_without_the_extra_a_sigstore_rule_fails_closed_with_the_extra_named(tmp_path, model, fake_sigstore, monkeypatch):
    sigstore_sign(model, fake_sigstore)
    allow = _sigstore_allow(tmp_path, sigstore_entry(tmp_path / "trusted_root.json"))
    verify_dir(model, allow, _source(model))  # accepted with the extra
    monkeypatch.setattr(modelsign, "sigstore_available", lambda: False)
    monkeypatch.setattr("pipewarden.registry.signatures.sigstore_available", lambda: False)
    with pytest.raises(NotAllowedError) as info:
        verify_dir(model, allow, _source(model))
    assert info.value.rule == "modelsign.extra-missing"
    assert "pipewarden[model-signing]" in info.value.fix


def test_load_pipeline_accepts_a_sigstore_signature(tmp_path, model, fake_sigstore, tiny_weights, no_network):
    sigstore_sign(model, fake_sigstore)
    path = write_allowlist(tmp_path / "org.toml", allowlist_text(
        {"ci": sigstore_entry(tmp_path / "trusted_root.json")}, [("local:**", ["ci"], 1)]))
    gates: list[tuple[str, str]] = []
    pipewarden.load_pipeline(tiny_weights, custom_pipeline=model, trust_remote_code=True, allowlist=path,
                             isolation="inprocess", on_gate=lambda g, v: gates.append((g, v)))
    assert ("allowlist", f"source {_source(model)} allowed; signed by ci") in gates
    assert no_network == []


# -- a model directory that holds the pipeline and its weights ------------------------------------
@pytest.fixture
def model_dir(tmp_path, tiny_weights):
    """One directory: weights laid out like a diffusers repo, and the pipeline.py that uses them."""
    d = tmp_path / "model"
    shutil.copytree(tiny_weights, d)
    write_example_pipeline(d)
    return d


@pytest.mark.parametrize("isolation", ["inprocess", "process"])
def test_weights_in_the_signed_directory_are_pinned_by_the_signature(model_dir, keys, tmp_path, isolation):
    priv, pub = ec_keypair(keys, "ml")
    ms_sign(model_dir, priv)
    path = write_allowlist(tmp_path / "org.toml", allowlist_text({"ml": ms_entry(pub)}, [("local:**", ["ml"], 1)]))
    gates: list[tuple[str, str]] = []
    pipe = pipewarden.load_pipeline(model_dir, custom_pipeline=model_dir, trust_remote_code=True, allowlist=path,
                                    isolation=isolation, on_gate=lambda g, v: gates.append((g, v)))
    close = getattr(pipe, "close", None)
    if close is not None:
        close()
    assert any(g == "weights signatures" for g, _ in gates)

    def swap_after_admission(gate: str, verdict: str) -> None:
        if gate == "allowlist":  # the code was admitted: now a weights file changes under the load
            index = model_dir / "model_index.json"
            index.write_bytes(index.read_bytes() + b" ")

    with pytest.raises(IntegrityError) as info:
        pipewarden.load_pipeline(model_dir, custom_pipeline=model_dir, trust_remote_code=True, allowlist=path,
                                 isolation=isolation, on_gate=swap_after_admission)
    assert info.value.rule == "weights.digest-mismatch" and "model_index.json" in info.value.what


def test_the_number_of_model_signing_signature_files_is_bounded(model):
    from pipewarden.loader.local import resolve_local_code

    for i in range(17):
        (model / f"s{i}.model.sig").write_text("{}")
    with pytest.raises(InputError, match="17 model-signing signature files"):
        resolve_local_code(model)
    (model / "s16.model.sig").unlink()
    assert len(resolve_local_code(model).model_signatures) == 16
