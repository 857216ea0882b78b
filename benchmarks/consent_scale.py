"""Benchmark: consent stores of growing size against the same day (issue 10).

Generates one sample day (`--meetings`, cached under --work), then for each store size (`--events`)
a copy of the sample's SQLite consent store with extra events of subjects that have no meeting (three
per subject, grants and revocations, all visible at as_of), indexed as `consent-gate sample` indexes it.
Each case runs `consent-gate run` twice in its own process (wall time, peak RSS via wait4, the per-step
times it prints): the first reads the whole store and writes the consent ledger, the rerun reads only
the day's subjects' rows and what is new since the ledger's bound. With `--renew-first`, `consent-gate
ledger` reads the whole store first (timed: what the sweep DAG's renewal costs), and both runs read
from the ledger. Then three `consent-gate sweep`s:
the first (full: no watermark yet), a second with no new
revocation, and a third after 100 revocations of users who have published rows (taken out of the store
again afterwards, so the cached store stays as generated). The published rows must be the same for
every store (compared by sha256 of the sorted content table). With `--postgres URL`, each store is
also copied into that PostgreSQL database (COPY, every column text, the same indexes) and measured there.

    .venv/bin/python benchmarks/consent_scale.py --meetings 2000 --events 1000,2000000 \
        [--postgres postgresql+psycopg2://root@localhost/consent_bench]

Numbers are printed, never asserted. See benchmarks/README.md for the recorded figures.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "include"))

DAY = "2026-11-02"
AS_OF = "2026-11-20T00:00:00Z"
CLI = [sys.executable, "-m", "consent_gate.cli"]


def sample(work: Path, meetings: int) -> Path:
    folder = work / f"sample-{meetings}"
    if not (folder / "consent.db").exists():
        subprocess.run([*CLI, "sample", "--out", str(folder), "--days", "1", "--meetings", str(meetings)], check=True)
    return folder


def store_of(sample_dir: Path, work: Path, events: int) -> Path:
    """The sample's store plus enough events of other subjects to hold `events` in all (cached)."""
    from consent_gate.consent_store import create_consent_indexes

    target = work / f"consent-{sample_dir.name}-{events}.db"
    if target.exists():
        create_consent_indexes(f"sqlite:///{target}")  # the indexes this version expects
        return target
    partial = target.with_suffix(".partial")
    shutil.copyfile(sample_dir / "consent.db", partial)
    with sqlite3.connect(partial) as connection:
        have = connection.execute("SELECT count(*) FROM consent_events").fetchone()[0]
        extra = max(events - have, 0)
        batch = 200_000
        for start in range(0, extra, batch):
            connection.executemany(
                "INSERT INTO consent_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (f"bench_{n:09d}", "user" if n % 5 else "account", f"bench_subject_{n // 3:09d}", "ai_training",
                     "*" if n % 4 else "chat", "revoke" if n % 3 == 2 else "grant",
                     f"2026-{1 + n % 10:02d}-{1 + n % 28:02d}T{n % 24:02d}:00:00Z",
                     f"2026-{1 + n % 10:02d}-{1 + n % 28:02d}T{n % 24:02d}:00:01Z", "2026-01")
                    for n in range(start, min(start + batch, extra))
                ),
            )  # fmt: skip
        connection.commit()
    create_consent_indexes(f"sqlite:///{partial}")
    os.replace(partial, target)
    return target


REVOKED = "bench_revoke_"


class Store:
    """A consent store under test: the generated SQLite file, or a PostgreSQL copy of it."""

    def __init__(self, db: Path, postgres: str | None = None) -> None:
        self.db, self.postgres = db, postgres
        self.url = postgres or f"sqlite:///{db}"

    def execute(self, sql: str, rows: list[tuple] | None = None) -> list[tuple]:
        if self.postgres is None:
            with sqlite3.connect(self.db) as connection:
                if rows is not None:
                    connection.executemany(sql, rows)
                    return []
                return connection.execute(sql).fetchall()
        import sqlalchemy as sa

        engine = sa.create_engine(self.postgres)
        try:
            raw = engine.raw_connection()
            with raw.cursor() as cursor:
                sql = sql.replace("?", "%s")
                if rows is not None:
                    cursor.executemany(sql, rows)
                    result = []
                else:
                    cursor.execute(sql)
                    result = cursor.fetchall() if cursor.description else []
            raw.commit()
            raw.close()
            return result
        finally:
            engine.dispose()

    def count(self) -> int:
        return self.execute("SELECT count(*) FROM consent_events")[0][0]

    def revoke_published_users(self, count: int) -> int:
        """Append `count` revocations, recorded now, of the sample's users (who have meetings)."""
        from datetime import UTC, datetime

        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        users = [r[0] for r in self.execute(
            "SELECT DISTINCT subject_id FROM consent_events WHERE subject_type = 'user' "
            f"AND event_id NOT LIKE 'bench_%' ORDER BY subject_id LIMIT {int(count)}"
        )]  # fmt: skip
        self.execute(
            "INSERT INTO consent_events VALUES (?, 'user', ?, 'ai_training', '*', 'revoke', ?, ?, '2026-01')",
            [(f"{REVOKED}{n:04d}", user, now, now) for n, user in enumerate(users)],
        )
        return len(users)

    def forget_revocations(self) -> None:
        self.execute(f"DELETE FROM consent_events WHERE event_id LIKE '{REVOKED}%'")


def postgres_copy(db: Path, url: str) -> Store:
    """The SQLite store copied into `url` (its consent_events replaced: every column text), indexed as
    `consent-gate sample` indexes; streamed through COPY, never held whole."""
    import io

    import pyarrow.csv as pacsv
    import sqlalchemy as sa

    from consent_gate.consent import COLUMNS
    from consent_gate.consent_store import consent_batches, create_consent_indexes

    engine = sa.create_engine(url)
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS consent_events")
            cursor.execute(f"CREATE TABLE consent_events ({', '.join(c + ' text' for c in COLUMNS)})")
            with consent_batches(f"sqlite:///{db}") as reader:
                for batch in reader:
                    buffer = io.BytesIO()
                    pacsv.write_csv(batch.select(list(COLUMNS)), buffer, pacsv.WriteOptions(include_header=False))
                    buffer.seek(0)
                    cursor.copy_expert("COPY consent_events FROM STDIN WITH (FORMAT csv)", buffer)
        raw.commit()
    finally:
        raw.close()
        engine.dispose()
    create_consent_indexes(url)
    return Store(db, url)


def timed_process(argv: list[str], log: Path) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (bytes) and exit code of one child process; its stderr goes to `log`."""
    started = time.monotonic()
    with open(log, "w") as stderr:
        process = subprocess.Popen(argv, stdout=stderr, stderr=stderr, cwd=PROJECT)
        _, status, usage = os.wait4(process.pid, 0)
    return time.monotonic() - started, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def published_digest(out: Path) -> tuple[int, str]:
    import pyarrow.dataset as ds

    table = ds.dataset(out / f"content/dt={DAY}", format="parquet").to_table().sort_by("artifact_id")
    digest = hashlib.sha256()
    for column in ("artifact_id", "text", "user_keys", "account_keys"):
        digest.update(str(table.column(column).to_pylist()).encode())
    return table.num_rows, digest.hexdigest()[:16]


def measure(store: Store, args: argparse.Namespace, sample_dir: Path, name: str) -> tuple:
    """`consent-gate run` of the day, then three sweeps (full, quiet, after 100 revocations), each in
    its own process."""
    count = store.count()
    out = args.work / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    common = ["--consent-db", store.url, "--out", str(out), "--key-file", str(sample_dir / "hmac.key")]
    run_log = args.work / f"run-{name}.log"
    runs = []
    if args.published:
        shutil.copytree(args.published, out)
        runs.append(("first", 0.0, 0, (0, "(not run: --published)"), ["(not run)"]))
    if args.renew_first and not args.published:  # the whole-store read off the run's path, as the sweep DAG does
        log = run_log.with_suffix(".ledger.log")
        wall, rss, code = timed_process([*CLI, "ledger", *common], log)
        said = [line for line in log.read_text().splitlines() if "ledger" in line][-1:]
        runs.append(("ledger", wall, rss, (0, "(renewal)" if code == 0 else "FAILED"), said))
    # the first run reads the whole store and writes the consent ledger (unless --renew-first wrote it);
    # the rerun reads from the ledger
    for attempt in [] if args.published else ["first", "rerun"]:
        log = run_log.with_suffix(f".{attempt}.log")
        wall, rss, code = timed_process(
            [*CLI, "run", "--date", DAY, "--as-of", AS_OF, "--raw", str(sample_dir / "raw"), *common], log
        )
        steps = [line.split("] ", 1)[-1] for line in log.read_text().splitlines() if "step " in line]
        runs.append((attempt, wall, rss, published_digest(out) if code == 0 else (0, "FAILED"), steps))
    sweeps = []
    for n in range(3):
        if n == 2:
            store.revoke_published_users(100)
        try:
            sweeps.append(timed_process([*CLI, "sweep", *common], args.work / f"sweep-{name}-{n}.log"))
        finally:
            if n == 2:
                store.forget_revocations()
    return count, runs, sweeps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meetings", type=int, default=2000)
    parser.add_argument("--events", default="1000,2000000")
    parser.add_argument("--work", type=Path, default=PROJECT / "var/bench-consent")
    parser.add_argument(
        "--published", type=Path, help="sweep a copy of this published output instead of running the day first"
    )
    parser.add_argument(
        "--renew-first", action="store_true",
        help="renew the consent ledger (`consent-gate ledger`, timed) before the first run, as the sweep DAG does",
    )  # fmt: skip
    parser.add_argument(
        "--postgres",
        help="also copy each store into this PostgreSQL database (its consent_events is replaced) "
        "and measure it there, e.g. postgresql+psycopg2://root@localhost/consent_bench",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sample_dir = sample(args.work, args.meetings)
    rows = []
    for events in [int(e) for e in args.events.split(",")]:
        db = store_of(sample_dir, args.work, events)
        stores = [("sqlite", Store(db))]
        if args.postgres:
            started = time.monotonic()
            stores.append(("postgresql", postgres_copy(db, args.postgres)))
            print(f"copied {events:,} events into PostgreSQL in {time.monotonic() - started:.0f} s", flush=True)
        for backend, store in stores:
            rows.append((backend, *measure(store, args, sample_dir, f"{events}-{backend}")))
            count, runs, sweeps = rows[-1][1:]
            for name, wall, rss, published, steps in runs:
                print(f"{backend} {count:,} events, {name}: {wall:.1f} s, {rss / 1e6:.0f} MB, published {published}; "
                      f"{'; '.join(steps)}")  # fmt: skip
            print("  sweeps: " + "; ".join(f"{w:.1f} s, {r / 1e6:.0f} MB (exit {c})" for w, r, c in sweeps), flush=True)
    print("\n| store | consent events | run | wall | peak RSS | published rows (digest) | steps |")
    print("|---|---|---|---|---|---|---|")
    for backend, count, runs, _ in rows:
        for name, wall, rss, published, steps in runs:
            print(
                f"| {backend} | {count:,} | {name} | {wall:.1f} s | {rss / 1e9:.2f} GB "
                f"| {published[0]} ({published[1]}) | {', '.join(s.removeprefix('step ') for s in steps)} |"
            )
    print("\n| store | consent events | sweeps full / quiet / 100 revocations |")
    print("|---|---|---|")
    for backend, count, _, sweeps in rows:
        print(f"| {backend} | {count:,} | {' / '.join(f'{w:.1f} s, {r / 1e9:.2f} GB' for w, r, _ in sweeps)} |")


if __name__ == "__main__":
    main()
