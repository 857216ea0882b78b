"""Withdrawal reaches published data: the revocation sweep (SPEC §7).

Current consent is read by keyed subject (`keyed_consent`), as published rows hold keyed hashes.

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from consent_gate import audit as audit_pages
from consent_gate.artifacts import CONTENT_TYPE_OF
from consent_gate.config import Clock
from consent_gate.consent import (
    FutureAsOf,
    refuse_future_as_of,
    subject_key,
)
from consent_gate.errors import SweepError
from consent_gate.gate import EXCLUDED_SCHEMA, WITHDRAWN_SCHEMA
from consent_gate.keyed_consent import KeyedConsent, Revocation, withdrawal_reasons, withdrawn_rows
from consent_gate.keys import Keyer
from consent_gate.layout import (
    CONTENT,
    HISTORY,
    WATERMARK,
    attempt_suffix,
    audit_day,
    content_day,
    days_of,
    file_name,
    manifest_path,
    new_id,
    staging_day,
    sweep_log,
)
from consent_gate.manifest import Manifest, swept_version
from consent_gate.parquet import read_table, write_table
from consent_gate.publish import (
    OutputStore,
    begin_publication,
    publish_folders,
    recover_day,
    versioned_names,
)
from consent_gate.records import parse_timestamp
from consent_gate.sweep_scope import SweepScope, stage_consent, sweep_scope
from consent_gate.unpublished import discard_abandoned_stages, stage_holds_withdrawn


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
    return days_of(store.folders(CONTENT))


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


def read_watermark(store: OutputStore) -> dict[str, Any] | None:
    return store.read_json(WATERMARK) if store.exists(WATERMARK) else None


def new_sweep_id(as_of: datetime) -> str:
    return new_id(f"sweep__{as_of.astimezone(UTC):%Y%m%dT%H%M%S}", uuid.uuid4().hex[:8])


def sweep(
    store: OutputStore,
    consent_url: str,
    secret: bytes,
    as_of: datetime,
    *,
    full: bool = False,
    clock: Clock,
    sweep_id: str | None = None,
    max_stage_age: timedelta = timedelta(hours=24),
    dag_run_id: str | None = None,
    full_every: timedelta | None = timedelta(hours=24),
) -> SweepOutcome:
    """Purge from every published day the rows that current consent (at `as_of`) no longer allows,
    and delete the stages of runs abandoned longer than `max_stage_age` ago.

    Reads what changed since the watermark (`sweep_scope`), or the whole store when `full`, when no
    watermark describes the store any more, or when the last full sweep is `full_every` old."""
    started_at = clock()
    try:
        as_of = refuse_future_as_of(as_of, started_at)
    except FutureAsOf as error:
        raise SweepError(str(error)) from None
    keyer = Keyer(secret)
    sweep_id = sweep_id or new_sweep_id(as_of)
    watermark = read_watermark(store)
    with sweep_scope(consent_url, keyer, as_of, watermark, full=full, full_every=full_every) as scope:
        days = published_days(store)
        only = scope.only
        if scope.whole_store is not None:  # one semi-join of the whole-store consent for every published day
            scope.consent_of(lambda: published_subjects(store, [f for d in days for f in _day_files(store, d)]))
        purges = []
        for day in days:
            if only is not None and not only:
                break  # nothing came into force: no published row can have lost its consent
            with store.day_lock(day):
                recover_day(store, day)  # a publication or sweep of the day killed mid-way: finished or undone
                purge = _sweep_day(store, day, scope, sweep_id=sweep_id, clock=clock)
            if purge is not None:
                purges.append(purge)
        consent_of_stage = stage_consent(scope, consent_url, keyer, as_of)

        def holds_withdrawn(store: OutputStore, root: str, run: dict[str, Any] | None) -> bool:
            files = store.files(f"{root}/content", ".parquet")
            stage_consent_, whose = consent_of_stage(
                run, lambda: published_subjects(store, files, skip_unreadable=True)
            )
            return stage_holds_withdrawn(store, root, stage_consent_.snapshot, whose)

        abandoned = discard_abandoned_stages(store, clock() - max_stage_age, holds_withdrawn)
    record = {
        "sweep_id": sweep_id,
        "dag_run_id": dag_run_id,  # the auditor's run tab finds the sweep of a DAG run by it
        "as_of": as_of.isoformat(),
        "mode": scope.mode,
        "why": scope.why,
        "watermark_before": watermark["as_of"] if watermark else None,
        "consent": scope.record(),
        "revocations_in_force_since_watermark": scope.revocation_count,
        "fail_closed_subjects": scope.fail_closed_count,
        "days_scanned": len(days),
        "days_rewritten": len(purges),
        "rows_removed": sum(p["rows_removed"] for p in purges),
        "purges": purges,
        "abandoned_stages_deleted": abandoned,
        "started_at": started_at.isoformat(),
        "ended_at": clock().isoformat(),
    }
    log_path = sweep_log(sweep_id)
    store.write_json(log_path, record)
    if purges:
        audit_pages.write_index(store)
    _advance_watermark(store, as_of, scope, sweep_id, watermark)
    return SweepOutcome(sweep_id, as_of, record["mode"], len(days), purges, log_path, abandoned)


def _advance_watermark(
    store: OutputStore, as_of: datetime, scope: SweepScope, sweep_id: str, before: dict[str, Any] | None
) -> None:
    """The next sweep judges from here: `as_of`, the fingerprint of the rows below it, the last full sweep."""
    current = read_watermark(store)
    if current is not None and parse_timestamp(current["as_of"], "as_of") >= as_of:
        return  # a later sweep already got further: never move the watermark back
    last_full = as_of.isoformat() if scope.since is None else (before or {}).get("last_full_as_of")
    store.write_json(
        WATERMARK,
        {"as_of": as_of.isoformat(), "sweep_id": sweep_id, "last_full_as_of": last_full, **scope.fingerprint,
         "checksum": scope.record()["checksum"]},
    )  # fmt: skip


def _day_files(store: OutputStore, day: str) -> list[str]:
    return store.files(content_day(day), ".parquet")


def published_subjects(store: OutputStore, files: list[str], *, skip_unreadable: bool = False) -> set[str]:
    """The keyed subjects (kind + key) named by the rows of `files`. `skip_unreadable`: a part that cannot
    be read yet (a run still writing its stage) names none; a published part that cannot be read fails."""
    subjects: set[str] = set()
    for path in files:
        try:
            keys = read_table(store, path, ["user_keys", "account_keys"])
        except (OSError, pa.ArrowException):
            if skip_unreadable:
                continue
            raise
        subjects |= _subjects_of(keys)
    return subjects


def _subjects_of(table: pa.Table) -> set[str]:
    return {
        subject_key(kind, k)
        for kind, column in (("user", "user_keys"), ("account", "account_keys"))
        for k in pc.unique(pc.list_flatten(table.column(column))).to_pylist()
    }


def _holds_any(store: OutputStore, files: list[str], affected: set[str]) -> bool:
    return not published_subjects(store, files).isdisjoint(affected)


def _sweep_day(
    store: OutputStore, day: str, scope: SweepScope, *, sweep_id: str, clock: Clock
) -> dict[str, Any] | None:
    """Re-evaluate one published day (the caller holds its lock); rewrite it if it loses rows."""
    folder = content_day(day)
    files = _day_files(store, day)
    affected = scope.only
    if affected is not None and not _holds_any(store, files, affected):
        return None
    tables = {file_name(path): read_table(store, path) for path in files}
    # the day as it is under its lock (a full scope asks again for subjects published since it first asked)
    consent = scope.consent_of(lambda: set().union(*map(_subjects_of, tables.values())))
    kept: dict[str, pa.Table] = {}
    removed_parts: list[pa.Table] = []
    reasons: list[str] = []
    rows_before = 0
    for name, table in tables.items():
        rows_before += table.num_rows
        row_reasons = withdrawal_reasons(table, consent.snapshot, affected)  # None: a full sweep judges all
        mask = pa.array([r is None for r in row_reasons], pa.bool_())
        kept[name] = table.filter(mask)
        removed_parts.append(table.filter(pc.invert(mask)))
        reasons.extend(r for r in row_reasons if r is not None)
    if not reasons:
        return None
    stage = f"{staging_day(day)}/{sweep_id}"  # where recover_day finds it, like a run's stage
    begin_publication(store, stage)  # killed from here on: the next holder of the day lock undoes it
    store.makedirs(f"{stage}/content")
    for name, table in kept.items():
        if table.num_rows:
            write_table(store, f"{stage}/content/{name}", table)
    versioned_names(store, f"{stage}/content", attempt_suffix(sweep_id))
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
        swaps.append((f"{stage}/audit", audit_day(day)))  # last: its exchange is the commit
    publish_folders(store, stage, swaps)  # superseded files are deleted once committed
    store.remove(stage)
    return purge


def _append_rows(store: OutputStore, relative: str, rows: pa.Table, schema: pa.Schema) -> None:
    previous = read_table(store, relative).cast(schema) if store.exists(relative) else schema.empty_table()
    write_table(store, relative, pa.concat_tables([previous, rows.select(schema.names).cast(schema)]))


def _stage_evidence(store: OutputStore, day: str, stage: str, withdrawn: pa.Table, purge: dict[str, Any]) -> str:
    """A new version of the day's evidence in `stage`/audit: the purged rows become excluded rows (and
    withdrawn rows), counts and output checksums follow the staged content, the purge goes under `sweeps`."""
    audit, staged, folder = audit_day(day), f"{stage}/audit", content_day(day)
    if not store.exists(manifest_path(day)):
        return "missing"  # content was purged all the same; the sweep log holds the record
    for relative in store.tree(audit):
        if store.history_stays_in_place and relative.startswith(f"{HISTORY}/"):
            continue  # the append-only history is not staged (stores.ObjectStorage.exchange_folders)
        store.copy_file(f"{audit}/{relative}", f"{staged}/{relative}")  # server-side on object stores
    evidence = {"excluded.parquet": EXCLUDED_SCHEMA, "withdrawn.parquet": WITHDRAWN_SCHEMA}
    for name, schema in evidence.items():
        _append_rows(store, f"{staged}/{name}", withdrawn, schema)
    previous = Manifest.from_json(json.loads(store.fs.cat_file(store.path(f"{staged}/manifest.json"))))
    rewritten = [(f"{staged}/{name}", f"{audit}/{name}") for name in evidence]
    rewritten += [(path, f"{folder}/{file_name(path)}") for path in store.files(f"{stage}/content", ".parquet")]
    outputs = [
        o for o in previous.outputs or []
        if not o["path"].startswith(f"{folder}/") and o["path"] not in {p for _, p in rewritten}
    ]  # fmt: skip
    outputs += [store.output_entry(relative, published_as) for relative, published_as in rewritten]
    manifest = swept_version(previous, purge, outputs).to_json()
    store.write_json(f"{staged}/manifest.json", manifest)
    store.write_json(f"{staged}/{HISTORY}/{purge['sweep_id']}.json", manifest)
    audit_pages.write_day_report(store, staged, manifest)  # the day's report.html follows the new version
    return manifest_path(day)
