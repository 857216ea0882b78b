"""What a sweep must read of the consent store: the rows that changed since its watermark and the rows
of the subjects they name, never a pass over the whole store unless a full sweep is due (issue 10).

A sweep judges incrementally when its watermark still describes the store:
- The watermark keeps a fingerprint: how many rows have a recorded_at below the changed-rows bound
  of its `as_of` (`consent_store.count_recorded_before`, counted on the recorded_at index). Every
  other row is read by `read_changed_rows`. A row inserted below the watermark (back-dated) or
  deleted from below it changes the count, and the sweep goes full.
- An UPDATE in place of an old row keeps the count. Consent history is append-only by contract
  (SPEC §2.2); an edit in place is caught by the periodic full sweep (policy
  `full_sweep_every_hours`), and never re-admits content: the gate and re-verification read the
  store itself.

An incremental sweep judges only the subjects named by rows in the changed range, with all of those
subjects' rows and every revocation among them: their consent at `as_of` is what a full read gives.
Every other subject has no row in the changed range and the same rows below it as at the watermark,
so its consent is what it was there, and every row published since was eligible under it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from consent_gate.consent import PURPOSE
from consent_gate.consent_store import (
    changed_bound,
    count_recorded_before,
    observe_reads,
    read_changed_rows,
    read_subject_rows,
)
from consent_gate.keyed_consent import KeyedConsent, WholeStoreConsent, keyed_consent_table, names_a_subject
from consent_gate.keys import Keyer
from consent_gate.records import MalformedRecord, parse_timestamp

# Before any instant a consent row can hold (`read_changed_rows` since then returns every row).
EARLIEST = datetime(1900, 1, 2, tzinfo=UTC)


@dataclass(frozen=True)
class ChangedConsent:
    """The keyed consent of the subjects whose consent may have changed after `since`."""

    consent: KeyedConsent
    rows_read: int
    subjects_judged: int
    unreadable_subjects: int  # changed rows (purpose ai_training or unreadable) naming no readable subject


SubjectsOf = Callable[[], set[str]]  # the keyed subjects of what is about to be judged, read when needed


@dataclass
class SweepScope:
    """What one sweep judges, and the fingerprint its watermark keeps.

    Incremental: `changed`, the consent of the subjects named since the watermark (every other subject's
    consent is what it was when its published rows were gated). Full: `whole_store`, every subject's
    consent on disk; a day or stage is judged by the consent of its own subjects, read from there."""

    since: datetime | None  # the watermark judged from; None: a full sweep
    why: str
    rows_read: int
    subjects_judged: int | None  # None: every subject (a full sweep)
    fingerprint: dict[str, Any]  # {"bound": recorded_at text, "below": rows recorded before it}
    changed: KeyedConsent | None = None
    whole_store: WholeStoreConsent | None = None
    _covering: tuple[set[str], KeyedConsent] | None = None

    @property
    def mode(self) -> str:
        return "full" if self.since is None else "incremental"

    @property
    def only(self) -> set[str] | None:
        """The keyed subjects whose published rows must be re-judged; None: all of them."""
        return None if self.changed is None else self.changed.affected

    def consent_of(self, subjects: SubjectsOf) -> KeyedConsent:
        """The consent to judge rows of `subjects` by. A full scope answers from the whole-store file and
        reuses its last answer while that covers them (one semi-join for every published day)."""
        if self.changed is not None:
            return self.changed
        assert self.whole_store is not None
        wanted = subjects()
        if self._covering is None or not wanted <= self._covering[0]:
            self._covering = (wanted, self.whole_store.consent_for(wanted))
        return self._covering[1]

    @property
    def revocation_count(self) -> int:
        return self.whole_store.revocation_count if self.whole_store is not None else len(self.changed.revocations)

    @property
    def fail_closed_count(self) -> int:
        return self.whole_store.fail_closed_count if self.whole_store is not None else len(self.changed.fail_closed)

    def record(self) -> dict[str, Any]:
        """The sweep record's `consent` section: what was read, no ids."""
        summary = self.whole_store.summary if self.whole_store is not None else None
        return {
            "scope": "whole store" if summary is not None else "changed since the watermark",
            "rows_read": self.rows_read,
            "subjects_judged": self.subjects_judged,
            "checksum": summary.checksum if summary is not None else None,
            "visible_events": summary.visible_events if summary is not None else None,
        }

    def close(self) -> None:
        if self.whole_store is not None:
            self.whole_store.close()

    def __enter__(self) -> SweepScope:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def changed_consent(url: str, keyer: Keyer, since: datetime, as_of: datetime, *, purpose: str) -> ChangedConsent:
    """`keyed_consent_table` at `as_of` over every row of the subjects named by rows that may have changed
    consent after `since` (and the rows sharing their event_ids). Indexed ranges and look-ups only.

    Every revocation of those subjects counts, not only those in force after `since`: a row recorded
    a little before `since` but inserted after the last sweep lies inside the changed range and must
    be judged (rows further below are counted by the fingerprint)."""
    with observe_reads() as reads:
        changed = read_changed_rows(url, since, purpose=f"{purpose}: changed rows")
        named = names_a_subject(changed)
        subject_ids = pc.unique(pc.filter(changed.column("subject_id"), named)).to_pylist()
        rows = read_subject_rows(url, subject_ids, purpose=f"{purpose}: subjects' rows")
        # changed rows the look-ups did not return (naming no subject, sharing no event_id with a subject's
        # row) are judged too: an unreadable one refuses every decision, as it does in a full read
        wanted = pa.array(subject_ids, pa.string())
        their_ids = pc.filter(rows.column("event_id"), pc.fill_null(pc.is_in(rows.column("subject_id"), wanted), False))
        returned = pc.or_(
            pc.fill_null(pc.is_in(changed.column("subject_id"), wanted), False),
            pc.fill_null(pc.is_in(changed.column("event_id"), pc.unique(their_ids)), False),
        )
        judged = pa.concat_tables([rows, changed.filter(pc.invert(returned))])
        consent = keyed_consent_table(judged, keyer, as_of, None)  # see the module's docstring
        training = pc.fill_null(pc.equal(changed.column("purpose"), PURPOSE), True)  # an unreadable purpose counts
        unreadable = pc.sum(pc.and_(training, pc.invert(named))).as_py() or 0
    return ChangedConsent(consent, sum(n for _, n in reads), len(subject_ids), unreadable)


def _incremental_since(
    url: str, as_of: datetime, watermark: dict[str, Any] | None, full: bool, full_every: timedelta | None
) -> tuple[datetime | None, str]:
    """The watermark to judge from, or None and why the sweep reads the whole store."""
    if full:
        return None, "requested"
    if watermark is None:
        return None, "no earlier sweep"
    try:
        previous = parse_timestamp(watermark["as_of"], "as_of")
        last_full = parse_timestamp(watermark.get("last_full_as_of") or "", "last_full_as_of")
        bound, below = watermark["bound"], watermark["below"]
    except (KeyError, MalformedRecord):
        return None, "the watermark has no fingerprint (written by an older version)"
    if previous >= as_of:
        return None, "as_of is not after the watermark"
    if full_every is not None and as_of - last_full >= full_every:
        return None, f"the periodic full sweep is due (every {full_every.total_seconds() / 3600:g} h)"
    if bound != changed_bound(previous) or not isinstance(below, int):
        return None, "the watermark's fingerprint does not match its as_of"
    if count_recorded_before(url, bound) != below:
        return None, "rows were inserted or deleted below the watermark (back-dated or removed)"
    return previous, "nothing changed below the watermark: the subjects of the changed rows are judged"


def sweep_scope(
    url: str,
    keyer: Keyer,
    as_of: datetime,
    watermark: dict[str, Any] | None,
    *,
    full: bool = False,
    full_every: timedelta | None = None,
) -> SweepScope:
    """The consent one sweep at `as_of` judges: what changed since `watermark` when it still describes
    the store, else the whole store (on disk until `close()`)."""
    bound = changed_bound(as_of)
    # counted before anything is read: a row inserted below `bound` from here on changes the next count
    fingerprint = {"bound": bound, "below": count_recorded_before(url, bound)}
    since, why = _incremental_since(url, as_of, watermark, full, full_every)
    if since is None:
        whole = WholeStoreConsent(url, keyer, as_of, purpose="sweep: whole store")
        return SweepScope(None, why, whole.rows_read, None, fingerprint, whole_store=whole)
    changed = changed_consent(url, keyer, since, as_of, purpose="sweep")
    return SweepScope(since, why, changed.rows_read, changed.subjects_judged, fingerprint, changed=changed.consent)


def stage_consent(
    scope: SweepScope, url: str, keyer: Keyer, as_of: datetime
) -> Callable[[dict[str, Any] | None, SubjectsOf], tuple[KeyedConsent, set[str] | None]]:
    """For an unpublished stage (its run.json, and its keyed subjects when asked): the consent to judge its
    content by, and whose. A stage pinned before the watermark may hold rows of subjects who lost consent
    between its pin and the watermark, which an incremental scope does not name: those stages are judged
    from their pin."""
    pinned_scopes: dict[datetime, KeyedConsent] = {}

    def judge(run: dict[str, Any] | None, subjects: SubjectsOf) -> tuple[KeyedConsent, set[str] | None]:
        if scope.since is None or run is None:  # a full scope; a stage with no run.json holds nothing
            return scope.consent_of(subjects), scope.only
        try:
            pinned = parse_timestamp(run["consent"]["as_of"], "as_of")
        except (KeyError, TypeError, MalformedRecord):
            pinned = EARLIEST  # cannot tell: judge every row
        if pinned >= scope.since:
            return scope.consent_of(subjects), scope.only
        if pinned not in pinned_scopes:
            pinned_scopes[pinned] = changed_consent(url, keyer, pinned, as_of, purpose="sweep: stage").consent
        return pinned_scopes[pinned], pinned_scopes[pinned].affected

    return judge
