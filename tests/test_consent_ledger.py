"""The consent ledger (consent_ledger): a run that reads only the rows since the ledger's bound, the day's
subjects' rows and the rows sharing their event_ids gives what a whole-store read gives: the same
checksum, counts and unreadable rows, the same consent for the day's subjects; and it never trusts a
ledger the store no longer matches, another store's, a stale one, or one its secret did not write."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from consent_gate.consent import CONTENT_TYPES, ConsentStoreError, subject_key, to_ns
from consent_gate.consent_ledger import (
    RENEW_AT,
    Ledger,
    ledger_from_json,
    ledger_json,
    renewal_due,
    run_consent,
    store_identity,
    whole_store_ledger,
)
from consent_gate.consent_store import create_consent_indexes, observe_reads
from consent_gate.consent_vector import pseudonym, pseudonym_pepper, read_snapshot_events, snapshot_from_events
from tests.builders import consent_row, ts, write_consent_db

pytestmark = pytest.mark.unit

SECRET = b"ledger-test-secret"
DAY0 = datetime(2026, 11, 10, 10, 0, tzinfo=UTC)
SUBJECTS = [("user", "u_1"), ("user", "u_2"), ("account", "acct_1"), ("user", "u_3"), ("account", "acct_2")]
BAD_RECORDED = ["2026-11-02T10:00:00", "9999-12-31T23:59:59Z", "1899-12-31T23:59:59Z", "2026-11-02 10:00:00Z", "", None]
FULL_EVERY = timedelta(days=7)


def _hours(draw: Any, low: int, high: int) -> datetime:
    return DAY0 + timedelta(hours=draw(st.integers(low, high)))


@st.composite
def consent_rows(draw: Any, prefix: str, ids: int, recorded_from: int, recorded_to: int) -> list[tuple[Any, ...]]:
    """Rows recorded between `recorded_from` and `recorded_to` hours after DAY0; some share event_ids
    (with each other, or with the `ids` of an earlier batch), some are unreadable."""
    rows = []
    for n in range(draw(st.integers(0, 10))):
        subject_type, subject_id = draw(st.sampled_from(SUBJECTS))
        recorded = _hours(draw, recorded_from, recorded_to)
        if draw(st.integers(0, 6)):
            event_id = f"{prefix}{n:02d}"
        else:  # a duplicate: of this batch or of an earlier one
            event_id = f"e{draw(st.integers(0, max(ids - 1, 0))):02d}" if ids else f"{prefix}00"
        row = consent_row(
            event_id,
            subject_id,
            draw(st.sampled_from(["grant", "grant", "revoke"])),
            subject_type=subject_type,
            content_type=draw(st.sampled_from(["*", "*", "chat", "transcript"])),
            effective=recorded - timedelta(hours=draw(st.sampled_from([0, 2, 30]))),
            recorded=recorded,
            purpose=draw(st.sampled_from(["ai_training"] * 6 + ["marketing", None])),
        )
        mutation = draw(st.integers(0, 30))
        if mutation == 0:
            row = (*row[:5], "maybe", *row[6:])
        elif mutation == 1:
            row = (*row[:7], draw(st.sampled_from(BAD_RECORDED)), row[8])
        elif mutation == 2:
            row = (*row[:4], draw(st.sampled_from(["", "video", None])), *row[5:])
        elif mutation == 3:
            row = (draw(st.sampled_from(["", None])), *row[1:])
        elif mutation == 4:
            row = (*row[:2], "", *row[3:])  # a subject that cannot be read: the run fails
        elif mutation == 5:
            row = (*row[:7], ts(recorded.astimezone(UTC)).replace("Z", "+05:30"), row[8])  # local text, shifted
        rows.append(row)
    return rows


def _judge(
    url: str, as_of: datetime, subjects: set[str], ledger: Ledger | None, folder: str, now: datetime | None = None
) -> Any:
    files = {"events": f"{folder}/events.parquet", "subjects": f"{folder}/subjects.parquet"}
    try:
        result = run_consent(
            url, SECRET, as_of, subjects, ledger, files, now=now or as_of + timedelta(hours=1), full_every=FULL_EVERY
        )
    except ConsentStoreError:
        return None
    pepper = pseudonym_pepper(SECRET)
    names = {pseudonym(pepper, key): key for key in subjects}
    snapshot = snapshot_from_events(read_snapshot_events(files["events"], names), result.summary, names)
    return result, snapshot


def _unreadable(summary: Any) -> list[tuple[Any, ...]]:
    """The unreadable rows; of a duplicated event_id, which row reports its own field error first follows
    the order the rows were read in, so those compare by id and subject type only."""
    ids = Counter(u.event_id for u in summary.unreadable)
    return sorted((u.event_id, u.subject_type, u.error if ids[u.event_id] == 1 else "dup") for u in summary.unreadable)


def _assert_same(ledgered: Any, whole: Any, subjects: set[str]) -> None:
    assert (ledgered is None) == (whole is None)  # a row whose subject cannot be read fails both
    if whole is None:
        return
    (result, snapshot), (reference, expected) = ledgered, whole
    assert result.summary.checksum == reference.summary.checksum
    assert result.summary.visible_events == reference.summary.visible_events
    assert result.summary.failed_closed_subjects == reference.summary.failed_closed_subjects
    assert _unreadable(result.summary) == _unreadable(reference.summary)
    moments = np.array([to_ns(DAY0 + timedelta(hours=h)) for h in range(-80, 100, 7)], dtype=np.int64)
    for ct in CONTENT_TYPES:
        for key in sorted(subjects):
            asked = [key] * len(moments)
            assert np.array_equal(snapshot.consented(asked, ct, moments)[0], expected.consented(asked, ct, moments)[0])
            assert list(snapshot.states(asked, ct, moments)[1]) == list(expected.states(asked, ct, moments)[1])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    old=consent_rows("e", 0, -120, 30),
    new=st.data(),
    first=st.integers(0, 20),
    later=st.sampled_from([-30, 0, 5, 26, 60]),
    asked=st.sets(st.sampled_from(SUBJECTS), min_size=1),
)
def test_a_run_from_the_ledger_equals_a_whole_store_read(old, new, first, later, asked):
    """Rows recorded before and after the first run's as_of; rows appended after it (some sharing event
    ids with old rows, some recorded after the second as_of); the second run pinned earlier or later."""
    as_of1 = DAY0 + timedelta(hours=first)
    as_of2 = as_of1 + timedelta(hours=later)
    appended = new.draw(consent_rows("n", len(old), first - 12, first + 80))
    subjects = {subject_key(t, s) for t, s in asked}
    with tempfile.TemporaryDirectory() as folder:
        url = _store(_mkdirs(folder), old)
        first_run = _judge(url, as_of1, subjects, None, folder)
        if first_run is None:
            return  # an unreadable subject: no ledger is written (test_unreadable_subjects_... below)
        ledger = ledger_from_json(ledger_json(first_run[0].ledger, SECRET), SECRET)
        assert ledger is not None and ledger == first_run[0].ledger
        write_consent_db(f"{folder}/consent.db", appended)  # appended to the store's table
        whole = _judge(url, as_of2, subjects, None, folder + "/w")
        ledgered = _judge(url, as_of2, subjects, ledger, folder + "/l")
        _assert_same(ledgered, whole, subjects)
        if ledgered is None:
            return
        event(f"second run: {ledgered[0].basis['scope']}")
        event(f"unreadable rows: {min(len(ledgered[0].summary.unreadable), 2)}")
        if ledgered[0].basis["scope"] == "ledger" and ledgered[0].ledger is not None:  # rolled forward: once more
            rolled = ledgered[0].ledger
            later_as_of = as_of2 + timedelta(hours=30)
            rerun = _judge(url, later_as_of, subjects, rolled, folder + "/r")
            _assert_same(rerun, _judge(url, later_as_of, subjects, None, folder + "/x"), subjects)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    old=consent_rows("e", 0, -120, 30),
    new=st.data(),
    renewed_at=st.integers(0, 40),
    run_at=st.sampled_from([-30, -2, 0, 5]),
    asked=st.sets(st.sampled_from(SUBJECTS), min_size=1),
)
def test_a_run_from_a_renewed_ledger_equals_a_whole_store_read(old, new, renewed_at, run_at, asked):
    """A ledger renewed off the daily path (no day's subjects judged, at `now`), rows appended after it,
    and a run pinned before or after the renewal: its evidence and decisions are a whole-store read's."""
    renewal = DAY0 + timedelta(hours=renewed_at)
    as_of = renewal + timedelta(hours=run_at)
    appended = new.draw(consent_rows("n", len(old), renewed_at - 12, renewed_at + 60))
    subjects = {subject_key(t, s) for t, s in asked}
    with tempfile.TemporaryDirectory() as folder:
        url = _store(_mkdirs(folder), old)
        try:
            ledger, rows_read = whole_store_ledger(url, SECRET, renewal, now=renewal, folder=folder)
        except ConsentStoreError:
            return  # a row whose subject cannot be read: no ledger, and every run fails on it
        assert ledger is not None and rows_read == len(old)
        write_consent_db(f"{folder}/consent.db", appended)  # appended to the store's table
        now = max(renewal, as_of) + timedelta(hours=1)  # a run's clock is past the renewal's
        ledgered = _judge(url, as_of, subjects, ledger, folder + "/l", now)
        _assert_same(ledgered, _judge(url, as_of, subjects, None, folder + "/w", now), subjects)
        if ledgered is not None:
            basis = ledgered[0].basis
            event(f"run: {basis['scope']}")
            # Appended rows are recorded after its bound, but for those of an unreadable recorded_at.
            assert basis["scope"] == "ledger" or "inserted below" in basis["why"]


@pytest.mark.parametrize(
    ("age", "store", "due"),
    [
        (None, "this", "no consent ledger yet"),
        (timedelta(0), "other", "another consent store"),
        (timedelta(0), "this", None),
        (FULL_EVERY * RENEW_AT - timedelta(seconds=1), "this", None),
        (FULL_EVERY * RENEW_AT, "this", "75% of its life"),
        (FULL_EVERY, "this", "whole-store read is due"),
        (-timedelta(hours=1), "this", "whole-store read is due"),  # read in the future: a clock set wrong
    ],
)
def test_a_ledger_is_renewed_before_a_run_would_find_it_due(tmp_path, age, store, due):
    url = _store(str(tmp_path), OLD_ROWS)
    ledger, _ = whole_store_ledger(url, SECRET, DAY0, now=DAY0, folder=_mkdirs(str(tmp_path)))
    assert ledger is not None
    identity = store_identity(SECRET, url if store == "this" else url + "-other")
    why = renewal_due(None if age is None else ledger, identity, DAY0 + (age or timedelta(0)), FULL_EVERY)
    assert (why is None) == (due is None) and (due is None or due in why)
    run_would_read_the_whole_store = _basis(url, ledger, str(tmp_path), now=DAY0 + (age or timedelta(0)))
    if age is not None and store == "this" and why is None:
        assert run_would_read_the_whole_store["scope"] == "ledger"


def test_a_renewal_that_sees_the_store_change_below_its_bound_writes_no_ledger(tmp_path, monkeypatch):
    from consent_gate import consent_ledger

    url = _store(_mkdirs(str(tmp_path)), OLD_ROWS)
    counted = consent_ledger.count_recorded_before
    # The store counted before the read holds one row fewer than the read finds: one was back-dated meanwhile.
    monkeypatch.setattr(consent_ledger, "count_recorded_before", lambda url, bound: counted(url, bound) - 1)
    ledger, rows_read = whole_store_ledger(url, SECRET, DAY0, now=DAY0, folder=str(tmp_path))
    assert ledger is None and rows_read == len(OLD_ROWS)


def _mkdirs(folder: str) -> str:
    import os

    for name in ("w", "l", "r", "x"):
        os.makedirs(f"{folder}/{name}", exist_ok=True)
    return folder


# --- when the ledger is not trusted ---------------------------------------------------------------


def _store(folder: str, rows: list[tuple[Any, ...]]) -> str:
    url = write_consent_db(f"{folder}/consent.db", rows)
    create_consent_indexes(url)
    return url


OLD_ROWS = [
    consent_row(f"old{n}", f"u_{n % 7}", recorded=DAY0 - timedelta(days=3 + n % 5), effective=DAY0 - timedelta(days=9))
    for n in range(40)
]


def _basis(url: str, ledger: Ledger | None, folder: str, *, now: datetime | None = None) -> dict[str, Any]:
    files = {"events": f"{folder}/events.parquet", "subjects": f"{folder}/subjects.parquet"}
    result = run_consent(
        url, SECRET, DAY0, {subject_key("user", "u_1")}, ledger, files, now=now or DAY0, full_every=FULL_EVERY
    )
    return {**result.basis, "ledger": result.ledger}


def test_a_ledger_is_used_only_while_it_describes_the_store(tmp_path):
    url = _store(str(tmp_path), OLD_ROWS)
    ledger = _basis(url, None, str(tmp_path))["ledger"]
    assert _basis(url, ledger, str(tmp_path))["scope"] == "ledger"
    # back-dated: below the ledger's bound
    write_consent_db(tmp_path / "consent.db", [consent_row("late", "u_9", "revoke", recorded=DAY0 - timedelta(days=6))])
    basis = _basis(url, ledger, str(tmp_path))
    assert basis["scope"] == "whole store" and "inserted below" in basis["why"]
    assert basis["rows_read"] == len(OLD_ROWS) + 1


def test_a_ledger_of_another_store_an_old_one_or_a_tampered_one_is_not_used(tmp_path):
    url = _store(str(tmp_path), OLD_ROWS)
    ledger = _basis(url, None, str(tmp_path))["ledger"]
    other = Ledger(**{**ledger.__dict__, "store": "0" * 64})
    assert "another consent store" in _basis(url, other, str(tmp_path))["why"]
    stale = _basis(url, ledger, str(tmp_path), now=ledger.full_read_at + FULL_EVERY)
    assert "periodic whole-store read" in stale["why"]
    written = ledger_json(ledger, SECRET)
    assert ledger_from_json(written, SECRET) == ledger
    assert ledger_from_json(written, b"another secret") is None
    fewer = {**written, "days": {day: [0, 0, [0, 0, 0, 0]] for day in written["days"]}}  # rows hidden
    assert ledger_from_json(fewer, SECRET) is None
    assert ledger_from_json({**written, "version": 0}, SECRET) is None


def test_a_run_from_the_ledger_reads_the_days_subjects_and_what_is_new_not_the_store(tmp_path):
    url = _store(str(tmp_path), OLD_ROWS + [consent_row("new", "u_3", recorded=DAY0 - timedelta(hours=1))])
    ledger = _basis(url, None, str(tmp_path))["ledger"]
    with observe_reads() as reads:
        basis = _basis(url, ledger, str(tmp_path))
    assert basis["scope"] == "ledger"
    subject_rows = sum(1 for row in OLD_ROWS if row[2] == "u_1")
    assert dict(reads) == {
        "snapshot: rows from the ledger's bound on": 1,
        "snapshot: rows of the day's subjects": subject_rows,
        "snapshot: rows sharing their event_ids": subject_rows + 1,
    }


# --- the run itself -----------------------------------------------------------------------------

LATE = "m_1a7e000000000001"


def _late_meeting(day_folder: Path, target: Path) -> list[tuple[str, str]]:
    """A copy of one sample meeting with chat, under a new meeting id and new user and account ids
    (every file rewritten alike); returns its (subject_type, id) pairs."""
    source = next(f for f in sorted(day_folder.iterdir()) if (f / "chat.jsonl").exists())
    record = json.loads((source / "meeting.json").read_text())
    subjects = {("account", record["account_id"])}
    for person in record["participants"]:
        subjects |= {(kind, person[f"{kind}_id"]) for kind in ("user", "account") if person.get(f"{kind}_id")}
    target.mkdir()
    for file in source.iterdir():
        text = file.read_text().replace(record["meeting_id"], LATE)
        for _, raw_id in sorted(subjects, key=lambda s: -len(s[1])):
            text = text.replace(raw_id, raw_id + "late")
        (target / file.name).write_text(text)
    return [(kind, raw_id + "late") for kind, raw_id in sorted(subjects)]


@pytest.mark.integration
def test_a_meeting_arriving_after_a_ledger_snapshot_is_excluded_never_gated_on_no_rows(sample_dir, tmp_path):
    from consent_gate.config import Policy, RunSettings, utc_now
    from consent_gate.pipeline import run_day
    from consent_gate.records import parse_timestamp
    from consent_gate.steps import gate_content, snapshot_consent

    day, as_of = date(2026, 11, 2), parse_timestamp("2026-11-20T00:00:00Z", "as_of")
    shutil.copytree(sample_dir / "raw", tmp_path / "raw")
    shutil.copyfile(sample_dir / "consent.db", tmp_path / "consent.db")
    day_folder = tmp_path / "raw" / "meetings" / f"dt={day}"
    subjects = _late_meeting(day_folder, tmp_path / "late")
    write_consent_db(  # granted long before: any run may publish it
        tmp_path / "consent.db",
        [
            consent_row(f"late_{n}", raw_id, subject_type=kind, effective="2026-01-01T00:00:00Z",
                        recorded="2026-01-01T00:00:00Z")
            for n, (kind, raw_id) in enumerate(subjects)
        ],
    )  # fmt: skip

    def settings(out: str) -> RunSettings:
        return RunSettings(
            raw=str(tmp_path / "raw"), out=str(tmp_path / out), consent_db=f"sqlite:///{tmp_path / 'consent.db'}",
            policy=Policy(), secret=(sample_dir / "hmac.key").read_bytes(),
        )  # fmt: skip

    run_day(settings("out"), day, as_of, run_id="first", clock=utc_now)  # writes the consent ledger
    stage = snapshot_consent(settings("out"), day, as_of, run_id="second", clock=utc_now)
    staged = tmp_path / "out" / stage.root
    assert json.loads((staged / "run.json").read_text())["consent"]["basis"]["scope"] == "ledger"
    shutil.copytree(tmp_path / "late", day_folder / LATE)  # arrives between the snapshot and the gate
    gate_content(settings("out"), stage)
    gated = pq.read_table(next(staged.glob("content/*.parquet"))).column("artifact_id").to_pylist()
    excluded = pq.read_table(next(staged.glob("audit/excluded/*.parquet"))).to_pylist()
    assert not [a for a in gated if a.startswith(LATE)]
    late_reasons = {row["reason"] for row in excluded if row["artifact_id"].startswith(LATE)}
    assert "account_not_consented" in late_reasons

    run_day(settings("control"), day, as_of, run_id="control", clock=utc_now)  # there from the snapshot on
    published = ds.dataset(tmp_path / "control" / f"content/dt={day}", format="parquet").to_table()
    assert [a for a in published.column("artifact_id").to_pylist() if a.startswith(LATE)]


@pytest.mark.integration
def test_a_rerun_from_the_ledger_publishes_the_same_rows_and_evidence_without_reading_the_whole_store(
    sample_dir, tmp_path
):
    from consent_gate.config import Policy, RunSettings, utc_now
    from consent_gate.pipeline import run_day
    from consent_gate.records import parse_timestamp

    day, as_of = date(2026, 11, 2), parse_timestamp("2026-11-20T00:00:00Z", "as_of")
    settings = RunSettings(
        raw=str(sample_dir / "raw"), out=str(tmp_path), consent_db=f"sqlite:///{sample_dir / 'consent.db'}",
        policy=Policy(), secret=(sample_dir / "hmac.key").read_bytes(),
    )  # fmt: skip

    def content() -> list[tuple[Any, ...]]:
        table = ds.dataset(tmp_path / f"content/dt={day}", format="parquet").to_table().sort_by("artifact_id")
        return list(zip(*(table.column(c).to_pylist() for c in ("artifact_id", "user_keys", "text")), strict=True))

    first = run_day(settings, day, as_of, run_id="first", clock=utc_now).manifest
    published = content()
    with observe_reads() as reads:
        second = run_day(settings, day, as_of, run_id="second", clock=utc_now).manifest
    assert (first["consent"]["basis"]["scope"], second["consent"]["basis"]["scope"]) == ("whole store", "ledger")
    for field in ("checksum", "visible_events", "failed_closed_subjects", "unreadable_rows"):
        assert second["consent"][field] == first["consent"][field]
    assert content() == published
    judged, store_rows = second["consent"]["basis"]["rows_read"], first["consent"]["basis"]["rows_read"]
    assert 0 < judged < store_rows  # the sample's few subjects share most of its rows: at scale, a sliver
    # returned rows: a subject's rows come back once more from the look-up of the rows sharing their ids
    assert sum(n for purpose, n in reads if purpose.startswith("snapshot")) <= 2 * judged


@pytest.mark.integration
def test_a_ledger_that_cannot_be_written_never_fails_the_run(sample_dir, tmp_path):
    from consent_gate.config import Policy, RunSettings, utc_now
    from consent_gate.pipeline import run_day
    from consent_gate.records import parse_timestamp

    settings = RunSettings(
        raw=str(sample_dir / "raw"), out=str(tmp_path), consent_db=f"sqlite:///{sample_dir / 'consent.db'}",
        policy=Policy(), secret=(sample_dir / "hmac.key").read_bytes(),
    )  # fmt: skip
    (tmp_path / "_audit/consent/ledger.json").mkdir(parents=True)  # in the way: neither read nor written
    heard: list[str] = []
    day, as_of = date(2026, 11, 2), parse_timestamp("2026-11-20T00:00:00Z", "as_of")
    outcome = run_day(settings, day, as_of, run_id="first", progress=heard.append, clock=utc_now)
    assert outcome.published and outcome.manifest["consent"]["basis"]["scope"] == "whole store"
    assert any(m.startswith("consent ledger not written") for m in heard)
