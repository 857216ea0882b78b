"""One day through the gate, for the command line: snapshot consent, gate content, aggregate
telemetry, check, publish, each step timed; a failed attempt leaves its evidence. On a day big
enough to pay for it, worker processes gate the content in shards and aggregate the telemetry side by
side (the Airflow DAG gets the same from its mapped shard tasks). The checks run in a process of their
own when this one has not imported Great Expectations, and check the staged content as soon as the
shards are done, while the telemetry is still aggregated (the DAG's validate task checks everything
once its upstream tasks are done).

The steps are in `steps`, the checks in `checks` and `validation`, the publication transaction in
`publication`; the Airflow DAG runs the same functions as tasks (`airflow_tasks`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, Executor, Future, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from consent_gate.checks import CheckResult
from consent_gate.config import Clock, RunSettings
from consent_gate.errors import AttemptNotRecorded, GateCheckFailed
from consent_gate.layout import Stage, manifest_path
from consent_gate.processes import checker, checks_get_a_process, worker_context
from consent_gate.publication import publish_stage, record_failed_attempt
from consent_gate.steps import (
    DayInputs,
    Progress,
    aggregate_day,
    gate_content,
    read_day_inputs,
    require_arrivals,
    snapshot_consent,
)
from consent_gate.validation import discard_checks, finish_checks, start_checks

# Worker processes cost ~1-2 s of start-up (the forkserver importing pyarrow, DuckDB and the gate, then
# a fork each), about what gating 1,000 meetings does: a smaller day is faster in this process.
MEETINGS_PER_WORKER = 1000


@dataclass
class RunOutcome:
    published: bool
    manifest_path: str
    manifest: dict[str, Any]
    checks: list[CheckResult]


def run_day(
    settings: RunSettings,
    day: date,
    as_of: datetime,
    *,
    run_id: str = "cli",
    dag_run_id: str | None = None,
    progress: Progress | None = None,
    clock: Clock,
    workers: int | None = 1,
) -> RunOutcome:
    """All steps for one day. Raises GateCheckFailed after keeping the evidence. `progress` hears each
    step's time (and the snapshot's rows read and rate). `workers` > 1 gates the content in that many
    shards, each in its own process, beside one more aggregating the telemetry; None picks `workers_for`
    the day's meetings and this machine's CPUs; with workers != 1 the checks also get a process of their
    own (`_checker`). The published rows and the checks' verdicts do not depend on it. A script that
    passes workers != 1 needs the `if __name__ == "__main__":` guard worker processes are started with."""
    say = progress or (lambda _message: None)

    def timed(name: str, step: Callable[[], Any]) -> Any:
        started = time.monotonic()
        result = step()
        say(f"step {name}: {time.monotonic() - started:.1f} s")
        return result

    zone = settings.zone()
    folders = require_arrivals(zone, day)  # listed once: the snapshot, the shards and the checks share it
    checks_apart = checks_get_a_process(workers)  # asked before None is resolved: None may start processes
    if workers is None:
        workers = workers_for(len(folders), usable_cpus())
    if workers > 1:  # the worker processes' server imports the steps while this process snapshots consent
        worker_context()

    def snapshot() -> tuple[Stage, DayInputs]:
        inputs = read_day_inputs(zone, folders)
        stage = snapshot_consent(
            settings, day, as_of, run_id=run_id, dag_run_id=dag_run_id, progress=progress, clock=clock, inputs=inputs
        )
        return stage, inputs

    with _checker(checks_apart) as checks_of:
        stage, inputs = timed("snapshot_consent", snapshot)
        started: Future[None] | None = None  # the checks of the staged content, once the shards are done
        try:
            if workers == 1:
                timed("gate_content", lambda: gate_content(settings, stage, progress=progress, inputs=inputs))
                started = checks_of.submit(start_checks, settings, stage, inputs.subject_ids())
                timed("aggregate_telemetry", lambda: aggregate_day(settings, stage))
            else:
                started = timed(
                    f"gate_content ({workers} shards) + aggregate_telemetry",
                    lambda: _in_parallel(settings, stage, workers, inputs, checks_of),
                )
            checks = timed("validate", lambda: _finish(checks_of, started, settings, stage))
            if not all(c.passed for c in checks):
                failed = ", ".join(c.name for c in checks if not c.passed)
                raise GateCheckFailed(f"checks failed: {failed}")
            manifest = timed("publish", lambda: publish_stage(settings, stage, clock=clock))
        except BaseException as error:  # Ctrl-C too: no staged content outlives the run
            _drop_checks(checks_of, started, stage)
            try:
                record_failed_attempt(settings, stage, f"{type(error).__name__}: {error}", clock=clock)
            except AttemptNotRecorded as unrecorded:  # the run's own error stays the one raised
                error.add_note(str(unrecorded))
            raise
    return RunOutcome(True, manifest_path(day), manifest, checks)


def workers_for(meetings: int, cpus: int) -> int:
    """The processes a day is worth: one per CPU, and at most one per MEETINGS_PER_WORKER meetings."""
    return max(1, min(cpus, meetings // MEETINGS_PER_WORKER))


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _in_parallel(
    settings: RunSettings, stage: Stage, workers: int, inputs: DayInputs, checks_of: Executor
) -> Future[None]:
    """Gate `workers` shards and aggregate the telemetry in worker processes; once the shards are done,
    start the checks of the staged content (`start_checks`) in `checks_of` while the telemetry is still
    aggregated. The first error raised by a worker is raised here, after every process has stopped."""
    from concurrent.futures import ProcessPoolExecutor

    started = None
    with ProcessPoolExecutor(max_workers=workers + 1, mp_context=worker_context()) as pool:
        try:
            telemetry = pool.submit(_aggregate_behind_the_shards, settings, stage)
            shards = [
                pool.submit(gate_content, settings, stage, shard=s, shards=workers, inputs=inputs)
                for s in range(workers)
            ]
            for done in shards:
                done.result()
            started = checks_of.submit(start_checks, settings, stage, inputs.subject_ids())
            telemetry.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            if started is not None:
                wait([started])  # they write into the stage, which the caller is about to remove
            raise
    return started


# The telemetry worker runs behind the shards (Linux nice 7: a CPU weight of 215 against their 1024).
# The content checks can start only once every shard is done, and take one CPU; the telemetry should
# then have about as much work left, to run beside them. At equal weight it ended first and the checks
# ran alone. Measured in alternating rounds on 2 CPUs (benchmarks/README.md, stop 26): at 10k meetings
# nice 0 / 3 / 5 / 7 gave medians of 12.4 / 10.9 / 11.0 / 10.2 s (checks after everything: 10.9 s); at
# 50k, nice 7 / 10 gave 38.0 / 43.2 s (after everything: 39.7 s). At stop 27, with GX imported earlier,
# nice 4 / 7 / 10 at 10k gave 11.3 / 11.2 / 11.6 s.
TELEMETRY_NICENESS = 7


def _aggregate_behind_the_shards(settings: RunSettings, stage: Stage) -> dict[str, int]:
    os.nice(TELEMETRY_NICENESS)  # this worker process only (the pool ends with the step)
    return aggregate_day(settings, stage)


def _drop_checks(checks_of: Executor, started: Future[None] | None, stage: Stage) -> None:
    """A failed run's content checks, if started, are let finish (they write into the stage, which is
    about to be removed) and what they found is dropped."""
    if started is not None:
        wait([started])
    with suppress(BrokenExecutor):  # a checker process that died holds nothing
        checks_of.submit(discard_checks, stage).result()


def _finish(checks_of: Executor, started: Future[None], settings: RunSettings, stage: Stage) -> list[CheckResult]:
    started.result()
    return checks_of.submit(finish_checks, settings, stage).result()


class _Here(Executor):
    """Runs each task at once, in the calling thread: the checks of a process that imported GX already."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        done: Future[Any] = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except Exception as error:  # noqa: BLE001  (raised by .result(), as a process pool's would be)
            done.set_exception(error)
        return done


_HERE = _Here()


@contextmanager
def _checker(apart: bool) -> Iterator[Executor]:
    """Where the checks run. A process that has not imported Great Expectations (the command line's)
    gives them one (`processes.checker`: the command line starts it before its own imports) that
    imports it (~1.5 s of a CPU) while this one gates the day, instead of after: on a day gated in this
    one process the other CPU had nothing to do meanwhile (a 1,000-meeting day, 4.7 -> 3.9 s), and on a
    day gated in shards it takes the place of this process importing it beside them. Otherwise (`apart`
    False: `processes.checks_get_a_process`) they run here, as they are submitted."""
    if not apart:
        yield _HERE
        return
    with checker() as checks_process:
        yield checks_process
