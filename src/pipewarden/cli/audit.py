"""``pipewarden audit``: static audit of pipeline files for CI (text, JSON, SARIF).

Thin front over :mod:`pipewarden.audit.static` (and, with ``--run``, :mod:`pipewarden.audit.dynamic`).
Exit codes: 0 no error findings, 1 error findings (unparseable files included), 2 usage error
(missing path, bad flag, unwritable output, ``--run`` without the ``run`` extra). Without
``--run`` it imports nothing heavy: torch and diffusers are never loaded by this command.
"""

from __future__ import annotations

import argparse
import sys

from pipewarden.errors import InputError

_FORMATS = ("text", "json", "sarif")
_SIZE_SUFFIXES = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


def _size(value: str) -> int:
    text = value.strip().lower().replace("ib", "b")
    digits = text.rstrip("kmgb")
    suffix = text[len(digits) :]
    try:
        number = int(digits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (use e.g. 2000000, 500k, 2M)") from None
    if suffix not in _SIZE_SUFFIXES or number <= 0:
        raise argparse.ArgumentTypeError(f"not a positive size: {value!r}")
    return number * _SIZE_SUFFIXES[suffix]


def _jobs(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError("must be >= 0 (0 = one per CPU core)")
    return number


def _alias(value: str) -> tuple[str, str]:
    name, sep, target = value.partition("=")
    if not sep or not name.strip() or not target.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=MODULE, got {value!r}")
    return name.strip(), target.strip()


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="statically audit pipeline files (never runs them); text, JSON or SARIF output",
        description=(
            "Audit community pipeline files without running them: parse errors, the pipeline class, "
            "imports outside the sandbox policy, dunder/frame introspection, file/network/pickle calls, "
            "and whether the file compiles under the sandbox's restricted policy. "
            "Exit status: 0 no error findings, 1 error findings, 2 usage error."
        ),
    )
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="files, or directories walked for *.py; none (e.g. an empty "
                             "`git diff --name-only`) is a clean audit with a note")
    parser.add_argument("--format", choices=_FORMATS, default="text", help="output format (default: text)")
    parser.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE instead of stdout")
    parser.add_argument("--jobs", "-j", type=_jobs, default=1, metavar="N",
                        help="audit with N worker processes (0 = one per core; default 1)")
    parser.add_argument("--max-file-size", type=_size, default=None, metavar="SIZE",
                        help="refuse files larger than SIZE unread (default 2M)")
    parser.add_argument("--import-alias", type=_alias, action="append", default=[], metavar="NAME=MODULE",
                        help="treat imports of NAME as MODULE (e.g. MuseVdiffusers=diffusers); repeatable")
    parser.add_argument("--allowlist", metavar="FILE",
                        help="an organisation allowlist (TOML); its [policy] extra_modules and import_aliases "
                             "widen the sandbox policy the files are checked against")
    parser.add_argument("--no-cache", action="store_true",
                        help="audit every file afresh (by default, results of files whose sha256 and audit version "
                             "are unchanged are reused from a per-user cache; PIPEWARDEN_AUDIT_CACHE=FILE|off)")
    parser.add_argument("--run", action="store_true",
                        help="also RUN each file once in a locked-down worker (default limits) on tiny random "
                             "components and a minimal call, and report every capability the policy refused "
                             "(with its line), resource limits hit, whether the call completed, and line "
                             "coverage; needs the `run` extra (torch, diffusers)")
    parser.add_argument("--run-timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="with --run: wall-clock limit per file (default: Limits().wall_s, 600)")
    parser.set_defaults(func=run)


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not number > 0 or number != number or number == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return number


_MAX_ALLOWLIST_BYTES = 4 * 1024 * 1024


def _allowlist_extras(path: str) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[tuple[str, str], ...]]:
    """(extra_modules, import_aliases) of an organisation allowlist, parsed by the registry."""
    from pipewarden.fsaccess import read_user_file
    from pipewarden.registry.allowlist import Allowlist

    data = read_user_file(path, limit=_MAX_ALLOWLIST_BYTES, what="allowlist")
    policy = Allowlist.from_bytes(data, origin=path).policy
    modules = tuple(sorted((name, tuple(attrs)) for name, attrs in policy.extra_modules.items()))
    aliases = tuple(sorted(dict(getattr(policy, "import_aliases", None) or {}).items()))
    return modules, aliases


def run(args: argparse.Namespace) -> int:
    from pipewarden.audit.format import render, summary_line
    from pipewarden.audit.static import DEFAULT_MAX_FILE_SIZE, AuditOptions, audit_paths

    if not args.paths:
        # `pipewarden audit $(git diff --name-only ...)` with nothing changed: nothing to audit
        # is not a usage error. The report (empty) is still written, so CI steps that upload it work.
        print("pipewarden audit: no paths given; nothing to audit", file=sys.stderr)

    extra_modules: tuple[tuple[str, tuple[str, ...]], ...] = ()
    aliases = tuple(args.import_alias)
    if args.allowlist:
        extra_modules, allowlist_aliases = _allowlist_extras(args.allowlist)
        aliases = allowlist_aliases + aliases
    options = AuditOptions(
        max_file_size=args.max_file_size or DEFAULT_MAX_FILE_SIZE,
        import_aliases=aliases,
        extra_modules=extra_modules,
    )
    try:
        options.policy()  # validate the extras before touching any file
    except ValueError as exc:
        raise InputError(f"the policy extras are not valid: {exc}", rule="policy.extras-invalid",
                         fix="fix --import-alias / the allowlist's [policy] table") from None
    cache = None
    if not args.no_cache:
        from pipewarden.audit.cache import AuditCache, default_cache_path

        if default_cache_path() is not None:
            cache = AuditCache(options)
    if args.run_timeout is not None and not args.run:
        raise InputError("--run-timeout applies to --run only", rule="cli.bad-argument",
                         fix="add --run, or drop --run-timeout")
    if args.run:
        from pipewarden.audit.dynamic import require_run_extra, run_paths
        from pipewarden.limits import Limits

        require_run_extra()  # before any file is read: a clean refusal without torch
        limits = Limits(wall_s=args.run_timeout) if args.run_timeout else None
        report = run_paths(args.paths, options, jobs=args.jobs, cache=cache, limits=limits)
    else:
        report = audit_paths(args.paths, options, jobs=args.jobs, cache=cache)
    if not report.files and args.paths:
        print("pipewarden audit: no *.py files found in the given directories", file=sys.stderr)
    rendered = render(report, args.format)
    if args.output:
        from pipewarden.fsaccess import write_new_or_regular

        write_new_or_regular(args.output, rendered.encode("utf-8"))
        print(summary_line(report), file=sys.stderr)
    else:
        sys.stdout.write(rendered)
        sys.stdout.flush()
    return report.exit_code
