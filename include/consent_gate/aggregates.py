"""Service-generated data: one day of telemetry reduced to k-anonymous aggregate groups (SPEC §4).

Telemetry may be used only in aggregate, with no identifiers and no small groups. So the step reads an
allow-list of fields (never the rest of an event), keeps per group only a count, the set of user ids
(needed to count distinct users, dropped before output) and the durations, and publishes a group only
when at least `k` distinct users stand behind it. Files are streamed line by line: a day's events are
never all held in memory.

Every non-blank line ends in exactly one of: aggregated, suppressed, out of partition, quarantined.
A gzip stream that breaks mid-way is one more quarantined unit (and one more unit read), so that the
accounting `lines_read == telemetry_in + quarantined` holds whatever goes wrong.
"""

from __future__ import annotations

import json
import math
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, NamedTuple

import fsspec
import fsspec.core
import numpy as np
import pyarrow as pa

from consent_gate.records import (
    MalformedRecord,
    Quarantined,
    optional_str,
    parse_timestamp,
    require_object,
    require_str,
)

AGGREGATE_SCHEMA = pa.schema(
    [
        pa.field("dt", pa.string()),
        pa.field("event_type", pa.string()),
        pa.field("client_version", pa.string()),
        pa.field("platform", pa.string()),
        pa.field("region", pa.string()),
        pa.field("event_count", pa.int64()),
        pa.field("distinct_users", pa.int64()),
        pa.field("duration_ms_p50", pa.float64()),
        pa.field("duration_ms_p95", pa.float64()),
    ]
)

# The group keys besides dt, in output order. A missing, null or empty value becomes UNKNOWN so that
# events without it still count (in their own group) instead of vanishing.
GROUP_FIELDS = ("event_type", "client_version", "platform", "region")
UNKNOWN = "unknown"

# The whole allow-list: these are the only keys of an event this module ever looks up. Identifiers
# such as account_id or meeting_id, and anything upstream adds (e-mails, IPs, device ids), are never
# read, so they cannot leak into output or error messages.
ALLOWED_FIELDS = ("event_id", "ts", "user_id", *GROUP_FIELDS, "duration_ms")

# What a corrupt or truncated gzip stream, or a storage failure, raises while a file is read.
_READ_ERRORS = (OSError, EOFError, zlib.error)


class TelemetryAccountingError(RuntimeError):
    """The counts do not reconcile: some event was lost or counted twice. Never publish then."""


@dataclass
class TelemetryCounts:
    telemetry_in: int = 0  # events parsed OK, whatever their day
    aggregated: int = 0  # events in published groups
    suppressed_groups: int = 0  # groups with fewer than k distinct users
    suppressed_events: int = 0  # events in those groups
    out_of_partition: int = 0  # events parsed OK whose UTC day is not the run's day
    quarantined: int = 0  # lines, and unreadable files, quarantined
    lines_read: int = 0  # non-blank lines, plus one per file whose stream broke


@dataclass
class TelemetryAggregate:
    groups: pa.Table  # AGGREGATE_SCHEMA, sorted by the five keys
    counts: TelemetryCounts
    quarantine: list[Quarantined]


class TelemetryEvent(NamedTuple):
    """The allow-listed part of one event: what aggregation needs, and no identifier but user_id.

    A NamedTuple, not a frozen dataclass: one is built per line, and tuple construction is cheaper.
    """

    day: date
    group: tuple[str, str, str, str]  # GROUP_FIELDS values, UNKNOWN for missing ones
    user_id: str | None
    duration_ms: float | None


@dataclass(slots=True)
class _GroupState:
    """Running state of one group: all of it is bounded by users and events, not by event size."""

    event_count: int = 0
    users: set[str] = field(default_factory=set)
    durations: array = field(default_factory=lambda: array("d"))  # 8 bytes a value, no object per value


# --- parsing one line ---------------------------------------------------------------------------


def parse_event(line: bytes) -> TelemetryEvent:
    """One telemetry line to its allow-listed fields; MalformedRecord names the field, never the value."""
    try:
        # JSON lines are UTF-8 (RFC 8259); decoding first skips json's encoding sniffing per line.
        decoded = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MalformedRecord("<line>", "not valid JSON") from None
    decoded = require_object(decoded, "<line>")
    # Project onto the allow-list first (about 1 us a line): the code below cannot reach any other key,
    # even by mistake, and the rest of the event is garbage once this function returns.
    record = {name: decoded[name] for name in ALLOWED_FIELDS if name in decoded}
    require_str(record, "event_id")  # required for traceability upstream; never kept
    day = parse_timestamp(record.get("ts"), "ts").date()
    user_id = optional_str(record, "user_id")
    group = (
        _group_key(record, "event_type"),
        _group_key(record, "client_version"),
        _group_key(record, "platform"),
        _group_key(record, "region"),
    )
    return TelemetryEvent(day, group, user_id, _duration_ms(record))


def _group_key(record: dict[str, Any], name: str) -> str:
    """A group key value; missing, null and empty all mean UNKNOWN, a non-string is malformed."""
    return optional_str(record, name) or UNKNOWN


def _duration_ms(record: dict[str, Any]) -> float | None:
    """Absent or null means no duration; anything else must be a finite, non-negative number."""
    value = record.get("duration_ms")
    if value is None:
        return None
    # bool is an int subclass, but `true` is not a duration.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedRecord("duration_ms", "not a number")
    try:
        duration = float(value)
    except OverflowError:  # an integer too large for a float
        raise MalformedRecord("duration_ms", "not a finite number") from None
    if not math.isfinite(duration):  # json.loads accepts NaN and Infinity
        raise MalformedRecord("duration_ms", "not a finite number")
    if duration < 0:
        raise MalformedRecord("duration_ms", "negative")
    return duration


# --- reading files ------------------------------------------------------------------------------


class _TelemetryFile:
    """The numbered lines of one gzip file; a read failure ends the lines and is kept in `error`.

    Catching the failure here, not around the caller's loop, keeps a bug in line handling from
    being mistaken for a corrupt file.
    """

    def __init__(self, url: str, storage_options: dict[str, Any]) -> None:
        self.url = url
        self.storage_options = storage_options
        self.error: str | None = None

    def lines(self) -> Iterator[tuple[int, bytes]]:
        number = 0
        try:
            with fsspec.open(self.url, "rb", compression="gzip", **self.storage_options) as handle:
                for number, line in enumerate(handle, start=1):
                    yield number, line
        except _READ_ERRORS as error:
            # The exception text can quote bytes of the file (gzip's "Not a gzipped file (b'..')"),
            # so only its type is kept.
            self.error = f"file cannot be read as gzip ({type(error).__name__}) after line {number}"


def relative_unit(url: str, landing_root: str) -> str:
    """The file's path below the landing root, the way quarantine units name it."""
    path = fsspec.core.strip_protocol(url)
    root = fsspec.core.strip_protocol(landing_root).rstrip("/")
    if path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return path  # outside the root: the full path still says where, and holds no content


# --- aggregation --------------------------------------------------------------------------------


def aggregate_telemetry(
    files: Sequence[str],
    *,
    landing_root: str,
    day: date,
    k: int,
    storage_options: dict[str, Any] | None = None,
) -> TelemetryAggregate:
    """Aggregate the day's telemetry files into published groups, counts and quarantined units."""
    if k < 1:  # k = 0 would publish groups with no user behind them: refuse rather than leak
        raise ValueError("k must be at least 1")
    day_groups = _DayGroups(day)
    for url in files:
        day_groups.read_file(_TelemetryFile(url, storage_options or {}), relative_unit(url, landing_root))
    table = _publish(day_groups.groups, day, k, day_groups.counts)
    _check_accounting(day_groups.counts, table)
    return TelemetryAggregate(table, day_groups.counts, day_groups.quarantine)


class _DayGroups:
    """The running aggregation of one day: group states, counts and quarantined units."""

    def __init__(self, day: date) -> None:
        self.day = day
        self.groups: dict[tuple[str, str, str, str], _GroupState] = {}
        self.counts = TelemetryCounts()
        self.quarantine: list[Quarantined] = []
        # One string per distinct user for the whole run: json.loads makes a new string per line, and a
        # user active in many groups would otherwise be stored once per group.
        self._user_ids: dict[str, str] = {}

    def read_file(self, source: _TelemetryFile, unit: str) -> None:
        counts = self.counts
        for number, line in source.lines():
            if not line.strip():  # blank lines carry no event: not a unit
                continue
            counts.lines_read += 1
            try:
                event = parse_event(line)
            except MalformedRecord as error:
                self._quarantine(f"{unit}:{number}", str(error))
                continue
            counts.telemetry_in += 1
            if event.day != self.day:  # late or early events belong to another day's run
                counts.out_of_partition += 1
                continue
            self._add(event)
        if source.error is not None:
            # What was read before the break stays counted; the rest of the file is this one more unit.
            counts.lines_read += 1
            self._quarantine(unit, source.error)

    def _quarantine(self, unit: str, error: str) -> None:
        self.counts.quarantined += 1
        self.quarantine.append(Quarantined(unit, error))

    def _add(self, event: TelemetryEvent) -> None:
        state = self.groups.get(event.group)
        if state is None:
            state = self.groups[event.group] = _GroupState()
        state.event_count += 1
        if event.user_id is not None:
            state.users.add(self._user_ids.setdefault(event.user_id, event.user_id))
        if event.duration_ms is not None:
            state.durations.append(event.duration_ms)


def _percentiles(durations: array) -> tuple[float | None, float | None]:
    """p50 and p95 by linear interpolation between closest ranks; None when there is no duration."""
    if not durations:
        return None, None
    p50, p95 = np.percentile(np.frombuffer(durations, dtype=np.float64), [50, 95])
    return float(p50), float(p95)


def _publish(
    groups: dict[tuple[str, str, str, str], _GroupState], day: date, k: int, counts: TelemetryCounts
) -> pa.Table:
    """Groups with at least k distinct users, as a table with no identifier; the rest only counted."""
    rows: dict[str, list[Any]] = {name: [] for name in AGGREGATE_SCHEMA.names}
    dt = day.isoformat()
    for key in sorted(groups):  # dt is the same for all, so this is the order of the five keys
        state = groups[key]
        if len(state.users) < k:
            counts.suppressed_groups += 1
            counts.suppressed_events += state.event_count
            continue
        counts.aggregated += state.event_count
        p50, p95 = _percentiles(state.durations)
        rows["dt"].append(dt)
        for name, value in zip(GROUP_FIELDS, key, strict=True):
            rows[name].append(value)
        rows["event_count"].append(state.event_count)
        rows["distinct_users"].append(len(state.users))
        rows["duration_ms_p50"].append(p50)
        rows["duration_ms_p95"].append(p95)
    return pa.table(rows, schema=AGGREGATE_SCHEMA)


def _check_accounting(counts: TelemetryCounts, table: pa.Table) -> None:
    """Every line read ends in exactly one place, and the published table holds what it claims."""
    placed = counts.aggregated + counts.suppressed_events + counts.out_of_partition
    if counts.telemetry_in != placed:
        raise TelemetryAccountingError(
            f"telemetry_in {counts.telemetry_in} != aggregated {counts.aggregated} + suppressed "
            f"{counts.suppressed_events} + out_of_partition {counts.out_of_partition}"
        )
    if counts.lines_read != counts.telemetry_in + counts.quarantined:
        raise TelemetryAccountingError(
            f"lines_read {counts.lines_read} != telemetry_in {counts.telemetry_in} + quarantined {counts.quarantined}"
        )
    published = sum(table.column("event_count").to_pylist())
    if published != counts.aggregated:
        raise TelemetryAccountingError(f"published groups hold {published} events, counted {counts.aggregated}")
