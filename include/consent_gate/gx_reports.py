"""What the GX suites leave behind: results reduced to counts (never values of content columns) and
Data Docs rewritten to load nothing from the network, under the stage's `audit/validation/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consent_gate.publish import OutputStore

RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 0, "include_unexpected_rows": False}


# The only result fields a report keeps: counts and ratios, never values.
_COUNT_FIELDS = (
    "element_count", "unexpected_count", "unexpected_percent", "missing_count", "missing_percent",
    "unexpected_percent_total", "unexpected_percent_nonmissing",
)  # fmt: skip


# The only expectation arguments a report keeps: column names and the policy's own constants.
_KWARG_FIELDS = ("column", "column_A", "column_B", "column_list", "column_set", "value_set", "min_value", "max_value")


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
