"""``pipewarden allowlist add-signer | allow | revoke | policy | show``: edit an organisation allowlist.

Exit codes: 0 accepted/done, 1 refused (a ``PipewardenError`` printed by ``cli.main``), 2 unusable
input (``InputError``: malformed TOML/JSON, unreadable files, bad arguments). Heavy imports
(cryptography, the loader) happen inside the command functions.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipewarden.cli._common import DATE_HELP, add_command, usage
from pipewarden.errors import InputError

_ALLOWLIST_FILE_HELP = "the allowlist TOML file (created if missing; each edit raises its version)"


def add_parsers(subparsers) -> None:
    p = add_command(subparsers, "allowlist", "create or edit an organisation allowlist file",
             "Create or edit an organisation allowlist: signers, source rules (k-of-n signatures), "
             "revocations and sandbox policy. Every edit raises the file's version.")
    sub = p.add_subparsers(dest="allowlist_command", metavar="ACTION", parser_class=type(p))
    p.set_defaults(func=lambda args, _p=p: usage(_p))

    a = add_command(sub, "add-signer", "add (or update) a signer's public key",
             "Add a signer (a name and an Ed25519 public key), or update an existing one's key or expiry. "
             "OpenSSF model-signing signers: --model-signing-key (an ECDSA public key, PEM) or "
             "--sigstore-identity with --sigstore-issuer and --sigstore-trust-root (a Sigstore "
             "trusted_root.json, pinned by sha256; verification never fetches it).")
    a.add_argument("file", type=Path, help=_ALLOWLIST_FILE_HELP)
    a.add_argument("--name", required=True, help="the signer's name, used by `allow --signers`")
    cred = a.add_mutually_exclusive_group(required=True)
    cred.add_argument("--public-key", help="'ed25519:...' text or a NAME.pub file (pipewarden's own signatures)")
    cred.add_argument("--model-signing-key", metavar="PEM_FILE",
                      help="a model-signing ECDSA public key: PEM file or 'ecdsa-p256:...' text")
    cred.add_argument("--sigstore-identity", metavar="IDENTITY",
                      help="a model-signing Sigstore certificate identity (email or workflow URI)")
    a.add_argument("--sigstore-issuer", metavar="URL", help="the OIDC issuer of --sigstore-identity")
    a.add_argument("--sigstore-trust-root", metavar="FILE", type=Path,
                   help="Sigstore trusted_root.json for --sigstore-identity (stored relative to the allowlist "
                        "when beside it; its sha256 is pinned)")
    a.add_argument("--expires", help=f"{DATE_HELP}: the signer's signatures stop counting then")
    a.set_defaults(func=_add_signer)

    a = add_command(sub, "allow", "allow a source pattern with k-of-n signers",
             "Allow the sources matching a pattern when at least THRESHOLD of the named signers have "
             "signed their files. Every matching rule must be satisfied.")
    a.add_argument("file", type=Path, help=_ALLOWLIST_FILE_HELP)
    a.add_argument("--source", required=True, help="pattern: org/repo, org/*, local:**, ...")
    a.add_argument("--signers", required=True, help="comma-separated signer names")
    a.add_argument("--threshold", required=True, type=int, help="k: distinct signatures needed")
    a.set_defaults(func=_allow)

    a = add_command(sub, "revoke", "revoke a signer's key for good",
             "Revoke a signer's key: its signatures never count again, even if the signer is re-added.")
    a.add_argument("file", type=Path, help=_ALLOWLIST_FILE_HELP)
    a.add_argument("--name", required=True, help="the signer to revoke")
    a.add_argument("--reason", default="", help="why (kept in the file for reviewers)")
    a.set_defaults(func=_revoke)

    a = add_command(sub, "policy", "set sandbox policy settings (isolation, extra modules, aliases)",
             "Set the sandbox policy of every load under this allowlist: a minimum isolation mode, "
             "extra modules (and their attributes) the sandbox may import, import aliases.")
    a.add_argument("file", type=Path, help=_ALLOWLIST_FILE_HELP)
    a.add_argument(
        "--required-isolation",
        choices=["process", "inprocess", "none"],
        help="minimum isolation mode for every load ('none' clears it)",
    )
    a.add_argument(
        "--extra-module",
        action="append",
        default=[],
        metavar="MODULE=ATTR,ATTR",
        help="allow MODULE with these attributes in the sandbox (repeatable; MODULE= removes it)",
    )
    a.add_argument(
        "--import-alias",
        action="append",
        default=[],
        metavar="ALIAS=MODULE",
        help="map a fork's package name to a vetted module (repeatable; ALIAS= removes it)",
    )
    a.set_defaults(func=_policy)

    a = add_command(sub, "show", "validate and summarise an allowlist",
             "Parse an allowlist (exit 2 if malformed) and print its signers, revocations, rules and policy.")
    a.add_argument("file", type=Path, help="the allowlist TOML file")
    a.set_defaults(func=_show)


def _load_or_new(path: Path):
    from pipewarden.registry._state import VersionStore
    from pipewarden.registry.allowlist import Allowlist, empty_allowlist, identity_of

    if os.path.lexists(path):
        return Allowlist.load(path)
    # A new file continues above any version seen for this path (never looks like a rollback).
    return empty_allowlist(VersionStore.default().seen(identity_of(path)) or 0)


def _save(path: Path, allowlist) -> None:
    from pipewarden.registry._files import atomic_write
    from pipewarden.registry._state import VersionStore
    from pipewarden.registry.allowlist import identity_of

    store = VersionStore.default()
    what = f"allowlist {path}"
    store.check(identity_of(path), allowlist.version, what=what)  # refuse before writing anything
    atomic_write(path, allowlist.to_toml().encode("utf-8"))
    store.check_and_record(identity_of(path), allowlist.version, what=what)
    print(f"{path}: version {allowlist.version}")


def _pairs(values: list[str], *, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name.strip():
            raise InputError(f"{what} {v!r} is not NAME=VALUE", rule="cli.bad-argument")
        out[name.strip()] = rest.strip()
    return out


def _policy(args) -> int:
    allowlist = _load_or_new(args.file)
    changes: dict = {}
    if args.required_isolation is not None:
        changes["required_isolation"] = None if args.required_isolation == "none" else args.required_isolation
    if args.extra_module:
        extra = {k: tuple(v) for k, v in allowlist.extra_modules.items()}
        for mod, attrs in _pairs(args.extra_module, what="--extra-module").items():
            names = tuple(a.strip() for a in attrs.split(",") if a.strip())
            if names:
                extra[mod] = names
            else:
                extra.pop(mod, None)
        changes["extra_modules"] = extra
    if args.import_alias:
        aliases = dict(allowlist.import_aliases)
        for alias, target in _pairs(args.import_alias, what="--import-alias").items():
            if target:
                aliases[alias] = target
            else:
                aliases.pop(alias, None)
        changes["import_aliases"] = aliases
    if not changes:
        raise InputError(
            "no policy change given",
            rule="cli.bad-argument",
            fix="pass --required-isolation, --extra-module or --import-alias",
        )
    _save(args.file, allowlist.with_policy(**changes))
    return 0


def _public_key_arg(text: str):
    from pipewarden.registry.keys import PUBLIC_KEY_PREFIX, PublicKey

    if not text.strip().startswith(PUBLIC_KEY_PREFIX) and Path(text).is_file():
        from pipewarden.fsaccess import read_user_file

        text = read_user_file(text, limit=64 * 1024, what="public key file").decode("ascii", errors="replace")
    return PublicKey.from_text(text, what="--public-key")


def _model_signing_key_arg(text: str):
    from pipewarden.fsaccess import read_user_file
    from pipewarden.registry.modelsign import ModelSigningKey

    if text.strip().startswith("ecdsa-"):
        return ModelSigningKey.from_text(text.strip(), what="--model-signing-key")
    data = read_user_file(text, limit=64 * 1024, what="model-signing public key file")
    return ModelSigningKey.from_pem(data, what=f"--model-signing-key {text}")


def _sigstore_arg(args):
    import hashlib

    from pipewarden.fsaccess import read_user_file
    from pipewarden.registry.modelsign import MAX_TRUST_ROOT_BYTES, sigstore_identity

    if not args.sigstore_issuer or args.sigstore_trust_root is None:
        raise InputError(
            "--sigstore-identity needs --sigstore-issuer and --sigstore-trust-root",
            rule="cli.bad-argument",
            fix="e.g. --sigstore-issuer https://accounts.google.com --sigstore-trust-root trusted_root.json",
        )
    root = Path(args.sigstore_trust_root).expanduser()
    data = read_user_file(root, limit=MAX_TRUST_ROOT_BYTES, what="Sigstore trust root")
    base = Path(os.path.abspath(args.file)).parent
    absolute = Path(os.path.abspath(root))
    stored = str(absolute.relative_to(base)) if absolute.is_relative_to(base) else str(absolute)
    return sigstore_identity(args.sigstore_identity, args.sigstore_issuer, stored,
                             hashlib.sha256(data).hexdigest(), base_dir=base)


def _add_signer(args) -> int:
    from pipewarden.registry._time import parse_date_arg

    if args.sigstore_identity is None and (args.sigstore_issuer or args.sigstore_trust_root is not None):
        raise InputError("--sigstore-issuer and --sigstore-trust-root go with --sigstore-identity",
                         rule="cli.bad-argument")
    if args.model_signing_key is not None:
        key = _model_signing_key_arg(args.model_signing_key)
    elif args.sigstore_identity is not None:
        key = _sigstore_arg(args)
    else:
        key = _public_key_arg(args.public_key)
    expires = parse_date_arg(args.expires) if args.expires else None
    allowlist = _load_or_new(args.file).with_signer(args.name, key, expires=expires)
    _save(args.file, allowlist)
    return 0


def _allow(args) -> int:
    names = [n.strip() for n in args.signers.split(",") if n.strip()]
    allowlist = _load_or_new(args.file).with_rule(args.source, names, args.threshold)
    _save(args.file, allowlist)
    return 0


def _revoke(args) -> int:
    allowlist = _load_or_new(args.file).with_revoked(args.name, reason=args.reason)
    _save(args.file, allowlist)
    for rule in allowlist.sources:
        live = [n for n in rule.signers if allowlist.signer_named(n) is not None]
        if len(live) < rule.threshold:
            print(
                f"warning: rule {rule.pattern!r} can no longer be met ({len(live)} unrevoked signers, "
                f"threshold {rule.threshold}); its sources are refused until you add signers",
                file=sys.stderr,
            )
    return 0


def _show(args) -> int:
    from pipewarden.registry._time import format_ts
    from pipewarden.registry.allowlist import Allowlist

    a = Allowlist.load(args.file)
    print(f"{args.file}: version {a.version}, sha256 {a.sha256}")
    for s in a.signers:
        exp = f", expires {format_ts(s.expires)}" if s.expires else ""
        print(f"  signer  {s.name}: {_describe(s.public_key)}{exp}")
    for r in a.revoked:
        print(f"  revoked {r.name}: {r.public_key.text}" + (f" ({r.reason})" if r.reason else ""))
    for rule in a.sources:
        print(f"  source  {rule.pattern}: {rule.threshold} of {', '.join(rule.signers)}")
    if not a.sources:
        print("  (no sources: this allowlist allows nothing)")
    if a.required_isolation:
        print(f"  policy  required_isolation = {a.required_isolation}")
    for mod, attrs in a.extra_modules.items():
        print(f"  policy  extra module {mod}: {', '.join(attrs)}")
    for alias, target in a.import_aliases.items():
        print(f"  policy  import alias {alias} -> {target}")
    return 0


def _describe(cred) -> str:
    from pipewarden.registry.keys import PublicKey

    if isinstance(cred, PublicKey):
        return f"{cred.text} (key id {cred.key_id[:16]})"
    return cred.describe()
