"""Strict parsing of raw records, and the quarantine record bad input becomes.

Errors raised here name the field and the problem, never the offending value: a value may be
meeting content or a raw personal id, and errors end up in logs and audit files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# ISO-8601 with a mandatory offset. datetime.fromisoformat alone is too lenient (it takes dates
# without a time, a space separator and offset-less values), so the shape is checked first.
_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")
# SPEC §2.1 (revised 2026-11-28): an instant outside this range is malformed. Beyond it nanosecond
# timestamps overflow (pandas, Arrow ns), and no meeting or consent decision can be dated there.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An input unit that could not be read: never published, always listed."""

    unit: str  # where: a path relative to the landing zone, ':<line>' for line units
    error: str  # what is wrong, naming the field; never the content


class MalformedRecord(ValueError):
    """A record that breaks the input contract; the message names the field, not its value."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field '{field}': {problem}")
        self.field = field
        self.problem = problem


def parse_timestamp(value: Any, field: str) -> datetime:
    """An ISO-8601 timestamp with an offset (`Z` or `+hh:mm`), as an aware UTC datetime."""
    if not isinstance(value, str):
        raise MalformedRecord(field, "missing" if value is None else "not a timestamp string")
    match = _TIMESTAMP.match(value)
    if match is None:
        if _TIMESTAMP.match(value + "Z"):
            raise MalformedRecord(field, "timestamp without a UTC offset")
        raise MalformedRecord(field, "not an ISO-8601 timestamp")
    date, clock, fraction, offset = match.groups()
    micros = (fraction or "").ljust(6, "0")[:6]
    offset = "+00:00" if offset == "Z" else offset
    try:
        parsed = datetime.fromisoformat(f"{date}T{clock}.{micros}{offset}")
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


def require_str(record: dict[str, Any], field: str) -> str:
    """A required, non-empty string field."""
    value = record.get(field)
    if not isinstance(value, str) or not value:
        raise MalformedRecord(field, "missing" if value is None or field not in record else "not a non-empty string")
    return value


def optional_str(record: dict[str, Any], field: str) -> str | None:
    """A nullable string field: absent and null mean None; an empty string counts as None too."""
    value = record.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MalformedRecord(field, "not a string")
    return value


def require_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedRecord(what, "not a JSON object")
    return value
