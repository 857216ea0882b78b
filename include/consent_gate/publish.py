"""Publication of a day's partitions: one algorithm, whatever the storage (`storage.OutputStore`).

Readers of `content/dt=D` must see the previous complete version or the new one, never a mix
(SPEC §6). Under the day lock, a stage is marked as publishing (`begin_publication`), its folders take
the place of the published ones with the evidence (the manifest) last, the commit
(`publish_folders`: the store's `exchange_folders`), and its journal goes. Whoever takes the day lock
next calls `recover_day`, which finishes a publication killed after its commit or undoes one killed
before it, so a SIGKILL at any point leaves the previous version whole (tests/test_publish_crash.py,
tests/test_s3.py). How a store exchanges folders and settles a journal is its own (`stores`): local
folders are exchanged with renameat2; on object stores the manifest is the commit and readers resolve
a day's files through it (`published_files`, `consent-gate files`).
"""

from __future__ import annotations

from typing import Any

from consent_gate.layout import HISTORY, MANIFEST
from consent_gate.storage import BACKUP, JOURNAL, OutputStore, PublishError, Swap
from consent_gate.stores import storage_for

__all__ = ["BACKUP", "HISTORY", "JOURNAL", "MANIFEST", "OutputStore", "PublishError", "storage_for"]


class InterruptedPublication(PublishError):
    """The attempt's publication was interrupted and rolled back; its stage is gone: rerun the day."""


# --- crash safety: a journal per publishing stage, rolled back by the next holder of the day lock ----


def begin_publication(store: OutputStore, stage_root: str) -> None:
    """Mark a stage as publishing: if its process dies from here on, `recover_day` undoes its work."""
    store.write_json(f"{stage_root}/{JOURNAL}", {"swaps": []})


def publish_folders(store: OutputStore, stage_root: str, swaps: list[Swap]) -> None:
    """Exchange each staged folder with its published target; the last exchange is the commit point.

    Call under the day lock, after `begin_publication`. The store journals the exchange before it
    begins, so `recover_day` can tell what happened after a SIGKILL; superseded versions are deleted
    only after the commit.
    """
    store.exchange_folders(stage_root, swaps)
    store.remove(f"{stage_root}/{JOURNAL}")


def versioned_names(store: OutputStore, folder: str, version: str) -> None:
    """Where publishing could overwrite a file the current manifest lists (object stores), give each
    data file in a staged folder a version-unique name."""
    store.version_data_files(folder, version)


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
    for found in store.glob(f"_staging/dt={day}/*/{JOURNAL}"):
        stage_root = found.rsplit("/", 1)[0]
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
    if _committed(store, journal):
        store.finish_publication(journal)
        outcome = "published"
    else:
        store.undo_publication(stage_root, journal)
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
    return bool(journal["swaps"]) and store.publication_committed(journal)
