"""Landing zone and output on the S3 API: a real S3-API server over HTTP on 127.0.0.1.

The server is moto's standalone server, started as a separate process (not an in-process mock), and
the gate reaches it through s3fs exactly as it would reach AWS: only the endpoint differs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from consent_gate.config import Policy
from consent_gate.pipeline import RunSettings, read_manifest, run_day
from consent_gate.publish import OutputStore
from consent_gate.records import parse_timestamp
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
    store = OutputStore(f"s3://{name}", options)
    store.fs.mkdir(name)
    return name, options


def s3_settings(sample: Path, bucket_name: str, options: dict[str, Any]) -> RunSettings:
    return RunSettings(
        raw=f"s3://{bucket_name}/raw", out=f"s3://{bucket_name}/out", consent_db=f"sqlite:///{sample / 'consent.db'}",
        policy=Policy(), secret=(sample / "hmac.key").read_bytes(), storage_options=options,
    )  # fmt: skip


def upload_landing_zone(sample: Path, settings: RunSettings) -> None:
    store = OutputStore(settings.raw, settings.storage_options)
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
    outcome = run_day(settings, DAY, AS_OF, run_id="s3")
    local = RunSettings(**{**settings.__dict__, "raw": str(sample_dir / "raw"), "out": str(tmp_path / "local"),
                           "storage_options": {}})  # fmt: skip
    expected = run_day(local, DAY, AS_OF, run_id="local")

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
    run_sharded(settings, DAY, AS_OF, 3)
    store = settings.store()
    assert [f.rsplit("/", 1)[-1] for f in store.files(f"content/dt={DAY}")] == [
        "part-0000.parquet", "part-0001.parquet", "part-0002.parquet",
    ]  # fmt: skip
    three = read_s3_table(store, f"content/dt={DAY}").sort_by("artifact_id")

    later = parse_timestamp("2026-11-25T00:00:00Z", "as_of")
    manifest = run_sharded(settings, DAY, later, 1)
    assert [f.rsplit("/", 1)[-1] for f in store.files(f"content/dt={DAY}")] == ["part-0000.parquet"]
    one = read_s3_table(store, f"content/dt={DAY}").sort_by("artifact_id")
    assert one.num_rows == manifest["counts"]["content"]["published"]
    assert set(one.column("consent_as_of").to_pylist()) != set(three.column("consent_as_of").to_pylist())
    assert len(store.files(f"_audit/dt={DAY}/attempts", ".json")) == 2  # both attempts' evidence is kept
    assert not store.tree(f"_staging/dt={DAY}")
