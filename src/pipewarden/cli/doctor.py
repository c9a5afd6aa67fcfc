"""``pipewarden doctor``: print which isolation layers work on this machine, and what each stops.

Measures (``_probe``) rather than guesses: the layers are applied in a throw-away child process
and each is tested. Exit 0 when every layer is active, 1 otherwise (with ``--strict``), else 0.
"""

from __future__ import annotations

import json
import platform
import sys


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="show which isolation layers are available on this machine",
        description="Apply every worker isolation layer in a throw-away process and report what is active.",
    )
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 if any layer is not active")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pipewarden.isolation import LAYER_PURPOSE, probe_layers

    layers = probe_layers()
    if args.json:
        print(json.dumps([{**s.to_json(), "stops": LAYER_PURPOSE.get(s.name, "")} for s in layers], indent=2))
    else:
        print(f"pipewarden isolation layers on {platform.system()} {platform.release()} ({platform.machine()}), "
              f"Python {platform.python_version()}:")
        width = max(len(s.name) for s in layers)
        for s in layers:
            mark = "active " if s.active else "MISSING"
            print(f"  {s.name:<{width}}  {mark}  {s.detail}")
            print(f"  {'':<{width}}           stops: {LAYER_PURPOSE.get(s.name, '')}")
        missing = [s.name for s in layers if not s.active]
        if missing:
            print(f"\n{len(missing)} layer(s) missing: {', '.join(missing)}. Loads with isolation=\"process\" "
                  "warn about them; an allowlist policy can require them.", file=sys.stderr)
    if args.strict and any(not s.active for s in layers):
        return 1
    return 0
