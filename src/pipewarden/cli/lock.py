"""``pipewarden lock``: write pipewarden.lock for weights and pipeline code (local or hub).

Exit codes: 0 accepted/done, 1 refused (a ``PipewardenError`` printed by ``cli.main``), 2 unusable
input (``InputError``: malformed TOML/JSON, unreadable files, bad arguments). Heavy imports
(cryptography, the loader) happen inside the command functions.
"""

from __future__ import annotations

from pathlib import Path

from pipewarden.cli._common import add_command
from pipewarden.errors import InputError


def add_parsers(subparsers) -> None:
    p = add_command(subparsers, "lock", "write pipewarden.lock for weights and pipeline code (local or hub)",
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
