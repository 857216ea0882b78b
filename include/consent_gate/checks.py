"""Step 4, the checks a stage must pass before publication: counts reconcile (SPEC §3), shards complete.

Every unit ends in exactly one outcome, counted from what was actually written, not from what the
steps reported; the GX suites and the independent re-verification are in `validation`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from consent_gate.config import RunSettings
from consent_gate.gate import REASONS
from consent_gate.layout import TELEMETRY_REPORT, Stage, file_name, is_content_report
from consent_gate.publish import OutputStore
from consent_gate.speakers import UNIDENTIFIED_REASONS
from consent_gate.steps import ContentReport


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str


def staged_counts(settings: RunSettings, stage: Stage) -> dict[str, Any]:
    """The counts the manifest reports, summed over the stage's shard reports."""
    store = settings.store()
    content = ContentReport()
    excluded: Counter[str] = Counter()
    unidentified: Counter[str] = Counter()
    for path in store.files(stage / "reports", ".json"):
        if is_content_report(path):
            part = store.read_json(path)
            content.meetings += part["meetings"]
            content.units_in += part["units_in"]
            content.published += part["published"]
            content.quarantined += part["quarantined"]
            excluded.update(part["excluded"])
            unidentified.update(part.get("unidentified_speakers", {}))
    content.excluded = {reason: excluded.get(reason, 0) for reason in REASONS}
    content.unidentified_speakers = {reason: unidentified.get(reason, 0) for reason in UNIDENTIFIED_REASONS}
    telemetry = store.read_json(stage / TELEMETRY_REPORT)
    units = content.units_in + telemetry["lines_read"]
    quarantined = content.quarantined + telemetry["quarantined"]
    return {
        "content": asdict(content),
        "telemetry": telemetry,
        "units_in": units,
        "quarantined": quarantined,
        "quarantine_ratio": quarantined / units if units else 0.0,
    }


def shards_check(settings: RunSettings, stage: Stage) -> CheckResult:
    """Every shard of the day reported exactly once, all with the same shard count: none was lost."""
    store = settings.store()
    reports = [store.read_json(p) for p in store.files(stage / "reports", ".json") if is_content_report(p)]
    counts = {r.get("shards", 1) for r in reports}
    seen = sorted(r.get("shard", 0) for r in reports)
    expected = list(range(next(iter(counts)))) if len(counts) == 1 else None
    return CheckResult(
        "content_shards_complete",
        expected is not None and seen == expected,
        f"{len(reports)} shard report(s) for shard count(s) {sorted(counts)}: shards {seen}",
    )


def _transcript_rows(store: OutputStore, paths: list[str]) -> int:
    rows = 0
    for path in paths:
        with store.open(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=["artifact_type"]):
                rows += pc.sum(pc.equal(batch.column(0), "transcript_segment")).as_py() or 0
    return rows


def _speakers_check(store: OutputStore, stage: Stage, content: dict[str, Any]) -> CheckResult:
    """`explain` answers from the speakers evidence: it must cover every transcript segment gated, and
    its unidentified rows must be exactly the `unidentified_speaker` exclusions, by reason as reported."""
    segments = _transcript_rows(store, store.files(stage / "content", ".parquet"))
    segments += _transcript_rows(store, store.files(stage / "audit/excluded", ".parquet"))
    paths = store.files(stage / "audit/speakers", ".parquet")
    evidence = store.parquet_rows(paths)
    by_reason: Counter[str] = Counter()
    for path in paths:
        with store.open(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=["unidentified_reason"]):
                by_reason.update(r for r in batch.column(0).to_pylist() if r is not None)
    reported = {reason: n for reason, n in content["unidentified_speakers"].items() if n}
    unidentified, excluded = sum(by_reason.values()), content["excluded"].get("unidentified_speaker", 0)
    return CheckResult(
        "speakers_evidence_reconciles",
        evidence == segments and dict(by_reason) == reported and unidentified == excluded,
        f"speakers evidence rows {evidence} = transcript segments published or excluded {segments}; "
        f"unidentified {unidentified} = unidentified_speaker exclusions {excluded}",
    )


@dataclass(frozen=True)
class Ledger:
    """What the stage's files actually hold, counted once: the reconciliation checks and the GX
    `reconciliation` suite (`validation.reconciliation_frame`) both read it."""

    published: int  # content rows
    excluded: int  # excluded content rows
    quarantined: int  # content units quarantined
    telemetry_quarantined: int  # telemetry lines quarantined
    aggregated: int  # events in the staged groups

    @property
    def content_accounted(self) -> int:
        return self.published + self.excluded + self.quarantined


def _quarantine_rows(store: OutputStore, stage_root: str, kind: str) -> int:
    files = store.files(f"{stage_root}/audit/quarantine", ".parquet")
    return store.parquet_rows([p for p in files if file_name(p).startswith(kind)])


def stage_ledger(store: OutputStore, stage_root: str) -> Ledger:
    """Count the stage's written outcomes: rows per file from Parquet metadata, events from the groups."""
    aggregated = 0
    for path in store.files(f"{stage_root}/aggregates", ".parquet"):
        with store.open(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=["event_count"]):
                aggregated += pc.sum(batch.column("event_count")).as_py() or 0
    return Ledger(
        published=store.parquet_rows(store.files(f"{stage_root}/content", ".parquet")),
        excluded=store.parquet_rows(store.files(f"{stage_root}/audit/excluded", ".parquet")),
        quarantined=_quarantine_rows(store, stage_root, "content-"),
        telemetry_quarantined=_quarantine_rows(store, stage_root, "telemetry"),
        aggregated=aggregated,
    )


def reconciliation_checks(
    settings: RunSettings, stage: Stage, counts: dict[str, Any] | None = None, ledger: Ledger | None = None
) -> list[CheckResult]:
    """SPEC §3: every unit ends in exactly one outcome, counted from what was actually written.
    `counts` and `ledger` are computed here unless the caller (validate_stage) already has them."""
    store = settings.store()
    counts = counts if counts is not None else staged_counts(settings, stage)
    ledger = ledger if ledger is not None else stage_ledger(store, stage.root)
    content, telemetry = counts["content"], counts["telemetry"]
    published, excluded, quarantined = ledger.published, ledger.excluded, ledger.quarantined
    accounted = ledger.content_accounted
    checks = [
        CheckResult(
            "content_reconciles",
            accounted == content["units_in"]
            and published == content["published"]
            and excluded == sum(content["excluded"].values()),  # the reported reasons cover every excluded row
            f"units in {content['units_in']} = published {published} + excluded {excluded} "
            f"+ quarantined {quarantined} ({accounted})",
        ),
        shards_check(settings, stage),
        _speakers_check(store, stage, content),
    ]
    aggregated = ledger.aggregated
    outcomes = (
        telemetry["aggregated"] + telemetry["suppressed_events"] + telemetry["out_of_partition"]
        + telemetry.get("duplicate", 0) + telemetry["quarantined"]
    )  # fmt: skip
    checks.append(
        CheckResult(
            "telemetry_reconciles",
            outcomes == telemetry["lines_read"] and aggregated == telemetry["aggregated"],
            f"lines read {telemetry['lines_read']} = aggregated {telemetry['aggregated']} (published groups "
            f"hold {aggregated}) + suppressed {telemetry['suppressed_events']} + out of partition "
            f"{telemetry['out_of_partition']} + duplicate {telemetry.get('duplicate', 0)} + quarantined "
            f"{telemetry['quarantined']}",
        )
    )
    ratio, limit = counts["quarantine_ratio"], settings.policy.max_quarantine_ratio
    checks.append(
        CheckResult(
            "quarantine_ratio",
            ratio <= limit,
            f"{counts['quarantined']} of {counts['units_in']} units quarantined ({ratio:.4%}; limit {limit:.2%})",
        )
    )
    # A telemetry file that breaks mid-way loses an unknown number of lines: no ratio can bound
    # that loss, so the day is not published until the file is repaired or removed upstream. Counted by
    # the step itself, never inferred from unit names (a file name may hold ':').
    broken = telemetry.get("unreadable_files", 0)
    checks.append(
        CheckResult("telemetry_files_complete", broken == 0, f"{broken} telemetry file(s) could not be read to the end")
    )
    return checks
