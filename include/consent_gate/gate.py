"""The eligibility rule of SPEC §3: which artifacts may train models, and why the others may not.

Decisions are made a batch at a time: the structural reasons (private message, unidentified
speaker, guest) are read off each artifact, then every (artifact, required subject) pair of the
batch is asked of the consent snapshot at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from consent_gate.artifacts import CONTENT_TYPE_OF, Artifact
from consent_gate.consent import CONTENT_TYPES, ConsentSnapshot, subject_key, to_ns
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
    return _flagged_reason(artifact) or ("guest_participant" if _has_guest(artifact) else None)


def _flagged_reason(artifact: Artifact) -> str | None:
    """The structural reasons the artifact itself carries, in SPEC order (a guest is the next)."""
    if artifact.private_message:
        return "private_message"
    if artifact.unidentified_speaker:
        return "unidentified_speaker"
    return None


def _has_guest(artifact: Artifact) -> bool:
    return any(p.is_guest for p in artifact.required_participants)


def _whose_consent(artifact: Artifact) -> tuple[int, ...]:
    """The artifact's meeting and required participants, by identity: a meeting's artifacts need the
    consent of the same few participants, so what derives from them is made once per batch (which
    holds these objects, so no identity is reused while it runs)."""
    return (id(artifact.meeting), *map(id, artifact.required_participants))


def decide(artifacts: Sequence[Artifact], snapshot: ConsentSnapshot) -> list[Decision]:
    """A decision per artifact, in order. The artifacts that need consent are grouped by whose consent
    they need (`_whose_consent`): each group's subjects are listed, checked for a guest and looked up in
    the snapshot once (the recordings of a meeting of thousands need them all), and every (artifact,
    subject) question is asked as arrays."""
    reasons: list[str | None] = []
    group_of: dict[tuple[int, ...], int] = {}
    subjects_of_group: list[list[tuple[str, str]]] = []
    guest_in_group: list[bool] = []
    asking: list[int] = []  # the artifacts without a structural reason, by index
    groups: list[int] = []
    content_types: list[int] = []
    captured: list[int] = []
    for index, artifact in enumerate(artifacts):
        reason = _flagged_reason(artifact)
        if reason is None:
            who = _whose_consent(artifact)
            group = group_of.get(who)
            if group is None:
                group = group_of[who] = len(subjects_of_group)
                subjects_of_group.append(required_subjects(artifact))
                guest_in_group.append(_has_guest(artifact))
            if guest_in_group[group]:
                reason = "guest_participant"
        reasons.append(reason)
        if reason is not None:
            continue
        asking.append(index)
        groups.append(group)
        content_types.append(_CONTENT_TYPE_CODE[artifact.artifact_type])
        captured.append(to_ns(artifact.captured_at))
    subjects = [pair for group_subjects in subjects_of_group for pair in group_subjects]
    codes = snapshot.subject_codes([subject_key(kind, subject_id) for kind, subject_id in subjects])
    is_account = np.array([kind == "account" for kind, _ in subjects], dtype=bool)
    sizes = np.array([len(group_subjects) for group_subjects in subjects_of_group], dtype=np.int64)
    owner, subject, first_question = _questions(sizes, np.array(groups, dtype=np.int64))
    ok, terms = snapshot.consented_codes(
        codes[subject], np.array(content_types, dtype=np.int64)[owner], np.array(captured, dtype=np.int64)[owner]
    )
    account_refused = np.zeros(len(asking), dtype=bool)
    user_refused = np.zeros(len(asking), dtype=bool)
    account_refused[owner[~ok & is_account[subject]]] = True
    user_refused[owner[~ok & ~is_account[subject]]] = True
    term_sets, versions = _terms_of(terms, first_question)
    # Decisions are immutable and few distinct: each made once and shared, by its position in `made`.
    made = [Decision(reason, ()) for reason in REASONS] + [Decision(None, v) for v in versions]
    # A structural reason's code, then each artifact asked (every one without a structural reason) its own.
    outcome = np.array([_REASON_CODE.get(reason, -1) for reason in reasons], dtype=np.int64)
    outcome[np.array(asking, dtype=np.int64)] = np.where(
        account_refused, _ACCOUNT_REFUSED, np.where(user_refused, _USER_REFUSED, len(REASONS) + term_sets)
    )
    return [made[code] for code in outcome.tolist()]


_CONTENT_TYPE_CODE = {kind: CONTENT_TYPES.index(ct) for kind, ct in CONTENT_TYPE_OF.items()}
_REASON_CODE = {reason: code for code, reason in enumerate(REASONS)}
_ACCOUNT_REFUSED, _USER_REFUSED = _REASON_CODE["account_not_consented"], _REASON_CODE["user_not_consented"]


def _questions(sizes: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (artifact, subject) question of a batch, from each artifact's group and the number of
    subjects of each group (laid end to end, in group order): per question the artifact's position and
    the subject's; per artifact the position of its first question (each has one at least: the
    meeting's account)."""
    asked = sizes[groups]
    first_question = np.cumsum(asked) - asked
    first_subject = (np.cumsum(sizes) - sizes)[groups]
    owner = np.repeat(np.arange(len(groups)), asked)
    subject = np.arange(int(asked.sum())) - first_question[owner] + first_subject[owner]
    return owner, subject, first_question


def _terms_of(terms: np.ndarray, first_question: np.ndarray) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """The terms versions each artifact's grants were given under (its questions start at
    `first_question`; None is no version): per artifact a code, and the sorted versions of each code."""
    if not len(first_question):
        return np.zeros(0, dtype=np.int64), []
    version_codes, names = pd.factorize(terms)  # None: -1
    if len(names) > 62:  # more than an int64 holds as a set of bits: one set per artifact, in Python
        bounds = [*first_question.tolist(), len(terms)]
        sets = [tuple(sorted({v for v in terms[a:b] if v is not None})) for a, b in itertools.pairwise(bounds)]
        distinct = list(dict.fromkeys(sets))
        position = {versions: code for code, versions in enumerate(distinct)}
        return np.array([position[versions] for versions in sets], dtype=np.int64), distinct
    bits = np.where(version_codes >= 0, np.left_shift(np.int64(1), np.maximum(version_codes, 0)), 0)
    masks = np.bitwise_or.reduceat(bits, first_question)
    distinct_masks, code = np.unique(masks, return_inverse=True)
    sets = [tuple(sorted(name for bit, name in enumerate(names) if int(mask) >> bit & 1)) for mask in distinct_masks]
    return code.astype(np.int64), sets


def asking_parts(artifacts: list[Artifact], limit: int) -> list[list[Artifact]]:
    """`artifacts` in consecutive parts, each asking the snapshot fewer than `limit` consent questions
    before its last artifact (so one asking more is a part of its own). A recording or a summary needs
    every participant's consent, and its row carries every one's key: the recordings of a meeting of
    thousands, decided at once, held artifacts x participants of both (4,000 of each: 1.9 GB)."""
    asked = np.fromiter((2 * len(a.required_participants) + 1 for a in artifacts), np.int64, len(artifacts))
    if asked.sum() <= limit:  # nearly every batch
        return [artifacts]
    part = (np.cumsum(asked) - asked) // limit  # the part each artifact's first question falls in
    bounds = [0, *(np.flatnonzero(np.diff(part)) + 1).tolist(), len(artifacts)]
    return [artifacts[start:stop] for start, stop in itertools.pairwise(bounds)]


def published_rows(
    artifacts: Sequence[Artifact], decisions: Sequence[Decision], keyer: Keyer, as_of: datetime
) -> pa.Table:
    """The content rows of the eligible artifacts: keyed hashes in place of every raw id. Built as
    columns: what the artifacts of one group (`_whose_consent`) share, their keys, is made once per
    group and each decision's terms once per decision, then taken for every row by its index."""
    ids: list[str] = []
    types: list[str] = []
    captured: list[datetime] = []
    texts: list[str | None] = []
    uris: list[str | None] = []
    sha256s: list[str | None] = []
    group_of: dict[tuple[int, ...], int] = {}
    group_keys: list[tuple[str, list[str], list[str]]] = []  # meeting key, user keys, account keys
    groups: list[int] = []
    terms_of: dict[tuple[str, ...], int] = {}
    terms: list[int] = []
    for artifact, decision in zip(artifacts, decisions, strict=True):
        if not decision.eligible:
            continue
        who = _whose_consent(artifact)
        group = group_of.get(who)
        if group is None:
            group = group_of[who] = len(group_keys)
            subjects = required_subjects(artifact)
            group_keys.append(
                (
                    keyer.meeting(artifact.meeting.meeting_id),
                    sorted({keyer.user(sid) for kind, sid in subjects if kind == "user"}),
                    sorted({keyer.account(sid) for kind, sid in subjects if kind == "account"}),
                )
            )
        groups.append(group)
        terms.append(terms_of.setdefault(decision.terms_versions, len(terms_of)))
        ids.append(artifact.artifact_id)
        types.append(artifact.artifact_type)
        captured.append(artifact.captured_at)
        texts.append(artifact.text)
        uris.append(artifact.media_uri)
        sha256s.append(artifact.media_sha256)
    by_group = pa.array(groups, pa.int32())
    keys = list(zip(*group_keys, strict=True)) or [(), (), ()]
    columns = {
        "artifact_id": ids,
        "artifact_type": types,
        "meeting_key": pa.array(keys[0], CONTENT_SCHEMA.field("meeting_key").type).take(by_group),
        "user_keys": pa.array(keys[1], CONTENT_SCHEMA.field("user_keys").type).take(by_group),
        "account_keys": pa.array(keys[2], CONTENT_SCHEMA.field("account_keys").type).take(by_group),
        "captured_at": captured,
        "text": texts,
        "media_uri": uris,
        "media_sha256": sha256s,
        "terms_versions": pa.array(list(terms_of), CONTENT_SCHEMA.field("terms_versions").type).take(
            pa.array(terms, pa.int32())
        ),
        "consent_as_of": pa.repeat(pa.scalar(as_of, CONTENT_SCHEMA.field("consent_as_of").type), len(ids)),
    }
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
