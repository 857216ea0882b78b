"""Output storage: staging, the per-day lock, and atomic publication of a day's partitions.

Readers of `content/dt=D` must see the previous complete version or the new one, never a mix
(SPEC §6). On a local filesystem the staged directory and the published one are exchanged in one
`renameat2(RENAME_EXCHANGE)` call, so the partition path never disappears and never holds both
versions. Object stores have no atomic rename: there new files get run-unique names, are written
before any old file is deleted, and the manifest lists the exact file set of the version.
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

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


class PublishError(RuntimeError):
    pass


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
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
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

    def remove(self, relative: str) -> None:
        target = self.path(relative)
        if self.is_local:
            shutil.rmtree(target, ignore_errors=True)
        elif self.fs.exists(target):
            self.fs.rm(target, recursive=True)

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

    def replace_directory(self, staged: str, target: str) -> None:
        """Make `staged` the content of `target`, atomically where the filesystem allows.

        Afterwards `staged` no longer exists and the previous version is deleted from storage.
        """
        if self.is_local:
            _swap_local(self.path(staged), self.path(target))
            self.remove(staged)  # after the exchange, `staged` holds the superseded version
        else:
            self._replace_remote(staged, target)

    def _replace_remote(self, staged: str, target: str) -> None:
        old = set(self.files(target))
        for source in self.files(staged):
            name = source.rsplit("/", 1)[-1]
            self.fs.copy(self.path(source), self.path(f"{target}/{name}"))
        new_names = {s.rsplit("/", 1)[-1] for s in self.files(staged)}
        for path in sorted(old):
            if path.rsplit("/", 1)[-1] not in new_names:
                self.fs.rm(self.path(path))
        self.remove(staged)


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
