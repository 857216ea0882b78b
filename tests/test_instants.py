"""Instants as the contract writes them (SPEC §2.1): ISO-8601 with an offset, read field by field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from consent_gate.errors import MalformedRecord
from consent_gate.instants import parse_timestamp

pytestmark = pytest.mark.unit

_TWO = st.integers(0, 99).map("{:02d}".format)
_SHAPED = st.builds(
    "{}-{}-{}T{}:{}:{}{}{}".format,
    st.sampled_from(["2026", "1900", "2199", "2200", "0001", "9999", "2024"]),
    _TWO,
    _TWO,
    _TWO,
    _TWO,
    _TWO,
    st.sampled_from(["", "."]).flatmap(
        lambda dot: st.text("0123456789", min_size=1, max_size=9).map(dot.__add__) if dot else st.just("")
    ),
    st.sampled_from(["Z", "+00:00", "-00:00", "-05:00", "+05:30", "+14:00", "+23:59", "+24:00", "+05:60"]),
)


def _by_fields(value: str) -> datetime | None:
    """The instant the text names, built from its fields, or None if it names none (or one out of range)."""
    date, rest = value.split("T")
    year, month, day = (int(part) for part in date.split("-"))
    clock, offset = (rest[:-1], "+00:00") if rest.endswith("Z") else (rest[:-6], rest[-6:])
    whole, _, fraction = clock.partition(".")
    hour, minute, second = (int(part) for part in whole.split(":"))
    sign, hours, minutes = (-1 if offset[0] == "-" else 1), int(offset[1:3]), int(offset[4:6])
    if hours > 23 or minutes > 59:
        return None
    try:
        local = datetime(year, month, day, hour, minute, second, int(fraction.ljust(6, "0")[:6]) if fraction else 0)
        instant = local.replace(tzinfo=UTC) - sign * timedelta(hours=hours, minutes=minutes)
    except (ValueError, OverflowError):
        return None
    return instant if datetime(1900, 1, 1, tzinfo=UTC) <= instant <= datetime(2200, 1, 1, tzinfo=UTC) else None


@given(_SHAPED)
@example("2026-11-02T14:58:51-05:00")
@example("2026-11-02T14:58:51.123456789Z")
@example("2026-02-29T00:00:00Z")
@example("2200-01-01T00:00:00.000001Z")
@settings(max_examples=3000, deadline=None)
def test_a_timestamp_is_the_instant_its_fields_name_or_refused(value):
    expected = _by_fields(value)
    if expected is None:
        with pytest.raises(MalformedRecord):
            parse_timestamp(value, "at")
    else:
        parsed = parse_timestamp(value, "at")
        assert parsed == expected and parsed.tzinfo == UTC


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2026-11-02T14:58:51", "without a UTC offset"),
        ("2026-11-02 14:58:51Z", "not an ISO-8601 timestamp"),
        ("2026-11-02", "not an ISO-8601 timestamp"),
        ("2026-11-02T14:58Z", "not an ISO-8601 timestamp"),
        ("2026-11-02T14:58:51.Z", "not an ISO-8601 timestamp"),
        ("2026-11-02T14:58:51.1234567890Z", "not an ISO-8601 timestamp"),
        ("2026-11-31T00:00:00Z", "not a valid date or time"),
        ("2026-11-02T10:00:00+05:60", "not a valid date or time"),
        ("9999-12-31T23:59:59Z", "outside 1900-01-01..2200-01-01"),
    ],
)
def test_what_is_not_an_instant_of_the_contract_is_refused_saying_why(value, problem):
    with pytest.raises(MalformedRecord, match=problem):
        parse_timestamp(value, "at")
