"""Great Expectations suites over a staged day, run inside a task before anything is published.

SPEC §5–6: the staged content and aggregates must have exactly the published columns and sane
values, and every input unit must be accounted for; any failed expectation fails the run.

The 1.x chain is built per run in a throw-away file context (data source → asset → batch definition
→ suite → validation definition → checkpoint), because the GX Airflow operator loads data in its
constructor and no longer fails tasks on failed validation. Reports never echo values: results use
the SUMMARY format with no partial lists, are reduced to an allow-list of counts before they are
written, and the rendered Data Docs are rewritten to use no asset from the network.

Memory stays bounded on big days: content is validated a row group batch at a time; only the
`artifact_id` column of the whole day is held at once, for the uniqueness check.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consent_gate.publish import OutputStore

if TYPE_CHECKING:
    from consent_gate.pipeline import CheckResult, RunSettings, Stage

SUITES = ("content", "content_keys", "content_ids", "aggregates", "reconciliation")
TEXT_TYPES = ("transcript_segment", "chat_message", "summary")
ARTIFACT_TYPES = (*TEXT_TYPES, "recording")
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 0, "include_unexpected_rows": False}
BATCH_ROWS = 100_000

# The only result fields a report keeps: counts and ratios, never values.
_COUNT_FIELDS = (
    "element_count", "unexpected_count", "unexpected_percent", "missing_count", "missing_percent",
    "unexpected_percent_total", "unexpected_percent_nonmissing",
)  # fmt: skip
# The only expectation arguments a report keeps: column names and the policy's own constants.
_KWARG_FIELDS = ("column", "column_A", "column_B", "column_list", "column_set", "value_set", "min_value", "max_value")
_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class SuiteOutcome:
    """One suite over every batch it was run on: the counts, never the values."""

    suite: str
    batches: int = 0
    expectations: int = 0
    failed: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.batches > 0 and not self.failed


def sanitized_result(result: Any, batch: int) -> dict[str, Any]:
    """An ExpectationValidationResult reduced to its type, column names, success and counts."""
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k in _KWARG_FIELDS}
    observed = {k: v for k, v in (result.result or {}).items() if k in _COUNT_FIELDS and isinstance(v, int | float)}
    value = (result.result or {}).get("observed_value")
    if isinstance(value, int | float) and not isinstance(value, bool):
        observed["observed_value"] = value
    elif config.type.startswith("expect_table_columns") and isinstance(value, list):
        observed["observed_value"] = [str(v) for v in value]  # column names, not values
    if config.kwargs.get("row_condition") is not None:
        kwargs["row_condition"] = str(config.kwargs["row_condition"])
    return {
        "batch": batch,
        "expectation": config.type,
        "kwargs": kwargs,
        "success": bool(result.success),
        "exception": bool((result.exception_info or {}).get("raised_exception")),
        "result": observed,
    }


# --- the suites ---------------------------------------------------------------------------------


def _content_expectations(gxe: Any, column: Any) -> list[Any]:
    from consent_gate.gate import CONTENT_SCHEMA

    is_recording = column("artifact_type") == "recording"
    is_text = column("artifact_type") != "recording"
    return [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(CONTENT_SCHEMA.names)),
        gxe.ExpectColumnValuesToNotBeNull(column="artifact_id"),
        gxe.ExpectColumnValuesToBeUnique(column="artifact_id"),
        gxe.ExpectColumnValuesToBeInSet(column="artifact_type", value_set=list(ARTIFACT_TYPES)),
        gxe.ExpectColumnValuesToNotBeNull(column="artifact_type"),
        gxe.ExpectColumnValuesToNotBeNull(column="captured_at"),
        gxe.ExpectColumnValuesToNotBeNull(column="consent_as_of"),
        gxe.ExpectColumnValuesToNotBeNull(column="text", row_condition=is_text),
        gxe.ExpectColumnValuesToBeNull(column="text", row_condition=is_recording),
        gxe.ExpectColumnValuesToNotBeNull(column="media_uri", row_condition=is_recording),
        gxe.ExpectColumnValuesToNotBeNull(column="media_sha256", row_condition=is_recording),
        gxe.ExpectColumnValuesToBeNull(column="media_uri", row_condition=is_text),
        gxe.ExpectColumnValuesToBeNull(column="media_sha256", row_condition=is_text),
    ]


def _keys_expectations(gxe: Any, column: Any) -> list[Any]:
    # A summary or recording needs every participant, who may all be absent; a cue or message needs its author.
    authored = column("artifact_type").is_in(["transcript_segment", "chat_message"])
    return [
        gxe.ExpectColumnValuesToBeBetween(column="account_keys", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="malformed_keys", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="user_keys", min_value=1, row_condition=authored),
    ]


def _ids_expectations(gxe: Any, column: Any) -> list[Any]:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="artifact_id"),
        gxe.ExpectColumnValuesToBeUnique(column="artifact_id"),
    ]


def _aggregate_expectations(gxe: Any, column: Any, *, k: int, day: date) -> list[Any]:
    from consent_gate.aggregates import AGGREGATE_SCHEMA, GROUP_FIELDS

    expectations = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(AGGREGATE_SCHEMA.names)),
        gxe.ExpectColumnValuesToBeInSet(column="dt", value_set=[day.isoformat()]),
        gxe.ExpectColumnValuesToBeBetween(column="distinct_users", min_value=k),
        gxe.ExpectColumnValuesToBeBetween(column="event_count", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="duration_ms_p50", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="duration_ms_p95", min_value=0),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="event_count", column_B="distinct_users", or_equal=True),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["dt", *GROUP_FIELDS]),
    ]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=name) for name in ("dt", *GROUP_FIELDS)]
    return expectations


def _reconciliation_expectations(gxe: Any, column: Any) -> list[Any]:
    return [
        gxe.ExpectColumnPairValuesToBeEqual(column_A="units_in", column_B="accounted_for"),
        gxe.ExpectColumnValuesToBeBetween(column="units_in", min_value=0),
    ]


# --- the frames GX sees --------------------------------------------------------------------------


def _parquet_batches(store: OutputStore, files: list[str], columns: list[str] | None = None) -> Iterator[Any]:
    """Record batches of the staged files, one at a time (bounded memory)."""
    import pyarrow.parquet as pq

    for path in files:
        with store.open(path) as handle:
            parquet = pq.ParquetFile(handle)
            yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _keys_frame(batch: Any) -> Any:
    """Per row: how many account and user keys it names and how many keys are not 64-hex keyed hashes."""
    import pandas as pd

    meeting = batch.column("meeting_key").to_pylist()
    users = batch.column("user_keys").to_pylist()
    accounts = batch.column("account_keys").to_pylist()
    malformed = [
        sum(1 for key in [m, *(u or []), *(a or [])] if not isinstance(key, str) or not _HEX_KEY.match(key))
        for m, u, a in zip(meeting, users, accounts, strict=True)
    ]
    return pd.DataFrame(
        {
            "artifact_type": batch.column("artifact_type").to_pylist(),
            "user_keys": [len(u or []) for u in users],
            "account_keys": [len(a or []) for a in accounts],
            "malformed_keys": malformed,
        }
    )


def reconciliation_frame(store: OutputStore, stage_root: str, counts: dict[str, Any]) -> Any:
    """One row per ledger: the units that came in and the outcomes actually written for them."""
    import pandas as pd
    import pyarrow.parquet as pq

    def rows(folder: str, keep: str = "") -> int:
        total = 0
        for path in store.files(f"{stage_root}/{folder}", ".parquet"):
            if keep in path.rsplit("/", 1)[-1]:
                with store.open(path) as handle:
                    total += pq.ParquetFile(handle).metadata.num_rows
        return total

    aggregated = 0
    for batch in _parquet_batches(store, store.files(f"{stage_root}/aggregates", ".parquet"), ["event_count"]):
        aggregated += sum(v or 0 for v in batch.column("event_count").to_pylist())
    content, telemetry = counts["content"], counts["telemetry"]
    published, excluded = rows("content"), rows("audit/excluded")
    quarantined = rows("audit/quarantine", "content-")
    telemetry_quarantined = rows("audit/quarantine", "telemetry")
    ledgers = [
        ("content", content["units_in"], published + excluded + quarantined),
        ("content_published", content["published"], published),
        (
            "telemetry",
            telemetry["lines_read"],
            aggregated + telemetry["suppressed_events"] + telemetry["out_of_partition"] + telemetry_quarantined,
        ),
        ("telemetry_aggregated", telemetry["aggregated"], aggregated),
    ]
    return pd.DataFrame(ledgers, columns=["ledger", "units_in", "accounted_for"])


# --- running them ---------------------------------------------------------------------------------


class _Runner:
    """A file context in a temporary folder, one checkpoint per suite, Data Docs built at the end."""

    def __init__(self, root: Path) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.expectations.row_conditions import Column

        self.gx, self.gxe, self.column = gx, gxe, Column
        self.context = gx.get_context(mode="file", project_root_dir=str(root))
        self.source = self.context.data_sources.add_pandas("staged")
        self.checkpoints: dict[str, Any] = {}

    def add_suite(self, name: str, expectations: list[Any]) -> None:
        gx = self.gx
        asset = self.source.add_dataframe_asset(name)
        batch_definition = asset.add_batch_definition_whole_dataframe(f"{name}_batch")
        suite = self.context.suites.add(gx.ExpectationSuite(name=name))
        for expectation in expectations:
            suite.add_expectation(expectation)
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}_validation", data=batch_definition, suite=suite)
        )
        self.checkpoints[name] = self.context.checkpoints.add(
            gx.Checkpoint(
                name=f"{name}_checkpoint",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format=RESULT_FORMAT,
            )
        )

    def run(self, outcome: SuiteOutcome, frame: Any) -> None:
        result = self.checkpoints[outcome.suite].run(batch_parameters={"dataframe": frame})
        outcome.batches += 1
        for run_result in result.run_results.values():
            for expectation in run_result.results:
                row = sanitized_result(expectation, outcome.batches)
                outcome.expectations += 1
                outcome.results.append(row)
                if not row["success"]:
                    label = f"{row['expectation']}({row['kwargs'].get('column') or row['kwargs'].get('column_A', '')})"
                    if label not in outcome.failed:
                        outcome.failed.append(label)

    def docs_folder(self) -> Path:
        self.context.build_data_docs()
        return Path(self.context.root_directory) / "uncommitted/data_docs/local_site"


def run_suites(store: OutputStore, stage_root: str, day: date, *, k: int, counts: dict[str, Any]) -> list[SuiteOutcome]:
    """Run every suite over the stage; write sanitized results and offline Data Docs into `audit/`."""
    import pandas as pd

    from consent_gate.aggregates import AGGREGATE_SCHEMA
    from consent_gate.gate import CONTENT_SCHEMA

    with tempfile.TemporaryDirectory(prefix="consent-gate-gx-") as tmp:
        runner = _Runner(Path(tmp))
        column, gxe = runner.column, runner.gxe
        runner.add_suite("content", _content_expectations(gxe, column))
        runner.add_suite("content_keys", _keys_expectations(gxe, column))
        runner.add_suite("content_ids", _ids_expectations(gxe, column))
        runner.add_suite("aggregates", _aggregate_expectations(gxe, column, k=k, day=day))
        runner.add_suite("reconciliation", _reconciliation_expectations(gxe, column))
        outcomes = {name: SuiteOutcome(name) for name in SUITES}

        content_files = store.files(f"{stage_root}/content", ".parquet")
        for batch in _parquet_batches(store, content_files):
            runner.run(outcomes["content"], batch.to_pandas())
            runner.run(outcomes["content_keys"], _keys_frame(batch))
        if outcomes["content"].batches == 0:  # nothing eligible: the published schema is still checked
            runner.run(outcomes["content"], CONTENT_SCHEMA.empty_table().to_pandas())
            runner.run(outcomes["content_keys"], _keys_frame(CONTENT_SCHEMA.empty_table()))
        ids = [b.column("artifact_id").to_pylist() for b in _parquet_batches(store, content_files, ["artifact_id"])]
        runner.run(outcomes["content_ids"], pd.DataFrame({"artifact_id": [i for part in ids for i in part]}))
        del ids

        aggregate_files = store.files(f"{stage_root}/aggregates", ".parquet")
        frames = [b.to_pandas() for b in _parquet_batches(store, aggregate_files)]  # at most a few thousand groups
        frame = pd.concat(frames, ignore_index=True) if frames else AGGREGATE_SCHEMA.empty_table().to_pandas()
        runner.run(outcomes["aggregates"], frame)

        runner.run(outcomes["reconciliation"], reconciliation_frame(store, stage_root, counts))
        write_reports(store, f"{stage_root}/audit", list(outcomes.values()), runner.docs_folder())
    return list(outcomes.values())


# --- reports --------------------------------------------------------------------------------------

_REMOTE_ASSET = re.compile(
    r"<link\b[^>]*\bhref=[\"']https?://[^>]*>"
    r"|<script\b[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>"
    r"|<img\b[^>]*\bsrc=[\"']https?://[^>]*>"
    r"|<iframe\b[^>]*\bsrc=[\"']https?://[^>]*>\s*</iframe>",
    re.IGNORECASE,
)
_OFFLINE_CSS = """<style>
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ccc;padding:.25rem .5rem;vertical-align:top}a{color:#1a5fb4}
.card{border:1px solid #ddd;border-radius:4px;padding:.5rem;margin:.5rem 0}.collapse{display:block}
.fa,.fas,.far{display:none}nav{margin-bottom:1rem}
</style>"""


def offline_html(html: str) -> str:
    """Data Docs without any stylesheet, script or image fetched from the network."""
    html = _REMOTE_ASSET.sub("", html)
    html = re.sub(r"@import\s+url\([\"']?https?://[^)]*\)\s*;?", "", html)
    html = re.sub(r"url\([\"']?(?:https?:)?//[^)]*\)", "none", html)  # background images from a CDN
    return html.replace("</head>", f"{_OFFLINE_CSS}</head>", 1)


def write_reports(store: OutputStore, audit_root: str, outcomes: list[SuiteOutcome], docs: Path) -> None:
    """`validation/<suite>.json` and `validation/summary.json`, then `data_docs/` made offline."""
    summary = []
    for outcome in outcomes:
        store.write_json(f"{audit_root}/validation/{outcome.suite}.json", outcome.results)
        summary.append(
            {
                "suite": outcome.suite,
                "passed": outcome.passed,
                "batches": outcome.batches,
                "expectations": outcome.expectations,
                "failed": outcome.failed,
            }
        )
    store.write_json(f"{audit_root}/validation/summary.json", summary)
    if not docs.is_dir():
        return
    for path in sorted(p for p in docs.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".html":
            data = offline_html(data.decode("utf-8")).encode("utf-8")
        store.write_bytes(f"{audit_root}/data_docs/{path.relative_to(docs).as_posix()}", data)


def check_details(outcome: SuiteOutcome) -> str:
    """A check's detail line: counts and expectation names only."""
    if outcome.batches == 0:
        return "no batch was validated"
    failed = f"; failed: {', '.join(outcome.failed)}" if outcome.failed else ""
    return f"{outcome.expectations} expectation results over {outcome.batches} batch(es){failed}"


def evidence_checks(settings: RunSettings, stage: Stage) -> list[CheckResult]:
    """The GX suites and the independent re-verification, as checks; an error in either fails closed.

    Their reports go to the stage's `audit/` folder, so publication puts them under `_audit/dt=D/`.
    """
    from dataclasses import asdict

    from consent_gate.pipeline import CheckResult, staged_counts
    from consent_gate.verify import verify_stage

    store = settings.store()
    checks: list[CheckResult] = []
    try:
        outcomes = run_suites(
            store, stage.root, stage.day, k=settings.policy.k_min_distinct_users, counts=staged_counts(settings, stage)
        )
        checks += [CheckResult(f"gx_{o.suite}", o.passed, check_details(o)) for o in outcomes]
    except Exception as error:  # noqa: BLE001  (any failure to validate is a failed check, named by type only)
        checks.append(CheckResult("gx_suites", False, f"validation could not run: {type(error).__name__}"))
    try:
        verification = verify_stage(store, stage.root, settings.consent_db, settings.secret)
        store.write_json(stage / "audit/validation/independent_verification.json", asdict(verification))
        checks.append(CheckResult("independent_verification", verification.passed, verification.detail()))
    except Exception as error:  # noqa: BLE001
        checks.append(CheckResult("independent_verification", False, f"could not run: {type(error).__name__}"))
    return checks
