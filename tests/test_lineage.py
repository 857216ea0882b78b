"""OpenLineage through Airflow's provider, offline: the file transport, a real publication's manifest."""

from __future__ import annotations

import json
import re
from datetime import date

import pyarrow.dataset as ds
import pytest

from consent_gate import lineage
from consent_gate.config import utc_now
from consent_gate.pipeline import run_day
from consent_gate.records import parse_timestamp
from tests.conftest import sample_settings

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 2)


@pytest.fixture
def publication(sample_dir, tmp_path):
    settings = sample_settings(sample_dir, tmp_path)
    return settings, run_day(settings, DAY, parse_timestamp("2026-11-20T00:00:00Z", "as_of"), clock=utc_now).manifest


@pytest.fixture
def file_transport(monkeypatch, tmp_path):
    """The provider's transport set to a file, as a deployment sets it (AIRFLOW__OPENLINEAGE__TRANSPORT)."""
    pytest.importorskip("airflow.providers.openlineage", reason="the lineage extra is in requirements-dev.txt")
    from airflow.providers.openlineage import conf

    events = tmp_path / "lineage.jsonl"
    transport = {"type": "file", "log_file_path": str(events), "append": True}
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", json.dumps(transport))
    for name in dir(conf):  # the provider caches its settings; read them afresh for this test
        getattr(getattr(conf, name), "cache_clear", lambda: None)()
    yield events
    for name in dir(conf):
        getattr(getattr(conf, name), "cache_clear", lambda: None)()


def test_a_publication_reports_its_inputs_outputs_and_checks_without_content_or_ids(
    publication, file_transport, sample_dir
):
    settings, manifest = publication
    assert lineage.emit_publication(manifest, settings.raw, settings.out, settings.consent_db)
    [line] = file_transport.read_text().splitlines()
    event = json.loads(line)
    assert event["eventType"] == "COMPLETE"
    assert (event["job"]["namespace"], event["job"]["name"]) == ("consent-gate", lineage.JOB)
    inputs = {(d["namespace"], d["name"]) for d in event["inputs"]}
    assert inputs == {
        ("file", f"{sample_dir}/raw/meetings/dt={DAY}"),
        ("file", f"{sample_dir}/raw/telemetry/dt={DAY}"),
        ("sqlite", f"{settings.consent_db.removeprefix('sqlite:///')}.consent_events"),
    }
    outputs = {d["name"]: d for d in event["outputs"]}
    assert set(outputs) == {f"{settings.out}/content/dt={DAY}", f"{settings.out}/aggregates/dt={DAY}"}
    content = outputs[f"{settings.out}/content/dt={DAY}"]
    assert content["outputFacets"]["outputStatistics"]["rowCount"] == manifest["counts"]["content"]["published"]
    assertions = content["facets"]["dataQualityAssertions"]["assertions"]
    assert [(a["assertion"], a["success"]) for a in assertions] == [
        (c["name"], c["passed"]) for c in manifest["checks"]
    ]
    assert {"gx_content", "content_reconciles", "independent_verification"} <= {a["assertion"] for a in assertions}

    # no content, no ids: not one raw id of the day, not one published text
    ids = set()
    for meeting in (sample_dir / f"raw/meetings/dt={DAY}").glob("*/meeting.json"):
        ids.update(re.findall(r"\b(?:m|acct|u|p)_[0-9a-f]{8,}\b", meeting.read_text()))
    table = ds.dataset(f"{settings.out}/content/dt={DAY}").to_table()
    texts = [t for t in table.column("text").to_pylist() if t and len(t) > 12]
    keys = [k for row in table.column("account_keys").to_pylist() for k in row]
    assert ids and texts and keys
    assert not [v for v in (*ids, *texts, *keys) if v in line]


def test_without_a_transport_nothing_is_emitted_and_publication_goes_on(publication, monkeypatch):
    settings, manifest = publication
    monkeypatch.setattr(lineage, "publication_event", lambda *a: (_ for _ in ()).throw(RuntimeError("catalogue down")))
    assert lineage.emit_publication(manifest, settings.raw, settings.out, settings.consent_db) is False


def test_locations_never_carry_a_password():
    assert lineage.consent_store_location("postgresql+psycopg2://gate:s3cret@db.internal:5432/consent") == (
        "postgresql://db.internal:5432", "consent.public.consent_events",
    )  # fmt: skip
    assert lineage.dataset_location("s3://bucket/out/content/dt=2026-11-02") == (
        "s3://bucket",
        "out/content/dt=2026-11-02",
    )
