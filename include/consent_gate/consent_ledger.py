"""The consent ledger: the whole store's evidence kept by recorded day, so a run reads only what is new.

A run's evidence covers the whole consent store (SPEC §5: a checksum of the visible consent events;
SPEC §3: every unreadable visible row is listed, and one whose subject cannot be read fails the run),
while the gate decides only for the subjects of the day's meetings. At 20M events, reading the whole
store for that evidence took nine tenths of a run. The ledger (`_audit/consent/ledger.json`) keeps, per
recorded day below its `bound`, what those days' rows contribute: how many rows there are (any purpose,
as `consent_store.count_recorded_before` counts them), how many `ai_training` rows and their digest word
sums (the checksum is order-independent, so sums add up), and every unreadable row (event_id, subject
type, error, and pseudonyms of its subject and of the row itself).

A run at `as_of` with a ledger, bound = min(ledger bound, `changed_bound(as_of)`):
- trusts the ledger only if its MAC (keyed by the run's secret) holds, it describes this store, its last
  whole-store read is younger than policy `full_snapshot_every_hours`, and the store still counts
  exactly the ledger's rows below `bound` (a row inserted below, or deleted from below, the bound sends
  the run to a whole-store read);
- reads every row at or above `bound` (an index range), every row of the day's subjects, and every row
  sharing an event_id with any of those (index look-ups), and judges them with the full rules;
- takes the rest from the ledger. Every row below `bound` is visible at `as_of` (the bound lies a day
  before it), and a row's error depends only on the rows sharing its event_id, which are all read
  whenever one of them is: so the checksum, the counts and the unreadable rows are what a whole-store
  read gives.

The gate's decisions never come from the ledger: every row of the day's subjects is read from the store
itself. What an old row edited in place (consent history is append-only, SPEC §2.2) can make stale is
evidence about other subjects, until the next whole-store read rewrites the ledger. Each run rolls the
ledger forward to its own bound, so the rows read stay a couple of days' worth.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from consent_gate.consent import UnreadableConsentRow, checksum_of, subject_ids_of
from consent_gate.consent_store import (
    Progress,
    changed_bound,
    consent_batches,
    count_recorded_before,
    read_event_rows,
    read_named_rows,
    read_rows_outside,
    recorded_before,
)
from consent_gate.consent_vector import (
    SNAPSHOT_SCHEMA,
    LedgerFacts,
    SnapshotSummary,
    events_sql,
    judge_with_facts,
    pseudonym,
    pseudonym_pepper,
)
from consent_gate.records import MalformedRecord, parse_timestamp

LEDGER_VERSION = 1
SUBJECTS_SCHEMA = pa.schema([("subject_key", pa.string())])


@dataclass(frozen=True)
class Ledger:
    """The whole store's evidence below `bound`, by recorded day (see the module's docstring)."""

    store: str  # keyed hash of the consent store's URL
    bound: str  # recorded_at text: the days below it are kept
    as_of: datetime  # the run that wrote it
    full_read_at: datetime  # when its last whole-store read began
    days: dict[str, tuple[int, int, tuple[int, int, int, int]]]  # day -> (rows, visible rows, digest sums)
    unreadable: tuple[tuple[Any, ...], ...]  # (event_id, subject_type, error, subject, row, day)

    def rows_below(self, bound: str) -> int:
        return sum(rows for day, (rows, _, _) in self.days.items() if day < bound)


def store_identity(secret: bytes, url: str) -> str:
    """Which store a ledger describes, without writing its URL (it may carry a password) anywhere."""
    return hmac.new(secret, b"consent store\x00" + url.encode(), hashlib.sha256).hexdigest()


def _mac(secret: bytes, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, b"consent ledger\x00" + canonical.encode(), hashlib.sha256).hexdigest()


def ledger_json(ledger: Ledger, secret: bytes) -> dict[str, Any]:
    body = {
        "version": LEDGER_VERSION,
        "store": ledger.store,
        "bound": ledger.bound,
        "as_of": ledger.as_of.isoformat(),
        "full_read_at": ledger.full_read_at.isoformat(),
        "days": {day: [rows, visible, list(sums)] for day, (rows, visible, sums) in sorted(ledger.days.items())},
        "unreadable": [list(entry) for entry in ledger.unreadable],
    }
    return {**body, "mac": _mac(secret, body)}


def ledger_from_json(data: Any, secret: bytes) -> Ledger | None:
    """The ledger in `data`, or None when it is not one this secret wrote (tampered, truncated, older)."""
    if not isinstance(data, dict) or data.get("version") != LEDGER_VERSION:
        return None
    body = {k: v for k, v in data.items() if k != "mac"}
    if not isinstance(data.get("mac"), str) or not hmac.compare_digest(data["mac"], _mac(secret, body)):
        return None
    try:
        days = {str(d): (int(r), int(v), tuple(int(s) for s in sums)) for d, (r, v, sums) in body["days"].items()}
        entries = tuple(tuple(entry) for entry in body["unreadable"])
        if any(len(entry) != 6 or entry[3] is None for entry in entries):
            return None  # a row whose subject cannot be read fails every run: never kept
        return Ledger(
            str(body["store"]),
            str(body["bound"]),
            parse_timestamp(body["as_of"], "as_of"),
            parse_timestamp(body["full_read_at"], "full_read_at"),
            days,  # type: ignore[arg-type]
            entries,
        )
    except (KeyError, TypeError, ValueError, MalformedRecord):
        return None


@dataclass
class RunConsent:
    """What the snapshot step learned: the summary for run.json, how it was read, the next ledger."""

    summary: SnapshotSummary
    basis: dict[str, Any]  # run.json consent.basis: whole store or ledger, rows read, why
    ledger: Ledger | None  # to write when it gets further than the one there (None: keep that one)


def run_consent(
    url: str,
    secret: bytes,
    as_of: datetime,
    subjects: set[str],
    ledger: Ledger | None,
    files: dict[str, str],
    *,
    now: datetime,
    full_every: timedelta,
    progress: Progress | None = None,
) -> RunConsent:
    """Judge the consent of the day's `subjects` at `as_of` into the local snapshot file `files["events"]`
    (and `files["subjects"]`: the subjects it was judged for), with the whole store's evidence."""
    as_of = as_of.astimezone(UTC)  # the bound is a UTC date
    store = store_identity(secret, url)
    pepper = pseudonym_pepper(secret)
    new_bound = changed_bound(as_of)
    # counted before anything is read: a row inserted below the bound from here on changes the next count
    counted = count_recorded_before(url, new_bound)
    why = _unusable(ledger, store, now, full_every)
    bound = min(ledger.bound, new_bound) if ledger is not None else new_bound
    if why is None:
        assert ledger is not None
        below = counted if bound == new_bound else count_recorded_before(url, bound)
        if below != ledger.rows_below(bound):
            why = "rows were inserted below the ledger's bound or deleted from below it"
    if why is not None:
        if progress is not None:
            progress(f"consent store: the whole store is read ({why}); `consent-gate ledger` renews the ledger apart")
        return _whole_store(url, as_of, now, store, pepper, new_bound, counted, subjects, files, why, progress)
    assert ledger is not None
    consent = _from_ledger(url, as_of, store, pepper, ledger, bound, new_bound, counted, subjects, files)
    if progress is not None:
        progress(
            f"consent store: {consent.basis['rows_read']:,} rows read (recorded from the ledger's bound "
            f"{bound} on, the day's {len(subjects):,} subjects and rows sharing their event_ids)"
        )
    return consent


# A ledger is renewed off the daily path (`renewal_due`, the sweep DAG's `renew_consent_ledger`) once this
# share of its life (`full_snapshot_every_hours`) is gone, so that no daily run finds it due and reads the
# whole store itself: with the default 168 h, after 126 h, and the hourly sweep renews it within the hour.
RENEW_AT = 0.75


def renewal_due(ledger: Ledger | None, store: str, now: datetime, full_every: timedelta) -> str | None:
    """Why the ledger of `store` should be renewed by a whole-store read now (None: not yet): a run
    would not use it (none, another store's, past its life), or RENEW_AT of its life is gone."""
    why = _unusable(ledger, store, now, full_every)
    if why is None and ledger is not None and now - ledger.full_read_at >= full_every * RENEW_AT:
        why = f"{RENEW_AT:.0%} of its life ({full_every.total_seconds() / 3600:g} h) is gone"
    return why


def whole_store_ledger(
    url: str, secret: bytes, as_of: datetime, *, now: datetime, folder: str, progress: Progress | None = None
) -> tuple[Ledger | None, int]:
    """The ledger of a whole-store read at `as_of` that judges no day's subjects (its snapshot files are
    left in `folder`), and the rows read; None for the ledger when rows were inserted below its bound,
    or deleted from below it, while the store was read (a run then reads the whole store itself)."""
    as_of = as_of.astimezone(UTC)
    new_bound = changed_bound(as_of)
    counted = count_recorded_before(url, new_bound)
    files = {"events": f"{folder}/snapshot.parquet", "subjects": f"{folder}/subjects.parquet"}
    store, pepper = store_identity(secret, url), pseudonym_pepper(secret)
    read = _whole_store(url, as_of, now, store, pepper, new_bound, counted, set(), files, "renewal", progress)
    return read.ledger, int(read.basis["rows_read"])


def _unusable(ledger: Ledger | None, store: str, now: datetime, full_every: timedelta) -> str | None:
    if ledger is None:
        return "no consent ledger yet (or one this secret did not write)"
    if ledger.store != store:
        return "the consent ledger describes another consent store"
    if not timedelta(0) <= now - ledger.full_read_at < full_every:
        return f"the periodic whole-store read is due (every {full_every.total_seconds() / 3600:g} h)"
    return None


def _whole_store(
    url: str, as_of: datetime, now: datetime, store: str, pepper: str, new_bound: str, counted: int,
    subjects: set[str], files: dict[str, str], why: str, progress: Progress | None,
) -> RunConsent:  # fmt: skip
    events, tables = _day_events(pepper, subjects, files)
    with consent_batches(url, purpose="snapshot", progress=progress) as batches:
        summary, facts = judge_with_facts(batches, as_of, new_bound, pepper, {files["events"]: events}, None, tables)
    read = sum(facts.rows.values())
    ledger = Ledger(
        store, new_bound, as_of, now, _days(facts, None, new_bound), tuple(e for e in facts.unreadable if e[5])
    )
    if ledger.rows_below(new_bound) != counted:  # the store changed below the bound while it was read
        ledger = None  # type: ignore[assignment]
    return RunConsent(summary, {"scope": "whole store", "why": why, "rows_read": read}, ledger)


def _day_events(pepper: str, subjects: set[str], files: dict[str, str]) -> tuple[str, dict[str, pa.Table]]:
    """The snapshot file's query for the day's subjects only (the gate asks for no other; at 20M events the
    whole store's file was a quarter of the judgement), and the subjects file listing them as pseudonyms:
    a subject it does not list fails closed (`uncovered_markers`)."""
    import pyarrow.parquet as pq

    asked = pa.table({"subject_key": sorted(pseudonym(pepper, key) for key in subjects)}, schema=SUBJECTS_SCHEMA)
    pq.write_table(asked, files["subjects"], compression="zstd")
    day = pa.table({"subject_key": pa.array(sorted(subjects), pa.string())})
    return events_sql(f"sha256('{pepper}' || subject_key)", only="day_subjects"), {"day_subjects": day}


def _days(facts: LedgerFacts, low: str | None, high: str) -> dict[str, tuple[int, int, tuple[int, int, int, int]]]:
    """The ledger days in [low, high) of the judged rows."""
    days = {}
    for day, rows in facts.rows.items():
        if day is not None and (low is None or day >= low) and day < high:
            visible, sums = facts.visible.get(day, (0, [0, 0, 0, 0]))
            days[day] = (rows, visible, tuple(sums))
    return days  # type: ignore[return-value]


def rows_to_judge(url: str, bound: str, subject_ids: list[str]) -> pa.Table:
    """Every row the ledger does not stand for: the rows at or above `bound` (or otherwise not counted
    below it), every row of `subject_ids`, and every row sharing an event_id with one of those. Each
    store row once: index ranges and look-ups, never a pass over the store."""
    outside = read_rows_outside(url, bound, purpose="snapshot: rows from the ledger's bound on")
    named = read_named_rows(url, subject_ids, purpose="snapshot: rows of the day's subjects")
    named_below = named.filter(recorded_before(named, bound))
    their_ids = [*outside.column("event_id").chunks, *named_below.column("event_id").chunks]
    ids = pc.unique(pc.drop_null(pa.chunked_array(their_ids, pa.string())))
    sharing = read_event_rows(url, ids.to_pylist(), purpose="snapshot: rows sharing their event_ids")
    theirs = pc.fill_null(pc.is_in(sharing.column("subject_id"), value_set=pa.array(subject_ids, pa.string())), False)
    sharing_below = sharing.filter(pc.and_(recorded_before(sharing, bound), pc.invert(theirs)))
    return pa.concat_tables([outside, named_below, sharing_below])


def _from_ledger(
    url: str, as_of: datetime, store: str, pepper: str, ledger: Ledger, bound: str, new_bound: str,
    counted: int, subjects: set[str], files: dict[str, str],
) -> RunConsent:  # fmt: skip
    subject_ids = sorted(subject_ids_of(subjects))
    table = rows_to_judge(url, bound, subject_ids)
    events, tables = _day_events(pepper, subjects, files)
    judged, facts = judge_with_facts(table, as_of, new_bound, pepper, {files["events"]: events}, bound, tables)
    kept = tuple(e for e in ledger.unreadable if e[5] < bound and e[4] not in facts.marks)
    unreadable = [*kept, *facts.unreadable]
    visible, sums = 0, [0, 0, 0, 0]
    for day, (_, n, day_sums) in ledger.days.items():
        if day < bound:
            visible, sums = visible + n, [a + b for a, b in zip(sums, day_sums, strict=True)]
    for day, (n, day_sums) in facts.visible.items():
        if day is None or day >= bound:
            visible, sums = visible + n, [a + b for a, b in zip(sums, day_sums, strict=True)]
    summary = SnapshotSummary(
        as_of=judged.as_of,
        checksum=checksum_of(visible, sums),
        visible_events=visible,
        unreadable=[
            UnreadableConsentRow(str(e[0]), e[1], e[2])
            for e in sorted(unreadable, key=lambda e: (e[0] is None, e[0] or "", e[2]))
        ],
        failed_closed_subjects=len({e[3] for e in unreadable if e[3] is not None}),
        events=judged.events,
    )
    basis = {"scope": "ledger", "bound": bound, "rows_read": table.num_rows}
    following = None
    if new_bound > ledger.bound:
        days = {day: value for day, value in ledger.days.items() if day < bound}
        days.update(_days(facts, bound, new_bound))
        following = Ledger(
            store, new_bound, as_of, ledger.full_read_at, days,
            kept + tuple(e for e in facts.unreadable if e[5] is not None and e[5] < new_bound),
        )  # fmt: skip
        if following.rows_below(new_bound) != counted:
            following = None
    return RunConsent(summary, basis, following)


def uncovered_markers(pseudonyms: list[str]) -> pa.Table:
    """Snapshot-file marker rows failing closed the subjects the snapshot was not judged for (a meeting
    that arrived after it): their content is excluded, never gated on no rows."""
    n = len(pseudonyms)
    columns = {field.name: pa.nulls(n, field.type) for field in SNAPSHOT_SCHEMA}
    columns["subject_key"] = pa.array(pseudonyms, pa.string())
    columns["content_type"] = pa.array([-1] * n, pa.int8())
    columns["failed_closed"] = pa.array([True] * n, pa.bool_())
    return pa.table(columns, schema=SNAPSHOT_SCHEMA)
