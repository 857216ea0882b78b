"""Great Expectations suites over a staged day, run inside a task before anything is published.

SPEC §5–6: the staged content and aggregates must have exactly the published columns and sane
values, and every input unit must be accounted for; any failed expectation fails the run.

The 1.x chain is built per run in a throw-away in-memory context (data source → asset → batch
definition → suite → validation definition → checkpoint; its Data Docs site is a folder), because the
GX Airflow operator loads data in its constructor and no longer fails tasks on failed validation.
Reports never echo values: results use the SUMMARY format with no partial lists, are reduced to an
allow-list of counts before they are written, and the rendered Data Docs are rewritten to use no asset
from the network.

Memory stays bounded however big the day: the staged content is read once, a batch of `BATCH_ROWS`
rows (and about `BATCH_VALUES` keys) at a time, and each batch feeds the `content` suite (the columns
it checks values of), the narrow per-row frame of `content_keys` (validated every `NARROW_BATCH_ROWS`
rows) and, for `content_ids`, temporary files that spread the day's `artifact_id`s over buckets by a
hash of the id: equal ids share a bucket, so uniqueness within every bucket is uniqueness across the
day, while no more than about `NARROW_BATCH_ROWS` ids are held at once. `content_columns` checks each
staged file's column names from its footer. Data Docs are rendered once at the end instead of after
every batch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import tempfile
import threading
import types
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from consent_gate.aggregates import AGGREGATE_SCHEMA
from consent_gate.checks import CheckResult, Ledger, reconciliation_checks, stage_ledger, staged_counts
from consent_gate.config import RunSettings
from consent_gate.gate import CONTENT_SCHEMA
from consent_gate.gx_reports import RESULT_FORMAT, SuiteOutcome, check_details, sanitized_result, write_reports
from consent_gate.layout import CHECKS_REPORT, Stage
from consent_gate.publish import OutputStore
from consent_gate.steps import rare_collections, read_day_inputs
from consent_gate.telemetry import GROUP_FIELDS
from consent_gate.verify import verify_stage

CONTENT_SUITES = ("content_columns", "content", "content_keys", "content_ids")  # the staged content alone
STAGE_SUITES = ("aggregates", "reconciliation")  # the aggregates, and the stage's counts
SUITES = (*CONTENT_SUITES, *STAGE_SUITES)
TEXT_TYPES = ("transcript_segment", "chat_message", "summary")
ARTIFACT_TYPES = (*TEXT_TYPES, "recording")
# Content rows per GX batch (wide rows: text): what bounds the suites' memory. A checkpoint run costs
# ~0.15-0.25 s however small its batch: at 10k meetings (135k rows) 25k rows cost 0.4 s more than 50k
# for 45 MB less, and 100k / 200k cost 0.5 s less than 50k / 100k for 30 MB more (2.25 -> 1.75 s). Later
# (2026-12-07) a content run cost ~0.35 s at 1k rows and ~0.35 s more a 100k: 200k rows instead of 100k took
# the 10k day's content checks from 7 runs to 6 and 3.4-3.9 to 2.6-3.3 CPU-s, for 25-50 MB more.
BATCH_ROWS = 200_000
NARROW_BATCH_ROWS = 200_000  # rows per batch of the narrow frames: key counts, artifact ids
# Values of list columns (keys, terms versions) a batch holds at most, but for a single row group: a
# recording's row names every participant, so the rows of a meeting of thousands hold millions of keys
# (2,000 recordings of a 2,000-participant meeting: one batch of 260 MB, 1.2 GB in the checks' process).
BATCH_VALUES = 2_000_000

_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")


# --- the suites ---------------------------------------------------------------------------------


def _columns_expectations(gxe: Any, column: Any) -> list[Any]:
    return [gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(CONTENT_SCHEMA.names))]


# The columns the `content` suite reads values of: its frames hold these alone. A row-conditioned
# expectation filters every column of its frame, and the key lists (checked by `content_keys`) cost
# half of each run (0.53 -> 0.30 s per 100k rows); the staged files' whole column lists are checked by
# `content_columns`, once per distinct list of names.
CONTENT_CHECKED = ("artifact_id", "artifact_type", "captured_at", "consent_as_of", "text", "media_uri", "media_sha256")


def _content_expectations(gxe: Any, column: Any) -> list[Any]:
    is_recording = column("artifact_type") == "recording"
    is_text = column("artifact_type") != "recording"
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="artifact_id"),
        gxe.ExpectColumnValuesToBeUnique(column="artifact_id"),
        gxe.ExpectColumnValuesToBeInSet(column="artifact_type", value_set=list(ARTIFACT_TYPES)),
        gxe.ExpectColumnValuesToNotBeNull(column="artifact_type"),
        gxe.ExpectColumnValuesToNotBeNull(column="captured_at"),
        gxe.ExpectColumnValuesToNotBeNull(column="consent_as_of"),
        gxe.ExpectColumnValuesToNotBeNull(column="text", row_condition=is_text),
        gxe.ExpectColumnValuesToBeNull(column="text", row_condition=is_recording),
        gxe.ExpectColumnValuesToNotBeNull(column="media_uri", row_condition=is_recording),
        gxe.ExpectColumnValuesToNotBeNull(column="media_sha256", row_condition=is_recording),
        gxe.ExpectColumnValuesToBeNull(column="media_uri", row_condition=is_text),
        gxe.ExpectColumnValuesToBeNull(column="media_sha256", row_condition=is_text),
    ]


def _keys_expectations(gxe: Any, column: Any) -> list[Any]:
    # A summary or recording needs every participant, who may all be absent; a cue or message needs its author.
    authored = column("artifact_type").is_in(["transcript_segment", "chat_message"])
    return [
        gxe.ExpectColumnValuesToBeBetween(column="account_keys", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="malformed_keys", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="user_keys", min_value=1, row_condition=authored),
    ]


def _ids_expectations(gxe: Any, column: Any) -> list[Any]:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="artifact_id"),
        gxe.ExpectColumnValuesToBeUnique(column="artifact_id"),
    ]


def _aggregate_expectations(gxe: Any, column: Any, *, k: int, day: date) -> list[Any]:
    expectations = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(AGGREGATE_SCHEMA.names)),
        gxe.ExpectColumnValuesToBeInSet(column="dt", value_set=[day.isoformat()]),
        gxe.ExpectColumnValuesToBeBetween(column="distinct_users", min_value=k),
        gxe.ExpectColumnValuesToBeBetween(column="event_count", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="duration_ms_p50", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="duration_ms_p95", min_value=0),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="event_count", column_B="distinct_users", or_equal=True),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["dt", *GROUP_FIELDS]),
    ]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=name) for name in ("dt", *GROUP_FIELDS)]
    return expectations


def _reconciliation_expectations(gxe: Any, column: Any) -> list[Any]:
    return [
        gxe.ExpectColumnPairValuesToBeEqual(column_A="units_in", column_B="accounted_for"),
        gxe.ExpectColumnValuesToBeBetween(column="units_in", min_value=0),
    ]


# --- the frames GX sees --------------------------------------------------------------------------


def _parquet_batches(store: OutputStore, files: list[str], columns: list[str] | None = None) -> Iterator[Any]:
    """Record batches of the staged files, one at a time (bounded memory): `BATCH_ROWS` rows at most, and
    no more row groups than hold `BATCH_VALUES` values of list columns together."""
    import pyarrow.parquet as pq

    for path in files:
        with store.open(path) as handle:
            parquet = pq.ParquetFile(handle)
            for row_groups in _spans(parquet.metadata):
                yield from parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=row_groups, columns=columns)


def _spans(metadata: Any) -> Iterator[list[int]]:
    """The file's row groups, consecutive ones together while they hold `BATCH_ROWS` rows and
    `BATCH_VALUES` values of list columns at most (a row group alone may hold more)."""
    span: list[int] = []
    rows = values = 0
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        leaves = [group.column(leaf) for leaf in range(group.num_columns)]
        listed = sum(leaf.num_values for leaf in leaves if "." in leaf.path_in_schema)  # list elements
        if span and (rows + group.num_rows > BATCH_ROWS or values + listed > BATCH_VALUES):
            yield span
            span, rows, values = [], 0, 0
        span.append(index)
        rows, values = rows + group.num_rows, values + listed
    if span:
        yield span


def _content_frame(batch: Any) -> Any:
    """The batch's `CONTENT_CHECKED` columns (those it has: a missing one fails its expectations) as pandas."""
    return batch.select([name for name in CONTENT_CHECKED if name in batch.schema.names]).to_pandas()


def _columns_frames(store: OutputStore, files: list[str]) -> Iterator[Any]:
    """An empty frame with the columns of each staged file, once per distinct list of column names (the
    schema of an empty table: no data is read)."""
    import pyarrow.parquet as pq

    seen: set[tuple[str, ...]] = set()
    for path in files:
        with store.open(path) as handle:
            schema = pq.ParquetFile(handle).schema_arrow
        if tuple(schema.names) not in seen:
            seen.add(tuple(schema.names))
            yield schema.empty_table().to_pandas()


def _keys_frame(batch: Any) -> Any:
    """Per row: how many account and user keys it names and how many keys are not 64-hex keyed hashes."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    meeting, users, accounts = (batch.column(name) for name in ("meeting_key", "user_keys", "account_keys"))
    text = (pa.string(), pa.large_string())
    if meeting.type not in text or not all(
        (pa.types.is_list(keys.type) or pa.types.is_large_list(keys.type)) and keys.type.value_type in text
        for keys in (users, accounts)
    ):
        return _keys_frame_rows(batch)  # a staged file with other types: the row-by-row reading

    def well_formed(keys: Any) -> Any:  # the same test as _HEX_KEY.match (`$` also before a final newline)
        return pc.fill_null(pc.match_substring_regex(keys, r"^[0-9a-f]{64}\n?$"), False).to_numpy(zero_copy_only=False)

    malformed = (~well_formed(meeting)).astype(np.int64)
    for keys in (users, accounts):
        parents = pc.list_parent_indices(keys).to_numpy(zero_copy_only=False)
        malformed += np.bincount(parents[~well_formed(pc.list_flatten(keys))], minlength=batch.num_rows)
    return pd.DataFrame(
        {
            "artifact_type": batch.column("artifact_type").to_pandas(),
            "user_keys": pc.fill_null(pc.list_value_length(users), 0).to_numpy(zero_copy_only=False).astype(np.int64),
            "account_keys": pc.fill_null(pc.list_value_length(accounts), 0)
            .to_numpy(zero_copy_only=False)
            .astype(np.int64),
            "malformed_keys": malformed,
        }
    )


def _keys_frame_rows(batch: Any) -> Any:
    """`_keys_frame` read row by row, for staged columns of any type."""
    import pandas as pd

    meeting = batch.column("meeting_key").to_pylist()
    users = batch.column("user_keys").to_pylist()
    accounts = batch.column("account_keys").to_pylist()
    malformed = [
        sum(1 for key in [m, *(u or []), *(a or [])] if not isinstance(key, str) or not _HEX_KEY.match(key))
        for m, u, a in zip(meeting, users, accounts, strict=True)
    ]
    return pd.DataFrame(
        {
            "artifact_type": batch.column("artifact_type").to_pylist(),
            "user_keys": [len(u or []) for u in users],
            "account_keys": [len(a or []) for a in accounts],
            "malformed_keys": malformed,
        }
    )


class _IdBuckets:
    """The day's artifact_ids spread over `count` temporary Arrow files by a hash of the id.

    Equal ids (and all nulls) land in the same bucket, so uniqueness within every bucket is uniqueness
    across the day; each bucket holds about `rows / count` ids.
    """

    def __init__(self, folder: Path, count: int) -> None:
        self.paths = [folder / f"artifact_ids-{n:04d}.arrow" for n in range(max(1, count))]
        self._writers: list[Any] = [None] * len(self.paths)

    def add(self, ids: Any) -> None:
        import numpy as np
        import pandas as pd
        import pyarrow as pa

        if len(self.paths) == 1:
            self._write(0, ids)
            return
        hashes = pd.util.hash_array(ids.to_numpy(zero_copy_only=False)) % np.uint64(len(self.paths))
        for bucket in range(len(self.paths)):
            self._write(bucket, ids.take(pa.array(np.flatnonzero(hashes == bucket))))

    def _write(self, bucket: int, ids: Any) -> None:
        import pyarrow as pa

        if self._writers[bucket] is None:
            schema = pa.schema([("artifact_id", ids.type)])
            self._writers[bucket] = pa.ipc.new_file(str(self.paths[bucket]), schema)
        self._writers[bucket].write_batch(pa.record_batch([ids], names=["artifact_id"]))

    def frames(self) -> Iterator[Any]:
        """One frame per bucket (an empty one for a bucket no id fell into), read back one at a time."""
        import pandas as pd
        import pyarrow as pa

        for bucket, path in enumerate(self.paths):
            writer, self._writers[bucket] = self._writers[bucket], None
            if writer is None:
                yield pd.DataFrame({"artifact_id": []})
                continue
            writer.close()
            with pa.OSFile(str(path)) as source:
                frame = pa.ipc.open_file(source).read_all().to_pandas()
            path.unlink()
            yield frame

    def close(self) -> None:
        for writer in self._writers:
            if writer is not None:
                writer.close()


def reconciliation_frame(ledger: Ledger, counts: dict[str, Any]) -> Any:
    """One row per ledger: the units that came in and the outcomes actually written for them."""
    import pandas as pd

    content, telemetry = counts["content"], counts["telemetry"]
    telemetry_outcomes = (
        ledger.aggregated + telemetry["suppressed_events"] + telemetry["out_of_partition"]
        + telemetry.get("duplicate", 0) + ledger.telemetry_quarantined
    )  # fmt: skip
    ledgers = [
        ("content", content["units_in"], ledger.content_accounted),
        ("content_published", content["published"], ledger.published),
        ("telemetry", telemetry["lines_read"], telemetry_outcomes),
        ("telemetry_aggregated", telemetry["aggregated"], ledger.aggregated),
    ]
    return pd.DataFrame(ledgers, columns=["ledger", "units_in", "accounted_for"])


# --- running them ---------------------------------------------------------------------------------


# Imported by Great Expectations' module of expectations for expectations and renderers no suite here
# uses (KL divergence, KS tests, their charts): ~40% of importing GX (1.1 of 2.8 s), spent in the
# run's own process while its workers gate the day, and again in every validate task.
DEFERRED_IMPORTS = ("scipy.stats", "altair")


class _DeferredModule(types.ModuleType):
    """Stands in `sys.modules` for a module not imported yet: the first attribute anyone asks of it
    imports the real module, which then replaces the stand-in everywhere it was bound (its namespace
    is copied in). Nothing is lost: a program that uses the module gets it, later."""

    def __getattr__(self, attribute: str) -> Any:
        with _DEFERRED_LOCK:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
            vars(self).update(vars(real))
        return getattr(real, attribute)


_DEFERRED_LOCK = threading.RLock()


def _defer_imports(names: tuple[str, ...]) -> None:
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)  # imports a parent package only (scipy's own is light)
        if spec is not None:  # installed: its stand-in carries its spec, so find_spec answers as before
            stand_in = _DeferredModule(name)
            stand_in.__spec__ = spec
            sys.modules[name] = stand_in


@rare_collections()
def import_great_expectations() -> None:
    """Import Great Expectations (~2-3 s, mostly its expectation classes), e.g. ahead of time while
    other processes gate the day; later imports are free. `DEFERRED_IMPORTS` are imported when used."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # before the import: GX reads it then
    if "great_expectations" not in sys.modules:
        _defer_imports(DEFERRED_IMPORTS)
    import great_expectations.expectations  # noqa: F401


class _Runner:
    """An in-memory context, one checkpoint per suite, Data Docs built into `root`.

    Every checkpoint run stores its validation result in the context; `render_docs` renders the pages of
    the suites and batches run so far, once per part of the checks (the content suites' pages while the
    telemetry is still aggregated, the rest and the index after), rather than by an
    `UpdateDataDocsAction` after every batch (which re-rendered the index and recompiled the templates
    each time). Ephemeral, not a file context: a file context rewrites its YAML project file at every
    data source, asset and suite added (0.15 s a run), and nothing of it outlives the run but the Data
    Docs, which a site writes wherever it is told.
    """

    def __init__(self, root: Path) -> None:
        import_great_expectations()
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )
        from great_expectations.expectations.row_conditions import Column

        self.gx, self.gxe, self.column = gx, gxe, Column
        self.docs = root / "data_docs"
        views = "consent_gate.gx_views"  # GX's views, compiling the templates once a process
        sections = ("expectations", "validations", "profiling")  # GX's default sections
        site = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(self.docs)},
            "site_index_builder": {
                "class_name": "DefaultSiteIndexBuilder",
                "view": {"module_name": views, "class_name": "IndexPageView"},
            },
            "site_section_builders": {
                name: {"view": {"module_name": views, "class_name": "PageView"}} for name in sections
            },
        }
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            data_docs_sites={"local_site": site},
            progress_bars=ProgressBarsConfig(globally=False),  # no bar per batch in task logs
        )
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self.source = self.context.data_sources.add_pandas("staged")
        self.checkpoints: dict[str, Any] = {}
        self._unrendered: list[Any] = []  # the validation results no page shows yet

    def add_suite(self, name: str, expectations: list[Any]) -> None:
        gx = self.gx
        asset = self.source.add_dataframe_asset(name)
        batch_definition = asset.add_batch_definition_whole_dataframe(f"{name}_batch")
        suite = self.context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        if len(suite.expectations) != len(expectations):  # the constructor logs an invalid one and goes on
            raise RuntimeError(f"suite {name}: {len(expectations) - len(suite.expectations)} expectations not added")
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}_validation", data=batch_definition, suite=suite)
        )
        self.checkpoints[name] = self.context.checkpoints.add(
            gx.Checkpoint(
                name=f"{name}_checkpoint",
                validation_definitions=[definition],
                actions=[],
                result_format=RESULT_FORMAT,
            )
        )

    def run(self, outcome: SuiteOutcome, frame: Any) -> None:
        result = self.checkpoints[outcome.suite].run(batch_parameters={"dataframe": frame})
        self._unrendered.extend(result.run_results)  # their identifiers
        outcome.batches += 1
        for run_result in result.run_results.values():
            for expectation in run_result.results:
                row = sanitized_result(expectation, outcome.batches)
                outcome.expectations += 1
                outcome.results.append(row)
                if not row["success"]:
                    label = f"{row['expectation']}({row['kwargs'].get('column') or row['kwargs'].get('column_A', '')})"
                    if label not in outcome.failed:
                        outcome.failed.append(label)

    def render_docs(self, suites: tuple[str, ...], *, index: bool) -> Path:
        """Render the pages of `suites` and of every batch run since the last call into the Data Docs
        folder, and with `index` the index page, which lists every page rendered."""
        from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

        pages = [*self._unrendered, *(ExpectationSuiteIdentifier(name=suite) for suite in suites)]
        if pages:  # none would mean all of them to GX
            self.context.build_data_docs(resource_identifiers=pages, build_index=index)
        self._unrendered.clear()
        return self.docs


class _StageSuites:
    """Every suite over one staged day, in two parts: `check_content` reads only the staged content (what
    the gate's shards wrote); `finish` reads the aggregates and the stage's counts, renders the Data Docs
    and writes the reports into `audit/`. A run starts the first while the telemetry is still being
    aggregated (`start_checks`). `close` removes the context's temporary folder."""

    def __init__(self, store: OutputStore, stage_root: str, day: date, k: int) -> None:
        self.store, self.stage_root = store, stage_root
        self._folder = tempfile.TemporaryDirectory(prefix="consent-gate-gx-")
        try:
            runner = self.runner = _Runner(Path(self._folder.name) / "gx")
            column, gxe = runner.column, runner.gxe
            runner.add_suite("content_columns", _columns_expectations(gxe, column))
            runner.add_suite("content", _content_expectations(gxe, column))
            runner.add_suite("content_keys", _keys_expectations(gxe, column))
            runner.add_suite("content_ids", _ids_expectations(gxe, column))
            runner.add_suite("aggregates", _aggregate_expectations(gxe, column, k=k, day=day))
            runner.add_suite("reconciliation", _reconciliation_expectations(gxe, column))
        except BaseException:
            self._folder.cleanup()
            raise
        self.outcomes = {name: SuiteOutcome(name) for name in SUITES}

    def check_content(self) -> None:
        """One pass over the staged content feeds all three content suites."""
        import pandas as pd
        import pyarrow as pa

        store, runner, outcomes = self.store, self.runner, self.outcomes
        content_files = store.files(f"{self.stage_root}/content", ".parquet")
        for frame in _columns_frames(store, content_files):
            runner.run(outcomes["content_columns"], frame)
        ids = _IdBuckets(Path(self._folder.name), -(-store.parquet_rows(content_files) // NARROW_BATCH_ROWS))
        keys: list[Any] = []
        try:
            for batch in _parquet_batches(store, content_files):
                runner.run(outcomes["content"], _content_frame(batch))
                keys.append(_keys_frame(batch))
                if sum(len(frame) for frame in keys) >= NARROW_BATCH_ROWS:
                    runner.run(outcomes["content_keys"], pd.concat(keys, ignore_index=True))
                    keys.clear()
                ids.add(batch.column("artifact_id"))
                del batch
                pa.default_memory_pool().release_unused()  # else the allocator keeps each batch's pages: RSS creeps
            if keys:
                runner.run(outcomes["content_keys"], pd.concat(keys, ignore_index=True))
                keys.clear()
            if outcomes["content_columns"].batches == 0:  # no staged file: the published schema is checked
                runner.run(outcomes["content_columns"], CONTENT_SCHEMA.empty_table().to_pandas())
            if outcomes["content"].batches == 0:  # nothing eligible
                runner.run(outcomes["content"], _content_frame(CONTENT_SCHEMA.empty_table()))
                runner.run(outcomes["content_keys"], _keys_frame(CONTENT_SCHEMA.empty_table()))
            for frame in ids.frames():
                runner.run(outcomes["content_ids"], frame)
                del frame
        finally:
            ids.close()
        runner.render_docs(CONTENT_SUITES, index=False)  # the index lists every suite: `finish` renders it

    def finish(self, counts: dict[str, Any], ledger: Ledger | None = None) -> list[SuiteOutcome]:
        """The aggregates and reconciliation suites, then the reports. `ledger`: the stage's counted
        outcomes, when the caller counted them already."""
        import pandas as pd

        store, runner, outcomes = self.store, self.runner, self.outcomes
        aggregate_files = store.files(f"{self.stage_root}/aggregates", ".parquet")
        frames = [b.to_pandas() for b in _parquet_batches(store, aggregate_files)]  # at most a few thousand groups
        frame = pd.concat(frames, ignore_index=True) if frames else AGGREGATE_SCHEMA.empty_table().to_pandas()
        runner.run(outcomes["aggregates"], frame)

        ledger = ledger if ledger is not None else stage_ledger(store, self.stage_root)
        runner.run(outcomes["reconciliation"], reconciliation_frame(ledger, counts))
        docs = runner.render_docs(STAGE_SUITES, index=True)
        write_reports(store, f"{self.stage_root}/audit", list(outcomes.values()), docs)
        return list(outcomes.values())

    def close(self) -> None:
        self._folder.cleanup()


def run_suites(
    store: OutputStore, stage_root: str, day: date, *, k: int, counts: dict[str, Any], ledger: Ledger | None = None
) -> list[SuiteOutcome]:
    """Run every suite over the stage; write sanitized results and offline Data Docs into `audit/`.
    `ledger`: the stage's counted outcomes, when the caller counted them already."""
    suites = _StageSuites(store, stage_root, day, k)
    try:
        suites.check_content()
        return suites.finish(counts, ledger)
    finally:
        suites.close()


# --- reports --------------------------------------------------------------------------------------


def verification_subjects(settings: RunSettings, day: date) -> set[str]:
    """The subject ids the day's meetings name, read from the landing zone itself (not from the gate's
    output): what the independent re-verification asks the store about. They only choose which
    consent rows it loads: a published row needing anyone outside them finds no grant and fails the
    check, so a caller may pass the snapshot step's `DayInputs.subject_ids()` instead of a second read."""
    zone = settings.zone()
    return read_day_inputs(zone, zone.meeting_folders(day)).subject_ids()


@dataclass
class _Started:
    """What `start_checks` found, kept for `finish_checks`."""

    suites: _StageSuites | None  # None: they could not be built or run
    suites_error: str | None
    verification: CheckResult


_STARTED: dict[str, _Started] = {}  # by stage root, in this process


def start_checks(settings: RunSettings, stage: Stage, subject_ids: set[str] | None = None) -> None:
    """The checks that need only the staged content, as soon as the gate's shards are done: the content
    suites, and beside them on a thread the independent re-verification (DuckDB and SQLite work, which
    leaves the interpreter to GX). What they found stays in this process for `finish_checks` (or
    `discard_checks`) of the stage; an error in either fails closed there. `subject_ids`:
    `verification_subjects` of the day, when the caller read them already."""
    from concurrent.futures import ThreadPoolExecutor

    discard_checks(stage)  # started before: those findings may be stale
    suites, error = None, None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="re-verification") as beside:
        verifying = beside.submit(_independent_verification, settings, stage, subject_ids)
        try:
            suites = _StageSuites(settings.store(), stage.root, stage.day, settings.policy.k_min_distinct_users)
            suites.check_content()
        except Exception as failure:  # noqa: BLE001  (any failure to validate is a failed check, named by type only)
            error = f"validation could not run: {type(failure).__name__}"
            if suites is not None:
                suites.close()
                suites = None
        verification = verifying.result()
    _STARTED[stage.root] = _Started(suites, error, verification)


def finish_checks(settings: RunSettings, stage: Stage) -> list[CheckResult]:
    """Every check, once the telemetry is staged too: the reconciliation of what was written, the
    aggregates and reconciliation suites and the Data Docs, with what `start_checks` found (started here
    if it was not). All results are written to the stage (`CHECKS_REPORT`); publication puts the reports
    under `_audit/dt=D/`."""
    if stage.root not in _STARTED:
        start_checks(settings, stage)
    started = _STARTED.pop(stage.root)
    store = settings.store()
    try:
        counts, ledger = staged_counts(settings, stage), stage_ledger(store, stage.root)  # counted once
        checks = reconciliation_checks(settings, stage, counts, ledger)
        error = started.suites_error
        if started.suites is not None:
            try:
                outcomes = started.suites.finish(counts, ledger)
                checks += [CheckResult(f"gx_{o.suite}", o.passed, check_details(o)) for o in outcomes]
            except Exception as failure:  # noqa: BLE001  (as in start_checks)
                error = f"validation could not run: {type(failure).__name__}"
        if error is not None:
            checks.append(CheckResult("gx_suites", False, error))
        checks.append(started.verification)
    finally:
        if started.suites is not None:
            started.suites.close()
    store.write_json(stage / CHECKS_REPORT, [asdict(c) for c in checks])
    return checks


def discard_checks(stage: Stage) -> None:
    """Forget what `start_checks` found for the stage, if anything (a run that fails in between)."""
    started = _STARTED.pop(stage.root, None)
    if started is not None and started.suites is not None:
        started.suites.close()


def _independent_verification(settings: RunSettings, stage: Stage, subject_ids: set[str] | None) -> CheckResult:
    try:
        if subject_ids is None:
            subject_ids = verification_subjects(settings, stage.day)
        store = settings.store()
        verification = verify_stage(store, stage.root, settings.consent_db, settings.secret, subject_ids)
        store.write_json(stage / "audit/validation/independent_verification.json", asdict(verification))
        return CheckResult("independent_verification", verification.passed, verification.detail())
    except Exception as error:  # noqa: BLE001
        return CheckResult("independent_verification", False, f"could not run: {type(error).__name__}")


def validate_stage(settings: RunSettings, stage: Stage, subject_ids: set[str] | None = None) -> list[CheckResult]:
    """Every check the stage must pass before publication, in this process; the results go to the
    stage. `subject_ids`: `verification_subjects` of the day, when the caller read them already."""
    try:
        start_checks(settings, stage, subject_ids)
        return finish_checks(settings, stage)
    finally:
        discard_checks(stage)
