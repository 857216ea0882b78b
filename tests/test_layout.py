"""Every storage path and id format is built and parsed in `layout`: what it builds, it reads back."""

from __future__ import annotations

from datetime import date

import pytest

from consent_gate import layout

pytestmark = pytest.mark.unit

DAY = date(2026, 11, 3)


def test_day_folders_are_built_and_read_back():
    for folder in (layout.content_day(DAY), layout.aggregates_day(DAY), layout.audit_day(DAY), layout.staging_day(DAY)):
        assert layout.day_of(folder) == DAY.isoformat()
    assert layout.content_day(DAY) == "content/dt=2026-11-03"
    assert layout.manifest_path(DAY) == "_audit/dt=2026-11-03/manifest.json"
    assert layout.attempt_record(DAY, "a__1") == "_audit/dt=2026-11-03/attempts/a__1.json"
    assert layout.days_of(["dt=2026-11-03", "other", "dt=2026-11-04/"]) == ["2026-11-03", "2026-11-04"]
    assert layout.day_of("attempts") is None


def test_ids_and_part_names_are_built_and_read_back():
    attempt = layout.new_id("manual__2026-11-04T00:00:00", "abcd1234")
    assert layout.attempt_suffix(attempt) == "abcd1234"
    assert layout.shard_of_part(f"x/content/{layout.part_name(3)}") == "0003"
    assert layout.content_report(layout.shard_of_part(layout.part_name(3))) == layout.content_report(3)
    assert layout.is_content_report(f"stage/{layout.content_report(3)}")


def test_a_stage_lives_under_staging():
    stage = layout.Stage(DAY, "a__1")
    assert stage.root == "_staging/dt=2026-11-03/a__1"
    assert stage / layout.RUN_RECORD == "_staging/dt=2026-11-03/a__1/run.json"
