"""The consent store on PostgreSQL: the same consent rules and the same gate results as on SQLite.

Runs against the local PostgreSQL server (scripts/services starts it); each test gets a throwaway
database. Without a server the tests skip with an install hint; under CI=true they fail instead.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.consent import COLUMNS, ConsentStoreError, subject_key, to_ns
from consent_gate.consent_store import create_consent_indexes
from consent_gate.consent_vector import take_snapshot
from consent_gate.pipeline import run_day
from consent_gate.records import parse_timestamp
from consent_gate.sample import write_consent_events
from tests import reference
from tests.builders import at, consent_row, write_consent_db
from tests.test_consent import SUBJECTS, consent_rows, instants

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 2)
AS_OF = parse_timestamp("2026-11-20T00:00:00Z", "as_of")
Rows = Sequence[tuple[Any, ...]]


def _create_text_table(url: str) -> None:
    """consent_events as the consent system may deliver it: all text, no key (duplicates possible)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE IF EXISTS consent_events"))
            connection.execute(sa.text(f"CREATE TABLE consent_events ({', '.join(c + ' TEXT' for c in COLUMNS)})"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def consent_store(request, tmp_path) -> Callable[[Rows], str]:
    """Writes rows into a fresh consent_events table of the backend; returns the store's URL."""
    if request.param == "sqlite":
        path = tmp_path / "consent.db"

        def write_sqlite(rows: Rows) -> str:
            path.unlink(missing_ok=True)
            return write_consent_db(path, rows)

        return write_sqlite
    url = request.getfixturevalue("postgres_database")

    def write_postgres(rows: Rows) -> str:
        _create_text_table(url)
        write_consent_events(url, rows)
        return url

    return write_postgres


def consented(snap, subject_type: str, subject_id: str, ct: str, t) -> bool:
    ok, _ = snap.consented([subject_key(subject_type, subject_id)], ct, np.array([to_ns(t)]))
    return bool(ok[0])


# --- the consent rules, read back from each backend ---------------------------------------------


def test_grants_revokes_and_ties_read_the_same_from_either_store(consent_store):
    url = consent_store(
        [
            consent_row("e1", "u_1", effective=at(-60)),
            consent_row("e2", "u_1", "revoke", effective=at(30)),  # a later revoke removes earlier content
            consent_row("e3", "u_2", effective=at(-60)),
            consent_row("e4", "u_2", "revoke", effective=at(-60)),  # same instant: revoke wins
            consent_row("e5", "u_3", effective=at(10)),  # a later grant never reaches back
            consent_row("e6", "acct_1", content_type="chat", effective=at(-60)),
            consent_row("e7", "u_4", effective=at(-60), purpose="marketing"),
        ]
    )
    snap = take_snapshot(url, at(24 * 60))
    assert snap.visible_events == 6  # other purposes are not ai_training consent
    assert not consented(snap, "user", "u_1", "chat", at(0))
    assert not consented(snap, "user", "u_2", "chat", at(0))
    assert not consented(snap, "user", "u_3", "chat", at(0)) and consented(snap, "user", "u_3", "chat", at(20))
    assert consented(snap, "account", "acct_1", "chat", at(0))
    assert not consented(snap, "account", "acct_1", "summary", at(0))
    assert not consented(snap, "user", "u_4", "chat", at(0))


def test_unreadable_rows_fail_their_subject_closed_in_either_store(consent_store):
    url = consent_store(
        [
            consent_row("e1", "u_1", effective=at(-60)),
            consent_row("e2", "u_1", effective="2026-11-01T10:00:00"),  # no offset
            consent_row("e3", "u_2", effective=at(-60)),
            consent_row("e4", "u_3", effective=at(-60)),
            consent_row("e4", "u_5", effective=at(-60)),  # duplicate event_id: both fail closed
            consent_row("e5", "u_6", "maybe", recorded=at(48 * 60)),  # unreadable but invisible
        ]
    )
    snap = take_snapshot(url, at(24 * 60))
    assert not consented(snap, "user", "u_1", "chat", at(0))
    assert consented(snap, "user", "u_2", "chat", at(0))
    assert not consented(snap, "user", "u_3", "chat", at(0)) and not consented(snap, "user", "u_5", "chat", at(0))
    assert sorted(r.event_id for r in snap.unreadable) == ["e2", "e4", "e4"]  # both claimants listed
    assert all("u_" not in r.error for r in snap.unreadable)


def test_a_row_whose_subject_cannot_be_read_fails_the_run_in_either_store(consent_store):
    url = consent_store([consent_row("e1", "u_1"), consent_row("e2", "u_2", subject_type="team", decision="maybe")])
    with pytest.raises(ConsentStoreError, match="subject cannot be read") as raised:
        take_snapshot(url, at(24 * 60))
    assert "u_2" not in str(raised.value)


def test_an_unreachable_store_fails_without_echoing_its_url(postgres_server):
    url = sa.make_url(postgres_server).set(database="consent_gate_no_such_database").render_as_string(False)
    with pytest.raises(ConsentStoreError, match="cannot read consent_events") as raised:
        take_snapshot(url, at(0))
    assert "127.0.0.1" not in str(raised.value)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=consent_rows(), as_of=instants, capture=instants, ct=st.sampled_from(["chat", "transcript"]))
def test_either_store_answers_exactly_the_literal_rule(consent_store, rows, as_of, capture, ct):
    url = consent_store(rows)  # the table is recreated for every example
    snap = take_snapshot(url, as_of)
    for subject_type, subject_id in SUBJECTS:
        expected = reference.consented(rows, as_of, subject_type, subject_id, ct, capture)
        assert consented(snap, subject_type, subject_id, ct, capture) == expected


@pytest.mark.parametrize(
    ("column_type", "shown"),
    [("TIMESTAMPTZ", "timestamp with time zone"), ("TIMESTAMP", "timestamp without time zone")],
)
def test_typed_timestamp_columns_are_refused(postgres_database, column_type, shown, sample_dir, tmp_path):
    """A timestamp column coerces offset-less input with the session time zone, so the gate could not see
    it was malformed (the issue: 1,038 rows published on PostgreSQL, 1,010 on SQLite): refused by name."""
    rows = [
        consent_row("e1", "u_1", effective=at(-60)),
        consent_row("e2", "u_1", effective="2026-11-01T10:00:00"),  # no offset: unreadable as text
    ]
    engine = sa.create_engine(postgres_database)
    typed = ", ".join(f"{c} {column_type if c.endswith('_at') else 'TEXT'}" for c in COLUMNS)
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE consent_events ({typed})"))
        connection.execute(
            sa.text(f"INSERT INTO consent_events VALUES ({', '.join(':' + c for c in COLUMNS)})"),
            [dict(zip(COLUMNS, row, strict=True)) for row in rows],
        )
    engine.dispose()
    with pytest.raises(ConsentStoreError, match=f"consent_events.effective_at is {shown}, not text"):
        take_snapshot(postgres_database, at(24 * 60))
    with pytest.raises(ConsentStoreError, match="not text"):
        run_day(_settings(sample_dir, tmp_path / "out", postgres_database), DAY, AS_OF, clock=utc_now)
    assert not (tmp_path / "out" / "content").exists()


def test_offset_less_input_in_text_columns_fails_closed_on_both_stores(consent_store):
    offset_less = consent_row("e2", "u_1", effective="2026-11-01T10:00:00")
    url = consent_store([consent_row("e1", "u_1", effective=at(-60)), offset_less])
    snap = take_snapshot(url, at(24 * 60))
    assert [r.event_id for r in snap.unreadable] == ["e2"] and not consented(snap, "user", "u_1", "chat", at(0))


# --- the gate on the sample day: the same published rows with either store -----------------------


def _sample_rows(sample: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(sample / "consent.db") as connection:
        return connection.execute(f"SELECT {', '.join(COLUMNS)} FROM consent_events").fetchall()


def _settings(sample: Path, out: Path, consent_db: str) -> RunSettings:
    return RunSettings(
        raw=str(sample / "raw"), out=str(out), consent_db=consent_db, policy=Policy(),
        secret=(sample / "hmac.key").read_bytes(),
    )  # fmt: skip


def _published(out: Path) -> dict[str, Any]:
    audit = out / f"_audit/dt={DAY}"
    return {
        "content": ds.dataset(out / f"content/dt={DAY}", format="parquet").to_table().sort_by("artifact_id"),
        "excluded": pq.read_table(audit / "excluded.parquet").sort_by("artifact_id"),
        "manifest": json.loads((audit / "manifest.json").read_text()),
    }


def test_the_gate_publishes_the_same_rows_with_postgresql_as_with_sqlite(sample_dir, postgres_database, tmp_path):
    _create_text_table(postgres_database)
    assert write_consent_events(postgres_database, _sample_rows(sample_dir)) > 0
    sqlite = f"sqlite:///{sample_dir / 'consent.db'}"
    run_day(_settings(sample_dir, tmp_path / "sqlite", sqlite), DAY, AS_OF, clock=utc_now)
    run_day(_settings(sample_dir, tmp_path / "pg", postgres_database), DAY, AS_OF, clock=utc_now)
    sqlite_run, pg_run = _published(tmp_path / "sqlite"), _published(tmp_path / "pg")
    assert pg_run["content"].num_rows > 0
    assert pg_run["content"].equals(sqlite_run["content"])
    assert pg_run["excluded"].equals(sqlite_run["excluded"])
    assert pg_run["manifest"]["consent"] == sqlite_run["manifest"]["consent"]  # same checksum, same evidence
    assert pg_run["manifest"]["counts"] == sqlite_run["manifest"]["counts"]


def test_the_consent_db_connection_reaches_postgresql(sample_dir, postgres_database, monkeypatch):
    """The Airflow connection `consent_db` with conn_type postgres is how a deployment names the store."""
    from consent_gate.runs import settings_from_airflow

    _create_text_table(postgres_database)
    write_consent_events(postgres_database, _sample_rows(sample_dir))
    url = sa.make_url(postgres_database)
    conn = {"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username, "schema": url.database}
    monkeypatch.setenv("AIRFLOW_CONN_CONSENT_DB", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_VAR_CONSENT_GATE_HMAC_KEY", (sample_dir / "hmac.key").read_text())
    resolved = settings_from_airflow().consent_db
    assert resolved.startswith("postgresql+psycopg2://") and url.database in resolved
    via_connection = take_snapshot(resolved, AS_OF)
    direct = take_snapshot(f"sqlite:///{sample_dir / 'consent.db'}", AS_OF)
    assert via_connection.checksum == direct.checksum and via_connection.visible_events == direct.visible_events


def test_a_rerun_from_the_consent_ledger_gives_the_whole_stores_evidence_on_postgresql(
    sample_dir, postgres_database, tmp_path
):
    _create_text_table(postgres_database)
    write_consent_events(postgres_database, _sample_rows(sample_dir))
    create_consent_indexes(postgres_database)
    settings = _settings(sample_dir, tmp_path, postgres_database)
    first = run_day(settings, DAY, AS_OF, run_id="first", clock=utc_now).manifest
    published = _published(tmp_path)["content"]
    second = run_day(settings, DAY, AS_OF, run_id="second", clock=utc_now).manifest
    assert (first["consent"]["basis"]["scope"], second["consent"]["basis"]["scope"]) == ("whole store", "ledger")
    for field in ("checksum", "visible_events", "failed_closed_subjects", "unreadable_rows"):
        assert second["consent"][field] == first["consent"][field]
    assert _published(tmp_path)["content"].equals(published)
