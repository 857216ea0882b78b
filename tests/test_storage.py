"""The storage contract: every implementation of `storage.OutputStore` passes the same tests.

`LocalStorage` runs on a temporary folder, `ObjectStorage` on moto's S3-API server (as in test_s3).
A third backend joins by adding a param to the `store` fixture (and to `linkable_store` if it can hold
symbolic links); publication, the sweep and the landing zone then run on it unchanged.
"""

from __future__ import annotations

import io
import json
import os

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from consent_gate import stores
from consent_gate.publish import (
    JOURNAL,
    OutputStore,
    begin_publication,
    publish_folders,
    settle_publication,
    versioned_names,
)
from consent_gate.storage import FileTooLarge, NotARegularFile
from consent_gate.stores import LocalStorage, ObjectStorage, storage_for
from tests.builders import manifest
from tests.test_s3 import bucket, s3_endpoint  # noqa: F401 (fixtures)

DAY = "2026-11-02"


@pytest.fixture(
    params=[
        pytest.param("local", marks=pytest.mark.unit),
        pytest.param("s3", marks=pytest.mark.integration),
    ]
)
def store(request, tmp_path) -> OutputStore:
    if request.param == "local":
        return storage_for(str(tmp_path / "out"))
    name, options = request.getfixturevalue("bucket")
    return storage_for(f"s3://{name}/out", options)


@pytest.fixture
def linkable_store(tmp_path) -> OutputStore:
    """A store on which a symbolic link can be planted (object stores have none)."""
    return storage_for(str(tmp_path / "out"))


def parquet(ids: list[str]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"artifact_id": pa.array(ids, pa.string())}), sink)
    return sink.getvalue()


def ids_in(store: OutputStore, folder: str) -> list[str]:
    ids: list[str] = []
    for relative in store.files(folder, ".parquet"):
        with store.open(relative) as handle:
            ids += pq.read_table(handle).column("artifact_id").to_pylist()
    return sorted(ids)


# --- choosing the implementation ------------------------------------------------------------------


@pytest.mark.unit
def test_the_uri_chooses_the_implementation(tmp_path):
    assert type(storage_for(str(tmp_path))) is LocalStorage
    assert type(storage_for(f"file://{tmp_path}")) is LocalStorage
    assert type(storage_for(str(tmp_path))) is LocalStorage  # the interface's name gives the URI's choice
    assert type(storage_for("memory://consent-gate-storage-test")) is ObjectStorage


@pytest.mark.integration
def test_an_s3_uri_is_object_storage(bucket):  # noqa: F811 (the imported fixture)
    name, options = bucket
    assert type(storage_for(f"s3://{name}/out", options)) is ObjectStorage


# --- the contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 6, 7, 8, 4096])
def test_a_file_is_read_up_to_a_limit_and_refused_beyond_it(store, size):
    # How the landing zone reads a meeting's files: whole, up to sources.MAX_FILE_BYTES.
    store.write_bytes("day/file.bin", b"x" * size)
    if size <= 7:
        assert store.read_bytes("day/file.bin", 7) == b"x" * size
    else:
        with pytest.raises(FileTooLarge):
            store.read_bytes("day/file.bin", 7)
    assert store.read_bytes("day/file.bin") == b"x" * size  # no limit: every byte


def test_whole_files_are_written_read_and_removed(store, tmp_path):
    store.write_bytes("a/b/data.bin", b"\x00bytes")
    store.write_json("a/doc.json", {"k": [1, 2]})
    assert store.read_bytes("a/b/data.bin") == b"\x00bytes"
    assert store.read_json("a/doc.json") == {"k": [1, 2]}
    with store.open_no_follow("a/b/data.bin") as handle:
        assert handle.read() == b"\x00bytes"
    with open(store.local_file("a/b/data.bin", str(tmp_path)), "rb") as handle:
        assert handle.read() == b"\x00bytes"
    store.copy_file("a/b/data.bin", "c/copy.bin")
    store.write_bytes("c/copy.bin", b"changed")
    assert store.read_bytes("a/b/data.bin") == b"\x00bytes"  # a copy, never a link to the source
    with pytest.raises(FileNotFoundError):
        store.open_no_follow("a/missing.bin")
    store.remove("a")
    store.remove("never/there")
    assert not store.exists("a/doc.json") and store.exists("c/copy.bin")


def test_listings_name_files_and_folders_relative_to_the_root(store):
    store.write_bytes("day/one.parquet", b"1")
    store.write_bytes("day/two.json", b"2")
    store.write_bytes("day/attempts/a.json", b"3")
    assert store.files("day", ".parquet") == ["day/one.parquet"]
    assert store.folders("day") == ["attempts"]
    assert store.tree("day") == ["attempts/a.json", "one.parquet", "two.json"]
    assert sorted(store.listing("day")) == [("attempts", "directory"), ("one.parquet", "file"), ("two.json", "file")]
    assert store.glob("day/*/a.json") == ["day/attempts/a.json"]
    assert store.listing("nowhere") == [] and store.files("nowhere") == [] and store.tree("nowhere") == []


def test_uris_reach_the_same_bytes_through_fsspec_and_duckdb(store):
    store.write_bytes("content/part-0000.parquet", parquet(["a1", "a2"]))
    uri = store.uri("content/part-0000.parquet")
    options = store.fs.storage_options if isinstance(store, ObjectStorage) else {}
    with fsspec.open(uri, "rb", **options) as handle:
        assert pq.read_table(handle).num_rows == 2
    assert store.parquet_rows(["content/part-0000.parquet"]) == 2
    connection = duckdb.connect()
    store.attach_to(connection)
    assert connection.read_parquet([uri]).aggregate("count(*)").fetchall() == [(2,)]


def publish_version(store: OutputStore, attempt: str, ids: list[str]) -> None:
    """Stage one version of a day (content and evidence with its history) and publish it."""
    stage = f"_staging/dt={DAY}/{attempt}"
    store.write_bytes(f"{stage}/content/part-0000.parquet", parquet(ids))
    store.write_json(f"{stage}/audit/manifest.json", manifest(DAY, attempt=attempt))
    versioned_names(store, f"{stage}/content", attempt)
    with store.day_lock(DAY):
        begin_publication(store, stage)
        store.carry_history(f"_audit/dt={DAY}/attempts", f"{stage}/audit/attempts")
        store.write_json(f"{stage}/audit/attempts/{attempt}.json", manifest(DAY, attempt=attempt))
        swaps = [(f"{stage}/content", f"content/dt={DAY}"), (f"{stage}/audit", f"_audit/dt={DAY}")]
        publish_folders(store, stage, swaps)  # the evidence last: its exchange is the commit
    store.remove(stage)


def test_a_publication_replaces_each_folder_whole_and_keeps_the_history(store):
    publish_version(store, "first", ["a1", "a2", "a3"])
    publish_version(store, "second", ["b1"])
    assert ids_in(store, f"content/dt={DAY}") == ["b1"]  # the previous version's files are gone
    assert store.read_json(f"_audit/dt={DAY}/manifest.json")["attempt"] == "second"
    assert store.files(f"_audit/dt={DAY}/attempts", ".json") == [
        f"_audit/dt={DAY}/attempts/first.json",
        f"_audit/dt={DAY}/attempts/second.json",
    ]
    assert not store.tree(f"_staging/dt={DAY}")


def test_a_publication_journaled_but_not_begun_settles_as_rolled_back(store):
    publish_version(store, "first", ["a1"])
    stage = f"_staging/dt={DAY}/second"
    store.write_bytes(f"{stage}/content/part-0000.parquet", parquet(["b1"]))
    begin_publication(store, stage)
    assert settle_publication(store, stage) == "rolled_back"
    assert ids_in(store, f"content/dt={DAY}") == ["a1"]
    assert settle_publication(store, stage) == "rolled_back"  # settling twice changes nothing


def test_remove_deletes_a_single_file_and_leaves_its_folder(store):
    store.write_json(f"stage/{JOURNAL}", {"swaps": []})
    store.write_json("stage/run.json", {})
    store.remove(f"stage/{JOURNAL}")
    assert not store.exists(f"stage/{JOURNAL}")
    assert store.exists("stage/run.json")
    store.remove(f"stage/{JOURNAL}")  # gone already: nothing happens


def test_remove_takes_a_link_away_and_leaves_what_it_points_to(linkable_store, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "kept.json").write_text("{}")
    (elsewhere / "kept-too.json").write_text("{}")
    linkable_store.makedirs("stage")
    os.symlink(elsewhere, linkable_store.path("stage/folder-link"))
    os.symlink(elsewhere / "kept-too.json", linkable_store.path("stage/file-link"))
    linkable_store.remove("stage/folder-link")
    linkable_store.remove("stage/file-link")
    assert linkable_store.listing("stage") == []
    assert sorted(p.name for p in elsewhere.iterdir()) == ["kept-too.json", "kept.json"]


# --- links: never followed ------------------------------------------------------------------------


@pytest.fixture(params=["openat2", "walk"])
def opening(request, monkeypatch) -> str:
    """Local files opened in one openat2 call, or (a kernel without it) by the lstat walk."""
    if request.param == "walk":
        monkeypatch.setattr(stores._Openat2, "usable", False)
    else:
        probe = stores._Openat2(os.path.dirname(__file__)).open("conftest.py")
        if probe is None:
            pytest.skip("this machine has no openat2 (Linux 5.6+ on x86_64 or aarch64): only the walk is tested")
        os.close(probe)
    return request.param


@pytest.mark.unit
def test_a_link_anywhere_on_the_way_is_listed_never_followed(linkable_store, tmp_path, opening):
    store = linkable_store
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.json").write_text(json.dumps({"secret": 1}))
    store.write_bytes("day/real.json", b"{}")
    root = tmp_path / "out"
    (root / "day/link.json").symlink_to(elsewhere / "secret.json")
    (root / "linked-day").symlink_to(elsewhere)
    (root / "alias-day").symlink_to("day")  # a link that stays inside the root is not followed either
    assert sorted(store.listing("day")) == [("link.json", "symlink"), ("real.json", "file")]
    for relative in ("day/link.json", "linked-day/secret.json", "alias-day/real.json"):
        with pytest.raises(NotARegularFile):
            store.open_no_follow(relative)
    with pytest.raises(NotARegularFile):
        store.listing("linked-day")
    with pytest.raises(NotARegularFile):
        store.open_no_follow("day")  # a folder is not a regular file


@pytest.mark.unit
def test_a_local_file_is_opened_beneath_the_root_only(linkable_store, tmp_path, opening):
    store = linkable_store
    store.write_bytes("day/a.json", b"{}")
    (tmp_path / "beside.json").write_text("{}")
    if opening == "openat2":  # the walk checks for links only: landing-zone names are never ".." (is_safe_name)
        with pytest.raises(NotARegularFile, match="outside"):
            store.open_no_follow("../beside.json")
    os.mkfifo(tmp_path / "out/day/fifo.json")  # named like a data file, and would block a plain open
    with pytest.raises(NotARegularFile):
        store.open_no_follow("day/fifo.json")
    with pytest.raises(NotADirectoryError):
        store.open_no_follow("day/a.json/b.json")
    with pytest.raises(FileNotFoundError):
        store.open_no_follow("day/missing.json")
    with store.open_no_follow("day/a.json") as handle:
        assert handle.read() == b"{}"
    assert store.listing("missing") == [] and store.listing("day/missing") == []
    with pytest.raises(NotARegularFile, match="not a folder"):
        store.listing("day/a.json")
    assert sorted(store.listing("day")) == [("a.json", "file"), ("fifo.json", "other")]


@pytest.mark.unit
def test_a_root_reached_through_a_link_is_read(tmp_path, opening):
    """Links above the root are the operator's (e.g. /data -> /mnt/disk1); only those below it are refused."""
    (tmp_path / "real/day").mkdir(parents=True)
    (tmp_path / "real/day/a.json").write_text("{}")
    (tmp_path / "root").symlink_to(tmp_path / "real")
    with storage_for(str(tmp_path / "root")).open_no_follow("day/a.json") as handle:
        assert handle.read() == b"{}"


@pytest.mark.unit
def test_a_store_opens_files_in_a_child_process(linkable_store, opening):
    """The root's descriptor is the process's own: a forked child inherits it, a started one (which
    unpickles the store) opens its own."""
    import multiprocessing

    store = linkable_store
    store.write_bytes("day/a.json", b"{}")
    assert store.read_bytes("day/a.json") == b"{}"  # this process opened the root
    for method in ("fork", "spawn"):
        pool = multiprocessing.get_context(method).Pool(1)
        try:
            assert pool.apply(store.read_bytes, ("day/a.json",)) == b"{}"
        finally:
            # close and join, not the `with` block's terminate(): terminate() drains the task queue and
            # can take the worker's end-of-work sentinel, leaving it waiting for the queue's lock until
            # SIGTERM, and a forked worker inherits this process's SIGTERM handler (the suite's process
            # catches SIGTERM once earlier tests ran Airflow), which does not end it: the suite hung here
            # in 2 of 4 runs.
            pool.close()
            pool.join()
