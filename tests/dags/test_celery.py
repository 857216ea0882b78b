"""The daily DAG on a production-shaped deployment: CeleryExecutor, Redis broker, PostgreSQL everywhere.

A private AIRFLOW_HOME, a new PostgreSQL metadata database, an empty Redis database as the broker,
the consent store on PostgreSQL through the `consent_db` connection, free ports only (other Airflow
processes may run on this machine). It brings up api-server, scheduler, dag-processor and two Celery
workers, runs the sample day in 4 shards, and compares the published rows with a local run_day on
the embedded default (SQLite consent store, one process). Every process is stopped, always.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from consent_gate.config import Policy
from consent_gate.consent import COLUMNS
from consent_gate.pipeline import RunSettings, run_day
from consent_gate.records import parse_timestamp
from consent_gate.sample import write_consent_events
from tests.conftest import PROJECT, service_unavailable, throwaway_database

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

DAG_ID = "consent_gate_daily"
DAY = date(2026, 11, 2)
AS_OF = "2026-11-20T00:00:00Z"
SHARDS = 4
RUN_TIMEOUT_S = 480
REDIS_HINT = (
    "install Redis (`apt-get install redis-server`) and run scripts/services, which starts it on 127.0.0.1:6379"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


class Deployment:
    """Airflow processes of one deployment; each in its own process group, all stopped on exit."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.processes: dict[str, subprocess.Popen] = {}

    def airflow(self, *args: str, timeout: int = 300) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stderr[-3000:]}"
        return done.stdout

    def start(self, name: str, *args: str) -> None:
        with open(self.home / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", *args], env=self.env, cwd=self.home,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM every process group this deployment started, then SIGKILL what is left."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group may outlive its leader (task runners, pool children)
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def wait_for(what: str, condition, deployment: Deployment, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment.check_alive()
        value = condition()
        if value:
            return value
        time.sleep(2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def copy_consent_to(sample: Path, url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE consent_events ({', '.join(c + ' TEXT' for c in COLUMNS)})"))
    engine.dispose()
    with sqlite3.connect(sample / "consent.db") as source:
        rows = source.execute(f"SELECT {', '.join(COLUMNS)} FROM consent_events").fetchall()
    assert write_consent_events(url, rows) == len(rows) > 0


def deployment_env(home: Path, metadata_url: str, broker: str, consent_url: str, sample: Path, out: Path) -> dict:
    api_port = free_port()
    consent = sa.make_url(consent_url)
    dags = home / "dags"
    dags.mkdir()
    (dags / "consent_gate_daily.py").symlink_to(PROJECT / "dags" / "consent_gate_daily.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
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
    postgres_server, postgres_database, redis_broker, sample_dir, tmp_path
):
    home, out = tmp_path / "airflow", tmp_path / "out"
    home.mkdir()
    copy_consent_to(sample_dir, postgres_database)
    with throwaway_database(postgres_server, "consent_gate_airflow") as metadata_url:
        env = deployment_env(home, metadata_url, redis_broker, postgres_database, sample_dir, out)
        deployment = Deployment(home, env)
        deployment.airflow("db", "migrate", timeout=600)
        metadata = sa.create_engine(metadata_url)
        try:
            deployment.start("api-server", "api-server", "--host", "127.0.0.1", "--port", env["AIRFLOW__API__PORT"],
                             "--workers", "1")  # fmt: skip
            deployment.start("scheduler", "scheduler", "--skip-serve-logs")
            deployment.start("dag-processor", "dag-processor")
            for worker in ("worker1", "worker2"):
                deployment.start(
                    worker, "celery", "worker", "--celery-hostname", f"{worker}-{uuid.uuid4().hex[:6]}@%h",
                    "--concurrency", "2", "--skip-serve-logs", "--pid", str(home / f"{worker}.pid"),
                )  # fmt: skip

            def api_up() -> bool:
                try:
                    urllib.request.urlopen(f"{env['AIRFLOW__API__BASE_URL']}/api/v2/monitor/health", timeout=3).close()
                    return True
                except OSError:
                    return False

            def dag_parsed() -> bool:
                with metadata.connect() as connection:
                    query = sa.text("SELECT count(*) FROM serialized_dag WHERE dag_id = :d")
                    return connection.execute(query, {"d": DAG_ID}).scalar() > 0

            def workers_ready() -> bool:
                return all("ready." in deployment.log(w) for w in ("worker1", "worker2"))

            wait_for("the api-server", api_up, deployment, 180)
            wait_for("the dag-processor to parse the DAG", dag_parsed, deployment, 180)
            wait_for("both Celery workers", workers_ready, deployment, 180)
            deployment.airflow("dags", "unpause", DAG_ID)
            conf = json.dumps({"day": DAY.isoformat(), "as_of": AS_OF, "shards": SHARDS})
            deployment.airflow("dags", "trigger", DAG_ID, "--run-id", "celery_shards_4", "--conf", conf)

            def run_finished() -> str | None:
                with metadata.connect() as connection:
                    query = sa.text("SELECT state FROM dag_run WHERE dag_id = :d AND run_id = 'celery_shards_4'")
                    state = connection.execute(query, {"d": DAG_ID}).scalar()
                return state if state in ("success", "failed") else None

            state = wait_for("the DAG run to finish", run_finished, deployment, RUN_TIMEOUT_S)
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
    run_day(local_settings, DAY, parse_timestamp(AS_OF, "as_of"))
    local = published(tmp_path / "local")
    assert celery["content"].num_rows > 0
    for name in ("content", "aggregates", "excluded"):
        assert celery[name].equals(local[name]), name
    assert celery["manifest"]["counts"] == local["manifest"]["counts"]
    assert celery["manifest"]["consent"]["checksum"] == local["manifest"]["consent"]["checksum"]
