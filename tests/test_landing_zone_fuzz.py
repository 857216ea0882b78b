"""Fuzzing the landing zone (issue 14): byte flips, truncations, duplicated keys, nested arrays, odd
names and symbolic links.

Whatever the mutation, the run either publishes with every unit accounted for, or fails with a one-line
error; it never raises an unexpected exception, and it never publishes a row the reference rules
(tests/reference.py, SPEC §3 written with no shared code) exclude. Two properties: the staged steps on
many mutations (fast), and the whole CLI run, publication included, on a few.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from datetime import date, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consent_gate.artifacts import CONTENT_TYPE_OF
from consent_gate.checks import reconciliation_checks
from consent_gate.cli import main
from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.errors import RunRefused
from consent_gate.keys import Keyer
from consent_gate.publication import record_failed_attempt
from consent_gate.steps import aggregate_day, gate_content, snapshot_consent
from tests import reference
from tests.builders import DAY, at, chat_line, consent_row, meeting_record, participant, ts, vtt, write_consent_db
from tests.builders import write_meeting as build_meeting

pytestmark = pytest.mark.integration

AS_OF = at(24 * 60)
SECRET = b"fuzz-secret-0123456789abcdef-fuzz"
OUTSIDE_TEXT = "words from outside the landing zone"
ODD_NAMES = ["olga.novak@contoso.example.com", "a b", "m#1", "ü-meeting", "x" * 129, "m:1", "-", "m\\x"]
# u_3 revoked, acct_2 never granted: the reference rules exclude everything of theirs.
CONSENT = [
    consent_row("g1", "acct_1"), consent_row("g2", "u_1"), consent_row("g3", "u_2"), consent_row("g4", "u_3"),
    consent_row("r4", "u_3", "revoke", effective=at(-60)),
]  # fmt: skip


def _people(account: str = "acct_1") -> list[dict]:
    return [participant("p_1", "u_1", account, "Ada Lovelace"), participant("p_2", "u_2", account, "Grace Hopper"),
            participant("p_3", "u_3", account, "Alan Turing")]  # fmt: skip


def _template(root: Path) -> Path:
    """The unmutated landing zone: meetings of a consenting and a non-consenting account, telemetry."""
    raw = root / "raw"
    for meeting_id, account in (("m_ok", "acct_1"), ("m_other", "acct_2")):
        build_meeting(
            raw, meeting_record(meeting_id, account, _people(account)),
            transcript=vtt((1, "Ada Lovelace: one"), (2, "Grace Hopper: two"), (3, "Alan Turing: three")),
            chat=[chat_line("c1", "p_1"), chat_line("c2", "p_1", recipient="p_2"), chat_line("c3", "p_3")],
            summary={"summary_id": "s1", "generated_at": ts(at(61)), "text": "summary"},
            recordings=[{"recording_id": "r1", "kind": "audio", "uri": "s3://media/r1", "sha256": "a" * 64,
                         "bytes": 10, "started_at": ts(at(1))}],
        )  # fmt: skip
    fixed = {"event_type": "join", "client_version": "6.3.0", "platform": "mac", "region": "eu"}
    events = [
        {"event_id": f"e{n}", "ts": ts(at(n)), "user_id": f"u_{n % 4}", **fixed, "duration_ms": n} for n in range(40)
    ]
    part = raw / f"telemetry/dt={DAY}/part-0001.jsonl.gz"
    part.parent.mkdir(parents=True)
    part.write_bytes(gzip.compress("".join(json.dumps(e) + "\n" for e in events).encode()))
    (root / "outside.vtt").write_text(vtt((1, f"Ada Lovelace: {OUTSIDE_TEXT}")))
    write_consent_db(root / "consent.db", CONSENT)
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return _template(tmp_path_factory.mktemp("fuzz-template"))


# --- mutations ---------------------------------------------------------------------------------------

FILES = [f"meetings/dt={DAY}/{m}/{f}" for m in ("m_ok", "m_other")
         for f in ("meeting.json", "transcript.vtt", "chat.jsonl", "summary.json", "recordings.json")]  # fmt: skip
FILES.append(f"telemetry/dt={DAY}/part-0001.jsonl.gz")
FOLDERS = [f"meetings/dt={DAY}/m_ok", f"meetings/dt={DAY}/m_other"]

mutations = st.one_of(
    st.tuples(st.just("flip"), st.sampled_from(FILES), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.sampled_from(FILES), st.floats(0, 0.99)),
    st.tuples(st.just("duplicate_key"), st.sampled_from(FOLDERS), st.sampled_from(["recipient", "sender_participant_id"])),  # noqa: E501
    st.tuples(st.just("nest"), st.sampled_from(FILES[:5] + FILES[5:10]), st.integers(1, 5000)),
    st.tuples(st.just("rename"), st.sampled_from(FILES + FOLDERS), st.sampled_from(ODD_NAMES)),
    st.tuples(st.just("symlink"), st.sampled_from(FILES + FOLDERS), st.sampled_from(["outside", "loop"])),
)  # fmt: skip


def mutate(root: Path, mutation: tuple) -> None:
    raw = root / "raw"
    kind, relative, *args = mutation
    path = raw / relative
    if not path.exists() and not path.is_symlink():
        return  # an earlier mutation renamed or replaced it
    if path.is_symlink() or (path.is_dir() and kind not in ("rename", "symlink", "duplicate_key")):
        return
    if kind == "flip":
        data = bytearray(path.read_bytes())
        if data:
            data[min(int(args[0] * len(data)), len(data) - 1)] ^= args[1]
            path.write_bytes(bytes(data))
    elif kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(args[0] * len(data))])
    elif kind == "duplicate_key":
        chat = path / "chat.jsonl"
        if chat.is_file() and not chat.is_symlink():
            # The private message c2 gains a second recipient key: "last key wins" would make it public.
            text = chat.read_text(errors="surrogateescape")
            key, value = args[0], "everyone" if args[0] == "recipient" else "p_1"
            chat.write_text(text.replace(f'"{key}": ', f'"{key}": "{value}", "{key}": ', 1), errors="surrogateescape")
    elif kind == "nest":
        if path.suffix in (".json", ".jsonl"):
            text = path.read_text(errors="surrogateescape")
            nested = "[" * args[0] + "1" + "]" * args[0]
            path.write_text(text.replace('"text": ', f'"text": {nested}, "x": ', 1), errors="surrogateescape")
    elif kind == "rename":
        path.rename(path.with_name(args[0]))
    elif kind == "symlink":
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        path.symlink_to(root / "outside.vtt" if args[0] == "outside" else path)


# --- the reference's verdict on what was published ----------------------------------------------------


def _subjects() -> tuple[dict[str, str], dict[str, str]]:
    keyer = Keyer(SECRET)
    users = {keyer.user(u): u for u in ("u_1", "u_2", "u_3")}
    accounts = {keyer.account(a): a for a in ("acct_1", "acct_2")}
    return users, accounts


def assert_reference_allows(rows: list[dict]) -> None:
    """Every published row: each required subject is known and consented by the reference rules."""
    users, accounts = _subjects()
    for row in rows:
        ct = CONTENT_TYPE_OF[row["artifact_type"]]
        captured: datetime = row["captured_at"]
        assert row["artifact_id"] != "m_ok/chat/c2", "a private message was published"
        assert row["account_keys"], row["artifact_id"]
        for keys, known, kind in ((row["user_keys"], users, "user"), (row["account_keys"], accounts, "account")):
            for key in keys:
                assert key in known, f"{row['artifact_id']}: a {kind} without consent records was published"
                assert reference.consented(CONSENT, AS_OF, kind, known[key], ct, captured), row["artifact_id"]


def _settings(root: Path) -> RunSettings:
    return RunSettings(
        raw=str(root / "raw"), out=str(root / "out"), consent_db=f"sqlite:///{root / 'consent.db'}",
        policy=Policy(max_quarantine_ratio=1.0, k_min_distinct_users=1), secret=SECRET,
    )  # fmt: skip


def _world(template: Path, changes: list[tuple]) -> Path:
    root = Path(tempfile.mkdtemp(prefix="consent-gate-fuzz-"))
    shutil.copytree(template, root, symlinks=True, dirs_exist_ok=True)
    for mutation in changes:
        mutate(root, mutation)
    return root


# --- property 1: the staged steps, many mutations ----------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(mutations, min_size=1, max_size=3))
def test_staged_steps_account_for_every_unit_and_stage_only_what_the_reference_allows(template, changes):
    root = _world(template, changes)
    try:
        config = _settings(root)
        try:
            stage = snapshot_consent(config, date.fromisoformat(DAY), AS_OF, run_id="fuzz", clock=utc_now)
        except RunRefused as error:  # everything was renamed away: nothing arrived
            assert "\n" not in str(error)
            return
        try:
            gate_content(config, stage)
            aggregate_day(config, stage)
            checks = {c.name: c for c in reconciliation_checks(config, stage)}
            assert checks["content_reconciles"].passed, checks["content_reconciles"].detail
            assert checks["telemetry_reconciles"].passed, checks["telemetry_reconciles"].detail
            content = root / "out" / stage.root / "content"
            rows = pq.read_table(content).to_pylist() if content.exists() and any(content.iterdir()) else []
            assert_reference_allows(rows)
            quarantine = root / "out" / stage.root / "audit/quarantine"
            text = json.dumps([pq.read_table(p).to_pylist() for p in sorted(quarantine.glob("*.parquet"))])
            assert not any(name in text for name in ODD_NAMES[:5]), "an invalid name was echoed"
            assert OUTSIDE_TEXT not in text
        finally:
            record_failed_attempt(config, stage, "fuzz: staged only", clock=utc_now)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- property 2: the whole run through the CLI, publication included ----------------------------------


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(mutations, min_size=1, max_size=3))
def test_a_mutated_day_publishes_what_the_reference_allows_or_fails_in_one_line(template, changes, capsys):
    root = _world(template, changes)
    try:
        (root / "hmac.key").write_bytes(SECRET)
        policy = root / "policy.yaml"
        policy.write_text("version: fuzz\nmax_quarantine_ratio: 1.0\nk_min_distinct_users: 1\n")
        code = main(["run", "--date", DAY, "--as-of", ts(AS_OF), "--raw", str(root / "raw"), "--out",
                     str(root / "out"), "--consent-db", f"sqlite:///{root / 'consent.db'}", "--key-file",
                     str(root / "hmac.key"), "--policy", str(policy)])  # fmt: skip
        err = capsys.readouterr().err
        assert "Traceback" not in err
        out = root / "out"
        if code != 0:
            assert code == 1 and len([line for line in err.splitlines() if "FAILED" in line or "failed:" in line]) == 1
            assert not (out / f"content/dt={DAY}").exists()
            return
        manifest = json.loads((out / f"_audit/dt={DAY}/manifest.json").read_text())
        counts = manifest["counts"]["content"]
        assert counts["units_in"] == counts["published"] + sum(counts["excluded"].values()) + counts["quarantined"]
        assert all(c["passed"] for c in manifest["checks"])
        assert_reference_allows(pq.read_table(out / f"content/dt={DAY}").to_pylist())
        for path in out.rglob("*"):
            if path.is_file():
                blob = path.read_bytes()
                assert OUTSIDE_TEXT.encode() not in blob and b"contoso" not in blob, path
    finally:
        shutil.rmtree(root, ignore_errors=True)
