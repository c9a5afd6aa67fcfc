"""Helpers for the registry tests: in-memory keys, allowlists and signed file sets."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipewarden.registry.allowlist import Allowlist
from pipewarden.registry.keys import SigningKey
from pipewarden.registry.signatures import sign_files

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
LATER = dt.datetime(2027, 6, 1, tzinfo=UTC)

FILES_BYTES: dict[str, bytes] = {
    "pipeline.py": b"from diffusers import DiffusionPipeline\n\nclass P(DiffusionPipeline):\n    pass\n",
    "README.md": b"# example\n",
    "sub/helper.json": b'{"a": 1}\n',
}


def digests(files: Mapping[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def new_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.generate())


def allowlist(
    signers: Mapping[str, SigningKey],
    rules: Iterable[tuple[str, Iterable[str], int]] = (),
    *,
    version: int = 1,
    expires: Mapping[str, str] | None = None,
    revoked: Mapping[str, SigningKey] | None = None,
    policy: str | None = None,
) -> Allowlist:
    # An allowlist without required_isolation demands the worker; these tests load in-process
    # unless they say otherwise, so the default here spells the in-process minimum out.
    if policy is None:
        policy = '[policy]\nrequired_isolation = "inprocess"'
    lines = [f"version = {version}", policy]
    for name, key in signers.items():
        lines += ["[[signers]]", f'name = "{name}"', f'public_key = "{key.public_key.text}"']
        if expires and name in expires:
            lines.append(f"expires = {expires[name]}")
    for name, key in (revoked or {}).items():
        lines += ["[[revoked]]", f'name = "{name}"', f'public_key = "{key.public_key.text}"']
    for pattern, names, k in rules:
        quoted = ", ".join(f'"{n}"' for n in names)
        lines += ["[[sources]]", f'pattern = "{pattern}"', f"signers = [{quoted}]", f"threshold = {k}"]
    return Allowlist.from_bytes("\n".join(lines).encode(), origin="test-allowlist.toml")


def signed(
    files: Mapping[str, str],
    *keys: SigningKey,
    source: str | None = None,
    expires: dt.datetime | None = LATER,
    now: dt.datetime = NOW,
) -> bytes:
    data: bytes | None = None
    for key in keys:
        data = sign_files(files, key, source=source, expires=expires, now=now, existing=data)
    assert data is not None
    return data


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    """Registry tests never record allowlist versions in the real user cache dir."""
    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(tmp_path_factory.mktemp("pw-state")))
    monkeypatch.delenv("PIPEWARDEN_ALLOWLIST", raising=False)
    monkeypatch.delenv("PIPEWARDEN_DISABLE_REMOTE_CODE", raising=False)
