"""Property tests: any single flipped byte is refused; garbage input is a clean PipewardenError."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipewarden.errors import InputError, PipewardenError
from pipewarden.loader.code import CodeSource
from pipewarden.loader.snapshot import FileRecord, Snapshot
from pipewarden.registry import _toml
from pipewarden.registry.admission import Admission
from pipewarden.registry.allowlist import Allowlist
from pipewarden.registry.lockfile import LockEntry, Lockfile
from pipewarden.registry.signatures import SignatureVerdict, verify_signed_files
from tests._registry_support import (
    FILES_BYTES,
    NOW,
    _isolated_state,  # noqa: F401  (autouse)
    allowlist,
    digests,
    new_key,
    signed,
)

SETTINGS = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALICE, BOB = new_key(), new_key()
SOURCE = "acme/pipes"
FILES = digests(FILES_BYTES)
ALLOW = allowlist({"alice": ALICE, "bob": BOB}, [("acme/*", ["alice", "bob"], 2)])
SIG = signed(FILES, ALICE, BOB)
WEIGHTS = {"model_index.json": "1" * 64, "unet/diffusion_pytorch_model.safetensors": "2" * 64}
LOCK = (
    Lockfile(
        entries=(
            LockEntry(source=SOURCE, role="code", files=FILES, commit="a" * 40),
            LockEntry(source="acme/weights", role="weights", files=WEIGHTS, commit="b" * 40),
        )
    )
    .to_toml()
    .encode()
)


def _flip(data: bytes, index: int, xor: int) -> bytes:
    i = index % len(data)
    return data[:i] + bytes([data[i] ^ xor]) + data[i + 1 :]


def _refused(fn) -> PipewardenError:
    try:
        fn()
    except PipewardenError as exc:
        return exc
    raise AssertionError("accepted tampered input")


def test_untampered_inputs_are_accepted():
    assert verify_signed_files(FILES, SIG, ALLOW, SOURCE, now=NOW).signers == ("alice", "bob")
    _check_lock(LOCK)


@SETTINGS
@given(name=st.sampled_from(sorted(FILES_BYTES)), index=st.integers(0, 10_000), xor=st.integers(1, 255))
def test_flipping_any_byte_of_any_signed_file_is_refused(name, index, xor):
    tampered = {**FILES_BYTES, name: _flip(FILES_BYTES[name], index, xor)}
    _refused(lambda: verify_signed_files(digests(tampered), SIG, ALLOW, SOURCE, now=NOW))


@settings(max_examples=100, deadline=None)
@given(index=st.integers(0, len(SIG) - 1), xor=st.integers(1, 255))
def test_flipping_any_byte_of_the_signature_file_is_refused(index, xor):
    _refused(lambda: verify_signed_files(FILES, _flip(SIG, index, xor), ALLOW, SOURCE, now=NOW))


CODE = CodeSource(
    kind="hub",
    source_id=SOURCE,
    commit="a" * 40,
    module_relpath="pipeline.py",
    source_bytes=FILES_BYTES["pipeline.py"],
    sha256=FILES["pipeline.py"],
    files=FILES,
)


def _check_lock(data: bytes) -> None:
    """What a load with lockfile= runs: the real admission of the code, then of the weights."""
    lock = Lockfile.from_bytes(data)
    admission = Admission(trust_remote_code=True, lockfile=lock, env={})
    admission.admit_code(CODE)
    files = {rel: FileRecord(rel, digest, 1) for rel, digest in WEIGHTS.items()}
    admission.admit_weights(Snapshot(root=Path("/nonexistent"), source="acme/weights", commit="b" * 40, files=files))


@settings(max_examples=100, deadline=None)
@given(index=st.integers(0, len(LOCK) - 1), xor=st.integers(1, 255))
def test_flipping_any_byte_of_the_lock_file_is_refused(index, xor):
    _refused(lambda: _check_lock(_flip(LOCK, index, xor)))


# -- garbage ------------------------------------------------------------------------------------------
_KEYS = st.sampled_from(
    [
        "version",
        "signers",
        "revoked",
        "sources",
        "policy",
        "name",
        "public_key",
        "expires",
        "pattern",
        "threshold",
        "required_isolation",
        "extra_modules",
        "import_aliases",
        "format",
        "entries",
        "source",
        "role",
        "commit",
        "files",
        "reason",
        "x",
    ]
)
_SCALARS = st.one_of(
    st.integers(-3, 2**70),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(
        [
            "ed25519:" + "A" * 43 + "=",
            ALICE.public_key.text,
            "process",
            "acme/*",
            "code",
            "pipewarden-lock/1",
            "a" * 40,
            "1" * 64,
        ]
    ),
    st.datetimes(timezones=st.just(dt.timezone.utc)),
)
_TOML_DOCS = st.recursive(
    st.dictionaries(_KEYS, _SCALARS, max_size=4),
    lambda inner: st.dictionaries(
        _KEYS,
        st.one_of(_SCALARS, inner, st.lists(inner, min_size=1, max_size=3), st.lists(_SCALARS, max_size=3)),
        max_size=5,
    ),
    max_leaves=12,
)


def _dump_or_none(doc) -> bytes | None:
    try:
        return _toml.dumps(doc).encode()
    except (ValueError, TypeError):
        return None


@SETTINGS
@given(data=st.binary(max_size=400))
def test_garbage_bytes_as_allowlist_signature_or_lock_are_clean_errors(data):
    for parse in (
        lambda: Allowlist.from_bytes(data),
        lambda: verify_signed_files(FILES, data, ALLOW, SOURCE, now=NOW),
        lambda: Lockfile.from_bytes(data),
    ):
        try:
            parse()
        except PipewardenError:
            pass


@SETTINGS
@given(doc=_TOML_DOCS)
def test_structured_garbage_allowlist_and_lock_are_clean_errors(doc):
    data = _dump_or_none(doc)
    if data is None:
        return
    for parse, kind in ((Allowlist.from_bytes, Allowlist), (Lockfile.from_bytes, Lockfile)):
        try:
            assert isinstance(parse(data), kind)
        except InputError:
            pass


_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.text(max_size=10),
        st.sampled_from(["pipewarden-signatures/1", ALICE.public_key.key_id, "AAAA", ""]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["format", "signatures", "key_id", "payload", "sig", "x"]), inner, max_size=4
        ),
    ),
    max_leaves=10,
)


@SETTINGS
@given(doc=_JSON, pretty=st.booleans())
def test_structured_garbage_signature_file_is_a_clean_error(doc, pretty):
    data = (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode() if pretty else json.dumps(doc).encode()
    try:
        result = verify_signed_files(FILES, data, ALLOW, SOURCE, now=NOW)
    except PipewardenError:
        return
    assert isinstance(result, SignatureVerdict) and False, "garbage accepted"
