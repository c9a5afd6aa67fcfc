"""The ``pipewarden`` command: a thin front over the library.

``main(argv) -> int`` parses arguments and dispatches to one module per command group
(``audit``, ``keys``: keygen/sign/verify, ``allowlist``, ``lock``, ``doctor``, ``demo``; shared
pieces in ``_common``), which
import heavy dependencies (torch, diffusers) lazily so that ``pipewarden audit`` starts fast.
Decides nothing itself: every decision is the library's; trusts only its command line. Every
``PipewardenError`` is printed as diagnostics without a traceback. Exit codes: 0 success,
1 refused (or error findings), 2 unusable input or usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pipewarden.errors import PipewardenError

# Each module exposes ``add_parsers(subparsers)``; the parsers it adds set ``func`` to a callable
# ``(args) -> int``. Kept as names so that nothing heavy is imported before it is needed.
_COMMAND_MODULES = (
    "pipewarden.cli.audit",  # audit
    "pipewarden.cli.keys",  # keygen, sign, verify
    "pipewarden.cli.allowlist",  # allowlist add-signer / allow / revoke / policy / show
    "pipewarden.cli.lock",  # lock
    "pipewarden.cli.doctor",  # doctor
    "pipewarden.cli.demo",  # demo
)


EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

EXIT_CODES_HELP = """\
exit codes (every command):
  0    success: accepted, no error findings
  1    refused: a pipeline, signature, lock or policy check failed, or audit found errors
  2    unusable input or usage error (malformed file, missing path, bad option)
  130  interrupted (Ctrl-C)
  141  stdout was closed early (e.g. `pipewarden doctor --json | head`); nothing else printed
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2, with no traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


#: Command name -> the module that adds its parser: ``pipewarden audit ...`` imports and builds
#: only the audit parser (start-up time counts in the audit's throughput). Any other first
#: argument (``--help``, a typo, a command not listed here) builds every parser.
_COMMAND_OF = {
    "audit": "pipewarden.cli.audit",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``pipewarden`` parser; with ``command`` (a name in ``_COMMAND_OF``), only that
    command's module is imported and its parsers added (its usage, help and errors are the same)."""
    from pipewarden import __version__

    parser = _Parser(
        prog="pipewarden",
        description="Vet and run community diffusion pipelines safely.",
        epilog=EXIT_CODES_HELP + "\nRun `pipewarden COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pipewarden {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    only = _COMMAND_OF.get(command) if command is not None else None
    for name in _COMMAND_MODULES if only is None else (only,):
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (``pipewarden doctor --json | head -c 10``): stop quietly, like
        # other Unix tools. Point stdout at /dev/null so the final flush at exit cannot fail.
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments[0] if arguments else None)
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # argparse: --help (0) or usage error (2)
        return int(exc.code or 0)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except PipewardenError as exc:
        print(exc.diagnostics(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
