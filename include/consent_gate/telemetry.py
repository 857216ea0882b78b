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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import fsspec
import fsspec.core
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from consent_gate.config import Policy
from consent_gate.records import (
    _FAST_DECODER,
    _FAST_ENCODER,
    _FAST_REFUSES,
    MAX_JSON_DEPTH,
    MalformedRecord,
    is_canonical_encoding,
    load_json,
    optional_str,
    parse_timestamp,
    require_object,
    require_str,
    timestamps_us,
    to_us,
)
from consent_gate.sources import HashingReader, InputFile, LandingZone

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

    def published(self, field: str, value: str | None) -> str:
        """The published value of one GROUP_FIELDS key sent as `value`: UNKNOWN when missing, the value
        when allow-listed, else OTHER. Called once per distinct value of a day, not per event."""
        if value is None:
            return UNKNOWN
        if field == "client_version":
            return value if self.client_version.fullmatch(value) else OTHER
        allowed = {"event_type": self.event_types, "platform": self.platforms, "region": self.regions}[field]
        return value if value in allowed else OTHER


def default_group_values() -> GroupValues:
    return GroupValues.from_policy(Policy())


_DEFAULT_VALUES = default_group_values()


class TelemetryEvent(NamedTuple):
    """The allow-listed part of one event, as parsed: what aggregation needs, and no identifier but user_id.

    A NamedTuple, not a frozen dataclass: one is built per line read one by one, and tuple construction
    is cheaper. Two deliveries of an event_id are the same delivery when all of these but event_id are
    equal (the instant, not its spelling).
    """

    event_id: str
    ts_us: int  # the instant, in microseconds since 1970-01-01T00:00:00Z
    raw: tuple[str | None, str | None, str | None, str | None]  # GROUP_FIELDS values as sent ("" is None)
    user_id: str | None
    duration_ms: float | None


def parse_event(line: bytes) -> TelemetryEvent:
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
    duration = _duration_ms(record)
    return TelemetryEvent(event_id, to_us(instant), raw, user_id, duration)


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


# --- reading many lines at once --------------------------------------------------------------------

# The parsed part of an event, as `read_lines` returns it column-wise and `parse_event` one by one.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string()),
        pa.field("ts_us", pa.int64()),
        *(pa.field(name, pa.string()) for name in GROUP_FIELDS),
        pa.field("user_id", pa.string()),
        pa.field("duration_ms", pa.float64()),
    ]
)
_STRING_FIELDS = ("event_id", "ts", *GROUP_FIELDS, "user_id")


@dataclass(frozen=True)
class LineBatch:
    """A batch of lines, read column-wise where that reading is provably `parse_event`'s."""

    events: pa.Table  # EVENT_SCHEMA plus `index` (int32): the events of the lines read, by line index
    rest: list[int]  # the other lines' indexes, ascending: blank, malformed or unusual ones, for parse_event

    @classmethod
    def one_by_one(cls, lines: int) -> LineBatch:
        """A batch of `lines` lines, every one of them left to parse_event."""
        return cls(_NO_EVENTS, list(range(lines)))


def read_lines(lines: Sequence[bytes]) -> LineBatch:
    """The events of a batch of telemetry lines, column-wise, for the lines it can prove it reads as
    `parse_event` does; every other line's index is in `rest`, and `parse_event` decides it.

    Proven means: the line is, but for surrounding whitespace, byte for byte a canonical encoding of the
    JSON object it decodes to (`records.is_canonical_encoding`: so it has no duplicate key and every
    strict reader reads it as that object, as in `records._canonical_json`), nested at most
    MAX_JSON_DEPTH deep, and its allow-listed fields have the types and shapes `parse_event` accepts,
    checked column-wise.
    """
    # A batch none of whose first lines is written canonically (a file written with \u escapes, say) is
    # most likely written so throughout: the column-wise attempt, a decoding and an encoding more a line,
    # is not made. (Only ever a matter of speed.)
    decoded = _decode_each(lines[:_PROBE_LINES])
    if lines and not any(map(is_canonical_encoding, decoded, lines[:_PROBE_LINES])):
        return LineBatch.one_by_one(len(lines))
    decoded += _decode_each(lines[_PROBE_LINES:])
    # A line is its value's compact encoding: compared in C, a line at a time. The few that are not byte
    # for byte (malformed, spaced, with a CR) are looked at once more: other layouts, surrounding whitespace.
    canonical = list(map(bytes.__eq__, map(_FAST_ENCODER.encode, decoded), lines))
    for odd in [number for number, same in enumerate(canonical) if not same]:
        canonical[odd] = is_canonical_encoding(decoded[odd], lines[odd])
    if all(canonical) and all(type(value) is dict for value in decoded):  # the usual batch
        index = list(range(len(lines)))
    else:
        index = [
            n for n, (same, value) in enumerate(zip(canonical, decoded, strict=True)) if same and type(value) is dict
        ]
    # Each object's own `{` is a bracket: as many brackets as objects means none is nested at all.
    chosen = b"".join([lines[n] for n in index])
    if chosen.count(b"{") + chosen.count(b"[") != len(index):
        index = [n for n in index if lines[n].count(b"{") + lines[n].count(b"[") <= MAX_JSON_DEPTH]
    events, read = _event_columns([decoded[n] for n in index])
    positions = np.asarray(index, dtype=np.int32)[read]
    rest = sorted(set(range(len(lines))).difference(positions.tolist()))
    return LineBatch(events.filter(pa.array(read)).append_column("index", pa.array(positions)), rest)


_PROBE_LINES = 16
_NO_EVENTS = EVENT_SCHEMA.append(pa.field("index", pa.int32())).empty_table()


def _decode_each(lines: Sequence[bytes]) -> list[Any]:
    """Each line's value, decoded in C one after the other; None for a line msgspec refuses (which so
    is never taken for the canonical `null`: that line would have decoded)."""
    values: list[Any] = []
    decoding = map(_FAST_DECODER.decode, lines)
    while True:
        try:
            values.extend(decoding)  # keeps the values before a failure; `decoding` goes on after it
            return values
        except _FAST_REFUSES:  # malformed, invalid UTF-8, too deep, a number beyond a float
            values.append(None)


def _event_columns(objects: list[dict[str, Any]]) -> tuple[pa.Table, np.ndarray]:
    """The EVENT_SCHEMA columns of decoded objects and, per object, whether they hold what `parse_event`
    would make of it (False: a field it would refuse, or a value it is left to read one by one).

    Only ALLOWED_FIELDS are looked up, as in `parse_event`."""
    strings, other = _string_columns(objects)
    read = ~other
    # event_id: present, a string, not empty (require_str)
    read &= pc.fill_null(pc.greater(pc.binary_length(strings["event_id"]), 0), False).to_numpy(zero_copy_only=False)
    ts_us, ts_read = timestamps_us(strings["ts"])
    read &= ts_read
    duration, other = _duration_column([value.get("duration_ms") for value in objects])
    read &= ~other & pc.fill_null(pc.greater_equal(duration, 0.0), True).to_numpy(zero_copy_only=False)
    columns = {
        "event_id": strings["event_id"],
        "ts_us": pa.array(ts_us, pa.int64()),
        # optional_str: an empty string is no value
        **{name: _empty_is_null(strings[name]) for name in (*GROUP_FIELDS, "user_id")},
        "duration_ms": duration,
    }
    return pa.Table.from_pydict(columns, schema=EVENT_SCHEMA), read


# What Arrow raises for a value it cannot convert to the column's type (a number for a string, 2**64).
_NOT_CONVERTED = (pa.ArrowException, TypeError, ValueError, OverflowError)

# The allow-listed string fields, converted in one pass over the objects (Arrow looks up these keys only).
_STRINGS = pa.struct([pa.field(name, pa.string()) for name in _STRING_FIELDS])


def _string_columns(objects: list[dict[str, Any]]) -> tuple[dict[str, pa.Array], np.ndarray]:
    """The string fields as columns (null where absent or null), and which objects hold something else
    in one of them (a number, a list, ...: null in its column, and the object left to parse_event)."""
    try:
        columns = pa.array(objects, type=_STRINGS).flatten()
        return dict(zip(_STRING_FIELDS, columns, strict=True)), np.zeros(len(objects), dtype=bool)
    except _NOT_CONVERTED:
        other = np.zeros(len(objects), dtype=bool)
        strings = {}
        for name in _STRING_FIELDS:
            strings[name], not_strings = _string_column([value.get(name) for value in objects])
            other |= not_strings
        return strings, other


def _string_column(values: list[Any]) -> tuple[pa.Array, np.ndarray]:
    """Strings and nulls as a column, and where a value was something else (then null in the column)."""
    try:
        return pa.array(values, pa.string()), np.zeros(len(values), dtype=bool)
    except _NOT_CONVERTED:
        other = np.fromiter((value is not None and type(value) is not str for value in values), bool, len(values))
        return pa.array([None if bad else value for value, bad in zip(values, other, strict=True)], pa.string()), other


# Integers a double holds exactly: Arrow refuses to convert larger ones, and float() would round them.
_EXACT_INTEGER = 2**53


def _duration_column(values: list[Any]) -> tuple[pa.Array, np.ndarray]:
    """Numbers and nulls as doubles, and where a value was something else: a bool (`true` is not a
    duration), a string, an integer beyond 2**53. Negative ones are for the caller to check."""
    kinds = set(map(type, values))
    if kinds <= {int, float, type(None)}:
        try:
            return pa.array(values, pa.float64()), np.zeros(len(values), dtype=bool)
        except _NOT_CONVERTED:
            pass
    other = np.fromiter(
        (
            not (value is None or type(value) is float or (type(value) is int and abs(value) <= _EXACT_INTEGER))
            for value in values
        ),
        bool,
        len(values),
    )
    kept = [None if bad else value for value, bad in zip(values, other, strict=True)]
    return pa.array(kept, pa.float64()), other


def _empty_is_null(column: pa.Array) -> pa.Array:
    empty = pc.equal(column, "")
    if not pc.any(empty).as_py():  # the usual column: no choice to make, and nothing copied
        return column
    return pc.if_else(empty, pa.scalar(None, pa.string()), column)


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
        # The file's size and sha256, of the bytes read (the inputs manifest's entry), once every line
        # has been read; None while unread or when the stream broke.
        self.input: InputFile | None = None

    @contextlib.contextmanager
    def _open(self) -> Iterator[tuple[HashingReader, Any]]:
        with self.zone.open_binary(self.relative) as raw:
            hashed = HashingReader(raw)
            with gzip.GzipFile(fileobj=hashed, mode="rb") as handle:
                yield hashed, handle

    # Decompressed a block at a time and split at C speed: GzipFile's own line iteration is Python code
    # per line. A block small enough that a broken stream loses few of the lines before the break.
    _BLOCK_BYTES = 64 << 10

    # Lines handed on together: read_lines decodes a batch at once, so its fixed costs are shared.
    _BATCH_LINES = 2048

    def batches(self) -> Iterator[tuple[int, list[bytes]]]:
        """(number of the first line, the lines without their LF), in order, for every line of the file,
        blank ones included; a batch holds _BATCH_LINES lines or more, but for the last one."""
        number = 0  # lines handed on so far
        pending: list[bytes] = []
        try:
            with self._open() as (hashed, handle):
                unfinished: list[bytes] = []  # the pieces of a line that goes on in the next block
                while block := handle.read(self._BLOCK_BYTES):
                    if b"\n" not in block:  # joined once the line ends: a huge line costs linear time
                        unfinished.append(block)
                        continue
                    lines = block.split(b"\n")
                    lines[0] = b"".join([*unfinished, lines[0]])
                    unfinished = [lines.pop()]
                    pending += lines
                    if len(pending) >= self._BATCH_LINES:
                        yield number + 1, pending
                        number, pending = number + len(pending), []
                if last := b"".join(unfinished):  # a last line without its LF
                    pending.append(last)
                self.input = hashed.to_the_end(self.relative)
        except _READ_ERRORS as error:
            # The exception text can quote bytes of the file (gzip's "Not a gzipped file (b'..')"),
            # so only its type is kept. The lines read before the break are still handed on.
            self.error = f"file cannot be read as gzip ({type(error).__name__}) after line {number + len(pending)}"
        if pending:
            yield number + 1, pending


def relative_unit(url: str, landing_root: str) -> str:
    """The file's path below the landing root, the way quarantine units name it."""
    path = fsspec.core.strip_protocol(url)
    root = fsspec.core.strip_protocol(landing_root).rstrip("/")
    if path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return path  # outside the root: the full path still says where, and holds no content
