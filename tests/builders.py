"""Small builders for hand-made landing zones and consent stores: each test states its own data."""

from __future__ import annotations

import gzip
import html
import json
import re
import sqlite3
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from consent_gate.consent import COLUMNS, snapshot_from_rows

DAY = "2026-11-02"
T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def ts(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def at(minutes: float) -> datetime:
    """An instant `minutes` after 10:00 UTC on the test day."""
    return T0 + timedelta(minutes=minutes)


def consent_row(
    event_id: str,
    subject: str,
    decision: str = "grant",
    *,
    subject_type: str | None = None,
    content_type: str = "*",
    effective: datetime | str | None = None,
    recorded: datetime | str | None = None,
    purpose: str | None = "ai_training",
    terms: str | None = "2026-01",
) -> tuple[Any, ...]:
    """A consent_events row; subject_type is guessed from the id prefix (acct_ / u_)."""
    kind = subject_type or ("account" if subject.startswith("acct") else "user")
    effective = effective if effective is not None else at(-24 * 60)
    recorded = recorded if recorded is not None else effective
    as_text = [ts(v) if isinstance(v, datetime) else v for v in (effective, recorded)]
    return (event_id, kind, subject, purpose, content_type, decision, as_text[0], as_text[1], terms)


def snapshot(rows: Sequence[tuple[Any, ...]], as_of: datetime | None = None):
    ordered = sorted(rows, key=lambda r: str(r[0]))
    return snapshot_from_rows(ordered, as_of or at(24 * 60))


def write_consent_db(path: Path | str, rows: Sequence[tuple[Any, ...]]) -> str:
    with sqlite3.connect(path) as connection:
        connection.execute(f"CREATE TABLE IF NOT EXISTS consent_events ({', '.join(c + ' TEXT' for c in COLUMNS)})")
        connection.executemany(f"INSERT INTO consent_events VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    return f"sqlite:///{path}"


def participant(pid: str, user: str | None, account: str | None, name: str | None) -> dict[str, Any]:
    return {
        "participant_id": pid,
        "user_id": user,
        "account_id": account,
        "display_name": name,
        "joined_at": ts(at(0)),
        "left_at": ts(at(60)),
    }


def meeting_record(meeting_id: str, account: str, participants: list[dict[str, Any]], **overrides: Any) -> dict:
    record = {
        "meeting_id": meeting_id,
        "account_id": account,
        "host_user_id": participants[0]["user_id"] if participants else None,
        "topic": "weekly sync",
        "started_at": ts(at(0)),
        "ended_at": ts(at(60)),
        "participants": participants,
    }
    record.update(overrides)
    return record


def vtt(*cues: tuple[float, str]) -> str:
    """WebVTT with cues (start second, text); each cue lasts one second."""
    blocks = ["WEBVTT", ""]
    for start, text in cues:
        blocks += [f"{_clock(start)} --> {_clock(start + 1)}", text, ""]
    return "\n".join(blocks)


def _clock(seconds: float) -> str:
    millis = round(seconds * 1000)
    h, rest = divmod(millis, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def write_meeting(
    raw: Path,
    record: dict[str, Any] | str | None,
    *,
    meeting_id: str | None = None,
    day: str = DAY,
    transcript: str | None = None,
    chat: Sequence[dict[str, Any] | str] | None = None,
    summary: dict[str, Any] | str | None = None,
    recordings: list[dict[str, Any]] | str | None = None,
) -> Path:
    """One meeting folder; strings are written verbatim (for malformed files)."""
    mid = meeting_id or (record["meeting_id"] if isinstance(record, dict) else "m_broken")
    folder = raw / "meetings" / f"dt={day}" / mid
    folder.mkdir(parents=True, exist_ok=True)

    def dump(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    if record is not None:
        (folder / "meeting.json").write_text(dump(record))
    if transcript is not None:
        (folder / "transcript.vtt").write_text(transcript)
    if chat is not None:
        (folder / "chat.jsonl").write_text("\n".join(dump(line) for line in chat) + "\n")
    if summary is not None:
        (folder / "summary.json").write_text(dump(summary))
    if recordings is not None:
        (folder / "recordings.json").write_text(dump(recordings))
    return folder


def chat_line(message_id: str, sender: str, minutes: float = 5, recipient: str = "everyone", text: str = "hi") -> dict:
    return {"message_id": message_id, "sender_participant_id": sender, "sent_at": ts(at(minutes)),
            "recipient": recipient, "text": text}  # fmt: skip


# --- the sample's raw identities and content, for the "nothing leaks" scans -----------------------

IDENTITY_FIELDS = ("user_id", "account_id", "display_name", "email")
TELEMETRY_IDENTITY_FIELDS = ("user_id", "account_id", "email", "ip")


def _meeting_records(sample: Path) -> list[dict[str, Any]]:
    records = []
    for meeting in sorted((sample / "raw/meetings").glob("dt=*/*/meeting.json")):
        try:
            record = json.loads(meeting.read_text())
        except ValueError:
            continue  # the sample's malformed units
        if isinstance(record, dict):
            records.append(record)
    return records


def sample_identities(sample: Path) -> tuple[dict[str, str], set[str]]:
    """Every participant's user_id → account_id (those with both), and every meeting's account_id."""
    users: dict[str, str] = {}
    accounts: set[str] = set()
    for record in _meeting_records(sample):
        accounts.add(record["account_id"])
        for p in record.get("participants") or []:
            if p.get("user_id") and p.get("account_id"):
                users[p["user_id"]] = p["account_id"]
    return users, accounts


def sample_secrets(sample: Path, *, texts: bool = False, min_length: int = 1) -> set[str]:
    """Raw ids, display names, e-mails and IPs of the sample's landing zone (meetings and telemetry),
    plus every chat, summary and cue text with `texts`; strings of at least `min_length` characters."""
    secrets: set[str] = set()
    for record in _meeting_records(sample):
        secrets.add(record["account_id"])
        for p in record.get("participants") or []:
            secrets.update(v for k, v in p.items() if k in IDENTITY_FIELDS and isinstance(v, str) and v)
    for part in (sample / "raw/telemetry").glob("dt=*/*.gz"):
        try:
            for line in gzip.open(part, "rt"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                secrets.update(str(event[k]) for k in TELEMETRY_IDENTITY_FIELDS if event.get(k))
        except (OSError, EOFError, zlib.error):
            continue  # the sample's truncated gzip
    if texts:
        secrets |= _sample_texts(sample)
    return {s for s in secrets if isinstance(s, str) and len(s) >= min_length}


def _sample_texts(sample: Path) -> set[str]:
    found: set[str] = set()
    for meeting in (sample / "raw/meetings").glob("dt=*/*"):
        chat = meeting / "chat.jsonl"
        for line in chat.read_text().splitlines() if chat.exists() else []:
            try:
                found.add(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError):
                pass
        try:
            found.add(json.loads((meeting / "summary.json").read_text())["text"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        transcript = meeting / "transcript.vtt"
        if transcript.exists():
            for cue in re.findall(r"-->[^\n]*\n(.+?)(?:\n\n|\Z)", transcript.read_text(), re.S):
                words = html.unescape(re.sub(r"<[^>]*>", "", cue))  # Teams: `<v Name>words</v>`
                found.update({words.partition(":")[2].strip(), words.strip()})
    return found


# Arrows where a cue identifier would be, and broken arrows, as in the W3C parsing tests' "arrows"
# case (our own text): a browser returns the four cues and drops the two blocks at lines 15 and 17.
ARROWS = (
    "WEBVTT\n\n-->\n00:00:01.000 --> 00:00:02.000\nfirst\na-->b\n00:00:03.000 --> 00:00:04.000\nsecond\n"
    "--> -->\n00:00:05.000 --> 00:00:06.000\nthird\n00:00:07.000 --> 00:00:08.000\nfourth\n\n"
    "00:00:09.000 -x -->\n\n00:00:10.000 - - >-->\n"
)


def manifest(day: str = DAY, **fields: Any) -> dict[str, Any]:
    """A published manifest that conforms to docs/manifest.schema.json, for tests that hand-make evidence;
    `fields` replace top-level fields."""
    sha = "0" * 64
    content = {"meetings": 1, "units_in": 5, "published": 4, "excluded": {"private_message": 1}, "quarantined": 0}
    telemetry = {"lines_read": 0, "aggregated": 0, "suppressed_events": 0, "out_of_partition": 0, "quarantined": 0}
    instant = f"{day}T23:00:00+00:00"
    return {
        "run_id": "test",
        "dag_run_id": None,
        "attempt": "test__abcd1234",
        "partition": day,
        "code_version": "0.1.0",
        "policy": {"version": "builtin-2", "checksum": sha, "k_min_distinct_users": 10},
        "as_of": instant,
        "consent": {"as_of": instant, "checksum": "c", "visible_events": 3},
        "status": "published",
        "inputs": {"files": 2, "listed_in": "inputs.parquet"},
        "counts": {
            "content": content,
            "telemetry": telemetry,
            "units_in": 5,
            "quarantined": 0,
            "quarantine_ratio": 0.0,
        },  # fmt: skip
        "checks": [{"name": "content_reconciles", "passed": True, "detail": "5 = 4 + 1 + 0"}],
        "started_at": instant,
        "ended_at": instant,
        "outputs": [{"path": f"content/dt={day}/part-0000.vabcd1234.parquet", "sha256": sha, "bytes": 10, "rows": 4}],
        "withdrawn_since_as_of": {"pinned_as_of": instant, "as_of": instant, "rows": 0, "excluded": {}},
        **fields,
    }
