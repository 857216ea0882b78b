"""Step 5, the publication transaction: a validated stage becomes the day's published version, or
its attempt ends as a failed attempt with its evidence kept.

Under the day lock: an interrupted publication is recovered first, a shrinking rerun is refused, the
consent of now is re-applied (no resurrection), the folders are exchanged with the audit folder last
(the commit), and a publication that raises is undone (`publish.recover_day`).
"""

from __future__ import annotations

from typing import Any

from consent_gate import audit
from consent_gate.checks import staged_counts
from consent_gate.config import Clock, RunSettings
from consent_gate.errors import AttemptNotRecorded, GateCheckFailed, ShrinkRefused, os_reason
from consent_gate.gate import EXCLUDED_SCHEMA, SPEAKERS_SCHEMA, WITHDRAWN_SCHEMA
from consent_gate.layout import (
    AUDIT,
    CHECKS_REPORT,
    RUN_RECORD,
    Stage,
    aggregates_day,
    attempt_record,
    attempt_suffix,
    attempts_folder,
    audit_day,
    content_day,
    day_folder,
    file_name,
    manifest_path,
)
from consent_gate.manifest import FAILED, PUBLISHED, Manifest, build_manifest, read_manifest
from consent_gate.parquet import merge_parquet
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
from consent_gate.steps import INPUTS_SCHEMA, QUARANTINE_SCHEMA
from consent_gate.unpublished import withhold_withdrawn
from consent_gate.validation import validate_stage


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
        merge_parquet(store, store.files(stage / f"audit/{name}", ".parquet"), stage / f"audit/{name}.parquet", schema)
        store.remove(stage / f"audit/{name}")


def _output_files(settings: RunSettings, stage: Stage) -> list[dict[str, Any]]:
    store = settings.store()
    outputs = []
    for folder in ("content", "aggregates", "audit"):
        target = day_folder(AUDIT if folder == "audit" else folder, stage.day)
        for path in store.files(stage / folder, ".parquet"):
            outputs.append(store.output_entry(path, f"{target}/{file_name(path)}"))
    return outputs


def record_failed_attempt(settings: RunSettings, stage: Stage, reason: str, *, clock: Clock) -> str | None:
    """End an attempt that will not publish: keep its evidence under `_audit/dt=D/attempts/` (once),
    then delete its stage, so no staged content outlives its run (a revocation could not reach it).

    Returns the attempt's record (`_audit/dt=D/attempts/<attempt>.json`, a published attempt's too); None
    when it has none (its stage was gone, or never held its run record). When
    the output cannot be written (a full disk, a read-only mount) the stage is still deleted if it can
    be, and AttemptNotRecorded says plainly what was and was not left behind; nothing half-written stays.
    """
    try:
        return _record_failed_attempt(settings, stage, reason, clock)
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


def _record_failed_attempt(settings: RunSettings, stage: Stage, reason: str, clock: Clock) -> str | None:
    """End an attempt that will not publish: keep its evidence under `_audit/dt=D/attempts/` (once),
    then delete its stage, so no staged content outlives its run (a revocation could not reach it).

    Under the day lock an interrupted publication of the day is first finished or undone, so a stage
    is never deleted half-exchanged. Returns the attempt's record, or None when it has none.
    """
    store = settings.store()
    day = stage.day.isoformat()
    evidence = attempt_record(day, stage.attempt)
    with store.day_lock(day):
        recover_day(store, day)
        if not store.exists(stage / RUN_RECORD):
            store.remove(stage.root)
            return evidence if store.exists(evidence) else None
        if not store.exists(evidence):
            _keep_failed_attempt(store, stage, build_manifest(settings, stage, FAILED, now=clock(), failure=reason))
        store.remove(stage.root)
    return evidence


def _keep_failed_attempt(store: OutputStore, stage: Stage, manifest: Manifest) -> str:
    """Write a failed attempt's manifest and reports under `_audit/dt=D/attempts/` (day lock held)."""
    target = attempt_record(stage.day, stage.attempt)
    written = manifest.to_json()
    store.write_json(target, written)
    audit.keep_failed_attempt(store, stage / "audit", target.removesuffix(".json"), written)
    return target


def publish_stage(settings: RunSettings, stage: Stage, *, clock: Clock) -> dict[str, Any]:
    """Publish a validated stage: content, aggregates, then the audit evidence, each atomically.
    `clock` gives the instant whose consent is re-applied (no resurrection) and the manifest's end."""
    store = settings.store()
    day = stage.day.isoformat()
    if not store.exists(stage / CHECKS_REPORT):
        published = _published_by(store, stage)
        if published is not None:
            return published  # a retry after this attempt was published in full
        raise InterruptedPublication(f"stage {stage.attempt} of {day} is gone or was never validated; rerun the day")
    checks = store.read_json(stage / CHECKS_REPORT)
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
        elif (published := _published_by(store, stage)) is not None:
            # Killed after its commit and its journal's removal, before its stage's removal: published. (On
            # an object store the stage keeps its staged copies: publishing them again would collide.)
            manifest = published
            store.remove(stage.root)
        else:
            if not settings.allow_shrink:
                refuse_shrink(store, stage, staged_counts(settings, stage)["units_in"])
            begin_publication(store, stage.root)
            try:
                manifest = _publish_locked(settings, stage, clock)
            except BaseException as error:
                _abandon_publication(settings, stage, error, clock)
                raise
    audit.write_index(store)
    return manifest


def _published_by(store: OutputStore, stage: Stage) -> dict[str, Any] | None:
    """The day's published manifest when it is this attempt's (its publication committed), else None."""
    published = manifest_path(stage.day)
    if not store.exists(published):
        return None
    manifest = store.read_json(published)
    return manifest if manifest.get("attempt") == stage.attempt else None


def refuse_shrink(store: OutputStore, stage: Stage, units_in: int) -> None:
    """ShrinkRefused when the published version of the day holds more than twice `units_in` units."""
    published = manifest_path(stage.day)
    if not store.exists(published):
        return
    previous = (store.read_json(published).get("counts") or {}).get("units_in") or 0
    if units_in * 2 < previous:
        raise ShrinkRefused(
            f"refusing to replace the published {stage.day} ({previous} units) with {units_in} units, less than "
            "half; if the day really shrank, rerun with --allow-shrink (DAG param allow_shrink)"
        )


def _abandon_publication(settings: RunSettings, stage: Stage, error: BaseException, clock: Clock) -> None:
    """A publication that raised (day lock held): undo what it exchanged, then keep its evidence.
    Past its commit only the cleanup failed: the new version is published; it is finished instead."""
    store, day = settings.store(), stage.day.isoformat()
    complete = not store.exists(f"{stage.root}/{JOURNAL}")  # begun before; dropped only once complete
    if complete or publication_committed(store, stage.root):
        recover_day(store, day)
        store.remove(stage.root)
        return
    try:
        failure = f"publication failed: {type(error).__name__}: {error}"
        manifest: Manifest | None = build_manifest(settings, stage, FAILED, now=clock(), failure=failure)
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


def _publish_locked(settings: RunSettings, stage: Stage, clock: Clock) -> dict[str, Any]:
    """The publication itself, day lock held and journal begun: stage evidence, exchange, commit."""
    store, day = settings.store(), stage.day.isoformat()
    # SPEC §7: whatever as_of was pinned, revocations visible now are applied before publishing.
    withheld = withhold_withdrawn(store, stage.root, settings.consent_db, settings.secret, clock())
    if withheld["rows"]:
        failed = [c.name for c in validate_stage(settings, stage) if not c.passed]
        if failed:
            raise GateCheckFailed(f"refusing to publish: checks failed: {', '.join(failed)}")
    for folder in ("content", "aggregates"):  # object stores: never overwrite a file of the current version
        versioned_names(store, stage / folder, attempt_suffix(stage.attempt))
    _finish_audit(settings, stage)
    manifest = build_manifest(
        settings, stage, PUBLISHED, now=clock(), outputs=_output_files(settings, stage), withdrawn_since_as_of=withheld
    ).to_json()
    for folder in ("content", "aggregates"):
        store.makedirs(stage / folder)
    store.write_json(stage / "audit/manifest.json", manifest)
    audit.write_day_report(store, stage / "audit", manifest)
    attempts = attempts_folder(day)
    store.carry_history(attempts, stage / "audit/attempts")
    store.write_json(stage / f"audit/attempts/{stage.attempt}.json", manifest)
    publish_folders(
        store,
        stage.root,
        [(stage / "content", content_day(day)), (stage / "aggregates", aggregates_day(day)),
         (stage / "audit", audit_day(day))],  # the audit folder last: its exchange is the commit
    )  # fmt: skip
    store.remove(stage.root)
    return manifest
