"""How a run ends without publishing: the errors the command line and the Airflow tasks tell apart."""

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


class SweepError(RuntimeError):
    """Published data the sweep cannot evaluate: it stops rather than guess."""
