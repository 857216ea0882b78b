"""The DAGs with dag.test(): publication's asset events in the metadata DB, the example consumer
reading the day they name, and the alert a failed day sends (to a notifier that records it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consent_gate import alerts
from consent_gate.assets import AGGREGATES, CONTENT
from tests.dags.test_consent_gate_daily import AS_OF, load_dag
from tests.dags.test_consent_gate_daily import airflow_env as airflow_env  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration

SENT: list[tuple[str, dict]] = []


def record(message: str, details: dict) -> None:
    """The notifier under test: keeps what it was given."""
    SENT.append((message, details))


@pytest.fixture
def recorded_alerts(monkeypatch):
    monkeypatch.setenv(alerts.NOTIFIER_ENV, f"{__name__}:record")
    SENT.clear()
    yield SENT
    SENT.clear()


def asset_events(run_id: str) -> list:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.uri, AssetEvent.partition_key, AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetEvent.source_run_id == run_id)
        ).all()
    return sorted((uri, key, extra) for uri, key, extra in rows)


def test_publish_emits_one_event_per_asset_for_the_day_and_the_consumer_reads_that_day(
    airflow_db, airflow_env, recorded_alerts
):
    run = load_dag("consent_gate_daily").test(run_conf={"day": "2026-11-02", "as_of": AS_OF})
    assert run.state == "success" and recorded_alerts == []
    events = asset_events(run.run_id)
    assert [(uri, key) for uri, key, _ in events] == [(AGGREGATES.uri, "2026-11-02"), (CONTENT.uri, "2026-11-02")]
    extra = events[0][2]
    manifest = json.loads((airflow_env / "_audit/dt=2026-11-02/manifest.json").read_text())
    assert extra["kind"] == "publish" and extra["day"] == "2026-11-02"
    assert extra["rows"]["content"] == manifest["counts"]["content"]["published"] > 0
    assert extra["consent_checksum"] == manifest["consent"]["checksum"]

    consumer = load_dag("consent_gate_content_consumer")
    read_run = consumer.test(run_conf={"day": "2026-11-02"})
    assert read_run.state == "success"
    [ti] = read_run.get_task_instances()
    read = ti.xcom_pull(task_ids="read_published_day")
    assert read["day"] == "2026-11-02" and read["rows"] == extra["rows"]["content"]
    assert read["files"] == 1 and read["manifest_sha256"] == extra["manifest_sha256"]


def test_a_day_that_fails_its_checks_sends_an_alert_naming_the_checks_and_the_evidence(
    airflow_db, airflow_env, recorded_alerts, monkeypatch, tmp_path
):
    strict = tmp_path / "strict-policy.yaml"
    strict.write_text("version: strict\nmax_quarantine_ratio: 0\nk_min_distinct_users: 10\n")
    monkeypatch.setenv("AIRFLOW_VAR_CONSENT_GATE_POLICY_FILE", str(strict))
    run = load_dag("consent_gate_daily").test(run_conf={"day": "2026-11-02", "as_of": AS_OF})
    assert run.state == "failed"
    [(message, details)] = recorded_alerts
    assert message.startswith("day 2026-11-02 published nothing: checks quarantine_ratio failed, evidence at ")
    evidence = details["evidence"]
    assert evidence.startswith(str(airflow_env / "_audit/dt=2026-11-02/attempts/")) and evidence.endswith(".json")
    attempt = json.loads(Path(evidence).read_text())
    assert attempt["dag_run_id"] == run.run_id and attempt["status"] == "failed"
    assert details["failed_checks"] == ["quarantine_ratio"] and details["run_id"] == run.run_id
    assert not list(airflow_env.glob("content/dt=2026-11-02"))


def test_the_sweep_has_a_deadline_alert_backing_the_withdrawal_promise(airflow_db, monkeypatch):
    monkeypatch.setenv(alerts.SWEEP_DEADLINE_ENV, "45")
    dag = load_dag("consent_revocation_sweep")
    [deadline] = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
    assert deadline.interval.total_seconds() == 45 * 60
    assert deadline.callback.path == "consent_gate.alerts.sweep_deadline_missed"
    assert deadline.callback.kwargs == {"minutes": 45}


def test_the_deadline_callback_sends_the_alert(recorded_alerts):
    import asyncio

    asyncio.run(alerts.sweep_deadline_missed({"dag_run": {"run_id": "scheduled__x"}}, minutes=45))
    [(message, details)] = recorded_alerts
    assert "scheduled__x" in message and "45 min" in message and "SPEC §7" in message
    assert details == {"dag_id": "consent_revocation_sweep", "run_id": "scheduled__x", "deadline_minutes": 45}
