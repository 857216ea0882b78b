"""Instructions, not seconds: `gate_content` of one generated day, counted by valgrind's callgrind.

    .venv/bin/python benchmarks/instructions.py [--meetings 1000] [--work var/bench] [TREE ...]

A TREE is a package folder holding `consent_gate` (a checkout's `include/`, or a copy of it); without
one, this project's own `include/` is counted. Each tree's count is printed next to the first's, so a
change is measured as `instructions.py OLD_TREE include/`.

Why: on a shared 2-core machine the same run varies by 10-20% within minutes, which hides the 1-3% a
change to the content path is worth. Callgrind counts the instructions the CPU executes, and gives the
same count (within ~0.05%) however busy the machine is. It only counts what runs inside `gate_content`
(the snapshot the step reads is made first, uncounted), with `PYTHONHASHSEED=0`. The telemetry step is
not counted here: DuckDB's threads wait for each other by spinning, so its count varies by ~5% from
run to run, as much as its wall time does. A count is not a time:
a change that trades instructions for memory traffic, or work in C for work in Python, needs wall time
too (`bench.py`). Under callgrind the step runs ~50x slower: the 1,000-meeting day takes ~80 s a tree,
and the trees are counted side by side, one per CPU.

Micro-benchmarks of one function mislead here: without `gate_content`'s own garbage-collector
thresholds (`steps.rare_collections`) the collector's passes land on whichever function allocates,
and a function that seems to take 0.5 s may be worth 0.06 s of the step.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "benchmarks"))

_COLLECTED = re.compile(r"Collected : (\d+)")
# The step runs inside operator.call, a C function nothing else in the process calls: callgrind counts
# from its entry to its return (--toggle-collect), so imports and the snapshot stay out of the count.
_TOGGLE = "*operator_call*"


def _child(tree: str, data: str, out: str) -> None:
    """Runs under callgrind: the day's inputs and snapshot (uncounted), then gate_content (counted),
    given the inputs as the command line's run gives them."""
    import operator

    import bench

    sys.path.insert(0, tree)
    import consent_gate
    from consent_gate.config import utc_now
    from consent_gate.records import parse_timestamp
    from consent_gate.steps import gate_content, read_day_inputs, snapshot_consent

    if not consent_gate.__file__.startswith(tree):  # an installed copy would be counted instead
        raise SystemExit(f"consent_gate was imported from {consent_gate.__file__}, not from {tree}")
    settings = bench._settings(Path(data), Path(out))
    zone = settings.zone()
    inputs = read_day_inputs(zone, zone.meeting_folders(bench.DAY))  # as `consent-gate run` hands them on
    as_of = parse_timestamp(bench.AS_OF, "as_of")
    stage = snapshot_consent(settings, bench.DAY, as_of, run_id="instr", clock=utc_now, inputs=inputs)
    report = operator.call(gate_content, settings, stage, inputs=inputs)
    print(f"published {report.published} of {report.units_in}")


def count(tree: Path, data: Path) -> tuple[int, str]:
    """gate_content's instructions with the package at `tree`, and what it published."""
    with tempfile.TemporaryDirectory(prefix="consent-gate-instructions-") as out:
        command = [
            "valgrind", "--tool=callgrind", f"--toggle-collect={_TOGGLE}", "--callgrind-out-file=/dev/null",
            sys.executable, __file__, "--child", str(tree), str(data), out,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed for {tree}:\n{done.stderr[-2000:]}")
    return int(found.group(1)), done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="*", type=Path, help="package folders to count (default: include/)")
    parser.add_argument("--meetings", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=PROJECT / "var/bench")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: `apt-get install valgrind` (Debian/Ubuntu) or `brew install valgrind`")
    import bench

    data, _ = bench.prepare(args.work, args.meetings)
    trees = [tree.resolve() for tree in args.trees] or [PROJECT / "include"]
    for tree in trees:
        if not (tree / "consent_gate/__init__.py").is_file():
            sys.exit(f"{tree} does not hold consent_gate/: name a checkout's include/ folder")
    with ThreadPoolExecutor(max_workers=max(1, len(os.sched_getaffinity(0)))) as pool:
        counts = list(pool.map(lambda tree: count(tree, data), trees))
    first = counts[0][0]
    print(f"gate_content of the {args.meetings}-meeting day, instructions (callgrind, PYTHONHASHSEED=0):")
    for tree, (instructions, published) in zip(trees, counts, strict=True):
        print(f"  {instructions / 1e9:8.3f} G  {instructions / first:6.3f}x  {published}  {tree}")


if __name__ == "__main__":
    main()
