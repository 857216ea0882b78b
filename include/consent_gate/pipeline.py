"""One day through the gate: snapshot consent, gate content, aggregate telemetry, check, publish.

Each step is a function of (settings, stage) that reads and writes files in the stage, so the CLI
runs them in a row and the Airflow DAG runs each as a task, passing only the stage path along.
Nothing is published until every check has passed; a failed attempt leaves its evidence.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import consent_gate
from consent_gate import audit
from consent_gate.config import PROJECT_ROOT, Policy
from consent_gate.consent import ConsentSnapshot, refuse_future_as_of, subject_key
from consent_gate.gate import (
    CONTENT_SCHEMA,
    EXCLUDED_SCHEMA,
    REASONS,
    SPEAKERS_SCHEMA,
    WITHDRAWN_SCHEMA,
    decide,
    excluded_rows,
    published_rows,
    speaker_rows,
)
from consent_gate.keys import Keyer
from consent_gate.publish import (
    JOURNAL,
    InterruptedPublication,
    OutputStore,
    begin_publication,
    publication_committed,
    publish_folders,
    recover_day,
    settle_publication,
    versioned_names,
)
from consent_gate.records import Quarantined, parse_timestamp
from consent_gate.sources import Artifact, InputFile, LandingZone, read_meeting
from consent_gate.speakers import UNIDENTIFIED_REASONS
from consent_gate.sweep import withhold_withdrawn

QUARANTINE_SCHEMA = pa.schema([("unit", pa.string()), ("error", pa.string())])
INPUTS_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("sha256", pa.string())])
PARQUET_OPTIONS = {"compression": "zstd"}

Progress = Callable[[str], None]


class GateCheckFailed(RuntimeError):
    """A check failed: nothing was published, the attempt's evidence is kept."""


class RunRefused(RuntimeError):
    """The run cannot go ahead at all (nothing arrived, the landing zone cannot be listed): the
    published version stays as it is."""


class AttemptNotRecorded(RuntimeError):
    """A failed attempt's evidence could not be written (full disk, read-only output); says why."""


class ShrinkRefused(GateCheckFailed):
    """A rerun would replace a published day with less than half of its units (SPEC §6, revised)."""


@dataclass(frozen=True)
class RunSettings:
    raw: str
    out: str
    consent_db: str
    policy: Policy
    secret: bytes = field(repr=False)
    storage_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 20_000
    # A rerun may replace a published day with fewer than half of its units only when the operator
    # says so (`--allow-shrink`, the DAG's `allow_shrink` param): a missing partition is not a day.
    allow_shrink: bool = False

    def zone(self) -> LandingZone:
        return LandingZone(self.raw, self.storage_options)

    def store(self) -> OutputStore:
        return OutputStore(self.out, self.storage_options)


@dataclass(frozen=True)
class Stage:
    """Where one attempt at one day is staged: `<out>/_staging/dt=D/<attempt>/`."""

    day: date
    attempt: str

    @property
    def root(self) -> str:
        return f"_staging/dt={self.day.isoformat()}/{self.attempt}"

    def __truediv__(self, relative: str) -> str:
        return f"{self.root}/{relative}"


def new_attempt_id(run_id: str | None = None) -> str:
    base = run_id or f"cli__{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)
    return f"{safe}__{uuid.uuid4().hex[:8]}"


def code_version() -> str:
    """The package version, with the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{consent_gate.__version__}+{commit}" if commit else consent_gate.__version__


def _now() -> str:
    return datetime.now(UTC).isoformat()


# --- step 1: consent snapshot -------------------------------------------------------------------


SNAPSHOT_FILE = "consent/snapshot.parquet"


def snapshot_consent(
    settings: RunSettings,
    day: date,
    as_of: datetime,
    *,
    run_id: str,
    dag_run_id: str | None = None,
    progress: Progress | None = None,
) -> Stage:
    """Pin `as_of`, read the consent store once (column-wise), judge it vectorized and write the
    snapshot file into a new stage with its checksum; every later step reads that file, not the store.

    A pin later than the moment of the snapshot is refused (FutureAsOf): SPEC §3, revised 2026-11-28.
    Refused (RunRefused, nothing staged) when nothing arrived for the day: a wrong `--raw` or a partition
    not delivered yet must not publish "0 of 0" over a published day.
    """
    as_of = refuse_future_as_of(as_of, datetime.now(UTC))
    require_arrivals(settings.zone(), day)
    stage = Stage(day, new_attempt_id(run_id))
    store = settings.store()
    try:
        _write_run_record(settings, store, stage, as_of, run_id, dag_run_id, progress)
    except OSError as error:  # a full disk, a read-only output: no attempt began, so none is recorded
        store.remove(stage.root)  # a half-written stage is not left behind
        raise RunRefused(
            f"cannot open a stage under {settings.out} ({os_reason(error)}); nothing staged, nothing published"
        ) from None
    except BaseException:
        store.remove(stage.root)
        raise
    return stage


def require_arrivals(zone: LandingZone, day: date) -> None:
    """Raise RunRefused unless the day has at least one meeting folder entry or telemetry file."""
    from consent_gate.sources import NotARegularFile

    try:
        meetings = zone.meeting_folders(day)
        telemetry, refused = zone.telemetry_entries(day)
    except NotARegularFile as error:
        raise RunRefused(f"cannot read the landing zone for {day}: {error}") from None
    if not (meetings or telemetry or refused):
        raise RunRefused(
            f"nothing arrived for {day}: no meeting folder under {zone.meetings_prefix(day)}/ and no telemetry "
            f"file under {zone.telemetry_prefix(day)}/ of the landing zone; nothing published"
        )


def _write_run_record(
    settings: RunSettings, store: OutputStore, stage: Stage, as_of: datetime, run_id: str,
    dag_run_id: str | None, progress: Progress | None,
) -> None:  # fmt: skip
    import tempfile

    from consent_gate.consent_store import consent_batches
    from consent_gate.consent_vector import pseudonym_pepper, write_snapshot_file

    with tempfile.TemporaryDirectory(prefix="consent-gate-snapshot-") as local:
        path = f"{local}/snapshot.parquet"
        with consent_batches(settings.consent_db, purpose="snapshot", progress=progress) as batches:
            summary, sha256 = write_snapshot_file(batches, as_of, path, pseudonym_pepper(settings.secret))
        with open(path, "rb") as source, store.open(stage / SNAPSHOT_FILE, "wb") as target:
            while chunk := source.read(8 << 20):
                target.write(chunk)
    store.write_json(
        stage / "run.json",
        {
            "run_id": run_id,
            "dag_run_id": dag_run_id,
            "attempt": stage.attempt,
            "partition": stage.day.isoformat(),
            "started_at": _now(),
            "code_version": code_version(),
            "policy": {**asdict(settings.policy), "checksum": settings.policy.checksum},
            "consent": {
                "as_of": summary.as_of.isoformat(),
                "checksum": summary.checksum,
                "visible_events": summary.visible_events,
                "failed_closed_subjects": summary.failed_closed_subjects,
                "unreadable_rows": [asdict(row) for row in summary.unreadable],
                "snapshot_file": {"path": SNAPSHOT_FILE, "sha256": sha256, "events": summary.events},
            },
        },
    )


def load_snapshot(settings: RunSettings, stage: Stage, subjects: set[str]) -> ConsentSnapshot:
    """The stage's snapshot file, for `subjects` only (a semi-join: memory follows the day, not the
    store). The file must be the one the snapshot step wrote (its sha256 is in run.json)."""
    import tempfile

    from consent_gate.consent import UnreadableConsentRow
    from consent_gate.consent_vector import (
        SnapshotSummary,
        file_sha256,
        pseudonym,
        pseudonym_pepper,
        read_snapshot_events,
        snapshot_from_events,
    )

    store = settings.store()
    recorded = store.read_json(stage / "run.json")["consent"]
    written = recorded.get("snapshot_file")
    if written is None:
        raise GateCheckFailed("the stage has no consent snapshot file (made by an older version); rerun the day")
    pepper = pseudonym_pepper(settings.secret)
    names = {pseudonym(pepper, key): key for key in subjects}
    with tempfile.TemporaryDirectory(prefix="consent-gate-snapshot-") as local:
        path = store.local_file(stage / written["path"], local)
        if file_sha256(path) != written["sha256"]:
            raise GateCheckFailed("the stage's consent snapshot file changed since it was written; refusing to gate")
        events = read_snapshot_events(path, names)
    summary = SnapshotSummary(
        as_of=parse_timestamp(recorded["as_of"], "as_of"),
        checksum=recorded["checksum"],
        visible_events=recorded["visible_events"],
        unreadable=[UnreadableConsentRow(**row) for row in recorded["unreadable_rows"]],
        failed_closed_subjects=recorded["failed_closed_subjects"],
        events=written["events"],
    )
    return snapshot_from_events(events, summary, names)


def day_subjects(zone: LandingZone, folders: list[str]) -> set[str]:
    """Every subject_key the folders' meetings can ask consent for (the meeting's account, each
    participant's user and account): a lenient superset read from meeting.json, so the gate keeps only
    their consent in memory. An unreadable meeting.json is skipped: its folder is quarantined anyway.
    Symbolic links are never followed."""
    keys: set[str] = set()
    local = zone.url("") == zone._abs("")  # a local path: links can be seen (object stores have none)
    for folder in folders:
        relative = f"{folder}/meeting.json"
        try:
            if local and (os.path.islink(zone.url(folder)) or os.path.islink(zone.url(relative))):
                continue
            record = json.loads(zone.read_bytes(relative) or b"null")
        except Exception:  # noqa: BLE001 (any unreadable file: the gate itself quarantines it)
            continue
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("account_id"), str):
            keys.add(subject_key("account", record["account_id"]))
        participants = record.get("participants")
        for participant in participants if isinstance(participants, list) else []:
            if not isinstance(participant, dict):
                continue
            for kind, name in (("user", "user_id"), ("account", "account_id")):
                if isinstance(participant.get(name), str):
                    keys.add(subject_key(kind, participant[name]))
    return keys


# --- step 2: content ----------------------------------------------------------------------------


@dataclass
class ContentReport:
    meetings: int = 0
    units_in: int = 0
    published: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    # Why the `unidentified_speaker` transcript segments were unidentified (speakers.UNIDENTIFIED_REASONS).
    unidentified_speakers: dict[str, int] = field(default_factory=dict)


def shard_of(meeting_folder: str, shards: int) -> int:
    """A stable shard for a meeting: the same for every run, process and Python version."""
    digest = hashlib.sha256(meeting_folder.rsplit("/", 1)[-1].encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


class _ParquetSink:
    """Streams record batches into one Parquet file of the stage; opens it lazily.

    Small writes (one meeting's quarantine or input files) are buffered up to `ROW_GROUP_ROWS` rows or
    `ROW_GROUP_BYTES` and written as one row group: one tiny row group per meeting made every later
    reader of the file (reconciliation, the audit merge) pay per-row-group overhead, in time and memory.
    """

    ROW_GROUP_ROWS = 65_536
    ROW_GROUP_BYTES = 16 << 20

    def __init__(self, store: OutputStore, relative: str, schema: pa.Schema) -> None:
        self.store, self.relative, self.schema = store, relative, schema
        self._handle: Any = None
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[pa.Table] = []
        self._buffered = (0, 0)  # rows, bytes
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._buffer.append(table)
        self._buffered = (self._buffered[0] + table.num_rows, self._buffered[1] + table.nbytes)
        self.rows += table.num_rows
        if self._buffered[0] >= self.ROW_GROUP_ROWS or self._buffered[1] >= self.ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._handle = self.store.open(self.relative, "wb")
            self._writer = pq.ParquetWriter(self._handle, self.schema, **PARQUET_OPTIONS)
        self._writer.write_table(pa.concat_tables(self._buffer))
        self._buffer, self._buffered = [], (0, 0)

    def close(self) -> None:
        try:
            self._flush()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._handle.close()


def gate_content(
    settings: RunSettings, stage: Stage, *, shard: int = 0, shards: int = 1, progress: Progress | None = None
) -> ContentReport:
    """Gate the day's meetings of one shard into staged content, exclusions and quarantine."""
    zone, store = settings.zone(), settings.store()
    keyer = Keyer(settings.secret)
    folders = [f for f in zone.meeting_folders(stage.day) if shard_of(f, shards) == shard]
    snapshot = load_snapshot(settings, stage, day_subjects(zone, folders))
    content = _ParquetSink(store, stage / f"content/part-{shard:04d}.parquet", CONTENT_SCHEMA)
    excluded = _ParquetSink(store, stage / f"audit/excluded/part-{shard:04d}.parquet", EXCLUDED_SCHEMA)
    quarantine = _ParquetSink(store, stage / f"audit/quarantine/content-{shard:04d}.parquet", QUARANTINE_SCHEMA)
    inputs = _ParquetSink(store, stage / f"audit/inputs/meetings-{shard:04d}.parquet", INPUTS_SCHEMA)
    speakers = _ParquetSink(store, stage / f"audit/speakers/part-{shard:04d}.parquet", SPEAKERS_SCHEMA)
    report = ContentReport(meetings=len(folders))
    batch: list[Artifact] = []
    reasons: Counter[str] = Counter()  # counted as decided; the reconciliation recounts from the files
    unidentified: Counter[str] = Counter()

    def flush() -> None:
        decisions = decide(batch, snapshot)
        content.write(published_rows(batch, decisions, keyer, snapshot.as_of))
        excluded.write(excluded_rows(batch, decisions))
        speakers.write(speaker_rows(batch))
        unidentified.update(a.unidentified_reason for a in batch if a.unidentified_reason is not None)
        reasons.update(d.reason for d in decisions if d.reason is not None)
        batch.clear()

    try:
        for number, folder in enumerate(folders, start=1):
            read = read_meeting(zone, folder, stage.day)
            report.units_in += read.units_in
            quarantine.write(_quarantine_table(read.quarantine))
            inputs.write(_inputs_table(read.files))
            batch.extend(read.artifacts)
            if len(batch) >= settings.batch_size:
                flush()
            if progress and number % 1000 == 0:
                progress(f"shard {shard}: {number}/{len(folders)} meetings gated")
        flush()
    finally:
        for sink in (content, excluded, quarantine, inputs, speakers):
            sink.close()
    report.published = content.rows
    report.quarantined = quarantine.rows
    report.excluded = dict(sorted(reasons.items()))
    report.unidentified_speakers = dict(sorted(unidentified.items()))
    store.write_json(stage / f"reports/content-{shard:04d}.json", {**asdict(report), "shard": shard, "shards": shards})
    return report


def _quarantine_table(units: list[Quarantined]) -> pa.Table:
    return pa.Table.from_pylist([asdict(u) for u in units], schema=QUARANTINE_SCHEMA)


def _inputs_table(files: list[InputFile]) -> pa.Table:
    return pa.Table.from_pylist([asdict(f) for f in files], schema=INPUTS_SCHEMA)


# --- step 3: telemetry --------------------------------------------------------------------------


def aggregate_day(settings: RunSettings, stage: Stage) -> dict[str, int]:
    """Aggregate the day's telemetry into staged groups; the counts go to the stage."""
    from consent_gate.aggregates import AGGREGATE_SCHEMA, GroupValues, aggregate_telemetry

    zone, store = settings.zone(), settings.store()
    relative, refused = zone.telemetry_entries(stage.day)
    result = aggregate_telemetry(
        [zone.url(r) for r in relative],
        landing_root=zone.root,
        day=stage.day,
        k=settings.policy.k_min_distinct_users,
        storage_options=settings.storage_options,
        values=GroupValues.from_policy(settings.policy),
        refused=refused,
    )
    groups = _ParquetSink(store, stage / "aggregates/part-0000.parquet", AGGREGATE_SCHEMA)
    quarantine = _ParquetSink(store, stage / "audit/quarantine/telemetry.parquet", QUARANTINE_SCHEMA)
    inputs = _ParquetSink(store, stage / "audit/inputs/telemetry.parquet", INPUTS_SCHEMA)
    try:
        groups.write(result.groups)
        quarantine.write(_quarantine_table(result.quarantine))
        inputs.write(_inputs_table([_hash_input(zone, r) for r in relative]))
    finally:
        for sink in (groups, quarantine, inputs):
            sink.close()
    counts = asdict(result.counts)
    store.write_json(stage / "reports/telemetry.json", counts)
    return counts


def _hash_input(zone: LandingZone, relative: str) -> InputFile:
    digest = hashlib.sha256()
    size = 0
    with zone.open_binary(relative) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return InputFile(relative, size, digest.hexdigest())


# --- step 4: checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str


def staged_counts(settings: RunSettings, stage: Stage) -> dict[str, Any]:
    """The counts the manifest reports, summed over the stage's shard reports."""
    store = settings.store()
    content = ContentReport()
    excluded: Counter[str] = Counter()
    unidentified: Counter[str] = Counter()
    for path in store.files(stage / "reports", ".json"):
        if path.rsplit("/", 1)[-1].startswith("content-"):
            part = store.read_json(path)
            content.meetings += part["meetings"]
            content.units_in += part["units_in"]
            content.published += part["published"]
            content.quarantined += part["quarantined"]
            excluded.update(part["excluded"])
            unidentified.update(part.get("unidentified_speakers", {}))
    content.excluded = {reason: excluded.get(reason, 0) for reason in REASONS}
    content.unidentified_speakers = {reason: unidentified.get(reason, 0) for reason in UNIDENTIFIED_REASONS}
    telemetry = store.read_json(stage / "reports/telemetry.json")
    units = content.units_in + telemetry["lines_read"]
    quarantined = content.quarantined + telemetry["quarantined"]
    return {
        "content": asdict(content),
        "telemetry": telemetry,
        "units_in": units,
        "quarantined": quarantined,
        "quarantine_ratio": quarantined / units if units else 0.0,
    }


def shards_check(settings: RunSettings, stage: Stage) -> CheckResult:
    """Every shard of the day reported exactly once, all with the same shard count: none was lost."""
    store = settings.store()
    reports = [store.read_json(p) for p in store.files(stage / "reports", ".json") if "/content-" in p]
    counts = {r.get("shards", 1) for r in reports}
    seen = sorted(r.get("shard", 0) for r in reports)
    expected = list(range(next(iter(counts)))) if len(counts) == 1 else None
    return CheckResult(
        "content_shards_complete",
        expected is not None and seen == expected,
        f"{len(reports)} shard report(s) for shard count(s) {sorted(counts)}: shards {seen}",
    )


def _transcript_rows(store: OutputStore, paths: list[str]) -> int:
    rows = 0
    for path in paths:
        with store.open(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=["artifact_type"]):
                rows += pc.sum(pc.equal(batch.column(0), "transcript_segment")).as_py() or 0
    return rows


def _speakers_check(store: OutputStore, stage: Stage, content: dict[str, Any]) -> CheckResult:
    """`explain` answers from the speakers evidence: it must cover every transcript segment gated, and
    its unidentified rows must be exactly the `unidentified_speaker` exclusions, by reason as reported."""
    segments = _transcript_rows(store, store.files(stage / "content", ".parquet"))
    segments += _transcript_rows(store, store.files(stage / "audit/excluded", ".parquet"))
    paths = store.files(stage / "audit/speakers", ".parquet")
    evidence = store.parquet_rows(paths)
    by_reason: Counter[str] = Counter()
    for path in paths:
        with store.open(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=["unidentified_reason"]):
                by_reason.update(r for r in batch.column(0).to_pylist() if r is not None)
    reported = {reason: n for reason, n in content["unidentified_speakers"].items() if n}
    unidentified, excluded = sum(by_reason.values()), content["excluded"].get("unidentified_speaker", 0)
    return CheckResult(
        "speakers_evidence_reconciles",
        evidence == segments and dict(by_reason) == reported and unidentified == excluded,
        f"speakers evidence rows {evidence} = transcript segments published or excluded {segments}; "
        f"unidentified {unidentified} = unidentified_speaker exclusions {excluded}",
    )


def reconciliation_checks(settings: RunSettings, stage: Stage) -> list[CheckResult]:
    """SPEC §3: every unit ends in exactly one outcome, counted from what was actually written."""
    store = settings.store()
    counts = staged_counts(settings, stage)
    content, telemetry = counts["content"], counts["telemetry"]
    published = store.parquet_rows(store.files(stage / "content", ".parquet"))
    excluded = store.parquet_rows(store.files(stage / "audit/excluded", ".parquet"))
    quarantined = store.parquet_rows(
        [p for p in store.files(stage / "audit/quarantine", ".parquet") if "/content-" in p]
    )
    accounted = published + excluded + quarantined
    checks = [
        CheckResult(
            "content_reconciles",
            accounted == content["units_in"]
            and published == content["published"]
            and excluded == sum(content["excluded"].values()),  # the reported reasons cover every excluded row
            f"units in {content['units_in']} = published {published} + excluded {excluded} "
            f"+ quarantined {quarantined} ({accounted})",
        ),
        shards_check(settings, stage),
        _speakers_check(store, stage, content),
    ]
    aggregated = 0
    for path in store.files(stage / "aggregates", ".parquet"):
        with store.open(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=["event_count"]):
                aggregated += sum(batch.column("event_count").to_pylist())
    outcomes = (
        telemetry["aggregated"] + telemetry["suppressed_events"] + telemetry["out_of_partition"]
        + telemetry.get("duplicate", 0) + telemetry["quarantined"]
    )  # fmt: skip
    checks.append(
        CheckResult(
            "telemetry_reconciles",
            outcomes == telemetry["lines_read"] and aggregated == telemetry["aggregated"],
            f"lines read {telemetry['lines_read']} = aggregated {telemetry['aggregated']} (published groups "
            f"hold {aggregated}) + suppressed {telemetry['suppressed_events']} + out of partition "
            f"{telemetry['out_of_partition']} + duplicate {telemetry.get('duplicate', 0)} + quarantined "
            f"{telemetry['quarantined']}",
        )
    )
    ratio, limit = counts["quarantine_ratio"], settings.policy.max_quarantine_ratio
    checks.append(
        CheckResult(
            "quarantine_ratio",
            ratio <= limit,
            f"{counts['quarantined']} of {counts['units_in']} units quarantined ({ratio:.4%}; limit {limit:.2%})",
        )
    )
    # A telemetry file that breaks mid-way loses an unknown number of lines: no ratio can bound
    # that loss, so the day is not published until the file is repaired or removed upstream. Counted by
    # the step itself, never inferred from unit names (a file name may hold ':').
    broken = telemetry.get("unreadable_files", 0)
    checks.append(
        CheckResult("telemetry_files_complete", broken == 0, f"{broken} telemetry file(s) could not be read to the end")
    )
    return checks


def validate_stage(settings: RunSettings, stage: Stage) -> list[CheckResult]:
    """Every check the stage must pass before publication; the results go to the stage."""
    from consent_gate.validation import evidence_checks

    checks = reconciliation_checks(settings, stage)
    checks += evidence_checks(settings, stage)  # GX suites + independent re-verification, reports in audit/
    settings.store().write_json(stage / "reports/checks.json", [asdict(c) for c in checks])
    return checks


# --- step 5: publication ------------------------------------------------------------------------


def build_manifest(settings: RunSettings, stage: Stage, status: str) -> dict[str, Any]:
    store = settings.store()
    run = store.read_json(stage / "run.json")
    checks_file = stage / "reports/checks.json"
    checks = store.read_json(checks_file) if store.exists(checks_file) else []
    try:
        counts = staged_counts(settings, stage)
    except (FileNotFoundError, KeyError):
        counts = None
    merged = stage / "audit/inputs.parquet"
    inputs = [merged] if store.exists(merged) else store.files(stage / "audit/inputs", ".parquet")
    return {
        **{k: run[k] for k in ("run_id", "dag_run_id", "attempt", "partition", "code_version", "policy")},
        "as_of": run["consent"]["as_of"],
        "consent": run["consent"],
        "status": status,
        "inputs": {"files": store.parquet_rows(inputs), "listed_in": "inputs.parquet"},
        "counts": counts,
        "checks": checks,
        "started_at": run["started_at"],
        "ended_at": _now(),
    }


def _merge_parquet(store: OutputStore, sources: list[str], target: str, schema: pa.Schema) -> None:
    """Concatenate a stage's part files into one audit file (always written, even when empty)."""
    with store.open(target, "wb") as handle, pq.ParquetWriter(handle, schema, **PARQUET_OPTIONS) as writer:
        for path in sources:
            with store.open(path) as source:
                writer.write_table(pq.read_table(source, schema=schema))


def _finish_audit(settings: RunSettings, stage: Stage) -> None:
    store = settings.store()
    evidence = {
        "excluded": EXCLUDED_SCHEMA,
        "withdrawn": WITHDRAWN_SCHEMA,
        "quarantine": QUARANTINE_SCHEMA,
        "inputs": INPUTS_SCHEMA,
        "speakers": SPEAKERS_SCHEMA,
    }
    for name, schema in evidence.items():
        _merge_parquet(store, store.files(stage / f"audit/{name}", ".parquet"), stage / f"audit/{name}.parquet", schema)
        store.remove(stage / f"audit/{name}")


def _output_files(settings: RunSettings, stage: Stage) -> list[dict[str, Any]]:
    store = settings.store()
    outputs = []
    for folder in ("content", "aggregates", "audit"):
        target = f"_audit/dt={stage.day.isoformat()}" if folder == "audit" else f"{folder}/dt={stage.day.isoformat()}"
        for path in store.files(stage / folder, ".parquet"):
            outputs.append(store.output_entry(path, f"{target}/{path.rsplit('/', 1)[-1]}"))
    return outputs


def record_failed_attempt(settings: RunSettings, stage: Stage, reason: str) -> str | None:
    """End an attempt that will not publish: keep its evidence under `_audit/dt=D/attempts/` (once),
    then delete its stage, so no staged content outlives its run (a revocation could not reach it).

    Returns the evidence path; None when the stage was already gone (published, or ended before). When
    the output cannot be written (a full disk, a read-only mount) the stage is still deleted if it can
    be, and AttemptNotRecorded says plainly what was and was not left behind; nothing half-written stays.
    """
    try:
        return _record_failed_attempt(settings, stage, reason)
    except Exception as error:  # noqa: BLE001  a full disk, a read-only mount, a stage cut short by either
        store = settings.store()
        store.remove(stage.root)
        left = (
            f"its stage {stage.root} could not be deleted either: delete it, or the sweep will once it is older "
            "than max_stage_age_hours"
            if store.exists(stage.root)
            else "its stage was deleted"
        )
        raise AttemptNotRecorded(
            f"the failed attempt's evidence could not be written under {settings.out} ({_why(error)}); {left}"
        ) from None


def _why(error: Exception) -> str:
    return os_reason(error) if isinstance(error, OSError) else f"{type(error).__name__}: the stage is incomplete"


def os_reason(error: OSError) -> str:
    """An OSError in a few words, without the paths it names."""
    code = errno.errorcode.get(error.errno or 0, type(error).__name__)
    return f"{code}: {error.strerror}" if error.strerror else code


def _record_failed_attempt(settings: RunSettings, stage: Stage, reason: str) -> str | None:
    """End an attempt that will not publish: keep its evidence under `_audit/dt=D/attempts/` (once),
    then delete its stage, so no staged content outlives its run (a revocation could not reach it).

    Under the day lock an interrupted publication of the day is first finished or undone, so a stage
    is never deleted half-exchanged. Returns the evidence path; None when the stage was already gone
    (published, or ended before) and there is nothing to record.
    """
    store = settings.store()
    day = stage.day.isoformat()
    evidence = f"_audit/dt={day}/attempts/{stage.attempt}.json"
    with store.day_lock(day):
        recover_day(store, day)
        if not store.exists(stage / "run.json"):
            store.remove(stage.root)
            return evidence if store.exists(evidence) else None
        if not store.exists(evidence):
            manifest = build_manifest(settings, stage, status="failed")
            manifest["failure"] = reason
            _keep_failed_attempt(store, stage, manifest)
        store.remove(stage.root)
    return evidence


def _keep_failed_attempt(store: OutputStore, stage: Stage, manifest: dict[str, Any]) -> str:
    """Write a failed attempt's manifest and reports under `_audit/dt=D/attempts/` (day lock held)."""
    target = f"_audit/dt={stage.day.isoformat()}/attempts/{stage.attempt}.json"
    store.write_json(target, manifest)
    audit.keep_failed_attempt(store, stage / "audit", target.removesuffix(".json"), manifest)
    return target


def publish_stage(settings: RunSettings, stage: Stage) -> dict[str, Any]:
    """Publish a validated stage: content, aggregates, then the audit evidence, each atomically."""
    store = settings.store()
    day = stage.day.isoformat()
    if not store.exists(stage / "reports/checks.json"):
        published = f"_audit/dt={day}/manifest.json"
        if store.exists(published) and store.read_json(published).get("attempt") == stage.attempt:
            return store.read_json(published)  # a retry after this attempt was published in full
        raise InterruptedPublication(f"stage {stage.attempt} of {day} is gone or was never validated; rerun the day")
    checks = store.read_json(stage / "reports/checks.json")
    failed = [c["name"] for c in checks if not c["passed"]]
    if failed:
        raise GateCheckFailed(f"refusing to publish: checks failed: {', '.join(failed)}")
    with store.day_lock(day):  # held from the no-resurrection check on, so no sweep runs in between
        # A publication killed mid-way (this attempt's earlier try, or another's) is undone first.
        interrupted = recover_day(store, day)
        if interrupted.get(stage.root) == "published":  # killed after its commit: it is published
            manifest = read_manifest(store, stage.day)
        elif stage.root in interrupted:
            raise InterruptedPublication(
                f"an earlier try to publish attempt {stage.attempt} of {day} was interrupted and rolled back; "
                "the previous version stands; rerun the day for a new snapshot"
            )
        else:
            if not settings.allow_shrink:
                refuse_shrink(store, stage, staged_counts(settings, stage)["units_in"])
            begin_publication(store, stage.root)
            try:
                manifest = _publish_locked(settings, stage)
            except BaseException as error:
                _abandon_publication(settings, stage, error)
                raise
    audit.write_index(store)
    return manifest


def refuse_shrink(store: OutputStore, stage: Stage, units_in: int) -> None:
    """ShrinkRefused when the published version of the day holds more than twice `units_in` units."""
    published = f"_audit/dt={stage.day.isoformat()}/manifest.json"
    if not store.exists(published):
        return
    previous = (store.read_json(published).get("counts") or {}).get("units_in") or 0
    if units_in * 2 < previous:
        raise ShrinkRefused(
            f"refusing to replace the published {stage.day} ({previous} units) with {units_in} units, less than "
            "half; if the day really shrank, rerun with --allow-shrink (DAG param allow_shrink)"
        )


def _abandon_publication(settings: RunSettings, stage: Stage, error: BaseException) -> None:
    """A publication that raised (day lock held): undo what it exchanged, then keep its evidence.
    Past its commit only the cleanup failed: the new version is published; it is finished instead."""
    store, day = settings.store(), stage.day.isoformat()
    complete = not store.exists(f"{stage.root}/{JOURNAL}")  # begun before; dropped only once complete
    if complete or publication_committed(store, stage.root):
        recover_day(store, day)
        store.remove(stage.root)
        return
    try:
        manifest: dict[str, Any] | None = build_manifest(settings, stage, status="failed")
        manifest["failure"] = f"publication failed: {type(error).__name__}: {error}"
    except Exception:  # the evidence is best effort; the original error is what the caller sees
        manifest = None
    settle_publication(store, stage.root)  # undone: the previous version is whole again
    try:
        if manifest is not None:
            _keep_failed_attempt(store, stage, manifest)
    except Exception:
        pass
    finally:
        store.remove(stage.root)


def _publish_locked(settings: RunSettings, stage: Stage) -> dict[str, Any]:
    """The publication itself, day lock held and journal begun: stage evidence, exchange, commit."""
    store, day = settings.store(), stage.day.isoformat()
    # SPEC §7: whatever as_of was pinned, revocations visible now are applied before publishing.
    withheld = withhold_withdrawn(store, stage.root, settings.consent_db, settings.secret, datetime.now(UTC))
    if withheld["rows"]:
        failed = [c.name for c in validate_stage(settings, stage) if not c.passed]
        if failed:
            raise GateCheckFailed(f"refusing to publish: checks failed: {', '.join(failed)}")
    for folder in ("content", "aggregates"):  # object stores: never overwrite a file of the current version
        versioned_names(store, stage / folder, stage.attempt.rsplit("__", 1)[-1])
    _finish_audit(settings, stage)
    manifest = build_manifest(settings, stage, status="published")
    manifest["outputs"] = _output_files(settings, stage)
    manifest["withdrawn_since_as_of"] = withheld
    for folder in ("content", "aggregates"):
        store.makedirs(stage / folder)
    store.write_json(stage / "audit/manifest.json", manifest)
    audit.write_day_report(store, stage / "audit", manifest)
    attempts = f"_audit/dt={day}/attempts"
    store.carry_history(attempts, stage / "audit/attempts")
    store.write_json(stage / f"audit/attempts/{stage.attempt}.json", manifest)
    publish_folders(
        store,
        stage.root,
        [(stage / "content", f"content/dt={day}"), (stage / "aggregates", f"aggregates/dt={day}"),
         (stage / "audit", f"_audit/dt={day}")],  # the audit folder last: its exchange is the commit
    )  # fmt: skip
    store.remove(stage.root)
    return manifest


# --- the whole day, for the CLI -----------------------------------------------------------------


@dataclass
class RunOutcome:
    published: bool
    manifest_path: str
    manifest: dict[str, Any]
    checks: list[CheckResult]


def run_day(
    settings: RunSettings,
    day: date,
    as_of: datetime,
    *,
    run_id: str = "cli",
    dag_run_id: str | None = None,
    progress: Progress | None = None,
) -> RunOutcome:
    """All steps for one day in this process. Raises GateCheckFailed after keeping the evidence.
    `progress` hears each step's time (and the snapshot's rows read and rate)."""
    say = progress or (lambda _message: None)

    def timed(name: str, step: Callable[[], Any]) -> Any:
        started = time.monotonic()
        result = step()
        say(f"step {name}: {time.monotonic() - started:.1f} s")
        return result

    stage = timed(
        "snapshot_consent",
        lambda: snapshot_consent(settings, day, as_of, run_id=run_id, dag_run_id=dag_run_id, progress=progress),
    )
    try:
        timed("gate_content", lambda: gate_content(settings, stage, progress=progress))
        timed("aggregate_telemetry", lambda: aggregate_day(settings, stage))
        checks = timed("validate", lambda: validate_stage(settings, stage))
        if not all(c.passed for c in checks):
            failed = ", ".join(c.name for c in checks if not c.passed)
            raise GateCheckFailed(f"checks failed: {failed}")
        manifest = timed("publish", lambda: publish_stage(settings, stage))
    except BaseException as error:  # Ctrl-C too: no staged content outlives the run
        try:
            record_failed_attempt(settings, stage, f"{type(error).__name__}: {error}")
        except AttemptNotRecorded as unrecorded:  # the run's own error stays the one raised
            error.add_note(str(unrecorded))
        raise
    return RunOutcome(True, f"_audit/dt={day.isoformat()}/manifest.json", manifest, checks)


def read_manifest(store: OutputStore, day: date) -> dict[str, Any]:
    return json.loads(store.fs.cat_file(store.path(f"_audit/dt={day.isoformat()}/manifest.json")))


def project_var() -> Path:
    """The embedded default's working folder: sample data, consent DB, outputs."""
    return PROJECT_ROOT / "var"
