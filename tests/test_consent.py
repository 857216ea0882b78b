from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent_gate.consent import GRANT, NONE, REVOKE, ConsentStoreError, subject_key, to_ns
from consent_gate.consent_vector import take_snapshot
from tests import reference
from tests.builders import at, consent_row, snapshot, write_consent_db

pytestmark = pytest.mark.unit


def consented(snap, subject_type, subject_id, ct, t) -> bool:
    ok, _ = snap.consented([subject_key(subject_type, subject_id)], ct, np.array([to_ns(t)]))
    return bool(ok[0])


def state(snap, subject_type, subject_id, ct, t) -> int:
    result, _ = snap.states([subject_key(subject_type, subject_id)], ct, np.array([to_ns(t)]))
    return int(result[0])


def test_no_event_means_no_consent():
    snap = snapshot([consent_row("e1", "u_other")])
    assert state(snap, "user", "u_1", "chat", at(0)) == NONE
    assert not consented(snap, "user", "u_1", "chat", at(0))


def test_grant_before_capture_and_still_held_at_as_of_consents():
    snap = snapshot([consent_row("e1", "u_1", effective=at(-10))])
    assert consented(snap, "user", "u_1", "chat", at(0))


def test_a_later_grant_never_reaches_back():
    snap = snapshot([consent_row("e1", "u_1", effective=at(10))])
    assert not consented(snap, "user", "u_1", "chat", at(0))
    assert consented(snap, "user", "u_1", "chat", at(20))


def test_a_later_revoke_removes_content_captured_before_it():
    snap = snapshot([consent_row("e1", "u_1", effective=at(-10)), consent_row("e2", "u_1", "revoke", effective=at(30))])
    assert state(snap, "user", "u_1", "chat", at(0)) == GRANT
    assert not consented(snap, "user", "u_1", "chat", at(0))


def test_wildcard_and_specific_content_types_interleave_by_time():
    rows = [
        consent_row("e1", "u_1", content_type="*", effective=at(-30)),
        consent_row("e2", "u_1", "revoke", content_type="chat", effective=at(-20)),
    ]
    snap = snapshot(rows)
    assert not consented(snap, "user", "u_1", "chat", at(0))
    assert consented(snap, "user", "u_1", "transcript", at(0))
    regrant = snapshot([*rows, consent_row("e3", "u_1", content_type="*", effective=at(-10))])
    assert consented(regrant, "user", "u_1", "chat", at(0))


def test_same_instant_tie_revoke_wins_over_grant():
    rows = [consent_row("e2", "u_1", effective=at(-5)), consent_row("e1", "u_1", "revoke", effective=at(-5))]
    assert state(snapshot(rows), "user", "u_1", "summary", at(0)) == REVOKE


def test_same_effective_instant_later_record_wins():
    rows = [
        consent_row("e1", "u_1", "revoke", effective=at(-5), recorded=at(-5)),
        consent_row("e2", "u_1", "grant", effective=at(-5), recorded=at(-4)),
    ]
    assert state(snapshot(rows), "user", "u_1", "summary", at(0)) == GRANT


def test_full_tie_is_broken_by_event_id():
    rows = [
        consent_row("e9", "u_1", "grant", effective=at(-5), recorded=at(-5)),
        consent_row("e1", "u_1", "grant", effective=at(-5), recorded=at(-5), terms="old"),
    ]
    _, terms = snapshot(rows).states([subject_key("user", "u_1")], "chat", np.array([to_ns(at(0))]))
    assert terms[0] == "2026-01"  # e9 sorts after e1


def test_events_recorded_after_as_of_are_invisible():
    rows = [
        consent_row("e1", "u_1", effective=at(-60)),
        consent_row("e2", "u_1", "revoke", effective=at(-30), recorded=at(120)),
    ]
    assert consented(snapshot(rows, as_of=at(60)), "user", "u_1", "chat", at(0))
    assert not consented(snapshot(rows, as_of=at(180)), "user", "u_1", "chat", at(0))


def test_a_grant_effective_after_as_of_does_not_hold_at_as_of():
    rows = [consent_row("e1", "u_1", effective=at(-60)), consent_row("e2", "u_1", "revoke", effective=at(-30)),
            consent_row("e3", "u_1", effective=at(200), recorded=at(-1))]  # fmt: skip
    assert not consented(snapshot(rows, as_of=at(100)), "user", "u_1", "chat", at(-45))


def test_other_purposes_are_ignored():
    rows = [consent_row("e1", "u_1", purpose="marketing")]
    assert not consented(snapshot(rows), "user", "u_1", "chat", at(0))


@pytest.mark.parametrize(
    "broken",
    [
        {"effective": "2026-11-01T10:00:00"},  # no offset
        {"decision": "maybe"},
        {"content_type": "video"},
        {"purpose": None},
    ],
)
def test_an_unreadable_row_fails_its_subject_closed_and_is_listed(broken):
    rows = [consent_row("e1", "u_1", effective=at(-60)), consent_row("e2", "u_1", **broken),
            consent_row("e3", "u_2", effective=at(-60))]  # fmt: skip
    snap = snapshot(rows)
    assert not consented(snap, "user", "u_1", "chat", at(0))
    assert consented(snap, "user", "u_2", "chat", at(0))
    assert [r.event_id for r in snap.unreadable] == ["e2"]
    assert "u_1" not in snap.unreadable[0].error


def test_an_unreadable_row_recorded_after_as_of_is_invisible():
    rows = [consent_row("e1", "u_1", effective=at(-60)), consent_row("e2", "u_1", "maybe", recorded=at(500))]
    snap = snapshot(rows, as_of=at(100))
    assert consented(snap, "user", "u_1", "chat", at(0))
    assert snap.unreadable == []


def test_a_row_whose_subject_cannot_be_read_fails_the_run():
    with pytest.raises(ConsentStoreError, match="subject cannot be read"):
        snapshot([consent_row("e1", "u_1", subject_type="team", decision="maybe")])


def test_duplicate_event_ids_fail_both_subjects_closed():
    snap = snapshot([consent_row("e1", "u_1"), consent_row("e1", "u_2"), consent_row("e2", "u_3")])
    assert not consented(snap, "user", "u_1", "chat", at(0))
    assert not consented(snap, "user", "u_2", "chat", at(0))
    assert consented(snap, "user", "u_3", "chat", at(0))


def test_checksum_covers_visible_rows_only_and_ignores_order():
    rows = [consent_row("e1", "u_1"), consent_row("e2", "u_2"), consent_row("e3", "u_3", recorded=at(500))]
    a = snapshot(rows, as_of=at(100))
    b = snapshot(list(reversed(rows)), as_of=at(100))
    assert a.checksum == b.checksum and a.visible_events == 2
    assert snapshot(rows, as_of=at(600)).checksum != a.checksum
    changed = [consent_row("e1", "u_1", "revoke"), *rows[1:]]
    assert snapshot(changed, as_of=at(100)).checksum != a.checksum


def test_snapshot_reads_the_sqlite_store(tmp_path):
    url = write_consent_db(tmp_path / "c.db", [consent_row("e1", "u_1", effective=at(-5)),
                                               consent_row("e2", "acct_1", content_type="chat")])  # fmt: skip
    snap = take_snapshot(url, at(100))
    assert snap.visible_events == 2
    assert consented(snap, "account", "acct_1", "chat", at(0))
    assert not consented(snap, "account", "acct_1", "summary", at(0))


# --- property: the indexed snapshot answers exactly what SPEC §3 says ---------------------------

SUBJECTS = [("user", "u_1"), ("user", "u_2"), ("account", "acct_1")]
instants = st.integers(min_value=-6, max_value=6).map(lambda h: at(h * 60))


@st.composite
def consent_rows(draw):
    rows = []
    for n in range(draw(st.integers(0, 14))):
        subject_type, subject_id = draw(st.sampled_from(SUBJECTS))
        effective = draw(instants)
        late = draw(st.sampled_from([0, 0, 1, 3, 9]))
        row = consent_row(
            f"e{n:02d}" if n == 0 or draw(st.integers(0, 9)) else f"e{n - 1:02d}",  # some duplicate ids
            subject_id,
            draw(st.sampled_from(["grant", "grant", "revoke"])),
            subject_type=subject_type,
            content_type=draw(st.sampled_from(["*", "*", "chat", "transcript"])),
            effective=effective,
            recorded=effective + timedelta(hours=late),
            purpose=draw(st.sampled_from(["ai_training"] * 6 + ["marketing"])),
        )
        if draw(st.integers(0, 19)) == 0:
            row = (*row[:5], "maybe", *row[6:])  # an unreadable decision
        rows.append(row)
    return rows


@settings(max_examples=300, deadline=None)
@given(rows=consent_rows(), as_of=instants, capture=instants, ct=st.sampled_from(["chat", "transcript", "summary"]))
def test_snapshot_matches_the_literal_rule(rows, as_of, capture, ct):
    snap = snapshot(rows, as_of=as_of)
    for subject_type, subject_id in SUBJECTS:
        expected = reference.consented(rows, as_of, subject_type, subject_id, ct, capture)
        assert consented(snap, subject_type, subject_id, ct, capture) == expected


@settings(max_examples=200, deadline=None)
@given(rows=consent_rows(), grant_at=instants, capture=instants)
def test_a_grant_never_reaches_back(rows, grant_at, capture):
    rows = [r for r in rows if r[2] != "u_9"] + [consent_row("z1", "u_9", effective=grant_at)]
    snap = snapshot(rows, as_of=at(24 * 60))
    if capture < grant_at:
        assert not consented(snap, "user", "u_9", "chat", capture)
    else:
        assert consented(snap, "user", "u_9", "chat", capture)


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 2),
        max_value=datetime(2199, 12, 31),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]),
    )
)
def test_to_ns_is_pandas_nanoseconds_exactly(instant):
    import pandas as pd

    assert to_ns(instant) == pd.Timestamp(instant).as_unit("ns").value
