"""``pipewarden keygen | sign | verify | allowlist ... | lock``: thin fronts over the registry.

Exit codes: 0 accepted/done, 1 refused (a ``PipewardenError`` printed by ``cli.main``), 2 unusable
input (``InputError``: malformed TOML/JSON, unreadable files, bad arguments). Heavy imports
(cryptography, the loader) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipewarden.errors import InputError

_SOURCE_HELP = (
    "source id: a hub repo id (org/repo), community:NAME for a diffusers community pipeline, "
    "or a local path (a directory or .py file; local:/absolute/path also accepted)"
)
_DATE_HELP = "YYYY-MM-DD (start of that day, UTC) or YYYY-MM-DDTHH:MM:SSZ"
_ALLOWLIST_FILE_HELP = "the allowlist TOML file (created if missing; each edit raises its version)"


def _sub(subparsers, name: str, help: str, description: str):
    return subparsers.add_parser(name, help=help, description=description)


def add_parsers(subparsers) -> None:
    p = _sub(subparsers, "keygen", "create an Ed25519 signing key pair (NAME.key, NAME.pub)",
             "Create a reviewer's Ed25519 key pair: NAME.key (private, mode 0600; keep it secret) and "
             "NAME.pub (one line, 'ed25519:...'; give it to whoever maintains the allowlist).")
    p.add_argument("--name", required=True, help="key name, e.g. alice")
    p.add_argument("--out", required=True, type=Path, help="directory for NAME.key (mode 0600) and NAME.pub")
    p.set_defaults(func=_keygen)

    p = _sub(subparsers, "sign", "sign every file of a directory (adds to DIR/pipewarden.sig)",
             "Sign the sha256 of every file of DIRECTORY with your private key and add the signature "
             "to DIRECTORY/pipewarden.sig (other signers' signatures are kept; an earlier one of "
             "yours is replaced, and the command says so).")
    p.add_argument("directory", type=Path, help="the pipeline directory you reviewed")
    p.add_argument("--key", required=True, type=Path, help="your private key file (NAME.key, not NAME.pub)")
    p.add_argument("--expires", help=f"{_DATE_HELP}; default: one year from now")
    bind = p.add_mutually_exclusive_group()
    bind.add_argument("--source", help="bind the signature to this " + _SOURCE_HELP
                                       + " (default: local:DIRECTORY, the directory's own source id)")
    bind.add_argument("--any-source", action="store_true",
                      help="make the signature valid for any source (explicit opt-in: a copy of the "
                           "signed files anywhere then counts as signed)")
    p.set_defaults(func=_sign)

    p = _sub(subparsers, "verify", "check a directory's signatures against an allowlist",
             "Check DIRECTORY's files and pipewarden.sig against an allowlist for one source id, "
             "exactly as a load would. Exit 0 accepted, 1 refused, 2 unusable input.")
    p.add_argument("directory", type=Path, help="the signed pipeline directory")
    p.add_argument("--allowlist", required=True, type=Path, help="the organisation allowlist (TOML)")
    p.add_argument("--source", required=True, help="the " + _SOURCE_HELP)
    p.set_defaults(func=_verify)

    p = _sub(subparsers, "allowlist", "create or edit an organisation allowlist file",
             "Create or edit an organisation allowlist: signers, source rules (k-of-n signatures), "
             "revocations and sandbox policy. Every edit raises the file's version.")
    sub = p.add_subparsers(dest="allowlist_command", metavar="ACTION", parser_class=type(p))
    p.set_defaults(func=lambda args, _p=p: _usage(_p))

    a = _sub(sub, "add-signer", "add (or update) a signer's public key",
             "Add a signer (a name and an Ed25519 public key), or update an existing one's key or expiry.")
    a.add_argument("file", type=Path, help=_ALLOWLIST_FILE_HELP)
    a.add_argument("--name", required=True, help="the signer's name, used by `allow --signers`")
    a.add_argument("--public-key", required=True, help="'ed25519:...' text or a NAME.pub file")
    a.add_argument("--expires", help=f"{_DATE_HELP}: the signer's signatures stop counting then")
    a.set_defaults(func=_add_signer)

    a = _sub(sub, "allow", "allow a source pattern with k-of-n signers",
             "Allow the sources matching a pattern when at least THRESHOLD of the named signers have "
             "signed their files. Every matching rule must be satisfied.")
    a.add_argument("file", type=Path, help=_ALLOWLIST_FILE_HELP)
    a.add_argument("--source", required=True, help="pattern: org/repo, org/*, local:**, ...")
    a.add_argument("--signers", required=True, help="comma-separated signer names")
    a.add_argument("--threshold", required=True, type=int, help="k: distinct signatures needed")
    a.set_defaults(func=_allow)

    a = _sub(sub, "revoke", "revoke a signer's key for good",
             "Revoke a signer's key: its signatures never count again, even if the signer is re-added.")
    a.add_argument("file", type=Path, help=_ALLOWLIST_FILE_HELP)
    a.add_argument("--name", required=True, help="the signer to revoke")
    a.add_argument("--reason", default="", help="why (kept in the file for reviewers)")
    a.set_defaults(func=_revoke)

    a = _sub(sub, "policy", "set sandbox policy settings (isolation, extra modules, aliases)",
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

    a = _sub(sub, "show", "validate and summarise an allowlist",
             "Parse an allowlist (exit 2 if malformed) and print its signers, revocations, rules and policy.")
    a.add_argument("file", type=Path, help="the allowlist TOML file")
    a.set_defaults(func=_show)

    p = _sub(subparsers, "lock", "write pipewarden.lock for weights and pipeline code (local or hub)",
             "Record the sha256 of every file (and the resolved commit of hub sources) a load will use; "
             "loads with lockfile= refuse any difference. Local paths are stored relative to the lock "
             "file's directory, so a lock committed from one checkout matches another.")
    p.add_argument("--weights", help="local weights directory or hub repo id")
    p.add_argument("--custom-pipeline", help="local pipeline directory or .py file, hub repo id or community name")
    p.add_argument("--revision", help="weights revision on the hub (resolved to a commit once)")
    p.add_argument("--custom-revision", help="code revision on the hub (resolved to a commit once)")
    p.add_argument("--out", type=Path, default=Path("pipewarden.lock"),
                   help="the lock file to write or update (default: ./pipewarden.lock)")
    p.set_defaults(func=_lock)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _keygen(args) -> int:
    from pipewarden.registry.keys import generate_keypair

    key, pub = generate_keypair(args.name, args.out)
    print(f"private key: {key} (mode 0600; keep it secret)")
    print(f"public key:  {pub}")
    print(pub.read_text().strip())
    return 0


def source_id_arg(text: str, *, option: str = "--source") -> str:
    """A command-line source into the id loads use: ``org/repo``, a community name or ``local:/abs``.

    Accepts a hub repo id, ``community:NAME``, ``local:/absolute/path`` or an existing path
    (resolved); anything else is refused, so a typo cannot silently name a source no load has.
    """
    from pipewarden.loader import hub

    value = text.strip()
    if value.startswith("community:"):
        name = value[len("community:"):]
        if hub.is_community_name(name):
            return name
        raise InputError(f"{option} {text!r}: {name!r} is not a community pipeline name",
                         rule="spec.source-id",
                         fix="e.g. community:one_step_unet")
    if value.startswith("local:"):
        rest = value[len("local:"):]
        if rest.startswith("/"):
            return "local:" + str(Path(rest).resolve())
        if rest and os.path.exists(rest):
            return "local:" + str(Path(rest).resolve())
        raise InputError(f"{option} {text!r} is not a source id", rule="spec.source-id",
                         fix=f"pass the path itself ({option} ./{rest or 'DIR'}) or local:/absolute/path")
    if value and os.path.exists(value):
        return "local:" + str(Path(value).resolve())
    if hub.is_hub_repo_id(value):
        return value
    raise InputError(
        f"{option} {text!r} is neither a hub repo id, community:NAME, nor an existing path",
        rule="spec.source-id",
        fix="check the spelling; for a community pipeline write community:NAME",
    )


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


def _add_signer(args) -> int:
    from pipewarden.registry._time import parse_date_arg

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
        print(f"  signer  {s.name}: {s.public_key.text} (key id {s.key_id[:16]}){exp}")
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


def _lock(args) -> int:
    from pipewarden.registry.lockfile import (
        LockEntry,
        entry_for_local_code,
        entry_for_local_weights,
        write_lock,
    )

    if not args.weights and not args.custom_pipeline:
        raise InputError(
            "nothing to lock",
            rule="cli.bad-argument",
            fix="pipewarden lock --weights DIR_OR_REPO --custom-pipeline DIR_OR_REPO",
        )
    from pipewarden.loader.spec import parse_pipeline_spec, parse_weights_spec

    entries = []
    if args.weights:
        weights = parse_weights_spec(args.weights, revision=args.revision)
        if weights.kind == "local":
            entries.append(entry_for_local_weights(weights.value))
        else:
            from pipewarden.loader import hub

            snap = hub.resolve_weights(weights.value, revision=weights.revision)
            entries.append(LockEntry(source=snap.source, role="weights", files=dict(snap.digests()), commit=snap.commit))
    if args.custom_pipeline:
        try:
            code_spec = parse_pipeline_spec(args.custom_pipeline, revision=args.custom_revision)
        except ValueError:
            raise InputError(
                f"--custom-pipeline {args.custom_pipeline!r} is not a local path, hub repo id or community name",
                rule="lock.unknown-source",
                fix="check the spelling",
            ) from None
        if code_spec.kind == "local":
            entries.append(entry_for_local_code(code_spec.value))
        else:
            from pipewarden.loader import hub

            code = hub.resolve_code(code_spec.value, kind=code_spec.kind, revision=code_spec.revision)
            entries.append(LockEntry(source=code.source_id, role="code", files=dict(code.files), commit=code.commit))
    lock = write_lock(args.out, entries)
    for e in entries:
        at = f" @ {e.commit}" if e.commit else ""
        print(f"locked {e.role} {e.source}{at}: {len(e.files)} file(s)")
    print(f"{args.out}: {len(lock.entries)} entr{'y' if len(lock.entries) == 1 else 'ies'}")
    return 0
