"""Landing zone and output on the S3 API: a real S3-API server over HTTP on 127.0.0.1.

The server is moto's standalone server, started as a separate process (not an in-process mock), and
the gate reaches it through s3fs exactly as it would reach AWS: only the endpoint differs.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from consent_gate import publication, steps
from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.layout import Stage
from consent_gate.manifest import read_manifest
from consent_gate.pipeline import run_day
from consent_gate.publish import OutputStore, published_files
from consent_gate.records import parse_timestamp
from consent_gate.stores import storage_for
from consent_gate.validation import validate_stage
from tests.test_shards import run_sharded

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 2)
AS_OF = parse_timestamp("2026-11-20T00:00:00Z", "as_of")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """moto's S3-API server in its own process on a free port; stopped afterwards, always."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch) -> tuple[str, dict[str, Any]]:
    """A fresh bucket; the storage options that reach it (credentials are moto's dummies)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    name = f"consent-gate-{uuid.uuid4().hex[:10]}"
    store = storage_for(f"s3://{name}", options)
    store.fs.mkdir(name)
    return name, options


def s3_settings(sample: Path, bucket_name: str, options: dict[str, Any]) -> RunSettings:
    return RunSettings(
        raw=f"s3://{bucket_name}/raw", out=f"s3://{bucket_name}/out", consent_db=f"sqlite:///{sample / 'consent.db'}",
        policy=Policy(), secret=(sample / "hmac.key").read_bytes(), storage_options=options,
    )  # fmt: skip


def upload_landing_zone(sample: Path, settings: RunSettings) -> None:
    store = storage_for(settings.raw, settings.storage_options)
    for folder in ("meetings", "telemetry"):
        store.fs.put(str(sample / "raw" / folder / f"dt={DAY}"), f"{store.root_path}/{folder}/", recursive=True)
    assert store.files(f"telemetry/dt={DAY}", ".jsonl.gz")


def read_s3_table(store: OutputStore, relative: str):
    files = store.files(relative, ".parquet")
    return ds.dataset([store.path(f) for f in files], format="parquet", filesystem=store.fs).to_table()


def test_a_day_on_s3_publishes_the_same_rows_as_on_local_files(sample_dir, bucket, tmp_path):
    name, options = bucket
    settings = s3_settings(sample_dir, name, options)
    upload_landing_zone(sample_dir, settings)
    outcome = run_day(settings, DAY, AS_OF, run_id="s3", clock=utc_now)
    local = RunSettings(**{**settings.__dict__, "raw": str(sample_dir / "raw"), "out": str(tmp_path / "local"),
                           "storage_options": {}})  # fmt: skip
    expected = run_day(local, DAY, AS_OF, run_id="local", clock=utc_now)

    store = settings.store()
    content = read_s3_table(store, f"content/dt={DAY}").sort_by("artifact_id")
    local_content = ds.dataset(tmp_path / f"local/content/dt={DAY}", format="parquet").to_table()
    assert content.num_rows > 0 and content.equals(local_content.sort_by("artifact_id"))
    aggregates = read_s3_table(store, f"aggregates/dt={DAY}")
    assert aggregates.equals(ds.dataset(tmp_path / f"local/aggregates/dt={DAY}", format="parquet").to_table())
    with store.open(f"_audit/dt={DAY}/excluded.parquet") as handle:
        excluded = pq.read_table(handle).sort_by("artifact_id")
    assert excluded.equals(pq.read_table(tmp_path / f"local/_audit/dt={DAY}/excluded.parquet").sort_by("artifact_id"))

    manifest = read_manifest(store, DAY)
    assert manifest["status"] == "published" and manifest["counts"] == expected.manifest["counts"]
    assert manifest == json.loads(json.dumps(outcome.manifest, default=str))
    # The evidence names the same inputs with the same bytes, wherever they were read from.
    local_inputs = pq.read_table(tmp_path / f"local/_audit/dt={DAY}/inputs.parquet").sort_by("path")
    with store.open(f"_audit/dt={DAY}/inputs.parquet") as handle:
        assert pq.read_table(handle).sort_by("path").equals(local_inputs)
    for output in manifest["outputs"]:
        assert store.sha256(output["path"])[1] == output["sha256"]
    assert not store.exists("_staging") or not store.files(f"_staging/dt={DAY}")


def test_a_rerun_on_s3_replaces_the_partition_and_deletes_superseded_files(sample_dir, bucket):
    """No atomic rename on object stores: the copy-then-delete swap must still leave one version."""
    name, options = bucket
    settings = s3_settings(sample_dir, name, options)
    upload_landing_zone(sample_dir, settings)
    first = run_sharded(settings, DAY, AS_OF, 3)
    store = settings.store()
    version = first["attempt"].rsplit("__", 1)[-1]
    assert [f.rsplit("/", 1)[-1] for f in store.files(f"content/dt={DAY}")] == [
        f"part-0000.v{version}.parquet", f"part-0001.v{version}.parquet", f"part-0002.v{version}.parquet",
    ]  # fmt: skip
    assert published_files(store, DAY.isoformat()) == [store.uri(f) for f in store.files(f"content/dt={DAY}")]
    three = read_s3_table(store, f"content/dt={DAY}").sort_by("artifact_id")

    manifest = run_sharded(settings, DAY, LATER, 1)
    version = manifest["attempt"].rsplit("__", 1)[-1]
    assert [f.rsplit("/", 1)[-1] for f in store.files(f"content/dt={DAY}")] == [f"part-0000.v{version}.parquet"]
    one = read_s3_table(store, f"content/dt={DAY}").sort_by("artifact_id")
    assert one.num_rows == manifest["counts"]["content"]["published"]
    assert set(one.column("consent_as_of").to_pylist()) != set(three.column("consent_as_of").to_pylist())
    assert len(store.files(f"_audit/dt={DAY}/attempts", ".json")) == 2  # both attempts' evidence is kept
    assert not store.tree(f"_staging/dt={DAY}")


# --- readers during a publication: the manifest is the commit ---------------------------------------

MUTATIONS = ("copy", "rm", "mv", "pipe_file")


class Interrupted(Exception):
    """The publication stops here, as if its process had died (the harness raises it, not the code)."""


def read_published(store: OutputStore) -> tuple[list[str], list[tuple[str, str]]]:
    """What a reader gets through the manifest: the day's content files and their (artifact_id, as_of) rows."""
    files = published_files(store, DAY.isoformat())
    table = ds.dataset([f.removeprefix("s3://") for f in files], format="parquet", filesystem=store.fs).to_table()
    as_of = [str(v) for v in table.column("consent_as_of").to_pylist()]
    rows = zip(table.column("artifact_id").to_pylist(), as_of, strict=True)
    return [f.rsplit("/", 1)[-1] for f in files], list(rows)


Stop = Callable[[str, tuple], bool]


def instrument(monkeypatch, store: OutputStore, after_each, stop_before: Stop | None = None) -> list[str]:
    """Wrap the S3 filesystem's mutating calls: after each, `after_each()`; raise Interrupted once, before
    the first call `stop_before(name, args)` picks."""
    calls: list[str] = []
    for name in MUTATIONS:
        real = getattr(store.fs, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            if stop_before is not None and "stopped" not in calls and stop_before(_name, args):
                calls.append("stopped")  # once: what runs after the stop (the recovery) goes through
                raise Interrupted(f"stopped before {_name}")
            result = _real(*args, **kwargs)
            calls.append(_name)
            after_each()
            return result

        monkeypatch.setattr(store.fs, name, wrapper)
    return calls


def _target(args: tuple) -> str:
    """The object a mutating call writes or deletes: copy/mv (source, target); pipe_file (path, data); rm (path)."""
    return str(args[1] if len(args) > 1 and isinstance(args[1], str) else args[0])


# Where a publication is stopped, in its order, and whether the new version must stand afterwards.
STOPS: list[tuple[str, Stop, bool]] = [
    ("the journal", lambda n, a: n == "pipe_file" and _target(a).endswith("/publishing.json"), False),
    ("the versioned names", lambda n, a: n == "mv", False),
    ("the evidence backup", lambda n, a: n == "copy" and "/previous-evidence/" in _target(a), False),
    ("the first new data file", lambda n, a: n == "copy" and f"/out/content/dt={DAY}/" in _target(a), False),
    ("the commit", lambda n, a: n == "copy" and _target(a).endswith(f"/out/_audit/dt={DAY}/manifest.json"), False),
    ("the superseded deletion", lambda n, a: n == "rm" and isinstance(a[0], list), True),
    ("the journal removal", lambda n, a: n == "rm" and _target(a).endswith("/publishing.json"), True),
    ("the stage removal", lambda n, a: n == "rm" and re.search(rf"/_staging/dt={DAY}/[^/]+/?$", _target(a)), True),
    ("the index", lambda n, a: n == "pipe_file" and _target(a).endswith("/out/_audit/index.html"), True),
]


LATER = parse_timestamp("2026-11-25T00:00:00Z", "as_of")


@pytest.fixture
def published_on_s3(sample_dir, bucket) -> tuple[RunSettings, OutputStore]:
    """A day published on S3 in 3 shards (as of AS_OF); the next version will be as of LATER."""
    name, options = bucket
    settings = s3_settings(sample_dir, name, options)
    upload_landing_zone(sample_dir, settings)
    run_sharded(settings, DAY, AS_OF, 3)
    return settings, settings.store()


def test_a_reader_on_s3_sees_one_whole_version_at_every_step_of_a_publication(published_on_s3, monkeypatch):
    settings, store = published_on_s3
    old = read_published(store)

    seen: list[tuple[list[str], list[tuple[str, str]]]] = []
    with monkeypatch.context() as patch:
        calls = instrument(patch, store, lambda: seen.append(read_published(store)))
        run_sharded(settings, DAY, LATER, 2)
    new = read_published(store)
    assert old[0] != new[0] and len(calls) > 10
    assert sorted(old[1]) != sorted(new[1])  # the as_of moved: the versions differ in rows, not only names
    for files, rows in seen:
        assert (files, sorted(rows)) in ((old[0], sorted(old[1])), (new[0], sorted(new[1])))
        ids = [artifact_id for artifact_id, _ in rows]
        assert len(ids) == len(set(ids))  # never a duplicate row


def validated_stage(settings: RunSettings, run_id: str) -> Stage:
    """The day's next version (as of LATER) staged in two shards and validated, ready to publish."""
    stage = steps.snapshot_consent(settings, DAY, LATER, run_id=run_id, clock=utc_now)
    for shard in range(2):
        steps.gate_content(settings, stage, shard=shard, shards=2)
    steps.aggregate_day(settings, stage)
    assert all(c.passed for c in validate_stage(settings, stage))
    return stage


def test_a_publication_on_s3_stopped_anywhere_recovers_to_one_whole_version(published_on_s3, monkeypatch):
    """Stopped before its commit it is undone (evidence included); after its commit it is finished."""
    settings, store = published_on_s3
    for point, stop_before, new_version_stands in STOPS:
        before = read_manifest(store, DAY)
        stage = validated_stage(settings, "stopped")
        with monkeypatch.context() as patch:
            calls = instrument(patch, store, lambda: None, stop_before=stop_before)
            try:
                publication.publish_stage(settings, stage, clock=utc_now)
                outcome = "published"
            except Interrupted:
                outcome = "interrupted"
        if outcome == "interrupted":
            publication.record_failed_attempt(settings, stage, "stopped", clock=utc_now)  # the run's teardown
        manifest = read_manifest(store, DAY)
        assert manifest["attempt"] in (before["attempt"], stage.attempt), point
        # The store holds exactly the manifest's version: every listed file with its sha256, nothing more.
        for output in manifest["outputs"]:
            assert store.sha256(output["path"])[1] == output["sha256"], (point, output["path"])
        for folder in (f"content/dt={DAY}", f"aggregates/dt={DAY}"):
            listed = {o["path"] for o in manifest["outputs"] if o["path"].startswith(folder + "/")}
            assert set(store.files(folder, ".parquet")) == listed, (point, folder)
        assert not store.tree(f"_staging/dt={DAY}"), point
        assert outcome == "interrupted" and "stopped" in calls, point
        assert manifest["attempt"] == (stage.attempt if new_version_stands else before["attempt"]), point
        history = store.read_json(f"_audit/dt={DAY}/attempts/{stage.attempt}.json")
        assert history["status"] == ("published" if new_version_stands else "failed"), point


def published_content(store: OutputStore):
    files = [f.removeprefix("s3://") for f in published_files(store, DAY.isoformat())]
    return ds.dataset(files, format="parquet", filesystem=store.fs).to_table()


def test_a_sweep_on_s3_purges_a_revoked_user_and_keeps_the_history(published_on_s3, sample_dir, tmp_path):
    import shutil

    from consent_gate.keys import Keyer
    from consent_gate.sweep import sweep
    from tests.builders import sample_identities
    from tests.test_sweep import append_consent, revocation

    settings, store = published_on_s3
    consent_db = tmp_path / "consent.db"
    shutil.copyfile(sample_dir / "consent.db", consent_db)
    keyer = Keyer(settings.secret)
    before = published_content(store)
    published_users = {k for keys in before.column("user_keys").to_pylist() for k in keys}
    users, _ = sample_identities(sample_dir)
    user_id = min(u for u in users if keyer.user(u) in published_users)
    revoked_at = parse_timestamp("2026-11-21T09:00:00Z", "recorded_at")
    append_consent(consent_db, [revocation("zz_s3_sweep", "user", user_id, revoked_at)])

    outcome = sweep(
        store,
        f"sqlite:///{consent_db}",
        settings.secret,
        parse_timestamp("2026-11-21T10:00:00Z", "as_of"),
        clock=utc_now,
    )
    assert [p["partition"] for p in outcome.purges] == [DAY.isoformat()] and outcome.rows_removed > 0
    after = published_content(store)
    assert after.num_rows == before.num_rows - outcome.rows_removed
    assert not any(keyer.user(user_id) in keys for keys in after.column("user_keys").to_pylist())
    manifest = read_manifest(store, DAY)
    for output in manifest["outputs"]:
        assert store.sha256(output["path"])[1] == output["sha256"], output["path"]
    listed = {o["path"] for o in manifest["outputs"] if o["path"].startswith("content/")}
    assert set(store.files(f"content/dt={DAY}", ".parquet")) == listed  # superseded files are gone
    history = {f.rsplit("/", 1)[-1] for f in store.files(f"_audit/dt={DAY}/attempts", ".json")}
    assert history == {f"{manifest['attempt']}.json", f"{outcome.sweep_id}.json"}
    assert not store.tree(f"_staging/dt={DAY}")


def test_a_publication_on_s3_stopped_after_its_commit_is_done_when_its_task_is_retried(published_on_s3, monkeypatch):
    """Airflow retries a publish task whose worker died: past the commit, the retry finds the attempt
    published (its journal may be gone already) and only finishes the cleanup; the history says published."""
    settings, store = published_on_s3
    for point, stop_before, new_version_stands in STOPS:
        if not new_version_stands:
            continue
        stage = validated_stage(settings, "retried")
        with monkeypatch.context() as patch:
            calls = instrument(patch, store, lambda: None, stop_before=stop_before)
            patch.setattr(publication, "_abandon_publication", lambda *args: None)  # killed: no cleanup runs
            with pytest.raises(Interrupted):
                publication.publish_stage(settings, stage, clock=utc_now)
        assert "stopped" in calls, point
        manifest = publication.publish_stage(settings, stage, clock=utc_now)  # the task's retry
        assert manifest["attempt"] == stage.attempt == read_manifest(store, DAY)["attempt"], point
        for output in manifest["outputs"]:
            assert store.sha256(output["path"])[1] == output["sha256"], (point, output["path"])
        assert store.read_json(f"_audit/dt={DAY}/attempts/{stage.attempt}.json")["status"] == "published", point
        assert not store.tree(f"_staging/dt={DAY}"), point
        publication.record_failed_attempt(settings, stage, "teardown", clock=utc_now)  # the run's teardown
        assert store.read_json(f"_audit/dt={DAY}/attempts/{stage.attempt}.json")["status"] == "published", point
