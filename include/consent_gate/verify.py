"""Independent re-verification: every published row re-derived against consent in SQL (DuckDB).

This is the second opinion SPEC §5 asks for. It shares no eligibility code with `gate.py` or
`consent.py`: it reads `consent_events` straight from the consent store with its own query, applies the
visibility and fail-closed rules of SPEC §3 in SQL, turns the events into validity intervals
([effective_at, next effective_at) per subject and content type, ordered by effective_at, recorded_at,
revoke after grant, event_id) and joins every (published row, required subject) pair on equality with a
range check, at the row's capture time and at `as_of`. The only shared piece is `keys.Keyer`, which maps
a consent subject to the keyed hash the published rows carry.

A row violates consent when one of its subjects (every `user_keys` and `account_keys` entry) has no
grant in force at capture or at `as_of`, or was named by an unreadable consent row; a row without its
meeting's account, a cue or message without its author, or an unknown type violates it too.
Results name artifact ids and counts only, never keys, raw ids or content.

Memory is bounded whatever the size of the day: DuckDB runs with a `memory_limit`, a fixed number of
`threads` and a temporary directory to spill to, and the published rows are never materialized: they
are streamed from the Parquet files (only the columns the checks need) through the joins, and only
violations are kept. What is held is of the size of the consent store, not of the day.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from consent_gate.consent_store import ConsentStoreError, consent_batches, read_subject_rows
from consent_gate.keys import Keyer
from consent_gate.layout import content_day, manifest_path
from consent_gate.manifest_schema import ManifestInvalid, read_checked
from consent_gate.publish import OutputStore
from consent_gate.records import parse_timestamp

CONSENT_COLUMNS = (
    "event_id", "subject_type", "subject_id", "purpose", "content_type",
    "decision", "effective_at", "recorded_at", "terms_version",
)  # fmt: skip
CONTENT_TYPE_OF_ARTIFACT = {
    "transcript_segment": "transcript",
    "chat_message": "chat",
    "summary": "summary",
    "recording": "recording",
}
MAX_LISTED = 20
# DuckDB otherwise takes up to 80% of the machine's memory and one thread per core. The limit covers
# its buffers (hash tables, the consent tables); beyond it, it spills to the temporary directory.
DUCKDB_SETTINGS: dict[str, Any] = {"memory_limit": "512MB", "threads": 2, "preserve_insertion_order": False}


class VerificationError(RuntimeError):
    """The consent store cannot be read well enough to verify anything."""


@dataclass
class Verification:
    """What the second path found: rows checked, violating rows by reason, a few of their ids."""

    rows_checked: int = 0
    violations: dict[str, int] = field(default_factory=dict)
    violating_artifacts: list[str] = field(default_factory=list)
    visible_consent_events: int = 0
    failed_closed_subjects: int = 0

    @property
    def violating_rows(self) -> int:
        return sum(self.violations.values())

    @property
    def passed(self) -> bool:
        return self.violating_rows == 0

    def detail(self) -> str:
        if self.passed:
            return (
                f"{self.rows_checked} published rows re-derived in SQL against {self.visible_consent_events} "
                f"visible consent events: every required subject granted at capture and at as_of"
            )
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.violations.items()))
        listed = ", ".join(self.violating_artifacts)
        return f"{self.violating_rows} of {self.rows_checked} rows not eligible ({reasons}); e.g. {listed}"


# --- consent rows, read on their own ------------------------------------------------------------


def _cell_text(value: Any) -> str | None:
    """A cell as text; a timezone-naive datetime becomes text without an offset (so: unreadable)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value) if isinstance(value, str) else repr(type(value))


def _consent_rows(
    url: str, keyer: Keyer, subject_ids: set[str] | None, batch_size: int = 50_000
) -> Iterator[list[dict[str, Any]]]:
    """consent_events in batches, each subject replaced by its keyed hash: only the rows of `subject_ids`
    (and rows sharing their event_ids: an indexed look-up) when given, else the whole table."""
    try:
        if subject_ids is not None:
            table = read_subject_rows(url, subject_ids, purpose="verify")
            for batch in table.to_batches(batch_size):
                yield [_keyed(row, keyer) for row in batch.to_pylist()]
            return
        with consent_batches(url, purpose="verify (whole store)") as batches:
            for batch in batches:
                yield [_keyed(row, keyer) for row in batch.to_pylist()]
    except ConsentStoreError as error:
        raise VerificationError(str(error)) from None


def _keyed(row: dict[str, Any], keyer: Keyer) -> dict[str, Any]:
    kind, subject = row["subject_type"], row["subject_id"]
    readable = kind in ("account", "user") and isinstance(subject, str) and subject != ""
    return {
        "event_id": row["event_id"] if isinstance(row["event_id"], str) else None,
        "subject_key": keyer.key(kind, subject) if readable else None,
        "purpose": _cell_text(row["purpose"]),
        "content_type": _cell_text(row["content_type"]),
        "decision": _cell_text(row["decision"]),
        "effective_at": _cell_text(row["effective_at"]),
        "recorded_at": _cell_text(row["recorded_at"]),
        "terms_ok": row["terms_version"] is None or isinstance(row["terms_version"], str),
    }


_CONSENT_SCHEMA = (
    ("event_id", "string"), ("subject_key", "string"), ("purpose", "string"), ("content_type", "string"),
    ("decision", "string"), ("effective_at", "string"), ("recorded_at", "string"), ("terms_ok", "bool_"),
)  # fmt: skip


def _load_consent(connection: Any, url: str, keyer: Keyer, subject_ids: set[str] | None) -> None:
    import pyarrow as pa

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in _CONSENT_SCHEMA])
    columns = ", ".join(f"{name} {'BOOLEAN' if kind == 'bool_' else 'VARCHAR'}" for name, kind in _CONSENT_SCHEMA)
    connection.execute(f"CREATE TABLE consent_raw ({columns})")
    for rows in _consent_rows(url, keyer, subject_ids):
        batch = pa.Table.from_pylist(rows, schema=schema)  # noqa: F841  (read by name in the SQL below)
        connection.execute("INSERT INTO consent_raw SELECT * FROM batch")


# SPEC §3 in SQL. A timestamp is readable only in the exact ISO-8601-with-offset shape.
_TIMESTAMP_RE = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"
_INTERVALS_SQL = f"""
CREATE TABLE parsed AS
SELECT * REPLACE (
  CASE WHEN rec BETWEEN TIMESTAMPTZ '1900-01-01 00:00:00+00' AND TIMESTAMPTZ '2200-01-01 00:00:00+00'
       THEN rec END AS rec,
  CASE WHEN eff BETWEEN TIMESTAMPTZ '1900-01-01 00:00:00+00' AND TIMESTAMPTZ '2200-01-01 00:00:00+00'
       THEN eff END AS eff)
FROM (
  SELECT *,
    CASE WHEN regexp_full_match(recorded_at, '{_TIMESTAMP_RE}')
         THEN try_cast(regexp_replace(recorded_at, '(\\.\\d{{6}})\\d+', '\\1') AS TIMESTAMPTZ) END AS rec,
    CASE WHEN regexp_full_match(effective_at, '{_TIMESTAMP_RE}')
         THEN try_cast(regexp_replace(effective_at, '(\\.\\d{{6}})\\d+', '\\1') AS TIMESTAMPTZ) END AS eff
  FROM consent_raw
  WHERE purpose IS NULL OR purpose = 'ai_training'
);  -- SPEC §2.1: an instant outside 1900..2200 is unreadable

CREATE TABLE visible AS
SELECT *,
  (purpose IS NULL OR event_id IS NULL OR event_id = '' OR subject_key IS NULL
   OR content_type IS NULL OR content_type NOT IN ('transcript', 'chat', 'summary', 'recording', '*')
   OR decision IS NULL OR decision NOT IN ('grant', 'revoke')
   OR eff IS NULL OR rec IS NULL OR NOT terms_ok
   OR count(*) OVER (PARTITION BY event_id) > 1) AS unreadable
FROM parsed
WHERE rec IS NULL OR rec <= $as_of;

CREATE TABLE failed_closed AS SELECT DISTINCT subject_key FROM visible WHERE unreadable AND subject_key IS NOT NULL;

CREATE TABLE intervals AS
WITH events AS (
  SELECT subject_key, unnest(CASE WHEN content_type = '*' THEN ['transcript', 'chat', 'summary', 'recording']
                                  ELSE [content_type] END) AS ct,
         decision, eff, rec, event_id
  FROM visible WHERE NOT unreadable
)
SELECT subject_key, ct, decision, eff AS valid_from,
       lead(eff) OVER (PARTITION BY subject_key, ct
                       ORDER BY eff, rec, decision = 'revoke', event_id) AS valid_to
FROM events;
"""

# The staged rows (`published_files`, a view over the Parquet files) are streamed, never stored.
_VIOLATIONS_SQL = """
CREATE TABLE at_as_of AS
SELECT subject_key, ct, decision FROM intervals
WHERE valid_from <= $as_of AND (valid_to IS NULL OR valid_to > $as_of);

CREATE TEMP VIEW published AS
SELECT artifact_id, captured_at, consent_as_of,
       coalesce(user_keys, []) AS user_keys, coalesce(account_keys, []) AS account_keys,
       CASE artifact_type WHEN 'transcript_segment' THEN 'transcript' WHEN 'chat_message' THEN 'chat'
                          WHEN 'summary' THEN 'summary' WHEN 'recording' THEN 'recording' END AS ct
FROM published_files;

CREATE TABLE violations (artifact_id VARCHAR, reason VARCHAR);

INSERT INTO violations
SELECT artifact_id, reason FROM (
  SELECT artifact_id, unnest([
    CASE WHEN ct IS NULL THEN 'unknown_artifact_type' END,
    CASE WHEN captured_at IS NULL THEN 'no_capture_time' END,
    CASE WHEN len(account_keys) = 0 THEN 'no_account_subject' END,
    CASE WHEN ct IN ('transcript', 'chat') AND len(user_keys) = 0 THEN 'no_author_subject' END,
    CASE WHEN $check_as_of AND consent_as_of IS DISTINCT FROM $as_of THEN 'consent_as_of_differs' END
  ]) AS reason
  FROM published
) WHERE reason IS NOT NULL;

INSERT INTO violations
SELECT p.artifact_id,
       CASE WHEN f.subject_key IS NOT NULL THEN 'subject_failed_closed'
            WHEN cap.decision IS DISTINCT FROM 'grant' THEN 'not_granted_at_capture'
            ELSE 'not_granted_at_as_of' END
FROM (SELECT artifact_id, ct, captured_at, unnest(list_concat(user_keys, account_keys)) AS subject_key
      FROM published) p
LEFT JOIN intervals cap
  ON cap.subject_key = p.subject_key AND cap.ct = p.ct
 AND p.captured_at >= cap.valid_from AND (cap.valid_to IS NULL OR p.captured_at < cap.valid_to)
LEFT JOIN at_as_of cur ON cur.subject_key = p.subject_key AND cur.ct = p.ct
LEFT JOIN failed_closed f ON f.subject_key = p.subject_key
WHERE f.subject_key IS NOT NULL OR cap.decision IS DISTINCT FROM 'grant' OR cur.decision IS DISTINCT FROM 'grant';
"""


def connect(temp_directory: str) -> Any:
    """An in-memory DuckDB bounded by `DUCKDB_SETTINGS`, spilling to `temp_directory`, clock in UTC."""
    import duckdb

    connection = duckdb.connect(config={**DUCKDB_SETTINGS, "temp_directory": temp_directory})
    connection.execute("SET TimeZone = 'UTC'")
    return connection


def verify_files(
    store: OutputStore,
    content_files: Sequence[str],
    consent_db: str,
    as_of: datetime,
    keyer: Keyer,
    *,
    check_as_of: bool = True,
    subject_ids: set[str] | None = None,
) -> Verification:
    """Re-derive consent for every row of `content_files` (paths relative to `store`) at `as_of`.

    `check_as_of`: also require each row's `consent_as_of` to equal `as_of` (a stage; not a re-check
    of a published day against today's consent).
    """
    as_of = as_of.astimezone(UTC)
    if as_of > datetime.now(UTC):  # a future instant would see future-dated grants in force
        raise VerificationError(f"as_of {as_of.isoformat()} is later than now: a future consent instant is refused")
    with tempfile.TemporaryDirectory(prefix="consent-gate-verify-") as spill:
        connection = connect(spill)
        try:
            return _verify(connection, store, content_files, consent_db, as_of, keyer, check_as_of, subject_ids)
        finally:
            connection.close()


def _verify(
    connection: Any,
    store: OutputStore,
    content_files: Sequence[str],
    consent_db: str,
    as_of: datetime,
    keyer: Keyer,
    check_as_of: bool,
    subject_ids: set[str] | None,
) -> Verification:
    _load_consent(connection, consent_db, keyer, subject_ids)
    for statement in _split(_INTERVALS_SQL):
        connection.execute(statement, {"as_of": as_of} if "$as_of" in statement else None)
    lost = _scalar(connection, "SELECT count(*) FROM visible WHERE unreadable AND subject_key IS NULL")
    if lost:
        raise VerificationError(f"{lost} visible consent row(s) unreadable down to their subject; refusing to verify")
    result = Verification(
        visible_consent_events=_scalar(connection, "SELECT count(*) FROM visible"),
        failed_closed_subjects=_scalar(connection, "SELECT count(*) FROM failed_closed"),
    )
    store.attach_to(connection)
    paths = [store.uri(f) for f in content_files]
    if not paths:
        return result
    connection.read_parquet(paths).create_view("published_files")
    for statement in _split(_VIOLATIONS_SQL):
        parameters: dict[str, Any] = {}
        if "$as_of" in statement:
            parameters["as_of"] = as_of
        if "$check_as_of" in statement:
            parameters["check_as_of"] = check_as_of
        connection.execute(statement, parameters or None)
    result.rows_checked = _scalar(connection, "SELECT count(*) FROM published_files")
    per_reason = connection.execute(
        "SELECT reason, count(DISTINCT artifact_id) FROM violations GROUP BY reason ORDER BY reason"
    ).fetchall()
    result.violations = {reason: int(n) for reason, n in per_reason}
    listed = connection.execute(
        f"SELECT DISTINCT artifact_id FROM violations ORDER BY artifact_id LIMIT {MAX_LISTED}"
    ).fetchall()
    result.violating_artifacts = [row[0] for row in listed]
    return result


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _scalar(connection: Any, sql: str) -> int:
    rows = connection.execute(sql).fetchall()  # fetched to the end: DuckDB refuses new work on a pending result
    return int(rows[0][0]) if rows else 0


# --- entry points ---------------------------------------------------------------------------------


def verify_stage(
    store: OutputStore, stage_root: str, consent_db: str, secret: bytes, subject_ids: set[str] | None = None
) -> Verification:
    """The staged content of one attempt, at the stage's pinned `as_of`: against the rows of
    `subject_ids` only when given (the subjects the landing zone's meetings name; a row needing anyone
    else finds no grant and fails), else the whole store. A row whose own subject cannot be read is not
    found by subject: the run's snapshot, which read every row, has already failed on it."""
    as_of = parse_timestamp(store.read_json(f"{stage_root}/run.json")["consent"]["as_of"], "as_of")
    files = store.files(f"{stage_root}/content", ".parquet")
    return verify_files(store, files, consent_db, as_of, Keyer(secret), subject_ids=subject_ids)


def verify_published_day(store: OutputStore, day: date, consent_db: str, secret: bytes, now: datetime) -> Verification:
    """A published day against the consent visible `now` (read-only: nothing is written). A manifest
    that does not conform to its schema is refused before any row is read (VerificationError)."""
    if store.exists(manifest_path(day)):
        try:
            read_checked(store, manifest_path(day))
        except ManifestInvalid as error:
            raise VerificationError(str(error)) from None
    files = store.files(content_day(day), ".parquet")
    return verify_files(store, files, consent_db, now, Keyer(secret), check_as_of=False)
