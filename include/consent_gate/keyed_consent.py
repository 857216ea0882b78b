"""Current consent by keyed subject, and which published rows it no longer allows (SPEC §3, §7).

Published rows hold keyed hashes, not raw ids, so current consent is read with every subject id
replaced by its key: the same `ConsentSnapshot` then answers SPEC §3's question (granted both at
capture and at `as_of`) for a published row's `account_keys` and `user_keys`. Used by the revocation
sweep (published days) and by publication (no resurrection: `unpublished.withhold_withdrawn`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from consent_gate.artifacts import CONTENT_TYPE_OF
from consent_gate.consent import (
    COLUMNS,
    DUPLICATE_ERROR,
    SUBJECT_TYPES,
    ConsentSnapshot,
    cell,
    parse_consent_row,
    snapshot_from_rows,
    subject_key,
    to_ns,
    visible_at,
)
from consent_gate.consent_store import consent_batches, observe_reads
from consent_gate.consent_vector import (
    events_sql,
    judge_into_files,
    judged_snapshot,
    read_snapshot_events,
    semi_join,
    snapshot_from_events,
)
from consent_gate.errors import SweepError
from consent_gate.gate import WITHDRAWN_SCHEMA
from consent_gate.keys import Keyer
from consent_gate.records import MalformedRecord, parse_timestamp


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revocation that came into force since the watermark; `subject` is a keyed subject_key."""

    subject: str
    subject_type: str
    content_type: str  # one of CONTENT_TYPES or '*'
    recorded_at: datetime
    in_force_at: datetime  # max(recorded_at, effective_at): from when it can remove anything


@dataclass
class KeyedConsent:
    """The consent visible at `as_of` by keyed subject, and what changed since `since`."""

    snapshot: ConsentSnapshot
    since: datetime | None  # None: everything visible counts as changed (a full sweep)
    revocations: list[Revocation] = field(default_factory=list)
    fail_closed: set[str] = field(default_factory=set)  # keyed subjects named by unreadable rows

    @property
    def affected(self) -> set[str]:
        return {r.subject for r in self.revocations} | self.fail_closed


def _instant(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo is not None else None
    try:
        return parse_timestamp(value, "recorded_at")
    except MalformedRecord:
        return None


def _keyed_subject(row: Sequence[Any], keyer: Keyer) -> str | None:
    subject_type, subject_id = cell(row, "subject_type"), cell(row, "subject_id")
    if subject_type in SUBJECT_TYPES and isinstance(subject_id, str) and subject_id:
        return keyer.key(subject_type, subject_id)
    return None


def keyed_consent(rows: Iterable[Sequence[Any]], keyer: Keyer, as_of: datetime, since: datetime | None) -> KeyedConsent:
    """A snapshot of `rows` (COLUMNS order, by event_id) at `as_of`, with subject ids replaced by keys.

    Also collects the revocations in force in (`since`, `as_of`] and the subjects made not consented
    by unreadable rows recorded then (all of them when `since` is None).
    """
    as_of = as_of.astimezone(UTC)
    revocations: list[Revocation] = []
    fail_closed: set[str] = set()

    def changed(instant: datetime | None) -> bool:
        if instant is None:
            return True  # cannot tell when: count it as new, fail closed
        return instant <= as_of and (since is None or instant > since)

    def keyed_rows() -> Iterator[tuple[Any, ...]]:
        last_id: Any = None
        last_key: str | None = None
        for row in rows:
            key = _keyed_subject(row, keyer)
            event_id, subject_type = cell(row, "event_id"), cell(row, "subject_type")
            keyed_key = subject_key(subject_type, key) if key is not None else None
            yield tuple(
                key if name == "subject_id" and key is not None else value
                for name, value in zip(COLUMNS, row, strict=True)
            )
            if not visible_at(row, as_of):
                continue  # ignored or invisible: the snapshot's own rule
            purpose, recorded = cell(row, "purpose"), _instant(cell(row, "recorded_at"))
            duplicate = event_id is not None and event_id == last_id
            try:
                if purpose is None or duplicate:
                    raise MalformedRecord("event_id" if duplicate else "purpose", "unreadable")
                event = parse_consent_row(row)
            except MalformedRecord:
                if keyed_key is not None and (duplicate or changed(recorded)):
                    fail_closed.add(keyed_key)
                if duplicate and last_key is not None:
                    fail_closed.add(last_key)
            else:
                in_force = max(event.recorded_at, event.effective_at)
                if event.decision == "revoke" and keyed_key is not None and changed(in_force):
                    revocations.append(
                        Revocation(keyed_key, event.subject_type, event.content_type, event.recorded_at, in_force)
                    )
            last_id, last_key = event_id, keyed_key

    snapshot = snapshot_from_rows(keyed_rows(), as_of)
    return KeyedConsent(snapshot, since, revocations, fail_closed)


def names_a_subject(table: pa.Table | pa.RecordBatch) -> pa.ChunkedArray | pa.Array:
    """Per row of a consent table: whether its subject can be read (a known subject_type and a non-empty
    subject_id), the vectorized `_keyed_subject` test."""
    return pc.fill_null(
        pc.and_(
            pc.is_in(table.column("subject_type"), value_set=pa.array(SUBJECT_TYPES)),
            pc.greater(pc.utf8_length(table.column("subject_id")), 0),
        ),
        False,
    )


def keyed_rows(table: pa.Table | pa.RecordBatch, keyer: Keyer) -> pa.Table | pa.RecordBatch:
    """`table` with every readable subject_id replaced by its key (one HMAC per distinct subject)."""
    types, ids = table.column("subject_type"), table.column("subject_id")
    readable = names_a_subject(table)
    combined = pc.binary_join_element_wise(types, ids, "\x1f")
    distinct = pc.unique(pc.filter(combined, readable))
    keys = pa.array(keyer.keys_of(distinct.to_pylist()), pa.string())
    keyed_ids = pc.take(keys, pc.index_in(combined, value_set=distinct))
    return table.set_column(
        table.schema.get_field_index("subject_id"), "subject_id", pc.if_else(readable, keyed_ids, ids)
    )


def _queries(as_of: datetime, since: datetime | None) -> dict[str, str]:
    """Over the judged rows: the revocations in force in (`since`, `as_of`], and the subjects failed closed
    by unreadable rows recorded then (or unreadable when), by duplicated ids always."""
    as_of_us = to_ns(as_of) // 1000
    since_us = "NULL" if since is None else str(to_ns(since.astimezone(UTC)) // 1000)
    changed = f"(x <= {as_of_us} AND ({since_us} IS NULL OR x > {since_us}))"
    in_force = "greatest(rec_us, eff_us)"
    duplicate = "'" + DUPLICATE_ERROR.replace("'", "''") + "'"
    return {
        "revocations": f"SELECT subject_key, subject_type, content_type, rec_us, {in_force} AS in_force_us, "
        "event_id, rn FROM judged "
        # the first row of a duplicated id reads well on its own: its revocation counts (its subject
        # fails closed as well), as in the row-wise reading
        f"WHERE (error IS NULL OR (error = {duplicate} AND id_first)) AND decision = 'revoke' "
        f"AND {changed.replace('x', in_force)}",
        "fail_closed": "SELECT DISTINCT subject_key FROM judged WHERE error IS NOT NULL AND subject_ok "
        f"AND (id_count > 1 OR rec_us IS NULL OR {changed.replace('x', 'rec_us')})",
    }


def _instant_of(us: int) -> datetime:
    return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=us)


def _revocations(rows: Iterable[Sequence[Any]]) -> list[Revocation]:
    return [
        Revocation(key, kind, content_type, _instant_of(recorded), _instant_of(force))
        for key, kind, content_type, recorded, force in rows
    ]


def keyed_consent_table(table: pa.Table, keyer: Keyer, as_of: datetime, since: datetime | None) -> KeyedConsent:
    """The vectorized `keyed_consent`: the same snapshot, revocations in force in (`since`, `as_of`] and
    subjects failed closed by unreadable rows recorded then (or unreadable when), by duplicated ids always."""
    as_of = as_of.astimezone(UTC)
    queries = _queries(as_of, since)
    snapshot, answers = judged_snapshot(
        keyed_rows(table, keyer),
        as_of,
        {
            "revocations": "SELECT subject_key, subject_type, content_type, rec_us, in_force_us "
            f"FROM ({queries['revocations']}) ORDER BY event_id, rn",
            "fail_closed": queries["fail_closed"],
        },
    )
    return KeyedConsent(
        snapshot, since, _revocations(answers["revocations"]), {row[0] for row in answers["fail_closed"]}
    )


class WholeStoreConsent:
    """Every subject's keyed consent at `as_of`, judged from the whole store streamed batch by batch
    (one HMAC per distinct subject of a batch; DuckDB spills to disk), kept in a sorted local Parquet
    file with the revocations beside it: a full sweep's memory does not grow with the store. The consent
    of the subjects a sweep meets (published days, stages) is a semi-join of that file.
    `close()` deletes the files."""

    def __init__(self, url: str, keyer: Keyer, as_of: datetime, *, purpose: str) -> None:
        self.as_of = as_of.astimezone(UTC)
        self._folder = tempfile.TemporaryDirectory(prefix="consent-gate-keyed-")
        self.events_path = os.path.join(self._folder.name, "events.parquet")
        self.revocations_path = os.path.join(self._folder.name, "revocations.parquet")
        queries = _queries(self.as_of, None)
        try:
            with observe_reads() as reads, consent_batches(url, purpose=purpose) as reader:
                keyed = pa.RecordBatchReader.from_batches(reader.schema, (keyed_rows(b, keyer) for b in reader))
                self.summary, counts = judge_into_files(
                    keyed,
                    self.as_of,
                    {self.events_path: events_sql(), self.revocations_path: queries["revocations"]},
                    {
                        "revocations": f"SELECT count(*) FROM ({queries['revocations']})",
                        "fail_closed": f"SELECT count(*) FROM ({queries['fail_closed']})",
                    },
                )
        except BaseException:
            self.close()
            raise
        self.rows_read = sum(n for _, n in reads)
        self.revocation_count, self.fail_closed_count = counts["revocations"], counts["fail_closed"]

    def consent_for(self, subjects: Iterable[str]) -> KeyedConsent:
        """The keyed consent of `subjects` (keyed subject_keys): their rows of the file, and their revocations."""
        wanted = sorted(set(subjects))
        events = read_snapshot_events(self.events_path, wanted)
        snapshot = snapshot_from_events(events, self.summary)
        revocations = semi_join(
            self.revocations_path,
            wanted,
            "SELECT subject_key, subject_type, content_type, rec_us, in_force_us FROM rows ORDER BY event_id, rn",
        )
        failed = pc.filter(events.column("subject_key"), events.column("failed_closed"))
        revoked = zip(*(column.to_pylist() for column in revocations.columns), strict=True)
        return KeyedConsent(snapshot, None, _revocations(revoked), set(failed.to_pylist()))

    def close(self) -> None:
        self._folder.cleanup()


def withdrawal_reasons(table: pa.Table, snapshot: ConsentSnapshot, only: set[str] | None = None) -> list[str | None]:
    """Per published row: None if still eligible under `snapshot` (keyed), else the SPEC §3 reason.

    A row's required subjects are its account_keys and user_keys; each must be granted both at
    `captured_at` and at the snapshot's `as_of`. A row without any account key fails closed.
    `only`: evaluate just these (keyed) subjects; the others' consent did not change since the row was gated.
    """
    n = table.num_rows
    if n == 0:
        return []
    try:
        content_types = np.array([CONTENT_TYPE_OF[t] for t in table.column("artifact_type").to_pylist()], dtype=object)
    except KeyError:
        raise SweepError("a published row has an unknown artifact_type") from None
    captured_column = table.column("captured_at")
    if captured_column.null_count:
        raise SweepError("a published row has no captured_at")
    captured = captured_column.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy()

    def refused(column: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        lists = table.column(column).combine_chunks()
        flat = pc.list_flatten(lists).to_pylist()
        owners = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        not_ok = np.zeros(n, dtype=bool)
        present = np.zeros(n, dtype=bool)
        if flat:
            subjects = [subject_key(kind, str(k)) for k in flat]
            ok, _ = snapshot.consented(subjects, list(content_types[owners]), captured[owners])
            if only is not None:
                ok |= ~np.fromiter((s in only for s in subjects), dtype=bool, count=len(subjects))
            not_ok[owners[~ok]] = True
            present[owners] = True
        return not_ok, present

    account_refused, has_account = refused("account_keys", "account")
    user_refused, _ = refused("user_keys", "user")
    account_refused |= ~has_account
    return [
        "account_not_consented" if a else "user_not_consented" if u else None
        for a, u in zip(account_refused.tolist(), user_refused.tolist(), strict=True)
    ]


def withdrawn_rows(removed: pa.Table, reasons: list[str], withdrawn_by: str, as_of: datetime) -> pa.Table:
    """The evidence of rows taken out after their gating: no content, the reason and who took them out."""
    return pa.table(
        {
            "artifact_id": removed.column("artifact_id"),
            "artifact_type": removed.column("artifact_type"),
            "reason": pa.array(reasons, pa.string()),
            "withdrawn_by": pa.array([withdrawn_by] * removed.num_rows, pa.string()),
            "consent_as_of": pa.array([as_of] * removed.num_rows, pa.timestamp("us", tz="UTC")),
        },
        schema=WITHDRAWN_SCHEMA,
    )
