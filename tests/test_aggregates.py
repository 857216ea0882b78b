"""Telemetry aggregation (SPEC §4): grouping, k-suppression, percentiles, quarantine and accounting."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consent_gate import aggregates, telemetry
from consent_gate.aggregates import (
    AGGREGATE_SCHEMA,
    TelemetryAccountingError,
    TelemetryAggregate,
    TelemetryCounts,
    aggregate_telemetry,
)
from consent_gate.config import DEFAULT_EVENT_TYPES, Policy
from consent_gate.records import load_json
from consent_gate.telemetry import GroupValues

pytestmark = pytest.mark.unit

DAY = date(2026, 11, 2)
PREFIX = f"telemetry/dt={DAY.isoformat()}"
ABSENT = object()  # leave the key out of the event, as opposed to sending null
EMAIL = "ada.lovelace@example.com"
ALLOW_LIST = {"event_id", "ts", "user_id", "event_type", "client_version", "platform", "region", "duration_ms"}

_serial = iter(range(1_000_000_000))


def event(**fields: Any) -> dict[str, Any]:
    """A valid event on DAY; keyword arguments override fields, ABSENT removes one."""
    record: dict[str, Any] = {
        "event_id": f"ev_{next(_serial)}",
        "ts": "2026-11-02T10:00:00.123Z",
        "account_id": "acct_1",
        "user_id": "u_1",
        "meeting_id": "m_1",
        "event_type": "audio_connect",
        "client_version": "5.1.0",
        "platform": "mac",
        "region": "eu",
    }
    record.update(fields)
    return {key: value for key, value in record.items() if value is not ABSENT}


Item = dict[str, Any] | str | bytes


def line(item: Item) -> bytes:
    if isinstance(item, bytes):
        return item
    return (item if isinstance(item, str) else json.dumps(item)).encode()


def write_part(root: Path, items: list[Item], name: str = "part-0001.jsonl.gz") -> str:
    """A gzip part under the day's telemetry folder; strings and bytes are written verbatim as lines."""
    path = root / PREFIX / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as handle:
        handle.write(b"".join(line(item) + b"\n" for item in items))
    return str(path)


# The policy's allow-list plus the labels these tests group by (any other event_type is "other").
TEST_VALUES = GroupValues.from_policy(
    Policy(telemetry_event_types=(*DEFAULT_EVENT_TYPES, "one", "none", "small", "exact"))
)


def run(root: Path, *files: str, k: int = 1, day: date = DAY) -> TelemetryAggregate:
    return aggregate_telemetry(list(files), landing_root=str(root), day=day, k=k, values=TEST_VALUES)


def rows(result: TelemetryAggregate) -> list[dict[str, Any]]:
    return result.groups.to_pylist()


def assert_accounting(counts: TelemetryCounts) -> None:
    assert counts.telemetry_in == counts.aggregated + counts.suppressed_events + counts.out_of_partition
    assert counts.lines_read == counts.telemetry_in + counts.duplicate + counts.quarantined


# --- grouping -----------------------------------------------------------------------------------


def test_events_are_grouped_by_the_five_keys_into_the_nine_columns(tmp_path):
    part = write_part(tmp_path, [
        event(user_id="u_1", platform="mac"),
        event(user_id="u_2", platform="mac"),
        event(user_id="u_1", platform="windows"),
        event(user_id="u_1", platform="mac", region="us"),
    ])  # fmt: skip
    result = run(tmp_path, part)
    assert result.groups.schema.equals(AGGREGATE_SCHEMA)
    assert result.groups.column_names == [
        "dt", "event_type", "client_version", "platform", "region",
        "event_count", "distinct_users", "duration_ms_p50", "duration_ms_p95",
    ]  # fmt: skip
    keyed = [(r["platform"], r["region"], r["event_count"], r["distinct_users"]) for r in rows(result)]
    assert keyed == [("mac", "eu", 2, 2), ("mac", "us", 1, 1), ("windows", "eu", 1, 1)]
    assert {r["dt"] for r in rows(result)} == {"2026-11-02"}
    assert result.quarantine == []
    assert_accounting(result.counts)


def test_missing_null_and_empty_key_values_all_count_as_unknown(tmp_path):
    part = write_part(tmp_path, [
        event(user_id="u_1", platform=ABSENT),
        event(user_id="u_2", platform=None),
        event(user_id="u_3", platform=""),
        event(user_id="u_4", event_type=ABSENT, client_version=None, region=""),
    ])  # fmt: skip
    result = run(tmp_path, part)
    keyed = [(r["event_type"], r["client_version"], r["platform"], r["region"], r["event_count"]) for r in rows(result)]
    assert keyed == [("audio_connect", "5.1.0", "unknown", "eu", 3), ("unknown", "unknown", "mac", "unknown", 1)]


def test_groups_are_sorted_by_their_keys_across_files(tmp_path):
    first = write_part(
        tmp_path, [event(event_type="video_start"), event(event_type="app_open", region="us")], "a.jsonl.gz"
    )
    second = write_part(tmp_path, [event(event_type="app_open", region="ap")], "b.jsonl.gz")
    result = run(tmp_path, first, second)
    assert [(r["event_type"], r["region"]) for r in rows(result)] == [
        ("app_open", "ap"), ("app_open", "us"), ("video_start", "eu")
    ]  # fmt: skip


def test_distinct_users_ignore_null_empty_and_missing_user_ids(tmp_path):
    part = write_part(tmp_path, [
        event(user_id="u_1"), event(user_id="u_1"), event(user_id="u_2"),
        event(user_id=None), event(user_id=""), event(user_id=ABSENT),
    ])  # fmt: skip
    (group,) = rows(run(tmp_path, part))
    assert group["event_count"] == 6 and group["distinct_users"] == 2


def test_no_identifier_leaves_the_step(tmp_path):
    part = write_part(tmp_path, [event(user_id=f"u_secret_{n}", account_id="acct_secret") for n in range(3)])
    result = run(tmp_path, part)
    assert len(result.groups) == 1
    published = repr(result.groups.to_pydict())
    assert "secret" not in published and "m_1" not in published and "ev_" not in published


# --- percentiles --------------------------------------------------------------------------------


def test_percentiles_interpolate_linearly_between_closest_ranks(tmp_path):
    # Sorted durations 100, 200, 300, 400: p50 sits halfway between ranks 1 and 2 -> 250;
    # p95 sits at rank 0.95 * 3 = 2.85 -> 300 + 0.85 * (400 - 300) = 385. Nulls and absences do not count.
    durations = [400, 100, None, 300, ABSENT, 200.0]
    part = write_part(tmp_path, [event(duration_ms=d) for d in durations])
    (group,) = rows(run(tmp_path, part))
    assert group["event_count"] == 6
    assert group["duration_ms_p50"] == pytest.approx(250.0)
    assert group["duration_ms_p95"] == pytest.approx(385.0)


def test_a_single_duration_is_both_percentiles_and_none_gives_nulls(tmp_path):
    part = write_part(tmp_path, [
        event(event_type="one", duration_ms=0),
        event(event_type="none", duration_ms=None), event(event_type="none", duration_ms=ABSENT),
    ])  # fmt: skip
    by_type = {r["event_type"]: r for r in rows(run(tmp_path, part))}
    assert (by_type["one"]["duration_ms_p50"], by_type["one"]["duration_ms_p95"]) == (0.0, 0.0)
    assert (by_type["none"]["duration_ms_p50"], by_type["none"]["duration_ms_p95"]) == (None, None)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A landing root reused by property tests (hypothesis does not mix with function-scoped tmp_path)."""
    return tmp_path_factory.mktemp("landing")


durations_ms = st.one_of(
    st.integers(min_value=0, max_value=10**12),
    st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(durations=st.lists(st.one_of(durations_ms, st.none()), min_size=1, max_size=60))
def test_percentiles_match_numpy_on_random_durations(scratch, durations):
    part = write_part(scratch, [event(duration_ms=d) for d in durations], "percentiles.jsonl.gz")
    (group,) = rows(run(scratch, part))
    present = [float(d) for d in durations if d is not None]
    if not present:
        assert group["duration_ms_p50"] is None and group["duration_ms_p95"] is None
        return
    p50, p95 = np.percentile(present, [50, 95])
    assert group["duration_ms_p50"] == pytest.approx(p50, rel=1e-12, abs=1e-9)
    assert group["duration_ms_p95"] == pytest.approx(p95, rel=1e-12, abs=1e-9)


# --- k-anonymity --------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_a_group_needs_k_distinct_users_to_be_published(tmp_path, k):
    # k - 1 users, each twice, plus events without a user: many events, still too few people.
    small = [event(event_type="small", user_id=f"u_{n}") for n in range(k - 1) for _ in range(2)]
    small += [event(event_type="small", user_id=None), event(event_type="small", user_id="")]
    exact = [event(event_type="exact", user_id=f"u_{n}") for n in range(k)]
    result = run(tmp_path, write_part(tmp_path, small + exact), k=k)
    assert [(r["event_type"], r["distinct_users"]) for r in rows(result)] == [("exact", k)]
    assert result.counts.suppressed_groups == 1
    assert result.counts.suppressed_events == len(small)
    assert result.counts.aggregated == k
    assert_accounting(result.counts)


def test_k_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="k must be at least 1"):
        run(tmp_path, write_part(tmp_path, [event(user_id=None)]), k=0)


# --- partition ----------------------------------------------------------------------------------


def test_events_whose_utc_day_is_another_day_are_out_of_partition(tmp_path):
    part = write_part(tmp_path, [
        event(ts="2026-11-02T01:00:00+05:00"),  # 2026-11-01T20:00Z: yesterday in UTC
        event(ts="2026-11-01T23:30:00-05:00"),  # 2026-11-02T04:30Z: today in UTC
        event(ts="2026-11-03T00:00:00Z"),  # tomorrow
        event(ts="2026-11-02T23:59:59.999999999Z"),  # today, to the last nanosecond
    ])  # fmt: skip
    result = run(tmp_path, part)
    assert result.counts.out_of_partition == 2
    assert result.counts.telemetry_in == 4 and result.counts.aggregated == 2
    assert result.quarantine == []
    assert_accounting(result.counts)


# --- quarantine ---------------------------------------------------------------------------------


def raw_duration(literal: str) -> str:
    """An event line whose duration_ms is a JSON literal json.dumps would not write (NaN, 1e400 as an int)."""
    return '{"event_id": "e", "ts": "2026-11-02T10:00:00Z", "duration_ms": ' + literal + "}"


MALFORMED = [
    # (case, line, field the error names, text the error must not contain)
    ("invalid_json", '{"event_id": "ev_hidden", "ts": "2026-11-02T10:', "<line>", "ev_hidden"),
    ("not_utf8", b'{"event_id": "ev_\xff\xfe"}', "<line>", None),
    ("not_an_object", '["ev_hidden", "2026-11-02T10:00:00Z"]', "<line>", "ev_hidden"),
    ("missing_event_id", event(event_id=ABSENT, user_id="u_hidden"), "event_id", "u_hidden"),
    ("empty_event_id", event(event_id=""), "event_id", None),
    ("numeric_event_id", event(event_id=987654321), "event_id", "987654321"),
    ("missing_ts", event(ts=ABSENT), "ts", None),
    ("ts_without_offset", event(ts="2026-11-02T10:11:12"), "ts", "10:11:12"),
    ("ts_not_iso", event(ts="02/11/2026 10:11"), "ts", "10:11"),
    ("ts_date_only", event(ts="2026-11-02"), "ts", "2026-11-02"),
    ("platform_not_string", event(platform=424242), "platform", "424242"),
    ("region_object", event(region={"code": "eu-hidden"}), "region", "eu-hidden"),
    ("user_id_not_string", event(user_id=31337), "user_id", "31337"),
    ("negative_duration", event(duration_ms=-12345), "duration_ms", "12345"),
    ("bool_duration", event(duration_ms=True), "duration_ms", "True"),
    ("string_duration", event(duration_ms="1500"), "duration_ms", "1500"),
    ("nan_duration", raw_duration("NaN"), "duration_ms", "NaN"),
    ("infinite_duration", raw_duration("-Infinity"), "duration_ms", "Infinity"),
    ("huge_duration", raw_duration("1" + "0" * 400), "duration_ms", "0000"),
]


@pytest.mark.parametrize(("case", "bad", "field", "hidden"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_line_is_one_quarantined_unit_naming_file_line_and_field(tmp_path, case, bad, field, hidden):
    part = write_part(tmp_path, [event(), "", bad, event()])  # the blank line 2 is skipped but still numbered
    result = run(tmp_path, part)
    (unit,) = result.quarantine
    assert unit.unit == f"{PREFIX}/part-0001.jsonl.gz:3"
    if field is not None:
        assert f"field '{field}'" in unit.error
    if hidden is not None:
        assert hidden not in unit.error
    assert result.counts.quarantined == 1 and result.counts.lines_read == 3 and result.counts.telemetry_in == 2
    assert rows(result)[0]["event_count"] == 2
    assert_accounting(result.counts)


def test_the_error_for_a_ts_without_offset_says_so(tmp_path):
    result = run(tmp_path, write_part(tmp_path, [event(ts="2026-11-02T10:11:12")]))
    assert result.quarantine[0].error == "field 'ts': timestamp without a UTC offset"


def test_blank_and_whitespace_lines_are_not_units(tmp_path):
    result = run(tmp_path, write_part(tmp_path, ["", "   ", "\t", event(), ""]))
    assert result.counts.lines_read == 1 and result.counts.quarantined == 0 and result.quarantine == []


def test_a_file_that_is_not_gzip_is_one_quarantined_unit(tmp_path):
    path = tmp_path / PREFIX / "part-0002.jsonl.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(line(event(user_id="u_hidden")) + b"\n")  # plain JSON, not compressed
    good = write_part(tmp_path, [event()])
    result = run(tmp_path, good, str(path))
    (unit,) = result.quarantine
    assert unit.unit == f"{PREFIX}/part-0002.jsonl.gz"
    assert "gzip" in unit.error and "u_hidden" not in unit.error and "{" not in unit.error
    assert result.counts.quarantined == 1 and result.counts.lines_read == 2 and result.counts.aggregated == 1
    assert_accounting(result.counts)


def test_a_truncated_gzip_keeps_the_lines_before_the_break(tmp_path):
    rng = random.Random(3)
    # Random ids make the stream incompressible enough that cutting it leaves many whole lines behind.
    part = write_part(tmp_path, [event(user_id=f"u_{rng.getrandbits(64):x}") for _ in range(3000)])
    data = Path(part).read_bytes()
    Path(part).write_bytes(data[: len(data) * 2 // 3])
    result = run(tmp_path, part)
    assert 0 < result.counts.telemetry_in < 3000
    assert result.quarantine[-1].unit == f"{PREFIX}/part-0001.jsonl.gz"
    assert "cannot be read as gzip" in result.quarantine[-1].error
    assert result.counts.quarantined == len(result.quarantine) >= 1
    assert_accounting(result.counts)


def test_each_file_is_described_by_the_bytes_read_and_a_broken_one_by_nothing(tmp_path):
    whole = write_part(tmp_path, [event(), event()], "part-0001.jsonl.gz")
    # Two gzip members, then zero padding (as some writers leave): all of it is the file, and read.
    padded = tmp_path / PREFIX / "part-0002.jsonl.gz"
    padded.write_bytes(gzip.compress(line(event()) + b"\n") + gzip.compress(line(event()) + b"\n") + bytes(512))
    broken = write_part(tmp_path, [event() for _ in range(50)], "part-0003.jsonl.gz")
    Path(broken).write_bytes(Path(broken).read_bytes()[:-20])
    result = run(tmp_path, whole, str(padded), broken)
    expected = [
        (f"{PREFIX}/{Path(p).name}", Path(p).stat().st_size, hashlib.sha256(Path(p).read_bytes()).hexdigest())
        for p in (whole, padded)
    ]
    assert [(i.path, i.size, i.sha256) for i in result.inputs[:2]] == expected
    assert result.inputs[2] is None  # its stream broke: the step hashes it apart (and the day fails on it)
    assert result.counts.aggregated == 4


def test_the_step_reads_each_telemetry_file_once_and_records_what_it_read(tmp_path, monkeypatch):
    from consent_gate.config import RunSettings
    from consent_gate.layout import Stage
    from consent_gate.sources import LandingZone
    from consent_gate.steps import aggregate_day

    raw = tmp_path / "raw"
    parts = [write_part(raw, [event() for _ in range(3)], f"part-{n}.jsonl.gz") for n in range(3)]
    broken = write_part(raw, [event() for _ in range(50)], "part-9.jsonl.gz")
    Path(broken).write_bytes(Path(broken).read_bytes()[:-20])
    opened: list[str] = []
    open_binary = LandingZone.open_binary
    monkeypatch.setattr(LandingZone, "open_binary", lambda self, rel: opened.append(rel) or open_binary(self, rel))
    settings = RunSettings(str(raw), str(tmp_path / "out"), "sqlite:///unused.db", Policy(), secret=b"k" * 32)
    stage = Stage(DAY, "attempt-1")
    aggregate_day(settings, stage)
    names = [f"{PREFIX}/{Path(p).name}" for p in parts]
    assert sorted(opened) == sorted([*names, f"{PREFIX}/part-9.jsonl.gz", f"{PREFIX}/part-9.jsonl.gz"])
    table = pq.read_table(tmp_path / "out" / stage.root / "audit/inputs/telemetry.parquet").to_pylist()
    assert table == [
        {"path": f"{PREFIX}/{Path(p).name}", "size": Path(p).stat().st_size,
         "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()}
        for p in sorted([*parts, broken])
    ]  # fmt: skip


def test_a_missing_file_is_quarantined_not_silently_skipped(tmp_path):
    result = run(tmp_path, str(tmp_path / PREFIX / "gone.jsonl.gz"))
    assert [q.unit for q in result.quarantine] == [f"{PREFIX}/gone.jsonl.gz"]
    assert result.counts.lines_read == 1 and result.counts.quarantined == 1


def test_fsspec_urls_are_named_relative_to_the_landing_root():
    fs = fsspec.filesystem("memory")
    root = "memory://landing-aggregates-test"
    try:
        with fsspec.open(f"{root}/{PREFIX}/p.jsonl.gz", "wb", compression="gzip") as handle:
            handle.write(b"not json\n" + line(event()) + b"\n")
        result = aggregate_telemetry([f"{root}/{PREFIX}/p.jsonl.gz"], landing_root=root + "/", day=DAY, k=1)
    finally:
        fs.rm("/landing-aggregates-test", recursive=True)
    assert [q.unit for q in result.quarantine] == [f"{PREFIX}/p.jsonl.gz:1"]
    assert result.counts.aggregated == 1


def test_file_urls_and_plain_roots_agree(tmp_path):
    part = write_part(tmp_path, ["{"])
    result = aggregate_telemetry([f"file://{part}"], landing_root=str(tmp_path), day=DAY, k=1)
    assert [q.unit for q in result.quarantine] == [f"{PREFIX}/part-0001.jsonl.gz:1"]


# --- allow-list ---------------------------------------------------------------------------------


class _KeySpy(dict):
    """A decoded event that records which keys the code under test looks at."""

    looked_at: set[str] = set()

    def get(self, key, default=None):
        type(self).looked_at.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        type(self).looked_at.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        type(self).looked_at.add(key)
        return super().__contains__(key)

    def _everything(self, *args, **kwargs):
        raise AssertionError("the whole event was read, not just the allow-list")

    __iter__ = keys = values = items = copy = _everything  # type: ignore[assignment]


def test_only_allow_listed_keys_are_ever_read(tmp_path, monkeypatch):
    def spying_loads(data, where):
        decoded = load_json(data, where)
        return _KeySpy(decoded) if isinstance(decoded, dict) else decoded

    monkeypatch.setattr(telemetry, "load_json", spying_loads)
    _KeySpy.looked_at = set()
    part = write_part(tmp_path, [
        event(email=EMAIL, ip="10.0.0.7", device_id="dev_1", duration_ms=5),
        event(email=EMAIL, ts="2026-11-02T10:00:00"),  # malformed, so every error path is taken too
        event(email=EMAIL, platform=7), event(email=EMAIL, duration_ms=-1), event(email=EMAIL, event_id=None),
    ])  # fmt: skip
    result = run(tmp_path, part)
    assert result.counts.telemetry_in == 1 and result.counts.quarantined == 4
    assert _KeySpy.looked_at and _KeySpy.looked_at <= ALLOW_LIST
    assert set(telemetry.ALLOWED_FIELDS) == ALLOW_LIST


def test_an_extra_key_holding_an_email_never_appears_in_output_or_errors(tmp_path):
    part = write_part(tmp_path, [
        event(email=EMAIL), event(email=EMAIL, user_id="u_2"),
        event(email=EMAIL, ts="2026-11-02T10:00:00"),
        event(email=EMAIL, platform=["x"]),
        '{"email": "' + EMAIL + '", "ts": ',
    ])  # fmt: skip
    result = run(tmp_path, part)
    assert len(result.groups) == 1 and len(result.quarantine) == 3
    assert EMAIL not in repr(result.groups.to_pydict())
    assert all(EMAIL not in q.error and "example.com" not in q.error for q in result.quarantine)
    assert EMAIL not in repr(result.counts)


# --- accounting ---------------------------------------------------------------------------------

_other_day_ts = st.sampled_from(["2026-11-01T23:59:59Z", "2026-11-03T00:00:00+00:00", "2026-11-02T02:00:00+03:00"])
_same_day_ts = st.sampled_from(["2026-11-02T00:00:00Z", "2026-11-02T12:30:00.5+01:00", "2026-11-01T22:00:00-04:00"])
_valid_events = st.builds(
    event,
    ts=st.one_of(_same_day_ts, _other_day_ts),
    user_id=st.one_of(st.none(), st.just(""), st.sampled_from([f"u_{n}" for n in range(8)])),
    event_type=st.sampled_from(["join", "leave", ABSENT, None, ""]),
    platform=st.sampled_from(["mac", "ios", ABSENT]),
    duration_ms=st.one_of(st.just(ABSENT), st.none(), durations_ms),
)
_bad_lines = st.sampled_from([
    "{", "[]", "null", "42", '"text"',
    line(event(ts="2026-11-02T10:00:00")), line(event(event_id=ABSENT)), line(event(platform=1)),
    line(event(duration_ms=-1)), line(event(duration_ms=False)), line(event(user_id=[])),
])  # fmt: skip
_lines = st.lists(st.one_of(_valid_events, _bad_lines, st.sampled_from(["", "  "])), max_size=80)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_lines, min_size=1, max_size=3), k=st.integers(min_value=1, max_value=4))
def test_every_line_read_ends_in_exactly_one_place(scratch, parts, k):
    files = [write_part(scratch, items, f"acct-{n}.jsonl.gz") for n, items in enumerate(parts)]
    result = run(scratch, *files, k=k)
    counts = result.counts
    assert_accounting(counts)
    assert counts.lines_read == sum(1 for items in parts for item in items if line(item).strip())
    assert counts.quarantined == len(result.quarantine)
    assert sum(group["event_count"] for group in rows(result)) == counts.aggregated
    assert all(r["distinct_users"] >= k for r in rows(result))


def test_a_broken_reconciliation_is_raised_not_published():
    table = AGGREGATE_SCHEMA.empty_table()
    with pytest.raises(TelemetryAccountingError, match="telemetry_in"):
        aggregates._check_accounting(TelemetryCounts(telemetry_in=2, aggregated=1, lines_read=2), table)
    with pytest.raises(TelemetryAccountingError, match="lines_read"):
        aggregates._check_accounting(TelemetryCounts(telemetry_in=1, aggregated=1, lines_read=2), table)


@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    last_lf=st.booleans(),
    block=st.integers(1, 50),
    batch=st.integers(1, 8),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_telemetry_lines_are_numbered_across_decompressed_blocks(tmp_path_factory, lines, last_lf, block, batch):
    """Lines split from blocks of any size and handed on in batches of any size: each line once, in
    order, numbered from 1, a last line without LF kept."""
    from consent_gate.sources import LandingZone
    from consent_gate.telemetry import _TelemetryFile

    root = tmp_path_factory.mktemp("lines")
    (root / "t.gz").write_bytes(gzip.compress(b"\n".join(lines) + (b"\n" if last_lf and lines else b"")))
    source = _TelemetryFile(LandingZone(str(root)), "t.gz")
    source._BLOCK_BYTES = block
    source._BATCH_LINES = batch
    expected = lines if (last_lf or not lines or lines[-1]) else lines[:-1]
    batches = list(source.batches())
    assert [(n, line) for first, run in batches for n, line in enumerate(run, first)] == list(
        enumerate(expected, start=1)
    )
    assert all(len(run) >= batch for _, run in batches[:-1])
    assert source.error is None


# --- repeated deliveries ------------------------------------------------------------------------

CHANGES = [
    # (case, how the second delivery differs from the first)
    ("duration_added", {"duration_ms": 5}),
    ("duration_null", {"duration_ms": None}),
    ("user_id_absent", {"user_id": ABSENT}),
    ("user_id_other", {"user_id": "u_2"}),
    ("platform_null", {"platform": None}),
    ("region_other", {"region": "us"}),
    ("client_version_absent", {"client_version": ABSENT}),
    ("event_type_other", {"event_type": "leave"}),
    ("ts_other", {"ts": "2026-11-02T10:00:00.124Z"}),
]


@pytest.mark.parametrize(("case", "change"), CHANGES, ids=[c[0] for c in CHANGES])
def test_deliveries_that_differ_in_one_parsed_field_are_all_quarantined(tmp_path, case, change):
    first = event(event_id="ev_twice", duration_ms=7) if case == "duration_null" else event(event_id="ev_twice")
    second = {key: value for key, value in {**first, **change}.items() if value is not ABSENT}
    compact = json.dumps(second, separators=(",", ":")).encode()  # read column-wise
    one_by_one = json.dumps(first, separators=(", ", ":"))  # no canonical layout: parse_event reads it
    result = run(tmp_path, write_part(tmp_path, [one_by_one, event(), compact]))
    assert [q.unit for q in result.quarantine] == [f"{PREFIX}/part-0001.jsonl.gz:1", f"{PREFIX}/part-0001.jsonl.gz:3"]
    assert result.counts.telemetry_in == 1 and result.counts.duplicate == 0 and result.counts.quarantined == 2
    assert_accounting(result.counts)


def test_deliveries_that_spell_the_same_instant_and_values_differently_are_one_event(tmp_path):
    first = event(event_id="ev_twice", ts="2026-11-02T10:00:00.123Z", duration_ms=5, email="a@example.com")
    second = dict(first, ts="2026-11-02T11:00:00.123000+01:00", duration_ms=5.0, email="b@example.com")
    result = run(tmp_path, write_part(tmp_path, [first, json.dumps(second, separators=(",", ":"))]))
    assert result.quarantine == [] and result.counts.duplicate == 1 and result.counts.aggregated == 1
    assert_accounting(result.counts)


def test_a_column_wise_reading_that_fails_leaves_its_lines_to_the_strict_reader(tmp_path, monkeypatch):
    items = [json.dumps(event(user_id=f"u_{n % 3}"), separators=(",", ":")) for n in range(50)]
    part = write_part(tmp_path, [*items, "{", event(ts="2026-11-02T10:00:00")])
    expected = run(tmp_path, part)

    def broken(lines):
        raise RuntimeError("a bug in the column-wise reading")

    monkeypatch.setattr(aggregates, "read_lines", broken)
    result = run(tmp_path, part)
    assert expected.counts.read_one_by_one_batches == 0 and result.counts.read_one_by_one_batches == 1
    assert rows(result) == rows(expected) and result.counts == replace(expected.counts, read_one_by_one_batches=1)
    assert [(q.unit, q.error) for q in result.quarantine] == [(q.unit, q.error) for q in expected.quarantine]
    assert result.counts.telemetry_in == 50 and result.counts.quarantined == 2
