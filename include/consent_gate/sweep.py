"""Withdrawal reaches published data: the revocation sweep, and no resurrection at publish (SPEC §7).

Published rows hold keyed hashes, not raw ids, so current consent is read with every subject id
replaced by its key (`keyed_consent`): the same `ConsentSnapshot` then answers SPEC §3's question
(granted both at capture and at `as_of`) for a published row's `account_keys` and `user_keys`.

- `sweep` reads the revocations that came into force since its watermark (`_audit/sweeps/`),
  finds the published days holding rows of those subjects, re-evaluates every row of such a day
  against the consent of now, and rewrites each day that loses rows under the day lock, through the
  same journaled exchange as publication (`publish.publish_folders`: content first, the evidence
  last as the commit; a sweep killed mid-way is finished or undone by `recover_day`; superseded
  files are deleted from storage). The day's evidence gets a new manifest version (counts,
  excluded.parquet and output sha256s updated, a `sweeps` entry appended; every version stays under
  `attempts/`), and the sweep writes a purge log.
- Stages of runs that died without cleaning up hold unpublished content: the sweep deletes those older
  than the policy's `max_stage_age_hours`, keeping their evidence as failed attempts.
- `withhold_withdrawn` re-applies the consent of now to a stage just before it is published, so a
  rerun or backfill pinned to an older `as_of` never re-admits withdrawn content.

Purge records hold partitions, counts by reason, instants and latencies: no content, no ids.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from consent_gate import audit as audit_pages
from consent_gate.consent import (
    COLUMNS,
    DUPLICATE_ERROR,
    PURPOSE,
    SUBJECT_TYPES,
    ConsentSnapshot,
    FutureAsOf,
    parse_consent_row,
    refuse_future_as_of,
    snapshot_from_rows,
    subject_key,
    to_ns,
)
from consent_gate.gate import EXCLUDED_SCHEMA, WITHDRAWN_SCHEMA
from consent_gate.keys import Keyer
from consent_gate.publish import (
    HISTORY,
    OutputStore,
    begin_publication,
    publish_folders,
    recover_day,
    versioned_names,
)
from consent_gate.records import MalformedRecord, parse_timestamp
from consent_gate.sources import CONTENT_TYPE_OF

SWEEPS = "_audit/sweeps"
WATERMARK = f"{SWEEPS}/watermark.json"
PARQUET_OPTIONS = {"compression": "zstd"}

Clock = Callable[[], datetime]


class SweepError(RuntimeError):
    """Published data the sweep cannot evaluate: it stops rather than guess."""


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- current consent, keyed ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revocation that came into force since the watermark; `subject` is a keyed subject_key."""

    subject: str
    subject_type: str
    content_type: str  # one of CONTENT_TYPES or '*'
    recorded_at: datetime
    in_force_at: datetime  # max(recorded_at, effective_at): from when it can remove anything


@dataclass
class KeyedConsent:
    """The consent visible at `as_of` by keyed subject, and what changed since `since`."""

    snapshot: ConsentSnapshot
    since: datetime | None  # None: everything visible counts as changed (a full sweep)
    revocations: list[Revocation] = field(default_factory=list)
    fail_closed: set[str] = field(default_factory=set)  # keyed subjects named by unreadable rows

    @property
    def affected(self) -> set[str]:
        return {r.subject for r in self.revocations} | self.fail_closed


def _instant(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo is not None else None
    try:
        return parse_timestamp(value, "recorded_at")
    except MalformedRecord:
        return None


def _keyed_subject(row: Sequence[Any], keyer: Keyer) -> str | None:
    subject_type, subject_id = row[1], row[2]
    if subject_type in SUBJECT_TYPES and isinstance(subject_id, str) and subject_id:
        return keyer.key(subject_type, subject_id)
    return None


def keyed_consent(rows: Iterable[Sequence[Any]], keyer: Keyer, as_of: datetime, since: datetime | None) -> KeyedConsent:
    """A snapshot of `rows` (COLUMNS order, by event_id) at `as_of`, with subject ids replaced by keys.

    Also collects the revocations in force in (`since`, `as_of`] and the subjects made not consented
    by unreadable rows recorded then (all of them when `since` is None).
    """
    as_of = as_of.astimezone(UTC)
    revocations: list[Revocation] = []
    fail_closed: set[str] = set()

    def changed(instant: datetime | None) -> bool:
        if instant is None:
            return True  # cannot tell when: count it as new, fail closed
        return instant <= as_of and (since is None or instant > since)

    def keyed_rows() -> Iterator[tuple[Any, ...]]:
        last_id: Any = None
        last_key: str | None = None
        for row in rows:
            key = _keyed_subject(row, keyer)
            keyed_key = subject_key(row[1], key) if key is not None else None
            yield (row[0], row[1], key if key is not None else row[2], *row[3:])
            purpose, recorded = row[3], _instant(row[7])
            if (isinstance(purpose, str) and purpose != PURPOSE) or (recorded is not None and recorded > as_of):
                continue  # ignored or invisible, as in the snapshot itself
            duplicate = row[0] is not None and row[0] == last_id
            try:
                if purpose is None or duplicate:
                    raise MalformedRecord("event_id" if duplicate else "purpose", "unreadable")
                event = parse_consent_row(row)
            except MalformedRecord:
                if keyed_key is not None and (duplicate or changed(recorded)):
                    fail_closed.add(keyed_key)
                if duplicate and last_key is not None:
                    fail_closed.add(last_key)
            else:
                in_force = max(event.recorded_at, event.effective_at)
                if event.decision == "revoke" and keyed_key is not None and changed(in_force):
                    revocations.append(
                        Revocation(keyed_key, event.subject_type, event.content_type, event.recorded_at, in_force)
                    )
            last_id, last_key = row[0], keyed_key

    snapshot = snapshot_from_rows(keyed_rows(), as_of)
    return KeyedConsent(snapshot, since, revocations, fail_closed)


def read_keyed_consent(url: str, keyer: Keyer, as_of: datetime, since: datetime | None) -> KeyedConsent:
    """`keyed_consent` of the whole store, read column-wise and judged vectorized (no Python per row
    but one keyed hash per distinct subject)."""
    from consent_gate.consent_store import read_consent_table

    return keyed_consent_table(read_consent_table(url, purpose="sweep"), keyer, as_of, since)


def keyed_consent_table(table: pa.Table, keyer: Keyer, as_of: datetime, since: datetime | None) -> KeyedConsent:
    """The vectorized `keyed_consent`: the same snapshot, revocations in force in (`since`, `as_of`] and
    subjects failed closed by unreadable rows recorded then (or unreadable when), by duplicated ids always."""
    from consent_gate.consent_vector import judged_snapshot

    as_of = as_of.astimezone(UTC)
    types, ids = table.column("subject_type"), table.column("subject_id")
    readable = pc.fill_null(
        pc.and_(pc.is_in(types, value_set=pa.array(SUBJECT_TYPES)), pc.greater(pc.utf8_length(ids), 0)), False
    )
    combined = pc.binary_join_element_wise(types, ids, "\x1f")
    distinct = pc.unique(pc.filter(combined, readable))
    keys = pa.array([keyer.key(*pair.split("\x1f", 1)) for pair in distinct.to_pylist()], pa.string())
    keyed_ids = pc.take(keys, pc.index_in(combined, value_set=distinct))
    keyed = table.set_column(
        table.schema.get_field_index("subject_id"), "subject_id", pc.if_else(readable, keyed_ids, ids)
    )
    as_of_us = to_ns(as_of) // 1000
    since_us = "NULL" if since is None else str(to_ns(since.astimezone(UTC)) // 1000)
    changed = f"(x <= {as_of_us} AND ({since_us} IS NULL OR x > {since_us}))"
    in_force = "greatest(rec_us, eff_us)"
    duplicate = "'" + DUPLICATE_ERROR.replace("'", "''") + "'"
    snapshot, answers = judged_snapshot(
        keyed,
        as_of,
        {
            "revocations": f"SELECT subject_key, subject_type, content_type, rec_us, {in_force} FROM judged "
            # the first row of a duplicated id reads well on its own: its revocation counts (its subject
            # fails closed as well), as in the row-wise reading
            f"WHERE (error IS NULL OR (error = {duplicate} AND id_rank = 1)) AND decision = 'revoke' "
            f"AND {changed.replace('x', in_force)} ORDER BY event_id, rn",
            "fail_closed": "SELECT DISTINCT subject_key FROM judged WHERE error IS NOT NULL AND subject_ok "
            f"AND (id_count > 1 OR rec_us IS NULL OR {changed.replace('x', 'rec_us')})",
        },
    )

    def instant(us: int) -> datetime:
        return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=us)

    revocations = [
        Revocation(key, kind, content_type, instant(recorded), instant(force))
        for key, kind, content_type, recorded, force in answers["revocations"]
    ]
    return KeyedConsent(snapshot, since, revocations, {row[0] for row in answers["fail_closed"]})


# --- re-evaluating published rows ---------------------------------------------------------------


def withdrawal_reasons(table: pa.Table, snapshot: ConsentSnapshot, only: set[str] | None = None) -> list[str | None]:
    """Per published row: None if still eligible under `snapshot` (keyed), else the SPEC §3 reason.

    A row's required subjects are its account_keys and user_keys; each must be granted both at
    `captured_at` and at the snapshot's `as_of`. A row without any account key fails closed.
    `only`: evaluate just these (keyed) subjects; the others' consent did not change since the row was gated.
    """
    n = table.num_rows
    if n == 0:
        return []
    try:
        content_types = np.array([CONTENT_TYPE_OF[t] for t in table.column("artifact_type").to_pylist()], dtype=object)
    except KeyError:
        raise SweepError("a published row has an unknown artifact_type") from None
    captured_column = table.column("captured_at")
    if captured_column.null_count:
        raise SweepError("a published row has no captured_at")
    captured = captured_column.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy()

    def refused(column: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        lists = table.column(column).combine_chunks()
        flat = pc.list_flatten(lists).to_pylist()
        owners = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        not_ok = np.zeros(n, dtype=bool)
        present = np.zeros(n, dtype=bool)
        if flat:
            subjects = [subject_key(kind, str(k)) for k in flat]
            ok, _ = snapshot.consented(subjects, list(content_types[owners]), captured[owners])
            if only is not None:
                ok |= ~np.fromiter((s in only for s in subjects), dtype=bool, count=len(subjects))
            not_ok[owners[~ok]] = True
            present[owners] = True
        return not_ok, present

    account_refused, has_account = refused("account_keys", "account")
    user_refused, _ = refused("user_keys", "user")
    account_refused |= ~has_account
    return [
        "account_not_consented" if a else "user_not_consented" if u else None
        for a, u in zip(account_refused.tolist(), user_refused.tolist(), strict=True)
    ]


def _attribute(removed: pa.Table, consent: KeyedConsent) -> dict[Revocation, int]:
    """Which of the new revocations reach which removed rows: same subject and content type, and
    recorded after the row's consent snapshot (an older one was already applied when it was gated)."""
    by_subject: dict[str, list[Revocation]] = defaultdict(list)
    for revocation in consent.revocations:
        by_subject[revocation.subject].append(revocation)
    rows: Counter[Revocation] = Counter()
    if not by_subject:
        return rows
    for row in removed.select(["artifact_type", "user_keys", "account_keys", "consent_as_of"]).to_pylist():
        content_type = CONTENT_TYPE_OF[row["artifact_type"]]
        subjects = [subject_key("account", k) for k in row["account_keys"] or []]
        subjects += [subject_key("user", k) for k in row["user_keys"] or []]
        for subject in subjects:
            for revocation in by_subject.get(subject, ()):
                if revocation.content_type in ("*", content_type) and revocation.recorded_at > row["consent_as_of"]:
                    rows[revocation] += 1
    return rows


def _latencies(attributed: dict[Revocation, int], purged_at: datetime) -> list[dict[str, Any]]:
    """Per revocation that reached this purge: when it was recorded and came into force, how many rows
    it reached, and the revocation-to-purge latency (purged_at - recorded_at). No subject, no id."""
    entries = [
        {
            "subject_type": r.subject_type,
            "content_type": r.content_type,
            "recorded_at": r.recorded_at.isoformat(),
            "in_force_at": r.in_force_at.isoformat(),
            "rows": rows,
            "latency_seconds": (purged_at - r.recorded_at).total_seconds(),
        }
        for r, rows in attributed.items()
    ]
    return sorted(entries, key=lambda e: (e["recorded_at"], e["subject_type"], e["content_type"]))


# --- the sweep ----------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    sweep_id: str
    as_of: datetime
    mode: str  # incremental | full
    days_scanned: int
    purges: list[dict[str, Any]]
    log_path: str
    abandoned_stages_deleted: int = 0

    @property
    def rows_removed(self) -> int:
        return sum(p["rows_removed"] for p in self.purges)


def published_days(store: OutputStore) -> list[str]:
    """The days that have a published content folder, from storage itself."""
    return [name.removeprefix("dt=") for name in store.folders("content") if name.startswith("dt=")]


def abandoned_attempt_record(run: dict[str, Any], started_before: datetime) -> dict[str, Any]:
    """The failed-attempt evidence of a stage deleted as abandoned: its run.json, no counts (it never ended)."""
    keep = ("run_id", "dag_run_id", "attempt", "partition", "code_version", "policy", "consent", "started_at")
    return {
        **{k: run.get(k) for k in keep},
        "as_of": run["consent"]["as_of"],
        "status": "failed",
        "failure": f"abandoned: the run never ended this attempt; its stage (started before "
        f"{started_before.isoformat()}) was deleted by the revocation sweep",
        "counts": None,
    }


def stage_holds_withdrawn(store: OutputStore, root: str, snapshot: ConsentSnapshot) -> bool:
    """Whether a stage's staged content holds a row that `snapshot` (current consent, keyed) no longer
    allows. A part that cannot be read yet (a run still writing it) is left to its run or to the age rule."""
    for path in store.files(f"{root}/content", ".parquet"):
        try:
            table = _read_table(store, path)
        except (OSError, pa.ArrowException):
            continue
        try:
            if any(reason is not None for reason in withdrawal_reasons(table, snapshot)):
                return True
        except SweepError:
            return True  # rows the sweep cannot evaluate: fail closed
    return False


def discard_abandoned_stages(
    store: OutputStore, started_before: datetime, current: ConsentSnapshot | None = None
) -> int:
    """Delete the stages of runs that died without ending their attempt and started before
    `started_before`, and (SPEC §7, revised 2026-11-28) every unpublished stage, whatever its age, whose
    content holds rows that `current` consent no longer allows; each keeps a failed-attempt record.
    Returns how many were deleted. A run whose stage is deleted this way fails ("rerun the day").

    Under each day's lock: a stage that died publishing (journaled) is finished or undone by
    `recover_day` first; a stage without `run.json` never got past its first write and holds nothing.
    """
    deleted = 0
    for day in [name.removeprefix("dt=") for name in store.folders("_staging") if name.startswith("dt=")]:
        with store.day_lock(day):
            recover_day(store, day)
            for attempt in store.folders(f"_staging/dt={day}"):
                root = f"_staging/dt={day}/{attempt}"
                run = store.read_json(f"{root}/run.json") if store.exists(f"{root}/run.json") else None
                withdrawn = current is not None and stage_holds_withdrawn(store, root, current)
                young = run is not None and parse_timestamp(run["started_at"], "started_at") >= started_before
                if young and not withdrawn:
                    continue  # a run that may still be going: its own teardown or publication ends it
                evidence = f"_audit/dt={day}/attempts/{attempt}.json"
                if run is not None and not store.exists(evidence):
                    record = abandoned_attempt_record(run, started_before)
                    if withdrawn:
                        record["failure"] = (
                            "its staged content holds rows whose consent was withdrawn; the revocation sweep "
                            "deleted the stage (SPEC §7)"
                        )
                    store.write_json(evidence, record)
                store.remove(root)
                deleted += 1
            if not store.folders(f"_staging/dt={day}"):
                store.remove(f"_staging/dt={day}")
    return deleted


def read_watermark(store: OutputStore) -> dict[str, Any] | None:
    return store.read_json(WATERMARK) if store.exists(WATERMARK) else None


def new_sweep_id(as_of: datetime) -> str:
    return f"sweep__{as_of.astimezone(UTC):%Y%m%dT%H%M%S}__{uuid.uuid4().hex[:8]}"


def sweep(
    store: OutputStore,
    consent_url: str,
    secret: bytes,
    as_of: datetime,
    *,
    full: bool = False,
    clock: Clock = utc_now,
    sweep_id: str | None = None,
    max_stage_age: timedelta = timedelta(hours=24),
    dag_run_id: str | None = None,
) -> SweepOutcome:
    """Purge from every published day the rows that current consent (at `as_of`) no longer allows,
    and delete the stages of runs abandoned longer than `max_stage_age` ago."""
    started_at = clock()
    try:
        as_of = refuse_future_as_of(as_of, started_at)
    except FutureAsOf as error:
        raise SweepError(str(error)) from None
    keyer = Keyer(secret)
    sweep_id = sweep_id or new_sweep_id(as_of)
    watermark = read_watermark(store)
    since: datetime | None = None
    why = "requested" if full else "no earlier sweep"
    if watermark is not None and not full:
        previous = parse_timestamp(watermark["as_of"], "as_of")
        if previous >= as_of:
            why = "as_of is not after the watermark"
        elif read_keyed_consent(consent_url, keyer, previous, previous).snapshot.checksum != watermark["checksum"]:
            why = "the consent visible at the watermark changed (rows back-dated or edited)"
        else:
            since, why = previous, "revocations in force since the watermark"
    consent = read_keyed_consent(consent_url, keyer, as_of, since)
    affected = None if since is None else consent.affected
    days = published_days(store)
    purges = []
    for day in days:
        if affected is not None and not affected:
            break  # nothing came into force: no published row can have lost its consent
        with store.day_lock(day):
            recover_day(store, day)  # a publication or sweep of the day killed mid-way: finished or undone
            purge = _sweep_day(store, day, consent, affected, sweep_id=sweep_id, clock=clock)
        if purge is not None:
            purges.append(purge)
    abandoned = discard_abandoned_stages(store, clock() - max_stage_age, consent.snapshot)
    record = {
        "sweep_id": sweep_id,
        "dag_run_id": dag_run_id,  # the auditor's run tab finds the sweep of a DAG run by it
        "as_of": as_of.isoformat(),
        "mode": "incremental" if since is not None else "full",
        "why": why,
        "watermark_before": watermark["as_of"] if watermark else None,
        "consent": {"checksum": consent.snapshot.checksum, "visible_events": consent.snapshot.visible_events},
        "revocations_in_force_since_watermark": len(consent.revocations),
        "fail_closed_subjects": len(consent.fail_closed),
        "days_scanned": len(days),
        "days_rewritten": len(purges),
        "rows_removed": sum(p["rows_removed"] for p in purges),
        "purges": purges,
        "abandoned_stages_deleted": abandoned,
        "started_at": started_at.isoformat(),
        "ended_at": clock().isoformat(),
    }
    log_path = f"{SWEEPS}/{sweep_id}.json"
    store.write_json(log_path, record)
    if purges:
        audit_pages.write_index(store)
    _advance_watermark(store, as_of, consent.snapshot.checksum, sweep_id)
    return SweepOutcome(sweep_id, as_of, record["mode"], len(days), purges, log_path, abandoned)


def _advance_watermark(store: OutputStore, as_of: datetime, checksum: str, sweep_id: str) -> None:
    current = read_watermark(store)
    if current is not None and parse_timestamp(current["as_of"], "as_of") >= as_of:
        return  # a later sweep already got further: never move the watermark back
    store.write_json(WATERMARK, {"as_of": as_of.isoformat(), "checksum": checksum, "sweep_id": sweep_id})


def _read_table(store: OutputStore, relative: str, columns: list[str] | None = None) -> pa.Table:
    with store.open(relative) as handle:
        return pq.read_table(handle, columns=columns)


def _write_table(store: OutputStore, relative: str, table: pa.Table) -> None:
    with store.open(relative, "wb") as handle:
        pq.write_table(table, handle, **PARQUET_OPTIONS)


def _holds_any(store: OutputStore, files: list[str], affected: set[str]) -> bool:
    wanted = {kind: [k.split("\x1f", 1)[1] for k in affected if k.startswith(f"{kind}\x1f")] for kind in SUBJECT_TYPES}
    for path in files:
        keys = _read_table(store, path, ["user_keys", "account_keys"])
        for kind, column in (("user", "user_keys"), ("account", "account_keys")):
            if wanted[kind]:
                flat = pc.list_flatten(keys.column(column))
                if pc.any(pc.is_in(flat, value_set=pa.array(wanted[kind], pa.string()))).as_py():
                    return True
    return False


def _sweep_day(
    store: OutputStore,
    day: str,
    consent: KeyedConsent,
    affected: set[str] | None,
    *,
    sweep_id: str,
    clock: Clock,
) -> dict[str, Any] | None:
    """Re-evaluate one published day (the caller holds its lock); rewrite it if it loses rows."""
    folder = f"content/dt={day}"
    files = store.files(folder, ".parquet")
    if affected is not None and not _holds_any(store, files, affected):
        return None
    kept: dict[str, pa.Table] = {}
    removed_parts: list[pa.Table] = []
    reasons: list[str] = []
    rows_before = 0
    for path in files:
        table = _read_table(store, path)
        rows_before += table.num_rows
        row_reasons = withdrawal_reasons(table, consent.snapshot)
        mask = pa.array([r is None for r in row_reasons], pa.bool_())
        kept[path.rsplit("/", 1)[-1]] = table.filter(mask)
        removed_parts.append(table.filter(pc.invert(mask)))
        reasons.extend(r for r in row_reasons if r is not None)
    if not reasons:
        return None
    stage = f"_staging/dt={day}/{sweep_id}"  # where recover_day finds it, like a run's stage
    begin_publication(store, stage)  # killed from here on: the next holder of the day lock undoes it
    store.makedirs(f"{stage}/content")
    for name, table in kept.items():
        if table.num_rows:
            _write_table(store, f"{stage}/content/{name}", table)
    versioned_names(store, f"{stage}/content", sweep_id.rsplit("__", 1)[-1])
    purged_at = clock()
    removed = pa.concat_tables(removed_parts)
    by_reason = dict(sorted(Counter(reasons).items()))
    revocations = _latencies(_attribute(removed, consent), purged_at)
    purge = {
        "partition": day,
        "sweep_id": sweep_id,
        "as_of": consent.snapshot.as_of.isoformat(),
        "purged_at": purged_at.isoformat(),
        "rows_before": rows_before,
        "rows_removed": len(reasons),
        "removed_by_reason": by_reason,
        "revocations": revocations,
        "max_latency_seconds": max((r["latency_seconds"] for r in revocations), default=None),
    }
    withdrawn = withdrawn_rows(removed, reasons, f"sweep {sweep_id}", consent.snapshot.as_of)
    swaps = [(f"{stage}/content", folder)]
    purge["manifest"] = _stage_evidence(store, day, stage, withdrawn, purge)
    if purge["manifest"] != "missing":
        swaps.append((f"{stage}/audit", f"_audit/dt={day}"))  # last: its exchange is the commit
    publish_folders(store, stage, swaps)  # superseded files are deleted once committed
    store.remove(stage)
    return purge


def withdrawn_rows(removed: pa.Table, reasons: list[str], withdrawn_by: str, as_of: datetime) -> pa.Table:
    """The evidence of rows taken out after their gating: no content, the reason and who took them out."""
    return pa.table(
        {
            "artifact_id": removed.column("artifact_id"),
            "artifact_type": removed.column("artifact_type"),
            "reason": pa.array(reasons, pa.string()),
            "withdrawn_by": pa.array([withdrawn_by] * removed.num_rows, pa.string()),
            "consent_as_of": pa.array([as_of] * removed.num_rows, pa.timestamp("us", tz="UTC")),
        },
        schema=WITHDRAWN_SCHEMA,
    )


def _append_rows(store: OutputStore, relative: str, rows: pa.Table, schema: pa.Schema) -> None:
    previous = _read_table(store, relative).cast(schema) if store.exists(relative) else schema.empty_table()
    _write_table(store, relative, pa.concat_tables([previous, rows.select(schema.names).cast(schema)]))


def _stage_evidence(store: OutputStore, day: str, stage: str, withdrawn: pa.Table, purge: dict[str, Any]) -> str:
    """A new version of the day's evidence in `stage`/audit: the purged rows become excluded rows (and
    withdrawn rows), counts and output checksums follow the staged content, the purge goes under `sweeps`."""
    audit, staged = f"_audit/dt={day}", f"{stage}/audit"
    if not store.exists(f"{audit}/manifest.json"):
        return "missing"  # content was purged all the same; the sweep log holds the record
    for relative in store.tree(audit):
        if store.history_stays_in_place and relative.startswith(f"{HISTORY}/"):
            continue  # the append-only history is not staged (stores.ObjectStorage.exchange_folders)
        store.copy_file(f"{audit}/{relative}", f"{staged}/{relative}")  # server-side on object stores
    evidence = {"excluded.parquet": EXCLUDED_SCHEMA, "withdrawn.parquet": WITHDRAWN_SCHEMA}
    for name, schema in evidence.items():
        _append_rows(store, f"{staged}/{name}", withdrawn, schema)
    manifest = json.loads(store.fs.cat_file(store.path(f"{staged}/manifest.json")))
    content = (manifest.get("counts") or {}).get("content")
    if content is not None:
        content["published"] -= purge["rows_removed"]
        for reason, count in purge["removed_by_reason"].items():
            content["excluded"][reason] = content["excluded"].get(reason, 0) + count
    rewritten = [(f"{staged}/{name}", f"{audit}/{name}") for name in evidence]
    rewritten += [
        (path, f"content/dt={day}/{path.rsplit('/', 1)[-1]}") for path in store.files(f"{stage}/content", ".parquet")
    ]
    outputs = [
        o for o in manifest.get("outputs", [])
        if not o["path"].startswith(f"content/dt={day}/") and o["path"] not in {p for _, p in rewritten}
    ]  # fmt: skip
    outputs += [store.output_entry(relative, published_as) for relative, published_as in rewritten]
    manifest["outputs"] = sorted(outputs, key=lambda o: o["path"])
    manifest["sweeps"] = [*manifest.get("sweeps", []), {k: v for k, v in purge.items() if k != "manifest"}]
    manifest["version"] = purge["sweep_id"]
    store.write_json(f"{staged}/manifest.json", manifest)
    store.write_json(f"{staged}/attempts/{purge['sweep_id']}.json", manifest)
    audit_pages.write_day_report(store, staged, manifest)  # the day's report.html follows the new version
    return f"{audit}/manifest.json"


# --- no resurrection at publish -----------------------------------------------------------------


def withhold_withdrawn(
    store: OutputStore, stage_root: str, consent_url: str, secret: bytes, now: datetime
) -> dict[str, Any]:
    """Before a stage is published, drop the rows whose consent was withdrawn since its pinned as_of.

    The stage keeps its pinned snapshot as evidence; what the consent of now no longer allows
    becomes excluded with its reason: the shard's excluded part
    and count report are updated so every unit stays accounted for. Returns what was withheld.
    """
    run = store.read_json(f"{stage_root}/run.json")
    pinned = parse_timestamp(run["consent"]["as_of"], "as_of")
    as_of = now.astimezone(UTC)
    if pinned > as_of:  # never max(now, pinned): future-dated grants would be in force at a future pin
        raise SweepError(
            f"the stage's pinned as_of {pinned.isoformat()} is later than now; a future as_of is refused, rerun the day"
        )
    consent = _consent_changed_since(consent_url, Keyer(secret), pinned, as_of)
    withheld: Counter[str] = Counter()
    if consent.affected:  # nothing came into force since the pin: the pinned decisions stand
        by = f"publication of attempt {run['attempt']}"
        for path in store.files(f"{stage_root}/content", ".parquet"):
            withheld.update(_withhold_part(store, stage_root, path, consent.snapshot, by, consent.affected))
    return {
        "pinned_as_of": pinned.isoformat(),
        "as_of": as_of.isoformat(),
        "rows": sum(withheld.values()),
        "excluded": dict(sorted(withheld.items())),
    }


def _consent_changed_since(url: str, keyer: Keyer, since: datetime, as_of: datetime) -> KeyedConsent:
    """The keyed consent at `as_of` of the subjects whose consent may have changed after `since`: rows
    recorded or effective after it (an indexed range), then all rows of those subjects (by index). Never a
    pass over the store; `affected` names who may have lost consent."""
    from consent_gate.consent_store import read_changed_rows, read_subject_rows

    changed = read_changed_rows(url, since, purpose="no-resurrection: changed rows")
    relevant = changed.filter(pc.fill_null(pc.invert(pc.and_(
        pc.is_valid(changed.column("purpose")), pc.not_equal(changed.column("purpose"), PURPOSE)
    )), True))  # fmt: skip
    subject_ok = pc.and_(
        pc.fill_null(pc.is_in(relevant.column("subject_type"), value_set=pa.array(SUBJECT_TYPES)), False),
        pc.fill_null(pc.greater(pc.utf8_length(relevant.column("subject_id")), 0), False),
    )
    if not pc.all(subject_ok).as_py() and relevant.num_rows:
        raise SweepError("a consent row recorded since the pinned as_of has no readable subject; refusing to publish")
    subject_ids = set(relevant.column("subject_id").to_pylist())
    if not subject_ids:
        return KeyedConsent(snapshot_from_rows([], as_of), since)
    table = read_subject_rows(url, subject_ids, purpose="no-resurrection: subjects' rows")
    rows = sorted((tuple(r[c] for c in COLUMNS) for r in table.to_pylist()), key=lambda r: "" if r[0] is None else r[0])
    return keyed_consent(rows, keyer, as_of, since)


def _withhold_part(
    store: OutputStore,
    stage_root: str,
    path: str,
    snapshot: ConsentSnapshot,
    withdrawn_by: str,
    only: set[str] | None = None,
) -> Counter[str]:
    table = _read_table(store, path)
    reasons = withdrawal_reasons(table, snapshot, only)
    dropped = Counter(r for r in reasons if r is not None)
    if not dropped:
        return dropped
    shard = path.rsplit("/", 1)[-1].removeprefix("part-").removesuffix(".parquet")
    report_path = f"{stage_root}/reports/content-{shard}.json"
    if not store.exists(report_path):
        raise SweepError(f"stage part {path.rsplit('/', 1)[-1]} has no count report; refusing to publish")
    mask = pa.array([r is None for r in reasons], pa.bool_())
    removed = table.filter(pc.invert(mask))
    _write_table(store, path, table.filter(mask))
    withdrawn = withdrawn_rows(removed, [r for r in reasons if r is not None], withdrawn_by, snapshot.as_of)
    _write_table(
        store, f"{stage_root}/audit/excluded/withdrawn-{shard}.parquet", withdrawn.select(EXCLUDED_SCHEMA.names)
    )
    _write_table(store, f"{stage_root}/audit/withdrawn/part-{shard}.parquet", withdrawn)
    report = store.read_json(report_path)
    report["published"] -= sum(dropped.values())
    merged = Counter(report["excluded"])
    merged.update(dropped)
    report["excluded"] = dict(sorted(merged.items()))
    store.write_json(report_path, report)
    return dropped


# --- Airflow task body --------------------------------------------------------------------------


def sweep_task(params: Any, run_id: str | None = None) -> dict[str, Any]:
    """The DAG's task: settings from Airflow, as_of = now unless the `as_of` param pins it."""
    from consent_gate.runs import as_of_for_run, settings_from_airflow

    params = params or {}
    settings = settings_from_airflow()
    as_of = as_of_for_run(params.get("as_of"), utc_now())
    outcome = sweep(
        settings.store(), settings.consent_db, settings.secret, as_of, full=bool(params.get("full")),
        max_stage_age=timedelta(hours=settings.policy.max_stage_age_hours), dag_run_id=run_id,
    )  # fmt: skip
    return {
        "sweep_id": outcome.sweep_id,
        "mode": outcome.mode,
        "days_rewritten": len(outcome.purges),
        "rows_removed": outcome.rows_removed,
        "abandoned_stages_deleted": outcome.abandoned_stages_deleted,
        "log": f"{settings.out}/{outcome.log_path}",
    }


def announce_task(summary: dict[str, Any], outlet_events: Any) -> dict[str, Any]:
    """The DAG's announcing task: one content event per day the sweep rewrote. A sweep that changed no
    day emits nothing (the task is skipped), so consumers run only when published data changed."""
    from airflow.exceptions import AirflowSkipException

    from consent_gate.assets import announce_sweep
    from consent_gate.runs import settings_from_airflow

    if not summary.get("days_rewritten"):
        raise AirflowSkipException("the sweep rewrote no day: nothing to announce")
    settings = settings_from_airflow()
    return announce_sweep(outlet_events, settings.store(), settings.out, summary)
