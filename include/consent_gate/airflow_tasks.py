"""The bodies of the DAGs' tasks: a few lines each around `steps`, `publication` and `sweep`, testable
with Airflow installed. The clock is read here, at the edge, and passed in.

Stages travel between tasks as small dicts ({"day", "attempt"}): paths, never data frames.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from datetime import date, timedelta
from typing import Any

from consent_gate import errors, publication, steps
from consent_gate.config import utc_now
from consent_gate.layout import Stage, attempts_folder, manifest_path
from consent_gate.publish import InterruptedPublication
from consent_gate.runs import as_of_for_run, partition_for_run, settings_from_airflow
from consent_gate.sweep import sweep
from consent_gate.validation import validate_stage

log = logging.getLogger(__name__)


def _stage(payload: dict[str, Any]) -> Stage:
    return Stage(date.fromisoformat(payload["day"]), payload["attempt"])


def shard_count(requested: Any) -> int:
    """The number of meeting shards of a run: the `shards` param (default 1), a positive integer."""
    if requested is None:
        return 1
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ValueError("param 'shards' must be a positive integer")
    return requested


def snapshot_task(params: Any, interval_start: Any, interval_end: Any, run_id: str | None) -> dict[str, Any]:
    params = params or {}
    day = partition_for_run(interval_start, interval_end, params.get("day"))
    shards = shard_count(params.get("shards"))
    as_of = as_of_for_run(params.get("as_of"), utc_now())
    settings = settings_from_airflow()
    stage = steps.snapshot_consent(settings, day, as_of, run_id=run_id or "manual", dag_run_id=run_id, clock=utc_now)
    log.info("partition %s, consent as of %s, stage %s", day, as_of.isoformat(), stage.root)
    return {
        "day": day.isoformat(), "attempt": stage.attempt, "shards": shards,
        "allow_shrink": params.get("allow_shrink") is True,  # the operator's explicit choice only
    }  # fmt: skip


def gate_task(payload: dict[str, Any], shard: int = 0) -> dict[str, Any]:
    """Gate one shard of the stage's meetings; the shard count travels in the stage payload."""
    shards = shard_count(payload.get("shards"))
    report = steps.gate_content(settings_from_airflow(), _stage(payload), shard=shard, shards=shards, progress=log.info)
    return asdict(report)


def aggregate_task(payload: dict[str, str]) -> dict[str, int]:
    return steps.aggregate_day(settings_from_airflow(), _stage(payload))


def validate_task(payload: dict[str, str]) -> dict[str, str]:
    """Failing checks fail the task for good (no retry can fix the data) and keep the evidence."""
    from airflow.exceptions import AirflowFailException

    settings, stage = settings_from_airflow(), _stage(payload)
    checks = validate_stage(settings, stage)
    for check in checks:
        log.info("check %s: %s (%s)", check.name, "passed" if check.passed else "FAILED", check.detail)
    failed = [c.name for c in checks if not c.passed]
    if failed:
        reason = f"checks failed: {', '.join(failed)}"
        evidence = publication.record_failed_attempt(settings, stage, reason, clock=utc_now)
        raise AirflowFailException(f"checks failed: {', '.join(failed)}; nothing published; evidence: {evidence}")
    return payload


def publish_task(payload: dict[str, Any], outlet_events: Any = None) -> str:
    """Failed checks or an interrupted earlier try fail the task for good: a rerun needs a new snapshot.
    Once published, the day's asset events get the day as partition key and the manifest's figures."""
    from airflow.exceptions import AirflowFailException

    settings = replace(settings_from_airflow(), allow_shrink=payload.get("allow_shrink") is True)
    stage = _stage(payload)
    try:
        manifest = publication.publish_stage(settings, stage, clock=utc_now)
    except (errors.GateCheckFailed, InterruptedPublication) as error:
        raise AirflowFailException(f"{error}; evidence under {attempts_folder(stage.day)}/") from None
    log.info("published %s: %s content rows", manifest["partition"], manifest["counts"]["content"]["published"])
    if outlet_events is not None:
        from consent_gate.assets import announce_publication

        extra = announce_publication(outlet_events, settings.store(), settings.out, stage.day.isoformat())
        log.info("asset events for %s: manifest sha256 %s", extra["day"], extra["manifest_sha256"])
    from consent_gate.lineage import emit_publication

    emit_publication(manifest, settings.raw, settings.out, settings.consent_db)  # optional; never fails the task
    return f"{settings.out}/{manifest_path(stage.day)}"


def end_attempt_task(payload: dict[str, str]) -> str | None:
    """The run's teardown, whatever its tasks did: a stage that was not published is recorded as a
    failed attempt and deleted, so no staged content outlives the run. A published stage is gone already."""
    settings, stage = settings_from_airflow(), _stage(payload)
    reason = "the run ended without publishing this attempt"
    evidence = publication.record_failed_attempt(settings, stage, reason, clock=utc_now)
    log.info("attempt %s of %s ended; evidence: %s", stage.attempt, stage.day.isoformat(), evidence)
    return evidence


# --- the revocation sweep's DAG ------------------------------------------------------------------


def sweep_task(params: Any, run_id: str | None = None) -> dict[str, Any]:
    """The DAG's task: settings from Airflow, as_of = now unless the `as_of` param pins it."""
    params = params or {}
    settings = settings_from_airflow()
    as_of = as_of_for_run(params.get("as_of"), utc_now())
    outcome = sweep(
        settings.store(), settings.consent_db, settings.secret, as_of, full=bool(params.get("full")),
        max_stage_age=timedelta(hours=settings.policy.max_stage_age_hours), dag_run_id=run_id,
        clock=utc_now,
        full_every=timedelta(hours=settings.policy.full_sweep_every_hours),
    )  # fmt: skip
    return {
        "sweep_id": outcome.sweep_id,
        "mode": outcome.mode,
        "days_rewritten": len(outcome.purges),
        "rows_removed": outcome.rows_removed,
        "abandoned_stages_deleted": outcome.abandoned_stages_deleted,
        "log": f"{settings.out}/{outcome.log_path}",
    }


def renew_ledger_task() -> dict[str, Any]:
    """The DAG's task renewing the consent ledger when it is due (`steps.renew_consent_ledger`): the
    whole-store read happens here, hourly at most and usually weekly, not in a daily run."""
    outcome = steps.renew_consent_ledger(settings_from_airflow(), now=utc_now(), progress=log.info)
    if not outcome["renewed"] and outcome["why"] != steps.NOT_DUE:
        log.warning("consent ledger not renewed: %s", outcome["why"])
    return outcome


def announce_task(summary: dict[str, Any], outlet_events: Any) -> dict[str, Any]:
    """The DAG's announcing task: one content event per day the sweep rewrote. A sweep that changed no
    day emits nothing (the task is skipped), so consumers run only when published data changed."""
    from airflow.exceptions import AirflowSkipException

    from consent_gate.assets import announce_sweep

    if not summary.get("days_rewritten"):
        raise AirflowSkipException("the sweep rewrote no day: nothing to announce")
    settings = settings_from_airflow()
    return announce_sweep(outlet_events, settings.store(), settings.out, summary)
