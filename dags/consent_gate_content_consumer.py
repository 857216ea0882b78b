"""
### consent_gate_content_consumer

An **example downstream DAG**: how a training-data job follows consent-gate's published content.

It runs once per day that changed, when `consent_gate_daily` publishes the day or the revocation sweep
purges rows from it: the content asset's events carry the day as their **partition key**, and this DAG
is partition-aware (`PartitionedAssetTimetable`), so `dag_run.partition_key` is the day. It reads the
day **through its manifest** (`consent-gate files --date D`: the one way that is safe on object
stores, where a listing can see two versions mid-publication) and reports what it found.

- **Publication or purge:** the event's `extra["kind"]` is `publish` or `sweep`; after a sweep a
  consumer that copied the day elsewhere must propagate the purge (replace its copy of the day).
- **Manual runs:** the `day` param names the day.
- Copy it as the start of your own consumer; all logic lives in `consent_gate.consumer`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, PartitionedAssetTimetable, dag, task

from consent_gate.assets import CONTENT


@dag(
    dag_id="consent_gate_content_consumer",
    schedule=PartitionedAssetTimetable(assets=CONTENT),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": pendulum.duration(minutes=2)},
    params={"day": Param(None, type=["null", "string"], description="UTC day YYYY-MM-DD (manual runs)")},
    tags=["consent-gate", "training-data", "example"],
    doc_md=__doc__,
)
def consent_gate_content_consumer():
    @task
    def read_published_day(params=None, dag_run=None, triggering_asset_events=None) -> dict:
        """Read the changed day's content files, listed by its manifest; returns counts, never rows."""
        from consent_gate.consumer import read_day_task

        return read_day_task(params, dag_run, triggering_asset_events)

    read_published_day()


consent_gate_content_consumer()
