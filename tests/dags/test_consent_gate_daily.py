"""The daily DAG, run for real with dag.test() on the sample, publishes what the CLI publishes."""

from __future__ import annotations

import json
from datetime import date

import pyarrow.dataset as ds
import pytest

from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.pipeline import run_day
from consent_gate.records import parse_timestamp

pytestmark = pytest.mark.integration

AS_OF = "2026-11-20T00:00:00Z"


@pytest.fixture
def airflow_env(monkeypatch, sample_dir, tmp_path):
    out = tmp_path / "out"
    monkeypatch.setenv(
        "AIRFLOW_CONN_CONSENT_DB", json.dumps({"conn_type": "sqlite", "host": str(sample_dir / "consent.db")})
    )
    monkeypatch.setenv("AIRFLOW_VAR_CONSENT_GATE_RAW_URI", str(sample_dir / "raw"))
    monkeypatch.setenv("AIRFLOW_VAR_CONSENT_GATE_OUT_URI", str(out))
    monkeypatch.setenv("AIRFLOW_VAR_CONSENT_GATE_HMAC_KEY", (sample_dir / "hmac.key").read_text())
    return out


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.test_dag_integrity import DAGS

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.get_dag(dag_id)


def test_dag_test_publishes_the_same_rows_as_the_cli(airflow_db, airflow_env, sample_dir, tmp_path):
    dag = load_dag("consent_gate_daily")
    run = dag.test(run_conf={"day": "2026-11-02", "as_of": AS_OF})
    assert run.state == "success"
    out = airflow_env
    manifest = json.loads((out / "_audit/dt=2026-11-02/manifest.json").read_text())
    assert manifest["status"] == "published" and manifest["dag_run_id"] == run.run_id
    published = ds.dataset(out / "content/dt=2026-11-02", format="parquet").to_table()
    assert published.num_rows == manifest["counts"]["content"]["published"] > 0

    cli_out = tmp_path / "cli"
    settings = RunSettings(
        raw=str(sample_dir / "raw"), out=str(cli_out), consent_db=f"sqlite:///{sample_dir / 'consent.db'}",
        policy=Policy(), secret=(sample_dir / "hmac.key").read_bytes(),
    )  # fmt: skip
    run_day(settings, date(2026, 11, 2), parse_timestamp(AS_OF, "as_of"), clock=utc_now)
    expected = ds.dataset(cli_out / "content/dt=2026-11-02", format="parquet").to_table()
    assert published.sort_by("artifact_id").equals(expected.sort_by("artifact_id"))


def staged_files(out) -> list[str]:
    staging = out / "_staging"
    return sorted(str(p.relative_to(out)) for p in staging.rglob("*") if p.is_file()) if staging.exists() else []


def attempt_manifests(out, day: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / f"_audit/dt={day}/attempts").glob("*.json"))]


def test_a_run_whose_landing_zone_is_unreachable_stages_nothing_and_publishes_nothing(
    airflow_db, airflow_env, monkeypatch
):
    """The landing zone is unreachable: the snapshot refuses to open a stage (nothing can have arrived),
    so no task gates anything, nothing is staged and there is no attempt to end."""
    monkeypatch.setenv("AIRFLOW_VAR_CONSENT_GATE_RAW_URI", "unreachable-protocol://landing/raw")
    dag = load_dag("consent_gate_daily")
    for task in dag.tasks:
        task.retries = 0  # the failure is permanent; no need to wait out the retry delay
    run = dag.test(run_conf={"day": "2026-11-02", "as_of": AS_OF})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed"
    assert states["snapshot_consent"] == "failed" and states["publish"] != "success"
    out = airflow_env
    assert not (out / "content/dt=2026-11-02").exists() and not (out / "_audit/dt=2026-11-02/manifest.json").exists()
    assert staged_files(out) == []


def test_a_run_whose_checks_fail_publishes_nothing_and_leaves_no_staged_content(
    airflow_db, airflow_env, monkeypatch, tmp_path
):
    strict = tmp_path / "strict-policy.yaml"
    strict.write_text("version: strict\nmax_quarantine_ratio: 0\nk_min_distinct_users: 10\n")
    monkeypatch.setenv("AIRFLOW_VAR_CONSENT_GATE_POLICY_FILE", str(strict))
    run = load_dag("consent_gate_daily").test(run_conf={"day": "2026-11-02", "as_of": AS_OF})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed" and states["validate"] == "failed" and states["end_attempt"] == "success"
    out = airflow_env
    assert not (out / "content/dt=2026-11-02").exists()
    assert staged_files(out) == []
    [attempt] = attempt_manifests(out, "2026-11-02")
    assert attempt["status"] == "failed" and "quarantine_ratio" in attempt["failure"]
