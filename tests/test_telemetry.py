"""Reading telemetry lines column-wise (`telemetry.read_lines`) is reading them one by one (`parse_event`).

`read_lines` reads a batch of lines with msgspec and Arrow and leaves every line it cannot prove it reads
as `parse_event` does to `parse_event`. These tests generate lines, well-formed and damaged, written
compactly and otherwise, and check that every line it read holds exactly what `parse_event` makes of
it; and that a day aggregates the same whichever way its lines were written.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consent_gate.aggregates import aggregate_telemetry
from consent_gate.records import MAX_JSON_DEPTH, MalformedRecord, parse_timestamp, timestamps_us
from consent_gate.telemetry import _STRINGS, ALLOWED_FIELDS, EVENT_SCHEMA, GROUP_FIELDS, parse_event, read_lines

pytestmark = pytest.mark.unit

ABSENT = object()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- timestamps ---------------------------------------------------------------------------------


def _two(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: f"{n:02d}")


_timestamps = st.builds(
    lambda year, month, day, t, hour, minute, second, fraction, offset, twist: twist(
        f"{year}-{month}-{day}{t}{hour}:{minute}:{second}{fraction}{offset}"
    ),
    st.one_of(st.sampled_from(["1899", "1900", "1970", "2024", "2026", "2100", "2199", "2200", "2201", "0000"]),
              st.integers(0, 9999).map(lambda n: f"{n:04d}")),
    _two(0, 13), _two(0, 32), st.sampled_from(["T", "T", "T", " ", "t"]),
    _two(0, 25), _two(0, 61), _two(0, 61),
    st.one_of(st.just(""), st.text("0123456789", min_size=0, max_size=11).map(lambda d: "." + d)),
    st.one_of(st.sampled_from(["Z", "Z", "z", "", "+00:00", "-00:00"]),
              st.builds(lambda sign, h, m: f"{sign}{h}:{m}", st.sampled_from("+-"), _two(0, 25), _two(0, 61))),
    st.sampled_from([
        lambda t: t,
        lambda t: t + "\n",  # Python's `$` takes a trailing newline
        lambda t: t.replace("1", "\u0661", 1),  # an Arabic-Indic digit: Python's \d takes it
        lambda t: t[:-1],
        lambda t: " " + t,
    ]),
)  # fmt: skip


def _parsed_us(value: Any) -> int | None:
    try:
        return (parse_timestamp(value, "ts") - EPOCH) // timedelta(microseconds=1)
    except MalformedRecord:
        return None


@given(st.lists(st.one_of(_timestamps, st.none(), st.text(max_size=30)), max_size=40), st.integers(0, 3))
@settings(max_examples=400, deadline=None)
def test_timestamps_read_column_wise_are_the_instants_parse_timestamp_returns(values, skip):
    column = pa.array(values, pa.string())[skip:]  # a sliced array: its buffers start elsewhere
    instants, read = timestamps_us(column)
    assert len(instants) == len(read) == len(column)
    for value, instant, was_read in zip(column.to_pylist(), instants.tolist(), read.tolist(), strict=True):
        if was_read:
            assert _parsed_us(value) == instant, value


def test_the_plain_timestamps_are_read_column_wise():
    values = ["2026-11-02T01:31:41.000Z", "2026-11-01T20:31:48.123456789-05:00", "2024-02-29T23:59:59+14:00",
              "1900-01-01T00:00:00Z", "2200-01-01T00:00:00Z"]  # fmt: skip
    instants, read = timestamps_us(pa.array(values))
    assert read.all()
    assert instants.tolist() == [_parsed_us(value) for value in values]
    refused = ["2023-02-29T00:00:00Z", "2026-11-02T10:00:00", "1899-12-31T23:59:59Z", "2026-11-02T24:00:00Z", None]
    assert not timestamps_us(pa.array(refused, pa.string()))[1].any()


# --- lines --------------------------------------------------------------------------------------

_text = st.one_of(st.sampled_from(["", "a", "é", "\\", '"', "\n", "\u2028", "😀"]), st.text(max_size=6))
_strings = st.one_of(st.sampled_from(["mac", "ios", "eu", "join", "6.3.0", ""]), _text)
_not_strings = st.one_of(st.none(), st.integers(-5, 5), st.booleans(), st.just([]), st.just({"a": "b"}), st.floats())
_durations = st.one_of(
    st.none(), st.booleans(), _text,
    st.integers(-10, 10**6), st.integers(-(10**30), 10**30),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**63, 2**64, -0.0, 0.0, 1e308, 5e-324]),
    st.floats(allow_nan=False, allow_infinity=False),
)  # fmt: skip
_extra = st.dictionaries(
    st.sampled_from(["account_id", "email", "ip", "nested", "n"]),
    st.recursive(st.one_of(st.none(), st.integers(), _text), lambda inner: st.lists(inner, max_size=2), max_leaves=4),
    max_size=3,
)


_valid_fields = st.fixed_dictionaries(
    {
        "event_id": st.sampled_from(["ev_1", "ev_2", "ev_3", "é"]),
        "ts": st.sampled_from(
            ["2026-11-02T10:00:00Z", "2026-11-01T22:00:00.5-04:00", "2026-11-02T23:59:59.999999999Z"]
        ),
        **{name: st.one_of(_strings, st.none()) for name in (*GROUP_FIELDS, "user_id")},
        "duration_ms": st.one_of(st.none(), st.integers(0, 10**6), st.floats(0, 1e9)),
    }
)
# Any value a field may be sent as: the valid ones, the refused ones, the unusual ones parse_event reads.
_any_value = {
    "event_id": st.one_of(_strings, _not_strings),
    "ts": st.one_of(_timestamps, _not_strings),
    **{name: st.one_of(_strings, _not_strings) for name in (*GROUP_FIELDS, "user_id")},
    "duration_ms": _durations,
}


@st.composite
def _events(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid events (so the damage below meets lines read column-wise), some fields changed."""
    event = draw(_valid_fields)
    for name in draw(st.lists(st.sampled_from(list(_any_value)), max_size=2)):
        if draw(st.booleans()):
            event.pop(name, None)  # absent, as opposed to null
        else:
            event[name] = draw(_any_value[name])
    event.update(draw(_extra))
    return event


_WRITINGS = st.sampled_from(
    [
        lambda e: json.dumps(e, separators=(",", ":"), ensure_ascii=False),  # compact: column-wise
        lambda e: json.dumps(e, separators=(",", ":"), ensure_ascii=False),
        lambda e: json.dumps(e, separators=(",", ":")),  # \u escapes: not canonical, one by one
        lambda e: json.dumps(e, ensure_ascii=False),  # spaced as json.dumps's default: column-wise
        lambda e: json.dumps(e, separators=(", ", ":")),  # spaced otherwise: one by one
        lambda e: json.dumps(e, separators=(",", ":"), ensure_ascii=False) + "\r",
        lambda e: " " + json.dumps(e, separators=(",", ":"), ensure_ascii=False),
    ]
)
_DAMAGE = st.sampled_from(
    [
        lambda t: t,
        lambda t: t,
        lambda t: t.replace("{", '{"user_id":"u_9",', 1),  # a duplicate key when user_id is there too
        lambda t: t.replace("{", '{"x":{"k":1,"k":1},', 1),  # a duplicate key nested in a field never read
        lambda t: t.replace("{", '{"x":' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + ",", 1),  # too deep
        lambda t: t.replace("{", '{"x":' + "[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2) + ",", 1),
        lambda t: t.replace("1", "NaN", 1),
        lambda t: t.replace('"', '"\\ud800', 1),
        lambda t: t[: len(t) // 2],
        lambda t: "",
        lambda t: "  ",
        lambda t: "[" + t + "]",
        lambda t: t + "," + t,
    ]
)
_lines = st.lists(
    st.builds(lambda e, write, damage: damage(write(e)).encode("utf-8", "surrogatepass"), _events(), _WRITINGS, _DAMAGE)
    | st.binary(max_size=20),
    max_size=40,
)


# Batches written compactly throughout, as most are: the column-wise reading's own checks meet them.
_compact_lines = st.lists(
    st.builds(
        lambda e, damage: damage(_compact(e).decode()).encode("utf-8", "surrogatepass"),
        _events(),
        st.sampled_from([lambda t: t] * 6 + [
            lambda t: t.replace("{", '{"x":' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + ",", 1),
            lambda t: t.replace("{", '{"x":{"y":' + "[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2) + "},", 1),
            lambda t: t.replace("{", '{"user_id":"u_9",', 1),
        ]),
    ),
    max_size=30,
)  # fmt: skip


def _reading(line: bytes) -> tuple[Any, ...] | None:
    """What parse_event makes of a line, as the row read_lines would hold; None if it refuses it."""
    try:
        event = parse_event(line)
    except MalformedRecord:
        return None
    return (event.event_id, event.ts_us, *event.raw, event.user_id, event.duration_ms)


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Equal, telling -0.0 from 0.0 and 1 from 1.0 as repr does."""
    return repr(a) == repr(b)


@given(st.one_of(_lines, _compact_lines))
@settings(max_examples=800, deadline=None)
def test_every_line_read_column_wise_holds_what_parse_event_reads(lines):
    batch = read_lines(lines)
    assert batch.events.schema.names == [*EVENT_SCHEMA.names, "index"]
    read = batch.events.column("index").to_pylist()
    assert sorted(read + batch.rest) == list(range(len(lines)))  # every line once: read, or left
    assert batch.rest == sorted(batch.rest)
    rows = batch.events.drop_columns(["index"]).to_pylist()
    for position, row in zip(read, rows, strict=True):
        expected = _reading(lines[position])
        assert expected is not None, lines[position]
        assert _same(tuple(row.values()), expected), lines[position]


def _compact(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def _event(n: int, **fields: Any) -> dict[str, Any]:
    event = {
        "event_id": f"ev_{n}", "ts": "2026-11-02T01:31:41.000Z", "account_id": "acct_1", "user_id": f"u_{n % 7}",
        "meeting_id": "m_1", "event_type": "meeting_join", "client_version": "6.3.0", "platform": "ios",
        "region": "us-west", "duration_ms": n, "email": "ada.lovelace@example.com",
    }  # fmt: skip
    event.update(fields)
    return {name: value for name, value in event.items() if value is not ABSENT}


def test_a_compactly_written_batch_is_read_column_wise_but_for_its_malformed_lines():
    lines = [_compact(_event(n)) for n in range(3000)]
    lines[5] = lines[5][:40]  # cut short
    lines[1700] = b""  # blank
    lines[2999] = _compact(_event(2999, duration_ms=-1))  # refused by parse_event
    lines[42] = _compact(_event(42, ts="2026-11-02T10:00:00+00:60"))  # parse_event decides this one
    batch = read_lines(lines)
    assert batch.rest == [5, 42, 1700, 2999]
    assert batch.events.num_rows == 2996
    assert _reading(lines[42]) is None  # ... and refuses it: an offset's minutes stop at 59


def test_lines_nested_too_deep_or_with_a_bool_duration_are_left_to_parse_event():
    too_deep = _compact(_event(1, x=[[[]]])).replace(b"[[[]]]", b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    deepest = _compact(_event(2, x=[[[]]])).replace(
        b"[[[]]]", b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1)
    )
    lines = [_compact(_event(0)), too_deep, deepest, _compact(_event(3, duration_ms=True)), _compact(_event(4))]
    batch = read_lines(lines)
    assert batch.rest == [1, 3]
    assert _reading(too_deep) is None and _reading(lines[3]) is None and _reading(deepest) is not None
    assert read_lines([_compact(_event(3, duration_ms=False))]).rest == [0]


def test_nothing_but_the_allow_list_reaches_the_columns():
    assert set(_STRINGS.names) | {"duration_ms"} <= set(ALLOWED_FIELDS)
    lines = [_compact(_event(n, ip="10.0.0.7", device_id="dev_secret")) for n in range(10)]
    batch = read_lines(lines)
    assert batch.events.num_rows == 10
    text = repr(batch.events.to_pydict())
    assert "ada.lovelace" not in text and "10.0.0.7" not in text and "dev_secret" not in text


# --- a day --------------------------------------------------------------------------------------

DAY = date(2026, 11, 2)


def _write(root: Path, name: str, lines: list[bytes]) -> str:
    path = root / f"telemetry/dt={DAY}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines)))
    return str(path)


_day_events = st.lists(
    st.builds(
        _event,
        st.integers(0, 30),
        ts=st.sampled_from(["2026-11-02T10:00:00Z", "2026-11-02T01:00:00+05:00", "2026-11-02T23:59:59.9999999Z"]),
        user_id=st.one_of(st.sampled_from([f"u_{n}" for n in range(5)]), st.just(""), st.just(ABSENT)),
        platform=st.sampled_from(["ios", "mac", "toaster", "", None, ABSENT]),
        client_version=st.sampled_from(["6.3.0", "6.3.0-beta", ABSENT]),
        duration_ms=st.one_of(st.just(ABSENT), st.none(), st.integers(0, 10**6), st.floats(0, 1e6)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=_day_events, redelivered=st.lists(st.integers(0, 59), max_size=10))
def test_a_day_aggregates_the_same_whether_read_column_wise_or_line_by_line(tmp_path_factory, events, redelivered):
    """The same deliveries written compactly (read column-wise) and spaced (read by parse_event), and
    mixed, a redelivery written the other way than its first delivery: the same groups, counts and units."""
    again = [events[n] for n in redelivered if n < len(events)]
    results = []
    for case, (first, second) in enumerate([(_compact, _compact), (_spaced, _spaced), (_compact, _spaced)]):
        root = tmp_path_factory.mktemp(f"day{case}")
        files = [
            _write(root, "a.jsonl.gz", [first(e) for e in events]),
            _write(root, "b.jsonl.gz", [second(e) for e in again]),
        ]
        result = aggregate_telemetry(files, landing_root=str(root), day=DAY, k=1)
        results.append((result.groups.to_pylist(), result.counts, [(q.unit, q.error) for q in result.quarantine]))
    assert results[0] == results[1] == results[2]


def _spaced(event: dict[str, Any]) -> bytes:
    # A space after each comma only: no canonical layout (records.is_canonical_encoding), so parse_event
    # reads every line.
    return json.dumps(event, separators=(", ", ":")).encode()
