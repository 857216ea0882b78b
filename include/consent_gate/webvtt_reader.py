"""WebVTT read the way a conforming parser reads it (W3C WebVTT, "WebVTT parser algorithm").

Why not webvtt-py (0.6.0, still in requirements for the sample's own tests): it splits blocks with its
own rules, which drop cue blocks silently (a malformed timing line vanishes and the cue numbering in
artifact ids shifts), reject files browsers accept, and raise OverflowError on a very large hour
value. This module implements the specification's block splitting and timing parsing, and differs
from a browser in one way only: whatever a browser would drop without a word (a block with a bad
timing line, text without one) is reported as a `DroppedBlock` with its line number, so the caller
can quarantine it as one unit instead of losing it.

Every branch below names the rule it implements ("§ collect a WebVTT block, step ...") so a reader
can check it against the specification. Only structure is parsed here; cue text (tags, voices,
character references) is read in `consent_gate.speakers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

# A cue start or end further away than this is "too large to be a time": it cannot be added to a
# datetime (Python's timedelta stops at 999,999,999 days), so the block is dropped and reported.
MAX_TIMESTAMP_MS = 999_999_999 * 86_400_000
_MAX_HOUR_DIGITS = 15  # more digits than any value below MAX_TIMESTAMP_MS; never int() a huge string

_ASCII_WHITESPACE = " \t\n\x0c\r"  # the specification's "ASCII whitespace" (skipped around timings)

# The timing line nearly every cue has, `hh:mm:ss.ttt --> hh:mm:ss.ttt` with up to 6 digits of hours,
# matched at C speed. It accepts nothing `parse_timing_line`'s step-by-step reading would refuse or read
# differently ([0-9], never \d, which matches other scripts' digits; no digit may follow a field, as
# the step-by-step reading collects every digit); anything else takes that reading.
_COMMON_TIMESTAMP = r"([0-9]{1,6}):([0-5][0-9]):([0-5][0-9])\.([0-9]{3})(?![0-9])"
_COMMON_TIMING = re.compile(rf"[ \t\n\x0c\r]*{_COMMON_TIMESTAMP}[ \t\n\x0c\r]*-->[ \t\n\x0c\r]*{_COMMON_TIMESTAMP}")


# A whole common cue block at a position (`_common_cues`): an optional identifier line, a timing line
# `_COMMON_TIMING` matches (within one line, so its whitespace is [ \t\x0c]; cue settings after it),
# text lines, then the empty line ending the block and every line feed after it (§ step 11's skip).
# Lines are never empty inside a block, so each repeat is decided by its first character. Neither the
# identifier nor a text line holds an arrow: the steps start a block at such a line, so a match never
# reads past the next one. (A text part that ran on across arrow lines read, for every block of a file
# of timing lines without empty lines, up to the file's end: quadratic, 16,000 such lines took 28 s.)
_COMMON_BLOCK = re.compile(
    r"(?:(?!.*-->)([^\n]+)\n)?"
    rf"[ \t\x0c]*{_COMMON_TIMESTAMP}[ \t\x0c]*-->[ \t\x0c]*{_COMMON_TIMESTAMP}[^\n]*\n"
    r"((?:(?!.*-->)[^\n]+\n)*)\n+"
)


class Cue(NamedTuple):
    """A cue the parser returns, in file order. (A NamedTuple: one is made per cue, three times faster
    than a frozen dataclass.)"""

    line: int  # 1-based line of its timing line in the normalised input
    identifier: str
    start_ms: int
    end_ms: int
    text: str  # raw cue text: tags and character references not yet interpreted


@dataclass(frozen=True, slots=True)
class DroppedBlock:
    """A block a browser would drop without a word, so nobody's words are lost silently here."""

    line: int  # 1-based line where the block starts
    problem: str  # names the rule, never the block's text


@dataclass(frozen=True, slots=True)
class WebVTTFile:
    cues: list[Cue]
    dropped: list[DroppedBlock]
    replaced_bytes: bool  # invalid UTF-8 was replaced with U+FFFD (the specification's decoding)


class NotWebVTT(ValueError):
    """The file lacks the WEBVTT signature: a conforming parser rejects the whole file."""


def decode(data: bytes) -> tuple[str, bool]:
    """§ WebVTT file decoding: UTF-8 decode (a leading BOM is removed, invalid bytes become U+FFFD);
    § parser step 1 and 2: NULL becomes U+FFFD; CRLF, then lone CR, become LF. LFCR is LF then CR, so
    it becomes two line ends, as a browser reads it."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text, replaced = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, replaced = data.decode("utf-8", errors="replace"), True
    text = text.replace("\x00", "\ufffd").replace("\r\n", "\n").replace("\r", "\n")
    return text, replaced


def parse(data: bytes) -> WebVTTFile:
    """§ WebVTT parser algorithm, on the bytes of a file. Raises NotWebVTT only for a missing signature;
    anything else wrong is a DroppedBlock, never an exception."""
    text, replaced = decode(data)
    cues, dropped = _parse_text(text)
    return WebVTTFile(cues, dropped, replaced)


class _Input:
    """The specification's "input" and "position", plus line numbers for the evidence."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0
        self._counted_to = 0  # the line ends before this position are counted in _line
        self._line = 1

    def past_end(self) -> bool:
        return self.position >= len(self.text)

    def line_number(self, position: int) -> int:
        """1-based line of `position`: the line ends between it and the position last asked about,
        counted in C. The parser asks in file order (a block's start after its timing line at most),
        so the file is counted about once, never from its start for every cue (quadratic)."""
        if position >= self._counted_to:
            self._line += self.text.count("\n", self._counted_to, position)
        else:
            self._line -= self.text.count("\n", position, self._counted_to)
        self._counted_to = position
        return self._line

    def collect_line(self) -> str:
        """§ collect a sequence of code points that are not U+000A LF."""
        end = self.text.find("\n", self.position)
        end = len(self.text) if end < 0 else end
        line = self.text[self.position : end]
        self.position = end
        return line

    def skip_line_feeds(self) -> None:
        """§ collect a sequence of code points that are U+000A LF (and ignore them)."""
        while not self.past_end() and self.text[self.position] == "\n":
            self.position += 1


def _parse_text(text: str, *, common_cues: bool = True) -> tuple[list[Cue], list[DroppedBlock]]:
    """The cues and dropped blocks of a decoded file. `common_cues=False` collects every block step by
    step, as the specification words it: what the tests check the common-cue path against."""
    source = _Input(text)
    # § parser steps 4-6: the signature. "WEBVTT" alone, or followed by space, tab or LF.
    if not (text == "WEBVTT" or (text.startswith("WEBVTT") and text[6:7] in (" ", "\t", "\n"))):
        raise NotWebVTT("no WEBVTT signature")
    source.collect_line()  # § step 7: the rest of the signature line is ignored
    if source.past_end():  # § step 8: a file of only the signature has no cues
        return [], []
    source.position += 1  # § step 9: the LF ending the signature line
    # § step 10, header: a non-empty line directly after the signature starts the header block,
    # collected with "in header" set (metadata such as YouTube's `Kind:` and `Language:` lines). A line
    # with "-->" ends the header and is read again as the first cue: a cue right after the header.
    if not source.past_end() and source.text[source.position] != "\n":
        _collect_block(source, in_header=True)
    source.skip_line_feeds()  # § step 11
    cues: list[Cue] = []
    dropped: list[DroppedBlock] = []
    # § step 12, block loop: blocks separated by one or more empty lines, until the end of input.
    while not source.past_end():
        if common_cues and _common_cues(source, cues):
            continue  # a run of common cues, each matched whole: the position is at the next block
        block = (common_cues and _common_cue(source)) or _collect_block(source, in_header=False)
        if isinstance(block, Cue):
            cues.append(block)
        elif isinstance(block, DroppedBlock):
            dropped.append(block)
        source.skip_line_feeds()
    return cues, dropped


def _common_cues(source: _Input, cues: list[Cue]) -> bool:
    """Append the run of blocks from the position that `_COMMON_BLOCK` matches whole, each the cue
    `_common_cue` reads (the pattern admits no arrow in the identifier or the text), and leave the
    position at the first block that is not one, past the empty lines after the last one read. False if
    it read none.

    One C match per cue instead of a Python step per line: nearly every cue of a vendor's file is one,
    and the file's last block (no empty line after it) is left to `_common_cue` and `_collect_block`."""
    text, at = source.text, source.position
    match = _COMMON_BLOCK.match(text, at)
    if match is None:
        return False
    line = source.line_number(at)  # of the block's first line; then counted per block, in C
    while match is not None:
        fields = match.groups()
        identifier, words = fields[0], fields[9]
        start_ms, end_ms = _common_timing_ms(fields, 1)
        # The block's lines after its timing line, without the line end before the empty line.
        cues.append(Cue(line if identifier is None else line + 1, identifier or "", start_ms, end_ms, words[:-1]))
        line += text.count("\n", at, match.end())
        at = match.end()
        match = _COMMON_BLOCK.match(text, at)
    source.position = at
    return True


def _common_cue(source: _Input) -> Cue | None:
    """The block at the position, read whole, when it is the common cue: an optional identifier line, a
    timing line that parses, then text lines without `-->`, ended by an empty line. The step-by-step
    reading gives exactly this cue for such a block and leaves the position at the same empty line
    (see `_collect_block`: steps 4.1, 6 and 5). Anything else (a comment, a bad timing, an arrow in the
    text, the file's last block) returns None with the position unchanged, for `_collect_block`.

    Read a line at a time and given up at the first line that rules the block out: `_collect_block`
    may end a block at an arrow line and start the next one there, so a look ahead to the block's end
    could read the same lines again for every timing line of a file without empty lines (quadratic)."""
    text, start = source.text, source.position
    lines: list[str] = []
    timing_at: int | None = None
    at = start
    while (end := text.find("\n", at)) != at:  # until the empty line that ends the block
        if end < 0:
            return None  # the file's last block: `_collect_block` reads up to its end
        line = text[at:end]
        if "-->" in line:
            if timing_at is not None:
                return None  # a second arrow line: it starts a block of its own
            timing_at = len(lines)
        elif timing_at is None and lines:
            return None  # neither of the first two lines has an arrow: no cue
        lines.append(line)
        at = end + 1
    if timing_at is None:
        return None
    timing = parse_timing_line(lines[timing_at])
    if isinstance(timing, str):
        return None
    timing_start = start + len(lines[0]) + 1 if timing_at else start
    identifier = lines[0] if timing_at else ""
    source.position = at
    return Cue(source.line_number(timing_start), identifier, timing[0], timing[1], "\n".join(lines[timing_at + 1 :]))


def _collect_block(source: _Input, *, in_header: bool) -> Cue | DroppedBlock | None:
    """§ collect a WebVTT block. Returns the cue, a DroppedBlock for a block a browser drops that could
    have held someone's words, or None for the header, comments, style sheets and regions."""
    start = source.position
    line_count = 0
    previous_position = source.position
    buffer: list[str] = []  # the specification's "buffer", kept as lines
    seen_arrow = False
    cue: Cue | None = None
    timing_problem: tuple[int, str] | None = None
    while True:
        line_start = source.position
        line = source.collect_line()  # § loop step 1
        line_count += 1  # § step 2
        seen_eof = source.past_end()  # § step 3: EOF, or skip the LF
        if not seen_eof:
            source.position += 1
        if "-->" in line:  # § step 4: a line with an arrow
            # § step 4.1: it is this block's timing line only outside the header, and only as the
            # block's first line or, after an identifier, its second.
            if not in_header and (line_count == 1 or (line_count == 2 and not seen_arrow)):
                seen_arrow = True
                previous_position = source.position
                timing = parse_timing_line(line)
                if isinstance(timing, str):  # § "if that fails, let cue be null": reported, not lost
                    cue, timing_problem = None, (source.line_number(line_start), timing)
                else:
                    identifier = "\n".join(buffer)
                    cue = Cue(source.line_number(line_start), identifier, timing[0], timing[1], "")
                    buffer = []  # § "let buffer be the empty string" (it held the identifier)
            else:
                if timing_problem is not None and not buffer and line_count == 2:
                    # A failed first line directly followed by a timing line (`foo-->` or `-->` used as
                    # an identifier, the W3C `arrows` test): the block holds no text, and the next
                    # block reads that timing line as its cue, so nothing is dropped but an identifier.
                    timing_problem = None
                # § step 4.2: any other arrow line (a third line, a second timing line, `-->` inside
                # cue text, an arrow in the header) ends the block before it; the next block starts
                # there and reads it as a timing line.
                source.position = previous_position
                break
        elif line == "":  # § step 5: an empty line ends the block (a whitespace-only line does not)
            break
        else:  # § step 6: text (identifier, cue text, comment, header metadata, style or region)
            buffer.append(line)
            previous_position = source.position
        if seen_eof:  # § step 7
            break
    if cue is not None:  # § step 8: the cue's text is the buffer
        return Cue(cue.line, cue.identifier, cue.start_ms, cue.end_ms, "\n".join(buffer))
    if timing_problem is not None:
        return DroppedBlock(timing_problem[0], f"malformed cue timing line: {timing_problem[1]}")
    if in_header or not buffer:
        return None
    first = buffer[0]
    # Comments (§ WebVTT comment block: "NOTE" followed by space, tab, LF or nothing), style sheets and
    # regions (§ step 6.1: "STYLE"/"REGION" followed only by whitespace) hold no cue: a browser drops
    # them and so do we. A STYLE or REGION block after the first cue is ignored by browsers too.
    if first == "NOTE" or first.startswith(("NOTE ", "NOTE\t")):
        return None
    if first.rstrip(" \t") in ("STYLE", "REGION"):
        return None
    # Text without a timing line: a browser drops it; it may be somebody's words (a cue split by an
    # empty line, a timing line without "-->"), so it is reported.
    return DroppedBlock(source.line_number(start), "block without a cue timing line")


def parse_timing_line(line: str) -> tuple[int, int] | str:
    """§ collect WebVTT cue timings and settings: (start_ms, end_ms), or the reason it fails. The cue
    settings after the end time never make the line fail (§ parse the WebVTT cue settings: unknown or
    malformed settings are ignored), so they are not read."""
    common = _COMMON_TIMING.match(line)
    if common is None:
        return timing_by_steps(line)
    return _common_timing_ms(common.groups(), 0)


def _common_timing_ms(fields: tuple[str, ...], at: int) -> tuple[int, int]:
    """(start_ms, end_ms) of the eight fields two `_COMMON_TIMESTAMP`s matched, from `fields[at]` on."""
    h1, m1, s1, t1, h2, m2, s2, t2 = fields[at : at + 8]
    two, three = _TWO_DIGITS, _THREE_DIGITS
    return (
        ((int(h1) * 60 + two[m1]) * 60 + two[s1]) * 1000 + three[t1],
        ((int(h2) * 60 + two[m2]) * 60 + two[s2]) * 1000 + three[t2],
    )


# The values of the fixed-width fields _COMMON_TIMESTAMP matches (minutes and seconds [0-5][0-9], three
# digits of milliseconds), looked up: int() of a string costs a type call each, 8 a cue.
_TWO_DIGITS = {f"{n:02d}": n for n in range(60)}
_THREE_DIGITS = {f"{n:03d}": n for n in range(1000)}


def timing_by_steps(line: str) -> tuple[int, int] | str:
    """`parse_timing_line` read step by step, as the specification words it; the one reading of
    every line `_COMMON_TIMING` does not match, and what the tests check the fast path against."""
    position = _skip_whitespace(line, 0)  # § step 3
    start = _collect_timestamp(line, position)  # § step 4
    if isinstance(start, str):
        return f"start time {start}"
    start_ms, position = start
    position = _skip_whitespace(line, position)  # § step 5
    if line[position : position + 3] != "-->":  # § steps 6-8: "-", "-", ">"
        return "no '-->' after the start time"
    position = _skip_whitespace(line, position + 3)  # § step 9
    end = _collect_timestamp(line, position)  # § step 10
    if isinstance(end, str):
        return f"end time {end}"
    return start_ms, end[0]


def _skip_whitespace(line: str, position: int) -> int:
    while position < len(line) and line[position] in _ASCII_WHITESPACE:
        position += 1
    return position


def _digits(line: str, position: int) -> tuple[str, int]:
    """§ collect a sequence of ASCII digits."""
    end = position
    while end < len(line) and "0" <= line[end] <= "9":
        end += 1
    return line[position:end], end


def _collect_timestamp(line: str, position: int) -> tuple[int, int] | str:
    """§ collect a WebVTT timestamp: (milliseconds, position after it), or why it fails. Hours are
    optional (`mm:ss.ttt`) and, per the specification, may have any number of digits; a value too large
    to be a time fails here (the one place this parser is stricter than a browser, see MAX_TIMESTAMP_MS)."""
    hours_given = False  # § step 1: "most significant units" is minutes
    first, position = _digits(line, position)
    if not first:  # § steps 2-3
        return "does not start with a digit"
    if len(first) != 2 or int(first) > 59:  # § step 5: not two digits, or above 59: hours
        hours_given = True
    if len(first) > _MAX_HOUR_DIGITS:
        return "too large to be a time"
    if line[position : position + 1] != ":":  # § step 6
        return "has no ':' after its first field"
    second, position = _digits(line, position + 1)
    if len(second) != 2:  # § step 7
        return "has a field that is not two digits"
    if hours_given or line[position : position + 1] == ":":  # § step 8: hours, minutes, seconds
        if line[position : position + 1] != ":":
            return "has hours but no seconds"
        third, position = _digits(line, position + 1)
        if len(third) != 2:
            return "has a field that is not two digits"
        hours, minutes, seconds = int(first), int(second), int(third)
    else:  # § step 8, otherwise: minutes and seconds only
        hours, minutes, seconds = 0, int(first), int(second)
    if line[position : position + 1] != ".":  # § step 9
        return "has no '.' before its milliseconds"
    millis, position = _digits(line, position + 1)
    if len(millis) != 3:  # § step 10
        return "does not have three digits of milliseconds"
    if minutes > 59 or seconds > 59:  # § step 11
        return "has minutes or seconds above 59"
    total = ((hours * 60 + minutes) * 60 + seconds) * 1000 + int(millis)  # § step 12
    if total > MAX_TIMESTAMP_MS:
        return "too large to be a time"
    return total, position
