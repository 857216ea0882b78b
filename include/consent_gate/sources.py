"""Reading the landing zone: meeting folders into artifacts, bad units into quarantine.

Storage is reached through `stores.storage_for`, so the same code reads local paths, `file://` and
`s3://` URIs, and never follows a symbolic link.
Every file is read once: its bytes are hashed for the manifest and parsed from the same buffer.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from consent_gate.artifacts import (
    Artifact,
    parse_meeting,
    read_chat,
    read_recordings,
    read_summary,
    read_transcript,
)
from consent_gate.records import (
    MalformedRecord,
    Quarantined,
    is_safe_name,
    safe_name,
)
from consent_gate.storage import NOT_FOLLOWED, FileTooLarge, NotARegularFile
from consent_gate.stores import storage_for


@dataclass(frozen=True, slots=True)
class InputFile:
    path: str  # relative to the landing zone root
    size: int
    sha256: str


@dataclass(slots=True)
class MeetingRead:
    """What one meeting folder yielded: artifacts, quarantined units and the files read."""

    artifacts: list[Artifact] = field(default_factory=list)
    quarantine: list[Quarantined] = field(default_factory=list)
    files: list[InputFile] = field(default_factory=list)
    units_in: int = 0  # cues, chat lines, summaries, recordings read, and units quarantined whole


BAD_NAME = "name is not [A-Za-z0-9._-]{1,128} (named here by its sha256)"

# The most bytes of a meeting's file that are read. A meeting's files are read whole, and each cue or line
# becomes an artifact held until the meeting is decided (~700 bytes of memory a cue: 64 MiB of short
# cues, ~1.1M of them, take ~0.8 GB); a day-long meeting's transcript is a few MB, the meeting.json of a
# 100,000-participant webinar ~25 MB. A larger file is one quarantined unit, not a worker out of memory.
MAX_FILE_BYTES = 64 << 20
TOO_LARGE = f"larger than {MAX_FILE_BYTES >> 20} MiB; not read (a meeting's files are read whole)"


@dataclass(frozen=True, slots=True, order=True)
class Entry:
    """One name in a landing-zone folder, as listed, never following a link."""

    name: str  # safe_name(): the name itself, or its sha256 when it is not a valid name
    kind: str  # "file", "directory", "symlink" or "other"
    valid_name: bool

    def problem(self, expected: str) -> str | None:
        """Why this entry cannot be read as `expected` ("file" or "directory"); None when it can."""
        if not self.valid_name:
            return BAD_NAME
        if self.kind == "symlink":
            return NOT_FOLLOWED
        if self.kind != expected:
            return "not a folder" if expected == "directory" else "not a regular file"
        return None


class LandingZone:
    """A landing zone root (path or fsspec URI) and the day partitions below it, read through the
    root's storage (`stores.storage_for`, chosen once), which never follows a symbolic link (SPEC §2.1):
    local listings use lstat, and files are opened component by component with O_NOFOLLOW, so a link
    swapped in after the listing is refused too. Object stores have no links.
    """

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.root = root.rstrip("/")
        self._storage = storage_for(self.root, storage_options)
        self.fs = self._storage.fs

    def meetings_prefix(self, day: date) -> str:
        return f"meetings/dt={day.isoformat()}"

    def telemetry_prefix(self, day: date) -> str:
        return f"telemetry/dt={day.isoformat()}"

    def _abs(self, relative: str) -> str:
        return self._storage.path(relative)

    def entries(self, relative: str) -> list[Entry]:
        """The names directly under `relative` (sorted; none when it does not exist), links not followed."""
        try:
            found = self._storage.listing(relative)
        except NotARegularFile:
            raise NotARegularFile(f"{relative}: {NOT_FOLLOWED}") from None
        return sorted(Entry(safe_name(name), kind, is_safe_name(name)) for name, kind in found)

    def meeting_folders(self, day: date) -> list[str]:
        """Relative paths of every entry of the day's meetings folder, sorted (a stable order).

        Entries that are not readable meeting folders (links, files, invalid names) are listed too:
        `read_meeting` quarantines each as one unit, so none is skipped silently.
        """
        prefix = self.meetings_prefix(day)
        return [f"{prefix}/{entry.name}" for entry in self.entries(prefix)]

    def telemetry_entries(self, day: date) -> tuple[list[str], list[Quarantined]]:
        """The day's readable telemetry files (sorted), and the `*.jsonl.gz` entries that cannot be read."""
        prefix = self.telemetry_prefix(day)
        readable, refused = [], []
        for entry in self.entries(prefix):
            if not (entry.name.endswith(".jsonl.gz") or not entry.valid_name):
                continue
            problem = entry.problem("file")
            if problem is None:
                readable.append(f"{prefix}/{entry.name}")
            else:
                refused.append(Quarantined(f"{prefix}/{entry.name}", problem))
        return readable, refused

    def telemetry_files(self, day: date) -> list[str]:
        """Relative paths of the day's readable telemetry files, sorted."""
        return self.telemetry_entries(day)[0]

    def url(self, relative: str) -> str:
        """A URL fsspec opens with this zone's protocol."""
        return self._storage.uri(relative)

    def open_binary(self, relative: str) -> Any:
        """A binary file object, opened without following a link anywhere below the root."""
        return self._storage.open_no_follow(relative)

    def read_bytes(self, relative: str) -> bytes | None:
        """The file's bytes, or None when it does not exist; NotARegularFile for a link or folder,
        FileTooLarge beyond MAX_FILE_BYTES."""
        try:
            return self._storage.read_bytes(relative, MAX_FILE_BYTES)
        except FileNotFoundError:
            return None


class HashingReader:
    """A binary file read through: the bytes read are hashed (sha256) and counted on the way, so a file
    is described by the very bytes its reader read, without reading it again to hash it."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._sha256 = hashlib.sha256()
        self._size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._sha256.update(data)
        self._size += len(data)
        return data

    def to_the_end(self, path: str) -> InputFile:
        """The file's entry, once whatever its reader left unread is read too."""
        while self.read(1 << 20):
            pass
        return InputFile(path, self._size, self._sha256.hexdigest())


def input_file(path: str, data: bytes) -> InputFile:
    return InputFile(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def read_meeting(zone: LandingZone, folder: str, day: date) -> MeetingRead:
    """Read one meeting folder. Fails closed: an unreadable meeting.json quarantines the folder."""
    result = MeetingRead()
    meeting_id = folder.rsplit("/", 1)[-1]
    try:
        present = {entry.name: entry for entry in zone.entries(folder)} if is_safe_name(meeting_id) else None
    except NotARegularFile:
        present = None
    if present is None:  # an invalid name, a link, or a file where the folder should be: one unit
        problem = BAD_NAME if not is_safe_name(meeting_id) else _folder_problem(zone, folder)
        return _whole_folder(result, folder, f"meeting folder {problem}; nothing in it is read")
    entry = present.get("meeting.json")
    if entry is None:
        return _whole_folder(result, folder, "meeting.json is missing; no artifact of the folder is read")
    raw, problem = _read_entry(zone, folder, entry)
    if raw is None:
        return _whole_folder(result, folder, f"meeting.json: {problem}; no artifact of the folder is read")
    result.files.append(input_file(f"{folder}/meeting.json", raw))
    try:
        meeting = parse_meeting(raw, meeting_id, day)
    except MalformedRecord as error:
        return _whole_folder(result, folder, f"meeting.json: {error}; no artifact of the folder is read")

    for entry in present.values():  # an odd file name may itself be personal data: one unit, by its hash
        if not entry.valid_name:
            result.quarantine.append(Quarantined(f"{folder}/{entry.name}", f"file {BAD_NAME}; not read"))
            result.units_in += 1
    readers = (
        ("transcript.vtt", read_transcript),
        ("chat.jsonl", read_chat),
        ("summary.json", read_summary),
        ("recordings.json", read_recordings),
    )
    for name, reader in readers:
        if name not in present:
            continue
        data, problem = _read_entry(zone, folder, present[name])
        if data is None:  # a link, a folder, or vanished between listing and reading: fail closed, say so
            result.quarantine.append(Quarantined(f"{folder}/{name}", problem or "unreadable"))
            result.units_in += 1
            continue
        result.files.append(input_file(f"{folder}/{name}", data))
        artifacts, quarantined = reader(data, meeting, f"{folder}/{name}")
        result.artifacts.extend(artifacts)
        result.quarantine.extend(quarantined)
        result.units_in += len(artifacts) + len(quarantined)
    _quarantine_duplicate_ids(result)
    return result


def _whole_folder(result: MeetingRead, folder: str, error: str) -> MeetingRead:
    result.quarantine.append(Quarantined(folder, error))
    result.units_in += 1
    return result


def _folder_problem(zone: LandingZone, folder: str) -> str:
    parent, name = folder.rsplit("/", 1)
    entry = next((e for e in zone.entries(parent) if e.name == name), None)
    return (entry.problem("directory") if entry else None) or "unreadable"


def _read_entry(zone: LandingZone, folder: str, entry: Entry) -> tuple[bytes | None, str | None]:
    """The bytes of a listed file, or None and why not (never following a link, never reading a folder)."""
    problem = entry.problem("file")
    if problem is not None:
        return None, problem
    try:
        data = zone.read_bytes(f"{folder}/{entry.name}")
    except NotARegularFile as error:
        return None, str(error).rsplit(": ", 1)[-1]
    except FileTooLarge:
        return None, TOO_LARGE
    except OSError as error:  # the error text holds the path, which is known; its type says what
        return None, f"cannot be read ({type(error).__name__})"
    return (data, None) if data is not None else (None, "file disappeared while reading")


def _quarantine_duplicate_ids(result: MeetingRead) -> None:
    """Two records with one artifact_id cannot both be right: both are quarantined."""
    counts = Counter(a.artifact_id for a in result.artifacts)
    duplicated = {aid for aid, n in counts.items() if n > 1}
    if not duplicated:
        return
    kept = []
    for artifact in result.artifacts:
        if artifact.artifact_id in duplicated:
            result.quarantine.append(
                Quarantined(artifact.unit, "duplicate artifact_id: another record has the same id")
            )
        else:
            kept.append(artifact)
    result.artifacts = kept
