"""Benchmark: the gate against the floor of merely reading and parsing the same day.

For each day size (meetings) it generates a sample day once (cached under --work), then runs every
case in its own process and prints one table:

- floor: read and parse the raw landing zone only (sources.read_meeting over every meeting folder,
  every telemetry line gunzipped and json-parsed): what no gate can beat;
- gate: the whole day end to end as `consent-gate run` runs it (pipeline.run_day: snapshot, gate,
  aggregate, checks incl. GX, publish; worker processes by the day's size and the CPUs), and again
  with `--workers 1` (everything in one process), each with its CPU seconds (its own and its workers');
- ratio gate / floor, and each case's peak RSS (ru_maxrss of its largest process);
- 1 vs 2 shards: gate_content of the whole day in one process, then the two shards of the same stage
  in two processes running in parallel (wall time of the slower).

    .venv/bin/python benchmarks/bench.py --sizes 2000,5000,10000

Numbers are printed, never asserted. See benchmarks/README.md for the latest figures.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "include"))

DAY = date(2026, 11, 2)
AS_OF = "2026-11-20T00:00:00Z"


# --- cases, each run in a child process ------------------------------------------------------------


def _settings(data: Path, out: Path, batch_size: int | None = None) -> Any:
    from consent_gate.config import Policy, RunSettings

    extra = {"batch_size": batch_size} if batch_size else {}
    return RunSettings(
        raw=str(data / "raw"), out=str(out), consent_db=f"sqlite:///{data / 'consent.db'}", policy=Policy(),
        secret=(data / "hmac.key").read_bytes(), **extra,
    )  # fmt: skip


def case_floor(data: Path) -> dict[str, Any]:
    from consent_gate.sources import LandingZone, read_meeting

    zone = LandingZone(str(data / "raw"))
    units = lines = 0
    for folder in zone.meeting_folders(DAY):
        units += read_meeting(zone, folder, DAY).units_in
    for relative in zone.telemetry_files(DAY):
        with gzip.open(zone.url(relative), "rb") as handle:
            for line in handle:
                try:
                    json.loads(line)
                except ValueError:
                    pass
                lines += 1
    return {"units": units, "telemetry_lines": lines}


def case_gate(data: Path, out: Path, workers: int | None) -> dict[str, Any]:
    from consent_gate.config import utc_now
    from consent_gate.pipeline import run_day
    from consent_gate.records import parse_timestamp

    settings, as_of = _settings(data, out), parse_timestamp(AS_OF, "as_of")
    outcome = run_day(settings, DAY, as_of, run_id="bench", clock=utc_now, workers=workers)
    return {"published": outcome.manifest["counts"]["content"]["published"]}


def case_snapshot(data: Path, out: Path) -> dict[str, Any]:
    from consent_gate.config import utc_now
    from consent_gate.records import parse_timestamp
    from consent_gate.steps import snapshot_consent

    stage = snapshot_consent(_settings(data, out), DAY, parse_timestamp(AS_OF, "as_of"), run_id="bench", clock=utc_now)
    return {"attempt": stage.attempt}


def case_shard(data: Path, out: Path, attempt: str, shard: int, shards: int) -> dict[str, Any]:
    from consent_gate.layout import Stage
    from consent_gate.steps import gate_content

    report = gate_content(_settings(data, out), Stage(DAY, attempt), shard=shard, shards=shards)
    return {"meetings": report.meetings, "published": report.published}


class _Descendants:
    """This process's descendants: worker processes are the forkserver's children, which this
    process's `RUSAGE_CHILDREN` never sees. Their largest RSS is sampled every 0.25 s; their CPU is
    exact: the forkserver, alive until this process ends, carries its reaped workers' CPU seconds."""

    def __init__(self) -> None:
        import threading

        self.rss: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.25):
            for process in me.children(recursive=True):
                try:
                    self.rss[process.pid] = max(self.rss.get(process.pid, 0), process.memory_info().rss)
                except psutil.Error:  # it ended between the listing and the look
                    continue

    def stop(self) -> tuple[float, float]:
        """(CPU seconds, largest RSS in MB) of every descendant, the reaped ones included."""
        import psutil

        self._stop.set()
        self._thread.join()
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = reaped.ru_utime + reaped.ru_stime
        for process in psutil.Process().children():  # alive: the forkserver, and what it has reaped
            try:
                t = process.cpu_times()
            except psutil.Error:
                continue
            cpu += t.user + t.system + t.children_user + t.children_system
        largest = max([*self.rss.values(), reaped.ru_maxrss * 1024], default=0)
        return cpu, largest / 2**20


def child(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    descendants = _Descendants()
    if args.case == "floor":
        result = case_floor(args.data)
    elif args.case == "gate":
        result = case_gate(args.data, args.out, None if args.workers == "auto" else int(args.workers))
    elif args.case == "snapshot":
        result = case_snapshot(args.data, args.out)
    else:
        result = case_shard(args.data, args.out, args.attempt, args.shard, args.shards)
    result["seconds"] = time.perf_counter() - started
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers_cpu, workers_rss = descendants.stop()
    result["cpu_s"] = own.ru_utime + own.ru_stime + workers_cpu
    # The largest process: this one, or a worker process of a parallel run.
    result["peak_rss_mb"] = max(own.ru_maxrss / 1024, workers_rss)
    print(json.dumps(result))


# --- the driver ------------------------------------------------------------------------------------


def spawn(case: str, data: Path, out: Path | None = None, *extra: str) -> subprocess.Popen:
    command = [sys.executable, __file__, "--case", case, "--data", str(data)]
    if out is not None:
        command += ["--out", str(out)]
    return subprocess.Popen([*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result_of(process: subprocess.Popen) -> dict[str, Any]:
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"bench case failed ({' '.join(process.args)}):\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def run(case: str, data: Path, out: Path | None = None, *extra: str) -> dict[str, Any]:
    return result_of(spawn(case, data, out, *extra))


def prepare(work: Path, meetings: int) -> tuple[Path, dict[str, Any]]:
    """The sample day of `meetings` meetings, generated once and reused."""
    from consent_gate.keys import create_secret_file
    from consent_gate.sample import write_sample

    data = work / f"day-{meetings}"
    marker = data / "summary.json"
    if not marker.exists():
        started = time.perf_counter()
        summary = write_sample(data, days=1, meetings_per_day=meetings)
        if not (data / "hmac.key").exists():
            create_secret_file(data / "hmac.key")
        facts = {"meetings": summary.meetings, "telemetry_events": summary.telemetry_events,
                 "consent_events": summary.consent_events, "generated_s": time.perf_counter() - started}  # fmt: skip
        marker.write_text(json.dumps(facts))
    facts = json.loads(marker.read_text())
    facts["raw_mb"] = sum(p.stat().st_size for p in (data / "raw").rglob("*") if p.is_file()) / 1e6
    return data, facts


def standard_floor(script: Path, data: Path) -> dict[str, Any]:
    """The project-independent floor (`../shared/floor.py RAW DATE`: the standard library's parsers only),
    in its own process; its own reported seconds."""
    import re

    done = subprocess.run(
        [sys.executable, str(script), str(data / "raw"), DAY.isoformat()], capture_output=True, text=True, check=True
    )
    seconds, units, peak = re.search(r": ([\d.]+) s, (\d+) units, peak (\d+) MB", done.stdout).groups()
    return {"seconds": float(seconds), "units": int(units), "peak_rss_mb": float(peak)}


def bench_size(work: Path, meetings: int, repeat: int, floor_script: Path | None = None) -> dict[str, Any]:
    data, facts = prepare(work, meetings)
    outs = work / f"out-{meetings}"
    row: dict[str, Any] = {"meetings": meetings, **facts}

    def best(case: str, *extra: str, fresh_out: bool = False) -> dict[str, Any]:
        results = []
        for n in range(repeat):
            out = outs / f"{case}-{n}-{time.time_ns()}" if fresh_out else None
            results.append(run(case, data, out, *extra))
        return min(results, key=lambda r: r["seconds"])

    row["floor"] = best("floor")
    if floor_script is not None:  # alternating with the gate, in the same run
        row["std_floor"] = min((standard_floor(floor_script, data) for _ in range(repeat)), key=lambda r: r["seconds"])
    row["gate"] = best("gate", fresh_out=True)  # as `consent-gate run` does: workers picked by day size and CPUs
    row["gate_1"] = best("gate", "--workers", "1", fresh_out=True)  # everything in one process
    one, two = [], []
    for n in range(repeat):
        out = outs / f"shards-{n}-{time.time_ns()}"
        attempt = run("snapshot", data, out)["attempt"]
        one.append(run("shard", data, out, "--attempt", attempt, "--shard", "0", "--shards", "1"))
        attempt = run("snapshot", data, out)["attempt"]
        started = time.perf_counter()
        pair = [spawn("shard", data, out, "--attempt", attempt, "--shard", str(s), "--shards", "2") for s in (0, 1)]
        parts = [result_of(p) for p in pair]
        two.append({"seconds": time.perf_counter() - started, "peak_rss_mb": max(p["peak_rss_mb"] for p in parts),
                    "meetings": [p["meetings"] for p in parts]})  # fmt: skip
    row["shard1"] = min(one, key=lambda r: r["seconds"])
    row["shard2"] = min(two, key=lambda r: r["seconds"])
    return row


def _spin(_: int) -> float:
    """A fixed amount of pure-Python work (no memory traffic, no I/O); its seconds."""
    started = time.perf_counter()
    total = 0
    for n in range(5_000_000):
        total += n
    return time.perf_counter() - started


def parallel_yield(cpus: int, rounds: int = 3) -> float:
    """How many CPUs' worth of work `cpus` processes at once get done here, against one alone (best of
    `rounds` each): 2.0 on two idle cores, less where the CPUs are shared (a VM's siblings or neighbours).
    The gate spreads a day over the CPUs and the floor uses one, so the ratio depends on it: a gate that
    keeps both CPUs busy is slowed by the shortfall (2 CPUs that yield 1.6 make 10 CPU-s take 6.25 s)."""
    from concurrent.futures import ProcessPoolExecutor

    alone = min(_spin(0) for _ in range(rounds))
    with ProcessPoolExecutor(max_workers=cpus) as pool:
        together = min(max(pool.map(_spin, range(cpus))) for _ in range(rounds))
    return cpus * alone / together


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'meetings':>9} {'units':>9} {'telemetry':>10} {'raw MB':>7} | {'floor s':>8} {'gate s':>8} {'ratio':>6} | "
        f"{'floor RSS':>9} {'gate RSS':>9} | {'1 shard s':>9} {'2 shards s':>10} {'speed-up':>8} {'shard RSS':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['meetings']:>9} {r['floor']['units']:>9} {r['telemetry_events']:>10} {r['raw_mb']:>7.1f} | "
            f"{r['floor']['seconds']:>8.2f} {r['gate']['seconds']:>8.2f} "
            f"{r['gate']['seconds'] / r['floor']['seconds']:>6.2f} | "
            f"{r['floor']['peak_rss_mb']:>7.0f}MB {r['gate']['peak_rss_mb']:>7.0f}MB | "
            f"{r['shard1']['seconds']:>9.2f} {r['shard2']['seconds']:>10.2f} "
            f"{r['shard1']['seconds'] / r['shard2']['seconds']:>7.2f}x {r['shard2']['peak_rss_mb']:>7.0f}MB"
        )
    for r in rows:
        if "std_floor" in r:
            print(
                f"{r['meetings']:>9} meetings: ../shared/floor.py {r['std_floor']['seconds']:.2f} s "
                f"({r['std_floor']['units']} units, {r['std_floor']['peak_rss_mb']:.0f} MB), "
                f"gate / that floor {r['gate']['seconds'] / r['std_floor']['seconds']:.2f}"
            )
    for r in rows:
        print(
            f"{r['meetings']:>9} meetings: gate {r['gate']['seconds']:.2f} s wall, {r['gate']['cpu_s']:.1f} CPU-s; "
            f"in one process {r['gate_1']['seconds']:.2f} s wall, {r['gate_1']['cpu_s']:.1f} CPU-s, "
            f"peak {r['gate_1']['peak_rss_mb']:.0f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,5000,10000", help="meetings per day, comma-separated")
    parser.add_argument("--work", type=Path, default=PROJECT / "var" / "bench", help="where days are generated")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest is reported")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--floor-script", type=Path, default=PROJECT.parent / "shared" / "floor.py",
        help="the standard floor script (RAW DATE), measured in the same run when it exists",
    )  # fmt: skip
    parser.add_argument("--case", choices=["floor", "gate", "snapshot", "shard"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--attempt", help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--workers", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        child(args)
        return
    import os

    cpus = os.cpu_count() or 1
    print(
        f"consent-gate benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpus} CPUs "
        f"(yielding {parallel_yield(cpus):.2f} CPUs' work at once)",
        flush=True,
    )
    rows = []
    for meetings in (int(s) for s in args.sizes.split(",")):
        floor_script = args.floor_script if args.floor_script.is_file() else None
        rows.append(bench_size(args.work, meetings, args.repeat, floor_script))
        print(f"  measured {meetings} meetings", file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
