"""Withdrawal reaches published data (SPEC §7): the sweep purges storage, and nothing resurrects."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from consent_gate.cli import main
from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.consent import COLUMNS, subject_key
from consent_gate.gate import CONTENT_SCHEMA
from consent_gate.keyed_consent import keyed_consent, withdrawal_reasons
from consent_gate.keys import Keyer
from consent_gate.pipeline import RunOutcome, run_day
from consent_gate.records import parse_timestamp
from consent_gate.stores import storage_for
from consent_gate.sweep import SweepOutcome, sweep
from tests.builders import at, consent_row, sample_identities, sample_secrets

pytestmark = pytest.mark.integration

DAYS = [date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)]
AS_OF = parse_timestamp("2026-11-20T00:00:00Z", "as_of")
REVOKED_AT = parse_timestamp("2026-11-26T10:00:00Z", "recorded_at")  # before the wall clock of any test run
SWEEP_AS_OF = REVOKED_AT + timedelta(minutes=30)
PURGED_AT = REVOKED_AT + timedelta(minutes=42)  # the sweep's injected clock


def fixed_clock(instant: datetime = PURGED_AT):
    return lambda: instant


def settings_for(sample: Path, consent_db: Path, out: Path) -> RunSettings:
    return RunSettings(
        raw=str(sample / "raw"), out=str(out), consent_db=f"sqlite:///{consent_db}",
        policy=Policy(), secret=(sample / "hmac.key").read_bytes(),
    )  # fmt: skip


def append_consent(db: Path, rows: list[tuple[Any, ...]]) -> None:
    with sqlite3.connect(db) as connection:
        connection.executemany(f"INSERT INTO consent_events VALUES ({', '.join('?' * len(COLUMNS))})", rows)


def revocation(event_id: str, subject_type: str, subject_id: str, recorded: datetime) -> tuple[Any, ...]:
    stamp = recorded.isoformat().replace("+00:00", "Z")
    return (event_id, subject_type, subject_id, "ai_training", "*", "revoke", stamp, stamp, "2026-01")


def walk_parquet(out: Path) -> dict[str, pa.Table]:
    """Every Parquet file under the output root, found by walking storage (not a dataset listing)."""
    tables = {}
    for folder, _, names in os.walk(out):
        for name in names:
            if name.endswith(".parquet"):
                path = Path(folder) / name
                tables[str(path.relative_to(out))] = pq.read_table(path)
    return tables


def file_digests(out: Path, *prefixes: str) -> dict[str, str]:
    digests = {}
    for folder, _, names in os.walk(out):
        for name in names:
            relative = str((Path(folder) / name).relative_to(out))
            if relative.startswith(prefixes):
                digests[relative] = hashlib.sha256((Path(folder) / name).read_bytes()).hexdigest()
    return digests


def content_rows(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Published content rows by day, sorted by artifact_id, read file by file from storage."""
    by_day: dict[str, list[dict[str, Any]]] = {}
    for relative, table in walk_parquet(out).items():
        if relative.startswith("content/"):
            by_day.setdefault(relative.split("/")[1], []).extend(table.to_pylist())
    return {d: sorted(rows, key=lambda r: r["artifact_id"]) for d, rows in by_day.items()}


def holds(row: dict[str, Any], user_key: str, account_key: str) -> bool:
    return user_key in (row["user_keys"] or []) or account_key in (row["account_keys"] or [])


@dataclass
class World:
    out: Path
    consent_db: Path
    settings: RunSettings
    user_id: str
    account_id: str
    user_key: str
    account_key: str
    before: dict[str, list[dict[str, Any]]]
    first: SweepOutcome
    after_first: dict[str, str]
    second: SweepOutcome
    full: SweepOutcome
    after_second: dict[str, str]
    rerun: RunOutcome
    rerun_day: date
    secrets: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def world(sample_dir, tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("sweep")
    consent_db = root / "consent.db"
    shutil.copyfile(sample_dir / "consent.db", consent_db)  # revocations go to a copy only
    out = root / "out"
    settings = settings_for(sample_dir, consent_db, out)
    for day in DAYS:
        run_day(settings, day, AS_OF, run_id=f"publish-{day}", clock=utc_now)
    before = content_rows(out)
    assert sorted(before) == [f"dt={d}" for d in DAYS]

    keyer = Keyer(settings.secret)
    users, accounts = sample_identities(sample_dir)
    secrets = sample_secrets(sample_dir)
    rows = [r for day_rows in before.values() for r in day_rows]
    user_days: Counter[str] = Counter()
    for day_rows in before.values():
        user_days.update({k for r in day_rows for k in r["user_keys"]})
    account_rows = Counter(k for r in rows for k in r["account_keys"])
    # The user published on the most days, and a published account other than the user's own.
    user_id = max((u for u in users if keyer.user(u) in user_days), key=lambda u: (user_days[keyer.user(u)], u))
    account_id = max(
        (a for a in accounts if keyer.account(a) in account_rows and a != users[user_id]),
        key=lambda a: (account_rows[keyer.account(a)], a),
    )
    append_consent(
        consent_db,
        [
            revocation("zz_sweep_test_user", "user", user_id, REVOKED_AT),
            revocation("zz_sweep_test_account", "account", account_id, REVOKED_AT),
        ],
    )
    store = settings.store()
    first = sweep(store, settings.consent_db, settings.secret, SWEEP_AS_OF, clock=fixed_clock())
    after_first = file_digests(out, "content/", "_audit/dt=")
    later = SWEEP_AS_OF + timedelta(hours=1)
    second = sweep(store, settings.consent_db, settings.secret, later, clock=fixed_clock(later))
    full = sweep(store, settings.consent_db, settings.secret, later, full=True, clock=fixed_clock(later))
    after_second = file_digests(out, "content/", "_audit/dt=")
    # A rerun of an old day, pinned to the as_of it was first published with (before the revocations).
    rerun_day = next(d for d in DAYS if any(holds(r, keyer.user(user_id), keyer.account(account_id))
                                            for r in before[f"dt={d}"]))  # fmt: skip
    rerun = run_day(settings, rerun_day, AS_OF, run_id="rerun-pinned", clock=utc_now)
    return World(
        out, consent_db, settings, user_id, account_id, keyer.user(user_id), keyer.account(account_id),
        before, first, after_first, second, full, after_second, rerun, rerun_day, secrets,
    )  # fmt: skip


def test_revoked_subjects_had_published_rows_on_several_days(world):
    days = [d for d, rows in world.before.items() if any(holds(r, world.user_key, world.account_key) for r in rows)]
    assert len(days) >= 2
    assert any(world.user_key in r["user_keys"] for rows in world.before.values() for r in rows)
    assert any(world.account_key in r["account_keys"] for rows in world.before.values() for r in rows)


def test_no_parquet_file_in_storage_holds_a_revoked_subjects_row(world):
    tables = walk_parquet(world.out)
    content_files = [p for p, t in tables.items() if "user_keys" in t.column_names]
    assert content_files and all(p.startswith("content/") for p in content_files)  # nothing left in _staging
    for path in content_files:
        for row in tables[path].to_pylist():
            assert not holds(row, world.user_key, world.account_key), path
    for path, table in tables.items():
        blob = json.dumps(table.to_pylist(), default=str)
        assert world.user_key not in blob and world.account_key not in blob, path


def test_every_other_row_is_unchanged(world):
    after = content_rows(world.out)
    for day, rows in world.before.items():
        if day == f"dt={world.rerun_day}":
            continue  # republished by the rerun: checked in its own test
        expected = [r for r in rows if not holds(r, world.user_key, world.account_key)]
        assert after[day] == expected, day
        assert len(expected) > 0


def test_the_first_sweep_removed_exactly_the_revoked_rows_and_said_why(world):
    removed = {
        day: sum(holds(r, world.user_key, world.account_key) for r in rows) for day, rows in world.before.items()
    }
    purges = {f"dt={p['partition']}": p for p in world.first.purges}
    assert {d: p["rows_removed"] for d, p in purges.items()} == {d: n for d, n in removed.items() if n}
    for day, purge in purges.items():
        assert sum(purge["removed_by_reason"].values()) == purge["rows_removed"]
        account_rows = sum(world.account_key in r["account_keys"] for r in world.before[day])
        assert purge["removed_by_reason"].get("account_not_consented", 0) >= account_rows
        assert set(purge["removed_by_reason"]) <= {"account_not_consented", "user_not_consented"}


def test_each_days_evidence_is_a_new_version_matching_storage(world):
    for purge in world.first.purges:
        day = purge["partition"]
        if day == world.rerun_day.isoformat():
            continue
        audit = world.out / f"_audit/dt={day}"
        manifest = json.loads((audit / "manifest.json").read_text())
        assert [s["sweep_id"] for s in manifest["sweeps"]] == [world.first.sweep_id]
        for output in manifest["outputs"]:
            data = (world.out / output["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == output["sha256"], output["path"]
        on_disk = {str(p.relative_to(world.out)) for p in (world.out / f"content/dt={day}").glob("*.parquet")}
        assert on_disk == {o["path"] for o in manifest["outputs"] if o["path"].startswith("content/")}
        content = manifest["counts"]["content"]
        published = sum(pq.read_table(world.out / p).num_rows for p in on_disk)
        excluded = pq.read_table(audit / "excluded.parquet")
        quarantined = [u for u in pq.read_table(audit / "quarantine.parquet").column("unit").to_pylist()
                       if u.startswith("meetings/")]  # fmt: skip
        assert content["published"] == published
        assert published + excluded.num_rows + len(quarantined) == content["units_in"]
        assert sum(content["excluded"].values()) == excluded.num_rows
        versions = [json.loads(p.read_text()) for p in (audit / "attempts").glob("*.json")]
        assert {v.get("version") for v in versions} == {None, world.first.sweep_id}  # the superseded one kept


def test_purge_records_are_present_and_content_free(world):
    log = json.loads((world.out / world.first.log_path).read_text())
    assert log["rows_removed"] == world.first.rows_removed > 0 and log["mode"] == "full"
    texts = {
        r["text"]
        for rows in world.before.values()
        for r in rows
        if holds(r, world.user_key, world.account_key) and r["text"] and len(r["text"]) >= 6
    }  # a short text ("+1") can occur in any JSON, e.g. the code version "0.1.0+1a2b…"
    forbidden = texts | world.secrets | {world.user_key, world.account_key}
    records = [world.out / world.first.log_path] + [world.out / f"_audit/dt={p['partition']}/manifest.json"
                                                    for p in world.first.purges]  # fmt: skip
    for path in records:
        blob = path.read_text()
        assert [s for s in forbidden if s in blob] == [], path
    assert "artifact_id" not in (world.out / world.first.log_path).read_text()


def test_revocation_to_purge_latency_is_recorded(world):
    entries = [(p, r) for p in world.first.purges for r in p["revocations"]]
    assert {r["subject_type"] for _, r in entries} == {"user", "account"}
    for purge, entry in entries:
        assert parse_timestamp(entry["recorded_at"], "recorded_at") == REVOKED_AT
        assert parse_timestamp(purge["purged_at"], "purged_at") == PURGED_AT
        assert entry["latency_seconds"] == (PURGED_AT - REVOKED_AT).total_seconds() == 42 * 60
        assert entry["rows"] > 0
        assert purge["max_latency_seconds"] == 42 * 60
    # Hourly sweeps: a revocation recorded after one sweep's as_of is in force at the next one's,
    # so its latency is at most the hour between the two plus the later sweep's own duration.
    assert REVOKED_AT <= SWEEP_AS_OF <= PURGED_AT


def test_a_second_sweep_changes_nothing(world):
    assert world.second.mode == "incremental" and world.second.purges == []
    assert world.full.mode == "full" and world.full.purges == []
    assert world.after_second == world.after_first
    watermark = json.loads((world.out / "_audit/sweeps/watermark.json").read_text())
    assert parse_timestamp(watermark["as_of"], "as_of") == SWEEP_AS_OF + timedelta(hours=1)


def test_a_rerun_pinned_to_an_old_as_of_does_not_bring_the_rows_back(world):
    manifest = world.rerun.manifest
    assert parse_timestamp(manifest["as_of"], "as_of") == AS_OF  # the pin is kept as evidence
    withheld = manifest["withdrawn_since_as_of"]
    before = world.before[f"dt={world.rerun_day}"]
    revoked = [r for r in before if holds(r, world.user_key, world.account_key)]
    assert withheld["rows"] == len(revoked) > 0
    after = content_rows(world.out)[f"dt={world.rerun_day}"]
    assert after == [r for r in before if not holds(r, world.user_key, world.account_key)]
    assert manifest["counts"]["content"]["published"] == len(after)
    assert all(c["passed"] for c in manifest["checks"])
    excluded = pq.read_table(world.out / f"_audit/dt={world.rerun_day}/excluded.parquet")
    assert {r["artifact_id"] for r in revoked} <= set(excluded.column("artifact_id").to_pylist())
    withdrawn = pq.read_table(world.out / f"_audit/dt={world.rerun_day}/withdrawn.parquet").to_pylist()
    assert sorted(w["artifact_id"] for w in withdrawn) == sorted(r["artifact_id"] for r in revoked)
    assert {w["withdrawn_by"] for w in withdrawn} == {f"publication of attempt {manifest['attempt']}"}
    assert {w["consent_as_of"] for w in withdrawn} == {parse_timestamp(withheld["as_of"], "as_of")}


def test_the_evidence_names_each_withdrawn_row_and_explain_says_who_took_it_out(world, capsys):
    day = next(p["partition"] for p in world.first.purges if p["partition"] != world.rerun_day.isoformat())
    withdrawn = pq.read_table(world.out / f"_audit/dt={day}/withdrawn.parquet").to_pylist()
    revoked = [r for r in world.before[f"dt={day}"] if holds(r, world.user_key, world.account_key)]
    assert sorted(w["artifact_id"] for w in withdrawn) == sorted(r["artifact_id"] for r in revoked)
    assert {w["withdrawn_by"] for w in withdrawn} == {f"sweep {world.first.sweep_id}"}
    assert {w["consent_as_of"] for w in withdrawn} == {SWEEP_AS_OF}
    sample = Path(world.settings.raw).parent
    args = ["--raw", str(sample / "raw"), "--out", str(world.out), "--consent-db", world.settings.consent_db,
            "--key-file", str(sample / "hmac.key")]  # fmt: skip
    user_row = next(w for w in withdrawn if w["reason"] == "user_not_consented")
    assert main(["explain", "--date", day, "--artifact", user_row["artifact_id"], *args]) == 0
    text = capsys.readouterr().out
    assert "EXCLUDED" in text and "user_not_consented" in text and f"sweep {world.first.sweep_id}" in text
    assert f"consent as_of: {SWEEP_AS_OF.isoformat()}" in text
    assert f"required user {world.user_key[:16]}…: at capture grant, at as_of revoke" in text


@pytest.mark.parametrize(
    ("back_dated_by", "mode"),
    [(timedelta(minutes=30), "incremental"), (timedelta(days=10), "full")],
    ids=["inside-the-changed-range", "far-below-the-watermark"],
)
def test_a_back_dated_revocation_below_the_watermark_is_purged(world, tmp_path, back_dated_by, mode):
    """Recorded before the watermark but inserted after it: a little below, the incremental sweep reads it
    (the changed range starts a day below); further below, the fingerprint sends the sweep full."""
    out, db = tmp_path / "out", tmp_path / "consent.db"
    shutil.copytree(world.out, out)
    shutil.copyfile(world.consent_db, db)
    keyer = Keyer(world.settings.secret)
    published = [r for rows in content_rows(out).values() for r in rows]
    users, _ = sample_identities(Path(world.settings.raw).parent)
    victim = next(u for u in sorted(users) if any(keyer.user(u) in r["user_keys"] for r in published))
    append_consent(db, [revocation("zz_back_dated", "user", victim, SWEEP_AS_OF - back_dated_by)])
    outcome = sweep(
        storage_for(str(out)), f"sqlite:///{db}", world.settings.secret, SWEEP_AS_OF + timedelta(hours=2), clock=utc_now
    )
    assert outcome.mode == mode and outcome.rows_removed > 0
    assert not any(keyer.user(victim) in r["user_keys"] for rows in content_rows(out).values() for r in rows)


def test_a_sweep_waits_for_the_day_lock_of_a_running_publication(world, tmp_path):
    out, db = tmp_path / "out", tmp_path / "consent.db"
    shutil.copytree(world.out, out)
    shutil.copyfile(world.consent_db, db)
    (out / "_audit/sweeps/watermark.json").unlink()  # a full sweep
    day = next(d for d, rows in content_rows(out).items() if rows).removeprefix("dt=")
    keyer = Keyer(world.settings.secret)
    victim = content_rows(out)[f"dt={day}"][0]["account_keys"][0]
    account_id = next(a for a in sample_identities(Path(world.settings.raw).parent)[1] if keyer.account(a) == victim)
    append_consent(db, [revocation("zz_locked", "account", account_id, REVOKED_AT)])
    store = storage_for(str(out))
    before = file_digests(out, f"content/dt={day}/")
    result: list[SweepOutcome] = []
    with store.day_lock(day):
        worker = threading.Thread(
            target=lambda: result.append(
                sweep(store, f"sqlite:///{db}", world.settings.secret, SWEEP_AS_OF, clock=utc_now)
            )
        )
        worker.start()
        worker.join(timeout=3)
        assert worker.is_alive() and file_digests(out, f"content/dt={day}/") == before  # blocked, untouched
    worker.join(timeout=120)
    assert not worker.is_alive() and result[0].rows_removed > 0
    assert day in {p["partition"] for p in result[0].purges}


def test_the_cli_sweeps_and_reports(world, tmp_path, capsys):
    out, db = tmp_path / "out", tmp_path / "consent.db"
    shutil.copytree(world.out, out)
    shutil.copyfile(world.consent_db, db)
    args = [
        "--out",
        str(out),
        "--consent-db",
        f"sqlite:///{db}",
        "--key-file",
        str(Path(world.settings.raw).parent / "hmac.key"),
    ]
    assert main(["sweep", "--as-of", "2026-11-26T12:00:00Z", *args]) == 0
    printed = capsys.readouterr().out
    assert "(incremental)" in printed and "purge record:" in printed
    assert main(["sweep", "--full", *args]) == 0
    assert "(full)" in capsys.readouterr().out


# --- unit: re-evaluating keyed rows ------------------------------------------------------------


def _row(artifact_type: str, users: list[str], accounts: list[str], captured: datetime, as_of: datetime) -> dict:
    return {
        "artifact_id": f"m/{artifact_type}/1", "artifact_type": artifact_type, "meeting_key": "k",
        "user_keys": users, "account_keys": accounts, "captured_at": captured, "text": "words",
        "media_uri": None, "media_sha256": None, "terms_versions": ["2026-01"], "consent_as_of": as_of,
    }  # fmt: skip


@pytest.mark.unit
def test_withdrawal_reasons_apply_spec_3_to_keyed_rows():
    keyer = Keyer(b"k" * 32)
    rows = [
        consent_row("e1", "acct_a"), consent_row("e2", "u_1"), consent_row("e3", "u_2"),
        consent_row("e4", "acct_b"), consent_row("e5", "acct_b", "revoke", effective=at(120)),
        consent_row("e6", "u_2", "revoke", content_type="chat", effective=at(30)),
    ]  # fmt: skip
    consent = keyed_consent(sorted(rows), keyer, at(24 * 60), since=None)
    a, b, u1, u2 = keyer.account("acct_a"), keyer.account("acct_b"), keyer.user("u_1"), keyer.user("u_2")
    table = pa.Table.from_pylist(
        [
            _row("transcript_segment", [u1], [a], at(10), at(0)),  # still eligible
            _row("chat_message", [u2], [a], at(10), at(0)),  # chat revoked later: removes earlier content
            _row("transcript_segment", [u2], [a], at(10), at(0)),  # chat-only revoke: transcript stays
            _row("summary", [u1], [a, b], at(10), at(0)),  # account b revoked later
            _row("summary", [u1], [], at(10), at(0)),  # no account at all: fail closed
            _row("recording", ["unknown"], [a], at(10), at(0)),  # a subject with no consent at all
        ],
        schema=CONTENT_SCHEMA,
    )
    assert withdrawal_reasons(table, consent.snapshot) == [
        None, "user_not_consented", None, "account_not_consented", "account_not_consented", "user_not_consented",
    ]  # fmt: skip
    assert withdrawal_reasons(table.slice(0, 0), consent.snapshot) == []


@pytest.mark.unit
def test_keyed_consent_lists_what_came_into_force_since_the_watermark():
    keyer = Keyer(b"k" * 32)
    watermark, now = at(60), at(180)
    rows = [
        consent_row("e1", "u_old", "revoke", effective=at(0)),  # before the watermark: applied already
        consent_row("e2", "u_new", "revoke", effective=at(90)),  # recorded since: new
        consent_row("e3", "u_late", "revoke", effective=at(0), recorded=at(120)),  # back-dated effect, new record
        consent_row("e4", "u_future", "revoke", effective=at(240), recorded=at(100)),  # not in force yet
        consent_row("e5", "u_pending", "revoke", effective=at(150), recorded=at(30)),  # comes into force now
        consent_row("e6", "u_broken", "grant", effective="yesterday", recorded=at(100)),  # unreadable: fail closed
        consent_row("e7", "u_after", "revoke", effective=at(200)),  # recorded after as_of: invisible
        consent_row("e8", "u_grant", "grant", effective=at(90)),  # grants never remove anything
        consent_row("e9", "u_other", "revoke", effective=at(90), purpose="marketing"),
    ]  # fmt: skip
    consent = keyed_consent(sorted(rows), keyer, now, since=watermark)
    new = {r.subject for r in consent.revocations}
    assert new == {subject_key("user", keyer.user(u)) for u in ("u_new", "u_late", "u_pending")}
    assert consent.fail_closed == {subject_key("user", keyer.user("u_broken"))}
    assert {r.in_force_at for r in consent.revocations} == {at(90), at(120), at(150)}
    everything = keyed_consent(sorted(rows), keyer, now, since=None)
    assert len(everything.revocations) == 4  # every visible revoke in force by now (e1, e2, e3, e5)
    assert "u_new" not in repr(consent.snapshot._subjects.tolist())  # raw ids never reach the snapshot


@pytest.mark.unit
def test_latency_is_counted_from_recorded_at_to_the_purge():
    from consent_gate.keyed_consent import Revocation
    from consent_gate.sweep import _latencies

    revocation = Revocation("user\x1fk", "user", "*", at(0), at(5))
    (entry,) = _latencies({revocation: 3}, at(61))
    assert entry["latency_seconds"] == 61 * 60 and entry["rows"] == 3
    assert set(entry) == {"subject_type", "content_type", "recorded_at", "in_force_at", "rows", "latency_seconds"}


def test_now_is_after_the_revocations_used_here():
    assert datetime.now(UTC) > PURGED_AT  # the no-resurrection check reads consent as of the wall clock


def test_the_sweep_deletes_stages_of_runs_that_never_ended_and_keeps_their_evidence(sample_dir, tmp_path):
    from consent_gate.steps import gate_content, snapshot_consent

    settings = settings_for(sample_dir, sample_dir / "consent.db", tmp_path / "out")
    store = settings.store()
    abandoned = snapshot_consent(settings, DAYS[0], AS_OF, run_id="died", clock=utc_now)
    gate_content(settings, abandoned)  # staged content, then the process "died": nobody ended the attempt
    died = store.read_json(abandoned / "run.json")
    running = snapshot_consent(settings, DAYS[1], AS_OF, run_id="still-running", clock=utc_now)
    now = datetime.now(UTC)
    run = store.read_json(running / "run.json")
    store.write_json(running / "run.json", {**run, "started_at": (now + timedelta(hours=30)).isoformat()})
    (tmp_path / "out" / f"_staging/dt={DAYS[2]}/empty-attempt").mkdir(parents=True)  # killed before run.json
    assert any(p.name.endswith(".parquet") for p in (tmp_path / "out" / abandoned.root).rglob("*"))

    outcome = sweep(store, settings.consent_db, settings.secret, now, clock=fixed_clock(now + timedelta(hours=25)))
    assert outcome.abandoned_stages_deleted == 2
    staged = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out" / "_staging").rglob("*.json"))
    assert staged == [f"{running.root}/run.json"]  # the young stage is untouched
    evidence = json.loads((tmp_path / "out" / f"_audit/dt={DAYS[0]}/attempts/{abandoned.attempt}.json").read_text())
    assert evidence["status"] == "failed" and "abandoned" in evidence["failure"]
    assert evidence["attempt"] == abandoned.attempt and evidence["consent"] == died["consent"]
    log = json.loads((tmp_path / "out" / outcome.log_path).read_text())
    assert log["abandoned_stages_deleted"] == 2

    # Within the policy's age, nothing is deleted.
    again = sweep(store, settings.consent_db, settings.secret, now, clock=fixed_clock(now))
    assert again.abandoned_stages_deleted == 0 and (tmp_path / "out" / running.root / "run.json").exists()


def test_an_unreadable_published_part_fails_the_sweep_where_an_unfinished_stage_part_is_skipped(tmp_path):
    """A published file the sweep cannot read may hold rows of a subject who revoked: the sweep fails
    rather than passing over it. A stage part may still be being written by its run: it names no one."""
    from consent_gate.sweep import published_subjects

    store = storage_for(str(tmp_path))
    keyer = Keyer(b"s" * 32)
    good = pa.Table.from_pylist(
        [{"user_keys": [keyer.user("u_1")], "account_keys": [keyer.account("acct_1")]}],
        schema=pa.schema([("user_keys", pa.list_(pa.string())), ("account_keys", pa.list_(pa.string()))]),
    )
    pq.write_table(good, tmp_path / "good.parquet")
    (tmp_path / "torn.parquet").write_bytes(b"PAR1 not a parquet file")
    expected = {subject_key("user", keyer.user("u_1")), subject_key("account", keyer.account("acct_1"))}
    assert published_subjects(store, ["good.parquet"]) == expected
    with pytest.raises((OSError, pa.ArrowException)):
        published_subjects(store, ["good.parquet", "torn.parquet"])
    assert published_subjects(store, ["good.parquet", "torn.parquet"], skip_unreadable=True) == expected
