"""Strict parsing of raw records, and the quarantine record bad input becomes.

Errors raised here name the field and the problem, never the offending value: a value may be
meeting content or a raw personal id, and errors end up in logs and audit files.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from consent_gate.errors import MalformedRecord as MalformedRecord  # re-exported: every parser raises it
from consent_gate.instants import EARLIEST as EARLIEST
from consent_gate.instants import LATEST as LATEST
from consent_gate.instants import in_range as in_range
from consent_gate.instants import parse_timestamp as parse_timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US_PER_DAY = 86_400_000_000
_MICROSECOND = timedelta(microseconds=1)

# SPEC §2.1: strict RFC 8259 JSON; nesting deeper than this is malformed (and never a RecursionError).
MAX_JSON_DEPTH = 64
# A landing-zone folder or file name; anything else is named in evidence only by its sha256.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_.\-\[\]]{1,64}$")
# A \uD800-\uDFFF escape: the only way a lone surrogate gets into a str from UTF-8 input.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An input unit that could not be read: never published, always listed."""

    unit: str  # where: a path relative to the landing zone, ':<line>' for line units
    error: str  # what is wrong, naming the field; never the content


def to_us(instant: datetime) -> int:
    """Microseconds since the epoch, exactly (a datetime has whole microseconds)."""
    if instant.tzinfo is None:
        raise ValueError("naive datetime: every instant in consent-gate carries an offset")
    return (instant - EPOCH) // _MICROSECOND


def require_str(record: dict[str, Any], field: str) -> str:
    """A required, non-empty string field."""
    value = record.get(field)
    if not isinstance(value, str) or not value:
        raise MalformedRecord(field, "missing" if value is None or field not in record else "not a non-empty string")
    return value


def optional_str(record: dict[str, Any], field: str) -> str | None:
    """A nullable string field: absent and null mean None; an empty string counts as None too."""
    value = record.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MalformedRecord(field, "not a string")
    return value


def require_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedRecord(what, "not a JSON object")
    return value


def safe_name(name: str) -> str:
    """A folder or file name fit for evidence: itself if `[A-Za-z0-9._-]{1,128}`, else its sha256.

    A name may itself be personal data (a folder named like an e-mail address), so an invalid one is
    never echoed into quarantine, inputs or reports.
    """
    if is_safe_name(name):
        return name
    # '<', ' ' and ':' are not valid name characters, so no real name can look like a hashed one.
    return f"<name sha256:{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()}>"


def is_safe_name(name: str) -> bool:
    return bool(_SAFE_NAME.match(name)) and name not in (".", "..")


def _field_label(key: str) -> str:
    """A JSON key as an error may name it: schema-like keys by name, anything else not at all."""
    return key if _FIELD_NAME.match(key) else "<key>"


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):  # never "last key wins": the record is ambiguous
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise MalformedRecord(_field_label(duplicate), "duplicate key in one JSON object")
    return record


class _NonFinite:
    """What NaN/Infinity parse to: found afterwards, so the error can name its field."""


_NON_FINITE = _NonFinite()


def _refuse_constant(name: str) -> Any:
    return _NON_FINITE


# One decoder for every call: json.loads with hooks builds a new JSONDecoder each time.
_DECODER = json.JSONDecoder(object_pairs_hook=_strict_object, parse_constant=_refuse_constant)


def load_json(data: bytes | str, where: str = "<file>") -> Any:
    """Parse strict RFC 8259 JSON (SPEC §2.1): the one JSON reader for every landing-zone record.

    Refused, as MalformedRecord naming the field where it can (never the value): invalid UTF-8 or
    syntax (with the line), a duplicate key in an object, NaN/Infinity, a lone surrogate, nesting deeper
    than MAX_JSON_DEPTH.
    """
    if isinstance(data, bytes):
        value = _canonical_json(data)
        if value is not None:
            return value
    return _load_json_strictly(data, where)


# msgspec (C, ~3x json's reader): as strict as json on syntax, UTF-8, NaN and surrogates, but "last key
# wins" on a duplicate key, which the strict reading refuses.
_FAST_DECODER = msgspec.json.Decoder()
_FAST_ENCODER = msgspec.json.Encoder()
_FAST_REFUSES = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)
_JSON_WHITESPACE = b" \t\r\n"


def load_json_leniently(data: bytes | None) -> Any:
    """What Python's `json.loads` makes of `data` (empty: null), or None where it refuses it: a lenient
    reading, for a superset of what the strict one (`load_json`) accepts. msgspec reads first (the
    snapshot step reads every meeting.json of the day this way before the gate: 0.14-0.26 s at 10,000
    meetings with json, 0.07-0.12 s so); whatever it refuses, json reads (NaN, 1e400, lone surrogates,
    a byte-order mark), and where both read, both read the same value (the last of a repeated key)."""
    try:
        return _FAST_DECODER.decode(data or b"null")
    except _FAST_REFUSES:
        pass
    try:
        return json.loads(data or b"null")
    except (ValueError, RecursionError):
        return None


def _canonical_json(raw: bytes) -> Any:
    """The value `raw` holds when `raw` is byte for byte one of its canonical encodings (compact, or as
    `json.dumps` lays it out: `is_canonical_encoding`); else None, and `_load_json_strictly` reads it.
    Most records are written so: a telemetry event, a chat message, a pretty-printed meeting file.

    Why that is the strict reading: an encoder writes each key of an object once, so a document equal
    to an encoding of what it decodes to has no duplicate key, and every strict reader reads it as
    that value. Brackets bound its depth; NaN, Infinity, lone surrogates and numbers beyond a float
    make msgspec refuse (json reads 1e400 as inf, and on the strict path it still does).
    """
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        return None
    try:
        value = _FAST_DECODER.decode(raw)
    except _FAST_REFUSES:
        return None
    return value if is_canonical_encoding(value, raw) else None


def is_canonical_encoding(value: Any, raw: bytes) -> bool:
    """Whether `raw`, but for surrounding whitespace, is byte for byte an encoding of `value` that
    writes each key once: compact, or laid out as Python's `json.dumps` does by default (one line) or
    with `indent=2` (`msgspec.json.format` of the compact encoding: whitespace changed, nothing else).
    Then it holds no duplicate key and every strict reader reads it as `value`. (The layouts cost a
    format and a comparison in C; the strict reader calls Python for every object: 4.6% of the
    instructions of gating a day, `benchmarks/instructions.py`.)"""
    compact = _FAST_ENCODER.encode(value)
    written = raw.strip(_JSON_WHITESPACE)
    if compact == written:
        return True
    return msgspec.json.format(compact, indent=2 if b"\n" in written else 0) == written


def _load_json_strictly(data: bytes | str, where: str) -> Any:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = _DECODER.decode(text)
    except RecursionError:
        raise MalformedRecord(where, f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise MalformedRecord(where, "not valid UTF-8") from None
    except json.JSONDecodeError as error:
        line = f" (line {error.lineno})" if "\n" in error.doc else ""
        raise MalformedRecord(where, f"not valid JSON{line}") from None
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    # Both scans below are C-speed counts on the bytes; the walk runs only when they say it may be needed.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise MalformedRecord(where, f"nested deeper than {MAX_JSON_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(raw):
        field = _first_field(value, _is_lone_surrogate)
        if field is not None:
            raise MalformedRecord(field or where, "lone surrogate in a string")
    if b"NaN" in raw or b"Infinity" in raw:
        field = _first_field(value, lambda item: item is _NON_FINITE)
        if field is not None:
            raise MalformedRecord(field or where, "not a finite number (RFC 8259 has no non-finite numbers)")
    return value


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:  # breadth-first, so no recursion limit applies
        depth += 1
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
    return depth


def _first_field(value: Any, bad: Any) -> str | None:
    """The path of the first value (or key) for which `bad` holds: '' for the document, None if none."""
    stack = [(value, "")]
    while stack:
        item, where = stack.pop()
        if bad(item):
            return where
        if isinstance(item, dict):
            for key, child in item.items():
                if _is_lone_surrogate(key):
                    return f"{where}.<key>" if where else "<key>"
                label = _field_label(key)
                stack.append((child, f"{where}.{label}" if where else label))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def _is_lone_surrogate(item: Any) -> bool:
    return isinstance(item, str) and not _is_unicode(item)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- timestamps of a column ----------------------------------------------------------------------

# The shape parse_timestamp reads, in ASCII digits only (Python's \d also takes other scripts' digits:
# those values are left to parse_timestamp, which decides them). RE2 syntax: `$` is the end of the text.
_TIMESTAMP_SHAPE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"
_EARLIEST_US = to_us(EARLIEST)
_LATEST_US = to_us(LATEST)


def timestamps_us(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """parse_timestamp over a column of strings, column-wise: (microseconds since the epoch, read).

    `read` is False where the value is not one this reads the plain way (null, another shape, a date or
    time out of range, an offset of 24 hours or more, an instant outside 1900..2200): the caller leaves
    those rows to parse_timestamp, which accepts or refuses them. Where `read` is True the microseconds
    are the instant parse_timestamp returns (the fraction truncated to microseconds, in UTC).
    """
    shaped = pc.fill_null(pc.match_substring_regex(values, _TIMESTAMP_SHAPE), False)
    where = shaped.to_numpy(zero_copy_only=False)
    # Every value of `text` has the shape, so its digits sit at known places from either end: read as
    # bytes straight from Arrow's buffers, a handful of array operations for the whole column.
    text = values.filter(shaped)
    starts, ends, data = _string_buffers(text)

    def number(at: np.ndarray, digits: int) -> np.ndarray:
        value = np.zeros(len(at), dtype=np.int64)
        for k in range(digits):
            value = value * 10 + (data[at + k].astype(np.int64) - 48)
        return value

    year, month, day = number(starts, 4), number(starts + 5, 2), number(starts + 8, 2)
    hour, minute, second = number(starts + 11, 2), number(starts + 14, 2), number(starts + 17, 2)
    utc = data[ends - 1] == ord("Z")
    sign = np.where(data[ends - 6] == ord("-"), -1, 1)  # read where the offset is "+hh:mm" or "-hh:mm"
    offset_hours = np.where(utc, 0, number(ends - 5, 2))
    offset_minutes = np.where(utc, 0, number(ends - 2, 2))
    # Between the seconds and the offset: nothing, or "." and 1-9 digits, of which 6 count (truncated).
    fraction_digits = np.where(utc, ends - 1, ends - 6) - (starts + 20)
    micros = np.zeros(len(starts), dtype=np.int64)
    for k in range(6):
        digit = data[np.minimum(starts + 20 + k, ends - 1)].astype(np.int64) - 48
        micros = micros * 10 + np.where(k < fraction_digits, digit, 0)
    valid = (
        (month >= 1) & (month <= 12) & (day >= 1) & (day <= _days_in_month(year, month))
        & (hour <= 23) & (minute <= 59) & (second <= 59) & (offset_hours <= 23) & (offset_minutes <= 59)
    )  # fmt: skip
    clock = (hour * 3600 + minute * 60 + second - sign * (offset_hours * 3600 + offset_minutes * 60)) * 1_000_000
    instant = _days_from_civil(year, month, day) * US_PER_DAY + clock + micros
    read = valid & (instant >= _EARLIEST_US) & (instant <= _LATEST_US)
    instants = np.zeros(len(where), dtype=np.int64)
    instants[where] = np.where(read, instant, 0)
    reads = np.zeros(len(where), dtype=bool)
    reads[where] = read
    return instants, reads


def _string_buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each value of a string array starts and ends in its data buffer, and that buffer's bytes."""
    _, offsets, data = values.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32)[values.offset : values.offset + len(values) + 1].astype(np.int64)
    return bounds[:-1], bounds[1:], np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)


def _days_in_month(year: np.ndarray, month: np.ndarray) -> np.ndarray:
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    lengths = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 31])  # index 12: month 0 or 13+
    return lengths[np.clip(month - 1, 0, 12)] + ((month == 2) & leap)


def _days_from_civil(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm), column-wise."""
    year = year - (month <= 2)
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468
