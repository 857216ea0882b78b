"""Service-generated data: one day of telemetry reduced to k-anonymous aggregate groups (SPEC §4).

Telemetry may be used only in aggregate, with no identifiers and no small groups. So the step reads an
allow-list of fields (never the rest of an event), keeps per group only a count, the set of user ids
(needed to count distinct users, dropped before output) and the durations, and publishes a group only
when at least `k` distinct users stand behind it. Files are streamed a batch of lines at a time (read
column-wise where `telemetry.read_lines` proves that is the strict reading, else by `parse_event`): a
day's events are never all held in memory.

Every non-blank line ends in exactly one of: aggregated, suppressed, out of partition, duplicate,
quarantined. A gzip stream that breaks mid-way is one more quarantined unit (and one more unit read),
so that the accounting `lines_read == telemetry_in + duplicate + quarantined` holds whatever goes wrong.

Telemetry is delivered at least once (SPEC §4, revised): the parsed, allow-listed part of each line is
spilled in Arrow batches to a temporary Parquet file, and DuckDB (bounded memory, spilling to disk)
finds the repeated deliveries of an event_id, quarantines the event_ids whose deliveries differ (any
parsed field, compared exactly), and computes the groups over the first delivery of each event: no
Python loop over rows or groups, and no in-memory set of the day's event ids. Group key values are
allow-listed by the policy, once per distinct value of the day: any other value is published as
`other`, so a free-text field cannot carry an e-mail into the aggregates.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from consent_gate.records import (
    EPOCH,
    US_PER_DAY,
    MalformedRecord,
    Quarantined,
)
from consent_gate.sources import InputFile, LandingZone
from consent_gate.telemetry import (
    _DEFAULT_VALUES,
    EVENT_SCHEMA,
    GROUP_FIELDS,
    GroupValues,
    LineBatch,
    TelemetryEvent,
    _TelemetryFile,
    parse_event,
    read_lines,
    relative_unit,
)
from consent_gate.verify import connect

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
    lines_read: int = 0  # non-blank lines, plus one per file whose stream broke or that was not read
    duplicate: int = 0  # repeated deliveries of an event, with equal content: aggregated once
    unreadable_files: int = 0  # files whose stream broke: an unknown number of lines is lost
    # Batches of lines the column-wise reading (`read_lines`) raised on, read line by line instead: the
    # events are the same, only slower to read. Not zero is a defect of consent-gate, to report.
    read_one_by_one_batches: int = 0


@dataclass
class TelemetryAggregate:
    groups: pa.Table  # AGGREGATE_SCHEMA, sorted by the five keys
    counts: TelemetryCounts
    quarantine: list[Quarantined]
    # Per file, in the order given: its size and sha256 as read, or None when its stream broke.
    inputs: list[InputFile | None]


# --- aggregation --------------------------------------------------------------------------------


def aggregate_telemetry(
    files: Sequence[str],
    *,
    landing_root: str,
    day: date,
    k: int,
    storage_options: dict[str, Any] | None = None,
    values: GroupValues | None = None,
    refused: Sequence[Quarantined] = (),
) -> TelemetryAggregate:
    """Aggregate the day's telemetry files into published groups, counts and quarantined units.

    `refused` are the day's telemetry entries the landing zone would not open (links, invalid names):
    each is one unit read and quarantined, and, like a broken stream, an unreadable file (the day fails:
    it may hold any number of events).
    """
    if k < 1:  # k = 0 would publish groups with no user behind them: refuse rather than leak
        raise ValueError("k must be at least 1")
    spill = tempfile.mkdtemp(prefix="consent-gate-telemetry-")
    try:
        day_groups = _DayGroups(day, values or _DEFAULT_VALUES, f"{spill}/events.parquet")
        for unit in refused:  # never read: like a broken stream, it may hold any number of events
            day_groups.counts.lines_read += 1
            day_groups.counts.unreadable_files += 1
            day_groups.quarantine_unit(unit.unit, unit.error)
        zone = LandingZone(landing_root, storage_options)
        units = [relative_unit(url, landing_root) for url in files]
        inputs = []
        for index, unit in enumerate(units):
            source = _TelemetryFile(zone, unit)
            day_groups.read_file(source, unit, index)
            inputs.append(source.input)
        day_groups.close()
        table = _publish_groups(day_groups, k, units, spill)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    _check_accounting(day_groups.counts, table)
    return TelemetryAggregate(table, day_groups.counts, day_groups.quarantine, inputs)


# The parsed events of the day as read: where each line is, and its allow-listed fields (EVENT_SCHEMA).
_SPILL_SCHEMA = pa.schema([pa.field("file", pa.int32()), pa.field("line", pa.int64()), *EVENT_SCHEMA])
_SPILL_BATCH_ROWS = 100_000


class _DayGroups:
    """The parsed lines of one day, spilled in batches to Parquet; counts and quarantined units."""

    def __init__(self, day: date, values: GroupValues, spill_path: str) -> None:
        self.day = day
        self.values = values
        self.counts = TelemetryCounts()
        self.quarantine: list[Quarantined] = []
        self.spill_path = spill_path
        self._writer = pq.ParquetWriter(spill_path, _SPILL_SCHEMA, compression="lz4")
        self._read: list[pa.Table] = []  # batches of events read, not yet spilled
        self._buffered = 0

    def read_file(self, source: _TelemetryFile, unit: str, index: int) -> None:
        """Every line of one file: column-wise where `read_lines` proves it can, else one by one."""
        counts = self.counts
        for first, lines in source.batches():
            try:
                batch = read_lines(lines)
            except Exception:  # noqa: BLE001 - a speed-up only: parse_event reads every line of the batch
                batch = LineBatch.one_by_one(len(lines))
                counts.read_one_by_one_batches += 1
            if batch.events.num_rows:
                counts.lines_read += batch.events.num_rows
                self._add(index, first, batch.events)
            one_by_one: list[tuple[int, TelemetryEvent]] = []
            for position in batch.rest:
                line = lines[position]
                if not line.strip():  # blank lines carry no event: not a unit
                    continue
                counts.lines_read += 1
                try:
                    one_by_one.append((position, parse_event(line)))
                except MalformedRecord as error:
                    self.quarantine_unit(f"{unit}:{first + position}", str(error))
            if one_by_one:
                self._add(index, first, _events_table(one_by_one))
        if source.error is not None:
            # What was read before the break stays counted; the rest of the file is this one more unit.
            counts.lines_read += 1
            counts.unreadable_files += 1
            self.quarantine_unit(unit, source.error)

    def quarantine_unit(self, unit: str, error: str) -> None:
        self.counts.quarantined += 1
        self.quarantine.append(Quarantined(unit, error))

    def _add(self, file: int, first: int, events: pa.Table) -> None:
        """Buffer events read from lines `first + index` of file number `file`; spill every 100k rows."""
        rows = events.num_rows
        located = pa.table(
            {
                "file": pa.repeat(pa.scalar(file, pa.int32()), rows),
                "line": pc.add(pc.cast(events.column("index"), pa.int64()), first),
                **{name: events.column(name) for name in EVENT_SCHEMA.names},
            },
            schema=_SPILL_SCHEMA,
        )
        self._read.append(located)
        self._buffered += rows
        if self._buffered >= _SPILL_BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._read:
            self._writer.write_table(pa.concat_tables(self._read))
            self._read, self._buffered = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()


def _events_table(events: list[tuple[int, TelemetryEvent]]) -> pa.Table:
    """The events parse_event read one by one, as read_lines returns its own: EVENT_SCHEMA and `index`."""
    columns = {
        "event_id": [event.event_id for _, event in events],
        "ts_us": [event.ts_us for _, event in events],
        **{name: [event.raw[i] for _, event in events] for i, name in enumerate(GROUP_FIELDS)},
        "user_id": [event.user_id for _, event in events],
        "duration_ms": [event.duration_ms for _, event in events],
    }
    table = pa.Table.from_pydict(columns, schema=EVENT_SCHEMA)
    return table.append_column("index", pa.array([position for position, _ in events], pa.int32()))


# Whether the deliveries of an event differ in a parsed field: two values, or a value and a null.
def _differs(column: str) -> str:
    return f"(coalesce(min({column}) <> max({column}), false) OR count({column}) NOT IN (0, count(*)))"


_PARSED = ("ts_us", *GROUP_FIELDS, "user_id", "duration_ms")

# The event_ids delivered more than once (a few, usually): their deliveries, whether those differ, and
# the event's fields (all deliveries of an event that do not differ carry the same fields). Compared
# field by field, exactly, with min/max and counts (no hash to collide, no set of values kept per
# event); only for these events, so the whole day is grouped by event_id once, with a count alone.
_REPEATED_SQL = f"""
CREATE TEMP TABLE repeated AS
SELECT event_id,
       count(*) AS deliveries,
       ({" OR ".join(_differs(name) for name in _PARSED)}) AS differ,
       -- min() of equal values is that value (null when all are null); when the deliveries differ
       -- (differ) they are all quarantined and these are never read.
       {", ".join(f"min({name}) AS {name}" for name in _PARSED)}
FROM read_parquet($spill)
WHERE event_id IN (SELECT event_id FROM read_parquet($spill) GROUP BY event_id HAVING count(*) > 1)
GROUP BY event_id
"""
# One row per event_id: every event delivered once as read, and the repeated ones as judged above.
_EVENTS_SQL = f"""
CREATE TEMP TABLE events AS
SELECT *, ts_us >= $day_start AND ts_us < $day_end AS in_day
FROM (
  SELECT event_id, 1::BIGINT AS deliveries, false AS differ, {", ".join(_PARSED)}
  FROM read_parquet($spill) WHERE event_id NOT IN (SELECT event_id FROM repeated)
  UNION ALL
  SELECT event_id, deliveries, differ, {", ".join(_PARSED)} FROM repeated
)
"""
_COUNTS_SQL = """
SELECT coalesce(sum(deliveries) FILTER (WHERE differ), 0),
       coalesce(sum(deliveries - 1) FILTER (WHERE NOT differ), 0),
       count(*) FILTER (WHERE NOT differ),
       count(*) FILTER (WHERE NOT differ AND NOT in_day)
FROM events
"""
# Each group key's distinct values as sent, to be published through the policy's allow-lists.
_SENT_VALUES_SQL = "SELECT DISTINCT {field} FROM events WHERE NOT differ AND in_day"
# quantile_cont interpolates linearly between closest ranks over non-null values, as SPEC §4 asks.
# The joins map each value as sent to its published value (null-safe: a missing value is `unknown`).
_GROUPS_SQL = f"""
SELECT {", ".join(f"published_{name}.published AS {name}" for name in GROUP_FIELDS)},
       count(*) AS event_count,
       count(DISTINCT e.user_id) AS distinct_users,
       quantile_cont(e.duration_ms, 0.5) AS duration_ms_p50,
       quantile_cont(e.duration_ms, 0.95) AS duration_ms_p95
FROM events e
{" ".join(f"JOIN published_{name} ON e.{name} IS NOT DISTINCT FROM published_{name}.sent" for name in GROUP_FIELDS)}
WHERE NOT e.differ AND e.in_day
GROUP BY ALL
"""
_CONFLICTS_SQL = """
SELECT s.file, s.line FROM read_parquet(?) s JOIN events e USING (event_id)
WHERE e.differ ORDER BY s.file, s.line
"""


def _publish_groups(day_groups: _DayGroups, k: int, units: list[str], spill: str) -> pa.Table:
    """Duplicates, conflicts and groups in DuckDB; groups with at least k distinct users, the rest counted."""
    counts = day_groups.counts
    dt = day_groups.day.isoformat()
    day_start = (day_groups.day - EPOCH.date()).days * US_PER_DAY
    connection = connect(spill)
    try:
        connection.execute(_REPEATED_SQL, {"spill": day_groups.spill_path}).fetchall()  # to the end
        connection.execute(
            _EVENTS_SQL, {"spill": day_groups.spill_path, "day_start": day_start, "day_end": day_start + US_PER_DAY}
        ).fetchall()
        [(conflicting, duplicate, unique, out_of_partition)] = connection.execute(_COUNTS_SQL).fetchall()
        counts.duplicate += int(duplicate)
        counts.telemetry_in += int(unique)
        counts.out_of_partition += int(out_of_partition)
        if conflicting:
            reader = connection.sql(_CONFLICTS_SQL, params=[day_groups.spill_path]).to_arrow_reader(65_536)
            for batch in reader:
                lines = zip(batch.column("file").to_pylist(), batch.column("line").to_pylist(), strict=True)
                for file, number in lines:
                    day_groups.quarantine_unit(
                        f"{units[file]}:{number}",
                        "field 'event_id': delivered more than once with different content; every delivery "
                        "is quarantined",
                    )
        for name in GROUP_FIELDS:
            sent = [value for (value,) in connection.execute(_SENT_VALUES_SQL.format(field=name)).fetchall()]
            published = pa.table(
                {
                    "sent": pa.array(sent, pa.string()),
                    "published": pa.array([day_groups.values.published(name, value) for value in sent], pa.string()),
                }
            )
            connection.register(f"published_{name}", published)
        groups = connection.sql(
            f"SELECT ?::VARCHAR AS dt, * FROM ({_GROUPS_SQL}) ORDER BY event_type, client_version, platform, region",
            params=[dt],
        ).to_arrow_table()
    finally:
        connection.close()
    keep = pc.greater_equal(groups.column("distinct_users"), k)
    suppressed = groups.filter(pc.invert(keep))
    counts.suppressed_groups += suppressed.num_rows
    counts.suppressed_events += int(pc.sum(suppressed.column("event_count")).as_py() or 0)
    published = groups.filter(keep).cast(AGGREGATE_SCHEMA)
    counts.aggregated += int(pc.sum(published.column("event_count")).as_py() or 0)
    return published


def _check_accounting(counts: TelemetryCounts, table: pa.Table) -> None:
    """Every line read ends in exactly one place, and the published table holds what it claims."""
    placed = counts.aggregated + counts.suppressed_events + counts.out_of_partition
    if counts.telemetry_in != placed:
        raise TelemetryAccountingError(
            f"telemetry_in {counts.telemetry_in} != aggregated {counts.aggregated} + suppressed "
            f"{counts.suppressed_events} + out_of_partition {counts.out_of_partition}"
        )
    if counts.lines_read != counts.telemetry_in + counts.duplicate + counts.quarantined:
        raise TelemetryAccountingError(
            f"lines_read {counts.lines_read} != telemetry_in {counts.telemetry_in} + duplicate {counts.duplicate} "
            f"+ quarantined {counts.quarantined}"
        )
    published = sum(table.column("event_count").to_pylist())
    if published != counts.aggregated:
        raise TelemetryAccountingError(f"published groups hold {published} events, counted {counts.aggregated}")
