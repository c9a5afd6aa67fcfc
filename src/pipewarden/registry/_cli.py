"""Placeholder: sub-command parsers are added by the module's owner."""

from __future__ import annotations


def add_parsers(subparsers) -> None:
    return None
