"""The Airflow assets consent-gate produces and consumes, and the asset events that say what changed.

The outputs' real location is a deployment setting (the `consent_gate_out_uri` variable, read at task
run time, never at parse time), so the assets are named in an `x-consent-gate://` scheme: an
identifier, not a place. Where the data is travels in each event instead: `extra` names the day's
manifest, the way to read a day on any storage (`consent-gate files`).

Every publication and every sweep that rewrote a day emits one event per day on the content and
aggregates assets, with the day as the event's **partition key** (Airflow 3.2+): a downstream DAG
scheduled with `PartitionedAssetTimetable(assets=CONTENT)` gets one run per changed day, whose
`dag_run.partition_key` is that day. Airflow queues only partition-aware DAGs for a partitioned
event, so a consumer must be scheduled that way (dags/consent_gate_content_consumer.py is the example).
`extra` carries counts and checksums only: never content, never ids (keyed or raw).

Only `airflow.sdk` is imported at module level: the DAG files import this module at parse time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset

from consent_gate.layout import DATASETS, day_folder, manifest_path, sweep_log

if TYPE_CHECKING:
    from consent_gate.publish import OutputStore

SCHEME = "x-consent-gate"
CONTENT = Asset(name="consent_gate_content", uri=f"{SCHEME}://outputs/content")
AGGREGATES = Asset(name="consent_gate_aggregates", uri=f"{SCHEME}://outputs/aggregates")
CONSENT_EVENTS = Asset(name="consent_events", uri=f"{SCHEME}://consent-store/consent-events")

PUBLISH, SWEEP = "publish", "sweep"


def output_rows(manifest: dict[str, Any], day: str) -> dict[str, int]:
    """Rows of each published dataset of the day, from the manifest's list of output files."""
    outputs = manifest.get("outputs") or []
    return {
        dataset: sum(int(o.get("rows") or 0) for o in outputs if o["path"].startswith(f"{day_folder(dataset, day)}/"))
        for dataset in DATASETS
    }


def publication_extra(manifest: dict[str, Any], manifest_sha256: str, out: str) -> dict[str, Any]:
    """The `extra` of a publication's event: which day, which version, how many rows, which consent."""
    day = manifest["partition"]
    content = (manifest.get("counts") or {}).get("content") or {}
    return {
        "day": day,
        "kind": PUBLISH,
        "manifest": f"{out.rstrip('/')}/{manifest_path(day)}",
        "manifest_sha256": manifest_sha256,
        "attempt": manifest.get("attempt"),
        "rows": output_rows(manifest, day),
        "excluded": sum((content.get("excluded") or {}).values()),
        "quarantined": int(content.get("quarantined") or 0),
        "consent_checksum": (manifest.get("consent") or {}).get("checksum"),
        "as_of": manifest.get("as_of"),
    }


def sweep_day_extra(purge: dict[str, Any], manifest: dict[str, Any] | None, manifest_sha256: str | None, out: str):
    """What a sweep changed in one day: rows removed by reason, and the day's new version."""
    day = purge["partition"]
    return {
        "day": day,
        "manifest": f"{out.rstrip('/')}/{manifest_path(day)}" if manifest is not None else None,
        "manifest_sha256": manifest_sha256,
        "rows": output_rows(manifest, day) if manifest is not None else None,
        "rows_removed": int(purge["rows_removed"]),
        "removed_by_reason": dict(purge.get("removed_by_reason") or {}),
    }


def sweep_extra(sweep_id: str, as_of: str, consent_checksum: str | None, days: Iterable[dict[str, Any]]):
    """The `extra` of a sweep's events. Airflow gives every partition of one task's outlet the same
    `extra`, so the days are keyed by day: a consumer reads `extra["days"][dag_run.partition_key]`."""
    return {
        "kind": SWEEP,
        "sweep_id": sweep_id,
        "as_of": as_of,
        "consent_checksum": consent_checksum,
        "days": {d["day"]: d for d in days},
    }


def change_of_day(extra: dict[str, Any], day: str) -> dict[str, Any]:
    """One day's change from an event's `extra`, whatever its kind: {day, kind, manifest, rows, ...}."""
    if extra.get("kind") == SWEEP:
        if day not in (extra.get("days") or {}):
            raise ValueError(f"the sweep event does not name day {day}")
        return {"kind": SWEEP, "sweep_id": extra.get("sweep_id"), **extra["days"][day]}
    if extra.get("kind") == PUBLISH and extra.get("day") == day:
        return dict(extra)
    raise ValueError(f"not a consent-gate event for day {day}: kind {extra.get('kind')!r}")


def published_manifest(store: OutputStore, day: str) -> tuple[dict[str, Any] | None, str | None]:
    """The day's published manifest and its sha256; (None, None) when the day has none."""
    path = manifest_path(day)
    if not store.exists(path):
        return None, None
    return store.read_json(path), store.sha256(path)[1]


# --- inside tasks: Airflow's outlet events ---------------------------------------------------------


def announce(outlet_events: Any, extra: dict[str, Any], days: list[str], assets: Iterable[Asset]) -> None:
    """Attach the partition keys (the days) and `extra` to this task's events on `assets`."""
    for asset in assets:
        event = outlet_events[asset]
        event.extra.update(extra)
        event.add_partitions(days)


def announce_publication(outlet_events: Any, store: OutputStore, out: str, day: str) -> dict[str, Any]:
    """After `publish`: one event per asset for the day, naming the published manifest."""
    manifest, sha256 = published_manifest(store, day)
    if manifest is None or sha256 is None:
        raise RuntimeError(f"day {day} has no published manifest after publication")
    extra = publication_extra(manifest, sha256, out)
    announce(outlet_events, extra, [day], (CONTENT, AGGREGATES))
    return extra


def announce_sweep(outlet_events: Any, store: OutputStore, out: str, summary: dict[str, Any]) -> dict[str, Any]:
    """After a sweep that rewrote days: one content event per day (aggregates hold no subjects)."""
    log = store.read_json(sweep_log(summary["sweep_id"]))
    days = []
    for purge in log.get("purges") or []:
        manifest, sha256 = published_manifest(store, purge["partition"])
        days.append(sweep_day_extra(purge, manifest, sha256, out))
    extra = sweep_extra(log["sweep_id"], log["as_of"], (log.get("consent") or {}).get("checksum"), days)
    announce(outlet_events, extra, sorted(extra["days"]), (CONTENT,))
    return extra
