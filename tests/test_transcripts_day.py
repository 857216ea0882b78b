"""Issue 9's examples as regressions through `run_day`: the published rows, exclusions, quarantine
and speakers evidence of a day holding each of them (SPEC §2.1, §2.3)."""

from __future__ import annotations

from datetime import timedelta

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.explain import explain
from consent_gate.keys import Keyer
from consent_gate.pipeline import run_day
from consent_gate.stores import storage_for
from tests.builders import (
    ARROWS,
    DAY,
    T0,
    at,
    consent_row,
    meeting_record,
    participant,
    write_consent_db,
    write_meeting,
)

pytestmark = pytest.mark.integration

# --- issue 9's examples, through run_day ------------------------------------------------------------

WHY_PEOPLE = [
    participant("p_a", "u_a", "acct_1", "Alice Smith"),
    participant("p_b", "u_b", "acct_1", "Bob Jones"),
    participant("p_t", "u_t", "acct_1", "Tom & Jerry"),
    participant("p_s", "u_s", "acct_1", "AT&T Support"),
]
# Everybody but Bob consented: words published under Alice's consent must be Alice's.
WHY_CONSENT = [consent_row(f"e{i}", s) for i, s in enumerate(["acct_1", "u_a", "u_t", "u_s"])]
TRANSCRIPTS = {
    "m_voice_prefix": "WEBVTT\n\n00:01.000 --> 00:02.000\n<v Bob Jones>Alice Smith: can you share your screen?</v>\n",
    "m_two_lines": "WEBVTT\n\n00:01.000 --> 00:02.000\nAlice Smith: yes\nBob Jones: no, I disagree\n",
    "m_hls": "WEBVTT\n\n1088:42:00.500 --> 1088:42:01.000\nAlice Smith: before the grant\n\n"
    "00:01.000 --> 00:02.000\nAlice Smith: in time\n",
    "m_entities": "WEBVTT\n\n00:01.000 --> 00:02.000\n<v Tom &amp; Jerry>Tom &amp; Jerry here</v>\n\n"
    "00:03.000 --> 00:04.000\nAT&amp;T Support: how can I help\n",
    "m_malformed": "WEBVTT\n\n00:01.000 --> 00:02.000\nAlice Smith: one\n\n"
    "00:03.000 -> 00:04.000\nAlice Smith: lost?\n\n00:05.000 --> 00:06.000\nAlice Smith: three\n",
    "m_youtube": "WEBVTT\nKind: captions\nLanguage: en\n\n00:00:01.000 --> 00:00:02.000 align:start position:0%\n"
    "hello<00:00:01.500><c> world</c>\n \n\n00:00:02.000 --> 00:00:03.000 align:start position:0%\n \nhello world\n",
    "m_arrows": ARROWS,
    "m_teams": "WEBVTT\n\nb7a1-4\n00:00:01.000 --> 00:00:02.000\n<v Alice Smith>Teams words</v>\n",
    "m_overflow": "WEBVTT\n\n9999999999:00:00.000 --> 9999999999:00:01.000\nAlice Smith: overflow\n\n"
    "00:01.000 --> 00:02.000\nAlice Smith: after the overflow\n",
}


@pytest.fixture(scope="module")
def why_day(tmp_path_factory):
    root = tmp_path_factory.mktemp("why")
    raw, out = root / "raw", root / "out"
    for meeting_id, transcript in TRANSCRIPTS.items():
        write_meeting(raw, meeting_record(meeting_id, "acct_1", WHY_PEOPLE), transcript=transcript)
    secret = b"k" * 32
    settings_ = RunSettings(
        raw=str(raw), out=str(out), consent_db=write_consent_db(root / "consent.db", WHY_CONSENT),
        policy=Policy(max_quarantine_ratio=1.0), secret=secret,
    )  # fmt: skip
    outcome = run_day(settings_, T0.date(), at(24 * 60), run_id="why", clock=utc_now)
    content = ds.dataset(out / f"content/dt={DAY}", format="parquet").to_table().to_pylist()
    audit = out / f"_audit/dt={DAY}"
    excluded = {r["artifact_id"]: r["reason"] for r in pq.read_table(audit / "excluded.parquet").to_pylist()}
    quarantine = {r["unit"]: r["error"] for r in pq.read_table(audit / "quarantine.parquet").to_pylist()}
    speakers = {r["artifact_id"]: r for r in pq.read_table(audit / "speakers.parquet").to_pylist()}
    published = {r["artifact_id"]: r for r in content}
    return out, outcome, published, excluded, quarantine, speakers, Keyer(secret)


def _quarantined(quarantine: dict[str, str], meeting_id: str) -> list[str]:
    prefix = f"meetings/dt={DAY}/{meeting_id}/transcript.vtt"
    return sorted(unit.removeprefix(prefix) for unit in quarantine if unit.startswith(prefix))


@pytest.mark.parametrize(
    ("artifact_id", "source"),
    [
        ("m_voice_prefix/transcript/1", "voice_span"),  # <v Bob Jones>Alice Smith: can you share…
        ("m_two_lines/transcript/1", "prefix"),  # Alice Smith: yes / Bob Jones: no, I disagree
    ],
)
def test_why_two_speakers_in_one_cue_are_nobodys(why_day, artifact_id, source):
    _, _, published, excluded, _, speakers, _ = why_day
    assert artifact_id not in published
    assert excluded[artifact_id] == "unidentified_speaker"
    assert (speakers[artifact_id]["speaker_source"], speakers[artifact_id]["unidentified_reason"]) == (
        source,
        "several_speakers",
    )


def test_why_an_hls_offset_is_quarantined_not_dated_weeks_later(why_day):
    _, _, published, _, quarantine, _, _ = why_day
    assert _quarantined(quarantine, "m_hls") == ["#1"]
    assert [a for a in published if a.startswith("m_hls/")] == ["m_hls/transcript/2"]
    assert published["m_hls/transcript/2"]["captured_at"] == T0 + timedelta(seconds=1)


def test_why_character_references_are_decoded_in_names_and_words(why_day):
    _, _, published, _, _, speakers, keyer = why_day
    tom, att = published["m_entities/transcript/1"], published["m_entities/transcript/2"]
    assert tom["text"] == "Tom & Jerry here" and tom["user_keys"] == [keyer.user("u_t")]
    assert att["text"] == "how can I help" and att["user_keys"] == [keyer.user("u_s")]
    assert speakers["m_entities/transcript/1"]["speaker_source"] == "voice_span"


def test_why_a_malformed_cue_block_is_one_quarantined_unit_with_its_line(why_day):
    _, _, published, _, quarantine, _, _ = why_day
    assert _quarantined(quarantine, "m_malformed") == [":6"]
    texts = {a: r["text"] for a, r in published.items() if a.startswith("m_malformed/")}
    assert texts == {"m_malformed/transcript/1": "one", "m_malformed/transcript/2": "three"}


def test_why_youtube_captions_are_read_not_quarantined(why_day):
    _, _, published, excluded, quarantine, speakers, _ = why_day
    assert _quarantined(quarantine, "m_youtube") == []
    assert [excluded[f"m_youtube/transcript/{n}"] for n in (1, 2)] == ["unidentified_speaker"] * 2
    assert {speakers[f"m_youtube/transcript/{n}"]["unidentified_reason"] for n in (1, 2)} == {"no_name"}


def test_why_a_file_of_arrows_like_the_w3c_test_is_read_not_quarantined_whole(why_day):
    _, _, _, excluded, quarantine, _, _ = why_day
    assert [excluded.get(f"m_arrows/transcript/{n}") for n in range(1, 5)] == ["unidentified_speaker"] * 4
    assert _quarantined(quarantine, "m_arrows") == [":15", ":17"]  # only its broken arrows


def test_why_teams_voice_spans_are_attributed(why_day):
    _, _, published, _, _, _, keyer = why_day
    row = published["m_teams/transcript/1"]
    assert row["text"] == "Teams words" and row["user_keys"] == [keyer.user("u_a")]


def test_why_an_overflowing_timestamp_never_fails_the_day(why_day):
    _, outcome, published, _, quarantine, _, _ = why_day
    assert _quarantined(quarantine, "m_overflow") == ["#1"]  # outside the meeting; cue 2 keeps its number
    assert "m_overflow/transcript/1" not in published
    assert published["m_overflow/transcript/2"]["text"] == "after the overflow"
    checks = {c["name"]: c["passed"] for c in outcome.manifest["checks"]}
    assert checks["content_reconciles"] and checks["speakers_evidence_reconciles"]


def test_the_manifest_counts_unidentified_speakers_by_reason(why_day):
    counts = why_day[1].manifest["counts"]["content"]
    # m_voice_prefix and m_two_lines name two speakers; m_youtube's 2 and m_arrows' 4 captions nobody.
    assert counts["unidentified_speakers"] == {"no_name": 6, "no_match": 0, "several_matches": 0, "several_speakers": 2}
    assert counts["excluded"]["unidentified_speaker"] == 8
    report = (why_day[0] / f"_audit/dt={DAY}/report.html").read_text()
    assert '<td>several_speakers</td><td class="n">2</td>' in report


def test_explain_shows_the_speaker_source_and_the_unidentified_reason(why_day):
    out = why_day[0]
    store = storage_for(str(out))
    unidentified = explain(store, T0.date(), "m_voice_prefix/transcript/1").render()
    assert "a voice span" in unidentified and "several_speakers" in unidentified
    assert "Alice" not in unidentified and "screen" not in unidentified  # no names, no words
    published = explain(store, T0.date(), "m_entities/transcript/2").render()
    assert "'Name:' prefix" in published and "unidentified" not in published


def test_speakers_evidence_that_misses_a_segment_fails_the_check(tmp_path):
    from consent_gate.checks import reconciliation_checks
    from consent_gate.steps import aggregate_day, gate_content, snapshot_consent

    write_meeting(tmp_path / "raw", meeting_record("m_teams", "acct_1", WHY_PEOPLE), transcript=TRANSCRIPTS["m_teams"])
    settings_ = RunSettings(
        raw=str(tmp_path / "raw"), out=str(tmp_path / "out"), policy=Policy(max_quarantine_ratio=1.0),
        consent_db=write_consent_db(tmp_path / "consent.db", WHY_CONSENT), secret=b"k" * 32,
    )  # fmt: skip
    stage = snapshot_consent(settings_, T0.date(), at(24 * 60), run_id="speakers", clock=utc_now)
    gate_content(settings_, stage)
    aggregate_day(settings_, stage)
    assert {c.name: c.passed for c in reconciliation_checks(settings_, stage)}["speakers_evidence_reconciles"]
    part = tmp_path / "out" / stage.root / "audit/speakers/part-0000.parquet"
    pq.write_table(pq.read_table(part).slice(0, 0), part)  # the evidence lost its row
    assert not {c.name: c.passed for c in reconciliation_checks(settings_, stage)}["speakers_evidence_reconciles"]
