"""Instants as the contract writes them: ISO-8601 with an offset, within 1900-01-01..2200-01-01 UTC.

The standard library only: the command line parses `--as-of` with these before it has imported pandas
or pyarrow (`cli`). `records` re-exports them beside their column-wise counterpart, `timestamps_us`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from consent_gate.errors import FutureAsOf, MalformedRecord

# ISO-8601 with a mandatory offset. datetime.fromisoformat alone is too lenient (it takes dates
# without a time, a space separator and offset-less values), so the shape is checked first.
_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")
# SPEC §2.1 (revised 2026-11-28): an instant outside this range is malformed. Beyond it nanosecond
# timestamps overflow (pandas, Arrow ns), and no meeting or consent decision can be dated there.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def parse_timestamp(value: Any, field: str) -> datetime:
    """An ISO-8601 timestamp with an offset (`Z` or `+hh:mm`), as an aware UTC datetime."""
    if not isinstance(value, str):
        raise MalformedRecord(field, "missing" if value is None else "not a timestamp string")
    match = _TIMESTAMP.match(value)
    if match is None:
        if _TIMESTAMP.match(value + "Z"):
            raise MalformedRecord(field, "timestamp without a UTC offset")
        raise MalformedRecord(field, "not an ISO-8601 timestamp")
    # Of this shape, Python 3.11's reader takes every value that names a real instant (`Z`, 1 to 9
    # digits of fraction, truncated to microseconds) and refuses the rest (tests/test_instants.py), but
    # for an offset's minutes past 59: it reads `+05:60` as six hours. The consent judge's SQL
    # (`consent_vector._instant_sql`) and the telemetry's column-wise reader refuse the same.
    offset = match.group(4)
    if offset != "Z" and offset[4:] > "59":
        raise MalformedRecord(field, "not a valid date or time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedRecord(field, "not a valid date or time") from None
    return in_range(parsed, field)


def in_range(instant: datetime, field: str) -> datetime:
    """The instant in UTC, if it lies within 1900-01-01..2200-01-01 UTC; else MalformedRecord."""
    try:
        utc = instant.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 shifted by its offset
        raise MalformedRecord(field, "timestamp outside 1900-01-01..2200-01-01 UTC") from None
    if not EARLIEST <= utc <= LATEST:
        raise MalformedRecord(field, "timestamp outside 1900-01-01..2200-01-01 UTC")
    return utc


def refuse_future_as_of(as_of: datetime, now: datetime, what: str = "as_of") -> datetime:
    """`as_of` in UTC when it is not later than `now`; else FutureAsOf."""
    if as_of.astimezone(UTC) > now.astimezone(UTC):
        raise FutureAsOf(
            f"{what} {as_of.astimezone(UTC).isoformat()} is later than now ({now.astimezone(UTC).isoformat()}): "
            "a future consent instant is refused, since future-dated grants would re-admit revoked content"
        )
    return as_of.astimezone(UTC)
