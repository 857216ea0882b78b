"""Issue 14, input and run side: every attack that got through, run through `run_day` or the CLI.

Each test states its landing zone, runs the day and asserts the outcome: refused or quarantined with a
message naming file, line and field; nothing published, or the previous version byte-identical; no raw
value in any output.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from consent_gate.cli import main
from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.errors import GateCheckFailed, RunRefused, ShrinkRefused
from consent_gate.pipeline import run_day
from tests.builders import (
    at,
    chat_line,
    consent_row,
    meeting_record,
    participant,
    ts,
    vtt,
    write_consent_db,
    write_meeting,
)

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 2)
AS_OF = at(24 * 60)
EMAIL = "olga.novak@contoso.example.com"
SECRET = b"hardening-test-secret-0123456789abcdef"


# --- a small landing zone everyone consented to ----------------------------------------------------


def people() -> list[dict]:
    return [participant("p_1", "u_1", "acct_1", "Ada Lovelace"), participant("p_2", "u_2", "acct_1", "Grace Hopper")]


def good_meeting(raw: Path, meeting_id: str, **files) -> Path:
    defaults = {
        "transcript": vtt((1, "Ada Lovelace: hello"), (2, "Grace Hopper: hi")),
        "chat": [chat_line("c1", "p_1"), chat_line("c2", "p_2")],
        "summary": {"summary_id": "s1", "generated_at": ts(at(61)), "text": "a summary"},
    }
    return write_meeting(raw, meeting_record(meeting_id, "acct_1", people()), **{**defaults, **files})


def telemetry_event(n: int, **fields) -> dict:
    return {"event_id": f"ev_{n}", "ts": ts(at(n % 50)), "account_id": "acct_1", "user_id": f"u_{n % 3}",
            "event_type": "join", "client_version": "6.3.0", "platform": "mac", "region": "eu",
            "duration_ms": n, **fields}  # fmt: skip


def write_telemetry(raw: Path, lines: list[dict | str], name: str = "part-0001.jsonl.gz") -> Path:
    path = raw / f"telemetry/dt={DAY}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_bytes(gzip.compress(body.encode("utf-8", "surrogatepass")))
    return path


@pytest.fixture
def world(tmp_path) -> tuple[Path, Path, RunSettings]:
    raw, out = tmp_path / "raw", tmp_path / "out"
    for n in range(4):
        good_meeting(raw, f"m_{n}")
    write_telemetry(raw, [telemetry_event(n) for n in range(30)])
    rows = [consent_row("g1", "acct_1"), consent_row("g2", "u_1"), consent_row("g3", "u_2")]
    settings = RunSettings(
        raw=str(raw), out=str(out), consent_db=write_consent_db(tmp_path / "consent.db", rows),
        policy=Policy(max_quarantine_ratio=0.5, k_min_distinct_users=1), secret=SECRET,
    )  # fmt: skip
    return raw, out, settings


def published_ids(out: Path) -> set[str]:
    folder = out / f"content/dt={DAY}"
    return set(pq.read_table(folder).column("artifact_id").to_pylist()) if folder.exists() else set()


def quarantine(out: Path) -> dict[str, str]:
    return {r["unit"]: r["error"] for r in pq.read_table(out / f"_audit/dt={DAY}/quarantine.parquet").to_pylist()}


def output_text(out: Path) -> str:
    """Every output file's bytes, plus the decoded rows of every Parquet file: what a leak scan reads."""
    parts = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        blob = path.read_bytes()
        parts.append(blob.decode("utf-8", "replace"))
        if path.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
    return "\n".join(parts)


def tree(out: Path) -> dict[str, str]:
    """The published tree, file by file (sha256): 'byte-identical' is this dict being equal."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.relative_to(out).parts[0] == "_locks"
    }


def assert_kept(before: dict[str, str], out: Path) -> None:
    """The published version is byte-identical; the only new files are a failed attempt's evidence."""
    after = tree(out)
    assert {k: after.get(k) for k in before} == before
    assert all(f"/dt={DAY}/attempts/" in k for k in set(after) - set(before)), sorted(set(after) - set(before))


def leftovers(out: Path) -> list[str]:
    staged = [str(p) for p in (out / "_staging").rglob("*") if p.is_file()] if (out / "_staging").exists() else []
    return staged + [str(p) for p in out.rglob("*.tmp-*")]


# --- item 2: strict JSON ---------------------------------------------------------------------------


def test_a_duplicate_recipient_key_is_quarantined_never_read_last_key_wins(world):
    raw, out, settings = world
    line = '{"message_id": "c9", "sender_participant_id": "p_1", "sent_at": "SENT", "recipient": "p_2", '
    line = line.replace("SENT", ts(at(3)))
    line += '"recipient": "everyone", "text": "meet me later"}'
    good_meeting(raw, "m_0", chat=[chat_line("c1", "p_1"), line])
    run_day(settings, DAY, AS_OF, clock=utc_now)
    errors = quarantine(out)
    unit = f"meetings/dt={DAY}/m_0/chat.jsonl:2"
    assert "field 'recipient': duplicate key" in errors[unit]
    assert "m_0/chat/c9" not in published_ids(out) and "m_0/chat/c1" in published_ids(out)
    assert "meet me later" not in output_text(out)


@pytest.mark.parametrize(
    ("name", "content", "field"),
    [
        (
            "summary.json",
            '{"summary_id": "s1", "generated_at": "2026-11-02T11:01:00Z", "text": "t", "score": NaN}',
            "score",
        ),
        ("recordings.json", '[{"recording_id": "r1", "bytes": Infinity}]', "[0].bytes"),
        ("summary.json", '{"summary_id": "s1", "generated_at": "2026-11-02T11:01:00Z", "text": "\\ud800"}', "text"),
        ("summary.json", "[" * 100_000 + "]" * 100_000, "<file>"),
        ("summary.json", '{"summary_id": ' + "[" * 70 + "]" * 70 + "}", "<file>"),
    ],
    ids=["nan", "infinity", "lone_surrogate", "deep_nesting", "nesting_over_64"],
)
def test_non_strict_json_is_one_quarantined_unit_naming_file_and_field(world, name, content, field):
    raw, out, settings = world
    folder = good_meeting(raw, "m_1")
    (folder / name).write_text(content)
    outcome = run_day(settings, DAY, AS_OF, clock=utc_now)
    assert outcome.published
    error = quarantine(out)[f"meetings/dt={DAY}/m_1/{name}"]
    assert f"field '{field}'" in error
    assert "\\ud800" not in output_text(out)


def test_a_lone_surrogate_in_a_chat_line_names_the_line_and_field(world):
    raw, out, settings = world
    good_meeting(raw, "m_2", chat=[chat_line("c1", "p_1"), '{"message_id": "c2", "text": "\\udc00"}'])
    run_day(settings, DAY, AS_OF, clock=utc_now)
    assert quarantine(out)[f"meetings/dt={DAY}/m_2/chat.jsonl:2"] == "field 'text': lone surrogate in a string"


# --- timestamp range -------------------------------------------------------------------------------


def test_a_sent_at_in_year_9999_is_quarantined_not_a_crash(world):
    raw, out, settings = world
    late = {**chat_line("c3", "p_1"), "sent_at": "9999-12-31T23:59:59Z"}
    good_meeting(raw, "m_0", chat=[chat_line("c1", "p_1"), late])
    run_day(settings, DAY, AS_OF, clock=utc_now)
    error = quarantine(out)[f"meetings/dt={DAY}/m_0/chat.jsonl:2"]
    assert "field 'sent_at': timestamp outside 1900-01-01..2200-01-01 UTC" in error
    assert "m_0/chat/c3" not in published_ids(out)


def test_a_cue_two_million_hours_in_is_quarantined_not_published_in_2254(world):
    raw, out, settings = world
    transcript = "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nAda Lovelace: hello\n\n"
    transcript += "2000000:00:00.000 --> 2000000:00:01.000\nAda Lovelace: far away\n\n"
    good_meeting(raw, "m_0", transcript=transcript)
    run_day(settings, DAY, AS_OF, clock=utc_now)
    assert "starts outside the meeting" in quarantine(out)[f"meetings/dt={DAY}/m_0/transcript.vtt#2"]
    captured = pq.read_table(out / f"content/dt={DAY}").column("captured_at").to_pylist()
    assert max(captured).year == 2026


# --- item 4: telemetry group-key allow-lists -------------------------------------------------------


def test_an_email_in_a_group_key_is_published_as_other_and_never_appears(world):
    raw, out, settings = world
    events = [
        telemetry_event(1000 + n, user_id=f"u_{n}", platform=EMAIL, client_version="6.3.0; " + EMAIL) for n in range(12)
    ]
    write_telemetry(raw, events, "part-0002.jsonl.gz")
    outcome = run_day(settings, DAY, AS_OF, clock=utc_now)
    groups = pq.read_table(out / f"aggregates/dt={DAY}").to_pylist()
    assert {"platform": "other", "client_version": "other", "event_count": 12} in [
        {k: g[k] for k in ("platform", "client_version", "event_count")} for g in groups
    ]
    assert EMAIL not in output_text(out) and "contoso" not in output_text(out)
    assert outcome.manifest["policy"]["telemetry_platforms"]


def test_the_shipped_policy_lists_the_spec_values_and_is_a_new_version():
    from consent_gate.config import load_policy

    policy = load_policy()
    assert policy.version != "2026-11-2"
    assert {"join", "leave", "quality_sample"} <= set(policy.telemetry_event_types)
    assert {"mac", "win", "linux", "web", "ios", "android"} <= set(policy.telemetry_platforms)
    assert {"us", "eu", "ap", "ca", "sa", "me", "af", "au"} <= set(policy.telemetry_regions)


# --- item 11: duplicate telemetry deliveries -------------------------------------------------------


def test_telemetry_delivered_twice_is_counted_once_and_conflicts_are_quarantined(world):
    raw, out, settings = world
    first = [telemetry_event(n) for n in range(30)]
    redelivered = [dict(e, ingested_by="relay-2") for e in first[:10]]  # keys the gate never reads may differ
    conflicting = dict(first[20], platform="ios")
    write_telemetry(raw, redelivered + [conflicting], "part-0002.jsonl.gz")
    outcome = run_day(settings, DAY, AS_OF, clock=utc_now)
    telemetry = outcome.manifest["counts"]["telemetry"]
    assert telemetry["duplicate"] == 10
    assert telemetry["quarantined"] == 2  # both deliveries of ev_20
    assert telemetry["aggregated"] == 29
    units = [u for u, e in quarantine(out).items() if "delivered more than once" in e]
    assert sorted(units) == [f"telemetry/dt={DAY}/part-0001.jsonl.gz:21", f"telemetry/dt={DAY}/part-0002.jsonl.gz:11"]


# --- item 6: participants [] -----------------------------------------------------------------------


def test_a_meeting_without_participants_is_quarantined_and_its_summary_never_published(world):
    raw, out, settings = world
    write_meeting(raw, meeting_record("m_0", "acct_1", []),
                  summary={"summary_id": "s1", "generated_at": ts(at(61)), "text": "the whole meeting"})  # fmt: skip
    run_day(settings, DAY, AS_OF, clock=utc_now)
    assert "field 'participants': empty" in quarantine(out)[f"meetings/dt={DAY}/m_0"]
    assert not any(a.startswith("m_0/") for a in published_ids(out))


# --- item 7: symlinks ------------------------------------------------------------------------------


def test_links_are_never_followed_and_each_is_a_quarantined_unit(world, tmp_path):
    raw, out, settings = world
    outside = tmp_path / "outside.vtt"
    outside.write_text(vtt((1, "Ada Lovelace: the password is swordfish")))
    folder = raw / f"meetings/dt={DAY}"
    (folder / "m_0/transcript.vtt").unlink()
    (folder / "m_0/transcript.vtt").symlink_to(outside)
    (folder / "m_1/chat.jsonl").unlink()
    (folder / "m_1/chat.jsonl").symlink_to(folder / "m_1/chat.jsonl")  # a loop
    (folder / "m_2/transcript.vtt").unlink()
    (folder / "m_2/transcript.vtt").mkdir()  # a folder named like the file
    elsewhere = good_meeting(tmp_path / "elsewhere", "m_9")
    (folder / "m_9").symlink_to(elsewhere)  # a linked meeting folder
    outcome = run_day(settings, DAY, AS_OF, clock=utc_now)
    errors = quarantine(out)
    assert "symbolic link" in errors[f"meetings/dt={DAY}/m_0/transcript.vtt"]
    assert "symbolic link" in errors[f"meetings/dt={DAY}/m_1/chat.jsonl"]
    assert "not a regular file" in errors[f"meetings/dt={DAY}/m_2/transcript.vtt"]
    assert "symbolic link" in errors[f"meetings/dt={DAY}/m_9"]
    assert not any(a.startswith("m_9/") for a in published_ids(out))
    assert "swordfish" not in output_text(out)
    assert outcome.manifest["counts"]["quarantined"] == 4


def test_a_linked_telemetry_file_is_not_read_and_fails_the_day(world, tmp_path):
    raw, out, settings = world
    outside = write_telemetry(tmp_path / "other", [telemetry_event(n) for n in range(5)])
    (raw / f"telemetry/dt={DAY}/part-0009.jsonl.gz").symlink_to(outside)
    with pytest.raises(GateCheckFailed, match="telemetry_files_complete"):
        run_day(settings, DAY, AS_OF, clock=utc_now)
    assert not (out / f"content/dt={DAY}").exists() and leftovers(out) == []


# --- item 8: invalid names are hashed --------------------------------------------------------------


def test_a_folder_named_like_an_email_is_quarantined_by_its_hash_only(world):
    raw, out, settings = world
    good_meeting(raw, "m_x")
    (raw / f"meetings/dt={DAY}/m_x").rename(raw / f"meetings/dt={DAY}/{EMAIL}")
    (raw / f"meetings/dt={DAY}/{EMAIL}/meeting.json").write_text(json.dumps(meeting_record(EMAIL, "acct_1", people())))
    (raw / f"meetings/dt={DAY}/m_0" / f"notes-{EMAIL}.txt").write_text("a file named like its owner")
    run_day(settings, DAY, AS_OF, clock=utc_now)
    digests = [hashlib.sha256(name.encode()).hexdigest() for name in (EMAIL, f"notes-{EMAIL}.txt")]
    for digest in digests:
        [(unit, error)] = [(u, e) for u, e in quarantine(out).items() if digest in u]
        assert "[A-Za-z0-9._-]{1,128}" in error
    text = output_text(out)
    assert EMAIL not in text and "olga" not in text and "contoso" not in text
    assert (out / f"_audit/dt={DAY}/report.html").exists()


# --- item 9: nothing arrived; a shrinking rerun -----------------------------------------------------


def test_nothing_arrived_refuses_the_run_and_keeps_the_published_day(world, tmp_path):
    raw, out, settings = world
    run_day(settings, DAY, AS_OF, clock=utc_now)
    before = tree(out)
    empty = RunSettings(**{**settings.__dict__, "raw": str(tmp_path / "no-such-zone")})
    with pytest.raises(RunRefused, match=f"nothing arrived for {DAY}"):
        run_day(empty, DAY, AS_OF, clock=utc_now)
    assert tree(out) == before and leftovers(out) == []


def test_a_rerun_with_less_than_half_the_units_needs_allow_shrink(world):
    raw, out, settings = world
    run_day(settings, DAY, AS_OF, clock=utc_now)
    before = tree(out)
    for n in (1, 2, 3):
        for path in sorted((raw / f"meetings/dt={DAY}/m_{n}").iterdir()):
            path.unlink()
        (raw / f"meetings/dt={DAY}/m_{n}").rmdir()
    (raw / f"telemetry/dt={DAY}/part-0001.jsonl.gz").unlink()
    with pytest.raises(ShrinkRefused, match="--allow-shrink"):
        run_day(settings, DAY, AS_OF, clock=utc_now)
    assert_kept(before, out)
    assert leftovers(out) == []
    outcome = run_day(RunSettings(**{**settings.__dict__, "allow_shrink": True}), DAY, AS_OF, clock=utc_now)
    assert outcome.published and {a.split("/")[0] for a in published_ids(out)} == {"m_0"}


def cli_args(settings: RunSettings, tmp_path: Path) -> list[str]:
    key = tmp_path / "hmac.key"
    key.write_bytes(settings.secret)
    return ["--date", str(DAY), "--as-of", ts(AS_OF), "--raw", settings.raw, "--out", settings.out,
            "--consent-db", settings.consent_db, "--key-file", str(key)]  # fmt: skip


def test_the_cli_says_nothing_arrived_in_one_line_and_exits_non_zero(world, tmp_path, capsys):
    raw, out, settings = world
    args = cli_args(settings, tmp_path)
    args[args.index("--raw") + 1] = str(tmp_path / "typo")
    assert main(["run", *args]) == 1
    err = capsys.readouterr().err
    assert "nothing arrived for 2026-11-02" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2  # the "gating ..." progress line and the one-line error


def test_the_cli_allow_shrink_flag_reaches_the_run(world, tmp_path, capsys):
    raw, out, settings = world
    args = cli_args(settings, tmp_path)
    assert main(["run", *args]) == 0
    for n in (1, 2, 3):
        subprocess.run(["rm", "-r", str(raw / f"meetings/dt={DAY}/m_{n}")], check=True)
    (raw / f"telemetry/dt={DAY}/part-0001.jsonl.gz").unlink()
    assert main(["run", *args]) == 1
    assert "--allow-shrink" in capsys.readouterr().err
    assert main(["run", *args, "--allow-shrink"]) == 0


# --- item 10: a broken telemetry file whose name holds ':' ------------------------------------------


@pytest.mark.parametrize("name", ["part:0002.jsonl.gz", "part-0002.jsonl.gz"], ids=["colon", "valid_name"])
def test_a_truncated_gzip_fails_the_day_whatever_its_name(world, name):
    raw, out, settings = world
    part = write_telemetry(raw, [telemetry_event(1000 + n, user_id=f"u_{n}") for n in range(900)], name)
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(GateCheckFailed, match="telemetry_files_complete"):
        run_day(settings, DAY, AS_OF, clock=utc_now)
    assert not (out / f"content/dt={DAY}").exists() and leftovers(out) == []
    [attempt] = (out / f"_audit/dt={DAY}/attempts").glob("*.json")
    checks = {c["name"]: c for c in json.loads(attempt.read_text())["checks"]}
    assert checks["telemetry_files_complete"]["detail"].startswith("1 telemetry file(s)")
    assert "part:0002" not in output_text(out)  # an invalid name is named by its hash only


# --- one-line errors and cleanup that never crashes -------------------------------------------------


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(world, tmp_path, capsys):
    raw, out, settings = world
    args = cli_args(settings, tmp_path)
    bad_policy = tmp_path / "policy.yaml"
    bad_policy.write_text("version: x\nk_anonymity: 3\n")  # a key the policy does not know
    args += ["--policy", str(bad_policy)]
    assert main(["run", *args]) == 1
    err = capsys.readouterr().err
    assert "consent-gate: run failed:" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="unknown policy keys"):
        main(["run", *args, "--debug"])


@pytest.fixture
def small_disk(tmp_path):
    """A real 32 MiB tmpfs (root only): a disk that fills up, and that can be remounted read-only."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); the full-disk and read-only cases need one")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> None:
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    with open(disk / "filler", "wb") as handle:
        try:
            handle.write(b"\0" * max(0, free - leave))
        except OSError:
            pass


@pytest.mark.parametrize("leave", [0, 24 << 10, 96 << 10])
def test_a_full_disk_fails_the_run_plainly_and_leaves_no_partial_files(world, small_disk, tmp_path, capsys, leave):
    raw, _, settings = world
    out = small_disk / "out"
    settings = RunSettings(**{**settings.__dict__, "out": str(out)})
    run_day(settings, DAY, AS_OF, clock=utc_now)
    before = tree(out)
    _fill(small_disk, leave)
    args = cli_args(settings, tmp_path)
    assert main(["run", *args]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("ENOSPC" in err or "No space" in err or "FAILED" in err)
    (small_disk / "filler").unlink()
    assert_kept(before, out)
    assert leftovers(out) == []  # no stage, no *.tmp-PID
    attempts = {p.name for p in (out / f"_audit/dt={DAY}/attempts").glob("*.json")}
    # Either the failed attempt's evidence was kept, or the error said plainly that it could not be.
    assert len(attempts) == 2 or "could not be written" in err or "nothing published" in err


def test_a_read_only_output_fails_the_run_in_one_line_and_keeps_the_published_day(world, small_disk, tmp_path, capsys):
    raw, _, settings = world
    out = small_disk / "out"
    settings = RunSettings(**{**settings.__dict__, "out": str(out)})
    run_day(settings, DAY, AS_OF, clock=utc_now)
    before = tree(out)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        assert main(["run", *cli_args(settings, tmp_path)]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and "EROFS" in err
        assert len([line for line in err.splitlines() if "failed" in line.lower()]) == 1
        assert_kept(before, out)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
