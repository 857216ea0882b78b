"""How a run ends without publishing: the errors the command line and the Airflow tasks tell apart.

Nothing here imports pandas, pyarrow or DuckDB: the command line catches these before it has imported
what raises them (`cli`).
"""

from __future__ import annotations

import errno


class GateCheckFailed(RuntimeError):
    """A check failed: nothing was published, the attempt's evidence is kept."""


class RunRefused(RuntimeError):
    """The run cannot go ahead at all (nothing arrived, the landing zone cannot be listed): the
    published version stays as it is."""


class AttemptNotRecorded(RuntimeError):
    """A failed attempt's evidence could not be written (full disk, read-only output); says why."""


class ShrinkRefused(GateCheckFailed):
    """A rerun would replace a published day with less than half of its units (SPEC §6, revised)."""


def os_reason(error: OSError) -> str:
    """An OSError in a few words, without the paths it names."""
    code = errno.errorcode.get(error.errno or 0, type(error).__name__)
    return f"{code}: {error.strerror}" if error.strerror else code


class MalformedRecord(ValueError):
    """A record that breaks the input contract; the message names the field, not its value."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field '{field}': {problem}")
        self.field = field
        self.problem = problem


class ConsentStoreError(RuntimeError):
    """The consent store cannot be read well enough to decide anything: the run fails."""


class FutureAsOf(ValueError):
    """A consent instant later than now: refused (SPEC §3, revised 2026-11-28). Future-dated grants would
    otherwise be in force at it and re-admit content whose consent was revoked."""


class SweepError(RuntimeError):
    """Published data the sweep cannot evaluate: it stops rather than guess."""
