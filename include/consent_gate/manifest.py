"""The manifest: what a day's publication (or a failed attempt) records about itself."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from consent_gate.checks import staged_counts
from consent_gate.config import RunSettings
from consent_gate.layout import (
    CHECKS_REPORT,
    RUN_RECORD,
    Stage,
    manifest_path,
)
from consent_gate.publish import (
    OutputStore,
)
from consent_gate.steps import _now


def build_manifest(settings: RunSettings, stage: Stage, status: str) -> dict[str, Any]:
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
    return {
        **{k: run[k] for k in ("run_id", "dag_run_id", "attempt", "partition", "code_version", "policy")},
        "as_of": run["consent"]["as_of"],
        "consent": run["consent"],
        "status": status,
        "inputs": {"files": store.parquet_rows(inputs), "listed_in": "inputs.parquet"},
        "counts": counts,
        "checks": checks,
        "started_at": run["started_at"],
        "ended_at": _now(),
    }


def read_manifest(store: OutputStore, day: date) -> dict[str, Any]:
    return json.loads(store.fs.cat_file(store.path(manifest_path(day))))
