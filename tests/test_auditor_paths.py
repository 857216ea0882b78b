"""Which evidence files the auditors' app may serve: the allow-list and the symlink rule, without a
server; and the same reads on the S3 API (moto's server, as in test_s3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consent_gate.auditor_pages import DAILY_DAG, allowed_path, read_evidence, render_index_page, run_evidence
from consent_gate.stores import storage_for
from tests.builders import manifest
from tests.test_s3 import bucket, s3_endpoint  # noqa: F401 (fixtures)

ALLOWED = [
    "_audit/index.html",
    "_audit/sweeps/sweep__20261126T103000__0a1b2c3d.json",
    "_audit/dt=2026-11-02/manifest.json",
    "_audit/dt=2026-11-02/report.html",
    "_audit/dt=2026-11-02/validation/summary.json",
    "_audit/dt=2026-11-02/data_docs/index.html",
    "_audit/dt=2026-11-02/data_docs/static/styles/data_docs_default_styles.css",
    "_audit/dt=2026-11-02/attempts/cli__0a1b2c3d.json",
    "_audit/dt=2026-11-02/attempts/cli__0a1b2c3d/report.html",
    "_audit/dt=2026-11-02/attempts/cli__0a1b2c3d/data_docs/expectations/content.html",
]
REFUSED = [
    "content/dt=2026-11-02/part-0000.parquet",  # content rows
    "_audit/dt=2026-11-02/excluded.parquet",
    "_audit/dt=2026-11-02/quarantine.parquet",
    "_staging/dt=2026-11-02/cli__0a1b2c3d/audit/report.html",  # a stage
    "_audit/dt=2026-11-02/../../content/dt=2026-11-02/part-0000.parquet",
    "_audit/dt=2026-11-02/./report.html",
    "/_audit/index.html",
    "_audit//index.html",
    "_audit/dt=2026-11-02/%2e%2e/manifest.json",
    "_audit/dt=2026-11-02/data_docs/.hidden.html",
    "_audit/dt=2026-11-02/data_docs/../../../etc/passwd.html",
    "_audit/sweeps/../dt=2026-11-02/manifest.json",
    "_locks/dt=2026-11-02.lock",
]


@pytest.mark.unit
@pytest.mark.parametrize("path", ALLOWED)
def test_evidence_files_are_allowed(path):
    assert allowed_path(path)


@pytest.mark.unit
@pytest.mark.parametrize("path", REFUSED)
def test_content_stages_and_traversal_are_refused(path):
    assert not allowed_path(path)


segment = st.sampled_from(["_audit", "dt=2026-11-02", "data_docs", "attempts", "a", "report.html", "index.html"])


@pytest.mark.unit
@given(
    before=st.lists(segment, max_size=4),
    bad=st.sampled_from(["..", ".", "", "%2e%2e", "..\\", "~"]),
    after=st.lists(segment, min_size=1, max_size=4),
)
def test_no_path_with_a_relative_or_odd_segment_is_ever_allowed(before, bad, after):
    assert not allowed_path("/".join([*before, bad, *after]))


@pytest.mark.unit
def test_a_symlink_is_not_followed_even_to_an_allowed_name(tmp_path):
    out = tmp_path / "out"
    day = out / "_audit/dt=2026-11-02"
    (day / "validation").mkdir(parents=True)
    (day / "validation/summary.json").write_text("[]")
    (tmp_path / "elsewhere.json").write_text('{"secret": 1}')
    (day / "validation/linked.json").symlink_to(tmp_path / "elsewhere.json")
    (out / "_audit/dt=2026-11-03").symlink_to(day)
    store = storage_for(str(out))
    assert read_evidence(store, "_audit/dt=2026-11-02/validation/summary.json") == b"[]"
    assert read_evidence(store, "_audit/dt=2026-11-02/validation/linked.json") is None
    assert read_evidence(store, "_audit/dt=2026-11-03/validation/summary.json") is None
    assert read_evidence(store, "_audit/dt=2026-11-02/validation/missing.json") is None
    assert read_evidence(store, "_audit/dt=2026-11-02/validation") is None


@pytest.mark.integration
def test_evidence_is_read_through_output_store_on_s3(bucket):  # noqa: F811 (the imported fixture)
    name, options = bucket
    store = storage_for(f"s3://{name}/out", options)
    evidence = manifest("2026-11-02", dag_run_id="manual__s3", checks=[])
    evidence["counts"]["content"].update(published=7, excluded={}, quarantined=0)
    store.write_json("_audit/dt=2026-11-02/manifest.json", evidence)
    store.write_bytes("_audit/dt=2026-11-02/report.html", b"<p>report</p>")
    store.write_bytes("content/dt=2026-11-02/part-0000.parquet", b"PAR1")
    assert read_evidence(store, "_audit/dt=2026-11-02/report.html") == b"<p>report</p>"
    assert read_evidence(store, "content/dt=2026-11-02/part-0000.parquet") is None  # stored, not allowed
    assert read_evidence(store, "_audit/dt=2026-11-02/../../content/dt=2026-11-02/part-0000.parquet") is None
    assert read_evidence(store, "_audit/dt=2026-11-02/validation/summary.json") is None  # missing
    assert run_evidence(store, DAILY_DAG, "manual__s3") == ("day", "2026-11-02")
    page = render_index_page(store, "/consent-audit")
    assert 'href="/consent-audit/day/2026-11-02"' in page and ">7<" in page
