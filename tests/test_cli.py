"""The command line as a user runs it: sample → run → explain, and clear failures."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from consent_gate.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert main(["sample", "--out", str(root), "--days", "1", "--meetings", "40"]) == 0
    args = ["--raw", str(root / "raw"), "--out", str(root / "out"), "--consent-db", f"sqlite:///{root / 'consent.db'}",
            "--key-file", str(root / "hmac.key")]  # fmt: skip
    assert main(["run", "--date", "2026-11-02", "--as-of", "2026-11-20T00:00:00Z", *args]) == 0
    return root, args


def test_run_prints_where_the_outputs_are(cli_world, capsys):
    root, args = cli_world
    assert main(["run", "--date", "2026-11-02", "--as-of", "2026-11-20T00:00:00Z", *args]) == 0
    printed = capsys.readouterr().out
    assert "published 2026-11-02" in printed and "manifest:" in printed
    assert "check content_reconciles: passed" in printed


def test_explain_a_published_and_an_excluded_artifact(cli_world, capsys):
    root, args = cli_world
    audit = root / "out/_audit/dt=2026-11-02"
    excluded = pq.read_table(audit / "excluded.parquet").to_pylist()
    refused = next(r for r in excluded if r["reason"] == "user_not_consented")
    assert main(["explain", "--date", "2026-11-02", "--artifact", refused["artifact_id"], *args]) == 0
    text = capsys.readouterr().out
    assert "EXCLUDED" in text and "user_not_consented" in text
    assert "at capture" in text and ("none" in text or "revoke" in text)
    published = pq.read_table(root / "out/content/dt=2026-11-02").column("artifact_id")[0].as_py()
    assert main(["explain", "--date", "2026-11-02", "--artifact", published, *args]) == 0
    text = capsys.readouterr().out
    assert "PUBLISHED" in text and "at as_of grant" in text


def test_explain_a_quarantined_and_an_unknown_artifact(cli_world, capsys):
    root, args = cli_world
    units = pq.read_table(root / "out/_audit/dt=2026-11-02/quarantine.parquet").column("unit").to_pylist()
    meeting = next(u for u in units if u.startswith("meetings/")).split("/")[2]
    assert main(["explain", "--date", "2026-11-02", "--artifact", f"{meeting}/chat/x", *args]) == 0
    assert "QUARANTINED" in capsys.readouterr().out
    assert main(["explain", "--date", "2026-11-02", "--artifact", "m_nope/chat/1", *args]) == 2


def test_a_failed_check_exits_non_zero_and_says_why(cli_world, tmp_path, capsys):
    root, args = cli_world
    strict = tmp_path / "strict.yaml"
    strict.write_text("version: strict\nmax_quarantine_ratio: 0\n")
    out = tmp_path / "out"
    args = [a if a != str(root / "out") else str(out) for a in args]
    assert main(["run", "--date", "2026-11-02", "--policy", str(strict), *args]) == 1
    assert "quarantine_ratio" in capsys.readouterr().err
    assert not (out / "content").exists()
    (attempt,) = (out / "_audit/dt=2026-11-02/attempts").glob("*.json")
    assert json.loads(attempt.read_text())["policy"]["version"] == "strict"


def test_a_missing_secret_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CONSENT_GATE_HMAC_KEY", raising=False)
    missing = str(tmp_path / "absent.key")
    assert main(["run", "--date", "2026-11-02", "--key-file", missing, "--raw", str(tmp_path)]) == 2
    assert "no HMAC secret" in capsys.readouterr().err


def test_a_bad_date_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--date", "02/11/2026"])
    assert "not a date" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["0", "-1", "two", "1.5"])
def test_workers_must_be_a_positive_integer(workers, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--date", "2026-11-02", "--workers", workers])
    assert "--workers: must be a positive integer" in capsys.readouterr().err


def test_run_with_two_workers_says_so_and_publishes_the_same_day(cli_world, tmp_path, capsys):
    root, args = cli_world
    out = ["--out", str(tmp_path / "out")]
    assert main(["run", "--date", "2026-11-02", "--as-of", "2026-11-20T00:00:00Z", *args, *out, "--workers", "2"]) == 0
    printed = capsys.readouterr()
    assert "step gate_content (2 shards) + aggregate_telemetry:" in printed.err
    assert sorted(p.name for p in (tmp_path / "out/content/dt=2026-11-02").iterdir()) == [
        "part-0000.parquet", "part-0001.parquet",
    ]  # fmt: skip
    published = pq.read_table(tmp_path / "out/content/dt=2026-11-02").sort_by("artifact_id")
    assert published.equals(pq.read_table(root / "out/content/dt=2026-11-02").sort_by("artifact_id"))


def test_a_consent_row_without_a_readable_subject_fails_the_run(cli_world, tmp_path, capsys):
    import shutil
    import sqlite3

    root, args = cli_world
    broken = tmp_path / "consent.db"
    shutil.copy(root / "consent.db", broken)
    with sqlite3.connect(broken) as db:
        db.execute(
            "INSERT INTO consent_events VALUES ('zz_bad', 'team', NULL, 'ai_training', '*', 'grant', "
            "'2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', '2026-01')"
        )
    out = tmp_path / "out"
    args = [a if a != str(root / "out") else str(out) for a in args]
    args = [a if not a.startswith("sqlite:///") else f"sqlite:///{broken}" for a in args]
    assert main(["run", "--date", "2026-11-02", *args]) == 1
    err = capsys.readouterr().err
    assert "zz_bad" in err and "subject cannot be read" in err
    assert not (out / "content").exists()


def test_files_lists_exactly_the_published_version_from_its_manifest(cli_world, capsys):
    root, args = cli_world
    out = ["--out", str(root / "out")]
    assert main(["files", "--date", "2026-11-02", *out]) == 0
    listed = capsys.readouterr().out.split()
    on_disk = sorted(str(p) for p in (root / "out/content/dt=2026-11-02").glob("*.parquet"))
    assert listed == on_disk and listed
    manifest = json.loads((root / "out/_audit/dt=2026-11-02/manifest.json").read_text())
    rows = sum(o["rows"] for o in manifest["outputs"] if o["path"].startswith("content/"))
    assert pq.ParquetDataset(listed).read().num_rows == rows == manifest["counts"]["content"]["published"]
    assert main(["files", "--date", "2026-11-02", "--dataset", "aggregates", *out]) == 0
    assert all("/aggregates/dt=2026-11-02/" in line for line in capsys.readouterr().out.split())
    assert main(["files", "--date", "2026-11-09", *out]) == 2
    assert "not published" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["installed command", "python -m"])
def test_the_command_exits_with_the_status_and_output_of_main(cli_world, tmp_path, how):
    import subprocess
    import sys
    from pathlib import Path

    root, args = cli_world
    out = args[args.index("--out") + 1]
    start = [str(Path(sys.executable).with_name("consent-gate"))] if how == "installed command" else [
        sys.executable, "-m", "consent_gate.cli"]  # fmt: skip
    listed = subprocess.run([*start, "files", "--date", "2026-11-02", "--out", out], capture_output=True, text=True)
    assert listed.returncode == 0 and "content/dt=2026-11-02/part-0000.parquet" in listed.stdout, listed.stderr
    missing = subprocess.run(
        [*start, "files", "--date", "2026-11-02", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "is not published" in missing.stderr and not missing.stdout


_DATA_LIBRARIES = ("pandas", "pyarrow", "duckdb", "numpy", "great_expectations", "sqlalchemy")


def test_the_command_line_imports_no_data_library_before_a_command_runs():
    """`consent-gate` starts a run's worker processes before it imports pandas, pyarrow or DuckDB itself
    (they import them meanwhile), which needs its own module, and what it catches, to import none."""
    import subprocess
    import sys

    program = f"import sys, consent_gate.cli; print([m for m in {_DATA_LIBRARIES!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


_FRESH_COMMAND = """
import json, multiprocessing, sys, time
from consent_gate import processes
from consent_gate.cli import main

started = []  # for each checks process started: had this process imported pyarrow by then?
new_checker = processes._new_checker
processes._new_checker = lambda: started.append("pyarrow" in sys.modules) or new_checker()

if __name__ == "__main__":
    args = sys.argv[1:]
    published = main(["run", "--date", "2026-11-02", "--as-of", "2026-11-20T00:00:00Z", *args])
    after_run = list(started)
    refused = main(["run", "--date", "2026-11-05", "--as-of", "2026-11-20T00:00:00Z", *args])  # nothing arrived
    waiting = len(processes._ahead)
    deadline = time.monotonic() + 120  # the one shut down ends once it has imported GX
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    print(json.dumps({"published": published, "after_run": after_run, "refused": refused, "started": started,
                      "waiting": waiting, "left": len(multiprocessing.active_children()),
                      "great_expectations_here": "great_expectations" in sys.modules}))
"""


def test_the_command_starts_the_checks_process_first_and_leaves_none_behind(cli_world, tmp_path):
    """`consent-gate run` starts the checks' process before its own imports, and the run takes that one
    (it does not start a second); a run refused before it starts shuts the one started ahead down."""
    import subprocess
    import sys

    root, args = cli_world
    program = tmp_path / "command.py"
    program.write_text(_FRESH_COMMAND)
    out = args.index("--out") + 1
    fresh_args = [*args[:out], str(tmp_path / "out"), *args[out + 1 :]]
    done = subprocess.run([sys.executable, str(program), *fresh_args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["published"] == 0 and report["great_expectations_here"] is False
    assert report["after_run"] == [False]  # one checks process, started before pyarrow was imported here
    assert report["refused"] == 1 and "FAILED, nothing published: nothing arrived for 2026-11-05" in done.stderr
    assert report["started"] == [False, True] and report["waiting"] == 0 and report["left"] == 0
    assert (tmp_path / "out/content/dt=2026-11-02").is_dir()


def test_ledger_renews_the_consent_ledger_when_due_and_a_run_then_reads_only_what_is_new(cli_world, tmp_path, capsys):
    from consent_gate.consent_store import observe_reads

    root, args = cli_world
    out = tmp_path / "out"  # a fresh output: no ledger yet
    args = [*args[:2], "--out", str(out), *args[4:]]
    assert main(["ledger", *args]) == 0
    printed = capsys.readouterr().out
    assert "consent ledger renewed (no consent ledger yet" in printed and "rows read" in printed
    ledger = json.loads((out / "_audit/consent/ledger.json").read_text())
    assert main(["ledger", *args]) == 0
    assert "consent ledger not renewed: not due" in capsys.readouterr().out
    assert json.loads((out / "_audit/consent/ledger.json").read_text()) == ledger  # left as it was
    assert main(["ledger", "--force", *args]) == 0
    assert "consent ledger renewed (asked for)" in capsys.readouterr().out
    with observe_reads() as reads:
        assert main(["run", "--date", "2026-11-02", "--as-of", "2026-11-20T00:00:00Z", *args]) == 0
    manifest = json.loads((out / "_audit/dt=2026-11-02/manifest.json").read_text())
    assert manifest["consent"]["basis"]["scope"] == "ledger"
    assert "snapshot" not in dict(reads)  # the whole store was not read by the run
    assert "the whole store is read" not in capsys.readouterr().err
    elsewhere = [*args[:2], "--out", str(tmp_path / "elsewhere"), *args[4:]]  # no ledger there: the run says so
    assert main(["run", "--date", "2026-11-02", "--as-of", "2026-11-20T00:00:00Z", *elsewhere]) == 0
    assert "the whole store is read (no consent ledger yet" in capsys.readouterr().err
    published = json.loads((root / "out/_audit/dt=2026-11-02/manifest.json").read_text())["consent"]
    for field in ("checksum", "visible_events", "failed_closed_subjects", "unreadable_rows"):
        assert manifest["consent"][field] == published[field]  # a whole-store run's evidence
