"""Work that must grow no faster than the input: hostile or unlucky shapes of one meeting, each read at
size n and 4n. Linear work grows ~4x; quadratic ~16x. Each case runs in its own process, which also
reports its peak RSS (the process's, imports included). `recordings_of_everyone` publishes n rows of n
keys each: its output, and so its work, grows 16x; what it shows is that memory does not.

Usage: benchmarks/hostile.py [--n 4000] [--case NAME]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT / "include"), str(PROJECT)]

TIMING = "00:00:01.000 --> 00:00:02.000\n"


def _vtt_timing_lines(n: int) -> Any:
    """A transcript of timing lines without empty lines between them (each is a cue of its own)."""
    from consent_gate.webvtt_reader import parse

    data = ("WEBVTT\n\n" + TIMING * n).encode()
    return lambda: parse(data)


def _many_participants(n: int) -> Any:
    """A meeting of n participants, and n cues, each labelled with a different one's name."""
    from consent_gate.artifacts import Meeting, Participant, read_transcript

    people = tuple(Participant(f"p{i}", f"u_{i}", "acct_1", f"Name {i}") for i in range(n))
    started = datetime(2026, 11, 2, 10, tzinfo=UTC)
    meeting = Meeting("m_1", "acct_1", started, people, started + timedelta(hours=1))
    data = ("WEBVTT\n\n" + "".join(f"{TIMING}Name {i}: hello\n\n" for i in range(n))).encode()
    return lambda: read_transcript(data, meeting, "m_1/transcript.vtt")


def _name_of_colons(n: int) -> Any:
    """A participant named with n colons, and 20 cue lines of them after another participant's label."""
    from consent_gate.speakers import attribute, speakers_by_name

    names = speakers_by_name([(":" * n, 1), ("x", 2)])
    line = "x:" + ":" * n + " hi"
    return lambda: [attribute(line, names) for _ in range(20)]


def _recordings_of_everyone(n: int) -> Any:
    """n recordings of an n-participant meeting, everyone consented: each row names every participant."""
    from consent_gate.artifacts import Artifact, Meeting, Participant
    from consent_gate.gate import asking_parts, decide, published_rows
    from consent_gate.keys import Keyer
    from consent_gate.steps import QUESTIONS_PER_PART
    from tests.builders import consent_row, snapshot

    people = tuple(Participant(f"p{i}", f"u_{i}", "acct_1", None) for i in range(n))
    meeting = Meeting("m_1", "acct_1", datetime(2026, 11, 2, 10, tzinfo=UTC), people)
    recordings = [
        Artifact(f"m_1/recording/r{i}", "recording", meeting, meeting.started_at, people, f"r{i}", media_uri="s3://b/r")
        for i in range(n)
    ]
    consent = snapshot([consent_row("c_0", "acct_1"), *(consent_row(f"c{i}", f"u_{i}") for i in range(n))])
    keyer = Keyer(b"k" * 32)

    def gate() -> int:
        rows = 0
        for part in asking_parts(recordings, QUESTIONS_PER_PART):
            rows += published_rows(part, decide(part, consent), keyer, consent.as_of).num_rows
        return rows

    return gate


CASES = {
    "vtt_timing_lines": _vtt_timing_lines,
    "many_participants": _many_participants,
    "name_of_colons": _name_of_colons,
    "recordings_of_everyone": _recordings_of_everyone,
}
SIZES = {"recordings_of_everyone": 0.5}  # n x n keys: half the n keeps its 4n within a minute


def child(case: str, n: int) -> None:
    work = CASES[case](n)
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    print(f"{'case':24} {'n':>7} {'s':>8} {'4n':>7} {'s':>8} {'growth':>7} {'peak RSS at 4n':>15}")
    for case in [args.case] if args.case else CASES:
        n = int(args.n * SIZES.get(case, 1))
        figures = []
        for size in (n, 4 * n):
            done = subprocess.run(
                [sys.executable, __file__, "--child", case, str(size)], capture_output=True, text=True, check=True
            )
            figures.append(json.loads(done.stdout.strip().splitlines()[-1]))
        small, large = figures
        growth = large["seconds"] / max(small["seconds"], 1e-9)
        print(
            f"{case:24} {n:>7} {small['seconds']:>8.3f} {4 * n:>7} {large['seconds']:>8.3f} {growth:>6.1f}x "
            f"{large['peak_rss_mb']:>12.0f} MB"
        )


if __name__ == "__main__":
    main()
