"""The manifest: what one attempt at one day records about itself, as a typed model.

One writer per kind of version, so no code edits a manifest's dict in place:

- `build_manifest`: a publication's version, or a failed attempt's, assembled from its stage;
- `abandoned_manifest`: the failed attempt of a stage the sweep deleted before its run ended it;
- `swept_version`: the next version of a published day the revocation sweep rewrote.

Every manifest conforms to `docs/manifest.schema.json` (`manifest_schema` checks it).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, fields, replace
from datetime import date, datetime
from typing import Any

from consent_gate.checks import staged_counts
from consent_gate.config import RunSettings
from consent_gate.layout import CHECKS_REPORT, RUN_RECORD, Stage, manifest_path
from consent_gate.publish import OutputStore

PUBLISHED, FAILED = "published", "failed"
# Fields a version has only when it applies (a failure, outputs once published, sweeps once swept).
_OPTIONAL = ("inputs", "checks", "ended_at", "failure", "outputs", "withdrawn_since_as_of", "sweeps", "version")


@dataclass(frozen=True, kw_only=True)
class Manifest:
    run_id: str | None
    dag_run_id: str | None
    attempt: str
    partition: str
    code_version: str | None
    policy: dict[str, Any]
    as_of: str
    consent: dict[str, Any]
    status: str  # PUBLISHED | FAILED
    inputs: dict[str, Any] | None = None
    counts: dict[str, Any] | None  # None: the attempt never got as far as counting
    checks: list[dict[str, Any]] | None = None
    started_at: str
    ended_at: str | None = None
    failure: str | None = None
    outputs: list[dict[str, Any]] | None = None
    withdrawn_since_as_of: dict[str, Any] | None = None
    sweeps: list[dict[str, Any]] | None = None
    version: str | None = None  # the sweep id of a version the sweep wrote

    def to_json(self) -> dict[str, Any]:
        """The manifest as written: optional fields only when they apply."""
        return {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in fields(self)
            if f.name not in _OPTIONAL or getattr(self, f.name) is not None
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)}
        return cls(**{name: copy.deepcopy(value) for name, value in data.items() if name in known})


def build_manifest(
    settings: RunSettings,
    stage: Stage,
    status: str,
    *,
    now: datetime,
    failure: str | None = None,
    outputs: list[dict[str, Any]] | None = None,
    withdrawn_since_as_of: dict[str, Any] | None = None,
) -> Manifest:
    """A publication's or a failed attempt's manifest, from its stage's run record, reports and files."""
    store = settings.store()
    run = store.read_json(stage / RUN_RECORD)
    checks_file = stage / CHECKS_REPORT
    checks = store.read_json(checks_file) if store.exists(checks_file) else []
    try:
        counts = staged_counts(settings, stage)
    except (FileNotFoundError, KeyError):
        counts = None
    merged = stage / "audit/inputs.parquet"
    inputs = [merged] if store.exists(merged) else store.files(stage / "audit/inputs", ".parquet")
    return Manifest(
        **{k: run[k] for k in ("run_id", "dag_run_id", "attempt", "partition", "code_version", "policy")},
        as_of=run["consent"]["as_of"],
        consent=run["consent"],
        status=status,
        inputs={"files": store.parquet_rows(inputs), "listed_in": "inputs.parquet"},
        counts=counts,
        checks=checks,
        started_at=run["started_at"],
        ended_at=now.isoformat(),
        failure=failure,
        outputs=outputs,
        withdrawn_since_as_of=withdrawn_since_as_of,
    )


def abandoned_manifest(run: dict[str, Any], failure: str) -> Manifest:
    """The failed attempt of a stage deleted before its run ended it: its run record, no counts."""
    keep = ("run_id", "dag_run_id", "attempt", "partition", "code_version", "policy", "consent", "started_at")
    return Manifest(
        **{k: run.get(k) for k in keep}, as_of=run["consent"]["as_of"], status=FAILED, failure=failure, counts=None
    )


def swept_version(previous: Manifest, purge: dict[str, Any], outputs: list[dict[str, Any]]) -> Manifest:
    """The next version of a published day after the sweep purged rows: the purged rows count as
    excluded by their reason, the outputs are the rewritten files, the purge is appended to `sweeps`."""
    counts = copy.deepcopy(previous.counts)
    content = (counts or {}).get("content")
    if content is not None:
        content["published"] -= purge["rows_removed"]
        for reason, count in purge["removed_by_reason"].items():
            content["excluded"][reason] = content["excluded"].get(reason, 0) + count
    return replace(
        previous,
        counts=counts,
        outputs=sorted(outputs, key=lambda o: o["path"]),
        sweeps=[*(previous.sweeps or []), {k: v for k, v in purge.items() if k != "manifest"}],
        version=purge["sweep_id"],
    )


def read_manifest(store: OutputStore, day: date) -> dict[str, Any]:
    return json.loads(store.fs.cat_file(store.path(manifest_path(day))))
