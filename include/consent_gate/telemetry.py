"""Reading telemetry: an allow-list of fields from each line, group key values allow-listed by policy.

Only the fields in `ALLOWED_FIELDS` of an event are ever looked up, so identifiers and anything
upstream adds (e-mails, IPs, device ids) cannot leak into output or error messages. `aggregates`
turns the events read here into k-anonymous groups.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any, NamedTuple

import fsspec
import fsspec.core

from consent_gate.config import Policy
from consent_gate.records import (
    MalformedRecord,
    load_json,
    optional_str,
    parse_timestamp,
    require_object,
    require_str,
)
from consent_gate.sources import LandingZone

# The group keys besides dt, in output order. A missing, null or empty value becomes UNKNOWN so that
# events without it still count (in their own group) instead of vanishing.
GROUP_FIELDS = ("event_type", "client_version", "platform", "region")


UNKNOWN = "unknown"


OTHER = "other"  # a value outside the policy's allow-list (SPEC §4, revised)


# The whole allow-list: these are the only keys of an event this module ever looks up. Identifiers
# such as account_id or meeting_id, and anything upstream adds (e-mails, IPs, device ids), are never
# read, so they cannot leak into output or error messages.
ALLOWED_FIELDS = ("event_id", "ts", "user_id", *GROUP_FIELDS, "duration_ms")


# What a corrupt or truncated gzip stream, or a storage failure, raises while a file is read.
_READ_ERRORS = (OSError, EOFError, zlib.error)


@dataclass(frozen=True)
class GroupValues:
    """The policy's allow-lists of group key values (SPEC §4, revised)."""

    event_types: frozenset[str]
    platforms: frozenset[str]
    regions: frozenset[str]
    client_version: re.Pattern[str]

    @classmethod
    def from_policy(cls, policy: Any) -> GroupValues:
        return cls(
            frozenset(policy.telemetry_event_types),
            frozenset(policy.telemetry_platforms),
            frozenset(policy.telemetry_regions),
            re.compile(policy.telemetry_client_version_pattern),
        )

    def group_of(self, raw: tuple[str | None, str | None, str | None, str | None]) -> tuple[str, str, str, str]:
        """The published GROUP_FIELDS values of an event's raw ones: UNKNOWN when missing, the value when
        allow-listed, else OTHER. (One call per line, unrolled: it runs for every telemetry event.)"""
        event_type, client_version, platform, region = raw
        return (
            UNKNOWN if event_type is None else event_type if event_type in self.event_types else OTHER,
            UNKNOWN if client_version is None
            else client_version if self.client_version.fullmatch(client_version) else OTHER,
            UNKNOWN if platform is None else platform if platform in self.platforms else OTHER,
            UNKNOWN if region is None else region if region in self.regions else OTHER,
        )  # fmt: skip


def default_group_values() -> GroupValues:
    return GroupValues.from_policy(Policy())


_DEFAULT_VALUES = default_group_values()


class TelemetryEvent(NamedTuple):
    """The allow-listed part of one event: what aggregation needs, and no identifier but user_id.

    A NamedTuple, not a frozen dataclass: one is built per line, and tuple construction is cheaper.
    """

    event_id: str
    day: date
    group: tuple[str, str, str, str]  # GROUP_FIELDS values: allow-listed, UNKNOWN or OTHER
    user_id: str | None
    duration_ms: float | None
    # Hash of the parsed allow-listed fields: equal hashes are the same delivery. Compared only within one
    # run (Python's hash is per process), and only between deliveries of one event_id.
    content: int


def parse_event(line: bytes, values: GroupValues | None = None) -> TelemetryEvent:
    """One telemetry line to its allow-listed fields; MalformedRecord names the field, never the value."""
    # Strict JSON (SPEC §2.1): duplicate keys, NaN, lone surrogates and deep nesting are malformed.
    decoded = require_object(load_json(line, "<line>"), "<line>")
    # Project onto the allow-list first (about 1 us a line): the code below cannot reach any other key,
    # even by mistake, and the rest of the event is garbage once this function returns.
    record = {name: decoded[name] for name in ALLOWED_FIELDS if name in decoded}
    event_id = require_str(record, "event_id")
    instant = parse_timestamp(record.get("ts"), "ts")
    user_id = optional_str(record, "user_id")
    raw = (
        optional_str(record, "event_type"),
        optional_str(record, "client_version"),
        optional_str(record, "platform"),
        optional_str(record, "region"),
    )  # GROUP_FIELDS, in order
    group = (values or _DEFAULT_VALUES).group_of(raw)
    duration = _duration_ms(record)
    # The delivery's content as parsed: the instant (not its spelling), the raw key values, user, duration.
    content = hash((instant, raw, user_id, duration))
    return TelemetryEvent(event_id, instant.date(), group, user_id, duration, content)


def _duration_ms(record: dict[str, Any]) -> float | None:
    """Absent or null means no duration; anything else must be a finite, non-negative number."""
    value = record.get("duration_ms")
    if value is None:
        return None
    # bool is an int subclass, but `true` is not a duration.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedRecord("duration_ms", "not a number")
    try:
        duration = float(value)
    except OverflowError:  # an integer too large for a float
        raise MalformedRecord("duration_ms", "not a finite number") from None
    if not math.isfinite(duration):  # json.loads accepts NaN and Infinity
        raise MalformedRecord("duration_ms", "not a finite number")
    if duration < 0:
        raise MalformedRecord("duration_ms", "negative")
    return duration


class _TelemetryFile:
    """The numbered lines of one gzip file; a read failure ends the lines and is kept in `error`.

    Catching the failure here, not around the caller's loop, keeps a bug in line handling from
    being mistaken for a corrupt file. The file is opened through the landing zone, so a link is
    never followed (SPEC §2.1).
    """

    def __init__(self, zone: LandingZone, relative: str) -> None:
        self.zone = zone
        self.relative = relative
        self.error: str | None = None

    @contextlib.contextmanager
    def _open(self) -> Iterator[Any]:
        with self.zone.open_binary(self.relative) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as handle:
            yield handle

    # Decompressed a block at a time and split at C speed: GzipFile's own line iteration is Python code
    # per line. A block small enough that a broken stream loses few of the lines before the break.
    _BLOCK_BYTES = 64 << 10

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """(line number, line without its LF) for every line of the file, blank ones included."""
        number = 0
        try:
            with self._open() as handle:
                unfinished: list[bytes] = []  # the pieces of a line that goes on in the next block
                while block := handle.read(self._BLOCK_BYTES):
                    if b"\n" not in block:  # joined once the line ends: a huge line costs linear time
                        unfinished.append(block)
                        continue
                    lines = block.split(b"\n")
                    lines[0] = b"".join([*unfinished, lines[0]])
                    unfinished = [lines.pop()]
                    for line in lines:
                        number += 1
                        yield number, line
                if last := b"".join(unfinished):  # a last line without its LF
                    number += 1
                    yield number, last
        except _READ_ERRORS as error:
            # The exception text can quote bytes of the file (gzip's "Not a gzipped file (b'..')"),
            # so only its type is kept.
            self.error = f"file cannot be read as gzip ({type(error).__name__}) after line {number}"


def relative_unit(url: str, landing_root: str) -> str:
    """The file's path below the landing root, the way quarantine units name it."""
    path = fsspec.core.strip_protocol(url)
    root = fsspec.core.strip_protocol(landing_root).rstrip("/")
    if path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return path  # outside the root: the full path still says where, and holds no content
