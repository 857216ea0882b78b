"""The two implementations of `storage.OutputStore`, and the one place that chooses between them.

Local storage publishes by exchanging folders: the staged directory and the published one are
swapped in one `renameat2(RENAME_EXCHANGE)` call, so the partition path never disappears and never
holds both versions; the journal records each staged folder's inode, so the next holder of the day
lock can tell which exchanges happened before a SIGKILL. Links are never followed (SPEC §2.1).

Object stores have no rename and no multi-object atomicity, so there the **manifest is the commit**
(readers resolve a day's files through it, as with any table format): data files get version-unique
names, every new file is copied before the manifest, the previous evidence is backed up in the stage,
the manifest is written last (one PUT), and only then are superseded files deleted. They have no
links and no locks: the orchestrator serialises a day's publications (the Airflow pool).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import stat
import sys
import weakref
from collections.abc import Iterator
from typing import Any, BinaryIO

import fsspec

from consent_gate.layout import HISTORY, MANIFEST
from consent_gate.storage import (
    BACKUP,
    JOURNAL,
    NOT_FOLLOWED,
    NotARegularFile,
    OutputStore,
    PublishError,
    Swap,
    refuse_beyond,
    within_limit,
)

_LOCAL_PROTOCOLS = ("file", "local")


def implementation_for(uri: str, storage_options: dict[str, Any] | None = None) -> type[OutputStore]:
    """Local or object storage, from the filesystem the URI resolves to (a plain path is local)."""
    fs, _ = fsspec.core.url_to_fs(uri.rstrip("/"), **(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return LocalStorage if protocol in _LOCAL_PROTOCOLS else ObjectStorage


def storage_for(uri: str, storage_options: dict[str, Any] | None = None) -> OutputStore:
    """The storage behind `uri`, chosen once (as a Dagster deployment chooses its I/O)."""
    return implementation_for(uri, storage_options)(uri, storage_options)


# --- local storage ----------------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)

# openat2(2) (Linux 5.6+): the same number on x86_64 and aarch64; elsewhere the lstat walk is used.
_SYS_OPENAT2 = 437 if os.uname().machine in ("x86_64", "aarch64") else None
_RESOLVE_NO_SYMLINKS = 0x04  # no link at any component, the last one included
_RESOLVE_BENEATH = 0x08  # no way out of the starting folder: no "..", no absolute path
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


# Made once, read by the kernel only: a struct per call cost a third of an open (~0.9 of 2.5 µs).
_HOW_FILE = ctypes.byref(_OpenHow(_READ_FLAGS, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH))
_HOW_FOLDER = ctypes.byref(_OpenHow(_FOLDER_FLAGS, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH))
_HOW_SIZE = ctypes.sizeof(_OpenHow)


class _Openat2:
    """A file or folder below a root folder opened in one openat2 call that refuses a link at any
    component and any way out of the root: what the lstat of every component
    (`LocalStorage._no_follow_path`) checks, without the window between the checks and the open, in
    ~7 µs where the walk takes ~16 µs (a day of 10,000 meetings opens ~90,000 files). The root is
    opened once (a forked child inherits it; a pickled copy opens its own); links above it are
    followed, as the walk allows. Unavailable (None from `open`) on other machines, on kernels before
    5.6 and where a seccomp filter refuses the call: callers then walk."""

    usable = _SYS_OPENAT2 is not None

    def __init__(self, root: str) -> None:
        self.root = root
        self._fd: int | None = None  # inherited by a forked child, where it stays valid

    def open(self, relative: str, *, folder: bool = False) -> int | None:
        """A descriptor of `relative` (a `folder`, or anything else) opened for reading; None when
        openat2 cannot be used here (or, for a folder, when something on the way is not one: the walk
        says what). NotARegularFile for a link or a way out of the root; FileNotFoundError and other
        OSErrors as `os.open` raises them."""
        if not _Openat2.usable:
            return None
        how = _HOW_FOLDER if folder else _HOW_FILE
        fd = _libc.syscall(_SYS_OPENAT2, self._root_fd(), relative.encode(), how, _HOW_SIZE)
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code == errno.ELOOP:
            raise NotARegularFile(f"{relative}: {NOT_FOLLOWED}")
        if code == errno.EXDEV:
            raise NotARegularFile(f"{relative}: outside the root")
        if code in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG):  # no openat2 here: walk from now on
            _Openat2.usable = False
            return None
        if code == errno.EAGAIN:  # a rename raced the resolution: this one is walked
            return None
        if folder and code == errno.ENOTDIR:  # a file where a folder should be: the walk names which
            return None
        raise OSError(code, os.strerror(code), relative)

    def _root_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            weakref.finalize(self, os.close, self._fd)
        return self._fd

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "_fd": None}  # a descriptor means nothing in another process


class LocalStorage(OutputStore):
    """A local folder: atomic folder exchange, per-day flock, no link ever followed."""

    history_stays_in_place = False

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__(root, storage_options)
        self._beneath = _Openat2(self.root_path)

    def uri(self, relative: str) -> str:
        return self.path(relative)

    def write_bytes(self, relative: str, data: bytes) -> None:
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

    def remove(self, relative: str) -> None:
        path = self.path(relative)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:  # a file, or a link (the link goes, never what it points to)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def copy_file(self, source: str, target: str) -> None:
        os.makedirs(os.path.dirname(self.path(target)), exist_ok=True)
        self.fs.copy(self.path(source), self.path(target))

    def listing(self, relative: str) -> list[tuple[str, str]]:
        try:
            fd = self._beneath.open(relative, folder=True)
            where: str | int = self._no_follow_path(relative, directory=True) if fd is None else fd
        except FileNotFoundError:
            return []
        try:
            with os.scandir(where) as entries:  # a descriptor is duplicated by scandir: closed below
                return [(entry.name, _local_kind(entry)) for entry in entries]
        except FileNotFoundError:
            return []
        finally:
            if fd is not None:
                os.close(fd)

    def open_no_follow(self, relative: str) -> BinaryIO:
        fd = self._beneath.open(relative)
        if fd is None:
            return open_no_follow(self._no_follow_path(relative))
        return _regular_file(fd)

    def read_bytes(self, relative: str, limit: int | None = None) -> bytes:
        """`OutputStore.read_bytes` with `os.read` on the descriptor: a day reads ~40,000 small files,
        and a buffered file object for each cost a tenth of reading them."""
        fd = self._beneath.open(relative)
        if fd is None:
            return super().read_bytes(relative, limit)
        size = _regular_size(fd)
        try:
            refuse_beyond(size, limit)  # known from fstat: not a byte read
            return within_limit(_read_to_end(fd, size, limit), limit)  # unless it grew meanwhile
        finally:
            os.close(fd)

    def _no_follow_path(self, relative: str, *, directory: bool = False) -> str:
        """The path of `relative`, each component below the root checked not to be a link (lstat), so
        a link anywhere on the way is refused, not only at the last component."""
        path = self.root_path
        for part in relative.split("/"):
            path = f"{path}/{part}"
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise NotARegularFile(f"{relative}: {NOT_FOLLOWED}")
        if directory and not stat.S_ISDIR(mode):
            raise NotARegularFile(f"{relative}: not a folder")
        return path

    def local_file(self, relative: str, scratch: str) -> str:
        return self.path(relative)

    def attach_to(self, connection: Any) -> None:
        pass  # DuckDB reads local paths itself

    @contextlib.contextmanager
    def day_lock(self, day: str) -> Iterator[None]:
        """An flock that dies with its holder."""
        lock_dir = self.path("_locks")
        os.makedirs(lock_dir, exist_ok=True)
        with open(f"{lock_dir}/dt={day}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def carry_history(self, published: str, staged: str) -> None:
        if self.exists(published):  # the folder is exchanged whole: the history goes with it
            self.copy_tree(published, staged)

    def copy_tree(self, source: str, target: str) -> None:
        """Copy a folder as hard links (instant; the source stays whole if interrupted)."""
        shutil.copytree(self.path(source), self.path(target), copy_function=os.link)

    def version_data_files(self, folder: str, version: str) -> None:
        pass  # folders are exchanged whole: a new file never lands beside a current one

    def exchange_folders(self, stage_root: str, swaps: list[Swap]) -> None:
        journal = {
            "swaps": [
                {
                    "staged": staged,
                    "target": target,
                    "new_inode": os.stat(self.path(staged)).st_ino,
                    "target_existed": os.path.exists(self.path(target)),
                }
                for staged, target in swaps
            ]
        }
        self.write_json(f"{stage_root}/{JOURNAL}", journal)
        for staged, target in swaps:
            _swap_local(self.path(staged), self.path(target))
        for staged, _ in swaps:
            self.remove(staged)  # the superseded versions

    def publication_committed(self, journal: dict[str, Any]) -> bool:
        """The last exchange (the evidence) happened."""
        swaps = journal["swaps"]
        for swap in swaps:
            _repair_two_renames(self.path(swap["staged"]), self.path(swap["target"]))
        return self._holds_new_version(swaps[-1])

    def finish_publication(self, journal: dict[str, Any]) -> None:
        pass  # the superseded versions were in the stage, which goes with it

    def undo_publication(self, stage_root: str, journal: dict[str, Any]) -> None:
        for swap in reversed(journal["swaps"]):
            if self._holds_new_version(swap):
                self._undo_swap(swap)

    def _holds_new_version(self, swap: dict[str, Any]) -> bool:
        try:
            return os.stat(self.path(swap["target"])).st_ino == swap["new_inode"]
        except FileNotFoundError:
            return False

    def _undo_swap(self, swap: dict[str, Any]) -> None:
        staged, target = self.path(swap["staged"]), self.path(swap["target"])
        if swap["target_existed"]:
            _swap_local(staged, target)  # `staged` holds the previous version: exchange back
        else:  # there was no previous version: take the new one out again (onto the empty placeholder)
            os.rename(target, staged)


def open_no_follow(path: str) -> Any:
    """Open a local regular file for reading without following a link at its last component."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise NotARegularFile(NOT_FOLLOWED) from None
        raise
    return _regular_file(fd)


def _regular_file(fd: int) -> Any:
    """The open descriptor as a binary file; NotARegularFile (closing it) unless it is a regular file."""
    _regular_size(fd)
    return os.fdopen(fd, "rb")


def _regular_size(fd: int) -> int:
    """The size of the open file; NotARegularFile (closing it) unless it is a regular file."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a folder, FIFO or device named like a data file
        os.close(fd)
        raise NotARegularFile("not a regular file")
    return info.st_size


def _read_to_end(fd: int, size: int, limit: int | None = None) -> bytes:
    """Every byte of the open file, or its first `limit` + 1: `size` and one more asked for first, so a
    file of the size its `fstat` said takes one read and one empty read; one that grew meanwhile is read
    on to its end, or past its limit."""
    most = sys.maxsize if limit is None else limit + 1
    parts = [os.read(fd, min(size + 1, most))]
    read = len(parts[0])
    while parts[-1] and read < most:
        parts.append(os.read(fd, min(1 << 20, most - read)))
        read += len(parts[-1])
    return parts[0] if len(parts) == 2 and not parts[1] else b"".join(parts)


def _local_kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "symlink"
    if entry.is_dir(follow_symlinks=False):
        return "directory"
    return "file" if entry.is_file(follow_symlinks=False) else "other"


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


def _repair_two_renames(staged: str, target: str) -> None:
    """Where renameat2 is missing, `_swap_local` renames thrice; put back a folder left aside."""
    aside = f"{staged}.previous"
    if not os.path.exists(aside):
        return
    if not os.path.exists(target):
        os.rename(aside, target)
    elif not os.path.exists(staged):
        os.rename(aside, staged)


# --- object stores: the manifest is the commit --------------------------------------------------


class ObjectStorage(OutputStore):
    """An object store (S3 and the like) through fsspec: no rename, no links, no locks."""

    history_stays_in_place = True

    def uri(self, relative: str) -> str:
        return self.fs.unstrip_protocol(self.path(relative))

    def write_bytes(self, relative: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(relative), data)  # a PUT is atomic per object

    def remove(self, relative: str) -> None:
        target = self.path(relative)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    def copy_file(self, source: str, target: str) -> None:
        self.fs.copy(self.path(source), self.path(target))  # server-side

    def listing(self, relative: str) -> list[tuple[str, str]]:
        base = self.path(relative)
        if not self.fs.exists(base):
            return []
        return [
            (e["name"].rstrip("/").rsplit("/", 1)[-1], "directory" if e["type"] == "directory" else "file")
            for e in self.fs.ls(base, detail=True)
        ]

    def open_no_follow(self, relative: str) -> BinaryIO:
        return self.fs.open(self.path(relative), "rb")  # keys are opened as given: there are no links

    def read_bytes(self, relative: str, limit: int | None = None) -> bytes:
        path = self.path(relative)
        if limit is None:
            return self.fs.cat_file(path)  # one GET
        try:
            return within_limit(self.fs.cat_file(path, start=0, end=limit + 1), limit)  # one ranged GET
        except OSError as error:  # S3 satisfies no range of an empty object (416)
            if error.errno == errno.EINVAL and self.fs.size(path) == 0:
                return b""
            raise

    def local_file(self, relative: str, scratch: str) -> str:
        path = f"{scratch}/{relative.rsplit('/', 1)[-1]}"
        with self.open(relative) as source, open(path, "wb") as target:
            while chunk := source.read(8 << 20):
                target.write(chunk)
        return path

    def attach_to(self, connection: Any) -> None:
        connection.register_filesystem(self.fs)

    @contextlib.contextmanager
    def day_lock(self, day: str) -> Iterator[None]:
        yield  # the orchestrator serialises (the Airflow pool `consent_gate_publish`)

    def carry_history(self, published: str, staged: str) -> None:
        pass  # the history is append-only and stays in place (`exchange_folders`)

    def version_data_files(self, folder: str, version: str) -> None:
        """`part-0000.parquet` → `part-0000.v<version>.parquet`."""
        for relative in self.files(folder, ".parquet"):
            name = relative.rsplit("/", 1)[-1].removesuffix(".parquet").split(".v", 1)[0]
            self.fs.mv(self.path(relative), self.path(f"{folder}/{name}.v{version}.parquet"))
        self.fs.invalidate_cache(self.path(folder))

    def exchange_folders(self, stage_root: str, swaps: list[Swap]) -> None:
        """Copy the new files, back up the previous evidence, write the manifest (the commit), then
        delete what is superseded; every step journaled.

        The evidence folder's `attempts/` history is append-only (every attempt writes a file of its
        own name): it is neither staged, backed up, nor ever superseded, so a publication costs the
        same whatever the length of the day's history."""
        staged_last, target_last = swaps[-1]
        evidence = target_last if self.exists(f"{staged_last}/{MANIFEST}") else None
        entries = []
        for staged, target in swaps:
            old = self.tree(target)
            if target == evidence:
                old = [name for name in old if not name.startswith(f"{HISTORY}/")]
            entries.append({"staged": staged, "target": target, "new": self.tree(staged), "old": old})
        journal: dict[str, Any] = {"object_store": True, "swaps": entries, "commit": None}
        if evidence is not None:
            journal["commit"] = {
                "manifest": f"{evidence}/{MANIFEST}",
                "sha256": self.sha256(f"{staged_last}/{MANIFEST}")[1],
            }
        for entry in entries:
            overwritten = sorted(set(entry["new"]) & set(entry["old"]))
            if entry["target"] != evidence and overwritten:  # version_data_files was not applied: a mix
                raise PublishError(f"{entry['target']}: new files would overwrite current ones: {overwritten[:3]}")
        self.write_json(f"{stage_root}/{JOURNAL}", journal)
        if evidence is not None:
            for name in entries[-1]["old"]:
                self.copy_file(f"{evidence}/{name}", f"{stage_root}/{BACKUP}/{name}")
        for entry in entries:
            for name in entry["new"]:
                if entry["target"] != evidence or name != MANIFEST:
                    self.copy_file(f"{entry['staged']}/{name}", f"{entry['target']}/{name}")
        if journal["commit"] is not None:
            self.copy_file(f"{staged_last}/{MANIFEST}", journal["commit"]["manifest"])  # the commit
        self.finish_publication(journal)

    def publication_committed(self, journal: dict[str, Any]) -> bool:
        """The new manifest landed."""
        commit = journal.get("commit")
        if commit is None or not self.exists(commit["manifest"]):
            return False
        return self.sha256(commit["manifest"])[1] == commit["sha256"]

    def finish_publication(self, journal: dict[str, Any]) -> None:
        for swap in journal["swaps"]:
            superseded = sorted(set(swap["old"]) - set(swap["new"]))
            self.delete_files([f"{swap['target']}/{name}" for name in superseded])
            self.fs.invalidate_cache(self.path(swap["target"]))

    def undo_publication(self, stage_root: str, journal: dict[str, Any]) -> None:
        swaps = journal["swaps"]
        if not swaps:
            return  # killed before anything was copied
        for swap in swaps:  # take out what this publication added, then put the previous evidence back
            added = sorted(set(swap["new"]) - set(swap["old"]))
            self.delete_files([f"{swap['target']}/{n}" for n in added if self.exists(f"{swap['target']}/{n}")])
        for name in self.tree(f"{stage_root}/{BACKUP}"):
            self.copy_file(f"{stage_root}/{BACKUP}/{name}", f"{swaps[-1]['target']}/{name}")
