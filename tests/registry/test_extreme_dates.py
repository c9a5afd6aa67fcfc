"""Issue 12 flaw 11: extreme dates in allowlists, signatures and --expires are clean errors (or
accepted and written back as valid TOML), never a traceback or an unreadable file."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipewarden.cli import main
from pipewarden.errors import InputError
from pipewarden.registry._time import format_ts, from_toml_value, is_expired, parse_date_arg, parse_ts
from pipewarden.registry.allowlist import Allowlist
from tests._registry_support import _isolated_state, new_key  # noqa: F401  (autouse)

UTC = dt.timezone.utc
EXTREMES = [
    "0001-01-01",
    "9999-12-31",
    "9999-12-31T23:59:59-05:00",
    "0001-01-01T00:00:00+05:00",
    "0001-01-01T00:04:00Z",
    "9999-12-31T23:59:59Z",
    "1969-12-31",
]


def _allowlist(expires: str) -> bytes:
    key = new_key()
    return f'version = 1\n[[signers]]\nname = "a"\npublic_key = "{key.public_key.text}"\nexpires = {expires}\n'.encode()


@pytest.mark.parametrize("expires", EXTREMES)
def test_extreme_allowlist_dates_are_clean_errors(expires):
    with pytest.raises(InputError, match="out of range"):
        Allowlist.from_bytes(_allowlist(expires))


@pytest.mark.parametrize("expires", ["0001-01-01", "9999-12-31", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "1969-12-31"])
@pytest.mark.parametrize("command", ["add-signer", "sign"])
def test_extreme_expires_arguments_are_clean_errors_and_write_nothing(tmp_path, monkeypatch, capsys, expires, command):
    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(tmp_path / "state"))
    assert main(["keygen", "--name", "a", "--out", str(tmp_path / "k")]) == 0
    allow = tmp_path / "allow.toml"
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "pipeline.py").write_text("x = 1\n")
    if command == "add-signer":
        argv = ["allowlist", "add-signer", str(allow), "--name", "a", "--public-key", str(tmp_path / "k" / "a.pub"), "--expires", expires]
    else:
        argv = ["sign", str(pipe), "--key", str(tmp_path / "k" / "a.key"), "--expires", expires]
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not allow.exists() and not (pipe / "pipewarden.sig").exists()


@settings(max_examples=300, deadline=None)
@given(
    when=st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)),
    offset_minutes=st.integers(-23 * 60, 23 * 60),
)
def test_any_toml_datetime_is_accepted_in_range_or_a_clean_error(when, offset_minutes):
    tz = dt.timezone(dt.timedelta(minutes=offset_minutes))
    value = when.replace(tzinfo=tz, microsecond=0)
    try:
        got = from_toml_value(value, what="expires")
    except InputError:
        return
    text = format_ts(got)
    assert len(text) == 20 and parse_ts(text, what="t") == got  # written back as a valid timestamp
    is_expired(got, dt.datetime.now(UTC))


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=30) | st.from_regex(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}Z)?", fullmatch=True))
def test_any_expires_argument_is_a_date_or_a_clean_error(text):
    try:
        got = parse_date_arg(text)
    except InputError:
        return
    assert parse_ts(format_ts(got), what="t") == got


@settings(max_examples=100, deadline=None)
@given(date=st.dates(min_value=dt.date(1970, 1, 1), max_value=dt.date(9998, 12, 31)))
def test_every_in_range_expiry_round_trips_through_the_allowlist_file(date):
    allow = Allowlist.from_bytes(_allowlist(date.isoformat()))
    again = Allowlist.from_bytes(allow.to_toml().encode())
    assert again.signers[0].expires == allow.signers[0].expires
