"""Airflow's own backfill against a real scheduler: `scripts/airflow-local standalone` on SQLite.

A temp AIRFLOW_HOME, free ports on 127.0.0.1 (other Airflow processes may run on this machine), the
sample landing zone: `airflow backfill create` for 3 days publishes 3 partitions, each with its own
`as_of`; a reprocessing backfill (`--reprocess-behavior completed`) replaces them, no duplicate rows.
Every process started here is killed, always.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from tests.conftest import PROJECT
from tests.dags.test_celery import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

DAG_ID = "consent_gate_daily"
DAYS = ("2026-11-02", "2026-11-03", "2026-11-04")
WAIT_S = 600


def local_env(home: Path, sample: Path, out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST", "CONSENT_GATE"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "CONSENT_GATE_AIRFLOW_PORT": str(free_port()),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # the settings file's connection and variables, pointed at the sample (the environment wins)
            "AIRFLOW_CONN_CONSENT_DB": json.dumps({"conn_type": "sqlite", "host": str(sample / "consent.db")}),
            "AIRFLOW_VAR_CONSENT_GATE_RAW_URI": str(sample / "raw"),
            "AIRFLOW_VAR_CONSENT_GATE_OUT_URI": str(out),
            "AIRFLOW_VAR_CONSENT_GATE_HMAC_KEY": (sample / "hmac.key").read_text(),
        }
    )
    return env


def local(env: dict[str, str], *args: str, timeout: int = 600) -> str:
    done = subprocess.run(
        [str(PROJECT / "scripts/airflow-local"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"airflow-local {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def create_backfill(env: dict[str, str], home: Path, *args: str) -> int:
    """`airflow backfill create`; returns the new backfill's id.

    On SQLite a transaction that must upgrade its read lock while the scheduler commits gets "database
    is locked" at once, whatever the busy timeout (SQLite's deadlock avoidance). The command is one
    transaction, so a run that failed that way created nothing and is simply run again, as a data
    engineer would (the README says so); anything else fails the test.
    """
    before = query(home, "SELECT count(*) FROM backfill")[0][0]
    command = [str(PROJECT / "scripts/airflow-local"), "airflow", "backfill", "create", "--dag-id", DAG_ID, *args]
    for _ in range(5):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        created = query(home, "SELECT count(*) FROM backfill")[0][0] - before
        if done.returncode == 0 or created or "database is locked" not in done.stderr:
            break
        time.sleep(3)
    assert done.returncode == 0 and created == 1, f"backfill create failed:\n{done.stderr[-3000:]}"
    return query(home, "SELECT max(id) FROM backfill")[0][0]


def query(home: Path, sql: str, *params: Any) -> list[tuple]:
    with sqlite3.connect(home / "airflow.db", timeout=30) as connection:
        return connection.execute(sql, params).fetchall()


def wait_for_api_server(env: dict[str, str], standalone: subprocess.Popen, log: Path) -> None:
    url = f"http://127.0.0.1:{env['CONSENT_GATE_AIRFLOW_PORT']}/api/v2/monitor/health"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if standalone.poll() is not None:
            pytest.fail(f"airflow standalone exited with {standalone.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=3).close()
            return
        except OSError:
            time.sleep(2)
    pytest.fail(f"the api-server did not answer on {url}:\n{log.read_text()[-3000:]}")


def wait_for_backfill(home: Path, standalone: subprocess.Popen, log: Path, backfill_id: int) -> list[tuple]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if standalone.poll() is not None:
            pytest.fail(f"airflow standalone exited with {standalone.returncode}:\n{log.read_text()[-3000:]}")
        runs = query(home, "SELECT run_id, state, logical_date FROM dag_run WHERE backfill_id = ?", backfill_id)
        completed = query(home, "SELECT completed_at FROM backfill WHERE id = ?", backfill_id)[0][0]
        if completed and len(runs) == len(DAYS) and all(state in ("success", "failed") for _, state, _ in runs):
            return runs  # the backfill itself is over too: only one may run per DAG
        time.sleep(3)
    pytest.fail(f"backfill {backfill_id} not done after {WAIT_S} s: {runs}\n{log.read_text()[-3000:]}")


def published(out: Path) -> dict[str, dict[str, Any]]:
    days = {}
    for day in DAYS:
        manifest = json.loads((out / f"_audit/dt={day}/manifest.json").read_text())
        content = ds.dataset(out / f"content/dt={day}", format="parquet").to_table().sort_by("artifact_id")
        days[day] = {"manifest": manifest, "content": content}
    return days


def test_a_backfill_on_a_real_scheduler_publishes_each_day_and_a_reprocessing_backfill_replaces_them(
    sample_dir, tmp_path
):
    home, out = tmp_path / "airflow", tmp_path / "out"
    env = local_env(home, sample_dir, out)
    local(env, "init")
    assert query(home, "SELECT slots FROM slot_pool WHERE pool = 'consent_gate_publish'") == [(1,)]
    assert query(home, "SELECT is_paused FROM dag WHERE dag_id = ?", DAG_ID) == [(0,)]
    log = tmp_path / "standalone.log"
    with open(log, "wb") as handle:
        standalone = subprocess.Popen(
            [str(PROJECT / "scripts/airflow-local"), "standalone"],
            env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_api_server(env, standalone, log)  # tasks started before it answers fail their first try
        first_id = create_backfill(env, home, "--from-date", DAYS[0], "--to-date", DAYS[-1])
        first = wait_for_backfill(home, standalone, log, first_id)
        assert all(state == "success" for _, state, _ in first), first
        before = published(out)

        second_id = create_backfill(
            env, home, "--from-date", DAYS[0], "--to-date", DAYS[-1], "--reprocess-behavior", "completed"
        )
        assert second_id != first_id
        second = wait_for_backfill(home, standalone, log, second_id)
        assert all(state == "success" for _, state, _ in second), second
        after = published(out)
        pools = query(home, "SELECT DISTINCT pool FROM task_instance WHERE task_id = 'publish'")
    finally:
        os.killpg(standalone.pid, signal.SIGTERM)
        try:
            standalone.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(standalone.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        standalone.wait()

    assert pools == [("consent_gate_publish",)]
    first_runs, second_runs = {r for r, _, _ in first}, {r for r, _, _ in second}
    for day in DAYS:
        old, new = before[day], after[day]
        assert old["manifest"]["partition"] == day and old["manifest"]["status"] == "published"
        assert old["manifest"]["dag_run_id"] in first_runs and new["manifest"]["dag_run_id"] in second_runs
        assert new["manifest"]["as_of"] > old["manifest"]["as_of"]  # each run pins its own snapshot instant
        ids = new["content"].column("artifact_id").to_pylist()
        assert len(ids) == len(set(ids)) == new["manifest"]["counts"]["content"]["published"] > 0
        same_rows = [c for c in old["content"].column_names if c != "consent_as_of"]
        assert new["content"].select(same_rows).equals(old["content"].select(same_rows))  # replaced, not appended
        assert sorted(p.name for p in (out / f"content/dt={day}").iterdir()) == ["part-0000.parquet"]
    assert len({before[day]["manifest"]["as_of"] for day in DAYS}) == len(DAYS)
    assert not list((out / "_staging").glob("dt=*/*")), "a stage was left behind"
