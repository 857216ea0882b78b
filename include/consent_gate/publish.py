"""Output storage: staging, the per-day lock, and atomic publication of a day's partitions.

Readers of `content/dt=D` must see the previous complete version or the new one, never a mix
(SPEC §6). On a local filesystem the staged directory and the published one are exchanged in one
`renameat2(RENAME_EXCHANGE)` call, so the partition path never disappears and never holds both
versions. A day's folders are exchanged one by one, the audit folder (the manifest) last, under the
day lock, with a journal in the stage (`publishing.json`): whoever takes the day lock next calls
`recover_day`, which reverses the exchanges of a publication killed before its commit (or finishes
one killed after it), so a SIGKILL at any point leaves the previous version whole
(tests/test_publish_crash.py).

Object stores have no rename and no multi-object atomicity, so there the **manifest is the commit**
and readers resolve a day's files through it (`published_files`, `consent-gate files`), as with any
table format: data files get version-unique names (`versioned_names`), every new file is copied
before the manifest, the previous evidence is backed up in the stage, the manifest is written last
(one PUT: the commit), and only then are superseded files deleted. `recover_day` finishes a
publication whose manifest landed, or deletes what it added and restores the evidence backup.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import fsspec

from consent_gate.layout import HISTORY, MANIFEST

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


JOURNAL = "publishing.json"


class PublishError(RuntimeError):
    pass


class InterruptedPublication(PublishError):
    """The attempt's publication was interrupted and rolled back; its stage is gone: rerun the day."""


class OutputStore:
    """The output root (path or fsspec URI) and the operations publication needs on it."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.root = root.rstrip("/")
        self.fs, root_path = fsspec.core.url_to_fs(self.root, **(storage_options or {}))
        self.root_path = root_path.rstrip("/")
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.is_local = protocol in ("file", "local")

    def path(self, relative: str) -> str:
        return f"{self.root_path}/{relative}" if relative else self.root_path

    def uri(self, relative: str) -> str:
        """`relative` as a URI any fsspec/pyarrow/DuckDB reader understands."""
        return self.path(relative) if self.is_local else self.fs.unstrip_protocol(self.path(relative))

    def makedirs(self, relative: str) -> None:
        self.fs.makedirs(self.path(relative), exist_ok=True)

    def open(self, relative: str, mode: str = "rb") -> Any:
        if "w" in mode:
            self.fs.makedirs(self.path(relative).rsplit("/", 1)[0], exist_ok=True)
        return self.fs.open(self.path(relative), mode)

    def write_json(self, relative: str, payload: Any) -> None:
        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
        self.write_bytes(relative, data)

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a whole small file so that no reader ever sees it half-written."""
        if self.is_local:
            target = self.path(relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{os.getpid()}"
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:  # a full disk: no partial *.tmp-PID is left behind
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        else:  # an object store PUT is atomic per object
            self.fs.pipe_file(self.path(relative), data)

    def read_json(self, relative: str) -> Any:
        return json.loads(self.fs.cat_file(self.path(relative)))

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def files(self, relative: str, suffix: str = "") -> list[str]:
        """Relative paths of the files directly under `relative`, sorted."""
        base = self.path(relative)
        if not self.fs.exists(base):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        return sorted(f"{relative}/{n}" for n in names if n.endswith(suffix) and self.fs.isfile(f"{base}/{n}"))

    def folders(self, relative: str) -> list[str]:
        """Names of the folders directly under `relative`, sorted; fresh listing."""
        base = self.path(relative)
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return []
        entries = self.fs.ls(base, detail=True)
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory")

    def remove(self, relative: str) -> None:
        target = self.path(relative)
        if self.is_local:
            shutil.rmtree(target, ignore_errors=True)
        elif self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    def parquet_rows(self, relatives: list[str]) -> int:
        """The rows of these Parquet files, from their footers (no data is read)."""
        import pyarrow.parquet as pq

        total = 0
        for relative in relatives:
            with self.open(relative) as handle:
                total += pq.ParquetFile(handle).metadata.num_rows
        return total

    def output_entry(self, relative: str, published_as: str) -> dict[str, Any]:
        """A manifest's record of one output file: where it is published, its rows, bytes and sha256."""
        size, sha256 = self.sha256(relative)
        return {"path": published_as, "rows": self.parquet_rows([relative]), "bytes": size, "sha256": sha256}

    def sha256(self, relative: str) -> tuple[int, str]:
        """Size and sha256 of a file, streamed."""
        digest = hashlib.sha256()
        size = 0
        with self.fs.open(self.path(relative), "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    @contextlib.contextmanager
    def day_lock(self, day: str) -> Iterator[None]:
        """Serialises publication of one day. Local: an flock that dies with its holder.

        On object stores the orchestrator serialises (the Airflow pool `consent_gate_publish`).
        """
        if not self.is_local:
            yield
            return
        lock_dir = self.path("_locks")
        os.makedirs(lock_dir, exist_ok=True)
        with open(f"{lock_dir}/dt={day}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def copy_tree(self, source: str, target: str) -> None:
        """Copy a local folder as hard links (instant; the source stays whole if interrupted). Object
        stores never need it: their append-only history stays in place (`_publish_remote`)."""
        if not self.is_local:
            raise PublishError("copy_tree is for local storage")
        shutil.copytree(self.path(source), self.path(target), copy_function=os.link)

    def tree(self, relative: str) -> list[str]:
        """Every file below `relative` (nested folders included), relative to it, sorted; fresh listing."""
        base = self.path(relative)
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return []
        return sorted(p[len(base) + 1 :] for p in self.fs.find(base) if p.startswith(base + "/"))

    def copy_file(self, source: str, target: str) -> None:
        """A copy with a new identity (never a hard link): writing the copy leaves the source alone."""
        if self.is_local:
            os.makedirs(os.path.dirname(self.path(target)), exist_ok=True)
        self.fs.copy(self.path(source), self.path(target))

    def delete_files(self, relatives: list[str]) -> None:
        if relatives:
            self.fs.rm([self.path(r) for r in relatives])


def _swap_local(staged: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not os.path.exists(target):
        os.rename(staged, target)
        os.makedirs(staged)  # keep the contract: `staged` exists and holds the old (empty) version
        return
    if _renameat2 is not None:
        result = _renameat2(_AT_FDCWD, staged.encode(), _AT_FDCWD, target.encode(), _RENAME_EXCHANGE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise PublishError(f"cannot exchange {staged} and {target}: {os.strerror(code)}")
    # No atomic exchange here: two renames. The partition is briefly absent, never mixed.
    aside = f"{staged}.previous"
    os.rename(target, aside)
    os.rename(staged, target)
    os.rename(aside, staged)


# --- crash safety: a journal per publishing stage, rolled back by the next holder of the day lock ----


def begin_publication(store: OutputStore, stage_root: str) -> None:
    """Mark a stage as publishing: if its process dies from here on, `recover_day` undoes its work."""
    store.write_json(f"{stage_root}/{JOURNAL}", {"swaps": []})


def publish_folders(store: OutputStore, stage_root: str, swaps: list[tuple[str, str]]) -> None:
    """Exchange each staged folder with its published target; the last exchange is the commit point.

    Call under the day lock, after `begin_publication`. Before the first exchange the journal records
    the inode of each staged (new) folder, so `recover_day` can tell which exchanges happened after a
    SIGKILL. Superseded versions are deleted only after the commit.
    """
    if store.is_local:
        journal = {
            "swaps": [
                {
                    "staged": staged,
                    "target": target,
                    "new_inode": os.stat(store.path(staged)).st_ino,
                    "target_existed": os.path.exists(store.path(target)),
                }
                for staged, target in swaps
            ]
        }
        store.write_json(f"{stage_root}/{JOURNAL}", journal)
        for staged, target in swaps:
            _swap_local(store.path(staged), store.path(target))
        for staged, _ in swaps:
            store.remove(staged)  # the superseded versions
    else:
        _publish_remote(store, stage_root, swaps)
    store.remove(f"{stage_root}/{JOURNAL}")


# --- object stores: the manifest is the commit --------------------------------------------------

BACKUP = "previous-evidence"


def versioned_names(store: OutputStore, folder: str, version: str) -> None:
    """On object stores, give each data file in a staged folder a version-unique name
    (`part-0000.parquet` → `part-0000.v<version>.parquet`), so publishing it never overwrites a file
    the current manifest lists. Locally folders are exchanged whole: nothing to do."""
    if store.is_local:
        return
    for relative in store.files(folder, ".parquet"):
        name = relative.rsplit("/", 1)[-1].removesuffix(".parquet").split(".v", 1)[0]
        store.fs.mv(store.path(relative), store.path(f"{folder}/{name}.v{version}.parquet"))
    store.fs.invalidate_cache(store.path(folder))


def _publish_remote(store: OutputStore, stage_root: str, swaps: list[tuple[str, str]]) -> None:
    """Copy the new files, back up the previous evidence, write the manifest (the commit), then delete
    what is superseded; every step journaled so `recover_day` can finish or undo it.

    The evidence folder's `attempts/` history is append-only (every attempt writes a file of its own
    name): it is neither staged, backed up, nor ever superseded, so a publication costs the same
    whatever the length of the day's history."""
    staged_last, target_last = swaps[-1]
    evidence = target_last if store.exists(f"{staged_last}/{MANIFEST}") else None
    entries = []
    for staged, target in swaps:
        old = store.tree(target)
        if target == evidence:
            old = [name for name in old if not name.startswith(f"{HISTORY}/")]
        entries.append({"staged": staged, "target": target, "new": store.tree(staged), "old": old})
    journal: dict[str, Any] = {"object_store": True, "swaps": entries, "commit": None}
    if evidence is not None:
        journal["commit"] = {
            "manifest": f"{evidence}/{MANIFEST}",
            "sha256": store.sha256(f"{staged_last}/{MANIFEST}")[1],
        }
    for entry in entries:
        overwritten = set(entry["new"]) & set(entry["old"])
        if entry["target"] != evidence and overwritten:  # versioned_names was not applied: readers would see a mix
            raise PublishError(f"{entry['target']}: new files would overwrite current ones: {sorted(overwritten)[:3]}")
    store.write_json(f"{stage_root}/{JOURNAL}", journal)
    if evidence is not None:
        for name in entries[-1]["old"]:
            store.copy_file(f"{evidence}/{name}", f"{stage_root}/{BACKUP}/{name}")
    for entry in entries:
        for name in entry["new"]:
            if entry["target"] != evidence or name != MANIFEST:
                store.copy_file(f"{entry['staged']}/{name}", f"{entry['target']}/{name}")
    if journal["commit"] is not None:
        store.copy_file(f"{staged_last}/{MANIFEST}", journal["commit"]["manifest"])  # the commit
    _delete_superseded(store, entries)


def _delete_superseded(store: OutputStore, swaps: list[dict[str, Any]]) -> None:
    for swap in swaps:
        superseded = sorted(set(swap["old"]) - set(swap["new"]))
        store.delete_files([f"{swap['target']}/{name}" for name in superseded])
        store.fs.invalidate_cache(store.path(swap["target"]))


def _recover_remote(store: OutputStore, stage_root: str, journal: dict[str, Any], committed: bool) -> str:
    swaps = journal["swaps"]
    if not swaps:
        return "rolled_back"  # killed before anything was copied
    if committed:
        _delete_superseded(store, swaps)
        return "published"
    for swap in swaps:  # take out what this publication added, then put the previous evidence back
        added = sorted(set(swap["new"]) - set(swap["old"]))
        store.delete_files([f"{swap['target']}/{n}" for n in added if store.exists(f"{swap['target']}/{n}")])
    for name in store.tree(f"{stage_root}/{BACKUP}"):
        store.copy_file(f"{stage_root}/{BACKUP}/{name}", f"{swaps[-1]['target']}/{name}")
    return "rolled_back"


def published_files(store: OutputStore, day: str, dataset: str = "content") -> list[str]:
    """The files of the published version of `dataset` (content | aggregates) for `day`, from its
    manifest: the way to read a day on object stores, where a listing may see two versions mid-publication.
    Full URIs (with the store's protocol), sorted; [] when the day was never published."""
    if dataset not in ("content", "aggregates"):
        raise ValueError("dataset must be 'content' or 'aggregates'")
    manifest = f"_audit/dt={day}/{MANIFEST}"
    if not store.exists(manifest):
        return []
    prefix = f"{dataset}/dt={day}/"
    outputs = store.read_json(manifest).get("outputs") or []
    return sorted(store.uri(o["path"]) for o in outputs if o["path"].startswith(prefix))


def recover_day(store: OutputStore, day: str) -> dict[str, str]:
    """Finish or undo every publication of `day` whose process died; call under the day lock.

    Returns {stage_root: "published" | "rolled_back"}. A publication whose last exchange happened is
    complete (only its superseded versions are deleted); otherwise each exchange that happened is
    reversed, so the previous version is whole again. Either way the stage is deleted: an attempt
    that was interrupted while publishing is over, and a rerun takes a new consent snapshot.
    """
    outcomes: dict[str, str] = {}
    for found in sorted(store.fs.glob(store.path(f"_staging/dt={day}/*/{JOURNAL}"))):
        stage_root = found[len(store.root_path) + 1 :].rsplit("/", 1)[0]
        outcomes[stage_root] = settle_publication(store, stage_root)
        store.remove(stage_root)
    return outcomes


def settle_publication(store: OutputStore, stage_root: str) -> str:
    """Finish (past its commit) or undo the publication journaled in `stage_root`; call under the day
    lock. The stage stays (its evidence can still be kept), its journal goes.
    Returns "published" or "rolled_back"."""
    if not store.exists(f"{stage_root}/{JOURNAL}"):
        return "rolled_back"  # it never began
    journal = _read_journal(store, stage_root)
    committed = _committed(store, journal)
    if not store.is_local:
        outcome = _recover_remote(store, stage_root, journal, committed)
    elif committed:
        outcome = "published"
    else:
        for swap in reversed(journal["swaps"]):
            if _holds_new_version(store, swap):
                _undo_swap(store, swap)
        outcome = "rolled_back"
    store.remove(f"{stage_root}/{JOURNAL}")
    return outcome


def publication_committed(store: OutputStore, stage_root: str) -> bool:
    """Whether the publication journaled in `stage_root` reached its commit; call under the day lock."""
    if not store.exists(f"{stage_root}/{JOURNAL}"):
        return False
    return _committed(store, _read_journal(store, stage_root))


def _read_journal(store: OutputStore, stage_root: str) -> dict[str, Any]:
    try:
        journal = store.read_json(f"{stage_root}/{JOURNAL}")
        journal["swaps"]
    except (ValueError, KeyError, TypeError):  # cannot happen with atomic writes; fail closed if it does
        raise PublishError(f"unreadable publication journal in {stage_root}") from None
    return journal


def _committed(store: OutputStore, journal: dict[str, Any]) -> bool:
    """Local: the last exchange (the evidence) happened. Object stores: the new manifest landed."""
    swaps = journal["swaps"]
    if not swaps:
        return False
    if store.is_local:
        for swap in swaps:
            _repair_two_renames(store.path(swap["staged"]), store.path(swap["target"]))
        return _holds_new_version(store, swaps[-1])
    commit = journal.get("commit")
    if commit is None or not store.exists(commit["manifest"]):
        return False
    return store.sha256(commit["manifest"])[1] == commit["sha256"]


def _holds_new_version(store: OutputStore, swap: dict[str, Any]) -> bool:
    try:
        return os.stat(store.path(swap["target"])).st_ino == swap["new_inode"]
    except FileNotFoundError:
        return False


def _undo_swap(store: OutputStore, swap: dict[str, Any]) -> None:
    staged, target = store.path(swap["staged"]), store.path(swap["target"])
    if swap["target_existed"]:
        _swap_local(staged, target)  # `staged` holds the previous version: exchange back
    else:  # there was no previous version: take the new one out again (onto the empty placeholder)
        os.rename(target, staged)


def _repair_two_renames(staged: str, target: str) -> None:
    """Where renameat2 is missing, `_swap_local` renames thrice; put back a folder left aside."""
    aside = f"{staged}.previous"
    if not os.path.exists(aside):
        return
    if not os.path.exists(target):
        os.rename(aside, target)
    elif not os.path.exists(staged):
        os.rename(aside, staged)
