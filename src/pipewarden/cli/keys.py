"""``pipewarden keygen | sign | verify``: Ed25519 keys and directory signatures (registry keys and signatures).

Exit codes: 0 accepted/done, 1 refused (a ``PipewardenError`` printed by ``cli.main``), 2 unusable
input (``InputError``: malformed TOML/JSON, unreadable files, bad arguments). Heavy imports
(cryptography, the loader) happen inside the command functions.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipewarden.cli._common import DATE_HELP, SOURCE_HELP, add_command, source_id_arg


def add_parsers(subparsers) -> None:
    p = add_command(subparsers, "keygen", "create an Ed25519 signing key pair (NAME.key, NAME.pub)",
             "Create a reviewer's Ed25519 key pair: NAME.key (private, mode 0600; keep it secret) and "
             "NAME.pub (one line, 'ed25519:...'; give it to whoever maintains the allowlist).")
    p.add_argument("--name", required=True, help="key name, e.g. alice")
    p.add_argument("--out", required=True, type=Path, help="directory for NAME.key (mode 0600) and NAME.pub")
    p.set_defaults(func=_keygen)
    p = add_command(subparsers, "sign", "sign every file of a directory (adds to DIR/pipewarden.sig)",
             "Sign the sha256 of every file of DIRECTORY with your private key and add the signature "
             "to DIRECTORY/pipewarden.sig (other signers' signatures are kept; an earlier one of "
             "yours is replaced, and the command says so).")
    p.add_argument("directory", type=Path, help="the pipeline directory you reviewed")
    p.add_argument("--key", required=True, type=Path, help="your private key file (NAME.key, not NAME.pub)")
    p.add_argument("--expires", help=f"{DATE_HELP}; default: one year from now")
    bind = p.add_mutually_exclusive_group()
    bind.add_argument("--source", help="bind the signature to this " + SOURCE_HELP
                                       + " (default: local:DIRECTORY, the directory's own source id)")
    bind.add_argument("--any-source", action="store_true",
                      help="make the signature valid for any source (explicit opt-in: a copy of the "
                           "signed files anywhere then counts as signed)")
    p.set_defaults(func=_sign)
    p = add_command(subparsers, "verify", "check a directory's signatures against an allowlist",
             "Check DIRECTORY's files and pipewarden.sig against an allowlist for one source id, "
             "exactly as a load would. Exit 0 accepted, 1 refused, 2 unusable input.")
    p.add_argument("directory", type=Path, help="the signed pipeline directory")
    p.add_argument("--allowlist", required=True, type=Path, help="the organisation allowlist (TOML)")
    p.add_argument("--source", required=True, help="the " + SOURCE_HELP)
    p.set_defaults(func=_verify)


def _keygen(args) -> int:
    from pipewarden.registry.keys import generate_keypair

    key, pub = generate_keypair(args.name, args.out)
    print(f"private key: {key} (mode 0600; keep it secret)")
    print(f"public key:  {pub}")
    print(pub.read_text().strip())
    return 0


def _earlier_signatures(directory: Path, key_path: Path) -> list[str]:
    """Describe the signatures in DIRECTORY/pipewarden.sig by the same key (they get replaced)."""
    import json

    from pipewarden.registry.keys import load_signing_key
    from pipewarden.registry.signatures import SIGNATURE_FILE, parse_signature_file

    sig = directory / SIGNATURE_FILE
    if not sig.is_file() or sig.is_symlink():
        return []
    key_id = load_signing_key(key_path).public_key.key_id
    out = []
    for env in parse_signature_file(sig.read_bytes()):
        if env.key_id != key_id:
            continue
        try:
            manifest = json.loads(env.payload)
        except ValueError:
            manifest = {}
        src = manifest.get("source")
        out.append(("for source " + repr(src) if src else "valid for any source")
                   + (f", signed {manifest['signed_at']}" if "signed_at" in manifest else ""))
    return out


def _sign(args) -> int:
    from pipewarden.registry._time import DEFAULT_SIGNATURE_LIFETIME, format_ts, parse_date_arg, resolve_now
    from pipewarden.registry.signatures import sign_dir

    now = resolve_now(None).replace(microsecond=0)
    expires = parse_date_arg(args.expires) if args.expires else now + DEFAULT_SIGNATURE_LIFETIME
    source = source_id_arg(args.source) if args.source is not None else None
    if source is None and not getattr(args, "any_source", False):
        # Bound by default: to the directory's own source id, as load_pipeline spells it.
        source = f"local:{Path(args.directory).expanduser().resolve()}"
    earlier = _earlier_signatures(args.directory, args.key)
    path = sign_dir(args.directory, args.key, source=source, expires=expires, now=now)
    bound = f"for source {source!r}" if source else "valid for any source"
    print(f"signed {args.directory} ({bound}, expires {format_ts(expires)}); signatures in {path}")
    for old in earlier:
        print(f"note: this replaced your earlier signature ({old}); one signature per key is kept",
              file=sys.stderr)
    return 0


def _verify(args) -> int:
    from pipewarden.registry.allowlist import Allowlist
    from pipewarden.registry.signatures import verify_dir

    allowlist = Allowlist.load(args.allowlist)
    verdict = verify_dir(args.directory, allowlist, source_id_arg(args.source))
    print(f"OK: {verdict.summary()}")
    for r in verdict.rejected:
        print(f"  not counted: {r.describe()}")
    return 0
