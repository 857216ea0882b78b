"""Which day an Airflow run processes, and the run's settings from Airflow's connections and variables.

Kept apart from the DAG file so the rules are unit-tested without a scheduler; Airflow is imported
only inside the functions that need it, at task run time, never at DAG parse time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from consent_gate.config import RunSettings, load_policy, project_var
from consent_gate.keys import MissingSecretError, load_secret
from consent_gate.records import parse_timestamp

CONSENT_CONN_ID = "consent_db"
VAR_RAW, VAR_OUT, VAR_POLICY, VAR_SECRET = (
    "consent_gate_raw_uri", "consent_gate_out_uri", "consent_gate_policy_file", "consent_gate_hmac_key",
)  # fmt: skip


PUBLISH_POOL = "consent_gate_publish"
PUBLISH_POOL_ENV = "CONSENT_GATE_PUBLISH_POOL"


def publish_pool() -> str:
    """The pool of the publish task: `consent_gate_publish` (1 slot) where the deployment created it.

    The scheduler never runs a task whose pool does not exist, and only logs a warning: so the DAG
    names the dedicated pool only when the deployment says it exists (`scripts/airflow-local` creates
    it from airflow_settings.yaml and sets CONSENT_GATE_PUBLISH_POOL). Without it, publications of
    the same day are still serialised by the day lock on local storage.
    """
    return os.environ.get(PUBLISH_POOL_ENV) or "default_pool"


class AmbiguousPartition(ValueError):
    """The run does not say unambiguously which day it is for: fail rather than guess."""


def partition_for_run(
    data_interval_start: datetime | None, data_interval_end: datetime | None, requested_day: str | None = None
) -> date:
    """The UTC day a run processes.

    The DAG uses a daily CronDataIntervalTimetable: scheduled and backfill runs for day D carry the
    interval [D 00:00, D+1 00:00) UTC and run after it closes; a manual run gets the last complete
    day before it was triggered. A `day` param overrides either. Anything that is not exactly one
    UTC day (Airflow 3's default CronTriggerTimetable gives zero-length intervals) is refused.
    """
    if requested_day:
        try:
            return date.fromisoformat(requested_day)
        except ValueError:
            raise AmbiguousPartition("param 'day' is not a YYYY-MM-DD date") from None
    if data_interval_start is None or data_interval_end is None:
        raise AmbiguousPartition("the run has no data interval and no 'day' param")
    start = data_interval_start.astimezone(_utc())
    end = data_interval_end.astimezone(_utc())
    if end - start != timedelta(days=1) or (start.hour, start.minute, start.second, start.microsecond) != (0, 0, 0, 0):
        raise AmbiguousPartition(f"data interval {start.isoformat()} to {end.isoformat()} is not one whole UTC day")
    return start.date()


def as_of_for_run(requested_as_of: str | None, now: datetime) -> datetime:
    """The consent snapshot instant: the `as_of` param when pinned, else the snapshot moment.

    A pin later than `now` is refused (FutureAsOf): future-dated grants would re-admit revoked content.
    """
    from consent_gate.consent import refuse_future_as_of

    if not requested_as_of:
        return now
    return refuse_future_as_of(parse_timestamp(requested_as_of, "as_of"), now, "param 'as_of'")


def _utc() -> Any:
    from datetime import UTC

    return UTC


def consent_url_from_connection(conn: Any) -> str:
    """A SQLAlchemy URL from the Airflow connection `consent_db` (sqlite or postgres)."""
    conn_type = (conn.conn_type or "").lower()
    extra = conn.extra_dejson or {}
    if extra.get("sqlalchemy_url"):
        return extra["sqlalchemy_url"]
    if conn_type == "sqlite":
        return f"sqlite:///{conn.host}"
    if conn_type in ("postgres", "postgresql"):
        auth = conn.login or ""
        if conn.password:
            auth += f":{conn.password}"
        auth = f"{auth}@" if auth else ""
        port = f":{conn.port}" if conn.port else ""
        return f"postgresql+psycopg2://{auth}{conn.host or 'localhost'}{port}/{conn.schema or 'postgres'}"
    raise ValueError(f"connection '{CONSENT_CONN_ID}': unsupported conn_type {conn_type!r} (sqlite or postgres)")


def settings_from_airflow() -> RunSettings:
    """Run settings from the `consent_db` connection and `consent_gate_*` variables, at task run time."""
    from airflow.sdk import BaseHook, Variable

    return settings_from_lookups(lambda key: Variable.get(key, default=None), BaseHook.get_connection)


def settings_from_server() -> RunSettings:
    """The same settings, read inside Airflow's api-server (the auditor plugin), where no task
    context exists: through the server's secrets backends (environment, then the metadata DB)."""
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable

    return settings_from_lookups(
        lambda key: Variable.get(key, default_var=None), Connection.get_connection_from_secrets
    )


def settings_from_lookups(variable: Callable[[str], str | None], connection: Callable[[str], Any]) -> RunSettings:
    """Run settings from a variable lookup (None when unset) and a connection lookup."""
    var = project_var()
    secret_text = variable(VAR_SECRET)
    if secret_text:
        secret = secret_text.encode()
    else:
        try:
            secret = load_secret(var / "hmac.key")
        except MissingSecretError as error:
            raise MissingSecretError(f"set the Airflow variable {VAR_SECRET}, or: {error}") from None
    return RunSettings(
        raw=variable(VAR_RAW) or str(var / "raw"),
        out=variable(VAR_OUT) or str(var / "out"),
        consent_db=consent_url_from_connection(connection(CONSENT_CONN_ID)),
        policy=load_policy(variable(VAR_POLICY) or os.environ.get("CONSENT_GATE_POLICY")),
        secret=secret,
    )
