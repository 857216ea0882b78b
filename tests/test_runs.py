"""Which day a run processes, derived from the real timetable objects for each kind of run."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pendulum
import pytest

from consent_gate.runs import AmbiguousPartition, as_of_for_run, partition_for_run, publish_pool

pytestmark = pytest.mark.unit


def daily():
    from airflow.timetables.interval import CronDataIntervalTimetable

    return CronDataIntervalTimetable("0 0 * * *", timezone="UTC")


def test_a_scheduled_run_processes_the_day_of_its_interval():
    from airflow.timetables.base import DataInterval, TimeRestriction

    last = DataInterval(pendulum.datetime(2026, 11, 2, tz="UTC"), pendulum.datetime(2026, 11, 3, tz="UTC"))
    info = daily().next_dagrun_info(
        last_automated_data_interval=last,
        restriction=TimeRestriction(pendulum.datetime(2026, 11, 1, tz="UTC"), None, catchup=True),
    )
    assert info.run_after == pendulum.datetime(2026, 11, 4, tz="UTC")  # runs once the day is complete
    assert partition_for_run(info.data_interval.start, info.data_interval.end) == date(2026, 11, 3)


def test_a_manual_run_processes_the_last_complete_day_before_it_was_triggered():
    interval = daily().infer_manual_data_interval(run_after=pendulum.datetime(2026, 11, 5, 13, 7, tz="UTC"))
    assert partition_for_run(interval.start, interval.end) == date(2026, 11, 4)


def test_a_backfill_processes_one_day_per_interval_start_from_to_inclusive():
    """What `airflow backfill create --from-date 2026-11-02 --to-date 2026-11-04` creates for this DAG."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    from tests.dags.test_dag_integrity import DAGS

    dag = DagBag(dag_folder=str(DAGS)).dags["consent_gate_daily"]
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    infos = list(
        serialized.iter_dagrun_infos_between(
            pendulum.datetime(2026, 11, 2, tz="UTC"), pendulum.datetime(2026, 11, 4, tz="UTC")
        )
    )
    days = [partition_for_run(i.data_interval.start, i.data_interval.end) for i in infos]
    assert days == [date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)]


def test_the_day_param_overrides_the_interval_and_must_be_a_date():
    interval = daily().infer_manual_data_interval(run_after=pendulum.datetime(2026, 11, 5, tz="UTC"))
    assert partition_for_run(interval.start, interval.end, "2026-11-02") == date(2026, 11, 2)
    assert partition_for_run(None, None, "2026-11-02") == date(2026, 11, 2)
    with pytest.raises(AmbiguousPartition, match="YYYY-MM-DD"):
        partition_for_run(interval.start, interval.end, "yesterday")


def test_a_zero_length_interval_of_the_default_cron_trigger_timetable_is_refused():
    from airflow.timetables.trigger import CronTriggerTimetable

    interval = CronTriggerTimetable("0 0 * * *", timezone="UTC").infer_manual_data_interval(
        run_after=pendulum.datetime(2026, 11, 5, tz="UTC")
    )
    assert interval.start == interval.end
    with pytest.raises(AmbiguousPartition, match="not one whole UTC day"):
        partition_for_run(interval.start, interval.end)
    with pytest.raises(AmbiguousPartition, match="no data interval"):
        partition_for_run(None, None)


def test_an_interval_that_is_not_a_whole_utc_day_is_refused():
    with pytest.raises(AmbiguousPartition):  # a day in another time zone
        partition_for_run(
            pendulum.datetime(2026, 11, 2, tz="Europe/Paris"), pendulum.datetime(2026, 11, 3, tz="Europe/Paris")
        )
    with pytest.raises(AmbiguousPartition):  # two days
        partition_for_run(pendulum.datetime(2026, 11, 2, tz="UTC"), pendulum.datetime(2026, 11, 4, tz="UTC"))


def test_as_of_is_pinned_by_the_param_or_is_the_snapshot_moment():
    now = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
    assert as_of_for_run(None, now) == now
    assert as_of_for_run("2026-11-20T00:00:00Z", now) == datetime(2026, 11, 20, tzinfo=UTC)


def test_the_publish_pool_is_the_dedicated_one_only_where_the_deployment_created_it(monkeypatch):
    monkeypatch.delenv("CONSENT_GATE_PUBLISH_POOL", raising=False)
    assert publish_pool() == "default_pool"  # a missing pool would leave publish tasks queued silently
    monkeypatch.setenv("CONSENT_GATE_PUBLISH_POOL", "consent_gate_publish")
    assert publish_pool() == "consent_gate_publish"


def test_the_local_deployment_applies_airflow_settings_yaml_with_paths_against_the_project_root():
    import json

    from consent_gate.airflow_local import environment
    from consent_gate.config import PROJECT_ROOT

    env = environment({"PATH": "/usr/bin", "AIRFLOW_VAR_CONSENT_GATE_OUT_URI": "/elsewhere/out"})
    assert env["AIRFLOW_HOME"] == str(PROJECT_ROOT / "var/airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{PROJECT_ROOT / 'var/airflow'}/airflow.db"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert json.loads(env["AIRFLOW_CONN_CONSENT_DB"]) == {
        "conn_type": "sqlite",
        "host": str(PROJECT_ROOT / "var/consent.db"),
    }
    assert env["AIRFLOW_VAR_CONSENT_GATE_RAW_URI"] == str(PROJECT_ROOT / "var/raw")
    assert env["AIRFLOW_VAR_CONSENT_GATE_OUT_URI"] == "/elsewhere/out"  # the environment wins
    assert env["CONSENT_GATE_PUBLISH_POOL"] == "consent_gate_publish"


def test_every_airflow_process_of_the_local_deployment_waits_for_a_locked_sqlite_instead_of_failing(tmp_path):
    """The scheduler, the dag-processor and a `backfill create` share one file; sqlite3's 5 s was too short."""
    import subprocess
    import sys

    from consent_gate.airflow_local import environment

    env = environment({"PATH": "/usr/bin", "AIRFLOW_HOME": str(tmp_path)})
    busy = "settings.engine.connect().exec_driver_sql('PRAGMA busy_timeout').scalar()"
    probe = f"from airflow import settings; print({busy})"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "60000"

    postgres = environment({"PATH": "/usr/bin", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://h/db"})
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS" not in postgres  # psycopg2 knows no `timeout`
