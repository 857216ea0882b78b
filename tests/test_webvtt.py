"""WebVTT read as the W3C parser reads it, and speakers attributed without doubt (SPEC §2.1, §2.3).

Conformance cases written from the specification's rules (one per rule, each asserting the cues
returned and the blocks dropped, i.e. the units quarantined) and property tests on generated and
mutated transcripts; test_transcripts_day.py runs the examples of issue 9 through `run_day`.
"""

from __future__ import annotations

import html
import itertools
import random
import unicodedata
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from consent_gate.artifacts import Meeting, Participant, read_transcript
from consent_gate.speakers import (
    attribute,
    attribute_cue,
    attribute_line,
    line_label,
    line_name,
    normalise_name,
    read_cue_text,
    read_tagged_cue_text,
    speakers_by_name,
)
from consent_gate.webvtt_reader import (
    _COMMON_BLOCK,
    NotWebVTT,
    _common_cues,
    _Input,
    _parse_text,
    parse,
    parse_timing_line,
    timing_by_steps,
)
from tests.builders import ARROWS, DAY, T0

pytestmark = pytest.mark.unit


def cues_of(text: str | bytes) -> list[tuple[int, str]]:
    return [(c.start_ms, c.text) for c in parse(text.encode() if isinstance(text, str) else text).cues]


def dropped_lines(text: str | bytes) -> list[int]:
    return [d.line for d in parse(text.encode() if isinstance(text, str) else text).dropped]


# --- conformance: the parser algorithm, rule by rule ----------------------------------------------


def test_signature_is_required_and_may_carry_text():
    for bad in ("", "WEBVT", "WEBVTTX\n\n00:00.000 --> 00:01.000\nx", "\ufeffWEBVTTX", " WEBVTT"):
        with pytest.raises(NotWebVTT):
            parse(bad.encode())
    assert cues_of("WEBVTT") == []
    assert cues_of("WEBVTT\t- some title\n\n00:00.000 --> 00:01.000\nx") == [(0, "x")]
    assert cues_of("WEBVTT \n\n00:00.000 --> 00:01.000\nx") == [(0, "x")]


def test_a_byte_order_mark_is_removed():
    assert cues_of(b"\xef\xbb\xbfWEBVTT\n\n00:01.000 --> 00:02.000\nhi\n") == [(1000, "hi")]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_lf_crlf_and_cr_line_ends_are_equivalent(newline):
    text = newline.join(
        ["WEBVTT", "", "1", "00:01.000 --> 00:02.000", "a", "b", "", "00:03.000 --> 00:04.000", "c", ""]
    )
    assert cues_of(text) == [(1000, "a\nb"), (3000, "c")]
    assert dropped_lines(text) == []


def test_lfcr_is_two_line_ends_as_a_browser_reads_it():
    # "\n\r" is LF then a lone CR: an empty line ends the cue, and the text after it has no timing line.
    text = "WEBVTT\n\r00:01.000 --> 00:02.000\n\rwords\n"
    assert cues_of(text) == [(1000, "")]
    assert dropped_lines(text) == [5]


def test_cue_identifiers_numeric_and_textual_are_not_text():
    text = "WEBVTT\n\n1\n00:01.000 --> 00:02.000\na\n\nintro part\n00:03.000 --> 00:04.000\nb\n"
    parsed = parse(text.encode())
    assert [(c.identifier, c.text) for c in parsed.cues] == [("1", "a"), ("intro part", "b")]
    assert parsed.cues[0].line == 4 and parsed.dropped == []


def test_note_style_and_region_blocks_are_not_cues_and_not_dropped():
    text = (
        "WEBVTT\n\nSTYLE\n::cue { color: red }\n\nREGION\nid:r1 width:40%\n\nNOTE a comment\nover lines\n\n"
        "NOTE\n\n00:01.000 --> 00:02.000\na\n\nNOTE after the first cue\n\nSTYLE\n::cue { color: blue }\n"
    )
    assert cues_of(text) == [(1000, "a")]
    assert dropped_lines(text) == []


def test_hourless_and_long_hour_timestamps():
    text = (
        "WEBVTT\n\n01:02.003 --> 01:03.000\na\n\n100:00:00.000 --> 100:00:01.000\nb\n\n00:00:05.250 --> 00:06.000\nc\n"
    )
    assert cues_of(text) == [(62_003, "a"), (360_000_000, "b"), (5250, "c")]


@pytest.mark.parametrize(
    "timing",
    [
        "00:01.00 --> 00:02.000",  # two digits of milliseconds
        "00:01.0000 --> 00:02.000",  # four
        "00:60.000 --> 01:02.000",  # seconds above 59
        "60:00.000 --> 61:00.000",  # a first field above 59 means hours, and then seconds are missing
        "00:00:01.000 -> 00:00:02.000",  # no arrow: text without a timing line
        "00:01.000 --> ",  # no end time
        "1:02.000 --> 1:03.000",  # one digit is hours, then the seconds are missing
        "00:00.000 -a -->",  # from the W3C arrows file
    ],
)
def test_a_malformed_timing_line_drops_its_block_reported_by_line(timing):
    text = f"WEBVTT\n\n00:00.000 --> 00:01.000\nkept\n\n{timing}\nlost words\n\n00:09.000 --> 00:10.000\nnext\n"
    assert cues_of(text) == [(0, "kept"), (9000, "next")]
    assert dropped_lines(text) == [6]


# Timing lines near the common `hh:mm:ss.ttt --> hh:mm:ss.ttt` shape: numbers just inside and outside
# each field's range and width, other scripts' digits, separators almost right, whitespace, settings.
_NEAR = st.builds(
    lambda h, width, m, s, t, tail: f"{h:0{width}d}:{m:02d}:{s:02d}.{t:03d}{tail}",
    st.integers(0, 99) | st.integers(0, 10**8), st.integers(1, 3),
    st.integers(0, 59) | st.integers(60, 99), st.integers(0, 59) | st.integers(60, 99),
    st.integers(0, 999) | st.integers(1000, 9999), st.just("") | st.sampled_from(["0", "\u0663", ".5", ":00"]),
)  # fmt: skip
_FIELD = st.text(st.sampled_from("0123456789\u0663"), max_size=8)
_ODD = st.tuples(_FIELD, st.sampled_from([":", ".", ","]), _FIELD, st.sampled_from([":", "."]), _FIELD).map("".join)
_TIMESTAMP = _NEAR | _NEAR | _ODD
_SPACE = st.sampled_from(["", " ", "\t", "  ", "\x0c", "\u00a0"])
_TIMING_LINE = st.tuples(
    _SPACE, _TIMESTAMP, _SPACE, st.sampled_from(["-->", "->", "--> "]), _SPACE, _TIMESTAMP,
    st.sampled_from(["", " align:start", "0", ".5", "\u0663", " 12"]),
).map("".join)  # fmt: skip


@given(_TIMING_LINE | st.text(max_size=40))
@settings(max_examples=3000, deadline=None)
def test_the_fast_timing_reading_agrees_with_the_specification_steps(line):
    assert parse_timing_line(line) == timing_by_steps(line)


def test_the_fast_timing_reading_takes_the_common_shape():
    # Not a stub: the fast path's own answers, checked against the arithmetic.
    assert parse_timing_line("00:01:02.003 --> 123456:59:59.999 align:start") == (
        62_003,
        123456 * 3_600_000 + 3_599_999,
    )
    assert parse_timing_line("00:00:01.0000 --> 00:00:02.000") == timing_by_steps("00:00:01.0000 --> 00:00:02.000")
    assert isinstance(parse_timing_line("00:00:01.0000 --> 00:00:02.000"), str)


_LINES = st.sampled_from(
    [
        "00:00:01.000 --> 00:00:02.000", "00:01.000 --> 00:02.000 align:start", "00:00:01.0000 --> 00:00:02.000",
        "x --> y", "-->", "", "", "", " ", "\t", "words", "<v Ann>hi</v>", "Ann: hi", "cue-7", "NOTE a note",
        "NOTE", "STYLE", "REGION", "::cue { color: red }", "WEBVTT",
        # Shapes the whole-block reading (`_COMMON_BLOCK`) must read as the steps do, or leave to them.
        "00:00:01.000-->00:00:02.000", "\x0c 00:00:03.000\t-->\x0c00:00:04.000 line:0", "01:02.000 --> 01:03.000",
        "00:00:05.000 --> 00:00:06.000 -->", "id --> 7", "00:00:07.000 --> 00:00:0", "9 00:00:01.000 --> 00:00:02.000",
    ]
)  # fmt: skip


@given(st.lists(_LINES, max_size=30), st.sampled_from(["", "\n", "\n\n", "\n\n\n"]))
@settings(max_examples=2000, deadline=None)
def test_the_common_cue_path_reads_every_file_as_the_specification_steps(lines, ending):
    text = "WEBVTT\n\n" + "\n".join(lines) + ending
    assert _parse_text(text) == _parse_text(text, common_cues=False)


def test_a_run_of_common_cues_is_read_whole_up_to_the_first_block_that_is_not_one():
    common = "1\n00:00:01.000 --> 00:00:02.000\nAlice Smith: hi\n\n00:00:03.000 --> 00:00:04.000 align:start\n\n\n"
    text = f"WEBVTT\n\n{common}00:00:05.000 --> 00:00:06.000\nan --> arrow\n\n00:00:07.000 --> 00:00:08.000\nlast\n\n"
    source, cues = _Input(text), []
    source.position = len("WEBVTT\n\n")
    assert _common_cues(source, cues)
    assert [(c.line, c.identifier, c.start_ms, c.end_ms, c.text) for c in cues] == [
        (4, "1", 1000, 2000, "Alice Smith: hi"),
        (7, "", 3000, 4000, ""),
    ]
    assert source.position == len("WEBVTT\n\n") + len(common)  # at the block with an arrow in its text
    assert not _common_cues(source, cues)  # that block is not read here, nor skipped
    assert source.position == len("WEBVTT\n\n") + len(common)
    assert _parse_text(text) == _parse_text(text, common_cues=False)
    cues, dropped = _parse_text(text)
    assert [c.start_ms for c in cues] == [1000, 3000, 5000, 7000]
    assert [d.line for d in dropped] == [11]  # the arrow line starts a block, whose timing fails


@pytest.mark.parametrize("ending", ["\nwords\n", ""])
def test_timing_lines_without_empty_lines_between_are_each_a_cue(ending):
    # Each starts a block of its own (§ step 4.2). A file of them once made every cue look ahead to the
    # end of the file: quadratic, 20,000 took 16 s (0.2 s since); then the common-cue path did so again
    # (16,000 took 28 s) until its pattern stopped at arrow lines (`test_a_common_block_...` below).
    n = 20_000
    text = "WEBVTT\n\n" + "00:00:01.000 --> 00:00:02.000\n" * n + ending
    assert cues_of(text) == [(1000, "")] * n
    assert dropped_lines(text) == ([n + 4] if ending else [])


@given(st.lists(_LINES, max_size=30))
@settings(max_examples=1000, deadline=None)
def test_a_common_block_never_reads_past_an_arrow_line_after_its_timing_line(lines):
    # What keeps the common-cue path linear: the steps start a block at an arrow line, so a whole-block
    # match that ran on across one would be given up and tried again from each later block, each time
    # reading on to the same far end.
    text = "\n".join(lines) + "\n"
    starts = itertools.accumulate((len(line) + 1 for line in lines), initial=0)
    for match in filter(None, (_COMMON_BLOCK.match(text, at) for at in starts)):
        identifier, words = match.group(1), match.group(10)
        assert identifier is None or "-->" not in identifier
        assert "-->" not in words


def test_cue_settings_are_ignored_and_spaces_around_the_arrow_are_optional():
    text = (
        "WEBVTT\n\n00:01.000 --> 00:02.000 align:start position:0% line:-1 junk\na\n\n"
        "00:03.000-->00:04.000\tsize:50%\nb\n"
    )
    assert cues_of(text) == [(1000, "a"), (3000, "b")]


def test_an_arrow_inside_cue_text_ends_the_cue_and_starts_a_block():
    text = "WEBVTT\n\n00:01.000 --> 00:02.000\nfirst line\nx --> y\nmore\n\n00:03.000 --> 00:04.000\nok\n"
    assert cues_of(text) == [(1000, "first line"), (3000, "ok")]
    assert dropped_lines(text) == [5]  # "x --> y" is read as a (malformed) timing line: reported


def test_a_second_timing_line_starts_a_new_cue():
    text = "WEBVTT\n\n00:01.000 --> 00:02.000\n00:03.000 --> 00:04.000\nwords\n"
    assert cues_of(text) == [(1000, ""), (3000, "words")]


def test_a_cue_directly_after_the_header_and_after_header_metadata():
    assert cues_of("WEBVTT\n00:01.000 --> 00:02.000\na\n") == [(1000, "a")]
    youtube = "WEBVTT\nKind: captions\nLanguage: en\n00:01.000 --> 00:02.000\na\n"
    assert cues_of(youtube) == [(1000, "a")]
    assert dropped_lines(youtube) == []


def test_whitespace_only_lines_stay_inside_the_cue():
    text = "WEBVTT\n\n00:01.000 --> 00:02.000\na\n \n\t\nb\n\n00:03.000 --> 00:04.000\nc\n"
    assert cues_of(text) == [(1000, "a\n \n\t\nb"), (3000, "c")]


def test_text_without_a_timing_line_is_reported_not_lost():
    text = "WEBVTT\n\n00:01.000 --> 00:02.000\na\n\nthe rest of a after an empty line\n"
    assert cues_of(text) == [(1000, "a")]
    assert dropped_lines(text) == [6]


def test_overlong_timestamps_drop_their_block_never_raise():
    text = (
        "WEBVTT\n\n9999999999:00:00.000 --> 9999999999:00:01.000\nhuge\n\n"
        f"{'9' * 5000}:00:00.000 --> 00:01.000\nhuger\n\n99999999999999:00:00.000 --> 00:01.000\nno time\n\n"
        "1088:42:00.500 --> 1088:42:01.000\nhls\n"
    )
    # A time, however late, is a cue (the meeting's bounds decide, see below); only a value that is
    # no time at all (beyond what a datetime can hold) drops its block.
    assert cues_of(text) == [(9_999_999_999 * 3_600_000, "huge"), (3_919_320_500, "hls")]
    assert dropped_lines(text) == [6, 9]


def test_arrows_in_identifier_position_and_broken_arrows():
    assert cues_of(ARROWS) == [(1000, "first"), (3000, "second"), (5000, "third"), (7000, "fourth")]
    assert dropped_lines(ARROWS) == [15, 17]  # the two blocks with a broken arrow


def test_invalid_utf8_and_null_become_replacement_characters():
    parsed = parse(b"WEBVTT\n\n00:01.000 --> 00:02.000\nbad \xff byte\x00\n")
    assert [c.text for c in parsed.cues] == ["bad \ufffd byte\ufffd"] and parsed.replaced_bytes
    assert not parse(b"WEBVTT\n\n00:01.000 --> 00:02.000\n\xef\xbf\xbd\n").replaced_bytes


# --- cue text: tags, character references, voices -------------------------------------------------

ALICE, BOB, TOM, ATT = "Alice Smith", "Bob Jones", "Tom & Jerry", "AT&T Support"
OTHERS = ("Twin", "Twin", "Zoë Ångström", "Smith, John", "Doe, Jane", "Team: Sales")
NAMES = speakers_by_name([(n, n) for n in (ALICE, BOB, TOM, ATT, *OTHERS)])


def who(raw: str) -> tuple[str | None, str | None, str | None, str]:
    said = attribute(raw, NAMES)
    return said.speaker, said.source, said.reason, said.words


def test_tags_are_removed_and_character_references_decoded_after_splitting_tags():
    cue = read_cue_text("<c.yellow>Tom &amp; Jerry</c> <i>&lt;v Bob&gt;</i><00:00:01.000> &eacute;t&eacute;")
    assert cue.lines == ("Tom & Jerry <v Bob> été",) and cue.voices == ()
    assert read_cue_text("<v.loud Tom &amp; Jerry>hi</v>").voices == (TOM,)
    assert read_cue_text("unclosed <b tag").lines == ("unclosed ",)


# Text that may or may not hold tags, references, decomposed accents and odd whitespace.
_CUE_TEXT = st.lists(
    st.sampled_from([*"<>&;/.v Aa1:\t\n\x0c", "&amp;", "&lt", "&#38;", "<v A>", "</v>", "e\u0301", "\u00e9", "\u3000"])
).map("".join)


@given(_CUE_TEXT | st.text(max_size=30))
def test_cue_text_without_tags_or_references_reads_as_by_the_steps(raw):
    assert read_cue_text(raw) == read_tagged_cue_text(raw)


@given(_CUE_TEXT | st.text(max_size=30))
def test_names_are_normalised_as_nfc_with_whitespace_collapsed(name):
    assert normalise_name(name) == " ".join(unicodedata.normalize("NFC", name).split())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<v Alice Smith>hello</v>", (ALICE, "voice_span", None, "hello")),
        ("<v  Alice\tSmith >hello", (ALICE, "voice_span", None, "hello")),  # whitespace collapsed
        ("Alice Smith: hello\nmore", (ALICE, "prefix", None, "hello\nmore")),
        ("AT&amp;T Support: how can I help", (ATT, "prefix", None, "how can I help")),
        ("<v Tom &amp; Jerry>Tom &amp; Jerry here", (TOM, "voice_span", None, "Tom & Jerry here")),
        ("Zoe\u0308 A\u030angstro\u0308m: NFC", ("Zoë Ångström", "prefix", None, "NFC")),
        ("alice smith: case differs", (None, "prefix", "no_match", "case differs")),
        ("just words, at 10:30", (None, None, "no_name", "just words, at 10:30")),
        ("<v>nobody named", (None, "voice_span", "no_name", "nobody named")),
        ("Twin: which one", (None, "prefix", "several_matches", "which one")),
        ("<v Bob Jones>Alice Smith: can you share your screen?</v>",
         (None, "voice_span", "several_speakers", "Alice Smith: can you share your screen?")),
        ("Alice Smith: yes\nBob Jones: no, I disagree",
         (None, "prefix", "several_speakers", "yes\nBob Jones: no, I disagree")),
        ("Alice Smith: yes\nSpeaker 2: no", (None, "prefix", "several_speakers", "yes\nSpeaker 2: no")),
        ("<v Alice Smith>yes</v>\n<v Bob Jones>no</v>", (None, "voice_span", "several_speakers", "yes\nno")),
        ("<v Alice Smith>Alice Smith: me again", (ALICE, "voice_span", None, "Alice Smith: me again")),
        ("Alice Smith: see https://example.org at 10:30", (ALICE, "prefix", None, "see https://example.org at 10:30")),
        # Display names no generic label would take: a comma, a colon. Still names, still speakers.
        ("Smith, John: hello", ("Smith, John", "prefix", None, "hello")),
        ("Team: Sales: hello", ("Team: Sales", "prefix", None, "hello")),
        ("Smith,  John: hello\nDoe, Jane: no", (None, "prefix", "several_speakers", "hello\nDoe, Jane: no")),
        ("<v Smith, John>hello\nDoe, Jane: no", (None, "voice_span", "several_speakers", "hello\nDoe, Jane: no")),
    ],
)  # fmt: skip
def test_speaker_words_and_reason(raw, expected):
    assert who(raw) == expected


# --- properties -------------------------------------------------------------------------------------

_DISPLAY_NAMES = st.lists(
    st.sampled_from(["Alice Smith", "Alice", "Smith, John", "Team: Sales", "Team", "Team: Sales: East", "Zoë", "a:b"]),
    max_size=6,
)  # repeats: a name two participants share
_LABELLED_LINE = st.builds(
    "".join,
    st.tuples(
        st.sampled_from(["Alice Smith", "Alice  Smith", "Alice", "Team: Sales", "Team", "a:b", "Speaker 2", ""]),
        st.sampled_from([":", ": ", "::", " :", "", ":\t"]),
        st.text(alphabet=" :ab,\t", max_size=8),
    ),
)


@given(_DISPLAY_NAMES, _LABELLED_LINE)
@example(["Team", "Team: Sales", "Team: Sales: East"], "Team: Sales: hi")
@settings(max_examples=1000, deadline=None)
def test_a_line_is_labelled_with_the_longest_display_name_it_starts_with(names, line):
    speakers = speakers_by_name([(name, n) for n, name in enumerate(names)])
    normalised = normalise_name(line)
    labels = [name for name in speakers.by_name if normalised.startswith(name + ":")]
    name = max(labels, key=len) if labels else line_label(line)
    assert line_name(line, speakers) == ((name, name.count(":") + 1) if name else None)


_VOICE_LINE = st.builds(
    "".join,
    st.tuples(
        st.sampled_from(["<v ", "<v\t", "<v  ", "<v\x0c", "<v.loud ", "<V ", "<v", "<b><v ", "<c.x>"]),
        st.sampled_from(["Alice Smith", " Alice  Smith ", "Team: Sales", "Alice", "", "Bob", "a:b", "A<b"]),
        st.sampled_from([">", ">", "> ", ""]),
        _LABELLED_LINE | st.sampled_from(["hi > there", "a <i>b</i>", "x</v>y"]),
        st.sampled_from(["", "</v>", "</v> ", "</v></v>", "<b>", " </v>"]),
    ),
)


@given(_DISPLAY_NAMES, _LABELLED_LINE | _VOICE_LINE | st.text(max_size=20))
@example(["Team", "Team: Sales"], "Team: Sales: hi")
@example(["Alice Smith", "Bob"], "<v Alice Smith>Bob: hi</v>")
@settings(max_examples=2000, deadline=None)
def test_a_one_line_cue_is_attributed_as_by_the_rules_steps(names, line):
    assume("\n" not in line and "&" not in line)
    speakers = speakers_by_name([(name, n) for n, name in enumerate(names)])
    if "<" not in line:
        assert attribute_line(line, speakers) == attribute_cue(line, speakers)
    assert attribute(line, speakers) == attribute_cue(line, speakers)


PEOPLE = tuple(
    Participant(f"p{i}", f"u_{i}", "acct_1", name)
    for i, name in enumerate(
        ["Alice Smith", "Bob Jones", "Tom & Jerry", "AT&T Support", "Zoë", "Doe, Jane", "Team: Sales"]
    )
)
MEETING = Meeting("m_1", "acct_1", T0, PEOPLE, T0 + timedelta(hours=1))
PATH = f"meetings/dt={DAY}/m_1/transcript.vtt"


def _escape(name: str) -> str:
    return name.replace("&", "&amp;")


@st.composite
def transcripts(draw):
    """A WebVTT file and, per cue in order, the set of participants whose words it holds (None: a caption)."""
    blocks, truth = ["WEBVTT" + draw(st.sampled_from(["", " title", "\nKind: captions"]))], []
    for i in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            blocks.append(
                draw(st.sampled_from(["NOTE x", "NOTE\nmulti", "STYLE\n::cue {}"])) if not truth else "NOTE y"
            )
        lines, spoke = [], set()
        style = draw(st.sampled_from(["voice", "prefix", "caption"]))
        speaker = draw(st.sampled_from(PEOPLE))
        marker = f"w{i}"
        if style == "voice":
            lines.append(f"<v {_escape(speaker.display_name)}>{marker} says</v>")
            spoke.add(speaker.participant_id)
        elif style == "prefix":
            lines.append(f"{_escape(speaker.display_name)}: {marker} says")
            spoke.add(speaker.participant_id)
        else:
            lines.append(f"{marker} captioned")
            spoke.add(None)
        for j in range(draw(st.integers(0, 2))):  # more lines: the same speaker, or another who is named
            other = draw(st.sampled_from(PEOPLE))
            if style != "caption" and draw(st.booleans()):
                lines.append(f"{_escape(other.display_name)}: {marker}.{j}")
                spoke.add(other.participant_id)
            else:
                lines.append(f"{marker}.{j} and more")
        ident = draw(st.sampled_from(["", f"{i + 1}\n", "cue-x\n"]))
        blocks.append(f"{ident}00:{i:02d}.000 --> 00:{i:02d}.900\n" + "\n".join(lines))
        truth.append(spoke)
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return newline.join("\n\n".join(blocks).split("\n")) + newline, truth


def _check_reader_invariants(data: bytes):
    artifacts, quarantined = read_transcript(data, MEETING, PATH)
    assert not any("could not be read" in q.error for q in quarantined)  # the reader itself never raised
    ids = [a.artifact_id for a in artifacts]
    assert len(ids) == len(set(ids))
    assert all(q.unit.startswith(PATH) for q in quarantined)
    try:
        parsed = parse(data)
    except NotWebVTT:
        assert artifacts == [] and len(quarantined) == 1
        return artifacts
    # Every cue returned and every dropped block ends as exactly one artifact or quarantined unit.
    assert len(artifacts) + len(quarantined) == len(parsed.cues) + len(parsed.dropped)
    for artifact in artifacts:
        assert (artifact.speaker_source, artifact.unidentified_reason) != (None, None) or artifact.required_participants
        assert len(artifact.required_participants) == (0 if artifact.unidentified_speaker else 1)
    return artifacts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transcripts())
def test_generated_transcripts_attribute_words_only_to_their_one_speaker(case):
    text, truth = case
    artifacts = _check_reader_invariants(text.encode())
    assert len(artifacts) == len(truth)  # nothing dropped, nothing quarantined in a well-formed file
    for artifact, spoke in zip(artifacts, truth, strict=True):
        if artifact.unidentified_speaker:
            continue
        # The heart of SPEC §2.1: a cue published under someone's consent holds only their words.
        assert spoke == {artifact.required_participants[0].participant_id}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transcripts(), st.randoms(use_true_random=False))
def test_mutated_transcripts_never_raise_and_always_reconcile(case, rnd: random.Random):
    data = bytearray(case[0].encode())
    for _ in range(rnd.randint(1, 8)):
        where = rnd.randrange(len(data) + 1)
        kind = rnd.random()
        junk = rnd.choice([b"\n", b"\r", b"-->", b":", b"<v ", b">", b"&amp;", b"\xff", b"\x00", b"9" * 30, b" "])
        if kind < 0.4:
            data[where:where] = junk
        elif kind < 0.7:
            del data[where : where + rnd.randint(1, 5)]
        else:
            data[where : where + 1] = bytes([rnd.randrange(256)])
    artifacts = _check_reader_invariants(bytes(data))
    names = {p.participant_id: p.display_name for p in PEOPLE}
    # What the file says once decoded as the reader decodes it (`&ampT` is `&T` by HTML's legacy rules).
    said = normalise_name(html.unescape(bytes(data).decode("utf-8", errors="replace")))
    for artifact in artifacts:
        if not artifact.unidentified_speaker:
            # Whatever the damage, a speaker is only ever one the file itself names.
            assert normalise_name(names[artifact.required_participants[0].participant_id]) in said


def test_a_cue_outside_the_meeting_is_one_quarantined_unit():
    text = "WEBVTT\n\n00:01.000 --> 00:02.000\nAlice Smith: in\n\n01:00:00.001 --> 01:00:01.000\nAlice Smith: after\n"
    artifacts, quarantined = read_transcript(text.encode(), MEETING, PATH)
    assert [a.artifact_id for a in artifacts] == ["m_1/transcript/1"]
    assert [q.unit for q in quarantined] == [f"{PATH}#2"] and "line 6" in quarantined[0].error
    assert "after" not in quarantined[0].error  # errors never carry content


@given(st.text(st.sampled_from("a\n\r-"), max_size=60), st.lists(st.integers(0, 60), max_size=12))
def test_line_numbers_are_counted_from_wherever_the_parser_asked_last(text, positions):
    from consent_gate.webvtt_reader import _Input

    source = _Input(text)
    for position in positions:
        position = min(position, len(text))
        assert source.line_number(position) == text.count("\n", 0, position) + 1
