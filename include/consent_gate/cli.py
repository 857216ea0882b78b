"""`consent-gate`: the same code as the DAGs, for one day, without a scheduler (SPEC §8).

Defaults make every command work on the embedded default: `var/` in the project holds the sample
landing zone (`var/raw`), the SQLite consent store (`var/consent.db`), the HMAC secret
(`var/hmac.key`) and the outputs (`var/out`).

A command imports what it needs when it runs: `run` starts its worker processes first (`processes`),
so they import pandas, pyarrow, DuckDB and Great Expectations while this process does the same.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from consent_gate.config import RunSettings, load_policy, project_var, utc_now
from consent_gate.errors import ConsentStoreError, FutureAsOf, GateCheckFailed, MalformedRecord, RunRefused, os_reason
from consent_gate.instants import parse_timestamp, refuse_future_as_of
from consent_gate.keys import MissingSecretError, create_secret_file, load_secret
from consent_gate.layout import attempts_folder, audit_day, content_day


def _defaults() -> dict[str, str]:
    var = project_var()
    return {
        "raw": str(var / "raw"),
        "out": str(var / "out"),
        "consent_db": f"sqlite:///{var / 'consent.db'}",
        "key_file": str(var / "hmac.key"),
    }


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def _instant(value: str) -> datetime:
    try:
        return parse_timestamp(value, "--as-of")
    except MalformedRecord as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _workers(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return int(value)


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _common(parser: argparse.ArgumentParser, *, consent: bool = True) -> None:
    defaults = _defaults()
    parser.add_argument("--raw", default=defaults["raw"], help="landing zone: a path or URI (default: %(default)s)")
    parser.add_argument("--out", default=defaults["out"], help="output root: a path or URI (default: %(default)s)")
    if consent:
        parser.add_argument(
            "--consent-db",
            default=defaults["consent_db"],
            help="SQLAlchemy URL of the consent store (default: %(default)s)",
        )
    parser.add_argument(
        "--key-file", default=defaults["key_file"], type=Path,
        help="HMAC secret file, used when $CONSENT_GATE_HMAC_KEY is unset (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--policy", default=None, help="policy YAML (default: the project's policy.yaml)")
    _debug(parser)


def _debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consent-gate", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="write a realistic sample landing zone and consent store")
    sample.add_argument(
        "--out", type=Path, default=project_var(), help="folder for raw/ and consent.db (default: %(default)s)"
    )
    sample.add_argument("--days", type=int, default=3)
    sample.add_argument("--meetings", type=int, default=40, help="meetings per day")
    sample.add_argument("--seed", type=int, default=7)
    sample.add_argument("--start", type=_day, default=None, help="first day (default: 2026-11-02)")
    _debug(sample)

    run = commands.add_parser("run", help="gate one day and publish it if every check passes")
    run.add_argument("--date", type=_day, required=True)
    run.add_argument("--as-of", type=_instant, default=None, help="consent snapshot instant (default: now)")
    run.add_argument(
        "--allow-shrink", action="store_true",
        help="let a rerun replace a published day with fewer than half of its units",
    )  # fmt: skip
    run.add_argument(
        "--workers", type=_workers, default=None,
        help="processes gating the content in shards (default: one per CPU, one per 1,000 meetings at most)",
    )  # fmt: skip
    _common(run)

    explain = commands.add_parser("explain", help="why an artifact was kept or dropped")
    explain.add_argument("--date", type=_day, required=True)
    explain.add_argument("--artifact", required=True, help="artifact_id, e.g. m_1a2b/chat/42")
    _common(explain)

    sweep = commands.add_parser("sweep", help="purge published rows whose consent was withdrawn (SPEC §7)")
    sweep.add_argument("--as-of", type=_instant, default=None, help="current consent instant (default: now)")
    sweep.add_argument("--full", action="store_true", help="re-evaluate every published day, not only affected ones")
    _common(sweep)

    ledger = commands.add_parser(
        "ledger",
        help="renew the consent ledger by reading the whole consent store, when due (at setup; the sweep DAG "
        "renews it before any daily run would have to)",
    )
    ledger.add_argument("--force", action="store_true", help="renew it even when it is not due")
    _common(ledger)

    verify = commands.add_parser("verify", help="read-only re-check of a published day against current consent")
    verify.add_argument("--date", type=_day, required=True)
    _common(verify)

    files = commands.add_parser(
        "files", help="the files of a published day, from its manifest (how to read a day on object stores)"
    )
    files.add_argument("--date", type=_day, required=True)
    files.add_argument("--dataset", choices=("content", "aggregates"), default="content")
    _common(files, consent=False)

    report = commands.add_parser("report", help="(re)write the offline HTML audit index under <out>/_audit/")
    _common(report, consent=False)
    return parser


def settings_from(args: argparse.Namespace) -> RunSettings:
    return RunSettings(
        raw=args.raw,
        out=args.out,
        consent_db=args.consent_db,
        policy=load_policy(args.policy),
        secret=load_secret(args.key_file),
        allow_shrink=getattr(args, "allow_shrink", False),
    )


def cmd_sample(args: argparse.Namespace) -> int:
    from consent_gate.sample import DEFAULT_SAMPLE_START, write_sample

    summary = write_sample(
        args.out, start=args.start or DEFAULT_SAMPLE_START, days=args.days, meetings_per_day=args.meetings,
        seed=args.seed, progress=_say,
    )  # fmt: skip
    create_secret_file(args.out / "hmac.key")
    days = ", ".join(d.isoformat() for d in summary.days)
    print(f"sample landing zone: {summary.raw_dir}")
    print(f"consent store:       sqlite:///{summary.consent_db} ({summary.consent_events} events)")
    print(f"days:                {days} ({summary.meetings} meetings, {summary.telemetry_events} telemetry events)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from consent_gate import processes

    if processes.checks_get_a_process(args.workers):
        processes.start_checker()  # before the imports below: it imports Great Expectations meanwhile
    try:
        return _run(args)
    finally:
        processes.drop_checker()


def _run(args: argparse.Namespace) -> int:
    from consent_gate.pipeline import run_day

    settings = settings_from(args)
    as_of = refuse_future_as_of(args.as_of, datetime.now(UTC), "--as-of") if args.as_of else datetime.now(UTC)
    _say(f"gating {args.date} with consent as of {as_of.isoformat()}")
    try:
        outcome = run_day(settings, args.date, as_of, run_id="cli", progress=_say, clock=utc_now, workers=args.workers)
    except (ConsentStoreError, RunRefused, OSError) as error:
        _say(f"FAILED, nothing published: {one_line(error)}")
        return 1
    except GateCheckFailed as error:
        _say(f"FAILED, nothing published: {one_line(error)}")
        if not getattr(error, "__notes__", None):  # a note says the evidence could not be written
            print(f"failed attempt's evidence: {args.out}/{attempts_folder(args.date)}/", file=sys.stderr)
        return 1
    counts = outcome.manifest["counts"]
    content, telemetry = counts["content"], counts["telemetry"]
    excluded = ", ".join(f"{k} {v}" for k, v in content["excluded"].items() if v) or "none"
    print(f"published {args.date}: {content['published']} of {content['units_in']} content units")
    print(f"  excluded: {excluded}")
    print(f"  quarantined: {counts['quarantined']} units ({counts['quarantine_ratio']:.3%})")
    print(
        f"  telemetry: {telemetry['aggregated']} events in published groups, "
        f"{telemetry['suppressed_groups']} groups suppressed (k={settings.policy.k_min_distinct_users})"
    )
    if telemetry.get("read_one_by_one_batches"):
        print(
            f"  telemetry: {telemetry['read_one_by_one_batches']} batches of lines read one by one after the "
            "column-wise reading failed (the same events, read slower): please report it"
        )
    for check in outcome.checks:
        print(f"  check {check.name}: {'passed' if check.passed else 'FAILED'}")
    print(f"content:   {args.out}/{content_day(args.date)}/")
    print(f"manifest:  {args.out}/{outcome.manifest_path}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from consent_gate.explain import explain_with_settings

    result = explain_with_settings(settings_from(args), args.date, args.artifact, datetime.now(UTC))
    print(result.render())
    return 0 if result.outcome != "unknown" else 2


def cmd_sweep(args: argparse.Namespace) -> int:
    from consent_gate.errors import SweepError
    from consent_gate.sweep import sweep

    settings = settings_from(args)
    as_of = refuse_future_as_of(args.as_of, datetime.now(UTC), "--as-of") if args.as_of else datetime.now(UTC)
    _say(f"sweeping {args.out} against consent as of {as_of.isoformat()}")
    try:
        outcome = sweep(
            settings.store(), settings.consent_db, settings.secret, as_of, full=args.full,
            max_stage_age=timedelta(hours=settings.policy.max_stage_age_hours),
            clock=utc_now,
            full_every=timedelta(hours=settings.policy.full_sweep_every_hours),
        )  # fmt: skip
    except (ConsentStoreError, SweepError) as error:
        _say(f"FAILED, the watermark did not move: {error}")
        return 1
    print(f"sweep {outcome.sweep_id} ({outcome.mode}): {outcome.days_scanned} published days scanned")
    for purge in outcome.purges:
        reasons = ", ".join(f"{k} {v}" for k, v in purge["removed_by_reason"].items())
        print(f"  purged {purge['partition']}: {purge['rows_removed']} rows ({reasons})")
    if outcome.abandoned_stages_deleted:
        print(f"  deleted {outcome.abandoned_stages_deleted} abandoned stage(s) of runs that never ended")
    print(f"purge record: {args.out}/{outcome.log_path}")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    from consent_gate.steps import NOT_DUE, renew_consent_ledger

    outcome = renew_consent_ledger(settings_from(args), now=datetime.now(UTC), force=args.force, progress=_say)
    if outcome["renewed"]:
        print(
            f"consent ledger renewed ({outcome['why']}): {outcome['rows_read']:,} rows read, "
            f"bound {outcome['bound']}; runs read only the rows recorded from it on and their day's subjects'"
        )
        return 0
    print(f"consent ledger not renewed: {outcome['why']}")
    return 0 if outcome["why"] == NOT_DUE else 1


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every published row of the day is still eligible now, 1 when not, 2 when nothing is there."""
    from consent_gate.verify import VerificationError, verify_published_day

    settings = settings_from(args)
    store = settings.store()
    if not store.files(content_day(args.date), ".parquet") and not store.exists(audit_day(args.date)):
        print(f"consent-gate: {args.date} is not published under {args.out}", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    try:
        result = verify_published_day(store, args.date, settings.consent_db, settings.secret, now)
    except VerificationError as error:
        _say(f"FAILED: {error}")
        return 1
    print(f"verify {args.date} against consent as of {now.isoformat()}: {'OK' if result.passed else 'NOT ELIGIBLE'}")
    print(f"  {result.detail()}")
    return 0 if result.passed else 1


def cmd_files(args: argparse.Namespace) -> int:
    """One URI a line: exactly the published version's files, even while a new version is being copied."""
    from consent_gate.publish import published_files
    from consent_gate.stores import storage_for

    uris = published_files(storage_for(args.out), args.date.isoformat(), args.dataset)
    if not uris:
        print(f"consent-gate: {args.date} is not published under {args.out}", file=sys.stderr)
        return 2
    print("\n".join(uris))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from consent_gate.audit import write_index
    from consent_gate.stores import storage_for

    print(f"{args.out}/{write_index(storage_for(args.out))}")
    return 0


COMMANDS = {
    "sample": cmd_sample, "run": cmd_run, "explain": cmd_explain, "sweep": cmd_sweep, "ledger": cmd_ledger,
    "verify": cmd_verify, "files": cmd_files, "report": cmd_report,
}  # fmt: skip


def one_line(error: BaseException) -> str:
    """The error and its notes (what cleanup could not do) on one line."""
    # An OSError's text names paths (of the output, never content); its code says what happened.
    first = os_reason(error) if isinstance(error, OSError) else str(error) or type(error).__name__
    parts = [first, *getattr(error, "__notes__", ())]
    return "; ".join(" ".join(part.split()) for part in parts)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MissingSecretError as error:
        print(f"consent-gate: {error}", file=sys.stderr)
        return 2
    except FutureAsOf as error:
        print(f"consent-gate: {error}", file=sys.stderr)
        return 2
    except ConsentStoreError as error:  # a bad --consent-db, a missing or unreadable store: one line
        print(f"consent-gate: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # one line for the operator; the traceback only with --debug
        if getattr(args, "debug", False):
            raise
        detail = f"{type(error).__name__}: {one_line(error)}"
        print(f"consent-gate: {args.command} failed: {detail} (--debug for the traceback)", file=sys.stderr)
        return 1


def command() -> None:
    """The `consent-gate` command: `main`, then exit. The objects left (Great Expectations alone makes
    millions) are moved out of the garbage collector's reach first: the interpreter's last collections
    over them took ~0.7 s of every run's exit, after the work was done and its files closed."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    command()
