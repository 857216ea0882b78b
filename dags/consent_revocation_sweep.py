"""
### consent_revocation_sweep

Makes a **withdrawal of consent reach published data** (SPEC §7): content of a user or account who
revoked leaves the training-eligible dataset in storage, not just in a listing.

Each run reads the revocations that came into force since the last sweep's watermark, finds the
published days holding rows of those subjects (by the keyed hashes the rows carry), re-evaluates
every row of such a day against the consent of now, and rewrites each day that loses rows under
the day lock with the same atomic swap as publication; superseded files are deleted. Each purge is
recorded (day, rows removed by reason, `as_of`, revocation-to-purge latency) under
`_audit/sweeps/` and in the day's manifest, with no content and no raw ids.

- **When:** every hour on the hour (UTC), and whenever the consent store announces an update
  (asset `consent_events`). With hourly runs a revocation is purged within an hour plus one sweep.
- **Params:** `as_of` pins the consent instant (default: now); `full` re-evaluates every day.
- **Settings:** as `consent_gate_daily` (connection `consent_db`, `consent_gate_*` variables).
- **Events and alerts:** each rewritten day gets an event on `consent_gate_content` (partition key:
  the day; `extra`: kind `sweep`, rows removed by reason, the new manifest's sha256); a run still
  unfinished `CONSENT_GATE_SWEEP_DEADLINE_MINUTES` (60) after it was queued raises an alert.
- **The consent ledger:** `renew_consent_ledger`, beside the sweep, reads the whole consent store and
  renews the ledger once three quarters of its life (policy `full_snapshot_every_hours`) are gone, so
  a daily run always finds one and reads only the rows recorded since (`consent-gate ledger` does it by
  hand, e.g. once at setup).
- **One writer:** the sweep takes the day lock on local storage; on object stores (no lock) it shares
  the 1-slot `consent_gate_publish` pool with the daily publications.
- All logic lives in `include/consent_gate/sweep.py`; this file only wires it.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from consent_gate.alerts import sweep_deadline
from consent_gate.assets import CONSENT_EVENTS, CONTENT
from consent_gate.runs import publish_pool


@dag(
    dag_id="consent_revocation_sweep",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 * * * *", timezone="UTC"), assets=[CONSENT_EVENTS]),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "data-platform", "retries": 2, "retry_delay": pendulum.duration(minutes=1)},
    params={
        "as_of": Param(None, type=["null", "string"], description="consent instant; default: now"),
        "full": Param(False, type="boolean", description="re-evaluate every published day"),
    },
    tags=["consent-gate", "privacy", "training-data", "withdrawal"],
    doc_md=__doc__,
    deadline=sweep_deadline(),  # a run still unfinished N min after it was queued: SPEC §7 at risk, alert
)
def consent_revocation_sweep():
    @task(pool=publish_pool())  # one writer at a time with the daily publications
    def sweep(params=None, run_id=None) -> dict:
        """Purge published rows whose consent was withdrawn; returns the sweep's summary."""
        from consent_gate.airflow_tasks import sweep_task

        return sweep_task(params, run_id)

    @task(outlets=[CONTENT])
    def announce_purges(summary: dict, outlet_events=None) -> dict:
        """One content event per rewritten day (its partition key); skipped when no day changed."""
        from consent_gate.airflow_tasks import announce_task

        return announce_task(summary, outlet_events)

    @task
    def renew_consent_ledger() -> dict:
        """Renew the consent ledger by a whole-store read when it is due, so no daily run has to."""
        from consent_gate.airflow_tasks import renew_ledger_task

        return renew_ledger_task()

    announce_purges(sweep())
    renew_consent_ledger()


consent_revocation_sweep()
