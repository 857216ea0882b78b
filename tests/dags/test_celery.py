"""The daily DAG on a production-shaped deployment: CeleryExecutor, Redis broker, PostgreSQL everywhere.

A private AIRFLOW_HOME, a new PostgreSQL metadata database, an empty Redis database as the broker,
the consent store on PostgreSQL through the `consent_db` connection, free ports only (other Airflow
processes may run on this machine). It brings up api-server, scheduler, dag-processor and two Celery
workers, runs the sample day in 4 shards, and compares the published rows with a local run_day on
the embedded default (SQLite consent store, one process). Every process is stopped, always.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from consent_gate.config import Policy, utc_now
from consent_gate.consent import COLUMNS
from consent_gate.pipeline import RunSettings, run_day
from consent_gate.records import parse_timestamp
from consent_gate.sample import write_consent_events
from tests.conftest import PROJECT, service_unavailable
from tests.dags.deployment import Deployment, base_env, metadata_database

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

DAG_ID = "consent_gate_daily"
DAY = date(2026, 11, 2)
AS_OF = "2026-11-20T00:00:00Z"
SHARDS = 4
RUN_TIMEOUT_S = 480
REDIS_HINT = (
    "install Redis (`apt-get install redis-server`) and run scripts/services, which starts it on 127.0.0.1:6379"
)


@pytest.fixture
def redis_broker() -> Iterator[str]:
    """An empty database of the local Redis (one not used by anyone else), flushed afterwards."""
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3).ping()
    except redis.exceptions.ConnectionError:
        service_unavailable("Redis on 127.0.0.1:6379", REDIS_HINT)
    for number in range(15, 0, -1):
        client = redis.Redis(host="127.0.0.1", port=6379, db=number)
        # Claim the database atomically, so a concurrent test session cannot pick the same one.
        if client.dbsize() == 0 and client.set("consent-gate-test-claim", uuid.uuid4().hex, nx=True):
            try:
                yield f"redis://127.0.0.1:6379/{number}"
            finally:
                client.flushdb()
            return
    pytest.fail("no empty Redis database (1-15) to use as a broker")


def copy_consent_to(sample: Path, url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE consent_events ({', '.join(c + ' TEXT' for c in COLUMNS)})"))
    engine.dispose()
    with sqlite3.connect(sample / "consent.db") as source:
        rows = source.execute(f"SELECT {', '.join(COLUMNS)} FROM consent_events").fetchall()
    assert write_consent_events(url, rows) == len(rows) > 0


def deployment_env(home: Path, metadata_url: str, broker: str, consent_url: str, sample: Path, out: Path) -> dict:
    consent = sa.make_url(consent_url)
    dags = home / "dags"
    dags.mkdir()
    (dags / "consent_gate_daily.py").symlink_to(PROJECT / "dags" / "consent_gate_daily.py")
    env = base_env(home)
    env.update(
        {
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW_CONN_CONSENT_DB": json.dumps(
                {
                    "conn_type": "postgres",
                    "host": consent.host,
                    "port": consent.port,
                    "login": consent.username,
                    "schema": consent.database,
                }  # fmt: skip
            ),
            "AIRFLOW_VAR_CONSENT_GATE_RAW_URI": str(sample / "raw"),
            "AIRFLOW_VAR_CONSENT_GATE_OUT_URI": str(out),
            "AIRFLOW_VAR_CONSENT_GATE_HMAC_KEY": (sample / "hmac.key").read_text(),
        }
    )
    return env


def published(out: Path) -> dict[str, Any]:
    audit = out / f"_audit/dt={DAY}"
    return {
        "content": ds.dataset(out / f"content/dt={DAY}", format="parquet").to_table().sort_by("artifact_id"),
        "aggregates": ds.dataset(out / f"aggregates/dt={DAY}", format="parquet").to_table(),
        "excluded": pq.read_table(audit / "excluded.parquet").sort_by("artifact_id"),
        "manifest": json.loads((audit / "manifest.json").read_text()),
    }


def test_celery_executor_runs_the_day_in_four_shards_like_a_local_run(
    postgres_database, migrated_postgres_template, redis_broker, sample_dir, tmp_path
):
    home, out = tmp_path / "airflow", tmp_path / "out"
    home.mkdir()
    copy_consent_to(sample_dir, postgres_database)
    with metadata_database(migrated_postgres_template, home) as metadata_url:
        env = deployment_env(home, metadata_url, redis_broker, postgres_database, sample_dir, out)
        deployment = Deployment(home, env)
        metadata = sa.create_engine(metadata_url)
        try:
            deployment.start_local_components()
            for worker in ("worker1", "worker2"):
                deployment.start(
                    worker, "celery", "worker", "--celery-hostname", f"{worker}-{uuid.uuid4().hex[:6]}@%h",
                    "--concurrency", "2", "--skip-serve-logs", "--pid", str(home / f"{worker}.pid"),
                )  # fmt: skip

            def dag_parsed() -> bool:
                with metadata.connect() as connection:
                    query = sa.text("SELECT count(*) FROM serialized_dag WHERE dag_id = :d")
                    return connection.execute(query, {"d": DAG_ID}).scalar() > 0

            def workers_ready() -> bool:
                return all("ready." in deployment.log(w) for w in ("worker1", "worker2"))

            deployment.wait_for("the dag-processor to parse the DAG", dag_parsed, 180)
            deployment.wait_for("both Celery workers", workers_ready, 180)
            deployment.airflow("dags", "unpause", DAG_ID)
            conf = json.dumps({"day": DAY.isoformat(), "as_of": AS_OF, "shards": SHARDS})
            deployment.airflow("dags", "trigger", DAG_ID, "--run-id", "celery_shards_4", "--conf", conf)

            def run_finished() -> str | None:
                with metadata.connect() as connection:
                    query = sa.text("SELECT state FROM dag_run WHERE dag_id = :d AND run_id = 'celery_shards_4'")
                    state = connection.execute(query, {"d": DAG_ID}).scalar()
                return state if state in ("success", "failed") else None

            state = deployment.wait_for("the DAG run to finish", run_finished, RUN_TIMEOUT_S)
            with metadata.connect() as connection:
                rows = connection.execute(
                    sa.text("SELECT task_id, map_index, state FROM task_instance WHERE run_id = 'celery_shards_4'")
                ).fetchall()
            assert state == "success", f"run {state}: {rows}"
        finally:
            metadata.dispose()
            deployment.stop()

    gated = sorted(r.map_index for r in rows if r.task_id == "gate_content" and r.state == "success")
    assert gated == list(range(SHARDS))
    assert all(r.state == "success" for r in rows)
    # Celery did the work: each worker received task workloads from the broker.
    assert all("received" in deployment.log(w) for w in ("worker1", "worker2"))

    celery = published(out)
    assert celery["manifest"]["status"] == "published" and celery["manifest"]["dag_run_id"] == "celery_shards_4"
    assert sorted(p.name for p in (out / f"content/dt={DAY}").iterdir()) == [
        f"part-{n:04d}.parquet" for n in range(SHARDS)
    ]
    local_settings = RunSettings(
        raw=str(sample_dir / "raw"), out=str(tmp_path / "local"), consent_db=f"sqlite:///{sample_dir / 'consent.db'}",
        policy=Policy(), secret=(sample_dir / "hmac.key").read_bytes(),
    )  # fmt: skip
    run_day(local_settings, DAY, parse_timestamp(AS_OF, "as_of"), clock=utc_now)
    local = published(tmp_path / "local")
    assert celery["content"].num_rows > 0
    for name in ("content", "aggregates", "excluded"):
        assert celery[name].equals(local[name]), name
    assert celery["manifest"]["counts"] == local["manifest"]["counts"]
    assert celery["manifest"]["consent"]["checksum"] == local["manifest"]["consent"]["checksum"]
