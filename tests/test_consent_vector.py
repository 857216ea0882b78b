"""The vectorized snapshot (DuckDB over Arrow) equals the row-wise reference on generated consent tables:
ties, `*` rows, unreadable rows of every kind, duplicate event_ids, rows recorded after as_of."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent_gate.consent import (
    COLUMNS,
    CONTENT_TYPES,
    ConsentStoreError,
    snapshot_from_rows,
    subject_key,
    take_snapshot_rowwise,
    to_ns,
)
from consent_gate.consent_store import ARROW_SCHEMA
from consent_gate.consent_vector import (
    _US_1900,
    _US_2200,
    _instant_sql,
    connect_duckdb,
    snapshot_from_table,
    take_snapshot,
)
from consent_gate.errors import MalformedRecord
from consent_gate.instants import parse_timestamp
from tests.builders import at, consent_row, ts, write_consent_db
from tests.test_instants import _SHAPED

pytestmark = pytest.mark.unit

SUBJECTS = [("user", "u_1"), ("user", "u_2"), ("account", "acct_1")]
instants = st.integers(min_value=-6, max_value=6).map(lambda h: at(h * 60))
BAD_INSTANTS = [
    "2026-11-02T10:00:00",  # no offset
    "9999-12-31T23:59:59Z",  # out of range
    "1899-12-31T23:59:59Z",
    "2026-02-30T10:00:00Z",  # no such day
    "2026-11-02T24:00:00Z",
    "2026-11-02 10:00:00Z",  # not the shape
    "2026-11-02T10:00:00+24:00",  # offset of a day
    "",
    None,
]
ODD_INSTANTS = ["2026-11-02T10:00:00.123456789Z", "2026-11-02T15:30:00+05:30", "2026-11-02T11:00:00+00:75"]


@st.composite
def consent_tables(draw) -> list[tuple[Any, ...]]:
    rows = []
    for n in range(draw(st.integers(0, 16))):
        subject_type, subject_id = draw(st.sampled_from(SUBJECTS))
        effective = draw(instants)
        row = consent_row(
            f"e{n:02d}" if n == 0 or draw(st.integers(0, 7)) else f"e{draw(st.integers(0, n - 1)):02d}",
            subject_id,
            draw(st.sampled_from(["grant", "grant", "revoke"])),
            subject_type=subject_type,
            content_type=draw(st.sampled_from(["*", "*", "chat", "transcript", "summary"])),
            effective=effective,
            recorded=effective + timedelta(hours=draw(st.sampled_from([0, 0, 1, 3, 9]))),  # some after as_of
            purpose=draw(st.sampled_from(["ai_training"] * 6 + ["marketing", None])),
            terms=draw(st.sampled_from(["2026-01", "2026-02", None])),
        )
        mutation = draw(st.integers(0, 24))
        if mutation == 0:
            row = (*row[:5], "maybe", *row[6:])
        elif mutation == 1:
            row = (*row[:6], draw(st.sampled_from(BAD_INSTANTS + ODD_INSTANTS)), *row[7:])
        elif mutation == 2:
            row = (*row[:7], draw(st.sampled_from(BAD_INSTANTS + ODD_INSTANTS)), row[8])
        elif mutation == 3:
            row = (*row[:4], draw(st.sampled_from(["", "video", None])), *row[5:])
        elif mutation == 4:
            row = (draw(st.sampled_from(["", None])), *row[1:])
        rows.append(row)
    return rows


def _arrow(rows: list[tuple[Any, ...]]) -> pa.Table:
    columns = {c: [r[i] for r in rows] for i, c in enumerate(COLUMNS)}
    return pa.table({**columns, "nontext": [0] * len(rows)}, schema=ARROW_SCHEMA)


def _both(rows, as_of):
    ordered = sorted(rows, key=lambda r: str(r[0]))
    try:
        reference = snapshot_from_rows(ordered, as_of)
    except ConsentStoreError:
        reference = None
    try:
        vectorized = snapshot_from_table(_arrow(rows), as_of)
    except ConsentStoreError:
        vectorized = None
    return reference, vectorized


@settings(max_examples=150, deadline=None)
@given(rows=consent_tables(), as_of=instants)
def test_the_vectorized_snapshot_equals_the_row_wise_rules(rows, as_of):
    reference, vectorized = _both(rows, as_of)
    assert (reference is None) == (vectorized is None)  # a row whose subject cannot be read fails both
    if reference is None:
        return
    assert vectorized.checksum == reference.checksum
    assert vectorized.visible_events == reference.visible_events
    assert vectorized.failed_closed_subjects == reference.failed_closed_subjects
    listed = sorted((u.event_id, u.subject_type, u.error) for u in vectorized.unreadable)
    assert listed == sorted((u.event_id, u.subject_type, u.error) for u in reference.unreadable)
    keys = [subject_key(t, s) for t, s in SUBJECTS]
    moments = np.array([to_ns(at(h * 60)) for h in range(-7, 8)], dtype=np.int64)
    for ct in CONTENT_TYPES:
        for key in keys:
            queries = [key] * len(moments)
            assert np.array_equal(vectorized.states(queries, ct, moments)[0], reference.states(queries, ct, moments)[0])
            assert list(vectorized.states(queries, ct, moments)[1]) == list(reference.states(queries, ct, moments)[1])
            assert np.array_equal(
                vectorized.consented(queries, ct, moments)[0], reference.consented(queries, ct, moments)[0]
            )


def test_a_row_with_an_unreadable_subject_fails_either_path():
    rows = [consent_row("e1", "u_1"), consent_row("e2", "", subject_type="user", decision="maybe")]
    assert _both(rows, at(24 * 60)) == (None, None)


def test_the_store_reader_and_the_reference_agree_on_a_real_sqlite_store(tmp_path):
    rows = [
        consent_row("e1", "u_1", effective=at(-60)),
        consent_row("e2", "u_1", "revoke", effective=at(30)),
        consent_row("e3", "u_2", effective="2026-11-02T12:00:00+02:00"),
        consent_row("e3", "acct_1", effective=at(-60)),  # a duplicate id
        consent_row("e4", "u_2", effective="9999-12-31T23:59:59Z"),
        consent_row("e5", "acct_1", effective=at(-60), recorded=at(48 * 60)),  # recorded after as_of
    ]
    url = write_consent_db(tmp_path / "consent.db", rows)
    with sqlite3.connect(tmp_path / "consent.db") as connection:  # a cell that is not text: terms_version 7
        insert = "INSERT INTO consent_events VALUES ('e6', 'user', 'u_1', 'ai_training', '*', 'grant', ?, ?, 7)"
        connection.execute(insert, (ts(at(-60)), ts(at(-60))))
    vectorized, reference = take_snapshot(url, at(24 * 60)), take_snapshot_rowwise(url, at(24 * 60))
    assert vectorized.checksum != "" and vectorized.visible_events == reference.visible_events == 6
    assert sorted(u.event_id for u in vectorized.unreadable) == sorted(u.event_id for u in reference.unreadable)
    keys = [subject_key(t, s) for t, s in SUBJECTS]
    moment = np.full(len(keys), to_ns(at(0)), dtype=np.int64)
    assert np.array_equal(vectorized.consented(keys, "chat", moment)[0], reference.consented(keys, "chat", moment)[0])


@settings(max_examples=60, deadline=None)
@given(rows=consent_tables(), as_of=instants, since=st.one_of(st.none(), instants))
def test_the_vectorized_keyed_consent_of_the_sweep_equals_the_row_wise_one(rows, as_of, since):
    from consent_gate.keyed_consent import keyed_consent, keyed_consent_table
    from consent_gate.keys import Keyer

    keyer = Keyer(b"k" * 32)
    try:
        reference = keyed_consent(sorted(rows, key=lambda r: str(r[0])), keyer, as_of, since)
    except ConsentStoreError:
        reference = None
    try:
        vectorized = keyed_consent_table(_arrow(rows), keyer, as_of, since)
    except ConsentStoreError:
        vectorized = None
    assert (reference is None) == (vectorized is None)
    if reference is None:
        return
    assert vectorized.snapshot.checksum == reference.snapshot.checksum
    assert vectorized.fail_closed == reference.fail_closed
    assert sorted(vectorized.revocations, key=repr) == sorted(reference.revocations, key=repr)


def test_the_sqlite_reader_keeps_nulls_empty_text_and_flags_cells_of_other_types(tmp_path, monkeypatch):
    """The Arrow driver infers a column's type from its first rows: NULLs first, then text, over several
    batches, in a table whose columns have no type (any cell any type), read as Python's sqlite3 reads them."""
    from consent_gate import consent_store
    from consent_gate.consent import COLUMNS
    from consent_gate.consent_store import read_consent_table

    monkeypatch.setattr(consent_store, "SQLITE_BATCH", 2)
    db = tmp_path / "untyped.db"
    odd = [None, "", 7, 2.5, b"\x00bytes", "text", b"\xff\xfe not UTF-8"]
    with sqlite3.connect(db) as connection:
        connection.execute(f"CREATE TABLE consent_events ({', '.join(COLUMNS)})")  # no affinity
        rows = [[None] * len(COLUMNS) for _ in range(3)]
        rows += [[odd[(n + c) % len(odd)] for c in range(len(COLUMNS))] for n in range(12)]
        connection.executemany(f"INSERT INTO consent_events VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    table = read_consent_table(f"sqlite:///{db}")
    expected_nontext = [
        sum(1 << c for c, value in enumerate(row) if value is not None and not isinstance(value, str)) for row in rows
    ]
    assert table.column("nontext").to_pylist() == expected_nontext
    for c, name in enumerate(COLUMNS):
        assert table.column(name).to_pylist() == [row[c] if isinstance(row[c], str) else None for row in rows]


def test_text_that_is_not_utf8_is_refused_naming_the_column_never_the_value(tmp_path):
    from consent_gate.consent import ConsentStoreError

    url = write_consent_db(tmp_path / "c.db", [consent_row("e1", "u_1")])
    with sqlite3.connect(tmp_path / "c.db") as connection:
        connection.execute("UPDATE consent_events SET subject_id = CAST(X'ff7365637265743a75' AS TEXT)")
    with pytest.raises(ConsentStoreError, match=r"consent_events\.subject_id holds text that is not valid UTF-8") as e:
        take_snapshot(url, at(100))
    assert "secret" not in str(e.value)


NEAR_SHAPES = (  # judged in every example, beside the generated values
    "2026-11-02T10:00:00Z\n",  # Python's `$` matches before a final newline; the contract's shape does not
    "2026-11-02T10:00:00z",
    "2026-11-02T10:00:00+0530",
    "2026-11-02T10:00:00.Z",
    "\uff12026-11-02T10:00:00Z",  # a digit that is not ASCII
    "2026-11-02T10:00:00\u0665Z",
    "2026-11-02T10:00:00.1234567890Z",
    " 2026-11-02T10:00:00Z",
    "2026-11-02T10:00:00+05:60",  # an offset's minutes past 59
    "2026-11-02T10:00:00-24:00",
    "2026-11-02T10:00:60Z",  # a leap second: not a valid time in either reading
    "2026-11-02T10:60:00Z",
    "2026-11-02T24:00:00Z",
    "2026-13-02T10:00:00Z",
    "2026-02-29T10:00:00Z",
    "2200-01-01T00:00:00.000001Z",
)


def _written(local: datetime, fraction: str, offset_minutes: int | None) -> str:
    zone = (
        "Z"
        if offset_minutes is None
        else "{}{:02d}:{:02d}".format("-+"[offset_minutes >= 0], *divmod(abs(offset_minutes), 60))
    )
    return f"{local:%Y-%m-%dT%H:%M:%S}{fraction}{zone}"


_WELL_WRITTEN = st.builds(  # instants as producers write them: every field valid, any zone, any fraction
    _written,
    st.datetimes(datetime(1899, 12, 30), datetime(2200, 1, 2)),
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=9).map(".".__add__)),
    st.one_of(st.none(), st.integers(-(23 * 60 + 59), 23 * 60 + 59)),
)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.one_of(_WELL_WRITTEN, _SHAPED, st.text(max_size=30)), min_size=1, max_size=120))
def test_the_judge_reads_every_timestamp_as_parse_timestamp_does(values, tmp_path_factory):
    """The judge's SQL (`_instant_sql`, then the contract's range) gives the microsecond `parse_timestamp`
    gives, and refuses what it refuses: every value of the contract's shape, values near it, any text."""
    values = [*NEAR_SHAPES, *values]
    connection = connect_duckdb(str(tmp_path_factory.mktemp("spill")))
    try:
        given_values = pa.table({"n": range(len(values)), "value": pa.array(values, pa.string())})  # noqa: F841
        read = connection.execute(
            f"SELECT CASE WHEN x BETWEEN {_US_1900} AND {_US_2200} THEN x END FROM "
            f"(SELECT n, {_instant_sql('value')} AS x FROM given_values) ORDER BY n"
        ).fetchall()
    finally:
        connection.close()
    for value, (microseconds,) in zip(values, read, strict=True):
        try:
            expected = (parse_timestamp(value, "at") - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        except MalformedRecord:
            expected = None
        assert microseconds == expected, ascii(value)
