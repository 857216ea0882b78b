from __future__ import annotations

import json
from datetime import date, timedelta

import pytest

from consent_gate.sources import LandingZone, read_meeting
from tests.builders import DAY, T0, at, chat_line, meeting_record, participant, ts, vtt, write_meeting

pytestmark = pytest.mark.unit

D = date.fromisoformat(DAY)
PEOPLE = [
    participant("p1", "u_1", "acct_1", "Ada Lovelace"),
    participant("p2", "u_2", "acct_1", "Alan Turing"),
    participant("p3", None, None, "Guest"),
]


def read(raw, meeting_id="m_1"):
    return read_meeting(LandingZone(str(raw)), f"meetings/dt={DAY}/{meeting_id}", D)


def test_transcript_cues_are_attributed_by_exact_display_name(tmp_path):
    transcript = vtt((1.25, "Ada Lovelace: hello\nthere"), (5, "Nobody: hi"), (9, "no prefix at all"),
                     (12, "ada lovelace: case differs"), (14, "Alan Turing:  spaced "))  # fmt: skip
    write_meeting(tmp_path, meeting_record("m_1", "acct_1", PEOPLE), transcript=transcript)
    result = read(tmp_path)
    assert result.quarantine == []
    cues = result.artifacts
    assert [a.artifact_id for a in cues] == [f"m_1/transcript/{n}" for n in range(1, 6)]
    assert cues[0].text == "hello\nthere" and cues[0].required_participants[0].user_id == "u_1"
    assert cues[0].captured_at == T0 + timedelta(seconds=1.25)
    assert [a.unidentified_speaker for a in cues] == [False, True, True, True, False]
    assert cues[4].text == "spaced"
    assert result.units_in == 5


def test_an_ambiguous_display_name_leaves_the_speaker_unidentified(tmp_path):
    twins = [*PEOPLE, participant("p4", "u_4", "acct_1", "Ada Lovelace")]
    write_meeting(tmp_path, meeting_record("m_1", "acct_1", twins), transcript=vtt((1, "Ada Lovelace: hi")))
    (cue,) = read(tmp_path).artifacts
    assert cue.unidentified_speaker and cue.required_participants == ()


def test_a_block_with_a_broken_timing_line_is_one_quarantined_unit_named_by_its_line(tmp_path):
    broken = (
        "WEBVTT\n\n00:00:01.000 -> 00:00:02.000\nAda Lovelace: hi\n\n00:00:03.000 --> 00:00:04.000\nAda Lovelace: x\n"
    )
    write_meeting(tmp_path, meeting_record("m_1", "acct_1", PEOPLE), transcript=broken)
    result = read(tmp_path)
    # SPEC §2.3: n counts the cues the parser returns, so the good cue is cue 1.
    assert [(a.artifact_id, a.text) for a in result.artifacts] == [("m_1/transcript/1", "x")]
    assert [q.unit for q in result.quarantine] == [f"meetings/dt={DAY}/m_1/transcript.vtt:3"]
    assert "timing" in result.quarantine[0].error and result.units_in == 2


def test_a_file_that_is_not_webvtt_is_one_quarantined_unit(tmp_path):
    write_meeting(tmp_path, meeting_record("m_1", "acct_1", PEOPLE), transcript="Ada Lovelace: no header")
    result = read(tmp_path)
    assert len(result.quarantine) == 1 and "WebVTT" in result.quarantine[0].error


def test_chat_lines_become_messages_and_bad_lines_are_quarantined_by_line_and_field(tmp_path):
    no_offset = {**chat_line("c3", "p1"), "sent_at": "2026-11-02T10:05:00"}
    no_recipient = {k: v for k, v in chat_line("c6", "p1").items() if k != "recipient"}
    lines = [
        chat_line("c1", "p1", text="secret words"),
        chat_line("c2", "p2", recipient="p1"),
        '{"message_id": "c4", "sender_participant_id": "p1", "sent',
        no_offset,
        chat_line("c5", "p_stranger"),
        no_recipient,
    ]
    write_meeting(tmp_path, meeting_record("m_1", "acct_1", PEOPLE), chat=lines)
    result = read(tmp_path)
    assert [a.artifact_id for a in result.artifacts] == ["m_1/chat/c1", "m_1/chat/c2"]
    assert [a.private_message for a in result.artifacts] == [False, True]
    path = f"meetings/dt={DAY}/m_1/chat.jsonl"
    errors = {q.unit: q.error for q in result.quarantine}
    assert errors == {
        f"{path}:3": "field '<line>': not valid JSON",
        f"{path}:4": "field 'sent_at': timestamp without a UTC offset",
        f"{path}:5": "field 'sender_participant_id': not a participant of the meeting",
        f"{path}:6": "field 'recipient': missing",
    }
    assert result.units_in == 6
    assert not any("secret" in e or "u_1" in e for e in errors.values())


def test_two_records_with_one_artifact_id_are_both_quarantined(tmp_path):
    lines = [chat_line("c1", "p1"), chat_line("c1", "p2"), chat_line("c2", "p2")]
    write_meeting(tmp_path, meeting_record("m_1", "acct_1", PEOPLE), chat=lines)
    result = read(tmp_path)
    assert [a.artifact_id for a in result.artifacts] == ["m_1/chat/c2"]
    assert sorted(q.unit.rsplit(":", 1)[1] for q in result.quarantine) == ["1", "2"]
    assert all("duplicate artifact_id" in q.error for q in result.quarantine)
    assert result.units_in == 3


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ('{"meeting_id": "m_1", "account_id": "acct_1", "started_at": "2026-11-02T10:0', "not valid JSON"),
        (
            meeting_record("m_1", "acct_1", PEOPLE, started_at="2026-11-02T10:00:00"),
            "field 'started_at': timestamp without a UTC offset",
        ),
        (
            {k: v for k, v in meeting_record("m_1", "acct_1", PEOPLE).items() if k != "account_id"},
            "field 'account_id': missing",
        ),
        (meeting_record("m_1", "acct_1", PEOPLE, started_at=ts(at(-11 * 60))), "not on the UTC day"),
        (meeting_record("m_other", "acct_1", PEOPLE), "does not match the folder name"),
        (meeting_record("m_1", "acct_1", [PEOPLE[0], PEOPLE[0]]), "duplicate participant_id"),
        (
            meeting_record("m_1", "acct_1", [{**PEOPLE[0], "joined_at": "yesterday"}]),
            "field 'participants[0].joined_at'",
        ),
    ],
)
def test_an_unreadable_meeting_json_quarantines_the_whole_folder(tmp_path, record, expected):
    write_meeting(tmp_path, record, meeting_id="m_1", chat=[chat_line("c1", "p1")], transcript=vtt((1, "x: y")))
    result = read(tmp_path)
    assert result.artifacts == []
    (unit,) = result.quarantine
    assert unit.unit == f"meetings/dt={DAY}/m_1" and expected in unit.error
    assert result.units_in == 1


def test_a_folder_without_meeting_json_is_one_quarantined_unit(tmp_path):
    write_meeting(tmp_path, None, meeting_id="m_1", chat=[chat_line("c1", "p1")])
    result = read(tmp_path)
    assert result.artifacts == [] and len(result.quarantine) == 1 and "missing" in result.quarantine[0].error


def test_summary_and_recordings_need_every_participant(tmp_path):
    recordings = [
        {"recording_id": "r1", "kind": "audio", "uri": "s3://media/r1", "sha256": "a" * 64, "bytes": 10,
         "started_at": ts(at(1))},
        {"recording_id": "r2", "kind": "hologram", "uri": "s3://media/r2", "sha256": "b" * 64, "bytes": 10,
         "started_at": ts(at(1))},
    ]  # fmt: skip
    summary = {"summary_id": "s1", "generated_at": ts(at(61)), "text": "they talked"}
    write_meeting(tmp_path, meeting_record("m_1", "acct_1", PEOPLE), summary=summary, recordings=recordings)
    result = read(tmp_path)
    summary_artifact, recording = result.artifacts
    assert summary_artifact.required_participants == recording.required_participants
    assert len(recording.required_participants) == 3
    assert recording.media_sha256 == "a" * 64 and recording.text is None
    assert [(q.unit.rsplit("/", 1)[1], q.error) for q in result.quarantine] == [
        ("recordings.json[1]", "field 'kind': not 'audio' or 'video'")
    ]


def test_a_truncated_summary_is_one_quarantined_unit(tmp_path):
    write_meeting(tmp_path, meeting_record("m_1", "acct_1", PEOPLE), summary='{"summary_id": "s1", "tex')
    result = read(tmp_path)
    assert result.artifacts == [] and result.quarantine[0].unit.endswith("summary.json")
    assert result.units_in == 1


def test_every_file_read_is_listed_with_size_and_hash(tmp_path):
    folder = write_meeting(tmp_path, meeting_record("m_1", "acct_1", PEOPLE), chat=[chat_line("c1", "p1")])
    files = {f.path: f for f in read(tmp_path).files}
    assert set(files) == {f"meetings/dt={DAY}/m_1/meeting.json", f"meetings/dt={DAY}/m_1/chat.jsonl"}
    assert files[f"meetings/dt={DAY}/m_1/chat.jsonl"].size == (folder / "chat.jsonl").stat().st_size


def test_a_file_larger_than_the_limit_is_one_quarantined_unit_and_the_rest_is_read(tmp_path, monkeypatch):
    from consent_gate import sources

    record = meeting_record("m_1", "acct_1", PEOPLE)
    transcript = vtt(*((minute, f"Ada Lovelace: line {minute}") for minute in range(1, 40)))
    write_meeting(tmp_path, record, transcript=transcript, chat=[chat_line("c1", "p1")])
    limit = len(transcript.encode()) - 1  # the transcript is one byte over; meeting.json and chat are under
    monkeypatch.setattr(sources, "MAX_FILE_BYTES", limit)
    result = read(tmp_path)
    assert [(q.unit, q.error) for q in result.quarantine] == [
        (f"meetings/dt={DAY}/m_1/transcript.vtt", sources.TOO_LARGE)
    ]
    assert [a.artifact_type for a in result.artifacts] == ["chat_message"]
    assert result.units_in == 2  # the chat line, and the transcript as one unit
    monkeypatch.setattr(sources, "MAX_FILE_BYTES", len(json.dumps(record)) - 1)  # meeting.json too large
    (whole,) = read(tmp_path).quarantine
    assert whole.unit == f"meetings/dt={DAY}/m_1" and sources.TOO_LARGE in whole.error
