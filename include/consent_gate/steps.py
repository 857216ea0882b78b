"""The bodies of the day's steps: snapshot consent, gate content, aggregate telemetry.

Each step is a function of (settings, stage) that reads and writes files in the stage, so the CLI
runs them in a row and the Airflow DAG runs each as a task, passing only the stage path along.
"""

from __future__ import annotations

import gc
import hashlib
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import consent_gate
from consent_gate.aggregates import AGGREGATE_SCHEMA, aggregate_telemetry
from consent_gate.artifacts import Artifact
from consent_gate.config import PROJECT_ROOT, Clock, RunSettings
from consent_gate.consent import ConsentSnapshot, refuse_future_as_of, subject_ids_of, subject_key
from consent_gate.consent_ledger import (
    Ledger,
    ledger_from_json,
    ledger_json,
    renewal_due,
    run_consent,
    store_identity,
    uncovered_markers,
    whole_store_ledger,
)
from consent_gate.consent_vector import (
    SnapshotSummary,
    file_sha256,
    pseudonym,
    pseudonym_pepper,
    read_snapshot_events,
    semi_join,
    snapshot_from_events,
)
from consent_gate.errors import GateCheckFailed, RunRefused, os_reason
from consent_gate.gate import (
    CONTENT_SCHEMA,
    EXCLUDED_SCHEMA,
    SPEAKERS_SCHEMA,
    asking_parts,
    decide,
    excluded_rows,
    published_rows,
    speaker_rows,
)
from consent_gate.keys import Keyer
from consent_gate.layout import (
    CONSENT_LEDGER,
    RUN_RECORD,
    SNAPSHOT_FILE,
    SNAPSHOT_SUBJECTS,
    TELEMETRY_REPORT,
    Stage,
    content_report,
    file_name,
    new_id,
    part_name,
)
from consent_gate.parquet import ParquetSink
from consent_gate.publish import OutputStore
from consent_gate.records import Quarantined, load_json_leniently, parse_timestamp
from consent_gate.sources import HashingReader, InputFile, LandingZone, NotARegularFile, read_meeting
from consent_gate.telemetry import GroupValues

QUARANTINE_SCHEMA = pa.schema([("unit", pa.string()), ("error", pa.string())])


INPUTS_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("sha256", pa.string())])


Progress = Callable[[str], None]


@contextmanager
def rare_collections() -> Iterator[None]:
    """The block collects young garbage every 50,000 allocations, not 700 (Python's default). A step
    makes objects by the million and frees nearly all by reference counting, while each collection
    walks the young ones and, every 100th, every object of the process: the collector cost 13% of a gate
    shard (0.79 of 6.3 s at 10k meetings), then 0.10 s. Cycles are still collected; the thresholds
    are restored after the block (an Airflow task may run in a process that goes on)."""
    before = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def new_attempt_id(run_id: str | None, now: datetime) -> str:
    base = run_id or f"cli__{now.astimezone(UTC).strftime('%Y%m%dT%H%M%S')}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)
    return new_id(safe, uuid.uuid4().hex[:8])


def code_version() -> str:
    """The package version, with the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{consent_gate.__version__}+{commit}" if commit else consent_gate.__version__


# --- step 1: consent snapshot -------------------------------------------------------------------


@dataclass(frozen=True)
class DayInputs:
    """What the snapshot step reads of the landing zone: the day's meeting folders and the subject keys
    their meetings name (`day_subjects`). A caller holding them (the command line's run) hands them to
    the shards and the re-verification, which would otherwise each list the day and read every
    meeting.json again; Airflow's tasks, in separate processes, read them themselves."""

    folders: tuple[str, ...]
    subjects: frozenset[str]

    def subject_ids(self) -> set[str]:
        """The raw ids of `subjects` (what the re-verification asks the store about)."""
        return subject_ids_of(self.subjects)


def read_day_inputs(zone: LandingZone, folders: list[str]) -> DayInputs:
    """`DayInputs` of these meeting folders (`require_arrivals` lists them)."""
    return DayInputs(tuple(folders), frozenset(day_subjects(zone, folders)))


def snapshot_consent(
    settings: RunSettings,
    day: date,
    as_of: datetime,
    *,
    run_id: str,
    dag_run_id: str | None = None,
    progress: Progress | None = None,
    clock: Clock,
    inputs: DayInputs | None = None,
) -> Stage:
    """Pin `as_of`, read the consent store once (column-wise), judge it vectorized and write the
    snapshot file into a new stage with its checksum; every later step reads that file, not the store.
    `inputs`: the day's `DayInputs` when the caller read them already (else read here).

    A pin later than the moment of the snapshot is refused (FutureAsOf): SPEC §3, revised 2026-11-28.
    Refused (RunRefused, nothing staged) when nothing arrived for the day: a wrong `--raw` or a partition
    not delivered yet must not publish "0 of 0" over a published day.
    """
    now = clock()
    as_of = refuse_future_as_of(as_of, now)
    if inputs is None:
        zone = settings.zone()
        inputs = read_day_inputs(zone, require_arrivals(zone, day))
    subjects = set(inputs.subjects)
    stage = Stage(day, new_attempt_id(run_id, now))
    store = settings.store()
    try:
        _write_run_record(settings, store, stage, as_of, subjects, run_id, dag_run_id, progress, now)
    except OSError as error:  # a full disk, a read-only output: no attempt began, so none is recorded
        store.remove(stage.root)  # a half-written stage is not left behind
        raise RunRefused(
            f"cannot open a stage under {settings.out} ({os_reason(error)}); nothing staged, nothing published"
        ) from None
    except BaseException:
        store.remove(stage.root)
        raise
    return stage


def require_arrivals(zone: LandingZone, day: date) -> list[str]:
    """The day's meeting folders; RunRefused unless the day has at least one meeting folder entry or
    telemetry file."""
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
    return meetings


def _write_run_record(
    settings: RunSettings, store: OutputStore, stage: Stage, as_of: datetime, subjects: set[str], run_id: str,
    dag_run_id: str | None, progress: Progress | None, now: datetime,
) -> None:  # fmt: skip
    import tempfile

    ledger = read_ledger(store, settings.secret)
    with tempfile.TemporaryDirectory(prefix="consent-gate-snapshot-") as local:
        files = {"events": f"{local}/snapshot.parquet", "subjects": f"{local}/subjects.parquet"}
        consent = run_consent(
            settings.consent_db, settings.secret, as_of, subjects, ledger, files, now=now,
            full_every=timedelta(hours=settings.policy.full_snapshot_every_hours), progress=progress,
        )  # fmt: skip
        written = {
            "path": SNAPSHOT_FILE,
            "sha256": _copy_in(store, files["events"], stage / SNAPSHOT_FILE),
            "events": pq.ParquetFile(files["events"]).metadata.num_rows,
            "subjects": {
                "path": SNAPSHOT_SUBJECTS,
                "sha256": _copy_in(store, files["subjects"], stage / SNAPSHOT_SUBJECTS),
            },
        }
    summary = consent.summary
    store.write_json(
        stage / RUN_RECORD,
        {
            "run_id": run_id,
            "dag_run_id": dag_run_id,
            "attempt": stage.attempt,
            "partition": stage.day.isoformat(),
            "started_at": now.isoformat(),
            "code_version": code_version(),
            "policy": {**asdict(settings.policy), "checksum": settings.policy.checksum},
            "consent": {
                "as_of": summary.as_of.isoformat(),
                "checksum": summary.checksum,
                "visible_events": summary.visible_events,
                "failed_closed_subjects": summary.failed_closed_subjects,
                "unreadable_rows": [asdict(row) for row in summary.unreadable],
                "snapshot_file": written,
                "basis": consent.basis,
            },
        },
    )
    if consent.ledger is not None:
        try:
            _advance_ledger(store, settings.secret, consent.ledger)
        except OSError as error:  # the run's evidence is complete; the next run reads the whole store
            if progress is not None:
                progress(f"consent ledger not written ({os_reason(error)}): the next run reads the whole store")


NOT_DUE = "not due"  # what `renew_consent_ledger` says of a ledger it left as it was


def renew_consent_ledger(
    settings: RunSettings, *, now: datetime, force: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Renew the consent ledger by a whole-store read at `now` when it is due (`renewal_due`), or always
    with `force`: at setup and from the hourly sweep's DAG, so that the whole store is read off the daily
    runs' path and each run reads only what is new (`consent_ledger`). What it did, for logs."""
    import tempfile

    store = settings.store()
    ledger = read_ledger(store, settings.secret)
    full_every = timedelta(hours=settings.policy.full_snapshot_every_hours)
    identity = store_identity(settings.secret, settings.consent_db)
    why = "asked for" if force else renewal_due(ledger, identity, now, full_every)
    if why is None:
        assert ledger is not None
        return {"renewed": False, "why": NOT_DUE, "full_read_at": ledger.full_read_at.isoformat()}
    with tempfile.TemporaryDirectory(prefix="consent-gate-ledger-") as local:
        renewed, rows = whole_store_ledger(
            settings.consent_db, settings.secret, now, now=now, folder=local, progress=progress
        )
    if renewed is None:
        return {"renewed": False, "why": "rows were inserted or deleted below the bound meanwhile", "rows_read": rows}
    _advance_ledger(store, settings.secret, renewed)
    return {
        "renewed": True, "why": why, "rows_read": rows, "bound": renewed.bound,
        "full_read_at": renewed.full_read_at.isoformat(),
    }  # fmt: skip


def _copy_in(store: OutputStore, path: str, target: str) -> str:
    """Copy the local file into the output store; its sha256."""
    with open(path, "rb") as source, store.open(target, "wb") as handle:
        while chunk := source.read(8 << 20):
            handle.write(chunk)
    return file_sha256(path)


def read_ledger(store: OutputStore, secret: bytes) -> Ledger | None:
    """The consent ledger, or None when there is none this secret wrote (a damaged one is read again)."""
    try:
        return ledger_from_json(store.read_json(CONSENT_LEDGER), secret) if store.exists(CONSENT_LEDGER) else None
    except (OSError, ValueError):
        return None


def _advance_ledger(store: OutputStore, secret: bytes, ledger: Ledger) -> None:
    """Write `ledger` unless the one there (another run's, meanwhile) already reaches as far and is as fresh."""
    current = read_ledger(store, secret)
    if (
        current is None
        or current.store != ledger.store
        or ledger.bound > current.bound
        or ledger.full_read_at > current.full_read_at
    ):
        store.write_json(CONSENT_LEDGER, ledger_json(ledger, secret))


def load_snapshot(settings: RunSettings, stage: Stage, subjects: set[str]) -> ConsentSnapshot:
    """The stage's snapshot file, for `subjects` only (a semi-join: memory follows the day, not the
    store). The file must be the one the snapshot step wrote (its sha256 is in run.json)."""
    import tempfile

    from consent_gate.consent import UnreadableConsentRow

    store = settings.store()
    recorded = store.read_json(stage / RUN_RECORD)["consent"]
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
        if "subjects" in written:  # judged for the subjects the snapshot saw: any other fails closed
            listed = store.local_file(stage / written["subjects"]["path"], local)
            if file_sha256(listed) != written["subjects"]["sha256"]:
                raise GateCheckFailed("the stage's consent subjects file changed since written; refusing to gate")
            covered = set(semi_join(listed, names, "SELECT subject_key FROM rows").column(0).to_pylist())
            uncovered = sorted(set(names) - covered)
            if uncovered:
                events = pa.concat_tables([events, uncovered_markers(uncovered).cast(events.schema)])
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
    for record in _meeting_records(zone, folders):
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


def _meeting_records(zone: LandingZone, folders: list[str]) -> Iterator[Any]:
    """Each folder's meeting.json parsed leniently (None when unreadable or a link). From an object store
    on 16 threads: one GET each, and 10,000 in a row would take minutes."""
    local = zone.url("") == zone._abs("")  # a local path (object stores are read on threads)

    def read(folder: str) -> Any:
        try:  # a link anywhere on the way raises NotARegularFile: the record is None
            data = zone.read_bytes(f"{folder}/meeting.json")
        except Exception:  # noqa: BLE001 (any unreadable file: the gate itself quarantines it)
            return None
        return load_json_leniently(data)

    if local:
        yield from map(read, folders)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        yield from pool.map(read, folders)


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


# The consent questions (artifact, subject) a batch is decided and written with at once, at most
# (`gate.asking_parts`): ~120 MB of the decision's arrays.
QUESTIONS_PER_PART = 1_000_000


def shard_of(meeting_folder: str, shards: int) -> int:
    """A stable shard for a meeting: the same for every run, process and Python version."""
    digest = hashlib.sha256(file_name(meeting_folder).encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


@rare_collections()
def gate_content(
    settings: RunSettings,
    stage: Stage,
    *,
    shard: int = 0,
    shards: int = 1,
    progress: Progress | None = None,
    inputs: DayInputs | None = None,
) -> ContentReport:
    """Gate the day's meetings of one shard into staged content, exclusions and quarantine. `inputs`:
    the `DayInputs` the snapshot step read, when the caller holds them; the shard then gates those
    folders and loads the consent of the whole day's subjects (a superset of its own) rather than
    listing the day and reading its meeting.json files once more."""
    zone, store = settings.zone(), settings.store()
    keyer = Keyer(settings.secret)
    if inputs is None:
        folders = [f for f in zone.meeting_folders(stage.day) if shard_of(f, shards) == shard]
        subjects = day_subjects(zone, folders)
    else:
        folders = [f for f in inputs.folders if shard_of(f, shards) == shard]
        subjects = set(inputs.subjects)
    snapshot = load_snapshot(settings, stage, subjects)
    content = ParquetSink(store, stage / f"content/{part_name(shard)}", CONTENT_SCHEMA)
    excluded = ParquetSink(store, stage / f"audit/excluded/{part_name(shard)}", EXCLUDED_SCHEMA)
    quarantine = ParquetSink(store, stage / f"audit/quarantine/{part_name(shard, 'content')}", QUARANTINE_SCHEMA)
    inputs = ParquetSink(store, stage / f"audit/inputs/{part_name(shard, 'meetings')}", INPUTS_SCHEMA)
    speakers = ParquetSink(store, stage / f"audit/speakers/{part_name(shard)}", SPEAKERS_SCHEMA)
    report = ContentReport(meetings=len(folders))
    batch: list[Artifact] = []
    batch_quarantined: list[Quarantined] = []
    batch_files: list[InputFile] = []
    reasons: Counter[str] = Counter()  # counted as decided; the reconciliation recounts from the files
    unidentified: Counter[str] = Counter()

    def flush() -> None:
        for part in asking_parts(batch, QUESTIONS_PER_PART):
            decisions = decide(part, snapshot)
            content.write(published_rows(part, decisions, keyer, snapshot.as_of))
            excluded.write(excluded_rows(part, decisions))
            speakers.write(speaker_rows(part))
            unidentified.update(a.unidentified_reason for a in part if a.unidentified_reason is not None)
            reasons.update(d.reason for d in decisions if d.reason is not None)
        quarantine.write(_quarantine_table(batch_quarantined))
        inputs.write(_inputs_table(batch_files))
        for pending in (batch, batch_quarantined, batch_files):
            pending.clear()

    try:
        for number, folder in enumerate(folders, start=1):
            read = read_meeting(zone, folder, stage.day)
            report.units_in += read.units_in
            batch_quarantined.extend(read.quarantine)
            batch_files.extend(read.files)
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
    store.write_json(stage / content_report(shard), {**asdict(report), "shard": shard, "shards": shards})
    return report


def _quarantine_table(units: list[Quarantined]) -> pa.Table:
    columns = {"unit": [u.unit for u in units], "error": [u.error for u in units]}
    return pa.table(columns, schema=QUARANTINE_SCHEMA)


def _inputs_table(files: list[InputFile]) -> pa.Table:
    columns = {"path": [f.path for f in files], "size": [f.size for f in files], "sha256": [f.sha256 for f in files]}
    return pa.table(columns, schema=INPUTS_SCHEMA)


# --- step 3: telemetry --------------------------------------------------------------------------


def aggregate_day(settings: RunSettings, stage: Stage) -> dict[str, int]:
    """Aggregate the day's telemetry into staged groups; the counts go to the stage."""
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
    groups = ParquetSink(store, stage / f"aggregates/{part_name(0)}", AGGREGATE_SCHEMA)
    quarantine = ParquetSink(store, stage / "audit/quarantine/telemetry.parquet", QUARANTINE_SCHEMA)
    inputs = ParquetSink(store, stage / "audit/inputs/telemetry.parquet", INPUTS_SCHEMA)
    try:
        groups.write(result.groups)
        quarantine.write(_quarantine_table(result.quarantine))
        # As read; a file whose stream broke is hashed whole here (the day fails on it anyway).
        read = zip(result.inputs, relative, strict=True)
        inputs.write(_inputs_table([entry or _hash_input(zone, r) for entry, r in read]))
    finally:
        for sink in (groups, quarantine, inputs):
            sink.close()
    counts = asdict(result.counts)
    store.write_json(stage / TELEMETRY_REPORT, counts)
    return counts


def _hash_input(zone: LandingZone, relative: str) -> InputFile:
    with zone.open_binary(relative) as handle:
        return HashingReader(handle).to_the_end(relative)
