"""The consent store itself: opening it safely, and reading `consent_events` column-wise.

- A URL is checked before anything connects: a string that is not a SQLAlchemy URL, a backend other
  than SQLite or PostgreSQL, or a missing driver is one clear error (no traceback, no host echoed).
- A SQLite store is opened read-only (`mode=ro` URI): a missing file is an error naming the path,
  and nothing is ever created at that path.
- PostgreSQL: every column of `consent_events` must be text. A `timestamptz` column silently turns an
  offset-less input into an instant in the session's time zone, so the gate could no longer see that
  the row was malformed (SPEC §2.2: an offset is required); the same logical rows would then publish
  differently on SQLite and PostgreSQL. Such a table is refused, naming the column and its type.
- Reads are column-wise: SQLite rows are fetched in large batches and turned into Arrow columns;
  PostgreSQL streams `COPY (SELECT ...) TO STDOUT` as CSV into a spool file that Arrow parses. No
  Python code runs per row. Cells that are not text (SQLite lets any column hold any type) are
  nulled and flagged in `nontext`, a bit per column, so the rules can fail them closed.

Indexes the gate expects (created by `consent-gate sample` and `create_consent_indexes`):
`consent_events(subject_type, subject_id)` for look-ups of named subjects (re-verification,
explain, the no-resurrection step), `consent_events(recorded_at)` and `consent_events(effective_at)`
for what changed after an instant (the no-resurrection step, the sweep).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import pathname2url

import pyarrow as pa

COLUMNS = (
    "event_id", "subject_type", "subject_id", "purpose", "content_type",
    "decision", "effective_at", "recorded_at", "terms_version",
)  # fmt: skip
TEXT_TYPES = ("text", "character varying", "character")
INDEXES = {
    "consent_events_subject": "subject_type, subject_id",
    "consent_events_recorded_at": "recorded_at",
    "consent_events_effective_at": "effective_at",
}
ARROW_SCHEMA = pa.schema([*((c, pa.string()) for c in COLUMNS), ("nontext", pa.int32())])
SQLITE_BATCH = 100_000

Progress = Callable[[str], None]


class ConsentStoreError(RuntimeError):
    """The consent store cannot be read well enough to decide anything: the run fails."""


@dataclass(frozen=True)
class StoreAddress:
    backend: str  # sqlite | postgresql
    url: Any  # sqlalchemy URL
    sqlite_path: Path | None = None


def store_address(url: str) -> StoreAddress:
    """Check a consent store URL without connecting; errors never echo credentials or hosts."""
    import sqlalchemy as sa

    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError, TypeError):
        raise ConsentStoreError(
            "the consent store URL is not a SQLAlchemy URL (e.g. sqlite:///var/consent.db or "
            "postgresql+psycopg2://user@host/db)"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            raise ConsentStoreError("a SQLite consent store URL must name a file: sqlite:///path/to/consent.db")
        path = Path(database)
        if not path.is_file():
            raise ConsentStoreError(f"the SQLite consent store {path} does not exist (nothing was created there)")
        return StoreAddress("sqlite", parsed, path)
    if backend == "postgresql":
        try:
            parsed.get_dialect().import_dbapi()
        except (ImportError, sa.exc.NoSuchModuleError):
            raise ConsentStoreError(f"no driver for the consent store URL scheme {parsed.drivername!r}") from None
        return StoreAddress("postgresql", parsed)
    raise ConsentStoreError(f"unsupported consent store backend {backend!r}: use sqlite or postgresql")


@contextmanager
def connect(url: str) -> Iterator[tuple[StoreAddress, Any]]:
    """A DB-API connection to the store, read-only where the backend allows it."""
    import sqlite3

    address = store_address(url)
    if address.backend == "sqlite":
        assert address.sqlite_path is not None
        uri = f"file:{pathname2url(str(address.sqlite_path.resolve()))}?mode=ro"
        try:
            connection = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as error:
            raise ConsentStoreError(f"cannot open the SQLite consent store {address.sqlite_path}: {error}") from None
        try:
            yield address, connection
        except sqlite3.Error as error:
            raise ConsentStoreError(
                f"cannot read consent_events from the consent store: {type(error).__name__}"
            ) from None
        finally:
            connection.close()
        return
    import sqlalchemy as sa

    engine = sa.create_engine(address.url, poolclass=sa.pool.NullPool)
    try:
        raw = engine.raw_connection()
    except Exception as error:  # the driver's own error, unwrapped: its class name only, never its text
        engine.dispose()
        if not isinstance(error, sa.exc.SQLAlchemyError) and not _is_driver_error(error):
            raise
        raise ConsentStoreError(f"cannot read consent_events from the consent store: {type(error).__name__}") from None
    dbapi = raw.driver_connection
    try:
        dbapi.set_session(readonly=True, autocommit=False)
        _require_text_columns(dbapi)
        yield address, dbapi
    except ConsentStoreError:
        raise
    except Exception as error:  # psycopg2.Error and friends: the class name only, never the server's text
        if not _is_driver_error(error):
            raise
        raise ConsentStoreError(f"cannot read consent_events from the consent store: {type(error).__name__}") from None
    finally:
        raw.close()
        engine.dispose()


def _is_driver_error(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] in ("psycopg2", "psycopg")


def _require_text_columns(connection: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'consent_events' AND table_schema = current_schema()"
        )
        types = dict(cursor.fetchall())
    if not types:
        raise ConsentStoreError("the consent store has no table consent_events")
    missing = [c for c in COLUMNS if c not in types]
    if missing:
        raise ConsentStoreError(f"consent_events lacks column(s) {', '.join(missing)}")
    for column in COLUMNS:
        if types[column] not in TEXT_TYPES:
            raise ConsentStoreError(
                f"consent_events.{column} is {types[column]}, not text: the gate reads instants as ISO-8601 text "
                "with an offset, and a typed column would hide offset-less input (the database coerces it with "
                "its session time zone); store every column as text (README, 'The consent store')"
            )


# --- column-wise reads --------------------------------------------------------------------------


def _sqlite_select(where: str) -> str:
    cells = ", ".join(f"CASE WHEN typeof({c}) = 'text' THEN {c} END" for c in COLUMNS)
    flags = " | ".join(f"((typeof({c}) NOT IN ('text', 'null')) << {i})" for i, c in enumerate(COLUMNS))
    return f"SELECT {cells}, {flags} FROM consent_events {where}"


def read_consent_table(
    url: str,
    where: str = "",
    params: Sequence[Any] = (),
    *,
    progress: Progress | None = None,
    counter: Callable[[str, int], None] | None = None,
    purpose: str = "read",
) -> pa.Table:
    """`consent_events` (optionally `where`, with `?` placeholders) as an Arrow table of text columns
    plus `nontext`. `counter(purpose, rows)` is told how many rows each read returned (tests count
    what each step reads); `progress` gets rows read and the rate."""
    started = time.monotonic()
    with connect(url) as (address, connection):
        if address.backend == "sqlite":
            table = _read_sqlite(connection, where, params, progress, started)
        else:
            table = _read_postgresql(connection, where, params)
    if counter is not None:
        counter(purpose, table.num_rows)
    if progress is not None:
        elapsed = max(time.monotonic() - started, 1e-9)
        progress(
            f"consent store: {table.num_rows:,} rows read in {elapsed:.1f} s ({table.num_rows / elapsed:,.0f} rows/s)"
        )
    return table


def _read_sqlite(
    connection: Any, where: str, params: Sequence[Any], progress: Progress | None, started: float
) -> pa.Table:
    cursor = connection.execute(_sqlite_select(where), tuple(params))
    batches: list[pa.RecordBatch] = []
    read = 0
    while rows := cursor.fetchmany(SQLITE_BATCH):
        columns = list(zip(*rows, strict=True))
        arrays = [pa.array(columns[i], pa.string()) for i in range(len(COLUMNS))]
        arrays.append(pa.array(columns[len(COLUMNS)], pa.int32()))
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=ARROW_SCHEMA))
        read += len(rows)
        if progress is not None and read % (10 * SQLITE_BATCH) == 0:
            rate = read / max(time.monotonic() - started, 1e-9)
            progress(f"consent store: {read:,} rows read ({rate:,.0f} rows/s)")
    return pa.Table.from_batches(batches, schema=ARROW_SCHEMA)


def _read_postgresql(connection: Any, where: str, params: Sequence[Any]) -> pa.Table:
    import pyarrow.csv as pacsv

    with connection.cursor() as cursor:
        select = f"SELECT {', '.join(COLUMNS)}, 0 FROM consent_events {where.replace('?', '%s')}"
        query = cursor.mogrify(select, tuple(params)).decode()
        with tempfile.TemporaryDirectory(prefix="consent-gate-copy-") as spool:
            path = os.path.join(spool, "consent.csv")
            with open(path, "wb") as handle:
                cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)", handle)
            connection.rollback()  # read-only transaction: nothing to keep
            if os.path.getsize(path) == 0:
                return ARROW_SCHEMA.empty_table()
            return pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(column_names=list(ARROW_SCHEMA.names), block_size=64 << 20),
                convert_options=pacsv.ConvertOptions(
                    column_types=ARROW_SCHEMA,
                    null_values=[""],  # COPY writes NULL unquoted and empty text as ""
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                ),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
            )


def create_consent_indexes(url: str) -> None:
    """The indexes the gate's look-ups need (SQLite or PostgreSQL), created if missing."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for name, columns in INDEXES.items():
                connection.execute(sa.text(f"CREATE INDEX IF NOT EXISTS {name} ON consent_events ({columns})"))
    finally:
        engine.dispose()
