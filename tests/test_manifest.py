"""The manifest model: one writer per version, the JSON Schema, and readers that refuse a nonconforming one.

(Every manifest the rest of the suite writes is checked against the schema by conftest's
`every_manifest_conforms`.) Invalid manifests are written under a `nonconforming` folder.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from consent_gate.config import Policy, RunSettings
from consent_gate.manifest import Manifest, abandoned_manifest, swept_version
from consent_gate.manifest_schema import ManifestInvalid, check_manifest, manifest_problems
from consent_gate.publish import OutputStore
from consent_gate.stores import storage_for
from consent_gate.verify import VerificationError, verify_published_day
from tests.builders import manifest
from tests.conftest import NONCONFORMING

pytestmark = pytest.mark.unit

DAY = "2026-11-03"
SHA = "0" * 64
SECRET_VALUE = "value-that-must-not-be-echoed"


def published() -> dict[str, Any]:
    return manifest(DAY)


def test_a_manifest_round_trips_through_the_model_and_conforms():
    data = published()
    assert Manifest.from_json(data).to_json() == data
    assert manifest_problems(data) == []


def test_the_sweep_writes_a_new_version_and_leaves_the_previous_one_untouched():
    previous = Manifest.from_json(published())
    before = copy.deepcopy(previous.to_json())
    purge = {
        "partition": DAY, "sweep_id": "sweep__20261121T000000__ffff0000", "as_of": "2026-11-21T00:00:00+00:00",
        "purged_at": "2026-11-21T00:00:02+00:00", "rows_before": 4, "rows_removed": 1,
        "removed_by_reason": {"user_not_consented": 1}, "revocations": [], "max_latency_seconds": None,
        "manifest": f"_audit/dt={DAY}/manifest.json",
    }  # fmt: skip
    outputs = [{"path": f"content/dt={DAY}/part-0000.vffff0000.parquet", "sha256": SHA, "bytes": 8, "rows": 3}]
    swept = swept_version(previous, purge, outputs).to_json()
    assert previous.to_json() == before  # a new version, not an edit of the old one
    assert swept["counts"]["content"]["published"] == 3
    assert swept["counts"]["content"]["excluded"] == {"private_message": 1, "user_not_consented": 1}
    assert swept["version"] == purge["sweep_id"] and swept["outputs"] == outputs
    assert swept["sweeps"] == [{k: v for k, v in purge.items() if k != "manifest"}]
    assert manifest_problems(swept) == []


def test_an_abandoned_attempt_conforms():
    kept = ("run_id", "dag_run_id", "attempt", "partition", "code_version", "policy", "consent", "started_at")
    run = {k: v for k, v in published().items() if k in kept}
    record = abandoned_manifest(run, "abandoned").to_json()
    assert record["status"] == "failed" and record["counts"] is None
    assert manifest_problems(record) == []


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m["counts"]["content"].update(published=SECRET_VALUE), "counts"),
        (lambda m: m.update(status=SECRET_VALUE), "status"),
        (lambda m: m.pop("attempt"), "attempt"),
        (lambda m: m["outputs"][0].update(path=SECRET_VALUE), "outputs/0/path"),
    ],
)
def test_a_nonconforming_manifest_is_refused_naming_the_field_never_the_value(edit, field):
    data = published()
    edit(data)
    with pytest.raises(ManifestInvalid) as refused:
        check_manifest(data, f"_audit/dt={DAY}/manifest.json")
    message = str(refused.value)
    assert f"_audit/dt={DAY}/manifest.json" in message and field in message
    assert SECRET_VALUE not in message


def write_nonconforming_day(tmp_path: Path) -> OutputStore:
    out = tmp_path / NONCONFORMING / "out"
    manifest = published()
    manifest["counts"]["units_in"] = SECRET_VALUE
    audit = out / f"_audit/dt={DAY}"
    (audit / "attempts").mkdir(parents=True)
    (audit / "manifest.json").write_text(json.dumps(manifest))
    (audit / "attempts" / f"{manifest['attempt']}.json").write_text(json.dumps(manifest))
    (out / f"content/dt={DAY}").mkdir(parents=True)
    return storage_for(str(out))


def test_verify_refuses_a_nonconforming_manifest_before_reading_anything(tmp_path):
    store = write_nonconforming_day(tmp_path)
    with pytest.raises(VerificationError) as refused:
        verify_published_day(store, date.fromisoformat(DAY), "sqlite:///nowhere.db", b"k" * 32, datetime.now(UTC))
    assert "counts/units_in" in str(refused.value) and SECRET_VALUE not in str(refused.value)


def test_the_auditors_view_refuses_a_nonconforming_manifest(tmp_path):
    from fastapi.testclient import TestClient

    from consent_gate.auditor_app import create_app

    store = write_nonconforming_day(tmp_path)
    settings = RunSettings(raw=str(tmp_path), out=store.root, consent_db="sqlite:///nowhere.db", policy=Policy(),
                           secret=b"k" * 32)  # fmt: skip
    app = create_app(lambda: settings, read_access=lambda _dag_id: lambda: None)
    with TestClient(app) as client:
        for page in (f"/day/{DAY}", "/"):
            response = client.get(page)
            assert response.status_code == 500, page
            assert "counts/units_in" in response.text and SECRET_VALUE not in response.text
