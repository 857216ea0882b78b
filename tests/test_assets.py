"""Asset events: what a publication and a sweep tell downstream DAGs (figures only, never ids)."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import date

import pytest

from consent_gate import assets
from consent_gate.config import utc_now
from consent_gate.keys import Keyer
from consent_gate.pipeline import run_day
from consent_gate.records import parse_timestamp
from consent_gate.sweep import sweep
from tests.conftest import sample_settings

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 2)
AS_OF = parse_timestamp("2026-11-20T00:00:00Z", "as_of")


class RecordedEvent:
    """What Airflow's outlet event accessor records: `extra` and partition keys (the real accessor
    needs a running task; this keeps the same two fields)."""

    def __init__(self) -> None:
        self.extra: dict = {}
        self.partition_keys: set[str] = set()

    def add_partitions(self, keys) -> None:
        self.partition_keys.update([keys] if isinstance(keys, str) else keys)


class RecordedEvents(dict):
    def __missing__(self, asset):
        self[asset] = RecordedEvent()
        return self[asset]


@pytest.fixture
def published(sample_dir, tmp_path):
    settings = sample_settings(sample_dir, tmp_path)
    outcome = run_day(settings, DAY, AS_OF, run_id="assets", clock=utc_now)
    return settings, tmp_path / "consent.db", outcome.manifest


def identifiers(sample_dir) -> set[str]:
    """Every raw id in the sample's meetings of the day (meeting, account, user, participant ids)."""
    found = set()
    for meeting in (sample_dir / f"raw/meetings/dt={DAY}").glob("*/meeting.json"):
        found.update(re.findall(r"\b(?:m|acct|u|p)_[0-9a-f]{8,}\b", meeting.read_text()))
    assert found
    return found


def published_account(settings, sample_dir) -> str:
    """An account with published rows of the day."""
    import pyarrow.dataset as ds

    keys = {k for row in ds.dataset(f"{settings.out}/content/dt={DAY}").to_table(["account_keys"]).to_pylist()
            for k in row["account_keys"]}  # fmt: skip
    keyer = Keyer(settings.secret)
    accounts = sorted({i for i in identifiers(sample_dir) if i.startswith("acct_")})
    return next(a for a in accounts if keyer.account(a) in keys)


def test_the_assets_are_named_in_an_x_scheme_not_a_false_location():
    for asset in (assets.CONTENT, assets.AGGREGATES, assets.CONSENT_EVENTS):
        assert asset.uri.startswith("x-consent-gate://")


def test_a_publication_announces_its_day_with_figures_and_no_ids(published, sample_dir):
    settings, _, manifest = published
    events = RecordedEvents()
    extra = assets.announce_publication(events, settings.store(), settings.out, DAY.isoformat())
    assert set(events) == {assets.CONTENT, assets.AGGREGATES}
    for event in events.values():
        assert event.partition_keys == {"2026-11-02"} and event.extra == extra
    manifest_file = f"{settings.out}/_audit/dt={DAY}/manifest.json"
    assert extra["day"] == "2026-11-02" and extra["kind"] == "publish" and extra["manifest"] == manifest_file
    assert extra["manifest_sha256"] == settings.store().sha256(f"_audit/dt={DAY}/manifest.json")[1]
    assert extra["rows"]["content"] == manifest["counts"]["content"]["published"] > 0
    assert extra["rows"]["aggregates"] >= 0 and extra["consent_checksum"] == manifest["consent"]["checksum"]
    assert extra["excluded"] == sum(manifest["counts"]["content"]["excluded"].values())
    text = json.dumps(extra)
    assert not [i for i in identifiers(sample_dir) if i in text]
    assert assets.change_of_day(extra, "2026-11-02")["kind"] == "publish"
    with pytest.raises(ValueError):
        assets.change_of_day(extra, "2026-11-03")


def test_a_sweep_announces_each_rewritten_day_keyed_by_day(published, sample_dir):
    settings, db, manifest = published
    account = published_account(settings, sample_dir)
    with sqlite3.connect(db) as connection:
        connection.execute(
            "INSERT INTO consent_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("zz_assets_revoke", "account", account, "ai_training", "*", "revoke",
             "2026-11-26T09:00:00Z", "2026-11-26T09:00:00Z", "2026-01"),
        )  # fmt: skip
    outcome = sweep(
        settings.store(),
        settings.consent_db,
        settings.secret,
        parse_timestamp("2026-11-26T10:00:00Z", "t"),
        clock=utc_now,
    )
    summary = {"sweep_id": outcome.sweep_id, "days_rewritten": len(outcome.purges)}
    events = RecordedEvents()
    extra = assets.announce_sweep(events, settings.store(), settings.out, summary)
    assert set(events) == {assets.CONTENT}
    assert events[assets.CONTENT].partition_keys == {"2026-11-02"}
    change = assets.change_of_day(extra, "2026-11-02")
    assert change["kind"] == "sweep" and change["rows_removed"] == outcome.rows_removed > 0
    assert change["rows"]["content"] == manifest["counts"]["content"]["published"] - outcome.rows_removed
    assert change["manifest_sha256"] == settings.store().sha256(f"_audit/dt={DAY}/manifest.json")[1]
    assert account not in json.dumps(extra)
    assert not [i for i in identifiers(sample_dir) if i in json.dumps(extra)]
