"""Test-wide setup: a private AIRFLOW_HOME (set before anything imports Airflow) and sample data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from consent_gate.config import RunSettings

PROJECT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="consent-gate-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
)
# Imported now, not first inside some test: Airflow's logging setup binds its handlers to the streams of the
# moment, and a test's captured stream is closed when that test ends; later log records (GX's, in any
# test after it) would then print logging errors into the next test's stderr.
import airflow  # noqa: E402, F401


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


NONCONFORMING = "nonconforming"  # a folder name: tests that write invalid manifests on purpose write them there


def written_manifests(root: Path) -> list[Path]:
    """Every manifest version under `root`: published ones and each attempt's (the day's history)."""
    found = [*root.rglob("_audit/dt=*/manifest.json"), *root.rglob("_audit/dt=*/attempts/*.json")]
    return sorted(p for p in found if NONCONFORMING not in p.parts)


@pytest.fixture(scope="session", autouse=True)
def every_manifest_conforms(tmp_path_factory) -> Iterator[None]:
    """After the session: every manifest the suite produced conforms to docs/manifest.schema.json."""
    yield
    import json

    from consent_gate.manifest_schema import manifest_problems

    problems = {}
    for path in written_manifests(tmp_path_factory.getbasetemp()):
        try:
            found = manifest_problems(json.loads(path.read_text()))
        except ValueError as error:
            found = [f"not JSON ({type(error).__name__})"]
        if found:
            problems[str(path)] = found
    assert not problems, f"manifests that do not conform to docs/manifest.schema.json: {problems}"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's metadata database, migrated once per session."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, timeout=600)
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The default sample (3 days x 40 meetings, seed 7), written once per session; read-only for tests."""
    from consent_gate.keys import create_secret_file
    from consent_gate.sample import write_sample

    folder = tmp_path_factory.mktemp("sample")
    write_sample(folder)
    create_secret_file(folder / "hmac.key")
    return folder


# --- local services (PostgreSQL, Redis): skip with an install hint, but never under CI=true -------

POSTGRES_HINT = (
    "install PostgreSQL (`apt-get install postgresql`) and run scripts/services, which starts it on "
    "127.0.0.1:5432 with trust auth for local connections"
)


def service_unavailable(what: str, install_hint: str) -> None:
    """Skip a test whose service is absent, saying how to get it; under CI=true that fails instead."""
    message = f"{what} is not reachable: {install_hint}"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def local_postgres_admin_url() -> str | None:
    """The admin URL of the local PostgreSQL server (trust auth as `postgres` or `root`), or None."""
    import sqlalchemy as sa

    for user in ("postgres", "root"):
        engine = sa.create_engine(
            f"postgresql+psycopg2://{user}@127.0.0.1:5432/postgres", connect_args={"connect_timeout": 5}
        )
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            return engine.url.render_as_string(hide_password=False)
        except sa.exc.OperationalError:
            continue
        finally:
            engine.dispose()
    return None


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the local PostgreSQL server."""
    url = local_postgres_admin_url()
    if url is None:
        service_unavailable("PostgreSQL on 127.0.0.1:5432", POSTGRES_HINT)
        raise AssertionError("unreachable")
    return url


def sample_settings(sample_dir: Path, folder: Path) -> RunSettings:
    """Run settings on the sample, with a copy of its consent store in `folder` (tests may change it)."""
    from consent_gate.config import Policy, RunSettings

    shutil.copyfile(sample_dir / "consent.db", folder / "consent.db")
    return RunSettings(
        raw=str(sample_dir / "raw"), out=str(folder / "out"), consent_db=f"sqlite:///{folder / 'consent.db'}",
        policy=Policy(), secret=(sample_dir / "hmac.key").read_bytes(),
    )  # fmt: skip


@contextmanager
def throwaway_database(admin_url: str, prefix: str = "consent_gate_test") -> Iterator[str]:
    """A new PostgreSQL database, dropped afterwards even when the body fails: its SQLAlchemy URL."""
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[str]:
    """A throwaway PostgreSQL database for one test: its SQLAlchemy URL."""
    with throwaway_database(postgres_server) as url:
        yield url
