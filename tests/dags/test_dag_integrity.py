"""Every DAG file imports cleanly, with nothing mocked: a DAG reading connections at parse time fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(DAGS.glob("*.py"))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_there_are_dag_files():
    assert DAG_FILES


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_without_errors(dagbag, path):
    errors = {k: v for k, v in dagbag.import_errors.items() if Path(k).name == path.name}
    assert errors == {}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_import_no_heavy_libraries_at_top_level(path):
    top_level = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in top_level if any(lib in line for lib in ("pandas", "pyarrow", "great_expectations"))]


def test_every_dag_has_tags_owner_and_retries(dagbag):
    assert dagbag.dags
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id}"
            assert task.owner not in (None, "", "airflow"), f"{dag_id}.{task.task_id}"


def test_the_writers_of_published_data_share_the_publish_pool(monkeypatch):
    """On object stores there is no day lock: the daily publish and the sweep must never run together."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("CONSENT_GATE_PUBLISH_POOL", "consent_gate_publish")
    bag = DagBag(dag_folder=str(DAGS))
    writers = [
        bag.dags["consent_gate_daily"].get_task("publish"),
        bag.dags["consent_revocation_sweep"].get_task("sweep"),
    ]
    assert {task.pool for task in writers} == {"consent_gate_publish"}
