"""The eligibility rule of SPEC §3: which artifacts may train models, and why the others may not.

Decisions are made a batch at a time: the structural reasons (private message, unidentified
speaker, guest) are read off each artifact, then every (artifact, required subject) pair of the
batch is asked of the consent snapshot at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from consent_gate.artifacts import Artifact
from consent_gate.consent import ConsentSnapshot, subject_key, to_ns
from consent_gate.keys import Keyer

# In the order SPEC §3 applies them: the first that holds is the reason.
REASONS = (
    "private_message",
    "unidentified_speaker",
    "guest_participant",
    "account_not_consented",
    "user_not_consented",
)

CONTENT_SCHEMA = pa.schema(
    [
        ("artifact_id", pa.string()),
        ("artifact_type", pa.string()),
        ("meeting_key", pa.string()),
        ("user_keys", pa.list_(pa.string())),
        ("account_keys", pa.list_(pa.string())),
        ("captured_at", pa.timestamp("us", tz="UTC")),
        ("text", pa.string()),
        ("media_uri", pa.string()),
        ("media_sha256", pa.string()),
        ("terms_versions", pa.list_(pa.string())),
        ("consent_as_of", pa.timestamp("us", tz="UTC")),
    ]
)
EXCLUDED_SCHEMA = pa.schema([("artifact_id", pa.string()), ("artifact_type", pa.string()), ("reason", pa.string())])
# Excluded rows that were eligible when gated and lost consent later: who took them out, against which consent.
WITHDRAWN_SCHEMA = pa.schema(
    [*EXCLUDED_SCHEMA, ("withdrawn_by", pa.string()), ("consent_as_of", pa.timestamp("us", tz="UTC"))]
)
# One row per transcript segment read (published or excluded): where the speaker's name came from and
# why nobody was identified, for `explain`. Content-free: no name, no words.
SPEAKERS_SCHEMA = pa.schema(
    [
        ("artifact_id", pa.string()),
        ("speaker_source", pa.string()),
        ("unidentified_reason", pa.string()),
        ("invalid_utf8", pa.bool_()),
    ]
)


@dataclass(frozen=True, slots=True)
class Decision:
    reason: str | None  # None: eligible
    terms_versions: tuple[str, ...]  # the terms each deciding grant was given under

    @property
    def eligible(self) -> bool:
        return self.reason is None


def required_subjects(artifact: Artifact) -> list[tuple[str, str]]:
    """(subject_type, subject_id) pairs whose consent the artifact needs, without duplicates."""
    subjects = [("account", artifact.meeting.account_id)]
    for participant in artifact.required_participants:
        if participant.user_id is not None:
            subjects.append(("user", participant.user_id))
        if participant.account_id is not None:
            subjects.append(("account", participant.account_id))
    return list(dict.fromkeys(subjects))


def structural_reason(artifact: Artifact) -> str | None:
    """The reasons that hold whatever anybody consented to."""
    if artifact.private_message:
        return "private_message"
    if artifact.unidentified_speaker:
        return "unidentified_speaker"
    if any(p.is_guest for p in artifact.required_participants):
        return "guest_participant"
    return None


def _whose_consent(artifact: Artifact) -> tuple[int, ...]:
    """The artifact's meeting and required participants, by identity: a meeting's artifacts need the
    consent of the same few participants, so what derives from them is made once per batch (which
    holds these objects, so no identity is reused while it runs)."""
    return (id(artifact.meeting), *map(id, artifact.required_participants))


def decide(artifacts: Sequence[Artifact], snapshot: ConsentSnapshot) -> list[Decision]:
    """A decision per artifact, in order."""
    reasons: list[str | None] = [structural_reason(a) for a in artifacts]
    owner: list[int] = []
    subjects: list[str] = []
    is_account: list[bool] = []
    content_types: list[str] = []
    captured: list[int] = []
    keys_of: dict[tuple[int, ...], list[tuple[str, bool]]] = {}  # by _whose_consent
    for index, artifact in enumerate(artifacts):
        if reasons[index] is not None:
            continue
        who = _whose_consent(artifact)
        keys = keys_of.get(who)
        if keys is None:
            keys = keys_of[who] = [(subject_key(t, i), t == "account") for t, i in required_subjects(artifact)]
        captured_ns, content_type = to_ns(artifact.captured_at), artifact.content_type
        for key, account in keys:
            owner.append(index)
            subjects.append(key)
            is_account.append(account)
            content_types.append(content_type)
            captured.append(captured_ns)
    owners = np.array(owner, dtype=np.int64)
    ok, terms = snapshot.consented(subjects, content_types, np.array(captured, dtype=np.int64))
    accounts = np.array(is_account, dtype=bool)
    account_refused = np.zeros(len(artifacts), dtype=bool)
    user_refused = np.zeros(len(artifacts), dtype=bool)
    account_refused[owners[accounts & ~ok]] = True
    user_refused[owners[~accounts & ~ok]] = True
    terms_of: dict[int, set[str]] = {}
    for index, version in zip(owner, terms, strict=True):
        if version is not None:
            terms_of.setdefault(index, set()).add(version)
    # Decisions are immutable and few distinct: each made once and shared.
    made: dict[tuple[str | None, tuple[str, ...]], Decision] = {}
    decisions = []
    for index, (reason, account_no, user_no) in enumerate(
        zip(reasons, account_refused.tolist(), user_refused.tolist(), strict=True)
    ):
        if reason is None and account_no:
            reason = "account_not_consented"
        elif reason is None and user_no:
            reason = "user_not_consented"
        versions = tuple(sorted(terms_of.get(index, ()))) if reason is None else ()
        decision = made.get((reason, versions))
        if decision is None:
            decision = made[reason, versions] = Decision(reason, versions)
        decisions.append(decision)
    return decisions


def published_rows(
    artifacts: Sequence[Artifact], decisions: Sequence[Decision], keyer: Keyer, as_of: datetime
) -> pa.Table:
    """The content rows of the eligible artifacts: keyed hashes in place of every raw id. Built as
    columns in one pass: Arrow converts a list per column faster than a dict per row."""
    names = ("artifact_id", "artifact_type", "meeting_key", "user_keys", "account_keys", "captured_at", "text")
    names += ("media_uri", "media_sha256", "terms_versions")
    columns: dict[str, list[Any]] = {name: [] for name in names}
    (ids, types, meetings, users, accounts, captured, texts, uris, sha256s, terms) = columns.values()
    keys_of: dict[tuple[int, ...], tuple[str, list[str], list[str]]] = {}  # by _whose_consent
    for artifact, decision in zip(artifacts, decisions, strict=True):
        if not decision.eligible:
            continue
        who = _whose_consent(artifact)
        keys = keys_of.get(who)
        if keys is None:
            subjects = required_subjects(artifact)
            keys = keys_of[who] = (
                keyer.meeting(artifact.meeting.meeting_id),
                sorted({keyer.user(sid) for kind, sid in subjects if kind == "user"}),
                sorted({keyer.account(sid) for kind, sid in subjects if kind == "account"}),
            )
        ids.append(artifact.artifact_id)
        types.append(artifact.artifact_type)
        meetings.append(keys[0])
        users.append(keys[1])
        accounts.append(keys[2])
        captured.append(artifact.captured_at)
        texts.append(artifact.text)
        uris.append(artifact.media_uri)
        sha256s.append(artifact.media_sha256)
        terms.append(decision.terms_versions)
    columns["consent_as_of"] = [as_of] * len(ids)
    return pa.table(columns, schema=CONTENT_SCHEMA)


def excluded_rows(artifacts: Sequence[Artifact], decisions: Sequence[Decision]) -> pa.Table:
    """Why each excluded artifact was dropped; no content, no raw ids."""
    dropped = [(a, d) for a, d in zip(artifacts, decisions, strict=True) if not d.eligible]
    columns = {
        "artifact_id": [a.artifact_id for a, _ in dropped],
        "artifact_type": [a.artifact_type for a, _ in dropped],
        "reason": [d.reason for _, d in dropped],
    }
    return pa.table(columns, schema=EXCLUDED_SCHEMA)


def speaker_rows(artifacts: Sequence[Artifact]) -> pa.Table:
    """The speakers evidence of the transcript segments among `artifacts`."""
    segments = [a for a in artifacts if a.artifact_type == "transcript_segment"]
    columns = {
        "artifact_id": [a.artifact_id for a in segments],
        "speaker_source": [a.speaker_source for a in segments],
        "unidentified_reason": [a.unidentified_reason for a in segments],
        "invalid_utf8": [a.invalid_utf8 for a in segments],
    }
    return pa.table(columns, schema=SPEAKERS_SCHEMA)
