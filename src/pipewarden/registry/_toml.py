"""TOML in and out for registry files (allowlist, lock file).

Reading wraps ``tomllib`` (``tomli`` on 3.10) so that any malformed input becomes an
``InputError``. Writing is a small emitter for the shapes these files use (tables, arrays of
tables, strings, integers, booleans, UTC date-times, arrays of strings); every output is parsed
back and compared before it is returned, so a writer bug cannot produce a file that means
something else.
"""

from __future__ import annotations

import datetime as _dt
import re
import sys
from collections.abc import Mapping
from typing import Any

from pipewarden.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def loads(data: bytes, *, what: str, limit: int) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("TOML input must be bytes")
    if len(data) > limit:
        raise InputError(f"{what} is larger than {limit} bytes", rule="file.too-large")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8", rule="registry.bad-toml", fix="check the file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(
            f"{what} is not valid TOML ({exc})", rule="registry.bad-toml", fix="fix the file"
        ) from None
    except (ValueError, RecursionError) as exc:  # e.g. out-of-range dates, pathological nesting
        raise InputError(
            f"{what} cannot be parsed ({type(exc).__name__})", rule="registry.bad-toml"
        ) from None


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _string(k)


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04X}")
        elif 0xD800 <= o <= 0xDFFF:
            raise ValueError("strings with lone surrogates cannot be written to TOML")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            raise ValueError("naive datetimes are not written")
        from pipewarden.registry._time import format_ts

        return format_ts(v)  # four-digit year always (strftime writes year 1 as "1")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _is_table(v: object) -> bool:
    return isinstance(v, Mapping)


def _is_table_array(v: object) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, Mapping) for x in v)


def _emit(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    for k, v in table.items():
        if not (_is_table(v) or _is_table_array(v)):
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        if _is_table(v):
            sub = [*path, _key(k)]
            lines.append("")
            lines.append("[" + ".".join(sub) + "]")
            _emit(v, sub, lines)
        elif _is_table_array(v):
            sub = [*path, _key(k)]
            for item in v:
                lines.append("")
                lines.append("[[" + ".".join(sub) + "]]")
                _emit(item, sub, lines)


def dumps(doc: Mapping[str, Any], *, header: str = "") -> str:
    """Serialise ``doc``; raises ValueError if the output would not parse back to ``doc``."""
    lines: list[str] = [f"# {line}" if line else "#" for line in header.splitlines()]
    _emit(doc, [], lines)
    text = "\n".join(lines).lstrip("\n") + "\n"
    if tomllib.loads(text) != _normalise(doc):
        raise ValueError("TOML writer produced output that does not round-trip")
    return text


def _normalise(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _normalise(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    if isinstance(v, _dt.datetime):
        return v.astimezone(_dt.timezone.utc).replace(microsecond=0)
    return v
