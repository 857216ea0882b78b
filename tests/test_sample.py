"""The sample landing zone: deterministic, shaped like SPEC §2, and carrying every hard case.

The sample is read back here with small, independent parsers (not the gate's), so a test fails if
the generator stops producing a case the gate's own tests rely on, or starts producing bad input
it did not mean to.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import re
import sqlite3
from collections import Counter, defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import webvtt

from consent_gate.sample import (
    CONSENT_EVENTS_COLUMNS,
    DEFAULT_SAMPLE_START,
    SampleSummary,
    create_consent_table,
    write_consent_events,
    write_sample,
)

_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})$")
_TS_NO_OFFSET = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?$")
_MEETING_FIELDS = ("meeting_id", "account_id", "host_user_id", "topic", "started_at", "ended_at", "participants")
_PARTICIPANT_FIELDS = ("participant_id", "user_id", "account_id", "display_name", "joined_at", "left_at")
_CHAT_FIELDS = ("message_id", "sender_participant_id", "sent_at", "recipient", "text")
_TELEMETRY_FIELDS = (
    "event_id", "ts", "account_id", "user_id", "meeting_id", "event_type",
    "client_version", "platform", "region", "duration_ms",
)  # fmt: skip
_MEETING_FILES = {"meeting.json", "transcript.vtt", "chat.jsonl", "summary.json", "recordings.json"}
_DAYS = [DEFAULT_SAMPLE_START + timedelta(days=i) for i in range(3)]


def ts(value: Any) -> datetime | None:
    """An aware UTC datetime, or None when the value is not a timestamp with an offset."""
    if not isinstance(value, str) or not _TS.match(value):
        return None
    text = value.replace("Z", "+00:00")
    head, _, rest = text.partition(".")
    if rest:  # fromisoformat wants at most 6 fraction digits
        digits = re.match(r"\d+", rest)
        assert digits is not None
        text = f"{head}.{digits.group()[:6].ljust(6, '0')}{rest[digits.end() :]}"
    return datetime.fromisoformat(text).astimezone(UTC)


# --- reading the sample back -------------------------------------------------------------------


@dataclass
class Meeting:
    day: date
    folder: Path
    record: dict[str, Any]
    start: datetime
    end: datetime
    cues: list[tuple[int, str]] = field(default_factory=list)  # (start offset ms, text)
    chat: list[dict[str, Any]] = field(default_factory=list)  # valid lines only
    summary: dict[str, Any] | None = None
    recordings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p["display_name"] for p in self.record["participants"]]


@dataclass
class Sample:
    summary: SampleSummary
    meetings: list[Meeting] = field(default_factory=list)
    telemetry: dict[date, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    units: Counter[date] = field(default_factory=Counter)
    bad: Counter[date] = field(default_factory=Counter)
    bad_kinds: Counter[str] = field(default_factory=Counter)
    missing_optional: Counter[str] = field(default_factory=Counter)
    consent: list[dict[str, str]] = field(default_factory=list)
    telemetry_lines: int = 0

    def quarantine(self, day: date, kind: str, units: int = 1) -> None:
        self.units[day] += units
        self.bad[day] += units
        self.bad_kinds[kind] += 1


def _meeting_problem(record: Any, folder: Path, day: date) -> str | None:
    if not isinstance(record, dict):
        return "meeting_not_object"
    if any(name not in record for name in _MEETING_FIELDS) or record["meeting_id"] != folder.name:
        return "meeting_fields"
    start, end = ts(record["started_at"]), ts(record["ended_at"])
    if start is None or end is None or start.date() != day or end <= start:
        return "meeting_times"
    parts = record["participants"]
    if not isinstance(parts, list) or not 2 <= len(parts) <= 8:
        return "meeting_participants"
    for p in parts:
        if not isinstance(p, dict) or any(name not in p for name in _PARTICIPANT_FIELDS):
            return "participant_fields"
        if not isinstance(p["display_name"], str) or not p["display_name"]:
            return "participant_name"
        joined, left = ts(p["joined_at"]), ts(p["left_at"])
        if joined is None or left is None or not start <= joined < left <= end:
            return "participant_times"
    if len({p["participant_id"] for p in parts}) != len(parts):
        return "participant_ids"
    return None


def _read_meeting(sample: Sample, day: date, folder: Path) -> None:
    files = {path.name for path in folder.iterdir()}
    assert files <= _MEETING_FILES, f"unexpected files in {folder}"
    if "meeting.json" not in files:
        sample.quarantine(day, "meeting_missing")
        return
    try:
        record = json.loads((folder / "meeting.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        sample.quarantine(day, "meeting_unreadable")
        return
    problem = _meeting_problem(record, folder, day)
    if problem is not None:
        sample.quarantine(day, problem)
        return
    start, end = ts(record["started_at"]), ts(record["ended_at"])
    assert start is not None and end is not None
    meeting = Meeting(day, folder, record, start, end)
    for name in _MEETING_FILES - files:
        sample.missing_optional[name] += 1
    if "transcript.vtt" in files:
        _read_transcript(sample, meeting)
    if "chat.jsonl" in files:
        _read_chat(sample, meeting)
    if "summary.json" in files:
        _read_summary(sample, meeting)
    if "recordings.json" in files:
        _read_recordings(sample, meeting)
    sample.meetings.append(meeting)


def _read_transcript(sample: Sample, meeting: Meeting) -> None:
    try:
        captions = webvtt.from_string((meeting.folder / "transcript.vtt").read_text(encoding="utf-8"))
    except Exception:  # any parser error makes the whole file one bad unit
        sample.quarantine(meeting.day, "transcript_unreadable")
        return
    # raw_text keeps the voice span (`<v Name>`) of Teams exports; `text` would strip it.
    meeting.cues = [(c.start_time.in_milliseconds(), c.raw_text) for c in captions]
    sample.units[meeting.day] += len(meeting.cues)


def _chat_problem(line: str, participant_ids: set[str]) -> tuple[str, dict[str, Any] | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return "chat_not_json", None
    if not isinstance(record, dict) or any(name not in record for name in _CHAT_FIELDS):
        return "chat_fields", None
    if ts(record["sent_at"]) is None:
        no_offset = isinstance(record["sent_at"], str) and _TS_NO_OFFSET.match(record["sent_at"])
        return ("chat_no_offset" if no_offset else "chat_bad_time"), None
    if record["sender_participant_id"] not in participant_ids:
        return "chat_unknown_sender", None
    if record["recipient"] != "everyone" and record["recipient"] not in participant_ids:
        return "chat_unknown_recipient", None
    return "", record


def _read_chat(sample: Sample, meeting: Meeting) -> None:
    participant_ids = {p["participant_id"] for p in meeting.record["participants"]}
    lines = (meeting.folder / "chat.jsonl").read_text(encoding="utf-8").splitlines()
    sample.units[meeting.day] += len(lines)
    good: list[dict[str, Any]] = []
    for line in lines:
        problem, record = _chat_problem(line, participant_ids)
        if record is None:
            sample.quarantine(meeting.day, problem, units=0)
            sample.bad[meeting.day] += 1
        else:
            good.append(record)
    counts = Counter(record["message_id"] for record in good)
    for count in counts.values():
        if count > 1:  # every copy of a duplicated id is bad
            sample.quarantine(meeting.day, "chat_duplicate_id", units=0)
            sample.bad[meeting.day] += count
    meeting.chat = [record for record in good if counts[record["message_id"]] == 1]


def _read_summary(sample: Sample, meeting: Meeting) -> None:
    try:
        record = json.loads((meeting.folder / "summary.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        sample.quarantine(meeting.day, "summary_unreadable")
        return
    if not isinstance(record, dict) or ts(record.get("generated_at")) is None or not record.get("summary_id"):
        sample.quarantine(meeting.day, "summary_fields")
        return
    sample.units[meeting.day] += 1
    meeting.summary = record


def _read_recordings(sample: Sample, meeting: Meeting) -> None:
    try:
        records = json.loads((meeting.folder / "recordings.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        sample.quarantine(meeting.day, "recordings_unreadable")
        return
    assert isinstance(records, list) and records
    for record in records:
        ok = (
            record.get("kind") in ("audio", "video")
            and str(record.get("uri", "")).startswith("s3://media-bucket/")
            and re.fullmatch(r"[0-9a-f]{64}", str(record.get("sha256", "")))
            and isinstance(record.get("bytes"), int)
            and record["bytes"] > 0
            and ts(record.get("started_at")) is not None
            and record.get("recording_id")
        )
        if ok:
            sample.units[meeting.day] += 1
            meeting.recordings.append(record)
        else:
            sample.quarantine(meeting.day, "recording_fields")


def _read_telemetry(sample: Sample, day: date, path: Path) -> None:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            sample.units[day] += 1
            sample.telemetry_lines += 1
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                sample.quarantine(day, "telemetry_not_json", units=0)
                sample.bad[day] += 1
                continue
            if ts(event.get("ts")) is None:
                no_offset = isinstance(event.get("ts"), str) and _TS_NO_OFFSET.match(event["ts"])
                sample.quarantine(day, "telemetry_no_offset" if no_offset else "telemetry_bad_time", units=0)
                sample.bad[day] += 1
                continue
            if not event.get("event_id") or not event.get("event_type"):
                sample.quarantine(day, "telemetry_fields", units=0)
                sample.bad[day] += 1
                continue
            sample.telemetry[day].append(event)


def _read_sample(summary: SampleSummary) -> Sample:
    sample = Sample(summary)
    for day in summary.days:
        for folder in sorted((summary.raw_dir / "meetings" / f"dt={day}").iterdir()):
            _read_meeting(sample, day, folder)
        for path in sorted((summary.raw_dir / "telemetry" / f"dt={day}").iterdir()):
            _read_telemetry(sample, day, path)
    with closing(sqlite3.connect(summary.consent_db)) as conn:
        conn.row_factory = sqlite3.Row
        sample.consent = [dict(row) for row in conn.execute("SELECT * FROM consent_events")]
    return sample


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    return _read_sample(write_sample(tmp_path_factory.mktemp("sample")))


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# --- determinism, layout, API ----------------------------------------------------------------


@pytest.mark.integration
def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    first = _tree_digest(write_sample(tmp_path / "a", days=2, meetings_per_day=15).raw_dir.parent)
    second = _tree_digest(write_sample(tmp_path / "b", days=2, meetings_per_day=15).raw_dir.parent)
    other = _tree_digest(write_sample(tmp_path / "c", days=2, meetings_per_day=15, seed=8).raw_dir.parent)
    assert "consent.db" in first and any(name.endswith(".jsonl.gz") for name in first)
    assert first == second
    assert first["consent.db"] != other["consent.db"]
    assert set(first) != set(other)  # different meeting ids


@pytest.mark.integration
def test_default_sample_is_deterministic(tmp_path: Path, sample: Sample) -> None:
    again = write_sample(tmp_path / "again")
    assert _tree_digest(again.raw_dir.parent) == _tree_digest(sample.summary.raw_dir.parent)


@pytest.mark.integration
def test_layout_matches_spec(sample: Sample) -> None:
    summary = sample.summary
    out = summary.raw_dir.parent
    assert summary.consent_db == out / "consent.db" and summary.raw_dir == out / "raw"
    assert summary.days == _DAYS
    meeting_folders = 0
    for path in out.rglob("*"):
        rel = path.relative_to(out).as_posix()
        if path.is_dir():
            assert re.fullmatch(r"raw(/(meetings|telemetry)(/dt=\d{4}-\d{2}-\d{2}(/m_[0-9a-f]{16})?)?)?", rel), rel
            meeting_folders += bool(re.fullmatch(r"raw/meetings/dt=[^/]+/m_[0-9a-f]{16}", rel))
        else:
            assert re.fullmatch(
                r"consent\.db|raw/telemetry/dt=[^/]+/part-\d{4}\.jsonl\.gz"
                r"|raw/meetings/dt=[^/]+/m_[0-9a-f]{16}/(meeting\.json|transcript\.vtt|chat\.jsonl"
                r"|summary\.json|recordings\.json)",
                rel,
            ), rel
    dts = sorted(p.name for p in (summary.raw_dir / "meetings").iterdir())
    assert dts == [f"dt={day}" for day in _DAYS]
    assert sorted(p.name for p in (summary.raw_dir / "telemetry").iterdir()) == dts
    assert meeting_folders == summary.meetings == 120
    for day in _DAYS:
        parts = list((summary.raw_dir / "telemetry" / f"dt={day}").iterdir())
        assert 2 <= len(parts) <= 8


@pytest.mark.integration
def test_summary_counts_match_what_is_on_disk(sample: Sample) -> None:
    assert sample.summary.telemetry_events == sample.telemetry_lines
    assert sample.summary.consent_events == len(sample.consent)
    # Roughly 50 events per meeting, as the brief asks.
    assert 35 <= sample.summary.telemetry_events / sample.summary.meetings <= 80


@pytest.mark.integration
def test_a_new_sample_replaces_the_old_one_and_nothing_else(tmp_path: Path) -> None:
    keep = tmp_path / "gate-output" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("not the sample's")
    write_sample(tmp_path, days=2, meetings_per_day=5, seed=1)
    summary = write_sample(tmp_path, start=date(2026, 11, 10), days=1, meetings_per_day=3, seed=2)
    assert keep.read_text() == "not the sample's"
    assert [p.name for p in (summary.raw_dir / "meetings").iterdir()] == ["dt=2026-11-10"]
    assert len(list((summary.raw_dir / "meetings" / "dt=2026-11-10").iterdir())) == 3
    assert summary.consent_events == len(_consent_rows(summary.consent_db))


def _consent_rows(db: Path) -> list[tuple[str, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT * FROM consent_events").fetchall()


@pytest.mark.integration
def test_progress_reports_each_day(tmp_path: Path) -> None:
    messages: list[str] = []
    write_sample(tmp_path, days=2, meetings_per_day=3, progress=messages.append)
    assert any("2026-11-02" in m for m in messages) and any("2026-11-03" in m for m in messages)
    assert any(m.startswith("consent") for m in messages)


@pytest.mark.unit
@pytest.mark.parametrize("kwargs", [{"days": 0}, {"meetings_per_day": -1}])
def test_rejects_nonsense_sizes(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        write_sample(tmp_path, **kwargs)


@pytest.mark.integration
def test_consent_table_helpers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    create_consent_table(url)
    create_consent_table(url)  # IF NOT EXISTS: a second call is harmless
    rows = [(f"e{i:05d}", "user", f"u_{i}", "ai_training", "*", "grant", "t", "t", "2026-06") for i in range(2500)]
    assert write_consent_events(url, iter(rows)) == 2500  # more than one batch, from a generator
    with closing(sqlite3.connect(tmp_path / "c.db")) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(consent_events)")]
        types = {row[2] for row in conn.execute("PRAGMA table_info(consent_events)")}
        pk = [row[1] for row in conn.execute("PRAGMA table_info(consent_events)") if row[5]]
        stored = conn.execute("SELECT * FROM consent_events ORDER BY event_id").fetchall()
    assert tuple(columns) == CONSENT_EVENTS_COLUMNS and types == {"TEXT"} and pk == ["event_id"]
    assert stored == rows
    with pytest.raises(ValueError):
        write_consent_events(url, [("too", "short")])


# --- meetings --------------------------------------------------------------------------------


@pytest.mark.integration
def test_valid_meetings_have_the_spec_fields(sample: Sample) -> None:
    # Every folder is either fully valid or one of the two planted meeting faults.
    assert len(sample.meetings) == 120 - sample.bad_kinds["meeting_missing"] - sample.bad_kinds["meeting_unreadable"]
    ids = re.compile(r"(u|acct)_[0-9a-f]{12}")
    for m in sample.meetings:
        record = m.record
        assert re.fullmatch(r"m_[0-9a-f]{16}", record["meeting_id"])
        assert ids.fullmatch(record["account_id"]) and ids.fullmatch(record["host_user_id"])
        assert record["host_user_id"] in {p["user_id"] for p in record["participants"]}
        assert isinstance(record["topic"], str) and record["topic"]
        for p in record["participants"]:
            assert re.fullmatch(r"p_[0-9a-f]{16}", p["participant_id"])
            assert p["user_id"] is None or ids.fullmatch(p["user_id"])
            assert p["account_id"] is None or ids.fullmatch(p["account_id"])


@pytest.mark.integration
def test_meeting_timestamps_use_several_offsets_and_stay_on_the_utc_day(sample: Sample) -> None:
    suffixes = Counter(m.record["started_at"][19:] for m in sample.meetings)
    assert {"Z", "+02:00", "-05:00"} <= set(suffixes)
    assert suffixes["Z"] > len(sample.meetings) / 2  # mostly Z
    assert all(m.start.date() == m.day for m in sample.meetings)  # checked on the UTC instant
    # ...while the local date written in the string is sometimes another day.
    assert any(m.record["started_at"][:10] != m.day.isoformat() for m in sample.meetings)


@pytest.mark.integration
def test_population_and_participants_are_realistic(sample: Sample) -> None:
    participants = [p for m in sample.meetings for p in m.record["participants"]]
    users = {p["user_id"] for p in participants if p["user_id"]}
    accounts = {p["account_id"] for p in participants if p["account_id"]}
    assert 150 <= len(users) <= 650 and 15 <= len(accounts) <= 30
    names = [p["display_name"] for p in participants if p["user_id"] and p["account_id"]]
    assert all(re.fullmatch(r"\S+( \S+)+", name) for name in names)  # "First Last"
    emails = [p["email"] for p in participants if "email" in p]
    assert len(emails) > 0.8 * len(participants)
    assert all(re.fullmatch(r"[a-z0-9.-]+@[a-z0-9.-]+\.example(\.com)?", e) for e in emails)
    # Mostly colleagues of the host, some from other accounts.
    same = sum(p["account_id"] == m.record["account_id"] for m in sample.meetings for p in m.record["participants"])
    assert 0.5 < same / len(participants) < 0.95


@pytest.mark.integration
def test_guests_are_about_five_percent(sample: Sample) -> None:
    participants = [p for m in sample.meetings for p in m.record["participants"]]
    guests = [p for p in participants if p["user_id"] is None or p["account_id"] is None]
    assert 0.02 <= len(guests) / len(participants) <= 0.09
    assert any(p["user_id"] is None and p["account_id"] is None for p in guests)
    assert any((p["user_id"] is None) != (p["account_id"] is None) for p in guests)


@pytest.mark.integration
def test_some_meetings_have_an_ambiguous_speaker(sample: Sample) -> None:
    ambiguous = [m for m in sample.meetings if any(c > 1 for c in Counter(m.names).values())]
    assert ambiguous
    spoken = [
        m for m in ambiguous
        if any(_claimed(text) in m.names and m.names.count(_claimed(text)) > 1 for _, text in m.cues)
    ]  # fmt: skip
    assert spoken


_VOICE = re.compile(r"^<v(?:\.[^ \t>]*)?[ \t]+([^>]*)>")


def _claimed(text: str) -> str | None:
    """The name a cue gives its speaker: its voice span (Teams) or its `Name:` prefix (Zoom)."""
    voice = _VOICE.match(text)
    if voice:
        return html.unescape(voice.group(1))
    return text.split(":", 1)[0] if ":" in text else None


@pytest.mark.integration
def test_transcripts_have_named_unprefixed_unknown_and_multiline_cues(sample: Sample) -> None:
    with_transcript = [m for m in sample.meetings if m.cues]
    assert with_transcript
    kinds: Counter[str] = Counter()
    for m in with_transcript:
        length_ms = (m.end - m.start).total_seconds() * 1000
        for start_ms, text in m.cues:
            assert 0 <= start_ms < length_ms
            name = _claimed(text)
            if name is None:
                kinds["unprefixed"] += 1
            elif name not in m.names:
                kinds["unknown"] += 1
            else:
                kinds["named"] += 1
            kinds["multiline"] += "\n" in text
    total = sum(kinds[k] for k in ("unprefixed", "unknown", "named"))
    assert kinds["unprefixed"] > 0 and kinds["unknown"] > 0 and kinds["multiline"] > 0
    assert kinds["named"] > 0.85 * total  # most cues are attributable (0.91 with caption-only files)


@pytest.mark.integration
def test_transcripts_come_from_zoom_teams_and_caption_tools(sample: Sample) -> None:
    styles: Counter[str] = Counter()
    for m in sample.meetings:
        if not m.cues:
            continue
        texts = [text for _, text in m.cues]
        if any(_VOICE.match(t) for t in texts):
            styles["teams"] += 1
        elif any(_claimed(t) in m.names for t in texts):
            styles["zoom"] += 1
        else:
            styles["captions"] += 1  # no cue names anybody
    assert styles["teams"] > 0 and styles["zoom"] > 0 and styles["captions"] > 0, styles


@pytest.mark.integration
def test_chat_has_private_messages_within_the_meeting(sample: Sample) -> None:
    messages = [(m, c) for m in sample.meetings for c in m.chat]
    assert messages
    private = [(m, c) for m, c in messages if c["recipient"] != "everyone"]
    assert 0 < len(private) < 0.3 * len(messages)
    for m, c in messages:
        sent = ts(c["sent_at"])
        assert sent is not None and m.start <= sent <= m.end
        assert re.fullmatch(r"msg_[0-9a-f]{16}", c["message_id"])


@pytest.mark.integration
def test_summaries_and_recordings(sample: Sample) -> None:
    summaries = [m.summary for m in sample.meetings if m.summary]
    assert summaries and all(isinstance(s["text"], str) and s["text"] for s in summaries)
    kinds = Counter(r["kind"] for m in sample.meetings for r in m.recordings)
    assert kinds["audio"] > 0 and kinds["video"] > 0
    for m in sample.meetings:
        for r in m.recordings:
            started = ts(r["started_at"])
            assert started is not None and m.start <= started <= m.end


@pytest.mark.integration
def test_every_optional_file_is_sometimes_missing(sample: Sample) -> None:
    for name in ("transcript.vtt", "chat.jsonl", "summary.json", "recordings.json"):
        assert 0 < sample.missing_optional[name] < len(sample.meetings), name


@pytest.mark.integration
def test_content_carries_no_emails_or_raw_ids(sample: Sample) -> None:
    # Content is what gets published: any e-mail or id in it would look like a gate leak.
    pattern = re.compile(r"@|\b(u|acct|p|m)_[0-9a-f]{8,}")
    for m in sample.meetings:
        texts = [text for _, text in m.cues] + [c["text"] for c in m.chat] + [r["uri"] for r in m.recordings]
        texts += [m.summary["text"]] if m.summary else []
        assert not any(pattern.search(t) for t in texts)


# --- malformed input -------------------------------------------------------------------------


_PLANTED = (
    "meeting_missing", "meeting_unreadable", "chat_not_json", "chat_no_offset", "chat_unknown_sender",
    "chat_duplicate_id", "summary_unreadable", "telemetry_not_json", "telemetry_no_offset",
)  # fmt: skip


@pytest.mark.integration
def test_each_malformed_kind_is_planted_and_nothing_else_is_malformed(sample: Sample) -> None:
    for kind in _PLANTED:
        assert 1 <= sample.bad_kinds[kind] <= 2 * len(_DAYS), kind
    assert set(sample.bad_kinds) == set(_PLANTED), sample.bad_kinds


@pytest.mark.integration
def test_malformed_share_stays_under_one_percent_each_day(sample: Sample) -> None:
    for day in _DAYS:
        assert sample.units[day] > 1000
        assert 0 < sample.bad[day] / sample.units[day] < 0.01, (day, sample.bad[day], sample.units[day])


# --- telemetry -------------------------------------------------------------------------------


@pytest.mark.integration
def test_telemetry_events_follow_spec_with_extra_keys(sample: Sample) -> None:
    events = [e for day in _DAYS for e in sample.telemetry[day]]
    spec = set(_TELEMETRY_FIELDS)
    assert all(set(e) >= spec - {"duration_ms", "platform"} for e in events)
    extra = Counter(key for e in events for key in set(e) - spec)
    assert {"email", "ip", "device_id"} <= set(extra)
    assert len({e["event_id"] for e in events}) == len(events)
    durations = Counter("absent" if "duration_ms" not in e else type(e["duration_ms"]).__name__ for e in events)
    assert durations["absent"] and durations["NoneType"] and durations["int"]
    platforms = Counter("missing" if "platform" not in e else e["platform"] or "empty" for e in events)
    assert platforms["missing"] and platforms["empty"]
    offsets = Counter(e["ts"][-6:] if not e["ts"].endswith("Z") else "Z" for e in events)
    assert offsets["Z"] > len(events) / 2 and len(offsets) > 1


@pytest.mark.integration
def test_telemetry_has_out_of_partition_events_on_both_sides(sample: Sample) -> None:
    for day in _DAYS:
        dates = Counter(ts(e["ts"]).date() for e in sample.telemetry[day])  # type: ignore[union-attr]
        assert dates[day] > 0.95 * sum(dates.values())
        assert dates[day - timedelta(days=1)] > 0, day
        assert dates[day + timedelta(days=1)] > 0, day


@pytest.mark.integration
def test_some_telemetry_groups_reach_k_and_some_do_not(sample: Sample) -> None:
    for day in _DAYS:
        users: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for e in sample.telemetry[day]:
            if ts(e["ts"]).date() != day:  # type: ignore[union-attr]
                continue
            key = tuple(e.get(k) or "unknown" for k in ("event_type", "client_version", "platform", "region"))
            users[key] |= {e["user_id"]} if e.get("user_id") else set()
        sizes = [len(v) for v in users.values()]
        assert any(size >= 10 for size in sizes) and any(size < 10 for size in sizes)


# --- consent ---------------------------------------------------------------------------------


_CONTENT_TYPES = {"transcript", "chat", "summary", "recording", "*"}


def _readable(row: dict[str, str]) -> bool:
    return (
        row["decision"] in ("grant", "revoke")
        and row["content_type"] in _CONTENT_TYPES
        and ts(row["effective_at"]) is not None
        and ts(row["recorded_at"]) is not None
    )


@pytest.mark.integration
def test_consent_rows_are_well_formed_and_all_recorded_before_the_20th(sample: Sample) -> None:
    rows = sample.consent
    assert 300 < len(rows) < 3000
    assert len({r["event_id"] for r in rows}) == len(rows)
    cutoff = datetime(2026, 11, 20, tzinfo=UTC)
    for row in rows:
        assert row["subject_type"] in ("account", "user")
        assert re.fullmatch(r"(acct|u)_[0-9a-f]{12}", row["subject_id"])
        assert re.fullmatch(r"20\d\d-(01|06)", row["terms_version"])
        recorded = ts(row["recorded_at"])
        assert recorded is not None and recorded < cutoff
    assert {"2026-01", "2026-06"} <= {r["terms_version"] for r in rows}
    assert Counter(r["purpose"] for r in rows)["ai_training"] > 0.7 * len(rows)
    assert {r["purpose"] for r in rows} - {"ai_training"}


@pytest.mark.integration
def test_consent_has_two_or_three_unreadable_rows_with_readable_subjects(sample: Sample) -> None:
    bad = [r for r in sample.consent if not _readable(r)]
    assert 2 <= len(bad) <= 3
    assert {r["purpose"] for r in bad} == {"ai_training"}  # otherwise ignored, not fail-closed
    assert any(_TS_NO_OFFSET.match(r["effective_at"]) for r in bad)
    assert any(r["decision"] not in ("grant", "revoke") for r in bad)
    assert any(r["content_type"] not in _CONTENT_TYPES for r in bad)


def _ai_rows(sample: Sample) -> list[dict[str, Any]]:
    rows = []
    for r in sample.consent:
        if r["purpose"] == "ai_training" and _readable(r):
            rows.append({**r, "eff": ts(r["effective_at"]), "rec": ts(r["recorded_at"])})
    return rows


@pytest.mark.integration
def test_consent_has_ties_late_records_and_future_grants(sample: Sample) -> None:
    rows = _ai_rows(sample)
    by_instant: dict[tuple[str, str, datetime], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_instant[(r["subject_id"], r["content_type"], r["eff"])].append(r)
    ties = [group for group in by_instant.values() if {r["decision"] for r in group} == {"grant", "revoke"}]
    assert ties
    assert any(len({r["rec"] for r in group}) == 1 for group in ties)  # equal recorded_at too
    assert any(len({r["rec"] for r in group}) > 1 for group in ties)
    window_end = datetime.combine(_DAYS[-1], datetime.min.time(), UTC) + timedelta(days=1)
    assert any(r["rec"] - r["eff"] >= timedelta(days=1) for r in rows)  # recorded late
    future = [r for r in rows if r["decision"] == "grant" and r["eff"] >= window_end]
    assert future and all(r["rec"] < r["eff"] for r in future)


@pytest.mark.integration
def test_consent_covers_the_account_scenarios(sample: Sample) -> None:
    rows = _ai_rows(sample)
    window_start = datetime.combine(_DAYS[0], datetime.min.time(), UTC)
    window_end = window_start + timedelta(days=len(_DAYS))
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        history[r["subject_id"]].append(r)
    accounts = {m.record["account_id"] for m in sample.meetings} | {
        r["subject_id"] for r in sample.consent if r["subject_type"] == "account"
    }

    def decisions(subject: str) -> list[str]:
        return [r["decision"] for r in sorted(history[subject], key=lambda r: (r["eff"], r["rec"]))]

    def in_window(subject: str) -> list[str]:
        return [r["decision"] for r in sorted(history[subject], key=lambda r: r["eff"])
                if window_start <= r["eff"] < window_end]  # fmt: skip

    all_grants = [a for a in accounts if any(r["content_type"] == "*" and r["decision"] == "grant" for r in history[a])]
    assert len(all_grants) > len(accounts) / 2  # most grant *
    assert any("grant" not in decisions(a) for a in accounts)  # a few never grant
    assert any(
        history[a] and {r["content_type"] for r in history[a]} <= _CONTENT_TYPES - {"*"} for a in accounts
    )  # only some content types
    assert any(decisions(a)[:1] == ["grant"] and in_window(a) == ["revoke"] for a in accounts)
    assert any(in_window(a) == ["revoke", "grant"] for a in accounts)
    users = {r["subject_id"] for r in rows if r["subject_type"] == "user"}
    assert len(users) > 300
    assert any(decisions(u)[-2:] == ["revoke", "grant"] for u in users)
    assert any(decisions(u)[-1:] == ["revoke"] for u in users)
