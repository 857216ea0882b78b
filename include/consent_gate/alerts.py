"""Alerts on the pipeline's promises: a day that published nothing, and a sweep that runs late.

- `daily_run_failed` is the daily DAG's `on_failure_callback`: "day D published nothing: checks X
  failed, evidence at <the failed attempt's manifest>", read from the attempt the run left under
  `_audit/dt=D/attempts/` (counts and check names only: never content, never ids).
- `sweep_deadline` is the sweep DAG's DeadlineAlert (Airflow 3): a sweep run that has not finished
  `CONSENT_GATE_SWEEP_DEADLINE_MINUTES` (default 60) after it was queued puts SPEC §7's promise at
  risk (withdrawn content stays published); the triggerer calls `sweep_deadline_missed`.

Where alerts go is configurable: the Airflow variable `consent_gate_alert_notifier` or the environment
variable `CONSENT_GATE_ALERT_NOTIFIER` names a callable `module:attribute` taking (message, details),
for example a function that posts to the on-call channel, or an Airflow notifier's `notify`. Without
one, alerts are logged at ERROR level (the callback's log in Airflow). An alert that cannot be sent
is logged, never raised: a broken notifier must not hide the failure it reports.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from consent_gate.layout import attempts_folder

if TYPE_CHECKING:
    from consent_gate.publish import OutputStore

log = logging.getLogger(__name__)

NOTIFIER_VARIABLE, NOTIFIER_ENV = "consent_gate_alert_notifier", "CONSENT_GATE_ALERT_NOTIFIER"
SWEEP_DEADLINE_ENV, SWEEP_DEADLINE_DEFAULT_MINUTES = "CONSENT_GATE_SWEEP_DEADLINE_MINUTES", 60

Notifier = Callable[[str, dict[str, Any]], Any]


# --- what an alert says (pure) ---------------------------------------------------------------------


def failed_checks(attempt: dict[str, Any] | None) -> list[str]:
    """The names of the checks an attempt failed (none when it failed before its checks ran)."""
    return [c["name"] for c in (attempt or {}).get("checks") or [] if not c.get("passed")]


def nothing_published_message(day: str, attempt: dict[str, Any] | None, evidence: str | None) -> str:
    """`day D published nothing: checks X failed, evidence at …`, or why when no check failed."""
    checks = failed_checks(attempt)
    if checks:
        why = f"checks {', '.join(checks)} failed"
    elif attempt is not None and attempt.get("failure"):
        why = f"the attempt failed before its checks passed ({_first_line(attempt['failure'])})"
    else:
        why = "the run failed before it recorded an attempt (see the task logs)"
    return f"day {day} published nothing: {why}, evidence at {evidence or 'no attempt manifest'}"


def sweep_late_message(run_id: str, minutes: int) -> str:
    return (
        f"the revocation sweep run {run_id} has not finished {minutes} min after it was queued: withdrawn "
        "content may still be published (SPEC §7); check the consent_revocation_sweep DAG"
    )


def _first_line(text: str) -> str:
    return str(text).splitlines()[0][:300] if text else ""


def sweep_deadline_minutes(environ: dict[str, str] | None = None) -> int:
    """The sweep's deadline in minutes, from the environment (read at parse time: never a Variable there)."""
    raw = (os.environ if environ is None else environ).get(SWEEP_DEADLINE_ENV) or str(SWEEP_DEADLINE_DEFAULT_MINUTES)
    try:
        minutes = int(raw)
    except ValueError:
        raise ValueError(f"{SWEEP_DEADLINE_ENV} must be a whole number of minutes, got {raw!r}") from None
    if minutes < 1:
        raise ValueError(f"{SWEEP_DEADLINE_ENV} must be at least 1 minute, got {minutes}")
    return minutes


# --- where alerts go ---------------------------------------------------------------------------------


def load_notifier(spec: str | None) -> Notifier:
    """The callable named `module:attribute` (dots allowed after the colon); logging when none is named."""
    if not spec:
        return _log_notifier
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"notifier {spec!r} is not 'module:attribute'")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"notifier {spec!r} is not callable")
    return target


def _log_notifier(message: str, details: dict[str, Any]) -> None:
    log.error("ALERT %s", message)


def configured_notifier() -> Notifier:
    spec = os.environ.get(NOTIFIER_ENV)
    try:
        from airflow.sdk import Variable

        spec = Variable.get(NOTIFIER_VARIABLE, default=None) or spec
    except Exception:  # no Airflow context (the triggerer, a CLI): the environment decides
        pass
    return load_notifier(spec)


def send(message: str, details: dict[str, Any]) -> None:
    """Send an alert; a failing notifier is logged with the message, never raised."""
    try:
        configured_notifier()(message, details)
    except Exception:
        log.exception("could not send the alert %r", message)


# --- Airflow callbacks -------------------------------------------------------------------------------


def attempt_of_run(store: OutputStore, day: str, run_id: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """The attempt manifest a DAG run left for `day` (the newest if it left several), and its URI."""
    folder = attempts_folder(day)
    if not store.exists(folder):
        return None, None
    found: tuple[str | None, dict[str, Any] | None] = (None, None)
    for path in store.files(folder, ".json"):
        manifest = store.read_json(path)
        if run_id is not None and manifest.get("dag_run_id") == run_id and manifest.get("status") == "failed":
            if found[1] is None or str(manifest.get("ended_at")) >= str(found[1].get("ended_at")):
                found = (store.uri(path), manifest)
    return found


def daily_run_failed(context: dict[str, Any]) -> None:
    """The daily DAG's on_failure_callback: say which day published nothing, why, and where the evidence is."""
    from airflow.sdk import Variable

    from consent_gate.config import project_var
    from consent_gate.runs import VAR_OUT, partition_for_run
    from consent_gate.stores import storage_for

    run = context.get("dag_run")
    run_id = getattr(run, "run_id", None)
    try:
        conf = getattr(run, "conf", None) or {}
        day = partition_for_run(
            getattr(run, "data_interval_start", None), getattr(run, "data_interval_end", None), conf.get("day")
        ).isoformat()
        # only where the outputs are: the alert must not depend on the consent store or the HMAC secret
        store = storage_for(Variable.get(VAR_OUT, default=str(project_var() / "out")))
        evidence, attempt = attempt_of_run(store, day, run_id)
    except Exception as error:  # the alert goes out even when the evidence cannot be read
        log.exception("reading the failed run's evidence")
        day, evidence, attempt = "unknown", None, {"failure": f"evidence unreadable: {type(error).__name__}"}
    message = nothing_published_message(day, attempt, evidence)
    send(message, {"dag_id": "consent_gate_daily", "run_id": run_id, "day": day, "failed_checks":
                   failed_checks(attempt), "evidence": evidence})  # fmt: skip


async def sweep_deadline_missed(context: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """The sweep's DeadlineAlert callback (runs in the triggerer)."""
    run = (context or {}).get("dag_run")
    run_id = (run.get("run_id") if isinstance(run, dict) else getattr(run, "run_id", None)) or "?"
    minutes = int(kwargs.get("minutes") or sweep_deadline_minutes())
    send(sweep_late_message(run_id, minutes), {"dag_id": "consent_revocation_sweep", "run_id": run_id,
                                               "deadline_minutes": minutes})  # fmt: skip


def sweep_deadline() -> Any:
    """The sweep DAG's DeadlineAlert: its run must finish within the configured minutes of being queued."""
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    minutes = sweep_deadline_minutes()
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=minutes),
        callback=AsyncCallback(sweep_deadline_missed, kwargs={"minutes": minutes}),
        name="consent_gate_sweep_promise",
    )
