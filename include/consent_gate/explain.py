"""Why was an artifact kept or dropped? Answered from a day's published evidence.

The answer names the outcome, the reason and, for consent reasons, which required subject (by
kind and keyed hash, never raw id) lacked consent at capture or at `as_of`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from consent_gate.consent import GRANT, NONE, ConsentSnapshot, subject_key, to_ns
from consent_gate.consent_vector import take_subject_snapshot
from consent_gate.gate import required_subjects, structural_reason
from consent_gate.keys import Keyer
from consent_gate.layout import audit_day, content_day, manifest_path
from consent_gate.publish import OutputStore
from consent_gate.records import parse_timestamp
from consent_gate.sources import LandingZone, read_meeting

if TYPE_CHECKING:
    from consent_gate.config import RunSettings

_STATE = {GRANT: "grant", 0: "revoke", NONE: "none"}


@dataclass
class Explanation:
    artifact_id: str
    partition: str
    outcome: str  # published | excluded | quarantined | unknown
    reason: str | None = None
    as_of: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    subjects: list[dict[str, str]] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"artifact {self.artifact_id} on {self.partition}: {self.outcome.upper()}"]
        if self.reason:
            lines.append(f"  reason: {self.reason}")
        if self.as_of:
            lines.append(f"  consent as_of: {self.as_of}")
        lines.extend(f"  {k}: {v}" for k, v in self.facts.items())
        for s in self.subjects:
            lines.append(
                f"  required {s['kind']} {s['key'][:16]}…: at capture {s['at_capture']}, at as_of {s['at_as_of']}"
            )
        return "\n".join(lines)


def _find(store: OutputStore, relative: str, artifact_id: str) -> dict[str, Any] | None:
    if not store.exists(relative):
        return None
    dataset = ds.dataset(store.path(relative), filesystem=store.fs, format="parquet")
    table = dataset.to_table(filter=ds.field("artifact_id") == artifact_id)
    return table.to_pylist()[0] if table.num_rows else None


def explain_with_settings(settings: RunSettings, day: date, artifact_id: str, now: datetime) -> Explanation:
    """`explain` against a deployment's output, landing zone and consent store (the command line and the
    auditors' page give the same answer): only the required subjects' consent rows are read."""
    return explain(
        settings.store(), day, artifact_id, zone=settings.zone(),
        consent_at=lambda as_of, ids: take_subject_snapshot(settings.consent_db, as_of, ids, purpose="explain"),
        keyer=Keyer(settings.secret), now=now,
    )  # fmt: skip


def explain(
    store: OutputStore,
    day: date,
    artifact_id: str,
    *,
    zone: LandingZone | None = None,
    consent_at: Callable[[datetime, set[str]], ConsentSnapshot] | None = None,
    keyer: Keyer | None = None,
    now: datetime | None = None,
) -> Explanation:
    """The evidence for one artifact; with the landing zone and the consent store (`consent_at(as_of,
    subject_ids)` gives the snapshot of those subjects), each required subject's state at capture and
    at the deciding `as_of`: the run's, or for a row withdrawn after its gating (a sweep, a later
    publication) the withdrawal's."""
    partition = day.isoformat()
    manifest = manifest_path(partition)
    if not store.exists(manifest):
        return Explanation(artifact_id, partition, "unknown", facts={"evidence": "no published run for this day"})
    manifest = store.read_json(manifest)
    result = Explanation(artifact_id, partition, "unknown", as_of=manifest["as_of"])
    result.facts["run"] = manifest["run_id"]
    row = _find(store, content_day(partition), artifact_id)
    if row is not None:
        result.outcome = "published"
        result.facts["captured_at"] = row["captured_at"].isoformat()
        result.facts["terms_versions"] = ", ".join(row["terms_versions"]) or "-"
    elif (row := _find(store, f"{audit_day(partition)}/excluded.parquet", artifact_id)) is not None:
        result.outcome, result.reason = "excluded", row["reason"]
        withdrawn = _find(store, f"{audit_day(partition)}/withdrawn.parquet", artifact_id)
        if withdrawn is not None:
            result.facts["withdrawn"] = f"eligible when gated, taken out later by the {withdrawn['withdrawn_by']}"
            result.as_of = withdrawn["consent_as_of"].isoformat()
    else:
        meeting_id = artifact_id.split("/", 1)[0]
        with store.open(f"{audit_day(partition)}/quarantine.parquet") as handle:
            units = pq.read_table(handle).to_pylist()
        hits = [u for u in units if f"/{meeting_id}/" in f"{u['unit']}/"]
        if hits:
            result.outcome = "quarantined"
            result.reason = "; ".join(f"{u['unit']}: {u['error']}" for u in hits)
        else:
            result.facts["evidence"] = "not read on this day (no such artifact in the landing zone's partition)"
    if result.outcome in ("published", "excluded"):
        result.facts.update(_speaker_facts(store, partition, artifact_id))
    if (
        zone is not None
        and consent_at is not None
        and keyer is not None
        and result.outcome in ("published", "excluded")
    ):
        deciding = parse_timestamp(result.as_of, "as_of")
        if now is not None and deciding > now:  # evidence of an old run pinned in the future: never evaluated
            result.facts["consent"] = (
                f"as_of {deciding.isoformat()} is later than now: a future consent instant is refused "
                "(future-dated grants would re-admit revoked content); rerun the day"
            )
        else:
            result.subjects = _subject_detail(zone, day, artifact_id, lambda ids: consent_at(deciding, ids), keyer)
    return result


def _speaker_facts(store: OutputStore, partition: str, artifact_id: str) -> dict[str, str]:
    """For a transcript segment: where its speaker's name came from and, if nobody was identified, why."""
    relative = f"{audit_day(partition)}/speakers.parquet"
    if "/transcript/" not in artifact_id or not store.exists(relative):
        return {}  # days published before the speakers evidence existed have none
    row = _find(store, relative, artifact_id)
    if row is None:
        return {}
    facts = {"speaker from": _SOURCE.get(row["speaker_source"], "no name in the cue")}
    if row["unidentified_reason"] is not None:
        facts["unidentified because"] = _UNIDENTIFIED.get(row["unidentified_reason"], row["unidentified_reason"])
    if row["invalid_utf8"]:
        facts["decoding"] = "the transcript had invalid UTF-8, read as U+FFFD"
    return facts


_SOURCE = {"voice_span": "a voice span (<v Name>)", "prefix": "the first line's 'Name:' prefix"}
_UNIDENTIFIED = {
    "no_name": "no_name: the cue names nobody",
    "no_match": "no_match: the name is no participant's display name",
    "several_matches": "several_matches: several participants have that display name",
    "several_speakers": "several_speakers: the cue names more than one speaker",
}


def _subject_detail(
    zone: LandingZone,
    day: date,
    artifact_id: str,
    consent_of: Callable[[set[str]], ConsentSnapshot],
    keyer: Keyer,
) -> list[dict[str, str]]:
    meeting_id = artifact_id.split("/", 1)[0]
    read = read_meeting(zone, f"{zone.meetings_prefix(day)}/{meeting_id}", day)
    artifact = next((a for a in read.artifacts if a.artifact_id == artifact_id), None)
    if artifact is None or structural_reason(artifact) is not None:
        return []
    subjects = required_subjects(artifact)
    snapshot = consent_of({sid for _, sid in subjects})  # only these subjects' rows are read
    keys = [subject_key(kind, sid) for kind, sid in subjects]
    captured = np.full(len(keys), to_ns(artifact.captured_at), dtype=np.int64)
    at_capture, _ = snapshot.states(keys, artifact.content_type, captured)
    at_as_of, _ = snapshot.states(keys, artifact.content_type, np.full(len(keys), to_ns(snapshot.as_of)))
    return [
        {
            "kind": kind,
            "key": keyer.key(kind, sid),
            "at_capture": _STATE[int(c)],
            "at_as_of": _STATE[int(a)],
        }
        for (kind, sid), c, a in zip(subjects, at_capture, at_as_of, strict=True)
    ]
