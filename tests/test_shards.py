"""A day split into N meeting shards publishes exactly what one shard publishes; a lost shard fails."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from datetime import date, datetime
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from consent_gate import publication, steps
from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.errors import GateCheckFailed
from consent_gate.records import parse_timestamp
from consent_gate.sources import LandingZone
from consent_gate.steps import shard_of
from consent_gate.validation import validate_stage

DAY = date(2026, 11, 2)
AS_OF = parse_timestamp("2026-11-20T00:00:00Z", "as_of")


def settings_for(sample: Path, out: str, **overrides) -> RunSettings:
    return RunSettings(
        raw=str(sample / "raw"), out=out, consent_db=f"sqlite:///{sample / 'consent.db'}", policy=Policy(),
        secret=(sample / "hmac.key").read_bytes(), **overrides,
    )  # fmt: skip


def run_sharded(settings: RunSettings, day: date, as_of: datetime, shards: int, *, skip: int | None = None) -> dict:
    """The DAG's steps in this process: one snapshot, `shards` gate_content calls, checks, publish."""
    stage = steps.snapshot_consent(settings, day, as_of, run_id=f"shards-{shards}", clock=utc_now)
    for shard in range(shards):
        if shard != skip:
            steps.gate_content(settings, stage, shard=shard, shards=shards)
    steps.aggregate_day(settings, stage)
    checks = validate_stage(settings, stage)
    failed = [c.name for c in checks if not c.passed]
    if failed:
        publication.record_failed_attempt(settings, stage, f"checks failed: {', '.join(failed)}", clock=utc_now)
        raise GateCheckFailed(f"checks failed: {', '.join(failed)}")
    return publication.publish_stage(settings, stage, clock=utc_now)


def published_tables(out: Path, day: date = DAY) -> dict[str, object]:
    audit = out / f"_audit/dt={day}"
    return {
        "content": ds.dataset(out / f"content/dt={day}", format="parquet").to_table().sort_by("artifact_id"),
        "aggregates": ds.dataset(out / f"aggregates/dt={day}", format="parquet").to_table(),
        "excluded": pq.read_table(audit / "excluded.parquet").sort_by("artifact_id"),
        "quarantine": pq.read_table(audit / "quarantine.parquet").sort_by("unit"),
    }


@pytest.mark.unit
def test_shard_of_is_stable_and_covers_every_shard():
    names = [f"meetings/dt=2026-11-02/m_{n:05d}" for n in range(400)]
    assert [shard_of(n, 4) for n in names] == [shard_of(n.rsplit("/", 1)[-1], 4) for n in names]
    assert shard_of("meetings/dt=2026-11-02/m_00001", 7) == shard_of("meetings/dt=2026-11-03/m_00001", 7)
    assert {shard_of(n, 4) for n in names} == {0, 1, 2, 3}
    assert {shard_of(n, 1) for n in names} == {0}


@pytest.mark.integration
def test_three_shards_publish_exactly_what_one_shard_publishes(sample_dir, tmp_path):
    folders = LandingZone(str(sample_dir / "raw")).meeting_folders(DAY)
    assert len({shard_of(f, 3) for f in folders}) == 3  # every shard has meetings to gate
    one = run_sharded(settings_for(sample_dir, str(tmp_path / "one")), DAY, AS_OF, 1)
    three = run_sharded(settings_for(sample_dir, str(tmp_path / "three")), DAY, AS_OF, 3)
    single, sharded = published_tables(tmp_path / "one"), published_tables(tmp_path / "three")
    assert single["content"].num_rows > 0
    for name in single:
        assert sharded[name].equals(single[name]), name
    assert three["counts"] == one["counts"]
    assert sorted(p.name for p in (tmp_path / "three/content/dt=2026-11-02").iterdir()) == [
        "part-0000.parquet", "part-0001.parquet", "part-0002.parquet",
    ]  # fmt: skip


@pytest.mark.integration
def test_a_shard_that_never_reported_fails_the_run_and_publishes_nothing(sample_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(GateCheckFailed, match="content_shards_complete"):
        run_sharded(settings_for(sample_dir, str(out)), DAY, AS_OF, 3, skip=1)
    assert not (out / "content").exists()
    (attempt,) = (out / f"_audit/dt={DAY}/attempts").glob("*.json")
    check = [c for c in json.loads(attempt.read_text())["checks"] if c["name"] == "content_shards_complete"]
    assert check and not check[0]["passed"] and "shards [0, 2]" in check[0]["detail"]


@pytest.mark.integration
def test_a_small_batch_size_changes_nothing_published(sample_dir, tmp_path, monkeypatch):
    """gate_content streams meetings in batches, each decided in parts of a bounded number of consent
    questions; where the batches and the parts break does not matter."""
    run_sharded(settings_for(sample_dir, str(tmp_path / "big")), DAY, AS_OF, 1)
    parts: list[int] = []
    asking_parts = steps.asking_parts

    def counted(artifacts, limit):
        split = asking_parts(artifacts, limit)
        parts.append(len(split))
        return split

    monkeypatch.setattr(steps, "QUESTIONS_PER_PART", 20)
    monkeypatch.setattr(steps, "asking_parts", counted)
    run_sharded(settings_for(sample_dir, str(tmp_path / "small"), batch_size=7), DAY, AS_OF, 2)
    assert max(parts) > 1  # some batch was decided in parts
    big, small = published_tables(tmp_path / "big"), published_tables(tmp_path / "small")
    assert all(small[name].equals(big[name]) for name in big)


# --- `run_day` in worker processes (`consent-gate run --workers`) ----------------------------------


@pytest.mark.unit
def test_workers_for_a_day_one_per_cpu_and_at_most_one_per_thousand_meetings():
    from consent_gate.pipeline import workers_for

    assert workers_for(40, 8) == 1  # the sample: a worker process would cost more than it saves
    assert workers_for(999, 8) == 1
    assert workers_for(2_000, 8) == 2
    assert workers_for(10_000, 2) == 2
    assert workers_for(10_000, 1) == 1
    assert workers_for(0, 4) == 1


@pytest.mark.integration
def test_the_checks_and_the_telemetry_run_behind_the_shards():
    from consent_gate import pipeline, processes

    here = os.nice(0)
    with processes.checker() as checks:  # GX is imported there first
        assert checks.submit(os.nice, 0).result() == min(here + processes.CHECKER_NICENESS, 19)
        assert checks.submit(os.getpid).result() != os.getpid()
    with ProcessPoolExecutor(max_workers=1, mp_context=processes.worker_context()) as pool:
        assert pool.submit(_niceness_behind_the_shards).result() == min(here + pipeline.TELEMETRY_NICENESS, 19)
    assert os.nice(0) == here  # this process: untouched


def _niceness_behind_the_shards() -> int:
    from consent_gate import pipeline

    original = pipeline.aggregate_day
    pipeline.aggregate_day = lambda settings, stage: os.nice(0)  # what the telemetry worker runs at
    try:
        return pipeline._aggregate_behind_the_shards(None, None)
    finally:
        pipeline.aggregate_day = original


@pytest.mark.integration
def test_run_day_in_worker_processes_publishes_exactly_what_one_process_publishes(sample_dir, tmp_path):
    from consent_gate.pipeline import run_day

    heard: list[str] = []
    one = run_day(settings_for(sample_dir, str(tmp_path / "one")), DAY, AS_OF, run_id="one", clock=utc_now)
    two = run_day(
        settings_for(sample_dir, str(tmp_path / "two")), DAY, AS_OF, run_id="two", clock=utc_now, workers=2,
        progress=heard.append,
    )  # fmt: skip
    single, parallel = published_tables(tmp_path / "one"), published_tables(tmp_path / "two")
    assert single["content"].num_rows > 0
    for name in single:
        assert parallel[name].equals(single[name]), name
    assert two.manifest["counts"] == one.manifest["counts"]
    assert sorted(p.name for p in (tmp_path / "two/content/dt=2026-11-02").iterdir()) == [
        "part-0000.parquet",
        "part-0001.parquet",
    ]  # fmt: skip: the two shards were gated (by the worker processes)
    assert any(m.startswith("step gate_content (2 shards) + aggregate_telemetry:") for m in heard)


@pytest.mark.integration
def test_a_worker_process_that_fails_fails_the_run_closed(sample_dir, tmp_path, monkeypatch):
    """An error in a worker process reaches the run: nothing published, the failed attempt recorded."""
    import consent_gate.pipeline as pipeline
    from consent_gate.layout import SNAPSHOT_FILE

    out = tmp_path / "out"
    real_snapshot = pipeline.snapshot_consent

    def snapshot_then_lose_the_file(*args, **kwargs):  # the stage loses its snapshot file once written
        stage = real_snapshot(*args, **kwargs)
        (out / stage.root / SNAPSHOT_FILE).unlink()
        return stage

    monkeypatch.setattr(pipeline, "snapshot_consent", snapshot_then_lose_the_file)
    with pytest.raises(FileNotFoundError):  # raised by a shard's worker process, re-raised here
        pipeline.run_day(settings_for(sample_dir, str(out)), DAY, AS_OF, run_id="lost", clock=utc_now, workers=2)
    assert not (out / "content").exists()
    (attempt,) = (out / f"_audit/dt={DAY}/attempts").glob("*.json")
    record = json.loads(attempt.read_text())
    assert record["status"] == "failed" and record["failure"].startswith("FileNotFoundError")


def test_a_step_collects_garbage_rarely_and_restores_the_collector_after_it():
    import gc

    from consent_gate.steps import rare_collections

    before = gc.get_threshold()
    with rare_collections():
        assert gc.get_threshold() == (50_000, 20, 100)
    assert gc.get_threshold() == before

    @rare_collections()
    def failing() -> None:
        assert gc.get_threshold() == (50_000, 20, 100)
        raise ValueError("the step failed")

    with pytest.raises(ValueError, match="the step failed"):
        failing()
    assert gc.get_threshold() == before


@pytest.mark.integration
def test_a_run_lists_the_day_once_and_reads_each_meeting_json_twice(sample_dir, tmp_path, monkeypatch):
    """The snapshot step reads the day's subjects from meeting.json and the gate reads each meeting
    whole; the shards and the re-verification are handed the folders and subjects the snapshot step
    read, so nothing else lists the day or reads a meeting.json."""
    from collections import Counter

    from consent_gate.pipeline import run_day

    reads: Counter[str] = Counter()
    listings: Counter[date] = Counter()
    read_bytes, meeting_folders = LandingZone.read_bytes, LandingZone.meeting_folders

    def counted_read(zone: LandingZone, relative: str) -> bytes | None:
        if relative.endswith("/meeting.json"):
            reads[relative] += 1
        return read_bytes(zone, relative)

    def counted_listing(zone: LandingZone, day: date) -> list[str]:
        listings[day] += 1
        return meeting_folders(zone, day)

    monkeypatch.setattr(LandingZone, "read_bytes", counted_read)
    monkeypatch.setattr(LandingZone, "meeting_folders", counted_listing)
    outcome = run_day(settings_for(sample_dir, str(tmp_path / "out")), DAY, AS_OF, run_id="reads", clock=utc_now)
    assert outcome.published
    assert listings == {DAY: 1}
    assert len(reads) == outcome.manifest["counts"]["content"]["meetings"] > 0
    # twice: the snapshot step's and the gate's; once: a folder the gate quarantines without reading it
    assert set(reads.values()) == {1, 2} and Counter(reads.values())[2] > Counter(reads.values())[1]
