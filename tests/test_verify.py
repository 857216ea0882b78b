"""The independent re-verification (DuckDB over Parquet + consent store): SPEC §3 rules, and its veto."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from consent_gate.cli import main
from consent_gate.consent import subject_key, to_ns
from consent_gate.gate import CONTENT_SCHEMA
from consent_gate.keys import Keyer
from consent_gate.stores import storage_for
from consent_gate.verify import VerificationError, verify_files
from tests.builders import at, consent_row, snapshot, write_consent_db
from tests.test_validation import DAY, attempt, content_part, rewrite, settings_for

SECRET = b"0123456789abcdef0123456789abcdef"
KEYER = Keyer(SECRET)
AS_OF = at(24 * 60)
GRANTS = [consent_row("e_acct", "acct_1"), consent_row("e_user", "u_1")]


def chat_row(artifact_id: str = "m_1/chat/1", user: str = "u_1", account: str = "acct_1", minutes: float = 0):
    return {
        "artifact_id": artifact_id, "artifact_type": "chat_message", "meeting_key": KEYER.meeting("m_1"),
        "user_keys": [KEYER.user(user)], "account_keys": [KEYER.account(account)], "captured_at": at(minutes),
        "text": "hello", "media_uri": None, "media_sha256": None, "terms_versions": ["2026-01"],
        "consent_as_of": AS_OF,
    }  # fmt: skip


def verify_rows(tmp_path: Path, consent: list[tuple], rows: list[dict]):
    url = write_consent_db(tmp_path / "consent.db", consent)
    pq.write_table(pa.Table.from_pylist(rows, schema=CONTENT_SCHEMA), tmp_path / "part-0000.parquet")
    return verify_files(storage_for(str(tmp_path)), ["part-0000.parquet"], url, AS_OF, KEYER)


CASES = [
    pytest.param([], True, None, id="granted-before-capture-and-still-at-as-of"),
    pytest.param([consent_row("e_r", "u_1", "revoke", effective=at(10))], False, "not_granted_at_as_of",
                 id="revoked-after-capture"),
    pytest.param([consent_row("e_r", "u_1", "revoke", effective=at(-60)), consent_row("e_g", "u_1", effective=at(10))],
                 False, "not_granted_at_capture", id="a-later-grant-never-reaches-back"),
    pytest.param([consent_row("e_r", "u_1", "revoke", effective=at(-5)), consent_row("e_g", "u_1", effective=at(-5))],
                 False, "not_granted_at_capture", id="tie-revoke-after-grant"),
    pytest.param([consent_row("e_r", "u_1", "revoke", effective=at(-5), recorded=at(-30)),
                  consent_row("e_g", "u_1", effective=at(-5), recorded=at(-20))], True, None,
                 id="tie-broken-by-recorded-at"),
    pytest.param([consent_row("e_r", "u_1", "revoke", effective=at(10), recorded=at(25 * 60))], True, None,
                 id="revoke-recorded-after-as-of-is-invisible"),
    pytest.param([consent_row("e_r", "u_1", "revoke", content_type="transcript", effective=at(10))], True, None,
                 id="revoke-of-another-content-type"),
    pytest.param([consent_row("e_r", "u_1", "revoke", purpose="marketing", effective=at(10))], True, None,
                 id="revoke-of-another-purpose"),
    pytest.param([consent_row("e_r", "acct_1", "revoke", effective=at(10))], False, "not_granted_at_as_of",
                 id="account-revoked"),
    pytest.param([consent_row("e_x", "u_1", "maybe")], False, "subject_failed_closed", id="unreadable-decision"),
    pytest.param([consent_row("e_x", "u_1", effective="2026-11-01T09:00:00")], False, "subject_failed_closed",
                 id="timestamp-without-offset"),
    pytest.param([consent_row("e_user", "u_1", "grant")], False, "subject_failed_closed", id="duplicate-event-id"),
    pytest.param([consent_row("e_x", "u_1", purpose=None)], False, "subject_failed_closed", id="purpose-missing"),
]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(("extra", "eligible", "reason"), CASES)
def test_spec_consent_rules_re_derived_in_sql(tmp_path, extra, eligible, reason):
    consent = [*GRANTS, *extra]
    result = verify_rows(tmp_path, consent, [chat_row()])
    assert result.rows_checked == 1
    assert result.passed is eligible, result.violations
    if reason:
        assert result.violations == {reason: 1}
        assert result.violating_artifacts == ["m_1/chat/1"]
    # The gate's own snapshot agrees with the second path on every case.
    gate = snapshot(consent, AS_OF)
    subjects = [subject_key("user", "u_1"), subject_key("account", "acct_1")]
    ok, _ = gate.consented(subjects, "chat", np.full(2, to_ns(at(0)), dtype=np.int64))
    assert bool(ok.all()) is eligible


@pytest.mark.integration
def test_rows_without_their_subjects_are_violations(tmp_path):
    no_account = {**chat_row("m_1/chat/2"), "account_keys": []}
    no_author = {**chat_row("m_1/chat/3"), "user_keys": []}
    result = verify_rows(tmp_path, GRANTS, [chat_row(), no_account, no_author])
    assert result.violations == {"no_account_subject": 1, "no_author_subject": 1}


@pytest.mark.integration
def test_a_consent_row_whose_subject_is_unreadable_stops_verification(tmp_path):
    broken = consent_row("e_bad", "u_1", subject_type="team")
    with pytest.raises(VerificationError, match="unreadable down to their subject"):
        verify_rows(tmp_path, [*GRANTS, broken], [chat_row()])


@pytest.mark.integration
def test_messages_never_echo_keys_or_raw_ids(tmp_path):
    result = verify_rows(tmp_path, GRANTS[:1], [chat_row()])
    assert not result.passed
    detail = result.detail()
    assert "u_1" not in detail and KEYER.user("u_1") not in detail and "m_1/chat/1" in detail


# --- on the sample, through the pipeline and the command line -------------------------------------


@pytest.fixture(scope="module")
def published(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("verified")
    _, results = attempt(settings_for(sample_dir, out))
    assert all(results.values()), results
    return out


@pytest.mark.integration
def test_the_second_path_agrees_with_the_gate_on_the_sample(published):
    audit = published / f"_audit/dt={DAY}"
    manifest = json.loads((audit / "manifest.json").read_text())
    evidence = json.loads((audit / "validation/independent_verification.json").read_text())
    assert evidence["rows_checked"] == manifest["counts"]["content"]["published"] > 0
    assert evidence["violations"] == {} and evidence["failed_closed_subjects"] > 0


@pytest.mark.integration
def test_a_row_the_second_path_finds_ineligible_fails_the_run_and_publishes_nothing(sample_dir, tmp_path):
    """A well-formed row whose user never consented: only the independent path can tell."""
    settings = settings_for(sample_dir, tmp_path / "out")
    stranger = Keyer(settings.secret).user("u_never_consented")

    def smuggle(store, stage):
        path, table = content_part(store, stage)
        users = table.column("user_keys").to_pylist()
        users[0] = [stranger]
        index = table.schema.get_field_index("user_keys")
        rewrite(store, path, table.set_column(index, "user_keys", pa.array(users, pa.list_(pa.string()))))

    stage, results = attempt(settings, smuggle)
    assert {name for name, passed in results.items() if not passed} == {"independent_verification"}
    out = tmp_path / "out"
    assert not (out / f"content/dt={DAY}").exists()
    assert not (out / f"_audit/dt={DAY}/manifest.json").exists()
    kept = out / f"_audit/dt={DAY}/attempts/{stage.attempt}"
    evidence = json.loads((kept / "validation/independent_verification.json").read_text())
    assert evidence["violations"] == {"not_granted_at_capture": 1}


def _raw_user_of(sample_dir: Path, key: str, keyer: Keyer) -> str:
    for meeting in (sample_dir / "raw/meetings").glob(f"dt={DAY}/*/meeting.json"):
        try:
            participants = json.loads(meeting.read_text()).get("participants", [])
        except json.JSONDecodeError:
            continue
        for p in participants:
            if p.get("user_id") and keyer.user(p["user_id"]) == key:
                return p["user_id"]
    raise AssertionError("no participant has that key")


@pytest.mark.integration
def test_cli_verify_exits_non_zero_once_a_published_subject_withdraws(published, sample_dir, tmp_path):
    consent_db = tmp_path / "consent.db"
    shutil.copy(sample_dir / "consent.db", consent_db)
    args = ["--raw", str(sample_dir / "raw"), "--out", str(published), "--consent-db", f"sqlite:///{consent_db}",
            "--key-file", str(sample_dir / "hmac.key")]  # fmt: skip
    content = pq.read_table(published / f"content/dt={DAY}")
    before = sorted(p.name for p in published.rglob("*"))
    assert main(["verify", "--date", DAY.isoformat(), *args]) == 0

    keyer = Keyer((sample_dir / "hmac.key").read_bytes().strip())
    key = next(keys[0] for keys in content.column("user_keys").to_pylist() if keys)
    revoked = datetime.now(UTC) - timedelta(minutes=1)
    with sqlite3.connect(consent_db) as connection:
        row = consent_row("zz_withdrawal", _raw_user_of(sample_dir, key, keyer), "revoke", effective=revoked)
        connection.execute("INSERT INTO consent_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    assert main(["verify", "--date", DAY.isoformat(), *args]) == 1
    assert sorted(p.name for p in published.rglob("*")) == before  # read-only
    assert main(["verify", "--date", "2026-10-01", *args]) == 2


# --- DuckDB bounded -------------------------------------------------------------------------------


def _duckdb_settings(connection) -> dict[str, str]:
    names = ("memory_limit", "threads", "preserve_insertion_order", "temp_directory")
    return {name: str(connection.execute(f"SELECT current_setting('{name}')").fetchall()[0][0]) for name in names}


@pytest.mark.unit
def test_duckdb_runs_with_a_memory_limit_a_few_threads_and_a_spill_folder(tmp_path):
    import duckdb

    from consent_gate import verify

    reference = duckdb.connect(config={"memory_limit": verify.DUCKDB_SETTINGS["memory_limit"]})
    unbounded = duckdb.connect()
    connection = verify.connect(str(tmp_path))
    try:
        settings = _duckdb_settings(connection)
        assert settings["memory_limit"] == _duckdb_settings(reference)["memory_limit"]
        assert settings["memory_limit"] != _duckdb_settings(unbounded)["memory_limit"]  # not 80% of the machine
        assert settings["threads"] == str(verify.DUCKDB_SETTINGS["threads"])
        assert settings["preserve_insertion_order"] == "False"
        assert settings["temp_directory"] == str(tmp_path)
    finally:
        for c in (connection, reference, unbounded):
            c.close()


@pytest.mark.integration
def test_verification_runs_on_the_bounded_connection(tmp_path, monkeypatch):
    from consent_gate import verify

    opened = []

    def spy(temp_directory: str):
        connection = verify_connect(temp_directory)
        opened.append(_duckdb_settings(connection))
        return connection

    verify_connect = verify.connect
    monkeypatch.setattr(verify, "connect", spy)
    result = verify_rows(tmp_path, GRANTS, [chat_row(), chat_row("m_1/chat/2")])
    assert result.passed and result.rows_checked == 2
    [settings] = opened
    assert settings["threads"] == str(verify.DUCKDB_SETTINGS["threads"]) and settings["temp_directory"]
