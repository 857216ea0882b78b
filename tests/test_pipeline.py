"""The whole day on the sample: published rows, evidence, checks, reruns and failures."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.errors import GateCheckFailed
from consent_gate.gate import CONTENT_SCHEMA, REASONS
from consent_gate.pipeline import run_day
from consent_gate.records import parse_timestamp
from tests.builders import sample_secrets

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 2)
AS_OF = parse_timestamp("2026-11-20T00:00:00Z", "as_of")


def settings_for(sample: Path, out: Path, **policy) -> RunSettings:
    return RunSettings(
        raw=str(sample / "raw"), out=str(out), consent_db=f"sqlite:///{sample / 'consent.db'}",
        policy=Policy(**policy), secret=(sample / "hmac.key").read_bytes(),
    )  # fmt: skip


@pytest.fixture(scope="module")
def published(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    outcome = run_day(settings_for(sample_dir, out), DAY, AS_OF, run_id="test", clock=utc_now)
    return out, outcome


def read_content(out: Path, day: date = DAY):
    return ds.dataset(out / f"content/dt={day}", format="parquet").to_table()


def test_content_has_exactly_the_spec_columns(published):
    out, _ = published
    table = read_content(out)
    assert table.schema == CONTENT_SCHEMA
    assert table.num_rows > 0


def test_every_unit_is_published_excluded_or_quarantined_once(published):
    out, outcome = published
    audit = out / f"_audit/dt={DAY}"
    content = read_content(out).column("artifact_id").to_pylist()
    excluded = pq.read_table(audit / "excluded.parquet")
    quarantine = pq.read_table(audit / "quarantine.parquet")
    counts = outcome.manifest["counts"]["content"]
    assert len(content) == len(set(content)) == counts["published"]
    assert set(content).isdisjoint(excluded.column("artifact_id").to_pylist())
    quarantined_content = [u for u in quarantine.column("unit").to_pylist() if u.startswith("meetings/")]
    assert len(content) + excluded.num_rows + len(quarantined_content) == counts["units_in"]
    assert set(excluded.column("reason").to_pylist()) <= set(REASONS)
    assert {r: n for r, n in counts["excluded"].items() if n} == {
        r: excluded.column("reason").to_pylist().count(r) for r in set(excluded.column("reason").to_pylist())
    }


def test_the_sample_exercises_every_reason(published):
    _, outcome = published
    assert all(outcome.manifest["counts"]["content"]["excluded"][r] > 0 for r in REASONS)


def test_manifest_holds_the_evidence(published):
    out, outcome = published
    manifest = json.loads((out / f"_audit/dt={DAY}/manifest.json").read_text())
    assert manifest == json.loads(json.dumps(outcome.manifest, default=str))
    assert manifest["partition"] == "2026-11-02" and manifest["status"] == "published"
    assert parse_timestamp(manifest["as_of"], "as_of") == AS_OF
    assert len(manifest["consent"]["checksum"]) == 64 and manifest["consent"]["unreadable_rows"]
    assert manifest["policy"]["checksum"] == Policy().checksum
    assert {c["name"] for c in manifest["checks"]} >= {"content_reconciles", "telemetry_reconciles", "quarantine_ratio"}
    assert all(c["passed"] for c in manifest["checks"])
    for output in manifest["outputs"]:
        assert (out / output["path"]).exists(), output["path"]
    inputs = pq.read_table(out / f"_audit/dt={DAY}/inputs.parquet").to_pylist()
    assert len(inputs) == manifest["inputs"]["files"] > 0
    assert all(len(i["sha256"]) == 64 and i["size"] > 0 for i in inputs)


def test_no_raw_id_name_or_email_leaves_the_gate(published, sample_dir):
    out, _ = published
    secrets = sample_secrets(sample_dir)
    assert len(secrets) > 100
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    for path in files:
        blob = path.read_bytes()
        if path.suffix == ".parquet":
            blob = json.dumps(pq.read_table(path).to_pylist(), default=str).encode() + blob
        leaked = [s for s in secrets if s.encode() in blob]
        assert leaked == [], f"{path.relative_to(out)} contains raw identifiers"


def test_same_inputs_and_as_of_give_the_same_rows(published, sample_dir, tmp_path):
    out, _ = published
    run_day(settings_for(sample_dir, tmp_path), DAY, AS_OF, run_id="again", clock=utc_now)
    first, second = read_content(out), read_content(tmp_path)
    assert first.sort_by("artifact_id").equals(second.sort_by("artifact_id"))


def test_a_rerun_replaces_the_day_without_duplicates(sample_dir, tmp_path):
    settings = settings_for(sample_dir, tmp_path)
    first = run_day(settings, DAY, AS_OF, run_id="one", clock=utc_now)
    second = run_day(settings, DAY, AS_OF, run_id="two", clock=utc_now)
    table = read_content(tmp_path)
    assert table.num_rows == first.manifest["counts"]["content"]["published"]
    assert len(set(table.column("artifact_id").to_pylist())) == table.num_rows
    assert second.manifest["attempt"] != first.manifest["attempt"]
    assert not (tmp_path / "_staging" / f"dt={DAY}").exists() or not any(
        (tmp_path / "_staging" / f"dt={DAY}").iterdir()
    )
    attempts = sorted((tmp_path / f"_audit/dt={DAY}/attempts").glob("*.json"))
    assert len(attempts) == 2


def test_a_failed_check_publishes_nothing_and_keeps_the_evidence(sample_dir, tmp_path):
    good = run_day(settings_for(sample_dir, tmp_path), DAY, AS_OF, run_id="good", clock=utc_now)
    before = read_content(tmp_path)
    strict = settings_for(sample_dir, tmp_path, max_quarantine_ratio=0.0)
    with pytest.raises(GateCheckFailed, match="quarantine_ratio"):
        run_day(strict, DAY, AS_OF, run_id="strict", clock=utc_now)
    assert read_content(tmp_path).equals(before)
    manifest = json.loads((tmp_path / f"_audit/dt={DAY}/manifest.json").read_text())
    assert manifest["attempt"] == good.manifest["attempt"]
    failed = [json.loads(p.read_text()) for p in (tmp_path / f"_audit/dt={DAY}/attempts").glob("*.json")]
    (failure,) = [m for m in failed if m["status"] == "failed"]
    assert "quarantine_ratio" in failure["failure"]
    assert not [c for c in failure["checks"] if c["name"] == "quarantine_ratio" and c["passed"]]


def test_a_pinned_as_of_before_a_revocation_sees_the_older_consent(sample_dir, tmp_path):
    early = parse_timestamp("2026-11-02T00:00:00Z", "as_of")
    outcome = run_day(settings_for(sample_dir, tmp_path), DAY, early, run_id="early", clock=utc_now)
    assert outcome.manifest["as_of"] == early.isoformat()
    assert set(read_content(tmp_path).column("consent_as_of").to_pylist()) <= {early}
    late = run_day(settings_for(sample_dir, tmp_path / "late"), DAY, AS_OF, run_id="late", clock=utc_now)
    assert outcome.manifest["consent"]["visible_events"] < late.manifest["consent"]["visible_events"]


def test_the_gate_streams_in_bounded_batches_with_identical_results(published, sample_dir, tmp_path, monkeypatch):
    import dataclasses

    from consent_gate import steps

    out, _ = published
    seen: list[int] = []
    real_decide = steps.decide

    def recording_decide(artifacts, snapshot):
        seen.append(len(artifacts))
        return real_decide(artifacts, snapshot)

    monkeypatch.setattr(steps, "decide", recording_decide)
    small = dataclasses.replace(settings_for(sample_dir, tmp_path), batch_size=25)
    run_day(small, DAY, AS_OF, run_id="small-batches", clock=utc_now)
    biggest_meeting = 200  # a batch closes at the first meeting that takes it past batch_size
    assert len(seen) > 10 and max(seen) < 25 + biggest_meeting
    assert read_content(tmp_path).sort_by("artifact_id").equals(read_content(out).sort_by("artifact_id"))


def test_a_telemetry_file_broken_mid_way_blocks_publication(sample_dir, tmp_path):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(sample_dir / "raw", raw)
    part = sorted((raw / f"telemetry/dt={DAY}").glob("*.gz"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # truncated upload
    settings = settings_for(sample_dir, tmp_path / "out")
    settings = RunSettings(**{**settings.__dict__, "raw": str(raw)})
    with pytest.raises(GateCheckFailed, match="telemetry_files_complete"):
        run_day(settings, DAY, AS_OF, run_id="broken", clock=utc_now)
    assert not (tmp_path / "out/content").exists()


def test_reported_exclusion_reasons_must_cover_every_excluded_row(sample_dir, tmp_path):
    from consent_gate.checks import reconciliation_checks
    from consent_gate.steps import aggregate_day, gate_content, snapshot_consent

    settings = settings_for(sample_dir, tmp_path)
    stage = snapshot_consent(settings, DAY, AS_OF, run_id="reasons", clock=utc_now)
    gate_content(settings, stage)
    aggregate_day(settings, stage)
    assert all(c.passed for c in reconciliation_checks(settings, stage))
    report_path = tmp_path / stage.root / "reports/content-0000.json"
    report = json.loads(report_path.read_text())
    reason = next(r for r, n in report["excluded"].items() if n)
    report["excluded"][reason] -= 1  # a row excluded without its reason being counted
    report_path.write_text(json.dumps(report))
    checks = {c.name: c for c in reconciliation_checks(settings, stage)}
    assert not checks["content_reconciles"].passed


_FRESH_RUN = """
import json, sys
from datetime import date
from pathlib import Path
from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.errors import GateCheckFailed
from consent_gate import pipeline
from consent_gate.pipeline import run_day
from consent_gate.records import parse_timestamp

sample, out = Path(sys.argv[1]), Path(sys.argv[2])

def settings(folder, **policy):
    return RunSettings(raw=str(sample / "raw"), out=str(out / folder), consent_db=f"sqlite:///{sample / 'consent.db'}",
                       policy=Policy(**policy), secret=(sample / "hmac.key").read_bytes())

day, as_of = date(2026, 11, 2), parse_timestamp("2026-11-20T00:00:00Z", "as_of")
if __name__ == "__main__":
    outcome = run_day(settings("checked"), day, as_of, run_id="fresh", clock=utc_now, workers=None)
    try:
        run_day(settings("strict", max_quarantine_ratio=0), day, as_of, run_id="strict", clock=utc_now, workers=None)
        refused = None
    except GateCheckFailed as error:
        refused = str(error)

    def telemetry_breaks(*args):  # after the content checks started in the checker process
        raise OSError("telemetry landing zone unreachable")

    pipeline.aggregate_day = telemetry_breaks
    try:
        run_day(settings("broken"), day, as_of, run_id="broken", clock=utc_now, workers=None)
        broke = None
    except OSError as error:
        broke = str(error)
    print(json.dumps({"checks": {c.name: c.passed for c in outcome.checks}, "refused": refused, "broke": broke,
                      "great_expectations_here": "great_expectations" in sys.modules}))
"""


def test_a_fresh_process_checks_the_day_in_a_process_of_its_own_with_the_same_outcome(published, sample_dir, tmp_path):
    """A run in a process that has not imported Great Expectations (the command line's) hands the checks
    to a process that imported it while the day was gated. Its verdicts are the run's: a passing day
    publishes the same rows as checks run here, and a failing check still refuses the day. A run that
    fails after the content checks started leaves neither its stage nor the checks' GX folder behind."""
    import os
    import subprocess
    import sys

    program = tmp_path / "fresh_run.py"
    program.write_text(_FRESH_RUN)
    scratch = tmp_path / "tmp"  # the processes' temporary folders
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, str(program), str(sample_dir), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(scratch)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["great_expectations_here"] is False  # the checks ran elsewhere
    out, outcome = published
    assert report["checks"] == {c.name: c.passed for c in outcome.checks} and all(report["checks"].values())
    fresh = read_content(tmp_path / "checked").sort_by("artifact_id")
    assert fresh.equals(read_content(out).sort_by("artifact_id"))
    assert report["refused"] is not None and "quarantine_ratio" in report["refused"]
    assert not (tmp_path / "strict/content").exists()
    assert list((tmp_path / "strict/_audit/dt=2026-11-02/attempts").glob("*.json"))
    assert report["broke"] == "telemetry landing zone unreachable"
    assert not (tmp_path / "broken/content").exists()
    assert [p.name for p in (tmp_path / "broken/_staging/dt=2026-11-02").iterdir()] == []
    assert list((tmp_path / "broken/_audit/dt=2026-11-02/attempts").glob("*.json"))
    assert not list(scratch.glob("consent-gate-gx-*"))


def test_a_run_failing_after_the_content_checks_started_drops_them(sample_dir, tmp_path, monkeypatch):
    """In this process too (GX imported: the checks run here): what the content checks found is
    dropped with the stage, not kept for a later run of the same process."""
    import tempfile

    from consent_gate import pipeline, validation

    def telemetry_breaks(*args):
        assert validation._STARTED  # the content checks ran before the telemetry step
        raise OSError("telemetry landing zone unreachable")

    monkeypatch.setattr(pipeline, "aggregate_day", telemetry_breaks)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(OSError, match="unreachable"):
        run_day(settings_for(sample_dir, tmp_path / "out"), DAY, AS_OF, run_id="broken", clock=utc_now)
    assert validation._STARTED == {}
    assert not list((tmp_path / "tmp").glob("consent-gate-gx-*"))
    assert [p.name for p in (tmp_path / f"out/_staging/dt={DAY}").iterdir()] == []
