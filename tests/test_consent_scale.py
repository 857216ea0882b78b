"""Issue 10: one consent snapshot per run. After it, no step reads the whole store again: the gate reads
the stage's snapshot file, re-verification reads the day's subjects' rows, the no-resurrection step the
rows recorded or effective after the pinned as_of and those subjects' rows. Counted, not timed."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import date
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.consent import COLUMNS
from consent_gate.consent_store import observe_reads
from consent_gate.pipeline import run_day
from consent_gate.records import parse_timestamp

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 2)
AS_OF = parse_timestamp("2026-11-20T00:00:00Z", "as_of")
OTHERS = 6_000  # events of subjects with no meeting: a store much larger than the day needs


def _store_with_others(sample: Path, tmp_path: Path) -> Path:
    db = tmp_path / "consent.db"
    shutil.copyfile(sample / "consent.db", db)
    rows = [
        (f"zz_other_{n:06d}", "user", f"u_other_{n // 3:06d}", "ai_training", "*", "grant" if n % 3 else "revoke",
         "2026-10-01T00:00:00Z", "2026-10-01T00:00:00Z", "2026-01")
        for n in range(OTHERS)
    ]  # fmt: skip
    with sqlite3.connect(db) as connection:
        connection.executemany(f"INSERT INTO consent_events VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    return db


def test_after_the_snapshot_no_step_reads_the_whole_store(sample_dir, tmp_path):
    db = _store_with_others(sample_dir, tmp_path)
    with sqlite3.connect(db) as connection:
        total = connection.execute("SELECT count(*) FROM consent_events").fetchone()[0]
    plain = tmp_path / "plain"
    settings = RunSettings(
        raw=str(sample_dir / "raw"), out=str(tmp_path / "out"), consent_db=f"sqlite:///{db}", policy=Policy(),
        secret=(sample_dir / "hmac.key").read_bytes(),
    )  # fmt: skip
    with observe_reads() as reads:
        run_day(settings, DAY, AS_OF, clock=utc_now)
    snapshots = [rows for purpose, rows in reads if purpose == "snapshot"]
    assert snapshots == [total]  # read once, whole
    later = [(purpose, rows) for purpose, rows in reads if purpose != "snapshot"]
    assert {p for p, _ in later} <= {"verify", "no-resurrection: changed rows", "no-resurrection: subjects' rows"}
    assert any(p == "verify" for p, _ in later)
    assert sum(rows for p, rows in later if p == "verify") <= total - OTHERS  # only the day's subjects' rows
    assert all(rows <= total - OTHERS for _, rows in later)
    # The same published rows as the sample's own store: the extra subjects have no meetings.
    baseline = RunSettings(
        raw=str(sample_dir / "raw"), out=str(plain), consent_db=f"sqlite:///{sample_dir / 'consent.db'}",
        policy=Policy(), secret=(sample_dir / "hmac.key").read_bytes(),
    )  # fmt: skip
    run_day(baseline, DAY, AS_OF, clock=utc_now)
    published = ds.dataset(tmp_path / f"out/content/dt={DAY}", format="parquet").to_table().sort_by("artifact_id")
    expected = ds.dataset(plain / f"content/dt={DAY}", format="parquet").to_table().sort_by("artifact_id")
    assert published.num_rows > 0 and published.equals(expected)
