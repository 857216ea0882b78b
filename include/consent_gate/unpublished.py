"""Unpublished stages and the consent of now: no staged content outlives its run, none is resurrected.

- `withhold_withdrawn` re-applies the consent of now to a stage just before it is published, so a
  rerun or backfill pinned to an older `as_of` never re-admits withdrawn content (SPEC §7).
- `discard_abandoned_stages` deletes the stages of runs that died without ending their attempt (older
  than the policy's `max_stage_age_hours`), and any unpublished stage holding withdrawn rows, keeping
  each one's evidence as a failed attempt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from consent_gate.consent import ConsentSnapshot, ConsentStoreError
from consent_gate.errors import SweepError
from consent_gate.gate import EXCLUDED_SCHEMA
from consent_gate.keyed_consent import withdrawal_reasons, withdrawn_rows
from consent_gate.keys import Keyer
from consent_gate.layout import (
    RUN_RECORD,
    STAGING,
    attempt_record,
    content_report,
    days_of,
    file_name,
    part_name,
    shard_of_part,
    staging_day,
)
from consent_gate.manifest import abandoned_manifest
from consent_gate.parquet import read_table, write_table
from consent_gate.publish import OutputStore, recover_day
from consent_gate.records import parse_timestamp
from consent_gate.sweep_scope import changed_consent


def stage_holds_withdrawn(
    store: OutputStore, root: str, snapshot: ConsentSnapshot, only: set[str] | None = None
) -> bool:
    """Whether a stage's staged content holds a row that `snapshot` (current consent, keyed; of the subjects
    `only`, or of all) no longer allows. A part that cannot be read yet (a run still writing it) is left to
    its run or to the age rule."""
    for path in store.files(f"{root}/content", ".parquet"):
        try:
            table = read_table(store, path)
        except (OSError, pa.ArrowException):
            continue
        try:
            if any(reason is not None for reason in withdrawal_reasons(table, snapshot, only)):
                return True
        except SweepError:
            return True  # rows the sweep cannot evaluate: fail closed
    return False


StageJudge = Callable[[OutputStore, str, "dict[str, Any] | None"], bool]


def discard_abandoned_stages(
    store: OutputStore, started_before: datetime, holds_withdrawn: StageJudge | None = None
) -> int:
    """Delete the stages of runs that died without ending their attempt and started before
    `started_before`, and (SPEC §7, revised 2026-11-28) every unpublished stage, whatever its age, whose
    content `holds_withdrawn` (stage root, its run.json) rows that current consent no longer allows;
    each keeps a failed-attempt record.
    Returns how many were deleted. A run whose stage is deleted this way fails ("rerun the day").

    Under each day's lock: a stage that died publishing (journaled) is finished or undone by
    `recover_day` first; a stage without `run.json` never got past its first write and holds nothing.
    """
    deleted = 0
    for day in days_of(store.folders(STAGING)):
        with store.day_lock(day):
            recover_day(store, day)
            for attempt in store.folders(staging_day(day)):
                root = f"{staging_day(day)}/{attempt}"
                run = store.read_json(f"{root}/{RUN_RECORD}") if store.exists(f"{root}/{RUN_RECORD}") else None
                withdrawn = holds_withdrawn is not None and holds_withdrawn(store, root, run)
                young = run is not None and parse_timestamp(run["started_at"], "started_at") >= started_before
                if young and not withdrawn:
                    continue  # a run that may still be going: its own teardown or publication ends it
                evidence = attempt_record(day, attempt)
                if run is not None and not store.exists(evidence):
                    failure = (
                        "its staged content holds rows whose consent was withdrawn; the revocation sweep "
                        "deleted the stage (SPEC §7)"
                        if withdrawn
                        else f"abandoned: the run never ended this attempt; its stage (started before "
                        f"{started_before.isoformat()}) was deleted by the revocation sweep"
                    )
                    store.write_json(evidence, abandoned_manifest(run, failure).to_json())
                store.remove(root)
                deleted += 1
            if not store.folders(staging_day(day)):
                store.remove(staging_day(day))
    return deleted


def withhold_withdrawn(
    store: OutputStore, stage_root: str, consent_url: str, secret: bytes, now: datetime
) -> dict[str, Any]:
    """Before a stage is published, drop the rows whose consent was withdrawn since its pinned as_of.

    The stage keeps its pinned snapshot as evidence; what the consent of now no longer allows
    becomes excluded with its reason: the shard's excluded part
    and count report are updated so every unit stays accounted for. Returns what was withheld.
    """
    run = store.read_json(f"{stage_root}/{RUN_RECORD}")
    pinned = parse_timestamp(run["consent"]["as_of"], "as_of")
    as_of = now.astimezone(UTC)
    if pinned > as_of:  # never max(now, pinned): future-dated grants would be in force at a future pin
        raise SweepError(
            f"the stage's pinned as_of {pinned.isoformat()} is later than now; a future as_of is refused, rerun the day"
        )
    # every revocation of the subjects named since the pin counts, not only those in force after it: a row
    # recorded before the pin can reach the store after the snapshot (replication lag, a back-dated write)
    try:
        changed = changed_consent(consent_url, Keyer(secret), pinned, as_of, purpose="no-resurrection")
    except ConsentStoreError:
        raise SweepError("a consent row recorded since the pinned as_of cannot be read; refusing to publish") from None
    if changed.unreadable_subjects:
        raise SweepError("a consent row recorded since the pinned as_of has no readable subject; refusing to publish")
    consent = changed.consent
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


def _withhold_part(
    store: OutputStore,
    stage_root: str,
    path: str,
    snapshot: ConsentSnapshot,
    withdrawn_by: str,
    only: set[str] | None = None,
) -> Counter[str]:
    table = read_table(store, path)
    reasons = withdrawal_reasons(table, snapshot, only)
    dropped = Counter(r for r in reasons if r is not None)
    if not dropped:
        return dropped
    shard = shard_of_part(path)
    report_path = f"{stage_root}/{content_report(shard)}"
    if not store.exists(report_path):
        raise SweepError(f"stage part {file_name(path)} has no count report; refusing to publish")
    mask = pa.array([r is None for r in reasons], pa.bool_())
    removed = table.filter(pc.invert(mask))
    write_table(store, path, table.filter(mask))
    withdrawn = withdrawn_rows(removed, [r for r in reasons if r is not None], withdrawn_by, snapshot.as_of)
    write_table(
        store, f"{stage_root}/audit/excluded/withdrawn-{shard}.parquet", withdrawn.select(EXCLUDED_SCHEMA.names)
    )
    write_table(store, f"{stage_root}/audit/withdrawn/{part_name(shard)}", withdrawn)
    report = store.read_json(report_path)
    report["published"] -= sum(dropped.values())
    merged = Counter(report["excluded"])
    merged.update(dropped)
    report["excluded"] = dict(sorted(merged.items()))
    store.write_json(report_path, report)
    return dropped
