from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent_gate.artifacts import Artifact, Meeting, Participant
from consent_gate.gate import (
    CONTENT_SCHEMA,
    REASONS,
    asking_parts,
    decide,
    excluded_rows,
    published_rows,
    required_subjects,
)
from consent_gate.keys import Keyer
from tests import reference
from tests.builders import T0, at, consent_row, snapshot

pytestmark = pytest.mark.unit

ADA = Participant("p1", "u_1", "acct_1", "Ada")
BOB = Participant("p2", "u_2", "acct_2", "Bob")  # from another account
GUEST = Participant("p3", None, None, "Guest")
MEETING = Meeting("m_1", "acct_1", T0, (ADA, BOB))


def artifact(kind="chat_message", participants=(ADA,), minutes=5, **flags) -> Artifact:
    return Artifact(f"m_1/{kind}/{minutes}", kind, MEETING, at(minutes), tuple(participants), "u", text="t", **flags)


EVERYONE = [consent_row(f"e{i}", s) for i, s in enumerate(["acct_1", "acct_2", "u_1", "u_2"])]


def reason(a: Artifact, rows) -> str | None:
    return decide([a], snapshot(rows))[0].reason


def test_all_consented_is_eligible_with_terms():
    (decision,) = decide([artifact()], snapshot(EVERYONE))
    assert decision.eligible and decision.terms_versions == ("2026-01",)


@pytest.mark.parametrize(
    ("flags", "participants", "expected"),
    [
        ({"private_message": True, "unidentified_speaker": True}, (GUEST,), "private_message"),
        ({"unidentified_speaker": True}, (GUEST,), "unidentified_speaker"),
        ({}, (ADA, GUEST), "guest_participant"),
    ],
)
def test_structural_reasons_come_first_in_spec_order(flags, participants, expected):
    assert reason(artifact(participants=participants, **flags), []) == expected


def test_account_reason_precedes_user_reason():
    assert reason(artifact(), [consent_row("e1", "u_1")]) == "account_not_consented"
    assert reason(artifact(), [consent_row("e1", "acct_1")]) == "user_not_consented"


def test_the_speakers_own_account_is_required_too():
    rows = [r for r in EVERYONE if r[2] != "acct_2"]
    assert reason(artifact(participants=(BOB,)), rows) == "account_not_consented"
    assert reason(artifact(participants=(ADA,)), rows) is None


def test_summary_needs_every_participant():
    rows = [r for r in EVERYONE if r[2] != "u_2"]
    assert reason(artifact("summary", participants=(ADA, BOB)), rows) == "user_not_consented"
    assert reason(artifact("summary", participants=(ADA, BOB)), EVERYONE) is None


def test_content_type_specific_consent_applies_per_artifact_type():
    rows = [consent_row("e0", "acct_1"), consent_row("e1", "u_1", content_type="transcript")]
    assert reason(artifact("transcript_segment"), rows) is None
    assert reason(artifact("chat_message"), rows) == "user_not_consented"


def test_published_rows_carry_keys_not_ids_and_exact_columns():
    keyer = Keyer(b"k" * 32)
    a = artifact(participants=(BOB,))
    table = published_rows([a], decide([a], snapshot(EVERYONE)), keyer, at(100))
    assert table.schema == CONTENT_SCHEMA
    row = table.to_pylist()[0]
    assert row["user_keys"] == [keyer.user("u_2")]
    assert row["account_keys"] == sorted([keyer.account("acct_1"), keyer.account("acct_2")])
    assert row["meeting_key"] == keyer.meeting("m_1")
    flat = repr(row)
    assert not any(raw in flat for raw in ("u_2", "acct_1", "acct_2", "Bob"))


def test_keys_differ_by_kind_and_secret():
    assert Keyer(b"k" * 32).user("x") != Keyer(b"k" * 32).account("x")
    assert Keyer(b"k" * 32).user("x") != Keyer(b"j" * 32).user("x")


# --- properties over random consent and random artifacts ----------------------------------------

PEOPLE = [ADA, BOB, Participant("p4", "u_4", "acct_1", "Cy"), GUEST]
SUBJECT_IDS = ["acct_1", "acct_2", "u_1", "u_2", "u_4"]
# The same participants in a meeting of another account: a batch mixes meetings.
OTHER_ACCOUNTS_MEETING = Meeting("m_2", "acct_2", T0, MEETING.participants)
hours = st.integers(min_value=-4, max_value=4)


@st.composite
def worlds(draw):
    rows = [
        consent_row(
            f"e{n:02d}",
            draw(st.sampled_from(SUBJECT_IDS)),
            draw(st.sampled_from(["grant", "grant", "revoke"])),
            content_type=draw(st.sampled_from(["*", "*", "chat", "summary", "transcript"])),
            effective=at(draw(hours) * 60),
            terms=draw(st.sampled_from(["2026-01", "2026-01", "2026-02", None])),
        )
        for n in range(draw(st.integers(0, 16)))
    ]
    artifacts = []
    for n in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["chat_message", "transcript_segment", "summary", "recording"]))
        if kind in ("summary", "recording"):
            people = tuple(draw(st.lists(st.sampled_from(PEOPLE), min_size=1, max_size=3, unique=True)))
        else:
            people = (draw(st.sampled_from(PEOPLE)),)
        meeting = draw(st.sampled_from([MEETING, OTHER_ACCOUNTS_MEETING]))
        artifacts.append(
            Artifact(
                f"{meeting.meeting_id}/{kind}/{n}",
                kind,
                meeting,
                at(draw(hours) * 60 + 1),
                people,
                "u",
                text="t",
                private_message=kind == "chat_message" and draw(st.integers(0, 4)) == 0,
            )  # fmt: skip
        )
    as_of = at(draw(st.integers(-4, 8)) * 60)
    return rows, artifacts, as_of


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_no_published_artifact_lacks_consent_of_any_required_subject(world):
    rows, artifacts, as_of = world
    decisions = decide(artifacts, snapshot(rows, as_of))
    for a, d in zip(artifacts, decisions, strict=True):
        all_consented = all(
            reference.consented(rows, as_of, kind, sid, a.content_type, a.captured_at)
            for kind, sid in required_subjects(a)
        )
        if d.eligible:
            assert all_consented and not a.private_message
            assert not any(p.is_guest for p in a.required_participants)
        else:
            assert d.reason in REASONS
            if d.reason in ("account_not_consented", "user_not_consented"):
                assert not all_consented


CONTENT_TYPE = {
    "transcript_segment": "transcript",
    "chat_message": "chat",
    "summary": "summary",
    "recording": "recording",
}


def reference_decision(rows, as_of, a: Artifact) -> tuple[str | None, tuple[str, ...]]:
    """SPEC §3's reason, or the terms versions of the grants that made the artifact eligible, from the
    oracle alone."""
    if a.private_message:
        return "private_message", ()
    if a.unidentified_speaker:
        return "unidentified_speaker", ()
    if any(p.user_id is None or p.account_id is None for p in a.required_participants):
        return "guest_participant", ()
    ct = CONTENT_TYPE[a.artifact_type]
    asked = [("account", a.meeting.account_id)]
    asked += [
        (kind, sid) for p in a.required_participants for kind, sid in (("user", p.user_id), ("account", p.account_id))
    ]
    for wanted, reason in (("account", "account_not_consented"), ("user", "user_not_consented")):
        if not all(
            reference.consented(rows, as_of, kind, sid, ct, a.captured_at) for kind, sid in asked if kind == wanted
        ):
            return reason, ()
    deciding = [reference.deciding_event(rows, as_of, kind, sid, ct, a.captured_at) for kind, sid in asked]
    return None, tuple(sorted({row[8] for row in deciding if row[8] is not None}))


@settings(max_examples=300, deadline=None)
@given(worlds(), st.booleans())
def test_each_decision_is_the_oracles_reason_and_terms(world, shuffled):
    rows, artifacts, as_of = world
    if shuffled:  # a batch mixes meetings and participants in any order
        artifacts = list(reversed(artifacts))
    decisions = decide(artifacts, snapshot(rows, as_of))
    assert [(d.reason, d.terms_versions) for d in decisions] == [reference_decision(rows, as_of, a) for a in artifacts]


def test_terms_versions_are_kept_when_a_batch_has_more_than_a_bit_set_holds():
    people = tuple(Participant(f"p{n}", f"u_{n}", "acct_1", f"P{n}") for n in range(70))
    meeting = Meeting("m_9", "acct_1", T0, people)
    rows = [consent_row("e_acct", "acct_1", terms="account-terms")]
    rows += [consent_row(f"e{n}", f"u_{n}", terms=f"v{n:02d}") for n in range(70)]
    summary = Artifact("m_9/summary/0", "summary", meeting, at(5), people, "u", text="t")
    chat = Artifact("m_9/chat/1", "chat_message", meeting, at(6), (people[5],), "u", text="t")
    # Needs the 64th version seen (the sign bit of an int64) and none after it.
    recording = Artifact("m_9/recording/2", "recording", meeting, at(7), people[:63], "u", media_uri="s3://r")
    decisions = decide([summary, chat, recording], snapshot(rows))
    assert decisions[0].terms_versions == ("account-terms", *(f"v{n:02d}" for n in range(70)))
    assert decisions[1].terms_versions == ("account-terms", "v05")
    assert decisions[2].terms_versions == ("account-terms", *(f"v{n:02d}" for n in range(63)))
    assert [(d.reason, d.terms_versions) for d in decisions] == [
        reference_decision(rows, at(24 * 60), a) for a in (summary, chat, recording)
    ]


@settings(max_examples=150, deadline=None)
@given(worlds())
def test_every_artifact_lands_in_exactly_one_outcome_deterministically(world):
    rows, artifacts, as_of = world
    snap = snapshot(rows, as_of)
    decisions = decide(artifacts, snap)
    keyer = Keyer(b"s" * 32)
    published = published_rows(artifacts, decisions, keyer, as_of)
    excluded = excluded_rows(artifacts, decisions)
    ids = published.column("artifact_id").to_pylist() + excluded.column("artifact_id").to_pylist()
    assert sorted(ids) == sorted(a.artifact_id for a in artifacts)
    again = published_rows(artifacts, decide(artifacts, snapshot(list(reversed(rows)), as_of)), keyer, as_of)
    assert again.equals(published)


@settings(max_examples=150, deadline=None)
@given(worlds())
def test_each_published_row_is_its_artifact_keyed_row_by_row(world):
    rows, artifacts, as_of = world
    # Everybody granted a day before, so that most artifacts of a world are published.
    rows = [*(consent_row(f"a{n}", sid, effective=at(-24 * 60)) for n, sid in enumerate(SUBJECT_IDS)), *rows]
    decisions = decide(artifacts, snapshot(rows, as_of))
    keyer = Keyer(b"k" * 32)
    expected = [
        {
            "artifact_id": a.artifact_id,
            "artifact_type": a.artifact_type,
            "meeting_key": keyer.meeting(a.meeting.meeting_id),
            "user_keys": sorted({keyer.user(p.user_id) for p in a.required_participants}),
            "account_keys": sorted(
                {keyer.account(a.meeting.account_id)} | {keyer.account(p.account_id) for p in a.required_participants}
            ),
            "captured_at": a.captured_at,
            "text": a.text,
            "media_uri": a.media_uri,
            "media_sha256": a.media_sha256,
            "terms_versions": list(d.terms_versions),
            "consent_as_of": as_of,
        }
        for a, d in zip(artifacts, decisions, strict=True)
        if d.eligible
    ]
    assert published_rows(artifacts, decisions, keyer, as_of).equals(
        pa.Table.from_pylist(expected, schema=CONTENT_SCHEMA)
    )


@settings(max_examples=100, deadline=None)
@given(worlds(), st.integers(1, 6))
def test_a_revoked_user_disappears_at_any_later_as_of(world, revoke_after_hours):
    rows, artifacts, as_of = world
    later = as_of + timedelta(hours=revoke_after_hours)
    revoked = [*rows, consent_row("zz", "u_1", "revoke", effective=later, recorded=later)]
    after = {a.artifact_id for a, d in zip(artifacts, decide(artifacts, snapshot(revoked, later)), strict=True)
             if d.eligible}  # fmt: skip
    for a in artifacts:
        if a.artifact_id in after:
            assert ("user", "u_1") not in required_subjects(a)


@given(st.lists(st.integers(0, 30), max_size=40), st.integers(1, 50))
@settings(max_examples=300, deadline=None)
def test_a_batch_is_decided_in_parts_that_each_ask_at_most_about_the_limit(widths, limit):
    people = [Participant(f"p{i}", f"u_{i}", "acct_1", None) for i in range(30)]
    artifacts = [artifact("recording", people[:width], minutes=n) for n, width in enumerate(widths)]
    parts = asking_parts(artifacts, limit)
    assert [a for part in parts for a in part] == artifacts  # every artifact, once, in order
    assert all(parts) or parts == [artifacts]
    asked = [[2 * len(a.required_participants) + 1 for a in part] for part in parts]
    assert all(sum(questions[:-1]) < limit for questions in asked)  # full but for its last artifact
    if sum(map(sum, asked)) <= limit:
        assert parts == [artifacts]
    # decided in parts or at once, the same decisions
    rows = [*EVERYONE, *(consent_row(f"u{i}", f"u_{i}") for i in range(2, 30))]
    assert [d for part in parts for d in decide(part, snapshot(rows))] == decide(artifacts, snapshot(rows))
