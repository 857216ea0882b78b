"""
### consent_gate_daily

Publishes one UTC day of **training-eligible meeting content** and **telemetry aggregates**.

Each run snapshots consent at a pinned `as_of`, gates the day's meeting artifacts (dropping all
content whose subjects did not opt in), aggregates telemetry with k-suppression, checks that every
input unit is accounted for, and only then publishes atomically with a manifest under `_audit/`.

- **Which day:** scheduled and backfill runs process their data interval's day; a manual run processes
  the last complete UTC day, or the day named by the `day` param.
- **Settings:** connection `consent_db`; variables `consent_gate_raw_uri`, `consent_gate_out_uri`,
  `consent_gate_hmac_key`, `consent_gate_policy_file` (see `airflow_settings.yaml`).
- **Scale-out:** the `shards` param (default 1) splits the day's meetings by a stable hash of the
  meeting_id; `gate_content` is mapped over the shards, then the day is validated and published once.
- **Events, alerts:** `publish` emits one event per asset, the day as partition key, figures in `extra`
  (`consent_gate.assets`); a failed run alerts "day D published nothing: ..." (`consent_gate.alerts`).
- **Cleanup:** `snapshot_consent` is the run's setup and `end_attempt` its teardown: whatever fails,
  an attempt that was not published keeps its evidence under `_audit/dt=D/attempts/` and its staged
  content is deleted. Clearing one task re-runs the setup (a new snapshot): clear the whole run.
- All logic lives in `include/consent_gate`; this file only wires the steps.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, setup, task, teardown
from airflow.timetables.interval import CronDataIntervalTimetable

from consent_gate.alerts import daily_run_failed
from consent_gate.assets import AGGREGATES, CONTENT
from consent_gate.runs import publish_pool


@dag(
    dag_id="consent_gate_daily",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "data-platform", "retries": 1, "retry_delay": pendulum.duration(minutes=2)},
    params={
        "day": Param(None, type=["null", "string"], description="UTC day YYYY-MM-DD; default: the run's interval"),
        "as_of": Param(None, type=["null", "string"], description="consent snapshot instant; default: now"),
        "shards": Param(1, type="integer", minimum=1, maximum=256, description="meeting shards gated in parallel"),
        "allow_shrink": Param(False, type="boolean", description="let a rerun replace a day with < half its units"),
    },
    tags=["consent-gate", "privacy", "training-data"],
    doc_md=__doc__,
    on_failure_callback=daily_run_failed,  # "day D published nothing: checks X failed, evidence at ..."
)
def consent_gate_daily():
    @setup
    def snapshot_consent(params=None, data_interval_start=None, data_interval_end=None, run_id=None) -> dict:
        """Pin the day and `as_of`; record the visible consent's checksum in a new stage."""
        from consent_gate.airflow_tasks import snapshot_task

        return snapshot_task(params, data_interval_start, data_interval_end, run_id)

    @task
    def shard_numbers(stage: dict) -> list[int]:
        """The shards the day's meetings are split into (a stable hash of each meeting_id)."""
        return list(range(stage["shards"]))

    @task
    def gate_content(stage: dict, shard: int) -> dict:
        """Gate one shard of the day's meeting artifacts into staged content, exclusions and quarantine."""
        from consent_gate.airflow_tasks import gate_task

        return gate_task(stage, shard)

    @task
    def aggregate_telemetry(stage: dict) -> dict:
        """Aggregate the day's telemetry; small groups are suppressed."""
        from consent_gate.airflow_tasks import aggregate_task

        return aggregate_task(stage)

    @task
    def validate(stage: dict, content: dict, telemetry: dict) -> dict:
        """Reconcile every unit and check the quarantine ratio; a failure publishes nothing."""
        from consent_gate.airflow_tasks import validate_task

        return validate_task(stage)

    @task(outlets=[CONTENT, AGGREGATES], pool=publish_pool())
    def publish(stage: dict, outlet_events=None) -> str:
        """Publish the validated stage atomically; one asset event for the day (its partition key)."""
        from consent_gate.airflow_tasks import publish_task

        return publish_task(stage, outlet_events)

    @teardown
    def end_attempt(stage: dict) -> str | None:
        """Whatever happened: an unpublished attempt keeps its evidence and loses its staged content."""
        from consent_gate.airflow_tasks import end_attempt_task

        return end_attempt_task(stage)

    stage = snapshot_consent()
    content = gate_content.partial(stage=stage).expand(shard=shard_numbers(stage))
    publish(validate(stage, content, aggregate_telemetry(stage))) >> end_attempt(stage)


consent_gate_daily()
