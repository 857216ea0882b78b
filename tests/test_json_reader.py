"""The one JSON reader (SPEC §2.1, strict RFC 8259): its fast path reads exactly what the strict one does.

`records.load_json` reads a document that is byte for byte one of its own canonical encodings (compact,
or spaced as `json.dumps` writes by default or with `indent=2`) with msgspec and anything else with the
strict reader (duplicate keys, NaN, lone surrogates, depth). Generated documents, written compactly,
spaced, indented and otherwise and then damaged, must read the same (value and type) or fail the same.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent_gate.records import (
    MAX_JSON_DEPTH,
    MalformedRecord,
    _canonical_json,
    _load_json_strictly,
    load_json,
    load_json_leniently,
)

pytestmark = pytest.mark.unit

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["", ":", '"', "\\", "\u2028", "\x7f", "é", "😀", "\x00", "a\nb"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


_LAYOUTS = st.sampled_from(
    [
        {"separators": (",", ":")},  # compact
        {"separators": (", ", ": ")},  # json.dumps's default
        {"indent": 2},  # pretty-printed, as meeting files are
        {"indent": 4},  # indented otherwise: never the fast path
        {"separators": (", ", ":")},  # spaced otherwise: never the fast path
    ]
)


def _written(value, layout: dict, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, **layout)


_DAMAGE = st.sampled_from(
    [
        lambda t: t,
        lambda t: t.replace("{", '{"k":1,"k":1,', 1) if "{" in t else t,  # a duplicate key, compact
        lambda t: t.replace("{", '{"k":1,"k":2,', 1) if "{" in t else t,
        lambda t: t.replace("{", '{"k" :1,"k":1,', 1) if "{" in t else t,  # spaced from its colon
        lambda t: t.replace("{", '{"k": 1, "k": 1, ', 1) if "{" in t else t,  # a duplicate key, spaced
        lambda t: t.replace("{\n", '{\n  "k": 1,\n  "k": 1,\n', 1) if "{\n" in t else t,  # and indented
        lambda t: t + "\n",
        lambda t: " " + t + "\r\n",
        lambda t: t.replace("1", "NaN", 1),
        lambda t: t.replace("0", "1e400", 1),
        lambda t: t.replace('"', '"\\ud800', 1),  # a lone surrogate escape
        lambda t: t.replace('"', '"\\u00e9', 1),
        lambda t: t.replace(",", ",,", 1),
        lambda t: t[:-1],
        lambda t: "[" * (MAX_JSON_DEPTH + 1) + t + "]" * (MAX_JSON_DEPTH + 1),
        lambda t: "[" * (MAX_JSON_DEPTH - 1) + t + "]" * (MAX_JSON_DEPTH - 1),
    ]
)


def _reading(data: bytes, read) -> tuple[str, str]:
    try:
        return "value", repr(read(data))  # repr tells 1 from 1.0 from True, and keeps key order
    except MalformedRecord as error:
        return "refused", str(error)


@given(_VALUES, _LAYOUTS, st.booleans(), _DAMAGE)
@settings(max_examples=2500, deadline=None)
def test_load_json_reads_every_document_as_the_strict_reader_does(value, layout, ascii_only, damage):
    data = damage(_written(value, layout, ascii_only)).encode("utf-8", "surrogatepass")
    assert _reading(data, lambda d: load_json(d, "<line>")) == _reading(
        data, lambda d: _load_json_strictly(d, "<line>")
    )


@given(st.binary(max_size=40))
@settings(max_examples=1500, deadline=None)
def test_load_json_reads_arbitrary_bytes_as_the_strict_reader_does(data):
    assert _reading(data, lambda d: load_json(d, "<line>")) == _reading(
        data, lambda d: _load_json_strictly(d, "<line>")
    )


def _json_loads_or_none(data: bytes) -> str:
    """The lenient reading's reference: Python's json, None for what it refuses."""
    try:
        return repr(json.loads(data or b"null"))
    except (ValueError, RecursionError):
        return repr(None)


# The lenient reader picks the day's subjects out of every meeting.json before the gate: it must read
# what json reads (a superset of the strict reading), however a document is written or damaged.
@given(_VALUES, _LAYOUTS, st.booleans(), _DAMAGE)
@settings(max_examples=1500, deadline=None)
def test_the_lenient_reader_reads_every_document_as_json_does(value, layout, ascii_only, damage):
    data = damage(_written(value, layout, ascii_only)).encode("utf-8", "surrogatepass")
    assert repr(load_json_leniently(data)) == _json_loads_or_none(data)


@given(st.binary(max_size=40) | st.sampled_from([b"", b"\xef\xbb\xbf{}", b"[1e400]", b'"\\ud800"', b"NaN"]))
@settings(max_examples=1500, deadline=None)
def test_the_lenient_reader_reads_arbitrary_bytes_as_json_does(data):
    assert repr(load_json_leniently(data)) == _json_loads_or_none(data)


def test_a_compact_event_takes_the_fast_path_and_a_duplicate_key_does_not():
    line = b'{"event_id":"ev_1","ts":"2026-11-02T10:00:00.123Z","user_id":"u_1","duration_ms":12.5,"n":[1,{}]}\n'
    assert _canonical_json(line) == json.loads(line)
    duplicate = b'{"event_id":"ev_1","user_id":"u_1","user_id":"u_2"}'
    assert _canonical_json(duplicate) is None
    with pytest.raises(MalformedRecord, match="field 'user_id': duplicate key"):
        load_json(duplicate, "<line>")
    nested = b'{"a":{"b":1,"b":1}}'
    assert _canonical_json(nested) is None
    with pytest.raises(MalformedRecord, match="duplicate key"):
        load_json(nested, "<line>")
    assert load_json(b'{"a":1e400}') == {"a": float("inf")}  # as json reads it; duration_ms refuses it later


@pytest.mark.parametrize(
    "layout",
    [{"separators": (",", ":")}, {"separators": (", ", ": ")}, {"indent": 2}],
    ids=["compact", "spaced", "indented"],
)
def test_each_canonical_layout_takes_the_fast_path_and_a_duplicate_key_in_it_does_not(layout):
    record = {"meeting_id": "m_1", "participants": [{"user_id": "u_1", "n": [1, {}]}, {}], "text": "é😀"}
    assert _canonical_json(json.dumps(record, ensure_ascii=False, **layout).encode()) == record
    # The same layout, byte for byte, with "meeting_id" written twice: msgspec keeps the last one.
    twice = json.dumps({"once": "m_2", **record}, ensure_ascii=False, **layout).replace('"once"', '"meeting_id"', 1)
    assert _canonical_json(twice.encode()) is None
    with pytest.raises(MalformedRecord, match="field 'meeting_id': duplicate key"):
        load_json(twice.encode())
    assert _canonical_json(json.dumps(record, indent=4).encode()) is None  # another layout: the strict reader
