"""The incremental sweep reads only what changed, and judges published rows exactly as a full sweep does.

- On generated consent stores spread over days (unreadable rows, duplicate event_ids, `*` rows, rows
  recorded after as_of, back-dated rows), the rows an incremental sweep removes from content published
  at any as_of after the watermark are the rows a full sweep removes.
- The fingerprint sends the sweep full when rows appear below, or vanish from below, the watermark.
- Counted reads: a sweep with nothing new reads a day's margin of rows, not the store (SQLite and PostgreSQL).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from itertools import product
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from consent_gate.consent import ConsentStoreError
from consent_gate.consent_store import create_consent_indexes, observe_reads, read_consent_table
from consent_gate.gate import CONTENT_SCHEMA
from consent_gate.keyed_consent import keyed_consent_table, withdrawal_reasons
from consent_gate.keys import Keyer
from consent_gate.sweep_scope import changed_consent, stage_consent, sweep_scope
from tests.builders import at, consent_row, write_consent_db
from tests.test_consent_vector import BAD_INSTANTS, ODD_INSTANTS

pytestmark = pytest.mark.integration

KEYER = Keyer(b"s" * 32)
SUBJECTS = [("user", "u_1"), ("user", "u_2"), ("account", "acct_1"), ("account", "acct_2")]
WATERMARK = at(0)
hours = st.integers(min_value=-96, max_value=96).map(lambda h: at(h * 60))  # days either side of the watermark


@st.composite
def consent_stores(draw) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rows present at the watermark, and the rows inserted since: recorded at any time from a day
    before it on (back-dated a little); an insert further below sends the sweep full (the fingerprint)."""
    present = [consent_row(f"g{i}", s, subject_type=t, effective=at(-200 * 60)) for i, (t, s) in enumerate(SUBJECTS)]
    inserted: list[tuple[Any, ...]] = []
    for n in range(draw(st.integers(0, 14))):
        subject_type, subject_id = draw(st.sampled_from(SUBJECTS))
        later = draw(st.booleans())
        effective = draw(hours)
        recorded = effective + timedelta(hours=draw(st.sampled_from([0, 0, 2, 30, -30])))  # -30: back-dated effect
        if later:
            recorded = max(recorded, WATERMARK - timedelta(hours=draw(st.sampled_from([0, 3, 20]))))
        elif recorded > WATERMARK:
            recorded = WATERMARK - timedelta(hours=1)
        row = consent_row(
            f"e{n:02d}" if draw(st.integers(0, 5)) else draw(st.sampled_from([r[0] for r in present + inserted])),
            subject_id,
            draw(st.sampled_from(["grant", "revoke", "revoke"])),
            subject_type=subject_type,
            content_type=draw(st.sampled_from(["*", "chat", "transcript"])),
            effective=effective,
            recorded=recorded,
            purpose=draw(st.sampled_from(["ai_training"] * 6 + ["marketing", None])),
        )
        mutation = draw(st.integers(0, 20))
        if mutation == 0:
            row = (*row[:5], "maybe", *row[6:])
        elif mutation == 1:
            row = (*row[:6], draw(st.sampled_from(BAD_INSTANTS + ODD_INSTANTS)), *row[7:])
        elif mutation == 2 and later:  # an unreadable recorded_at is always in the changed range
            row = (*row[:7], draw(st.sampled_from(BAD_INSTANTS + ODD_INSTANTS)), row[8])
        elif mutation == 3:
            row = (row[0], draw(st.sampled_from(["", "team", None])), *row[2:])
        (inserted if later else present).append(row)
    return present, inserted


def published(captured: list) -> pa.Table:
    """Content of every account, user pair and type, captured at each instant, keyed as published."""
    users = [KEYER.user(s) for t, s in SUBJECTS if t == "user"]
    accounts = [KEYER.account(s) for t, s in SUBJECTS if t == "account"]
    rows = [
        {"artifact_id": f"m/{kind}/{n}", "artifact_type": kind, "meeting_key": "k", "user_keys": [user],
         "account_keys": [account], "captured_at": moment, "text": "words", "media_uri": None, "media_sha256": None,
         "terms_versions": ["2026-01"], "consent_as_of": WATERMARK}
        for n, (kind, user, account, moment) in enumerate(
            product(["transcript_segment", "chat_message"], users, accounts, captured)
        )
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=CONTENT_SCHEMA)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(store=consent_stores(), swept_after=st.integers(1, 96))
def test_an_incremental_sweep_removes_what_a_full_sweep_removes(tmp_path_factory, store, swept_after):
    """Published content is what was eligible at the watermark (the last sweep's invariant) or was
    gated since; the incremental sweep over the store of now removes from it what a full sweep removes."""
    present, inserted = store
    folder = tmp_path_factory.mktemp("store")
    at_watermark = read_consent_table(write_consent_db(folder / "then.db", present))
    url = write_consent_db(folder / "now.db", present + inserted)
    as_of = WATERMARK + timedelta(hours=swept_after)
    content = published([at(-150 * 60), at(-30 * 60), WATERMARK - timedelta(minutes=1)])
    try:
        then = keyed_consent_table(at_watermark, KEYER, WATERMARK, None)
        full = keyed_consent_table(read_consent_table(url), KEYER, as_of, None)
    except ConsentStoreError:  # a row no one can be named by: the gate and a full sweep refuse to decide,
        assume(False)  # so nothing was published and no watermark was written over such a store
    content = content.filter(pa.array([r is None for r in withdrawal_reasons(content, then.snapshot)]))
    incremental = changed_consent(url, KEYER, WATERMARK, as_of, purpose="test").consent
    assert withdrawal_reasons(content, incremental.snapshot, incremental.affected) == withdrawal_reasons(
        content, full.snapshot
    )


def _append(db: Path, rows: list[tuple[Any, ...]]) -> None:
    with sqlite3.connect(db) as connection:
        connection.executemany("INSERT INTO consent_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def _old_store(db: Path, subjects: int) -> str:
    rows = [consent_row(f"old{n:05d}", f"u_{n}", effective=at(-30 * 24 * 60 + n)) for n in range(subjects)]
    url = write_consent_db(db, rows)
    create_consent_indexes(url)
    return url


def test_the_fingerprint_sends_the_sweep_full_when_old_rows_appear_or_vanish(tmp_path):
    db = tmp_path / "consent.db"
    url = _old_store(db, 50)
    with sweep_scope(url, KEYER, WATERMARK, None) as first:
        assert first.mode == "full" and first.rows_read == 50
    watermark = {"as_of": WATERMARK.isoformat(), "last_full_as_of": WATERMARK.isoformat(), **first.fingerprint}

    later = WATERMARK + timedelta(hours=1)
    assert sweep_scope(url, KEYER, later, watermark, full_every=timedelta(hours=24)).mode == "incremental"
    for full in (sweep_scope(url, KEYER, later, watermark, full_every=timedelta(minutes=30)),
                 sweep_scope(url, KEYER, later, {**watermark, "below": None})):  # fmt: skip
        with full:
            assert full.mode == "full"

    _append(db, [consent_row("late", "u_3", "revoke", effective=at(-10 * 24 * 60))])  # back-dated below the watermark
    with sweep_scope(url, KEYER, later, watermark) as back_dated:
        assert back_dated.mode == "full" and "below the watermark" in back_dated.why

    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM consent_events WHERE event_id IN ('late', 'old00007')")
    with sweep_scope(url, KEYER, later, watermark) as removed:
        assert removed.mode == "full"  # one fewer than the watermark counted


def _scoped_reads(url: str, watermark: dict[str, Any], as_of) -> tuple[Any, int]:
    with observe_reads() as reads:
        scope = sweep_scope(url, KEYER, as_of, watermark)
    return scope, sum(rows for _, rows in reads)


def _check_reads_only_what_changed(url: str, append) -> None:
    with sweep_scope(url, KEYER, WATERMARK, None) as first:
        pass
    watermark = {"as_of": WATERMARK.isoformat(), "last_full_as_of": WATERMARK.isoformat(), **first.fingerprint}
    quiet, read = _scoped_reads(url, watermark, WATERMARK + timedelta(hours=1))
    assert quiet.mode == "incremental" and quiet.changed.affected == set() and read == 0

    soon = WATERMARK + timedelta(minutes=5)
    append([consent_row("r1", "u_12", "revoke", effective=soon),
            consent_row("r2", "acct_9", "revoke", content_type="chat", effective=soon)])  # fmt: skip
    changed, read = _scoped_reads(url, watermark, WATERMARK + timedelta(hours=1))
    assert changed.mode == "incremental" and changed.subjects_judged == 2
    assert changed.changed.affected == {f"user\x1f{KEYER.user('u_12')}", f"account\x1f{KEYER.account('acct_9')}"}
    assert read == changed.rows_read == 8  # the 2 new rows; u_12's and acct_9's 3 rows, and again by event_id


def test_a_quiet_sweep_reads_nothing_of_an_old_sqlite_store(tmp_path):
    db = tmp_path / "consent.db"
    _check_reads_only_what_changed(_old_store(db, 2000), lambda rows: _append(db, rows))


def test_a_quiet_sweep_reads_nothing_of_an_old_postgresql_store(postgres_database):
    postgres_url = postgres_database
    import sqlalchemy as sa

    from consent_gate.consent import COLUMNS

    engine = sa.create_engine(postgres_url)
    insert = sa.text(f"INSERT INTO consent_events VALUES ({', '.join(':' + c for c in COLUMNS)})")

    def append(rows: list[tuple[Any, ...]]) -> None:
        with engine.begin() as connection:
            connection.execute(insert, [dict(zip(COLUMNS, r, strict=True)) for r in rows])

    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE consent_events ({', '.join(c + ' text' for c in COLUMNS)})"))
    append([consent_row(f"old{n:05d}", f"u_{n}", effective=at(-30 * 24 * 60 + n)) for n in range(2000)])
    create_consent_indexes(postgres_url)
    try:
        _check_reads_only_what_changed(postgres_url, append)
    finally:
        engine.dispose()


def test_an_unreadable_row_naming_no_one_refuses_the_incremental_sweep_as_it_does_the_full_one(tmp_path):
    db = tmp_path / "consent.db"
    url = _old_store(db, 20)
    _append(db, [(*consent_row("nameless", "u_3", effective=WATERMARK + timedelta(minutes=5))[:1], "team",
                  *consent_row("nameless", "u_3", effective=WATERMARK + timedelta(minutes=5))[2:])])  # fmt: skip
    later = WATERMARK + timedelta(hours=1)
    for judge in (lambda: changed_consent(url, KEYER, WATERMARK, later, purpose="test"),
                  lambda: keyed_consent_table(read_consent_table(url), KEYER, later, None)):  # fmt: skip
        with pytest.raises(ConsentStoreError, match="its subject cannot be read"):
            judge()


def test_a_stage_pinned_before_the_watermark_or_unreadably_is_judged_from_its_pin(tmp_path):
    db = tmp_path / "consent.db"
    url = _old_store(db, 20)
    _append(db, [consent_row("old_revoke", "u_3", "revoke", effective=at(-20 * 24 * 60))])
    with sweep_scope(url, KEYER, WATERMARK, None) as first:
        pass
    watermark = {"as_of": WATERMARK.isoformat(), "last_full_as_of": WATERMARK.isoformat(), **first.fingerprint}
    scope = sweep_scope(url, KEYER, WATERMARK + timedelta(hours=1), watermark)
    assert scope.mode == "incremental" and scope.only == set()
    judge = stage_consent(scope, url, KEYER, WATERMARK + timedelta(hours=1))
    revoked = f"user\x1f{KEYER.user('u_3')}"
    assert judge({"consent": {"as_of": WATERMARK.isoformat()}}, set)[1] == set()  # pinned at the watermark
    for pin in (at(-25 * 24 * 60).isoformat(), "not an instant", None):  # before the revocation; unreadable
        consent, whose = judge({"consent": {"as_of": pin}}, set)
        assert revoked in whose and revoked in consent.affected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(store=consent_stores(), swept_after=st.integers(1, 96))
def test_the_whole_store_consent_streamed_to_disk_judges_as_the_table_in_memory(
    tmp_path_factory, monkeypatch, store, swept_after
):
    """The full sweep's consent (the store streamed in batches, keyed batch by batch, judged into a file,
    semi-joined for the subjects asked about) equals `keyed_consent_table` over the whole store in memory."""
    from consent_gate import consent_store
    from consent_gate.keyed_consent import WholeStoreConsent

    monkeypatch.setattr(consent_store, "SQLITE_BATCH", 3)  # a subject's rows spread over several batches
    present, inserted = store
    url = write_consent_db(tmp_path_factory.mktemp("store") / "now.db", present + inserted)
    as_of = WATERMARK + timedelta(hours=swept_after)
    content = published([at(-150 * 60), at(-30 * 60), WATERMARK - timedelta(minutes=1), as_of])
    try:
        table = read_consent_table(url)
        in_memory = keyed_consent_table(table, KEYER, as_of, None)
    except ConsentStoreError:
        with pytest.raises(ConsentStoreError, match="its subject cannot be read"):
            WholeStoreConsent(url, KEYER, as_of, purpose="test")
        return
    whole = WholeStoreConsent(url, KEYER, as_of, purpose="test")
    try:
        assert whole.rows_read == table.num_rows
        assert whole.summary.checksum == in_memory.snapshot.checksum
        assert whole.revocation_count == len(in_memory.revocations)
        assert whole.fail_closed_count == len(in_memory.fail_closed)
        everyone = {f"{kind}\x1f{KEYER.key(kind, raw)}" for kind, raw in SUBJECTS}
        for asked in (everyone, {f"user\x1f{KEYER.user('u_1')}", f"account\x1f{KEYER.account('acct_2')}"}):
            on_disk = whole.consent_for(asked)
            assert sorted(on_disk.revocations, key=repr) == sorted(
                (r for r in in_memory.revocations if r.subject in asked), key=repr
            )
            assert on_disk.fail_closed == in_memory.fail_closed & asked
            theirs = content.filter(
                pa.array([f"user\x1f{u[0]}" in asked and f"account\x1f{a[0]}" in asked
                          for u, a in zip(content.column("user_keys").to_pylist(),
                                          content.column("account_keys").to_pylist(), strict=True)])
            )  # fmt: skip
            assert withdrawal_reasons(theirs, on_disk.snapshot) == withdrawal_reasons(theirs, in_memory.snapshot)
    finally:
        whole.close()
    assert not Path(whole.events_path).exists()


def test_a_full_scope_answers_for_subjects_met_after_its_first_answer(tmp_path):
    """A day published while a full sweep runs names subjects the first semi-join did not ask about: they
    are read from the whole-store file, not judged as having no consent."""
    url = _old_store(tmp_path / "consent.db", 5)
    first, second = f"user\x1f{KEYER.user('u_1')}", f"user\x1f{KEYER.user('u_4')}"
    with sweep_scope(url, KEYER, WATERMARK, None) as scope:
        assert scope.mode == "full"
        for subject in (first, second, first):
            consent = scope.consent_of(lambda subject=subject: {subject})
            ok, _ = consent.snapshot.consented([subject], ["chat"], [int(at(-60).timestamp()) * 10**9])
            assert ok.tolist() == [True]
        events = scope.whole_store.events_path
    assert not Path(events).exists()  # the whole-store consent lives only as long as the sweep


# recorded_at / effective_at cells as a hostile SQLite store may hold them (its columns untyped): text
# around the changed bound, before 1900, malformed, numbers (sorting before any text), blobs (after).
_CELLS = st.sampled_from(
    [None, "2026-11-18T23:59:59Z", "2026-11-19", "2026-11-19T00:00:00Z", "2026-11-21T08:00:00Z",
     "1899-12-31T23:59:59Z", "1900", "0", "", "zzz", 5, 2026.5, b"\x00", b"2026-11-20"]
)  # fmt: skip


@given(st.lists(st.tuples(_CELLS, _CELLS), max_size=30))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_changed_rows_are_read_in_parts_exactly_as_the_one_condition_selects_them(tmp_path_factory, cells):
    """`read_changed_rows` reads disjoint indexed ranges (SQLite scans the whole table for the OR of
    them): the same rows, each once, as `recorded_at >= L OR effective_at >= L OR recorded_at < '1900'
    OR recorded_at IS NULL`, under SQLite's order across types."""
    from consent_gate.consent import COLUMNS
    from consent_gate.consent_store import changed_bound, read_changed_rows

    db = tmp_path_factory.mktemp("changed") / "consent.db"
    with sqlite3.connect(db) as connection:
        connection.execute(f"CREATE TABLE consent_events ({', '.join(COLUMNS)})")  # untyped: cells keep their type
        rows = [consent_row(f"e{n}", "u_1", effective="x", recorded="x") for n in range(len(cells))]
        position = {name: i for i, name in enumerate(COLUMNS)}
        for row, (recorded, effective) in zip(rows, cells, strict=True):
            cell = list(row)
            cell[position["recorded_at"]], cell[position["effective_at"]] = recorded, effective
            connection.execute(f"INSERT INTO consent_events VALUES ({', '.join('?' * len(COLUMNS))})", cell)
    url = f"sqlite:///{db}"
    create_consent_indexes(url)
    since = datetime(2026, 11, 20, tzinfo=UTC)
    lower = changed_bound(since)
    with sqlite3.connect(db) as connection:
        expected = sorted(
            event_id
            for (event_id,) in connection.execute(
                "SELECT event_id FROM consent_events WHERE recorded_at >= ? OR effective_at >= ? "
                "OR recorded_at < '1900' OR recorded_at IS NULL",
                (lower, lower),
            )
        )
    assert sorted(read_changed_rows(url, since, purpose="test").column("event_id").to_pylist()) == expected
