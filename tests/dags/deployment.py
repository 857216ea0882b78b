"""A supervised local Airflow for the real-scheduler tests (backfill, Celery).

Each component (api-server, scheduler, dag-processor, Celery workers) is its own process in its own
process group with its own log, never `airflow standalone`: a component that exits fails the test at
once, with its log's tail, on the next poll of any wait (instead of runs staying `queued` until a
timeout). Every process is stopped, always.

The metadata database is PostgreSQL whenever the local server answers (always under CI=true, where
its absence fails the test): one database is migrated per test session and each test gets a copy
(`CREATE DATABASE ... TEMPLATE`, a file copy: no second migration), dropped afterwards. Without
PostgreSQL (a developer machine) each test migrates a SQLite file, the embedded default of
`scripts/airflow-local`, whose single writer lock is what made the old `standalone` test flaky.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import PROJECT, throwaway_database

LOG_TAIL = 4000
POLL_S = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(home: Path) -> dict[str, str]:
    """What every component of one deployment shares: its home, free ports, one set of secrets
    (a token the scheduler signs must verify in the api-server), quick DAG-folder refreshes."""
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST", "CONSENT_GATE"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "CONSENT_GATE_AIRFLOW_PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # The scheduler creates no run of its own (no "latest interval" run of the daily DAG, no hourly
            # sweep): only the runs a test asks for exist, so none competes for the CPU or the publish
            # pool. Backfill runs are created by `backfill create`, and runs of partition-aware asset
            # consumers by their own scheduler step, which this limit does not apply to.
            "AIRFLOW__SCHEDULER__MAX_DAGRUNS_TO_CREATE_PER_LOOP": "0",
        }
    )
    return env


class Deployment:
    """Airflow processes of one deployment; each in its own process group, all stopped on exit."""

    def __init__(self, home: Path, env: dict[str, str], command: list[str] | None = None) -> None:
        self.home, self.env = home, env
        self.command = command or [sys.executable, "-m", "airflow"]
        self.processes: dict[str, subprocess.Popen] = {}

    def airflow(self, *args: str, timeout: int = 300) -> str:
        done = subprocess.run([*self.command, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stderr[-LOG_TAIL:]}"
        return done.stdout

    def start(self, name: str, *args: str) -> None:
        with open(self.home / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(
                [*self.command, *args], env=self.env, cwd=self.home,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def start_local_components(self) -> None:
        """api-server, then scheduler and dag-processor: `airflow standalone` minus the triggerer. The
        scheduler starts once the api-server answers: a task started before that fails its first try."""
        port = self.env["AIRFLOW__API__PORT"]
        self.start("api-server", "api-server", "--host", "127.0.0.1", "--port", port, "--workers", "1")
        self.wait_for("the api-server", self.api_up, 180)
        self.start("scheduler", "scheduler", "--skip-serve-logs")
        self.start("dag-processor", "dag-processor")

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{self.log(name)[-LOG_TAIL:]}", pytrace=False)

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-LOG_TAIL // 2 :]}" for name in self.processes)

    def wait_for(self, what: str, condition: Callable[[], Any], timeout: float) -> Any:
        """Poll `condition` until truthy; a component that exits meanwhile fails the test at once.
        The timeout is a last resort against a hang, not a speed assertion."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            value = condition()
            if value:
                return value
            time.sleep(POLL_S)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}", pytrace=False)

    def api_up(self) -> bool:
        import urllib.request

        try:
            urllib.request.urlopen(f"{self.env['AIRFLOW__API__BASE_URL']}/api/v2/monitor/health", timeout=3).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM every process group this deployment started, then SIGKILL what is left."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
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


# --- the metadata database ---------------------------------------------------------------------------


def postgres_admin_url() -> str | None:
    """The local PostgreSQL server's admin URL, or None; under CI=true its absence fails the test."""
    from tests.conftest import POSTGRES_HINT, local_postgres_admin_url, service_unavailable

    url = local_postgres_admin_url()
    if url is None and os.environ.get("CI", "").lower() in ("true", "1"):
        service_unavailable("PostgreSQL on 127.0.0.1:5432 (the scheduler tests' metadata DB)", POSTGRES_HINT)
    return url


def migrate(url: str, home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST"))}
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"airflow db migrate failed:\n{done.stderr[-LOG_TAIL:]}"


@pytest.fixture(scope="session")
def migrated_postgres_template(tmp_path_factory) -> Iterator[tuple[str, str] | None]:
    """(admin URL, template database name) of a session-wide migrated Airflow metadata database."""
    admin_url = postgres_admin_url()
    if admin_url is None:
        yield None
        return
    with throwaway_database(admin_url, "consent_gate_airflow_template") as url:
        migrate(url, tmp_path_factory.mktemp("airflow-migrate"))
        yield admin_url, sa.make_url(url).database


@contextmanager
def metadata_database(template: tuple[str, str] | None, home: Path) -> Iterator[str]:
    """A migrated metadata database for one deployment: a PostgreSQL copy of the template, or SQLite."""
    if template is None:
        url = f"sqlite:///{home}/airflow.db"
        migrate(url, home)
        yield url
        return
    admin_url, template_name = template
    name = f"consent_gate_airflow_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


PROJECT_DAGS = PROJECT / "dags"
