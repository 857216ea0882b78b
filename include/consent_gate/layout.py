"""Where everything lives in the output storage, and how its names are read back: one place.

Every storage path and id format is built here and parsed here, so a folder or id format changes in
one module and no reader splits a name it did not build:

    content/dt=D/part-NNNN[.v<version>].parquet     the published content of day D
    aggregates/dt=D/part-0000[.v<version>].parquet  the published telemetry groups
    _audit/dt=D/manifest.json                       the day's evidence; the manifest is the commit
    _audit/dt=D/attempts/<attempt>.json             every attempt's manifest (the history)
    _audit/sweeps/<sweep_id>.json                   the revocation sweep's purge logs
    _staging/dt=D/<attempt>/                        one attempt at day D, until published or ended

An attempt id (and a sweep id) is `<base>__<token>`: the token is unique per attempt and names the
versioned data files it publishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

CONTENT = "content"
AGGREGATES = "aggregates"
AUDIT = "_audit"
STAGING = "_staging"
DATASETS = (CONTENT, AGGREGATES)  # the published data folders; the audit folder is the evidence
MANIFEST = "manifest.json"
HISTORY = "attempts"  # inside a day's audit folder: every manifest version and failed attempt
SWEEPS = f"{AUDIT}/sweeps"
WATERMARK = f"{SWEEPS}/watermark.json"
CONSENT_LEDGER = f"{AUDIT}/consent/ledger.json"  # the whole store's evidence by recorded day (consent_ledger)

_DAY_PREFIX = "dt="
_ID_SEPARATOR = "__"

# Inside a stage (relative to Stage.root).
RUN_RECORD = "run.json"
CHECKS_REPORT = "reports/checks.json"
TELEMETRY_REPORT = "reports/telemetry.json"
SNAPSHOT_FILE = "consent/snapshot.parquet"
SNAPSHOT_SUBJECTS = "consent/subjects.parquet"  # the subjects the snapshot file was judged for


def _iso(day: date | str) -> str:
    return day.isoformat() if isinstance(day, date) else day


def day_name(day: date | str) -> str:
    """`dt=D`: the folder name of a day's partition."""
    return f"{_DAY_PREFIX}{_iso(day)}"


def day_folder(dataset: str, day: date | str) -> str:
    """`<dataset>/dt=D`: a day's partition of a dataset (content, aggregates, _audit, _staging)."""
    return f"{dataset}/{day_name(day)}"


def content_day(day: date | str) -> str:
    return day_folder(CONTENT, day)


def aggregates_day(day: date | str) -> str:
    return day_folder(AGGREGATES, day)


def audit_day(day: date | str) -> str:
    return day_folder(AUDIT, day)


def staging_day(day: date | str) -> str:
    return day_folder(STAGING, day)


def day_folders_glob(dataset: str) -> str:
    """A glob for every day's partition of a dataset."""
    return f"{dataset}/{_DAY_PREFIX}*"


def manifest_path(day: date | str) -> str:
    """The published manifest of a day: the commit of its publication."""
    return f"{audit_day(day)}/{MANIFEST}"


def attempts_folder(day: date | str) -> str:
    return f"{audit_day(day)}/{HISTORY}"


def attempt_record(day: date | str, attempt: str) -> str:
    """Where an attempt's (or a sweep version's) manifest is kept in the day's history."""
    return f"{attempts_folder(day)}/{attempt}.json"


def sweep_log(sweep_id: str) -> str:
    return f"{SWEEPS}/{sweep_id}.json"


def day_of(folder: str) -> str | None:
    """The day of a `dt=D` folder name (or a path ending in one); None for any other name."""
    name = file_name(folder.rstrip("/"))
    return name.removeprefix(_DAY_PREFIX) if name.startswith(_DAY_PREFIX) else None


def days_of(folders: list[str]) -> list[str]:
    """The days of the `dt=D` folders among `folders`, in their order; other names are skipped."""
    return [day for day in map(day_of, folders) if day is not None]


def new_id(base: str, token: str) -> str:
    return f"{base}{_ID_SEPARATOR}{token}"


def attempt_suffix(attempt: str) -> str:
    """The unique token of an attempt or sweep id: it versions the data files that attempt publishes."""
    return attempt.rsplit(_ID_SEPARATOR, 1)[-1]


def file_name(path: str) -> str:
    """The last component of a storage path."""
    return path.rsplit("/", 1)[-1]


def part_name(shard: int | str, prefix: str = "part") -> str:
    """`part-0003.parquet`: a shard's file (shard numbers are zero-padded to four digits)."""
    number = f"{shard:04d}" if isinstance(shard, int) else shard
    return f"{prefix}-{number}.parquet"


def shard_of_part(path: str) -> str:
    """The shard token of a `part-NNNN.parquet` file, as written (`0003`)."""
    return file_name(path).removeprefix("part-").removesuffix(".parquet")


def content_report(shard: int | str) -> str:
    """A content shard's count report inside a stage."""
    number = f"{shard:04d}" if isinstance(shard, int) else shard
    return f"reports/content-{number}.json"


def is_content_report(path: str) -> bool:
    return file_name(path).startswith("content-")


@dataclass(frozen=True)
class Stage:
    """Where one attempt at one day is staged: `<out>/_staging/dt=D/<attempt>/`."""

    day: date
    attempt: str

    @property
    def root(self) -> str:
        return f"{staging_day(self.day)}/{self.attempt}"

    def __truediv__(self, relative: str) -> str:
        return f"{self.root}/{relative}"
