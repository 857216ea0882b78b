"""Test-wide setup: a private AIRFLOW_HOME (set before anything imports Airflow) and sample data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

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


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


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
