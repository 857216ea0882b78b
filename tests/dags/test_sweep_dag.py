"""The sweep DAG, run for real with dag.test(): it purges a revoked subject's published rows."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.consent_ledger import ledger_from_json
from consent_gate.keys import Keyer
from consent_gate.pipeline import run_day
from consent_gate.records import parse_timestamp
from tests.dags.test_consent_gate_daily import load_dag

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 2)
AS_OF = parse_timestamp("2026-11-20T00:00:00Z", "as_of")


@pytest.fixture
def published(monkeypatch, sample_dir, tmp_path):
    """One published day on a copy of the sample's consent store, and Airflow pointed at both."""
    db, out = tmp_path / "consent.db", tmp_path / "out"
    shutil.copyfile(sample_dir / "consent.db", db)
    settings = RunSettings(
        raw=str(sample_dir / "raw"), out=str(out), consent_db=f"sqlite:///{db}", policy=Policy(),
        secret=(sample_dir / "hmac.key").read_bytes(),
    )  # fmt: skip
    run_day(settings, DAY, AS_OF, run_id="publish", clock=utc_now)
    monkeypatch.setenv("AIRFLOW_CONN_CONSENT_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    monkeypatch.setenv("AIRFLOW_VAR_CONSENT_GATE_RAW_URI", str(sample_dir / "raw"))
    monkeypatch.setenv("AIRFLOW_VAR_CONSENT_GATE_OUT_URI", str(out))
    monkeypatch.setenv("AIRFLOW_VAR_CONSENT_GATE_HMAC_KEY", (sample_dir / "hmac.key").read_text())
    return settings, db, out


def content_rows(out):
    return [
        r for path in sorted((out / f"content/dt={DAY}").glob("*.parquet")) for r in pq.read_table(path).to_pylist()
    ]


def test_the_sweep_is_hourly_and_on_consent_updates(airflow_db):
    from airflow.sdk import AssetOrTimeSchedule

    dag = load_dag("consent_revocation_sweep")
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "0 * * * *" and str(dag.timetable.timetable.timezone) == "UTC"
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["consent_events"]
    assert dag.max_active_runs == 1


def test_dag_test_purges_a_revoked_account(airflow_db, published):
    settings, db, out = published
    before = content_rows(out)
    keyer = Keyer(settings.secret)
    accounts = set()
    for meeting in sorted((Path(settings.raw) / f"meetings/dt={DAY}").glob("*/meeting.json")):
        try:
            accounts.add(json.loads(meeting.read_text())["account_id"])
        except (json.JSONDecodeError, KeyError):
            continue
    account = next(a for a in sorted(accounts) if any(keyer.account(a) in r["account_keys"] for r in before))
    with sqlite3.connect(db) as connection:
        connection.execute(
            "INSERT INTO consent_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("zz_dag_revoke", "account", account, "ai_training", "*", "revoke",
             "2026-11-26T09:00:00Z", "2026-11-26T09:00:00Z", "2026-01"),
        )  # fmt: skip
    (out / "_audit/consent/ledger.json").unlink()  # the run's: the DAG's renewal writes another
    dag = load_dag("consent_revocation_sweep")
    # Airflow 3.3.2's dag.test cannot finish a run of a DAG with a DeadlineAlert (DagRun.update_state looks
    # the alerts up by their DB id; dag.test's DAG holds their definitions): tested apart, in
    # tests/dags/test_assets_and_alerts.py.
    dag.deadline = None
    run = dag.test(run_conf={"as_of": "2026-11-26T10:00:00Z"})
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"sweep": "success", "announce_purges": "success", "renew_consent_ledger": "success"}
    renewed = ledger_from_json(json.loads((out / "_audit/consent/ledger.json").read_text()), settings.secret)
    assert renewed is not None and renewed.full_read_at > AS_OF  # read at the sweep's now, not the pinned as_of
    after = content_rows(out)
    assert after == [r for r in before if keyer.account(account) not in r["account_keys"]]
    assert len(after) < len(before)
    (log,) = [p for p in (out / "_audit/sweeps").glob("sweep__*.json")]
    record = json.loads(log.read_text())
    assert record["rows_removed"] == len(before) - len(after)
    assert record["purges"][0]["partition"] == DAY.isoformat()
    assert account not in log.read_text()
