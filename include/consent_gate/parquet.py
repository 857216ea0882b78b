"""Parquet in the output store: one write setting, whole-file reads and writes, streamed parts.

The pipeline and the sweep write through these, so a file the sweep rewrites is written like the one
publication wrote.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from consent_gate.publish import OutputStore

PARQUET_OPTIONS = {"compression": "zstd"}


def read_table(store: OutputStore, relative: str, columns: list[str] | None = None) -> pa.Table:
    with store.open(relative) as handle:
        return pq.read_table(handle, columns=columns)


def write_table(store: OutputStore, relative: str, table: pa.Table) -> None:
    with store.open(relative, "wb") as handle:
        pq.write_table(table, handle, **PARQUET_OPTIONS)


def merge_parquet(store: OutputStore, sources: list[str], target: str, schema: pa.Schema) -> None:
    """Concatenate a stage's part files into one audit file (always written, even when empty)."""
    with store.open(target, "wb") as handle, pq.ParquetWriter(handle, schema, **PARQUET_OPTIONS) as writer:
        for path in sources:
            with store.open(path) as source:
                writer.write_table(pq.read_table(source, schema=schema))


class ParquetSink:
    """Streams record batches into one Parquet file of the stage; opens it lazily.

    Small writes (one meeting's quarantine or input files) are buffered up to `ROW_GROUP_ROWS` rows or
    `ROW_GROUP_BYTES` and written as one row group: one tiny row group per meeting made every later
    reader of the file (reconciliation, the audit merge) pay per-row-group overhead, in time and memory.
    """

    ROW_GROUP_ROWS = 65_536
    ROW_GROUP_BYTES = 16 << 20

    def __init__(self, store: OutputStore, relative: str, schema: pa.Schema) -> None:
        self.store, self.relative, self.schema = store, relative, schema
        self._handle: Any = None
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[pa.Table] = []
        self._buffered = (0, 0)  # rows, bytes
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._buffer.append(table)
        self._buffered = (self._buffered[0] + table.num_rows, self._buffered[1] + table.nbytes)
        self.rows += table.num_rows
        if self._buffered[0] >= self.ROW_GROUP_ROWS or self._buffered[1] >= self.ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._handle = self.store.open(self.relative, "wb")
            self._writer = pq.ParquetWriter(self._handle, self.schema, **PARQUET_OPTIONS)
        self._writer.write_table(pa.concat_tables(self._buffer))
        self._buffer, self._buffered = [], (0, 0)

    def close(self) -> None:
        try:
            self._flush()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._handle.close()
