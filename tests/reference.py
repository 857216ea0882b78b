"""SPEC §3 written as literally as possible, with no shared code: the oracle for property tests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from consent_gate.records import parse_timestamp

_VALID = {"subject_type": {"account", "user"}, "decision": {"grant", "revoke"},
          "content_type": {"transcript", "chat", "summary", "recording", "*"}}  # fmt: skip


def _readable(row: tuple[Any, ...]) -> bool:
    event_id, subject_type, subject_id, purpose, content_type, decision, effective, recorded, _ = row
    try:
        parse_timestamp(effective, "effective_at")
        parse_timestamp(recorded, "recorded_at")
    except ValueError:
        return False
    return (
        bool(event_id) and bool(subject_id) and purpose is not None
        and subject_type in _VALID["subject_type"] and decision in _VALID["decision"]
        and content_type in _VALID["content_type"]
    )  # fmt: skip


def _visible(rows: list[tuple[Any, ...]], as_of: datetime) -> list[tuple[Any, ...]]:
    visible = []
    for row in rows:
        if row[3] is not None and row[3] != "ai_training":
            continue
        try:
            if parse_timestamp(row[7], "recorded_at") > as_of:
                continue
        except ValueError:
            pass
        visible.append(row)
    return visible


def state(
    rows: list[tuple[Any, ...]], as_of: datetime, subject_type: str, subject_id: str, ct: str, t: datetime
) -> str:
    deciding = deciding_event(rows, as_of, subject_type, subject_id, ct, t)
    return "none" if deciding is None else deciding[5]


def deciding_event(
    rows: list[tuple[Any, ...]], as_of: datetime, subject_type: str, subject_id: str, ct: str, t: datetime
) -> tuple[Any, ...] | None:
    """The row whose decision is the state, or None when the state is none."""
    all_visible = _visible(rows, as_of)
    visible = [r for r in all_visible if r[1] == subject_type and r[2] == subject_id]
    if any(not _readable(r) for r in visible):
        return None  # an unreadable row fails its subject closed for the whole run
    all_ids = [r[0] for r in all_visible]
    if any(all_ids.count(r[0]) > 1 for r in visible):
        return None  # an event id claimed twice cannot be trusted for either claimant
    candidates = [r for r in visible if r[4] in (ct, "*") and parse_timestamp(r[6], "effective_at") <= t]
    if not candidates:
        return None

    def order(r: tuple[Any, ...]) -> tuple[Any, ...]:
        return (parse_timestamp(r[6], "e"), parse_timestamp(r[7], "r"), r[5] == "revoke", r[0])

    return max(candidates, key=order)


def consented(rows, as_of, subject_type, subject_id, ct, t_capture) -> bool:
    return (
        state(rows, as_of, subject_type, subject_id, ct, t_capture) == "grant"
        and state(rows, as_of, subject_type, subject_id, ct, as_of) == "grant"
    )
