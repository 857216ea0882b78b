"""Issue 14, the consent side: no future as_of anywhere, out-of-range consent instants fail their subject
closed, the sweep reaches unpublished stages, and a bad or missing consent store is one clear error."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from consent_gate.cli import main
from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.consent import COLUMNS, ConsentStoreError, FutureAsOf
from consent_gate.consent_vector import take_snapshot
from consent_gate.errors import SweepError
from consent_gate.keys import Keyer
from consent_gate.pipeline import run_day
from consent_gate.publication import publish_stage
from consent_gate.records import parse_timestamp
from consent_gate.runs import as_of_for_run
from consent_gate.steps import aggregate_day, gate_content, snapshot_consent
from consent_gate.sweep import sweep
from consent_gate.validation import validate_stage
from consent_gate.verify import VerificationError
from tests.builders import sample_identities

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 2)
AS_OF = parse_timestamp("2026-11-20T00:00:00Z", "as_of")
FUTURE = "2099-01-01T00:00:00Z"


def _copy_store(sample: Path, tmp_path: Path) -> Path:
    db = tmp_path / "consent.db"
    shutil.copyfile(sample / "consent.db", db)
    return db


def _settings(sample: Path, db: Path, out: Path) -> RunSettings:
    return RunSettings(
        raw=str(sample / "raw"), out=str(out), consent_db=f"sqlite:///{db}", policy=Policy(),
        secret=(sample / "hmac.key").read_bytes(),
    )  # fmt: skip


def _append(db: Path, rows: list[tuple[Any, ...]]) -> None:
    with sqlite3.connect(db) as connection:
        connection.executemany(f"INSERT INTO consent_events VALUES ({', '.join('?' * len(COLUMNS))})", rows)


def _stamp(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _published_keys(out: Path) -> list[dict[str, Any]]:
    return ds.dataset(out / f"content/dt={DAY}", format="parquet").to_table().to_pylist()


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    _cli.out = captured.out  # type: ignore[attr-defined]
    return code, captured.err


def _busiest_user(sample: Path, out: Path, keyer: Keyer) -> str:
    users, _ = sample_identities(sample)
    rows = _published_keys(out)
    counts = {u: sum(keyer.user(u) in r["user_keys"] for r in rows) for u in users}
    return max(counts, key=lambda u: (counts[u], u))


def _published(sample_dir: Path, tmp_path: Path) -> tuple[Path, Path, RunSettings, Keyer, str]:
    """A published day on a copy of the sample store, and the user with the most published rows."""
    db = _copy_store(sample_dir, tmp_path)
    out = tmp_path / "out"
    settings = _settings(sample_dir, db, out)
    keyer = Keyer(settings.secret)
    run_day(settings, DAY, AS_OF, clock=utc_now)
    return db, out, settings, keyer, _busiest_user(sample_dir, out, keyer)


# --- item 1: a future as_of is refused everywhere -----------------------------------------------


def test_a_future_as_of_is_refused_by_the_cli_and_creates_nothing(sample_dir, tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--raw", str(sample_dir / "raw"), "--out", str(out), "--key-file", str(sample_dir / "hmac.key")]
    db = f"sqlite:///{_copy_store(sample_dir, tmp_path)}"
    code, err = _cli(capsys, "run", "--date", str(DAY), "--as-of", FUTURE, "--consent-db", db, *common)
    assert code == 2 and "later than now" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, err = _cli(capsys, "sweep", "--as-of", FUTURE, "--consent-db", db, *common)
    assert code == 2 and "later than now" in err
    assert not out.exists()  # no stage, no evidence, no watermark


def test_a_future_as_of_is_refused_by_run_day_and_the_dag_param(sample_dir, tmp_path):
    settings = _settings(sample_dir, _copy_store(sample_dir, tmp_path), tmp_path / "out")
    with pytest.raises(FutureAsOf):
        run_day(settings, DAY, parse_timestamp(FUTURE, "as_of"), clock=utc_now)
    assert not (tmp_path / "out").exists()
    now = datetime.now(UTC)
    with pytest.raises(FutureAsOf, match="param 'as_of'"):
        as_of_for_run(FUTURE, now)
    assert as_of_for_run("2026-11-20T00:00:00Z", now) == AS_OF
    with pytest.raises(SweepError, match="later than now"):
        sweep(settings.store(), settings.consent_db, settings.secret, parse_timestamp(FUTURE, "as_of"), clock=utc_now)


def test_a_revoked_subject_with_a_future_dated_grant_is_never_published(sample_dir, tmp_path):
    """The issue's attack: revoke now, grant dated 2030. A stage pinned in the future (written by an
    older version) is refused at publication; the no-resurrection step compares against now only."""
    db, out, settings, keyer, user = _published(sample_dir, tmp_path)
    now = _stamp(datetime.now(UTC) - timedelta(seconds=1))
    _append(db, [
        ("zz_revoke_now", "user", user, "ai_training", "*", "revoke", now, now, "2026-01"),
        ("zz_grant_2030", "user", user, "ai_training", "*", "grant", "2030-01-01T00:00:00Z", now, "2026-01"),
    ])  # fmt: skip
    stage = snapshot_consent(settings, DAY, AS_OF, run_id="pinned", clock=utc_now)
    gate_content(settings, stage)
    aggregate_day(settings, stage)
    assert all(c.passed for c in validate_stage(settings, stage))
    run_json = out / stage.root / "run.json"
    run = json.loads(run_json.read_text())
    run["consent"]["as_of"] = FUTURE  # what an older version let through
    run_json.write_text(json.dumps(run))
    before = (out / f"_audit/dt={DAY}/manifest.json").read_bytes()
    with pytest.raises(SweepError, match="later than now"):
        publish_stage(settings, stage, clock=utc_now)
    assert (out / f"_audit/dt={DAY}/manifest.json").read_bytes() == before  # the previous version stands
    assert not (out / stage.root).exists()
    with pytest.raises(VerificationError, match="later than now"):
        _verify_future(settings)
    # A run as of now withholds every row of the revoked user, and the sweep agrees.
    run_day(settings, DAY, datetime.now(UTC), clock=utc_now)
    assert not any(keyer.user(user) in r["user_keys"] for r in _published_keys(out))


def _verify_future(settings: RunSettings) -> None:
    from consent_gate.verify import verify_files

    verify_files(settings.store(), [], settings.consent_db, parse_timestamp(FUTURE, "as_of"), Keyer(settings.secret))


def test_explain_refuses_to_evaluate_consent_at_a_future_as_of(sample_dir, tmp_path, capsys):
    out = tmp_path / "out"
    db = _copy_store(sample_dir, tmp_path)
    run_day(_settings(sample_dir, db, out), DAY, AS_OF, clock=utc_now)
    manifest_path = out / f"_audit/dt={DAY}/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["as_of"] = FUTURE  # evidence of a run an older version pinned in the future
    manifest_path.write_text(json.dumps(manifest))
    artifact = _published_keys(out)[0]["artifact_id"]
    code, _ = _cli(
        capsys, "explain", "--date", str(DAY), "--artifact", artifact, "--raw", str(sample_dir / "raw"),
        "--out", str(out), "--consent-db", f"sqlite:///{db}", "--key-file", str(sample_dir / "hmac.key"),
    )  # fmt: skip
    assert code == 0
    assert "later than now" in _cli.out and "at capture" not in _cli.out  # type: ignore[attr-defined]


# --- item 3: consent instants out of range ------------------------------------------------------


def test_an_out_of_range_consent_instant_fails_its_subject_closed_and_revocations_still_purge(
    sample_dir, tmp_path, capsys
):
    db = _copy_store(sample_dir, tmp_path)
    out = tmp_path / "out"
    settings = _settings(sample_dir, db, out)
    keyer = Keyer(settings.secret)
    run_day(settings, DAY, AS_OF, clock=utc_now)
    users, _ = sample_identities(sample_dir)
    rows = _published_keys(out)
    published_users = sorted(u for u in users if any(keyer.user(u) in r["user_keys"] for r in rows))
    far, revoked = published_users[0], published_users[-1]
    far_grant = (
        "zz_far",
        "user",
        far,
        "ai_training",
        "*",
        "grant",
        "9999-12-31T23:59:59Z",
        "2026-11-01T00:00:00Z",
        "v",
    )
    _append(db, [far_grant])
    outcome = run_day(settings, DAY, AS_OF, run_id="far", clock=utc_now)  # no OutOfBoundsDatetime
    unreadable = {r["event_id"]: r["error"] for r in outcome.manifest["consent"]["unreadable_rows"]}
    assert "1900-01-01..2200-01-01" in unreadable["zz_far"]
    after = _published_keys(out)
    assert not any(keyer.user(far) in r["user_keys"] for r in after)  # fail closed: no valid grant
    assert any(keyer.user(revoked) in r["user_keys"] for r in after)
    stamp = _stamp(datetime.now(UTC) - timedelta(seconds=1))
    _append(db, [("zz_revoke", "user", revoked, "ai_training", "*", "revoke", stamp, stamp, "v")])
    result = sweep(settings.store(), settings.consent_db, settings.secret, datetime.now(UTC), clock=utc_now)
    assert result.rows_removed > 0
    assert not any(keyer.user(revoked) in r["user_keys"] for r in _published_keys(out))
    artifact = after[0]["artifact_id"]
    code, _ = _cli(
        capsys, "explain", "--date", str(DAY), "--artifact", artifact, "--raw", str(sample_dir / "raw"),
        "--out", str(out), "--consent-db", f"sqlite:///{db}", "--key-file", str(sample_dir / "hmac.key"),
    )  # fmt: skip
    assert code == 0


# --- item 5: stages holding withdrawn rows are swept whatever their age ---------------------------


def test_the_sweep_deletes_a_young_stage_holding_a_withdrawn_subjects_rows(sample_dir, tmp_path):
    db, out, settings, keyer, user = _published(sample_dir, tmp_path)
    killed = snapshot_consent(settings, DAY, AS_OF, run_id="killed", clock=utc_now)  # a run killed after gating
    gate_content(settings, killed)
    other_day = date(2026, 11, 3)
    quiet = snapshot_consent(settings, other_day, AS_OF, run_id="quiet", clock=utc_now)  # holds nothing of that user
    assert (out / killed.root / "content/part-0000.parquet").exists()
    stamp = _stamp(datetime.now(UTC) - timedelta(seconds=1))
    _append(db, [("zz_revoke", "user", user, "ai_training", "*", "revoke", stamp, stamp, "v")])
    result = sweep(settings.store(), settings.consent_db, settings.secret, datetime.now(UTC), clock=utc_now)
    assert result.abandoned_stages_deleted == 1
    assert not (out / killed.root).exists()
    assert (out / quiet.root).exists()  # young, nothing withdrawn: its run ends it
    evidence = json.loads((out / f"_audit/dt={DAY}/attempts/{killed.attempt}.json").read_text())
    assert evidence["status"] == "failed" and "withdrawn" in evidence["failure"]
    for path in out.rglob("*.parquet"):
        table = ds.dataset(path, format="parquet").to_table()
        if "user_keys" in table.column_names:
            assert not any(keyer.user(user) in r["user_keys"] for r in table.to_pylist()), path


# --- a missing store, bad URLs, one-line errors -------------------------------------------------


def test_a_missing_sqlite_store_is_named_and_not_created(sample_dir, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "consent.db"
    missing.parent.mkdir()
    with pytest.raises(ConsentStoreError, match=str(missing)):
        take_snapshot(f"sqlite:///{missing}", AS_OF)
    code, err = _cli(
        capsys, "run", "--date", str(DAY), "--consent-db", f"sqlite:///{missing}", "--raw", str(sample_dir / "raw"),
        "--out", str(tmp_path / "out"), "--key-file", str(sample_dir / "hmac.key"),
    )  # fmt: skip
    assert code == 1 and str(missing) in err and "does not exist" in err and "Traceback" not in err
    assert not missing.exists() and list(missing.parent.iterdir()) == []


@pytest.mark.parametrize("url", ["notaurl", "/var/lib/consent.db", "mysql://user@db.example/consent"])
def test_a_bad_consent_db_url_is_one_line_error(sample_dir, tmp_path, capsys, url):
    for command in (["run", "--date", str(DAY)], ["sweep"], ["verify", "--date", str(DAY)]):
        out = tmp_path / "out"
        if command[0] == "verify":
            run_day(_settings(sample_dir, _copy_store(sample_dir, tmp_path), out), DAY, AS_OF, clock=utc_now)
        code, err = _cli(
            capsys, *command, "--consent-db", url, "--raw", str(sample_dir / "raw"), "--out", str(out),
            "--key-file", str(sample_dir / "hmac.key"),
        )  # fmt: skip
        assert code == 1, (command, err)
        lines = [line for line in err.strip().splitlines() if "sweeping" not in line and "gating" not in line]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "db.example" not in err  # the URL is never echoed (it may hold credentials)


def test_the_read_only_store_is_never_written(sample_dir, tmp_path):
    db = _copy_store(sample_dir, tmp_path)
    before = db.read_bytes()
    take_snapshot(f"sqlite:///{db}", AS_OF)
    assert db.read_bytes() == before and not db.with_name("consent.db-journal").exists()


def test_a_revocation_inserted_after_the_snapshot_but_recorded_before_the_pin_is_withheld(sample_dir, tmp_path):
    """Replication lag: a revocation recorded (at the source) before the stage's pinned as_of reaches the
    store after the stage was validated. The pinned snapshot and re-verification could not see it;
    publication must."""
    db, out, settings, keyer, user = _published(sample_dir, tmp_path)
    pin = datetime.now(UTC) - timedelta(minutes=5)
    stage = snapshot_consent(settings, DAY, pin, run_id="lagged", clock=utc_now)
    gate_content(settings, stage)
    aggregate_day(settings, stage)
    assert all(c.passed for c in validate_stage(settings, stage))  # re-verification reads the store: not yet there
    assert any(keyer.user(user) in r["user_keys"] for r in _staged_keys(out, stage.root))  # gated under the pin
    recorded = _stamp(pin - timedelta(minutes=30))  # before the pin: in force at the pin itself
    _append(db, [("zz_lagged_revoke", "user", user, "ai_training", "*", "revoke", recorded, recorded, "2026-01")])
    manifest = publish_stage(settings, stage, clock=utc_now)
    assert manifest["withdrawn_since_as_of"]["rows"] > 0
    assert not any(keyer.user(user) in r["user_keys"] for r in _published_keys(out))


def _staged_keys(out: Path, root: str) -> list[dict[str, Any]]:
    return ds.dataset(out / root / "content", format="parquet").to_table(columns=["user_keys"]).to_pylist()
