"""What a meeting's files hold: its metadata, and the artifacts parsed from its transcript, chat,
summary and recording files (SPEC §2). Pure: bytes in, artifacts and quarantined units out; reading
the files from the landing zone is `sources`."""

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from consent_gate import webvtt_reader
from consent_gate.records import (
    MalformedRecord,
    Quarantined,
    load_json,
    optional_str,
    parse_timestamp,
    require_object,
    require_str,
)
from consent_gate.speakers import attribute, speakers_by_name

ARTIFACT_TYPES = ("transcript_segment", "chat_message", "summary", "recording")
CONTENT_TYPE_OF = {
    "transcript_segment": "transcript",
    "chat_message": "chat",
    "summary": "summary",
    "recording": "recording",
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Participant:
    participant_id: str
    user_id: str | None
    account_id: str | None
    display_name: str | None

    @property
    def is_guest(self) -> bool:
        """A guest has no user or no account, so nobody can consent for them."""
        return self.user_id is None or self.account_id is None


@dataclass(frozen=True, slots=True)
class Meeting:
    meeting_id: str
    account_id: str
    started_at: datetime
    participants: tuple[Participant, ...]
    ended_at: datetime | None = None  # None only in tests of the gate; a cue needs it (read_transcript)


@dataclass(slots=True)
class Artifact:
    """One unit of customer content, with what the gate needs to decide on it. (`read_transcript` makes
    one per cue with its fields positionally: a new field goes last, with a default.)"""

    artifact_id: str
    artifact_type: str
    meeting: Meeting
    captured_at: datetime
    # Participants whose consent the artifact needs (besides the meeting's account).
    required_participants: tuple[Participant, ...]
    unit: str  # where it came from: file, with ':<line>', '#<cue>' or '[<index>]'
    text: str | None = None
    media_uri: str | None = None
    media_sha256: str | None = None
    private_message: bool = False
    unidentified_speaker: bool = False
    # Transcript segments only, content-free evidence for `explain`: where the speaker's name came
    # from (speakers.VOICE_SPAN or PREFIX) and why nobody was identified (speakers.UNIDENTIFIED_REASONS).
    speaker_source: str | None = None
    unidentified_reason: str | None = None
    invalid_utf8: bool = False  # the transcript had invalid UTF-8, read as U+FFFD (WebVTT decoding)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPE_OF[self.artifact_type]


def parse_meeting(data: bytes, folder_meeting_id: str, day: date) -> Meeting:
    record = require_object(load_json(data), "<file>")
    meeting_id = require_str(record, "meeting_id")
    if meeting_id != folder_meeting_id:
        raise MalformedRecord("meeting_id", "does not match the folder name")
    account_id = require_str(record, "account_id")
    started_at = parse_timestamp(record.get("started_at"), "started_at")
    ended_at = parse_timestamp(record.get("ended_at"), "ended_at")
    if ended_at < started_at:
        raise MalformedRecord("ended_at", "before started_at")
    if started_at.date() != day:
        raise MalformedRecord("started_at", "not on the UTC day of the partition")
    optional_str(record, "host_user_id")
    raw_participants = record.get("participants")
    if not isinstance(raw_participants, list):
        raise MalformedRecord("participants", "missing or not a list")
    if not raw_participants:  # SPEC §2.1 (revised): somebody was there; consent cannot be decided
        raise MalformedRecord("participants", "empty: a meeting has at least one participant")
    participants = tuple(_parse_participant(p, f"participants[{i}]") for i, p in enumerate(raw_participants))
    ids = Counter(p.participant_id for p in participants)
    if any(n > 1 for n in ids.values()):
        raise MalformedRecord("participants", "duplicate participant_id")
    return Meeting(meeting_id, account_id, started_at, participants, ended_at)


def _parse_participant(value: Any, where: str) -> Participant:
    record = require_object(value, where)
    try:
        participant = Participant(
            participant_id=require_str(record, "participant_id"),
            user_id=optional_str(record, "user_id"),
            account_id=optional_str(record, "account_id"),
            display_name=optional_str(record, "display_name"),
        )
        parse_timestamp(record.get("joined_at"), "joined_at")
        if record.get("left_at") is not None:
            parse_timestamp(record.get("left_at"), "left_at")
    except MalformedRecord as error:
        raise MalformedRecord(f"{where}.{error.field}", error.problem) from None
    return participant


def read_transcript(data: bytes, meeting: Meeting, path: str) -> tuple[list[Artifact], list[Quarantined]]:
    """Cues of a WebVTT file (SPEC §2.1, §2.3). A file without the WEBVTT signature is one quarantined
    unit; a block the parser drops is one unit named by its line; a cue outside the meeting is one unit."""
    try:
        return _read_transcript(data, meeting, path)
    except Exception as error:  # noqa: BLE001 - SPEC §2.3: nothing in a transcript may fail the day
        # The property tests find no input that gets here; should one exist, the file is one quarantined
        # unit (fail closed) and the error names its type only (its message could quote the file).
        return [], [Quarantined(path, f"transcript could not be read ({type(error).__name__})")]


def _read_transcript(data: bytes, meeting: Meeting, path: str) -> tuple[list[Artifact], list[Quarantined]]:
    try:
        parsed = webvtt_reader.parse(data)
    except webvtt_reader.NotWebVTT:
        return [], [Quarantined(path, "not a WebVTT file (no WEBVTT signature)")]
    # Invalid UTF-8 is read as a browser reads it: each bad byte sequence becomes U+FFFD in the words,
    # and every cue of the file says so in the speakers evidence (`invalid_utf8`).
    quarantined = [Quarantined(f"{path}:{block.line}", block.problem) for block in parsed.dropped]
    names = speakers_by_name([(p.display_name, p) for p in meeting.participants])
    ended_at = meeting.ended_at or meeting.started_at  # no end known: no cue can be placed (fail closed)
    length_ms = (ended_at - meeting.started_at) // timedelta(milliseconds=1)
    # Made once per file, not per cue: what every cue's artifact shares.
    started_at, replaced = meeting.started_at, parsed.replaced_bytes
    id_prefix, unit_prefix = f"{meeting.meeting_id}/transcript/", f"{path}#"
    artifacts = []
    for n, cue in enumerate(parsed.cues, start=1):
        if not 0 <= cue.start_ms <= length_ms:
            # SPEC §2.1: an HLS offset or another file's clock gives a capture time nobody can check.
            problem = f"cue at line {cue.line} starts outside the meeting's started_at..ended_at"
            quarantined.append(Quarantined(f"{unit_prefix}{n}", problem))
            continue
        speaker, source, reason, words = attribute(cue.text, names)
        # Positional, in the fields' order (keywords cost 0.9 µs a cue, a sixth of attributing it):
        # id, type, meeting, captured_at, required participants, unit, text, media uri and sha256,
        # private message, unidentified speaker, speaker source, unidentified reason, invalid UTF-8.
        artifacts.append(
            Artifact(
                f"{id_prefix}{n}",
                "transcript_segment",
                meeting,
                started_at + timedelta(0, 0, 0, cue.start_ms),  # (days, s, µs, ms): positional is faster
                (speaker,) if speaker is not None else (),
                f"{unit_prefix}{n}",
                words,
                None,
                None,
                False,
                speaker is None,
                source,
                reason,
                replaced,
            )
        )
    return artifacts, quarantined


def read_chat(data: bytes, meeting: Meeting, path: str) -> tuple[list[Artifact], list[Quarantined]]:
    """One artifact per message line; each bad line is one quarantined unit."""
    participants = {p.participant_id: p for p in meeting.participants}
    artifacts: list[Artifact] = []
    quarantined: list[Quarantined] = []
    for number, line in _lines(data):
        try:
            artifacts.append(_parse_chat_line(line, meeting, participants, f"{path}:{number}"))
        except MalformedRecord as error:
            quarantined.append(Quarantined(f"{path}:{number}", str(error)))
    return artifacts, quarantined


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield number, line


def _parse_chat_line(line: bytes, meeting: Meeting, participants: dict[str, Participant], unit: str) -> Artifact:
    record = require_object(load_json(line, "<line>"), "<line>")
    message_id = require_str(record, "message_id")
    sender_id = require_str(record, "sender_participant_id")
    sender = participants.get(sender_id)
    if sender is None:
        raise MalformedRecord("sender_participant_id", "not a participant of the meeting")
    sent_at = parse_timestamp(record.get("sent_at"), "sent_at")
    recipient = require_str(record, "recipient")
    text = record.get("text")
    if not isinstance(text, str):
        raise MalformedRecord("text", "missing or not a string")
    return Artifact(
        artifact_id=f"{meeting.meeting_id}/chat/{message_id}",
        artifact_type="chat_message",
        meeting=meeting,
        captured_at=sent_at,
        required_participants=(sender,),
        unit=unit,
        text=text,
        private_message=recipient != "everyone",
    )


def read_summary(data: bytes, meeting: Meeting, path: str) -> tuple[list[Artifact], list[Quarantined]]:
    try:
        record = require_object(load_json(data), "<file>")
        summary_id = require_str(record, "summary_id")
        generated_at = parse_timestamp(record.get("generated_at"), "generated_at")
        text = record.get("text")
        if not isinstance(text, str):
            raise MalformedRecord("text", "missing or not a string")
    except MalformedRecord as error:
        return [], [Quarantined(path, str(error))]
    artifact = Artifact(
        artifact_id=f"{meeting.meeting_id}/summary/{summary_id}",
        artifact_type="summary",
        meeting=meeting,
        captured_at=generated_at,
        required_participants=meeting.participants,
        unit=path,
        text=text,
    )
    return [artifact], []


def read_recordings(data: bytes, meeting: Meeting, path: str) -> tuple[list[Artifact], list[Quarantined]]:
    try:
        entries = load_json(data)
        if not isinstance(entries, list):
            raise MalformedRecord("<file>", "not a JSON list")
    except MalformedRecord as error:
        return [], [Quarantined(path, str(error))]
    artifacts: list[Artifact] = []
    quarantined: list[Quarantined] = []
    for index, entry in enumerate(entries):
        try:
            artifacts.append(_parse_recording(entry, meeting, f"{path}[{index}]"))
        except MalformedRecord as error:
            quarantined.append(Quarantined(f"{path}[{index}]", str(error)))
    return artifacts, quarantined


def _parse_recording(entry: Any, meeting: Meeting, unit: str) -> Artifact:
    record = require_object(entry, "<entry>")
    recording_id = require_str(record, "recording_id")
    if record.get("kind") not in ("audio", "video"):
        raise MalformedRecord("kind", "not 'audio' or 'video'")
    uri = require_str(record, "uri")
    sha256 = require_str(record, "sha256")
    if not _SHA256.match(sha256):
        raise MalformedRecord("sha256", "not 64 lowercase hex digits")
    size = record.get("bytes")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedRecord("bytes", "not a non-negative integer")
    started_at = parse_timestamp(record.get("started_at"), "started_at")
    return Artifact(
        artifact_id=f"{meeting.meeting_id}/recording/{recording_id}",
        artifact_type="recording",
        meeting=meeting,
        captured_at=started_at,
        required_participants=meeting.participants,
        unit=unit,
        media_uri=uri,
        media_sha256=sha256,
    )
