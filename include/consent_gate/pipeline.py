"""One day through the gate, for the command line: snapshot consent, gate content, aggregate
telemetry, check, publish, each step timed; a failed attempt leaves its evidence.

The steps are in `steps`, the checks in `checks` and `validation`, the publication transaction in
`publication`; the Airflow DAG runs the same functions as tasks (`airflow_tasks`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from consent_gate.checks import CheckResult
from consent_gate.config import Clock, RunSettings
from consent_gate.errors import AttemptNotRecorded, GateCheckFailed
from consent_gate.layout import manifest_path
from consent_gate.publication import publish_stage, record_failed_attempt
from consent_gate.steps import Progress, aggregate_day, gate_content, snapshot_consent
from consent_gate.validation import validate_stage


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
    clock: Clock,
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
        lambda: snapshot_consent(
            settings, day, as_of, run_id=run_id, dag_run_id=dag_run_id, progress=progress, clock=clock
        ),
    )
    try:
        timed("gate_content", lambda: gate_content(settings, stage, progress=progress))
        timed("aggregate_telemetry", lambda: aggregate_day(settings, stage))
        checks = timed("validate", lambda: validate_stage(settings, stage))
        if not all(c.passed for c in checks):
            failed = ", ".join(c.name for c in checks if not c.passed)
            raise GateCheckFailed(f"checks failed: {failed}")
        manifest = timed("publish", lambda: publish_stage(settings, stage, clock=clock))
    except BaseException as error:  # Ctrl-C too: no staged content outlives the run
        try:
            record_failed_attempt(settings, stage, f"{type(error).__name__}: {error}", clock=clock)
        except AttemptNotRecorded as unrecorded:  # the run's own error stays the one raised
            error.add_note(str(unrecorded))
        raise
    return RunOutcome(True, manifest_path(day), manifest, checks)
