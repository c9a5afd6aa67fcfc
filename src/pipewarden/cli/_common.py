"""Shared pieces of the registry command groups (``keys``, ``allowlist``, ``lock``): help texts,
the parser helper and the one parse of a command-line source id."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipewarden.errors import InputError

SOURCE_HELP = (
    "source id: a hub repo id (org/repo), community:NAME for a diffusers community pipeline, "
    "or a local path (a directory or .py file; local:/absolute/path also accepted)"
)
DATE_HELP = "YYYY-MM-DD (start of that day, UTC) or YYYY-MM-DDTHH:MM:SSZ"


def add_command(subparsers, name: str, help: str, description: str):
    return subparsers.add_parser(name, help=help, description=description)


def usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


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
