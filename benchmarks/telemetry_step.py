"""The telemetry step alone: `aggregates.aggregate_telemetry` over one synthetic day, seconds and peak RSS.

    .venv/bin/python benchmarks/telemetry_step.py [--events 1000000] [--writing compact|spaced]
        [--work var/bench/telemetry]

Writes the day once (4 gzip parts, 20k users, 720 groups, distinct event ids), each line as compact JSON
(what `telemetry.read_lines` reads column-wise) or spaced (`json.dumps`' default: every line read one
by one by the strict reader), then times one aggregation in this process. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import sys
import time
from datetime import date
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "include"))
DAY = date(2026, 11, 2)


WRITINGS = {"compact": json.JSONEncoder(separators=(",", ":")).encode, "spaced": json.JSONEncoder().encode}


def write_day(root: Path, events: int, writing: str) -> list[str]:
    folder = root / f"telemetry/dt={DAY}"
    if not folder.exists():
        folder.mkdir(parents=True)
        rng = random.Random(1)
        for part in range(4):
            with gzip.open(folder / f"part-{part}.jsonl.gz", "wt") as handle:
                for n in range(events // 4):
                    clock = f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z"
                    event = {
                        "event_id": f"e{part}_{n}", "ts": f"{DAY}T{clock}", "account_id": "a1",
                        "user_id": f"u{rng.randrange(20000)}", "meeting_id": "m1",
                        "event_type": rng.choice(["join", "leave", "quality_sample", "screen_share"]),
                        "client_version": f"5.{rng.randrange(10)}.1",
                        "platform": rng.choice(["mac", "win", "linux", "web", "ios", "android"]),
                        "region": rng.choice(["us", "eu", "ap"]), "duration_ms": rng.randrange(100000),
                    }  # fmt: skip
                    handle.write(WRITINGS[writing](event) + "\n")
    return sorted(str(p) for p in folder.glob("*.jsonl.gz"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--writing", choices=sorted(WRITINGS), default="compact")
    parser.add_argument("--work", type=Path, default=PROJECT / "var/bench/telemetry")
    args = parser.parse_args()
    root = args.work / f"{args.events}-{args.writing}"
    files = write_day(root, args.events, args.writing)
    from consent_gate.aggregates import aggregate_telemetry

    started = time.perf_counter()
    result = aggregate_telemetry(files, landing_root=str(root), day=DAY, k=10)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.events} events, {args.writing}: {seconds:.1f} s, peak RSS {peak:.0f} MB, "
        f"{result.groups.num_rows} groups"
    )


if __name__ == "__main__":
    main()
