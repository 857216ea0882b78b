"""The example consumer DAG's logic: which day an asset event names, and reading it through its manifest.

A downstream job must not list `content/dt=D` on object stores (a listing taken mid-publication can
see two versions); it reads the files the day's manifest names, as `consent-gate files` prints them
(`published_files`, the function behind that command, called here with the deployment's storage options).
"""

from __future__ import annotations

from typing import Any

from consent_gate.assets import CONTENT, change_of_day


class NoDayToRead(ValueError):
    """The run names no day (no partition key, no `day` param): fail rather than guess "latest"."""


def day_of_run(params: dict[str, Any] | None, partition_key: str | None) -> str:
    """The day a consumer run reads: the `day` param of a manual run, else the run's partition key."""
    from datetime import date

    day = (params or {}).get("day") or partition_key
    if not day:
        raise NoDayToRead("the run has no partition key and no 'day' param")
    try:
        return date.fromisoformat(day).isoformat()
    except ValueError:
        raise NoDayToRead(f"{day!r} is not a YYYY-MM-DD day") from None


def change_from_events(events: list[Any], day: str) -> dict[str, Any] | None:
    """What the newest triggering event says about `day` (kind, manifest sha256, rows), or None."""
    for event in sorted(events, key=lambda e: str(getattr(e, "timestamp", "")), reverse=True):
        if getattr(event, "partition_key", None) == day:
            return change_of_day(dict(getattr(event, "extra", None) or {}), day)
    return None


def read_day(store: Any, day: str) -> dict[str, Any]:
    """Read the day's published content through its manifest: file and row counts (never rows)."""
    import pyarrow.parquet as pq

    from consent_gate.assets import published_manifest
    from consent_gate.publish import published_files

    manifest, sha256 = published_manifest(store, day)
    if manifest is None:
        raise NoDayToRead(f"day {day} has no published manifest under {store.root}")
    files = published_files(store, day, "content")
    rows = 0
    for uri in files:
        with store.fs.open(uri, "rb") as handle:
            rows += pq.ParquetFile(handle).metadata.num_rows
    return {"day": day, "files": len(files), "rows": rows, "manifest_sha256": sha256}


def read_day_task(params: Any, dag_run: Any, triggering_asset_events: Any) -> dict[str, Any]:
    """The consumer's task. It needs only where the outputs are (`consent_gate_out_uri`): no consent
    store, no HMAC secret, as a downstream team would run it."""
    from airflow.sdk import Variable

    from consent_gate.config import project_var
    from consent_gate.runs import VAR_OUT
    from consent_gate.stores import storage_for

    day = day_of_run(params, getattr(dag_run, "partition_key", None))
    events = list((triggering_asset_events or {}).get(CONTENT, []) if triggering_asset_events else [])
    change = change_from_events(events, day)
    read = read_day(storage_for(Variable.get(VAR_OUT, default=str(project_var() / "out"))), day)
    # A later publication or sweep may have replaced the version the event named: read the current one.
    read["kind"] = change["kind"] if change else "manual"
    read["event_version_is_current"] = bool(change) and change.get("manifest_sha256") == read["manifest_sha256"]
    return read
