"""Ed25519 keys: generation, the one-line public key text, and loading a private key file.

Trusts nothing it reads: a public key text is validated into a :class:`PublicKey` (32 raw bytes);
a private key file must be a PEM PKCS#8 Ed25519 key that only its owner can read. Private keys
are created with ``O_EXCL`` and mode 0600 from the first instant (never world-readable).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from pipewarden.errors import InputError

#: Prefix of the one-line public key form, e.g. ``ed25519:3q2+7w...=``.
PUBLIC_KEY_PREFIX = "ed25519:"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_KEY_FILE = 16 * 1024


def check_name(name: str, *, what: str = "signer name") -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InputError(
            f"{what} {name!r} is not valid",
            rule="keys.bad-name",
            fix="choose a simple name such as 'alice'",
        )
    return name


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: object, *, what: str) -> bytes:
    """Standard base64 with padding; the text must be exactly the canonical encoding of its bytes."""
    if not isinstance(text, str):
        raise InputError(f"{what} is not a base64 string", rule="keys.bad-encoding")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InputError(
            f"{what} is not valid base64", rule="keys.bad-encoding"
        ) from None
    if b64encode(raw) != text:  # non-zero padding bits would let two texts mean the same bytes
        raise InputError(f"{what} is not canonical base64", rule="keys.bad-encoding")
    return raw


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key (32 raw bytes). ``key_id`` is the sha256 hex of the raw bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def text(self) -> str:
        return PUBLIC_KEY_PREFIX + b64encode(self.raw)

    @classmethod
    def from_text(cls, text: object, *, what: str = "public key") -> PublicKey:
        """Parse ``ed25519:<base64 of 32 bytes>`` (surrounding whitespace allowed)."""
        if not isinstance(text, str) or not text.strip().startswith(PUBLIC_KEY_PREFIX):
            raise InputError(
                f"{what} is not of the form '{PUBLIC_KEY_PREFIX}<base64>'",
                rule="keys.bad-encoding",
                fix="paste the content of NAME.pub",
            )
        raw = b64decode_strict(text.strip()[len(PUBLIC_KEY_PREFIX) :], what=what)
        if len(raw) != 32:
            raise InputError(f"{what} is {len(raw)} bytes, not 32", rule="keys.bad-encoding")
        return cls(raw)

    def verify(self, signature: bytes, payload: bytes) -> bool:
        """True when ``signature`` is a valid Ed25519 signature of ``payload`` by this key."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, payload)
        except (InvalidSignature, ValueError):
            return False
        return True

    def __repr__(self) -> str:
        return f"PublicKey({self.text!r})"


class SigningKey:
    """A loaded private key. Not serialisable; repr never shows key material."""

    def __init__(self, private_key, *, origin: str = "") -> None:
        self._key = private_key
        self.origin = origin
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.public_key = PublicKey(private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, payload: bytes) -> bytes:
        return bytes(self._key.sign(payload))

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.public_key.key_id[:16]}..., origin={self.origin!r})"

    def __reduce__(self):
        raise TypeError("signing keys are not serialisable")


def generate_keypair(name: str, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``out_dir/NAME.key`` (PEM PKCS#8, mode 0600) and ``out_dir/NAME.pub``; never overwrite."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    check_name(name, what="key name")
    out = Path(out_dir)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create {out}: {exc.strerror}", rule="file.unwritable"
        ) from None
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (key_path, pub_path):
        if os.path.lexists(p):
            raise InputError(
                f"{p} already exists", rule="keys.exists", fix="choose another --name"
            )
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    signing = SigningKey(private)
    _write_new(key_path, pem, 0o600)
    try:
        _write_new(pub_path, (signing.public_key.text + "\n").encode("ascii"), 0o644)
    except BaseException:
        os.unlink(key_path)
        raise
    return key_path, pub_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, mode)  # the mode applies from creation: no world-readable instant
    except OSError as exc:
        raise InputError(
            f"cannot create {path}: {exc.strerror}", rule="keys.exists"
        ) from None
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)  # umask may only have removed bits; make the mode exact
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load a private key written by :func:`generate_keypair`; refuse group/world-readable files."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InputError(
            f"cannot read key file {p}: {exc.strerror}", rule="file.unreadable"
        ) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{p} is not a regular file", rule="file.not-regular")
        if st.st_mode & 0o077:
            head = fh.read(64)
            if head.lstrip().startswith(PUBLIC_KEY_PREFIX.encode("ascii")) or b"PRIVATE KEY" not in head:
                # A public key (NAME.pub is world-readable on purpose): chmod is not the fix.
                raise InputError(
                    f"{p} is not a private key" + (" (it is a public key)" if b"ed25519:" in head else ""),
                    rule="keys.public-not-private",
                    fix=f"pass the NAME.key file beside it, e.g. --key {p.with_suffix('.key')}",
                )
            raise InputError(
                f"key file {p} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                rule="keys.permissions",
                fix=f"chmod 600 {p}",
            )
        data = fh.read(_MAX_KEY_FILE + 1)
    if len(data) > _MAX_KEY_FILE:
        raise InputError(f"{p} is too large to be a key file", rule="file.too-large")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InputError(
            f"{p} is not an unencrypted PEM private key",
            rule="keys.public-not-private",
            fix="pass the NAME.key file, not NAME.pub",
        ) from None
    except Exception as exc:  # cryptography's unsupported-algorithm errors
        raise InputError(
            f"{p} cannot be loaded as a key ({type(exc).__name__})", rule="keys.not-ed25519"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{p} is not an Ed25519 key", rule="keys.not-ed25519")
    return SigningKey(key, origin=str(p))
