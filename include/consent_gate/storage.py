"""The storage interface: what publication, the sweep, the auditors' page and the landing zone need
of a root (a local folder or an object-store URI), whatever holds it.

The two implementations live in `stores` (`LocalStorage`, `ObjectStorage`) and are told apart in one
place, `stores.storage_for`, from the filesystem the URI resolves to. Operations that read alike
everywhere (JSON, listings, checksums) are written once here through fsspec; those that differ are
abstract and named for what publication needs (an atomic folder exchange, a file opened without
following links, whether the attempt history travels with the evidence folder), so the callers read
as one algorithm. A third backend meets the contract in tests/test_storage.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, BinaryIO

import fsspec

JOURNAL = "publishing.json"  # in a stage being published: what `settle` needs to finish or undo it
BACKUP = "previous-evidence"  # object stores: the evidence the commit replaces, kept in the stage

Swap = tuple[str, str]  # (staged folder, the published folder it replaces)


class PublishError(RuntimeError):
    pass


class NotARegularFile(OSError):
    """A path that is a symlink, a folder or a device where a file was expected."""


class FileTooLarge(OSError):
    """A file holding more bytes than its reader reads: not read."""


def refuse_beyond(size: int, limit: int | None) -> None:
    """FileTooLarge when a file of `size` bytes holds more than `limit`."""
    if limit is not None and size > limit:
        raise FileTooLarge(f"more than {limit} bytes")


def within_limit(data: bytes, limit: int | None) -> bytes:
    """`data` (at most `limit` + 1 bytes of a file, when there is a limit); FileTooLarge beyond `limit`."""
    refuse_beyond(len(data), limit)
    return data


NOT_FOLLOWED = "a symbolic link: never followed (SPEC §2.1)"


class OutputStore(ABC):
    """A storage root and the operations publication needs on it.

    `stores.storage_for(uri, options)` chooses the URI's implementation, once; callers name the interface.
    """

    history_stays_in_place: bool
    """Whether a published evidence folder's `attempts/` history stays where it is during a
    publication (object stores: it is append-only, never staged) rather than travelling, whole, with
    the exchanged folder (local storage)."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.root = root.rstrip("/")
        self.fs, root_path = fsspec.core.url_to_fs(self.root, **(storage_options or {}))
        self.root_path = root_path.rstrip("/")

    # --- the same everywhere ------------------------------------------------------------------

    def path(self, relative: str) -> str:
        return f"{self.root_path}/{relative}" if relative else self.root_path

    def makedirs(self, relative: str) -> None:
        self.fs.makedirs(self.path(relative), exist_ok=True)

    def open(self, relative: str, mode: str = "rb") -> Any:
        if "w" in mode:
            self.fs.makedirs(self.path(relative).rsplit("/", 1)[0], exist_ok=True)
        return self.fs.open(self.path(relative), mode)

    def write_json(self, relative: str, payload: Any) -> None:
        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
        self.write_bytes(relative, data)

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

    def tree(self, relative: str) -> list[str]:
        """Every file below `relative` (nested folders included), relative to it, sorted; fresh listing."""
        base = self.path(relative)
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return []
        return sorted(p[len(base) + 1 :] for p in self.fs.find(base) if p.startswith(base + "/"))

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching `pattern` (relative to the root), sorted."""
        return sorted(found[len(self.root_path) + 1 :] for found in self.fs.glob(self.path(pattern)))

    def delete_files(self, relatives: list[str]) -> None:
        if relatives:
            self.fs.rm([self.path(r) for r in relatives])

    def sha256(self, relative: str) -> tuple[int, str]:
        """Size and sha256 of a file, streamed."""
        digest = hashlib.sha256()
        size = 0
        with self.fs.open(self.path(relative), "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

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

    def read_bytes(self, relative: str, limit: int | None = None) -> bytes:
        """A regular file's bytes, never through a link (see `open_no_follow`); FileTooLarge, having read
        no more than `limit` + 1 bytes, when it holds more than `limit`."""
        with self.open_no_follow(relative) as handle:
            return within_limit(handle.read() if limit is None else handle.read(limit + 1), limit)

    # --- where the backends differ --------------------------------------------------------------

    @abstractmethod
    def uri(self, relative: str) -> str:
        """`relative` as a URI any fsspec/pyarrow/DuckDB reader understands."""

    @abstractmethod
    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a whole small file so that no reader ever sees it half-written."""

    @abstractmethod
    def remove(self, relative: str) -> None:
        """Delete a file or a folder with everything in it; nothing when it does not exist."""

    @abstractmethod
    def copy_file(self, source: str, target: str) -> None:
        """A copy with a new identity (never a hard link): writing the copy leaves the source alone."""

    @abstractmethod
    def listing(self, relative: str) -> list[tuple[str, str]]:
        """(name, kind) of each entry directly under `relative`, kind "file", "directory", "symlink"
        or "other"; links are listed, never followed. [] when `relative` does not exist;
        NotARegularFile when the way to it goes through a link."""

    @abstractmethod
    def open_no_follow(self, relative: str) -> BinaryIO:
        """A regular file opened for reading; NotARegularFile when a link lies anywhere below the
        root on the way to it, or it is a folder or a device; FileNotFoundError when missing."""

    @abstractmethod
    def local_file(self, relative: str, scratch: str) -> str:
        """A local path holding the file's bytes: the file itself, or a download into `scratch`."""

    @abstractmethod
    def attach_to(self, connection: Any) -> None:
        """Let a DuckDB connection read this store's `uri`s."""

    @abstractmethod
    def day_lock(self, day: str) -> contextlib.AbstractContextManager[None]:
        """Serialises publication of one day."""

    @abstractmethod
    def carry_history(self, published: str, staged: str) -> None:
        """Before an evidence folder is exchanged: bring its published `attempts/` history into the
        staged folder when the history travels with it (see `history_stays_in_place`)."""

    @abstractmethod
    def version_data_files(self, folder: str, version: str) -> None:
        """Give the staged data files names unique to `version` where publishing them could
        otherwise overwrite a file the current manifest lists."""

    # --- the publication transaction (publish.publish_folders, publish.settle_publication) ----

    @abstractmethod
    def exchange_folders(self, stage_root: str, swaps: list[Swap]) -> None:
        """Put each staged folder in its target's place, the last exchange being the commit, so that
        readers see the previous version or the new one, never a mix. The journal in `stage_root`
        (written here, before anything changes) lets `finish_publication` / `undo_publication`
        settle a publication whose process died; superseded versions are deleted after the commit."""

    @abstractmethod
    def publication_committed(self, journal: dict[str, Any]) -> bool:
        """Whether the journaled publication reached its commit (call under the day lock)."""

    @abstractmethod
    def finish_publication(self, journal: dict[str, Any]) -> None:
        """Complete a publication past its commit: delete what it superseded."""

    @abstractmethod
    def undo_publication(self, stage_root: str, journal: dict[str, Any]) -> None:
        """Undo a publication that died before its commit: the previous version is whole again."""
