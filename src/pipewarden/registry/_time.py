"""Time for expiry checks: one clock seam, one timestamp format, one skew rule.

Clock-skew rule (conservative direction): something that expires at ``T`` stops counting at
``T - EXPIRY_SKEW``. A verifier whose clock runs up to ``EXPIRY_SKEW`` slow therefore still
refuses on time; a fast clock only refuses early. ``signed_at`` is informational and is not
compared with the local clock (a signer's clock running ahead must not break verification).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable

from pipewarden.errors import InputError

UTC = _dt.timezone.utc
#: Things expiring at T are treated as expired from T - EXPIRY_SKEW on.
EXPIRY_SKEW = _dt.timedelta(minutes=5)
#: Expiry used by ``pipewarden sign`` when ``--expires`` is not given.
DEFAULT_SIGNATURE_LIFETIME = _dt.timedelta(days=365)

_TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
#: Dates outside this range are refused (they cannot be shifted by a time zone or the skew, and
#: are not written back as four-digit years): 1970-01-01 <= t < 9999-01-01, UTC.
EARLIEST = _dt.datetime(1970, 1, 1, tzinfo=UTC)
LATEST = _dt.datetime(9999, 1, 1, tzinfo=UTC)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")

#: The clock seam. Tests pass ``now=`` explicitly instead of patching this.
clock: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(UTC)  # noqa: E731


def resolve_now(now: _dt.datetime | None) -> _dt.datetime:
    if now is None:
        now = clock()
    if not isinstance(now, _dt.datetime):
        raise TypeError("now must be a datetime")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (use datetime.now(timezone.utc))")
    return now.astimezone(UTC)


def is_expired(expires: _dt.datetime | None, now: _dt.datetime) -> bool:
    if expires is None:
        return False
    try:
        return now >= expires - EXPIRY_SKEW
    except OverflowError:  # expires within the skew of datetime.min: long past
        return True


def check_range(t: _dt.datetime, *, what: str) -> _dt.datetime:
    """Refuse a time outside [EARLIEST, LATEST) with a clean error (no OverflowError later)."""
    try:
        utc = t.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not (EARLIEST <= utc < LATEST):
        raise InputError(
            f"{what} {t.isoformat()} is out of range",
            rule="registry.bad-time",
            fix="write a date in that range, e.g. 2027-01-01",
        )
    return utc


def format_ts(t: _dt.datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC, seconds precision (the only form in signed payloads)."""
    u = t.astimezone(UTC)
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}Z"


def parse_ts(text: object, *, what: str) -> _dt.datetime:
    if not isinstance(text, str) or not _TS_RE.fullmatch(text):
        raise InputError(f"{what} is not a UTC timestamp YYYY-MM-DDTHH:MM:SSZ", rule="registry.bad-time")
    try:
        parsed = _dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise InputError(f"{what} {text!r} is not a valid date", rule="registry.bad-time") from None
    return check_range(parsed, what=what)


def parse_date_arg(text: str, *, what: str = "--expires") -> _dt.datetime:
    """``YYYY-MM-DD`` (start of that day, UTC) or a full ``YYYY-MM-DDTHH:MM:SSZ`` timestamp."""
    if isinstance(text, str) and _DATE_RE.fullmatch(text):
        try:
            d = _dt.date.fromisoformat(text)
        except ValueError:
            raise InputError(f"{what} {text!r} is not a valid date", rule="registry.bad-time") from None
        return check_range(_dt.datetime(d.year, d.month, d.day, tzinfo=UTC), what=what)
    if not isinstance(text, str) or not _TS_RE.fullmatch(text):
        raise InputError(
            f"{what} {text!r} is not a date",
            rule="registry.bad-time",
            fix=f"e.g. {what} {(_dt.datetime.now(UTC) + _dt.timedelta(days=90)).date().isoformat()}",
        )
    return parse_ts(text, what=what)


def from_toml_value(value: object, *, what: str) -> _dt.datetime:
    """A TOML date (start of that day, UTC) or an offset date-time; local date-times are refused."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InputError(
                f"{what} has no time zone",
                rule="registry.bad-time",
                fix="write a date (2027-01-01) or a UTC time (2027-01-01T00:00:00Z)",
            )
        return check_range(value, what=what).replace(microsecond=0)
    if isinstance(value, _dt.date):
        return check_range(_dt.datetime(value.year, value.month, value.day, tzinfo=UTC), what=what)
    raise InputError(f"{what} is not a date", rule="registry.bad-time")
