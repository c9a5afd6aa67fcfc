"""The ``pipewarden`` command: a thin front over the library.

``main(argv) -> int`` parses arguments and dispatches to the sub-command modules, which import
heavy dependencies (torch, diffusers) lazily so that ``pipewarden audit`` starts fast. Every
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
    "pipewarden.cli.registry",  # keygen, sign, verify, allowlist, lock
    "pipewarden.cli.doctor",  # doctor
    "pipewarden.cli.demo",  # demo
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2, with no traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from pipewarden import __version__

    parser = _Parser(prog="pipewarden", description="Vet and run community diffusion pipelines safely.")
    parser.add_argument("--version", action="version", version=f"pipewarden {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
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
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
