"""Great Expectations suites on the staged day: each check fails on purpose and nothing is published."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.errors import GateCheckFailed
from consent_gate.gx_reports import offline_html
from consent_gate.layout import Stage
from consent_gate.publication import publish_stage, record_failed_attempt
from consent_gate.publish import OutputStore
from consent_gate.records import parse_timestamp
from consent_gate.steps import aggregate_day, gate_content, snapshot_consent
from consent_gate.validation import validate_stage

DAY = date(2026, 11, 2)
AS_OF = parse_timestamp("2026-11-20T00:00:00Z", "as_of")
GX_CHECKS = {
    "gx_content_columns",
    "gx_content",
    "gx_content_keys",
    "gx_content_ids",
    "gx_aggregates",
    "gx_reconciliation",
}

Tamper = Callable[[OutputStore, Stage], None]


def settings_for(sample: Path, out: Path) -> RunSettings:
    return RunSettings(
        raw=str(sample / "raw"), out=str(out), consent_db=f"sqlite:///{sample / 'consent.db'}",
        policy=Policy(), secret=(sample / "hmac.key").read_bytes(),
    )  # fmt: skip


def attempt(settings: RunSettings, tamper: Tamper | None = None) -> tuple[Stage, dict[str, bool]]:
    """The steps of run_day, with a tamper between staging and validation; failures keep their evidence."""
    stage = snapshot_consent(settings, DAY, AS_OF, run_id="test", clock=utc_now)
    gate_content(settings, stage)
    aggregate_day(settings, stage)
    if tamper:
        tamper(settings.store(), stage)
    checks = validate_stage(settings, stage)
    results = {c.name: c.passed for c in checks}
    if all(results.values()):
        publish_stage(settings, stage, clock=utc_now)
        return stage, results
    with pytest.raises(GateCheckFailed, match="checks failed"):
        publish_stage(settings, stage, clock=utc_now)
    record_failed_attempt(settings, stage, "checks failed", clock=utc_now)
    return stage, results


def content_part(store: OutputStore, stage: Stage) -> tuple[str, pa.Table]:
    [path] = store.files(stage / "content", ".parquet")
    with store.open(path) as handle:
        return path, pq.read_table(handle)


def rewrite(store: OutputStore, path: str, table: pa.Table) -> None:
    with store.open(path, "wb") as handle:
        pq.write_table(table, handle)


def unknown_artifact_type(store: OutputStore, stage: Stage) -> None:
    path, table = content_part(store, stage)
    types = table.column("artifact_type").to_pylist()
    types[0] = "screen_share"
    index = table.schema.get_field_index("artifact_type")
    rewrite(store, path, table.set_column(index, "artifact_type", pa.array(types, pa.string())))


def missing_column(store: OutputStore, stage: Stage) -> None:
    path, table = content_part(store, stage)
    rewrite(store, path, table.drop_columns(["media_sha256"]))


def unreconciled_count(store: OutputStore, stage: Stage) -> None:
    [path] = store.files(stage / "audit/excluded", ".parquet")
    with store.open(path) as handle:
        table = pq.read_table(handle)
    rewrite(store, path, table.slice(1))  # one excluded artifact silently lost


@pytest.fixture(scope="module")
def passing(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("validated")
    stage, results = attempt(settings_for(sample_dir, out))
    return out, stage, results


@pytest.mark.integration
def test_a_clean_day_passes_every_suite_and_publishes_the_reports(passing):
    out, _, results = passing
    assert GX_CHECKS | {"independent_verification"} <= set(results)
    assert all(results.values()), results
    audit = out / f"_audit/dt={DAY}"
    summary = json.loads((audit / "validation/summary.json").read_text())
    assert {s["suite"] for s in summary} == {name.removeprefix("gx_") for name in GX_CHECKS}
    assert all(s["passed"] and s["batches"] >= 1 and s["expectations"] > 0 for s in summary)
    manifest = json.loads((audit / "manifest.json").read_text())
    assert {c["name"] for c in manifest["checks"]} >= GX_CHECKS
    assert (audit / "data_docs/index.html").exists()
    for suite in (s["suite"] for s in summary):  # every suite and each of its results has its page
        assert (audit / f"data_docs/expectations/{suite}.html").is_file(), suite
        assert len(list((audit / f"data_docs/validations/{suite}").rglob("*.html"))) == next(
            s["batches"] for s in summary if s["suite"] == suite
        ), suite


@pytest.mark.integration
def test_reports_keep_counts_and_never_values(passing):
    out, _, _ = passing
    for path in (out / f"_audit/dt={DAY}/validation").glob("*.json"):
        if path.name in ("summary.json", "independent_verification.json"):
            continue
        for result in json.loads(path.read_text()):
            assert set(result["result"]) <= {
                "element_count", "unexpected_count", "unexpected_percent", "missing_count", "missing_percent",
                "unexpected_percent_total", "unexpected_percent_nonmissing", "observed_value",
            }  # fmt: skip
            assert "partial_unexpected_list" not in json.dumps(result)


@pytest.mark.integration
def test_data_docs_render_without_any_network_asset(passing):
    out, _, _ = passing
    pages = list((out / f"_audit/dt={DAY}/data_docs").rglob("*.html"))
    assert len(pages) >= 3  # index, suites, validation results
    for page in pages:
        text = page.read_text()
        assert not _remote_assets(text), f"{page.name} loads {_remote_assets(text)[:3]}"
        assert "<style>" in text


@pytest.mark.unit
def test_a_suite_that_cannot_hold_an_expectation_is_refused_not_shortened(tmp_path):
    """GX's ExpectationSuite constructor logs an expectation it cannot build and goes on: a suite one
    check short would pass what that check should have failed. The runner refuses to build it."""
    from consent_gate.validation import _Runner

    runner = _Runner(tmp_path)
    known = runner.gxe.ExpectColumnValuesToNotBeNull(column="artifact_id")
    with pytest.raises(RuntimeError, match="suite content: 1 expectations not added"):
        runner.add_suite("content", [known, {"type": "expect_no_such_thing", "kwargs": {}}])
    runner.add_suite("content_ids", [runner.gxe.ExpectColumnValuesToNotBeNull(column="artifact_id")])
    assert list(runner.checkpoints) == ["content_ids"]


def _remote_assets(html: str) -> list[str]:
    import re

    tags = re.findall(r"<(?:link|script|img|iframe|source|embed)\b[^>]*>", html, re.IGNORECASE)
    urls = [t for t in tags if re.search(r"(?:src|href)=[\"']?(?:https?:)?//", t, re.IGNORECASE)]
    return urls + re.findall(r"url\([\"']?(?:https?:)?//[^)]*\)", html, re.IGNORECASE)


@pytest.mark.unit
def test_offline_html_strips_cdn_stylesheets_scripts_and_images():
    page = (
        '<html><head><link rel="stylesheet" href="https://cdn.example/bootstrap.css">'
        '<script src="https://code.example/jquery.js"></script><style>@import url("https://f.example/x.css");</style>'
        '</head><body><img src="https://s3.example/logo.png"><a href="https://docs.example">docs</a></body></html>'
    )
    offline = offline_html(page)
    assert _remote_assets(offline) == []
    assert '<a href="https://docs.example">docs</a>' in offline  # a link to click is not a fetched asset
    assert "<style>" in offline


@pytest.mark.integration
@pytest.mark.parametrize(
    ("tamper", "must_fail"),
    [
        pytest.param(unknown_artifact_type, {"gx_content"}, id="tampered-staged-file"),
        pytest.param(missing_column, {"gx_content_columns", "gx_content"}, id="missing-column"),
        pytest.param(unreconciled_count, {"gx_reconciliation"}, id="unreconciled-count"),
    ],
)
def test_a_failed_expectation_fails_the_run_and_publishes_nothing(sample_dir, tmp_path, tamper, must_fail):
    out = tmp_path / "out"
    stage, results = attempt(settings_for(sample_dir, out), tamper)
    failed = {name for name, passed in results.items() if not passed}
    assert must_fail <= failed, results
    assert not (out / f"content/dt={DAY}").exists()
    assert not (out / f"aggregates/dt={DAY}").exists()
    assert not (out / f"_audit/dt={DAY}/manifest.json").exists()
    kept = out / f"_audit/dt={DAY}/attempts/{stage.attempt}"
    evidence = json.loads(kept.with_suffix(".json").read_text())
    assert evidence["status"] == "failed"
    assert must_fail <= {c["name"] for c in evidence["checks"] if not c["passed"]}
    summary = json.loads((kept / "validation/summary.json").read_text())
    assert {f"gx_{s['suite']}" for s in summary if not s["passed"]} & must_fail
    assert "FAILED" in (kept / "report.html").read_text()
    assert (kept / "data_docs/index.html").exists()


# --- bounded memory: batches, buckets and row groups ------------------------------------------------


@pytest.mark.unit
def test_key_counts_read_column_wise_match_the_row_by_row_reading():
    from consent_gate.gate import CONTENT_SCHEMA
    from consent_gate.validation import _keys_frame, _keys_frame_rows

    key = "a" * 64
    rows = [
        {"meeting_key": key, "user_keys": [key], "account_keys": [key, key], "artifact_type": "chat_message"},
        {"meeting_key": None, "user_keys": None, "account_keys": [], "artifact_type": "summary"},
        {"meeting_key": key + "\n", "user_keys": [None, "A" * 64, key + "\n\n", key + "x"], "account_keys": None,
         "artifact_type": None},
        {"meeting_key": "", "user_keys": [], "account_keys": [key, "b" * 63], "artifact_type": "recording"},
    ]  # fmt: skip
    table = pa.Table.from_pylist([{**dict.fromkeys(CONTENT_SCHEMA.names), **r} for r in rows], schema=CONTENT_SCHEMA)
    for batch in (table, table.to_batches()[0], table.to_batches()[0].slice(1, 3)):
        assert _keys_frame(batch).to_dict("list") == _keys_frame_rows(batch).to_dict("list")
    assert _keys_frame(table)["malformed_keys"].tolist() == [0, 1, 4, 2]


def _rows_validated(audit: Path, suite: str, expectation: str, column: str) -> int:
    results = json.loads((audit / f"validation/{suite}.json").read_text())
    mine = [r for r in results if r["expectation"] == expectation and r["kwargs"].get("column") == column]
    return sum(r["result"]["element_count"] for r in mine)


@pytest.mark.integration
def test_small_batches_and_id_buckets_still_validate_every_staged_row(sample_dir, tmp_path, monkeypatch):
    from consent_gate import validation

    monkeypatch.setattr(validation, "BATCH_ROWS", 50)
    monkeypatch.setattr(validation, "NARROW_BATCH_ROWS", 120)
    out = tmp_path / "out"
    _, results = attempt(settings_for(sample_dir, out))
    assert all(results.values()), results
    audit = out / f"_audit/dt={DAY}"
    published = json.loads((audit / "manifest.json").read_text())["counts"]["content"]["published"]
    batches = {s["suite"]: s["batches"] for s in json.loads((audit / "validation/summary.json").read_text())}
    assert batches["content"] > batches["content_keys"] > 1 and batches["content_ids"] > 1
    not_null, between = "expect_column_values_to_not_be_null", "expect_column_values_to_be_between"
    assert _rows_validated(audit, "content", not_null, "artifact_id") == published
    assert _rows_validated(audit, "content_keys", between, "account_keys") == published
    assert _rows_validated(audit, "content_ids", not_null, "artifact_id") == published


def duplicate_id_far_apart(store: OutputStore, stage: Stage) -> None:
    """The last row takes the first row's id: the two are in different content batches."""
    path, table = content_part(store, stage)
    ids = table.column("artifact_id").to_pylist()
    ids[-1] = ids[0]
    index = table.schema.get_field_index("artifact_id")
    rewrite(store, path, table.set_column(index, "artifact_id", pa.array(ids, pa.string())))


@pytest.mark.integration
def test_a_duplicate_id_in_another_batch_is_found_by_the_day_wide_id_check(sample_dir, tmp_path, monkeypatch):
    from consent_gate import validation

    monkeypatch.setattr(validation, "BATCH_ROWS", 50)
    monkeypatch.setattr(validation, "NARROW_BATCH_ROWS", 120)
    _, results = attempt(settings_for(sample_dir, tmp_path / "out"), duplicate_id_far_apart)
    assert results["gx_content"] and not results["gx_content_ids"], results


@pytest.mark.integration
def test_staged_parts_hold_a_few_row_groups_not_one_per_meeting(sample_dir, tmp_path):
    seen: dict[str, int] = {}

    def count_row_groups(store: OutputStore, stage: Stage) -> None:
        for folder in ("audit/inputs", "audit/quarantine", "audit/excluded", "content"):
            for path in store.files(stage / folder, ".parquet"):
                with store.open(path) as handle:
                    seen[path.removeprefix(stage.root + "/")] = pq.ParquetFile(handle).metadata.num_row_groups

    _, results = attempt(settings_for(sample_dir, tmp_path / "out"), count_row_groups)
    assert all(results.values()), results
    assert seen["audit/inputs/meetings-0000.parquet"] == 1  # 40 meetings, each its own write
    assert all(groups == 1 for groups in seen.values()), seen


@pytest.mark.unit
def test_the_column_check_sees_every_distinct_list_of_staged_columns(tmp_path):
    """`content_columns` checks each staged file's names (from its footer), each list once."""
    from consent_gate.gate import CONTENT_SCHEMA
    from consent_gate.stores import storage_for
    from consent_gate.validation import _columns_frames

    store = storage_for(str(tmp_path))
    whole, short = CONTENT_SCHEMA.empty_table(), CONTENT_SCHEMA.empty_table().drop_columns(["text"])
    for name, table in [("a", whole), ("b", short), ("c", whole), ("d", short)]:
        rewrite(store, f"content/{name}.parquet", table)
    files = store.files("content", ".parquet")
    frames = list(_columns_frames(store, files))
    assert [list(frame.columns) for frame in frames] == [CONTENT_SCHEMA.names, short.schema.names]
    assert all(len(frame) == 0 for frame in frames)


@pytest.mark.unit
def test_great_expectations_is_imported_without_the_modules_no_suite_uses():
    """In a fresh interpreter: GX imports without SciPy's statistics or Altair, a suite runs, and
    both are still there, whole, for whoever asks for them."""
    import subprocess
    import sys
    import textwrap

    program = textwrap.dedent(
        """
        import sys
        from consent_gate.validation import import_great_expectations, DEFERRED_IMPORTS
        import_great_expectations()
        import great_expectations as gx
        import pandas as pd
        context = gx.get_context(mode="ephemeral")
        batch = context.data_sources.add_pandas("p").add_dataframe_asset("a").add_batch_definition_whole_dataframe("b")
        expectation = gx.expectations.ExpectColumnValuesToNotBeNull(column="x")
        result = batch.get_batch(batch_parameters={"dataframe": pd.DataFrame({"x": [1, None]})}).validate(expectation)
        loaded = sorted(m for m in sys.modules if m.startswith(("scipy.stats.", "altair.")))
        import importlib.util
        print(result.success, loaded, importlib.util.find_spec("scipy.stats").name)
        import scipy.stats, altair
        print(scipy.stats.entropy([1, 1], [1, 1]), altair.Chart.__name__)
        from great_expectations.expectations.core import expect_column_kl_divergence_to_be_less_than as kl
        print(vars(kl.stats).get("entropy") is scipy.stats.entropy)  # the stand-in GX bound is the module now
        """
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["False [] scipy.stats", "0.0 Chart", "True"], out


def _staged_suites(sample_dir: Path, tmp_path: Path) -> tuple[RunSettings, Stage, Any]:
    """A gated and aggregated sample day, and its suites, not yet run (the caller closes them)."""
    from consent_gate.validation import _StageSuites

    settings = settings_for(sample_dir, tmp_path)
    stage = snapshot_consent(settings, DAY, AS_OF, run_id="test", clock=utc_now)
    gate_content(settings, stage)
    aggregate_day(settings, stage)
    return settings, stage, _StageSuites(settings.store(), stage.root, DAY, settings.policy.k_min_distinct_users)


_RENDERING = re.compile(r"\?d=\d{8}T\d{6}\.\d+Z|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _rendered(docs: Path) -> dict[str, str]:
    """Every file of a Data Docs folder, but for what differs at each rendering: its instant, element ids."""
    return {
        p.relative_to(docs).as_posix(): _RENDERING.sub("", p.read_text(encoding="utf-8", errors="replace"))
        for p in sorted(docs.rglob("*"))
        if p.is_file()
    }


@pytest.mark.integration
def test_data_docs_rendered_in_two_parts_are_those_one_build_renders(sample_dir, tmp_path):
    """The content suites' pages are rendered while the telemetry is still aggregated, the rest and the
    index after: the same files, byte for byte, as one build of every page over the same results."""
    from consent_gate.checks import staged_counts

    settings, stage, suites = _staged_suites(sample_dir, tmp_path)
    try:
        suites.check_content()
        docs = suites.runner.docs
        first_part = {p.relative_to(docs).as_posix() for p in docs.rglob("*.html")}
        assert "index.html" not in first_part and "expectations/content.html" in first_part
        assert "expectations/aggregates.html" not in first_part
        suites.finish(staged_counts(settings, stage))
        in_two_parts = _rendered(docs)
        suites.runner.context.build_data_docs()  # every page and the index, over the same results
        assert _rendered(docs) == in_two_parts
    finally:
        suites.close()


@pytest.mark.integration
def test_data_docs_are_the_pages_gx_renders_with_each_template_compiled_once(sample_dir, tmp_path, monkeypatch):
    """The site's views (`gx_views`) render the pages GX's own views render, byte for byte but for what
    differs at each rendering, and once a build has compiled the templates, no later build compiles one."""
    import jinja2

    from consent_gate.checks import staged_counts

    compiled: list[str | None] = []
    compile_template = jinja2.Environment.compile

    def counting(self: jinja2.Environment, source: str, name: str | None = None, *args: object, **kwargs: object):
        compiled.append(name)
        return compile_template(self, source, name, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    settings, stage, suites = _staged_suites(sample_dir, tmp_path)
    try:
        suites.check_content()
        suites.finish(staged_counts(settings, stage))
        docs, context = suites.runner.docs, suites.runner.context
        ours = _rendered(docs)
        assert {"index.html", "expectations/content.html", "expectations/aggregates.html"} <= set(ours)
        compiled.clear()
        context.build_data_docs()  # new views, as every build makes
        assert compiled == [] and _rendered(docs) == ours

        site = dict(context.variables.data_docs_sites["local_site"])
        del site["site_section_builders"]
        site["site_index_builder"] = {"class_name": "DefaultSiteIndexBuilder"}  # GX's own views from here
        context.variables.data_docs_sites = {"local_site": site}
        context.build_data_docs()
        assert compiled, "GX's own views compile their templates at every build"
        assert _rendered(docs) == ours
    finally:
        suites.close()


@pytest.mark.unit
def test_the_content_is_read_in_batches_of_bounded_rows_and_keys(tmp_path, monkeypatch):
    # A recording's row names every participant: the rows of a meeting of thousands hold millions of
    # keys, so a batch ends at BATCH_VALUES values of list columns as well as at BATCH_ROWS rows.
    from consent_gate import validation
    from consent_gate.stores import storage_for

    monkeypatch.setattr(validation, "BATCH_ROWS", 10)
    monkeypatch.setattr(validation, "BATCH_VALUES", 100)
    widths = [1, 2, 60, 1, 30, 0, 45, 3]  # keys a row, in row groups of 4 rows
    schema = pa.schema([("n", pa.int64()), ("keys", pa.list_(pa.string()))])
    with pq.ParquetWriter(tmp_path / "part.parquet", schema) as out:
        for group, width in enumerate(widths):
            out.write_table(pa.table({"n": range(4 * group, 4 * group + 4), "keys": [["k"] * width] * 4}, schema))
    batches = list(validation._parquet_batches(storage_for(str(tmp_path)), ["part.parquet"]))
    assert pa.Table.from_batches(batches).equals(pq.read_table(tmp_path / "part.parquet"))  # every row, in order
    # row groups 0 and 1 together (8 rows, 12 keys); each other one alone: with its neighbour it would
    # hold more than 100 keys (2, 4, 6) or more than 10 rows (3 with 5 and 7 after their neighbours)
    assert [batch.num_rows for batch in batches] == [8, 4, 4, 4, 4, 4, 4]
