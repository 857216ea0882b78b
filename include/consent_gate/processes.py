"""A run's worker processes: the server they are forked from, and the process the checks run in.

The standard library only, so that the command line can start both before it imports pandas, pyarrow
or DuckDB itself (`cli.cmd_run`): the server then imports the steps, and the checks' process Great
Expectations, while this process is still importing and reading the day.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any


def worker_context() -> Any:
    """The context worker processes are started in, its server started now (it runs until this process
    ends; a second call finds it running). forkserver, not fork: a forked child would inherit the locks
    of this process's threads (DuckDB, fsspec); the server, a fresh single-threaded interpreter, imports
    the steps once (~0.7 s, in its own process) and forks each worker ready to run."""
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["consent_gate.steps"])
    forkserver.ensure_running()
    return context


def checks_get_a_process(workers: int | None) -> bool:
    """Whether the checks of a run given `workers` (`pipeline.run_day`'s: None picks them, 1 keeps the
    run in one process) get a process of their own: when the run may start processes and this one has
    not imported Great Expectations (the command line's has not; a test's or a worker's may have)."""
    return workers != 1 and "great_expectations" not in sys.modules


_ahead: list[ProcessPoolExecutor] = []  # a checker started ahead of the run, not yet taken


def start_checker() -> None:
    """Start the checks' process now, ahead of the run that takes it (`checker`); a second call while
    one waits does nothing."""
    if not _ahead:
        _ahead.append(_new_checker())


@contextmanager
def checker() -> Iterator[ProcessPoolExecutor]:
    """The checks' process, importing Great Expectations from its start: the one started ahead if there
    is one, else one started now. Shut down when the block ends."""
    with _ahead.pop() if _ahead else _new_checker() as started:
        yield started


def drop_checker() -> None:
    """Shut down a checker started ahead that no run took (the run was refused before it started).
    Not waited for here: its process ends once it has imported GX (~2 s), and this process waits for it
    at exit, after the refusal has been said."""
    while _ahead:
        _ahead.pop().shutdown(wait=False, cancel_futures=True)


def _new_checker() -> ProcessPoolExecutor:
    started = ProcessPoolExecutor(max_workers=1, mp_context=worker_context(), initializer=_start_checks_process)
    # The process starts at the first task, not with the pool, and starting it waits until the server has
    # imported the steps (~0.7 s): on a thread, while this process goes on with its own imports and reads.
    threading.Thread(target=_first_task, args=(started,), name="consent-gate-checker-start", daemon=True).start()
    return started


def _first_task(pool: ProcessPoolExecutor) -> None:
    with suppress(RuntimeError):  # shut down before it started: nothing to start
        pool.submit(int)


# The checks' process runs behind the shards (Linux nice 12: a CPU weight of 70 against their 1024 and
# the telemetry's 215). It imports GX while the shards run, and has seconds to spare before the content
# checks can start; the shards take that CPU. Measured in alternating rounds on 2 CPUs (benchmarks/README.md,
# stop 28): at 10k meetings nice 0 / 3 / 7 gave medians of 9.14 / 8.97 / 8.75 s, then 7 / 12 / 19 gave
# 8.77 / 8.55 / 8.68 s; at 50k, nice 0 / 12: 40.5 / 36.7 s and 34.5 / 34.8 s.
CHECKER_NICENESS = 12


def _start_checks_process() -> None:
    """Behind the shards, then Great Expectations imported."""
    os.nice(CHECKER_NICENESS)  # this process only: the checker ends with the run
    from consent_gate.validation import import_great_expectations

    import_great_expectations()
