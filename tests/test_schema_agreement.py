"""docs/schema.yaml, the Parquet schemas written by the code and the GX expectations say the same thing.

The YAML is what a reviewer reads; the pyarrow schemas are what is written; the GX suites are what is
checked before publication. Each column, type, allowed value set and declared test must agree.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from consent_gate import validation
from consent_gate.aggregates import AGGREGATE_SCHEMA
from consent_gate.gate import CONTENT_SCHEMA, EXCLUDED_SCHEMA, REASONS, SPEAKERS_SCHEMA, WITHDRAWN_SCHEMA
from consent_gate.speakers import SPEAKER_SOURCES, UNIDENTIFIED_REASONS
from consent_gate.steps import INPUTS_SCHEMA, QUARANTINE_SCHEMA

pytestmark = pytest.mark.unit

DOC = yaml.safe_load((Path(__file__).resolve().parents[1] / "docs" / "schema.yaml").read_text())["datasets"]

DAY = date(2026, 11, 3)

WRITTEN = {
    "content": CONTENT_SCHEMA,
    "aggregates": AGGREGATE_SCHEMA,
    "excluded": EXCLUDED_SCHEMA,
    "withdrawn": WITHDRAWN_SCHEMA,
    "speakers": SPEAKERS_SCHEMA,
    "quarantine": QUARANTINE_SCHEMA,
    "inputs": INPUTS_SCHEMA,
}

# The YAML's type names, as pyarrow spells them.
ARROW_TYPES = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "list<string>": pa.list_(pa.string()),
    "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
}


def allowed_values(column: dict[str, Any]) -> list[Any] | None:
    """The `in: [...]` test of a documented column, if it has one."""
    for test in column.get("tests", []):
        if isinstance(test, dict) and "in" in test:
            return test["in"]
    return None


def declared_tests(column: dict[str, Any]) -> set[str]:
    return {test for test in column.get("tests", []) if isinstance(test, str)}


@pytest.fixture(scope="module")
def expectations() -> dict[str, list[Any]]:
    """The GX expectations of the content (`content_columns` and `content`) and aggregate suites, as
    `run_suites` builds them."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    return {
        "content": validation._columns_expectations(gxe, Column) + validation._content_expectations(gxe, Column),
        "aggregates": validation._aggregate_expectations(gxe, Column, k=10, day=DAY),
    }


def by_kind(expectations: list[Any], kind: str, column: str | None = None) -> list[Any]:
    return [
        e for e in expectations
        if type(e).__name__ == kind and (column is None or getattr(e, "column", None) == column)
        and getattr(e, "row_condition", None) is None
    ]  # fmt: skip


def test_every_written_dataset_is_documented_and_only_those():
    assert set(DOC) == set(WRITTEN)


@pytest.mark.parametrize("dataset", sorted(WRITTEN))
def test_the_documented_columns_are_the_written_columns_in_order_with_their_types(dataset):
    documented = DOC[dataset]["columns"]
    written = WRITTEN[dataset]
    assert list(documented) == written.names
    for field in written:
        assert ARROW_TYPES[documented[field.name]["type"]] == field.type, field.name


def test_the_gx_suites_check_the_written_columns_in_order(expectations):
    for dataset in ("content", "aggregates"):
        (ordered,) = by_kind(expectations[dataset], "ExpectTableColumnsToMatchOrderedList")
        assert ordered.column_list == WRITTEN[dataset].names == list(DOC[dataset]["columns"])


@pytest.mark.parametrize("dataset", ["content", "aggregates"])
def test_the_documented_column_tests_are_the_gx_expectations(expectations, dataset):
    content = expectations[dataset]
    for name, column in DOC[dataset]["columns"].items():
        tests = declared_tests(column)
        assert ("not_null" in tests) == bool(by_kind(content, "ExpectColumnValuesToNotBeNull", name)), name
        assert ("unique" in tests) == bool(by_kind(content, "ExpectColumnValuesToBeUnique", name)), name
        allowed = [DAY.isoformat()] if "partition_day" in tests else allowed_values(column)
        in_set = by_kind(content, "ExpectColumnValuesToBeInSet", name)
        assert (allowed is not None) == bool(in_set), name
        if allowed is not None:
            assert sorted(in_set[0].value_set) == sorted(allowed), name


def test_the_documented_k_threshold_is_the_gx_expectation(expectations):
    assert DOC["aggregates"]["columns"]["distinct_users"]["tests"] == [">= k"]
    (bound,) = by_kind(expectations["aggregates"], "ExpectColumnValuesToBeBetween", "distinct_users")
    assert bound.min_value == 10  # the k the suite was built with


def test_the_documented_value_sets_are_the_codes_reasons_and_sources():
    excluded = DOC["excluded"]["columns"]["reason"]
    assert allowed_values(excluded) == list(REASONS)
    assert set(allowed_values(DOC["withdrawn"]["columns"]["reason"])) <= set(REASONS)
    speakers = DOC["speakers"]["columns"]
    assert allowed_values(speakers["speaker_source"]) == [*SPEAKER_SOURCES, None]
    assert allowed_values(speakers["unidentified_reason"]) == [*UNIDENTIFIED_REASONS, None]


def test_the_content_suite_frames_hold_every_column_its_expectations_read():
    """`content` runs on the `CONTENT_CHECKED` columns alone: each column an expectation or a row
    condition names must be among them (the row conditions name `artifact_type`)."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    named = {e.column for e in validation._content_expectations(gxe, Column)} | {"artifact_type"}
    assert named == set(validation.CONTENT_CHECKED)
    assert set(validation.CONTENT_CHECKED) <= set(CONTENT_SCHEMA.names)
