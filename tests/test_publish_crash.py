"""Publication and the revocation sweep survive SIGKILL at any point: the previous version stays whole.

A subprocess publishes a validated stage (or sweeps) with the output store's operations wrapped by
this harness (never by production code): it counts each call and SIGKILLs itself right after the Nth
one. For every interesting N the test checks that each published folder holds exactly one complete
version, that the retry (as Airflow would run it) rolls back or completes the interrupted work so the
day's manifest matches its files again, and finally that a fresh run publishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.layout import Stage
from consent_gate.manifest import read_manifest
from consent_gate.pipeline import run_day
from consent_gate.publication import publish_stage
from consent_gate.publish import JOURNAL, InterruptedPublication
from consent_gate.records import parse_timestamp
from consent_gate.steps import aggregate_day, gate_content, snapshot_consent
from consent_gate.sweep import sweep
from consent_gate.validation import validate_stage
from tests.conftest import PROJECT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DAY = date(2026, 11, 3)
AS_OF_OLD = "2026-11-05T00:00:00Z"
AS_OF_NEW = "2026-11-20T00:00:00Z"
WRAPPED = ("write_json", "write_bytes", "remove", "makedirs", "copy_tree")


# --- the harness, run in a child process ----------------------------------------------------------


def harness_main(spec: dict[str, Any]) -> None:
    """Publish one stage; with kill_after=N, SIGKILL this process right after the Nth wrapped call."""
    import consent_gate.stores as stores

    calls: list[str] = []
    kill_after = spec["kill_after"]

    def counted(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = function(*args, **kwargs)
            journal = name == "remove" and str(args[-1]).endswith(f"/{JOURNAL}")
            calls.append("remove_journal" if journal else name)
            if len(calls) == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return wrapper

    for name in WRAPPED:
        setattr(stores.LocalStorage, name, counted(name, getattr(stores.LocalStorage, name)))
    stores._swap_local = counted("swap", stores._swap_local)
    os.link = counted("link", os.link)  # each hard link of the copied attempts history
    settings = _settings(spec)
    if spec.get("sweep_as_of"):
        as_of = parse_timestamp(spec["sweep_as_of"], "as_of")
        sweep(settings.store(), settings.consent_db, settings.secret, as_of, sweep_id=spec["attempt"], clock=utc_now)
    else:
        publish_stage(settings, Stage(date.fromisoformat(spec["day"]), spec["attempt"]), clock=utc_now)
    print(json.dumps(calls))


def _settings(spec: dict[str, Any]) -> RunSettings:
    return RunSettings(
        raw=spec["raw"], out=spec["out"], consent_db=spec["consent_db"], policy=Policy(),
        secret=Path(spec["secret"]).read_bytes(),
    )  # fmt: skip


def publish_in_child(spec: dict[str, Any]) -> subprocess.CompletedProcess:
    code = "import json, sys; from tests.test_publish_crash import harness_main; harness_main(json.loads(sys.argv[1]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT), str(PROJECT / "include")])}
    return subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- checks on the published day ------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_version(folder: Path) -> dict[str, str]:
    """{file name: sha256} of the Parquet files in a published folder."""
    return {p.name: sha256(p) for p in sorted(folder.glob("*.parquet"))}


def published_listing(out: Path, manifest: dict[str, Any], prefix: str) -> dict[str, str]:
    return {
        o["path"].rsplit("/", 1)[-1]: o["sha256"] for o in manifest["outputs"] if o["path"].startswith(prefix + "/")
    }


def assert_day_consistent(out: Path) -> dict[str, Any]:
    """The day's manifest describes exactly the files there are: every sha256 matches, no extra file."""
    manifest = json.loads((out / f"_audit/dt={DAY}/manifest.json").read_text())
    for output in manifest["outputs"]:
        assert sha256(out / output["path"]) == output["sha256"], output["path"]
    for prefix in (f"content/dt={DAY}", f"aggregates/dt={DAY}"):
        assert folder_version(out / prefix) == published_listing(out, manifest, prefix), prefix
    content = ds.dataset(out / f"content/dt={DAY}", format="parquet").to_table()
    ids = content.column("artifact_id").to_pylist()
    assert len(ids) == len(set(ids)) == manifest["counts"]["content"]["published"]
    assert (out / f"_audit/dt={DAY}/attempts/{manifest['attempt']}.json").exists()
    return manifest


def leftovers(out: Path) -> list[str]:
    staging = out / f"_staging/dt={DAY}"
    found = [str(p.relative_to(out)) for p in staging.glob(f"*/{JOURNAL}")] if staging.exists() else []
    return found + [str(p.relative_to(out)) for p in out.rglob("*.previous")]


def kill_points(calls: list[str]) -> list[int]:
    """The first call, each exchange and the call after it, the middle of the copying, the journal's
    removal (the stage is still there), the last call."""
    swaps = [i + 1 for i, name in enumerate(calls) if name == "swap"]
    points = {1, len(calls) // 2, len(calls), calls.index("remove_journal") + 1} | set(swaps) | {n + 1 for n in swaps}
    if "copy_tree" in calls:
        points |= {calls.index("copy_tree"), calls.index("link") + 1}
    return sorted(p for p in points if 1 <= p <= len(calls))


@pytest.fixture
def world(sample_dir, tmp_path) -> dict[str, Any]:
    """A published day (as of AS_OF_OLD) and a validated stage template of a newer version (AS_OF_NEW)."""
    out = tmp_path / "out"
    spec = {
        "raw": str(sample_dir / "raw"), "out": str(out), "consent_db": f"sqlite:///{sample_dir / 'consent.db'}",
        "secret": str(sample_dir / "hmac.key"), "day": DAY.isoformat(),
    }  # fmt: skip
    settings = _settings(spec)
    run_day(settings, DAY, parse_timestamp(AS_OF_OLD, "as_of"), run_id="baseline", clock=utc_now)
    template = snapshot_consent(settings, DAY, parse_timestamp(AS_OF_NEW, "as_of"), run_id="template", clock=utc_now)
    gate_content(settings, template)
    aggregate_day(settings, template)
    assert all(check.passed for check in validate_stage(settings, template))
    return {"spec": spec, "settings": settings, "out": out, "template": out / template.root}


def stage_copy(world: dict[str, Any], attempt: str) -> Stage:
    root = world["out"] / f"_staging/dt={DAY}/{attempt}"
    shutil.copytree(world["template"], root)
    run = json.loads((root / "run.json").read_text())
    (root / "run.json").write_text(json.dumps({**run, "attempt": attempt, "run_id": attempt}))
    return Stage(DAY, attempt)


def test_a_publication_killed_anywhere_leaves_a_whole_version_and_the_next_run_succeeds(world, tmp_path):
    out = world["out"]
    # A dry run on a copy of the output root: the calls one publication makes, in order.
    counting = {**world, "out": tmp_path / "counting"}
    shutil.copytree(out, counting["out"])
    stage_copy(counting, "counting")
    done = publish_in_child({**world["spec"], "out": str(counting["out"]), "attempt": "counting", "kill_after": 0})
    assert done.returncode == 0, done.stderr[-3000:]
    calls = json.loads(done.stdout.strip().splitlines()[-1])
    assert calls.count("swap") == 3 and "copy_tree" in calls and "link" in calls
    assert calls.index("remove_journal") > max(i for i, name in enumerate(calls) if name == "swap")
    new = read_manifest(_settings({**world["spec"], "out": str(counting["out"])}).store(), DAY)
    new_versions = {
        p: published_listing(counting["out"], new, p) for p in (f"content/dt={DAY}", f"aggregates/dt={DAY}")
    }

    # Kill points: the journal, the history copy, each exchange, the deletion of superseded versions, the
    # journal's removal, the end.
    swaps = [i + 1 for i, name in enumerate(calls) if name == "swap"]
    points = kill_points(calls)
    assert len(points) >= 6
    outcomes = []
    for point in points:
        previous = assert_day_consistent(out)
        old_versions = {p: published_listing(out, previous, p) for p in new_versions}
        attempt = f"crash-{point}"
        stage = stage_copy(world, attempt)
        killed = publish_in_child({**world["spec"], "attempt": attempt, "kill_after": point})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])

        # Right after the kill: each published folder is one whole version, old or new, never a mix.
        for prefix in new_versions:
            assert folder_version(out / prefix) in (old_versions[prefix], new_versions[prefix]), (point, prefix)

        # The retry of the killed attempt recovers under the day lock: rolled back, or (after the commit) done.
        try:
            publish_stage(world["settings"], stage, clock=utc_now)
            outcome = "published"
        except InterruptedPublication:
            outcome = "rolled_back"
        manifest = assert_day_consistent(out)
        assert manifest["attempt"] == (attempt if outcome == "published" else previous["attempt"]), point
        assert leftovers(out) == [] and not (out / stage.root).exists(), point
        outcomes.append(outcome)
    # Kills before the audit exchange roll back; kills after it keep the new version.
    assert outcomes == ["published" if p >= swaps[-1] else "rolled_back" for p in points]

    # The next run succeeds and replaces the day, keeping every attempt's manifest in the history.
    settings = world["settings"]
    outcome = run_day(settings, DAY, parse_timestamp(AS_OF_NEW, "as_of"), run_id="after-crashes", clock=utc_now)
    manifest = assert_day_consistent(out)
    assert outcome.published and manifest["run_id"] == "after-crashes"
    history = {p.stem for p in (out / f"_audit/dt={DAY}/attempts").glob("*.json")}
    assert {a for a, o in zip([f"crash-{p}" for p in points], outcomes, strict=True) if o == "published"} <= history
    assert leftovers(out) == []


def test_a_publication_that_raises_rolls_back_and_keeps_its_evidence(world, monkeypatch):
    """An exception between two exchanges (not a kill) is undone at once by the failing process."""
    import consent_gate.stores as stores

    out = world["out"]
    previous = assert_day_consistent(out)
    real_swap, swaps = stores._swap_local, []

    def failing_second_swap(staged: str, target: str) -> None:
        swaps.append(target)
        if len(swaps) == 2:
            raise OSError("disk went away")
        real_swap(staged, target)

    monkeypatch.setattr(stores, "_swap_local", failing_second_swap)
    stage = stage_copy(world, "raises")
    with pytest.raises(OSError, match="disk went away"):
        publish_stage(world["settings"], stage, clock=utc_now)
    assert assert_day_consistent(out)["attempt"] == previous["attempt"]
    failed = json.loads((out / f"_audit/dt={DAY}/attempts/raises.json").read_text())
    assert failed["status"] == "failed" and "disk went away" in failed["failure"]
    assert leftovers(out) == [] and not (out / stage.root).exists()


# --- the sweep ------------------------------------------------------------------------------------


@pytest.fixture
def revoked_world(world, tmp_path) -> dict[str, Any]:
    """The published day, and a revocation (recorded after its as_of) of a user who has rows in it."""
    from consent_gate.keys import Keyer
    from tests.builders import sample_identities
    from tests.test_sweep import append_consent, revocation

    consent_db = tmp_path / "consent.db"
    shutil.copyfile(world["spec"]["consent_db"].removeprefix("sqlite:///"), consent_db)
    spec = {**world["spec"], "consent_db": f"sqlite:///{consent_db}"}
    keyer = Keyer(world["settings"].secret)
    content = ds.dataset(world["out"] / f"content/dt={DAY}", format="parquet").to_table()
    published_users = {k for keys in content.column("user_keys").to_pylist() for k in keys}
    users, _ = sample_identities(Path(spec["raw"]).parent)
    user_id = min(u for u in users if keyer.user(u) in published_users)
    append_consent(consent_db, [revocation("zz_crash_sweep", "user", user_id, parse_timestamp(REVOKED, "at"))])
    shutil.rmtree(world["template"])  # only the published day stays
    return {**world, "spec": spec, "settings": _settings(spec), "user_key": keyer.user(user_id)}


REVOKED = "2026-11-21T09:00:00Z"
SWEEP_AS_OF = "2026-11-21T10:00:00Z"


def rows_of(out: Path, user_key: str) -> int:
    content = ds.dataset(out / f"content/dt={DAY}", format="parquet").to_table()
    return sum(user_key in keys for keys in content.column("user_keys").to_pylist())


def test_a_sweep_killed_anywhere_leaves_a_whole_version_and_the_next_sweep_purges(revoked_world, tmp_path):
    baseline, user_key = revoked_world["out"], revoked_world["user_key"]
    assert rows_of(baseline, user_key) > 0
    old_version = folder_version(baseline / f"content/dt={DAY}")

    def sweep_copy(name: str, kill_after: int) -> tuple[Path, subprocess.CompletedProcess]:
        out = tmp_path / name
        shutil.copytree(baseline, out)
        spec = {**revoked_world["spec"], "out": str(out), "attempt": f"sweep-{name}", "kill_after": kill_after}
        return out, publish_in_child({**spec, "sweep_as_of": SWEEP_AS_OF})

    clean, done = sweep_copy("clean", 0)
    assert done.returncode == 0, done.stderr[-3000:]
    calls = json.loads(done.stdout.strip().splitlines()[-1])
    assert calls.count("swap") == 2  # content, then the evidence (the commit)
    new_version = folder_version(clean / f"content/dt={DAY}")
    assert new_version != old_version and rows_of(clean, user_key) == 0
    assert_day_consistent(clean)

    points = kill_points(calls)
    assert len(points) >= 5
    for point in points:
        out, killed = sweep_copy(f"kill-{point}", point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])
        assert folder_version(out / f"content/dt={DAY}") in (old_version, new_version), point

        # The next sweep (an hour later, as the schedule would run it) recovers the day and purges.
        settings = _settings({**revoked_world["spec"], "out": str(out)})
        later = parse_timestamp(SWEEP_AS_OF, "as_of") + timedelta(hours=1)
        sweep(settings.store(), settings.consent_db, settings.secret, later, clock=utc_now)
        assert folder_version(out / f"content/dt={DAY}") == new_version, point
        assert rows_of(out, user_key) == 0, point
        manifest = assert_day_consistent(out)
        assert (
            manifest["counts"]["content"]["published"]
            == json.loads((clean / f"_audit/dt={DAY}/manifest.json").read_text())["counts"]["content"]["published"]
        ), point
        assert leftovers(out) == [] and not list((out / "_staging").glob("dt=*/*")), point
