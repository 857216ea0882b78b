"""Consent snapshots: effective-dated grants and revocations, frozen at an instant `as_of`.

SPEC §3: a run sees the consent events recorded at or before `as_of`; the state of a subject for a
content type at instant t is the decision of the last visible event (for that content type or `*`)
effective at or before t, ordered by (effective_at, recorded_at, revoke after grant, event_id).

The snapshot keeps the visible events as sorted numpy arrays, so that a batch of (subject, content
type, instant) questions is answered with two binary searches instead of a join that holds the
day in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from consent_gate.consent_store import ConsentStoreError as ConsentStoreError  # re-exported: the run's error
from consent_gate.consent_store import connect
from consent_gate.errors import FutureAsOf as FutureAsOf  # re-exported, as refuse_future_as_of
from consent_gate.instants import refuse_future_as_of as refuse_future_as_of
from consent_gate.records import MalformedRecord, in_range, parse_timestamp, to_us

PURPOSE = "ai_training"
CONTENT_TYPES = ("transcript", "chat", "summary", "recording")
SUBJECT_TYPES = ("account", "user")
DECISIONS = ("grant", "revoke")
COLUMNS = (
    "event_id", "subject_type", "subject_id", "purpose", "content_type",
    "decision", "effective_at", "recorded_at", "terms_version",
)  # fmt: skip
GRANT, REVOKE, NONE = 1, 0, -1
DUPLICATE_ERROR = "field 'event_id': duplicate event_id"


@dataclass(frozen=True, slots=True)
class UnreadableConsentRow:
    """A visible consent row that could not be read; its subject is not consented for the run."""

    event_id: str
    subject_type: str
    error: str


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    event_id: str
    subject_type: str
    subject_id: str
    content_type: str  # one of CONTENT_TYPES or '*'
    decision: str
    effective_at: datetime
    recorded_at: datetime
    terms_version: str | None


def subject_key(subject_type: str, subject_id: str) -> str:
    return f"{subject_type}\x1f{subject_id}"


def subject_ids_of(keys: Iterable[str]) -> set[str]:
    """The subject ids of `subject_key`s, whatever their type."""
    return {key.split("\x1f", 1)[1] for key in keys}


@dataclass
class ConsentSnapshot:
    """The consent visible at `as_of`, indexed for batched state look-ups."""

    as_of: datetime
    checksum: str
    visible_events: int
    unreadable: list[UnreadableConsentRow]
    _subjects: pd.Index  # subject keys, position = subject code
    _failed_closed: np.ndarray  # bool per subject code: an unreadable row names it
    _event_slot: np.ndarray  # int64: slot * n_times + time rank, sorted
    _event_decision: np.ndarray  # int8 GRANT/REVOKE
    _event_terms: np.ndarray  # object: terms_version per event
    _times: np.ndarray  # sorted unique effective_at in ns

    @property
    def failed_closed_subjects(self) -> int:
        return int(self._failed_closed.sum())

    def states(
        self, subjects: Sequence[str], content_type: str | Sequence[str], instants_ns: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """State (GRANT, REVOKE or NONE) and deciding terms_version for each (subject, ct, instant).

        `subjects` are subject_key()s. A subject named by an unreadable row is NONE: fail closed.
        """
        codes = self.subject_codes(subjects)
        return self.states_of_codes(codes, content_type_codes(content_type, len(codes)), instants_ns)

    def subject_codes(self, subjects: Sequence[str]) -> np.ndarray:
        """Each subject_key's code in the snapshot, -1 for a subject no visible event names: asked once
        per distinct subject of a batch, not per question (`gate.decide`)."""
        return self._subjects.get_indexer(pd.Index(subjects, dtype=object))

    def states_of_codes(
        self, codes: np.ndarray, ct_codes: np.ndarray, instants_ns: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`states` of questions by subject code (`subject_codes`) and content type code (the position
        in CONTENT_TYPES)."""
        known = codes >= 0
        slots = np.where(known, codes, 0).astype(np.int64) * len(CONTENT_TYPES) + ct_codes
        n_times = max(len(self._times), 1)
        time_rank = np.searchsorted(self._times, np.asarray(instants_ns, dtype=np.int64), side="right") - 1
        query = slots * n_times + time_rank
        position = np.searchsorted(self._event_slot, query, side="right") - 1
        safe = np.clip(position, 0, max(len(self._event_slot) - 1, 0))
        found = known & (time_rank >= 0) & (position >= 0) & (len(self._event_slot) > 0)
        if len(self._event_slot):
            found &= (self._event_slot[safe] // n_times) == slots
            found &= ~self._failed_closed[np.where(known, codes, 0)]
            state = np.where(found, self._event_decision[safe], NONE).astype(np.int8)
            terms = np.where(found, self._event_terms[safe], None)
        else:
            state = np.full(len(codes), NONE, dtype=np.int8)
            terms = np.full(len(codes), None, dtype=object)
        return state, terms

    def consented(
        self, subjects: Sequence[str], content_type: str | Sequence[str], captured_ns: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """SPEC §3: granted both at capture and at as_of. Returns (bool mask, terms at capture)."""
        codes = self.subject_codes(subjects)
        return self.consented_codes(codes, content_type_codes(content_type, len(codes)), captured_ns)

    def consented_codes(
        self, codes: np.ndarray, ct_codes: np.ndarray, captured_ns: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`consented` of questions by subject and content type code (`states_of_codes`)."""
        at_capture, terms = self.states_of_codes(codes, ct_codes, captured_ns)
        as_of_ns = np.full(len(codes), to_ns(self.as_of), dtype=np.int64)
        at_as_of, _ = self.states_of_codes(codes, ct_codes, as_of_ns)
        return (at_capture == GRANT) & (at_as_of == GRANT), terms


def content_type_codes(content_type: str | Sequence[str], count: int) -> np.ndarray:
    """The position in CONTENT_TYPES of one content type for `count` questions, or of each."""
    if isinstance(content_type, str):
        return np.full(count, CONTENT_TYPES.index(content_type), dtype=np.int64)
    return np.array([CONTENT_TYPES.index(c) for c in content_type], dtype=np.int64)


def to_ns(instant: datetime) -> int:
    """Nanoseconds since the epoch, exactly (a datetime has whole microseconds); one call per artifact."""
    return to_us(instant) * 1000


def _cell_timestamp(value: Any, field_name: str) -> datetime:
    """Timestamps arrive as text (SQLite) or timezone-aware datetimes (PostgreSQL timestamptz)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise MalformedRecord(field_name, "timestamp without a UTC offset")
        return in_range(value, field_name)
    return parse_timestamp(value, field_name)


_POSITION = {name: i for i, name in enumerate(COLUMNS)}


def cell(row: Sequence[Any], column: str) -> Any:
    """A consent row's value by column name (rows arrive as tuples in COLUMNS order)."""
    return row[_POSITION[column]]


def visible_at(row: Sequence[Any], as_of: datetime) -> bool:
    """Whether a consent row counts at `as_of`: the one rule for the snapshot and the sweep.

    Another purpose's consent never decides ai_training; a row recorded after `as_of` is not visible
    yet, readable or not. A row whose recorded_at cannot be read is visible: it then fails closed as
    unreadable, rather than being silently dropped.
    """
    purpose = cell(row, "purpose")
    if isinstance(purpose, str) and purpose != PURPOSE:
        return False
    try:
        return _cell_timestamp(cell(row, "recorded_at"), "recorded_at") <= as_of
    except MalformedRecord:
        return True


def parse_consent_row(row: Sequence[Any]) -> ConsentEvent:
    """One consent_events row, strictly; raises MalformedRecord naming the field."""
    values = dict(zip(COLUMNS, row, strict=True))
    for name in ("event_id", "subject_type", "subject_id", "content_type", "decision"):
        if not isinstance(values[name], str) or not values[name]:
            raise MalformedRecord(name, "missing or not text")
    if values["subject_type"] not in SUBJECT_TYPES:
        raise MalformedRecord("subject_type", "not 'account' or 'user'")
    if values["content_type"] not in (*CONTENT_TYPES, "*"):
        raise MalformedRecord("content_type", "not a known content type or '*'")
    if values["decision"] not in DECISIONS:
        raise MalformedRecord("decision", "not 'grant' or 'revoke'")
    terms = values["terms_version"]
    if terms is not None and not isinstance(terms, str):
        raise MalformedRecord("terms_version", "not text")
    return ConsentEvent(
        event_id=values["event_id"],
        subject_type=values["subject_type"],
        subject_id=values["subject_id"],
        content_type=values["content_type"],
        decision=values["decision"],
        effective_at=_cell_timestamp(values["effective_at"], "effective_at"),
        recorded_at=_cell_timestamp(values["recorded_at"], "recorded_at"),
        terms_version=terms,
    )


def row_digest_parts(row: Sequence[Any]) -> tuple[int, int, int, int]:
    """A row's sha256 as four 64-bit words: the checksum sums each word over the visible rows."""
    canonical = "\x1e".join("" if v is None else str(v) for v in row)
    digest = hashlib.sha256(canonical.encode()).digest()
    return tuple(int.from_bytes(digest[i : i + 8], "big") for i in range(0, 32, 8))  # type: ignore[return-value]


def checksum_of(visible: int, sums: Sequence[int]) -> str:
    """The checksum of the visible rows: order-independent (a sum per digest word, exact, no modulus),
    so rows can stream in any order, and the vectorized path computes it in SQL."""
    return hashlib.sha256(f"{visible}:{':'.join(str(s) for s in sums)}".encode()).hexdigest()


class _SnapshotBuilder:
    """Accumulates visible rows; the checksum is order-independent so rows can stream in."""

    def __init__(self, as_of: datetime) -> None:
        self.as_of = as_of
        self.digest_sums = [0, 0, 0, 0]
        self.visible = 0
        self.unreadable: list[UnreadableConsentRow] = []
        self.failed_closed: set[str] = set()
        self.subjects: list[str] = []
        self.content_types: list[str] = []
        self.decisions: list[int] = []
        self.effective: list[int] = []
        self.recorded: list[int] = []
        self.event_ids: list[str] = []
        self.terms: list[str | None] = []
        self._last_event_id: str | None = None
        self._last_subject: str | None = None
        self._last_listed = False

    def add(self, row: Sequence[Any]) -> None:
        if not visible_at(row, self.as_of):
            return
        purpose = cell(row, "purpose")
        self.visible += 1
        for i, word in enumerate(row_digest_parts(row)):
            self.digest_sums[i] += word
        duplicate = row[0] is not None and row[0] == self._last_event_id
        if duplicate and self._last_subject is not None:
            # Two rows claim one id: neither can be trusted, so both subjects fail closed, both listed.
            self.failed_closed.add(self._last_subject)
            if not self._last_listed:
                self.unreadable.append(
                    UnreadableConsentRow(str(row[0]), self._last_subject.split("\x1f", 1)[0], DUPLICATE_ERROR)
                )
        readable_subject = row[1] in SUBJECT_TYPES and isinstance(row[2], str) and row[2]
        self._last_event_id = row[0]
        self._last_subject = subject_key(row[1], row[2]) if readable_subject else None
        listed = len(self.unreadable)
        try:
            if not isinstance(purpose, str):
                raise MalformedRecord("purpose", "missing or not text")
            if duplicate:
                raise MalformedRecord("event_id", "duplicate event_id")
            event = parse_consent_row(row)
        except MalformedRecord as error:
            self._fail_closed(row, error)
            self._last_listed = len(self.unreadable) > listed
            return
        self._last_listed = False
        key = subject_key(event.subject_type, event.subject_id)
        for content_type in CONTENT_TYPES if event.content_type == "*" else (event.content_type,):
            self.subjects.append(key)
            self.content_types.append(content_type)
            self.decisions.append(GRANT if event.decision == "grant" else REVOKE)
            self.effective.append(to_ns(event.effective_at))
            self.recorded.append(to_ns(event.recorded_at))
            self.event_ids.append(event.event_id)
            self.terms.append(event.terms_version)

    def _fail_closed(self, row: Sequence[Any], error: MalformedRecord) -> None:
        subject_type, subject_id = row[1], row[2]
        if subject_type not in SUBJECT_TYPES or not isinstance(subject_id, str) or not subject_id:
            raise ConsentStoreError(
                f"consent_events row event_id={row[0]!r}: {error}, and its subject cannot be read either; "
                "refusing to decide any consent"
            )
        self.failed_closed.add(subject_key(subject_type, subject_id))
        self.unreadable.append(UnreadableConsentRow(str(row[0]), subject_type, str(error)))

    def build(self) -> ConsentSnapshot:
        return assemble_snapshot(
            as_of=self.as_of,
            checksum=checksum_of(self.visible, self.digest_sums),
            visible=self.visible,
            unreadable=self.unreadable,
            failed_closed=self.failed_closed,
            subjects=np.array(self.subjects, dtype=object),
            content_types=np.array([CONTENT_TYPES.index(c) for c in self.content_types], dtype=np.int64),
            decisions=np.array(self.decisions, dtype=np.int8),
            effective=np.array(self.effective, dtype=np.int64),
            recorded=np.array(self.recorded, dtype=np.int64),
            event_ids=np.array(self.event_ids, dtype=object),
            terms=np.array(self.terms, dtype=object),
        )


def assemble_snapshot(
    *,
    as_of: datetime,
    checksum: str,
    visible: int,
    unreadable: list[UnreadableConsentRow],
    failed_closed: set[str],
    subjects: np.ndarray | pa.Array,
    content_types: np.ndarray,
    decisions: np.ndarray,
    effective: np.ndarray,
    recorded: np.ndarray,
    event_ids: np.ndarray | pa.Array,
    terms: np.ndarray,
) -> ConsentSnapshot:
    """Index readable events (one per concrete content type) for batched state look-ups. Subjects and
    event ids are coded in Arrow (sorted distinct values, dense ranks): no Python object per event."""
    subjects = pa.array(subjects, pa.string()) if not isinstance(subjects, pa.Array) else subjects
    event_ids = pa.array(event_ids, pa.string()) if not isinstance(event_ids, pa.Array) else event_ids
    distinct = pc.unique(pa.concat_arrays([subjects, pa.array(sorted(failed_closed), pa.string())]))
    distinct = pc.take(distinct, pc.sort_indices(distinct))
    index = pd.Index(distinct.to_pylist(), dtype=object)
    failed = np.zeros(len(index), dtype=bool)
    if failed_closed:
        failed[index.get_indexer(sorted(failed_closed))] = True
    codes = pc.index_in(subjects, value_set=distinct).to_numpy(zero_copy_only=False).astype(np.int64)
    slot = codes * len(CONTENT_TYPES) + content_types.astype(np.int64)
    event_rank = (
        pc.rank(event_ids, sort_keys="ascending", tiebreaker="dense").to_numpy(zero_copy_only=False).astype(np.int64)
        if len(event_ids)
        else np.zeros(0, dtype=np.int64)
    )
    # np.lexsort sorts by the last key first: slot, then effective_at, recorded_at,
    # revoke after grant (grant=1 sorts after revoke=0, so rank on 1 - decision), event_id.
    order = np.lexsort((event_rank, 1 - decisions, recorded, effective, slot))
    times = np.unique(effective)
    n_times = max(len(times), 1)
    time_rank = np.searchsorted(times, effective)
    return ConsentSnapshot(
        as_of=as_of,
        checksum=checksum,
        visible_events=visible,
        unreadable=unreadable,
        _subjects=index,
        _failed_closed=failed,
        _event_slot=(slot * n_times + time_rank)[order],
        _event_decision=decisions[order],
        _event_terms=terms[order],
        _times=times,
    )


def snapshot_from_rows(rows: Iterable[Sequence[Any]], as_of: datetime) -> ConsentSnapshot:
    """A snapshot of rows given in COLUMNS order, sorted by event_id (duplicates detected adjacent)."""
    builder = _SnapshotBuilder(as_of.astimezone(UTC))
    for row in rows:
        builder.add(row)
    return builder.build()


def read_consent_rows(url: str, batch_size: int = 50_000) -> Iterator[tuple[Any, ...]]:
    """Stream consent_events rows from a SQLAlchemy URL, ordered by event_id (the row-wise path)."""
    query = f"SELECT {', '.join(COLUMNS)} FROM consent_events ORDER BY event_id"
    with connect(url) as (address, connection):
        cursor = connection.cursor("consent_rows") if address.backend == "postgresql" else connection.cursor()
        try:
            cursor.execute(query)
            while chunk := cursor.fetchmany(batch_size):
                yield from (tuple(row) for row in chunk)
        finally:
            cursor.close()


def take_snapshot_rowwise(url: str, as_of: datetime) -> ConsentSnapshot:
    """The row-wise reference path (tests compare the vectorized snapshot with it)."""
    # Closed even when a row fails the run, so the store's connection is released at once.
    with closing(read_consent_rows(url)) as rows:
        return snapshot_from_rows(rows, as_of)
