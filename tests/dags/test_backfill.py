"""Airflow's own backfill against a real scheduler: `scripts/airflow-local` with each component supervised.

A temp AIRFLOW_HOME, free ports on 127.0.0.1 (other Airflow processes may run on this machine), the
metadata DB on PostgreSQL when available (tests/dags/deployment.py), the sample landing zone:
`airflow backfill create` for 2 days publishes 2 partitions, each with its own `as_of`; every
publication's asset event starts the example consumer for its day (partition key); a reprocessing
backfill (`--reprocess-behavior completed`) replaces the days, no duplicate rows. api-server, scheduler
and dag-processor run as separate processes started through `scripts/airflow-local airflow ...`: a
component that exits fails the test at once with its log. Every process started here is killed, always.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
import sqlalchemy as sa

from tests.conftest import PROJECT
from tests.dags.deployment import Deployment, base_env, metadata_database

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

DAG_ID = "consent_gate_daily"
CONSUMER_ID = "consent_gate_content_consumer"
DAYS = ("2026-11-02", "2026-11-03")  # two days: a range, each its own run and as_of; CI time counts
WAIT_S = 420  # a last resort against a hang; a dead component fails the test at its next poll


def local_env(home: Path, sample: Path, out: Path, metadata_url: str) -> dict[str, str]:
    env = base_env(home)
    env.update(
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CORE__PARALLELISM": "4",
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


class Metadata:
    """Read-only queries on the deployment's metadata DB (PostgreSQL or SQLite)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, **({"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}))

    def query(self, sql: str, **params: Any) -> list[tuple]:
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(sql), params).fetchall()]


def create_backfill(deployment: Deployment, metadata: Metadata, *args: str) -> int:
    """`airflow backfill create`; returns the new backfill's id.

    On SQLite a transaction that must upgrade its read lock while the scheduler commits gets "database
    is locked" at once, whatever the busy timeout (SQLite's deadlock avoidance). The command is one
    transaction, so a run that failed that way created nothing and is simply run again, as a data
    engineer would (the README says so); anything else fails the test. PostgreSQL has no such case.
    """
    before = metadata.query("SELECT count(*) FROM backfill")[0][0]
    command = [str(PROJECT / "scripts/airflow-local"), "airflow", "backfill", "create", "--dag-id", DAG_ID, *args]
    for _ in range(5):
        done = subprocess.run(command, env=deployment.env, capture_output=True, text=True, timeout=300)
        created = metadata.query("SELECT count(*) FROM backfill")[0][0] - before
        if done.returncode == 0 or created or "database is locked" not in done.stderr:
            break
        deployment.check_alive()
        time.sleep(3)
    assert done.returncode == 0 and created == 1, f"backfill create failed:\n{done.stderr[-3000:]}"
    return metadata.query("SELECT max(id) FROM backfill")[0][0]


def wait_for_backfill(deployment: Deployment, metadata: Metadata, backfill_id: int) -> list[tuple]:
    def finished() -> list[tuple] | None:
        runs = metadata.query("SELECT run_id, state FROM dag_run WHERE backfill_id = :b", b=backfill_id)
        completed = metadata.query("SELECT completed_at FROM backfill WHERE id = :b", b=backfill_id)[0][0]
        if completed and len(runs) == len(DAYS) and all(state in ("success", "failed") for _, state in runs):
            return runs  # the backfill itself is over too: only one may run per DAG
        return None

    return deployment.wait_for(f"backfill {backfill_id}", finished, WAIT_S)


def wait_for_consumer_runs(deployment: Deployment, metadata: Metadata, count: int) -> list[tuple]:
    """The consumer's runs (one per published day and publication), once `count` of them finished."""

    def finished() -> list[tuple] | None:
        runs = metadata.query(
            "SELECT partition_key, state FROM dag_run WHERE dag_id = :d ORDER BY partition_key", d=CONSUMER_ID
        )
        done = [r for r in runs if r[1] in ("success", "failed")]
        return runs if len(done) >= count and len(done) == len(runs) else None

    return deployment.wait_for(f"{count} consumer runs", finished, WAIT_S)


def published(out: Path) -> dict[str, dict[str, Any]]:
    days = {}
    for day in DAYS:
        manifest = json.loads((out / f"_audit/dt={day}/manifest.json").read_text())
        content = ds.dataset(out / f"content/dt={day}", format="parquet").to_table().sort_by("artifact_id")
        days[day] = {"manifest": manifest, "content": content}
    return days


def test_a_backfill_on_a_real_scheduler_publishes_each_day_and_a_reprocessing_backfill_replaces_them(
    sample_dir, tmp_path, migrated_postgres_template
):
    home, out = tmp_path / "airflow", tmp_path / "out"
    home.mkdir()
    with metadata_database(migrated_postgres_template, home) as metadata_url:
        env = local_env(home, sample_dir, out, metadata_url)
        local(env, "init")  # migrate (a no-op on the copy), pools, DAGs parsed and unpaused
        metadata = Metadata(metadata_url)
        assert metadata.query("SELECT slots FROM slot_pool WHERE pool = 'consent_gate_publish'") == [(1,)]
        assert metadata.query("SELECT is_paused FROM dag WHERE dag_id = :d", d=DAG_ID) == [(False,)]
        deployment = Deployment(home, env, [str(PROJECT / "scripts/airflow-local"), "airflow"])
        try:
            deployment.start_local_components()
            first_id = create_backfill(deployment, metadata, "--from-date", DAYS[0], "--to-date", DAYS[-1])
            first = wait_for_backfill(deployment, metadata, first_id)
            assert all(state == "success" for _, state in first), first
            consumed = wait_for_consumer_runs(deployment, metadata, len(DAYS))
            before = published(out)

            second_id = create_backfill(
                deployment, metadata, "--from-date", DAYS[0], "--to-date", DAYS[-1], "--reprocess-behavior", "completed"
            )
            assert second_id != first_id
            second = wait_for_backfill(deployment, metadata, second_id)
            assert all(state == "success" for _, state in second), second
            after = published(out)
            pools = metadata.query("SELECT DISTINCT pool FROM task_instance WHERE task_id = 'publish'")
            events = metadata.query(
                "SELECT e.partition_key, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id"
                " WHERE a.name = 'consent_gate_content' ORDER BY e.id"
            )
        finally:
            deployment.stop()
            metadata.engine.dispose()

    assert pools == [("consent_gate_publish",)]
    # one content event per published day and publication, the day as partition key, the consumer ran per day
    assert sorted(key for key, _ in events) == sorted(DAYS * 2)
    assert consumed == [(day, "success") for day in DAYS]
    first_runs, second_runs = {r for r, _ in first}, {r for r, _ in second}
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
        extras = [json.loads(e) if isinstance(e, str) else e for key, e in events if key == day]
        assert [e["kind"] for e in extras] == ["publish", "publish"] and extras[-1]["day"] == day
        assert extras[-1]["rows"]["content"] == new["manifest"]["counts"]["content"]["published"]
    assert len({before[day]["manifest"]["as_of"] for day in DAYS}) == len(DAYS)
    assert not list((out / "_staging").glob("dt=*/*")), "a stage was left behind"
