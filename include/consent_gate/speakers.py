"""Who spoke a cue, and its words: SPEC §2.1 "Speaker" and "Words".

The speaker comes from the cue's voice span (`<v Name>`, as Microsoft Teams exports) if it has one,
else from its first line's `Name:` prefix (as Zoom exports). Any doubt about whose words these are
leaves the cue unidentified, with the reason kept as content-free evidence:

- `no_name`: no voice annotation and no `Name:` prefix (caption files);
- `no_match`: the name is nobody's display name;
- `several_matches`: several participants have that display name;
- `several_speakers`: the cue names more than one speaker (two voice spans, a voice span and a
  different `Name:` label, or a later line labelled with another name).

Cue text is read with the "WebVTT cue text parsing rules" reduced to what attribution needs: `<`
starts a tag that ends at `>` or the end of the text, a `v` start tag carries its annotation, and
character references are decoded in text and annotations only after the tags are split, so that
`&lt;v Bob&gt;` stays text and `AT&amp;T Support` is `AT&T Support`.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

VOICE_SPAN = "voice_span"
PREFIX = "prefix"
NO_NAME = "no_name"
NO_MATCH = "no_match"
SEVERAL_MATCHES = "several_matches"
SEVERAL_SPEAKERS = "several_speakers"
SPEAKER_SOURCES = (VOICE_SPAN, PREFIX)
UNIDENTIFIED_REASONS = (NO_NAME, NO_MATCH, SEVERAL_MATCHES, SEVERAL_SPEAKERS)

# § WebVTT cue text tokenizer: "<" always opens a tag, closed by ">" or by the end of the cue text.
_TAG = re.compile(r"<([^>]*)(?:>|$)")
_TAG_WHITESPACE = re.compile(r"[ \t\n\x0c]")  # § tag state: these end the tag name, an annotation follows
# A line labelled `Name:`: up to six words and 64 characters before a colon that ends the line or is
# followed by whitespace (so `10:30` and `https://` are not labels). Sentence punctuation rules a label
# out. Wider than "a participant's name" on purpose: `Speaker 2:` names somebody too.
_LABEL = re.compile(r"^([^:,;!?\"\n]{1,64}):(?=[ \t]|$)")
_MAX_LABEL_WORDS = 6

P = TypeVar("P")


def normalise_name(name: str) -> str:
    """SPEC §2.1: Unicode NFC and runs of whitespace collapsed; never case-folded or fuzzy."""
    if not name.isascii():  # ASCII text is its own NFC form (most names and lines: skip the lookup)
        name = unicodedata.normalize("NFC", name)
    return " ".join(name.split())


# NamedTuples, not frozen dataclasses: one of each is made per cue, and a tuple is made in a third
# of the time (a frozen dataclass sets each field through object.__setattr__).
class CueText(NamedTuple):
    """Cue text as the parsing rules read it: the words and every voice annotation."""

    lines: tuple[str, ...]  # tags removed, character references decoded
    voices: tuple[str, ...]  # normalised annotations of the `v` start tags, in order


class Attribution(NamedTuple, Generic[P]):
    speaker: P | None
    source: str | None  # VOICE_SPAN | PREFIX: where the (claimed) name came from; None if none
    reason: str | None  # None when identified, else one of UNIDENTIFIED_REASONS
    words: str


@dataclass(frozen=True)
class SpeakerNames(Generic[P]):
    """A meeting's participants by normalised display name (a name may belong to several), made once
    per meeting: every cue of its transcript is attributed against it."""

    by_name: dict[str, list[P]]
    lengths: frozenset[int]  # the names' lengths: where, in a line, a name's colon can be
    longest: int  # the length of the longest name

    @classmethod
    def of(cls, by_name: dict[str, list[P]]) -> SpeakerNames[P]:
        lengths = frozenset(map(len, by_name))
        return cls(by_name, lengths, max(lengths, default=0))

    def labelled(self, line: str) -> str | None:
        """The longest name that the normalised `line` starts with, followed by ":" (`Smith, John:`
        before `Smith:`): at each colon where a name of the meeting can end, the last first, a dict
        look-up. Never a comparison with every name (a webinar's thousands of names, for each of its
        cues' lines, made that quadratic), nor a look-up at every colon (each copies the line up to it)."""
        colon = line.rfind(":", 0, self.longest + 1)
        while colon > 0:
            if colon in self.lengths and line[:colon] in self.by_name:
                return line[:colon]
            colon = line.rfind(":", 0, colon)
        return None


def read_cue_text(raw: str) -> CueText:
    """§ cue text parsing rules, for attribution: text runs and `v` start tags; other tags dropped."""
    if "<" not in raw and "&" not in raw:  # no tag, no character reference: the text is its own reading
        return CueText(tuple(raw.split("\n")), ())
    return read_tagged_cue_text(raw)


def read_tagged_cue_text(raw: str) -> CueText:
    """`read_cue_text` by the rules' steps, whatever the text holds."""
    parts: list[str] = []
    voices: list[str] = []
    position = 0
    for tag in _TAG.finditer(raw):
        parts.append(html.unescape(raw[position : tag.start()]))
        position = tag.end()
        body = tag.group(1)
        if body.startswith("/") or body[:1].isdigit():  # § end tag, timestamp tag: no text, no voice
            continue
        split = _TAG_WHITESPACE.search(body)
        name_and_classes = body[: split.start()] if split else body
        if name_and_classes.split(".", 1)[0] == "v":  # § start tag "v": a voice, classes allowed
            annotation = body[split.end() :] if split else ""
            voices.append(normalise_name(html.unescape(annotation)))
    parts.append(html.unescape(raw[position:]))
    return CueText(tuple("".join(parts).split("\n")), tuple(voices))


def line_label(line: str) -> str | None:
    """The normalised `Name` of a line beginning `Name:`, or None."""
    match = _LABEL.match(line)
    if match is None:
        return None
    label = normalise_name(match.group(1))
    if not label or len(label.split(" ")) > _MAX_LABEL_WORDS:
        return None
    return label


def speakers_by_name(participants: Sequence[tuple[str | None, P]]) -> SpeakerNames[P]:
    """Participants by normalised display name (a name may belong to several)."""
    index: dict[str, list[P]] = {}
    for display_name, participant in participants:
        if display_name is not None and normalise_name(display_name):
            index.setdefault(normalise_name(display_name), []).append(participant)
    return SpeakerNames.of(index)


def line_name(line: str, names: SpeakerNames[Any]) -> tuple[str, int] | None:
    """The name `line` is labelled with and how many colons the label spans, or None. A participant's
    display name followed by `:` wins (the longest: `Smith, John:` and `Team: Sales:` are names, though
    no generic label), else any `Name:` label."""
    name = names.labelled(normalise_name(line))
    if name is None:
        name = line_label(line)
    return (name, name.count(":") + 1) if name else None


def attribute(raw: str, names: SpeakerNames[P]) -> Attribution[P]:
    """The speaker and words of one cue's raw text (SPEC §2.1), among the meeting's `names`."""
    if "\n" not in raw and "&" not in raw:
        if "<" not in raw:
            return attribute_line(raw, names)
        voice = _ONE_VOICE.fullmatch(raw)
        if voice is not None:
            return attribute_voice(voice[1], voice[2], names)
    return attribute_cue(raw, names)


def attribute_line(raw: str, names: SpeakerNames[P]) -> Attribution[P]:
    """`attribute_cue` of a one-line cue without tags or character references, as most are: its only
    claim is its `Name:` prefix, so no voice or later label is looked for (a third of the time)."""
    label = line_name(raw, names)
    if label is None:
        return Attribution(None, None, NO_NAME, raw.strip())
    name, colons = label
    return _identified(names, name, PREFIX, raw.split(":", colons)[colons].strip())


# A one-line cue in one voice span, as Teams writes them: `<v Name>words</v>` (the end tag may be left
# out). No other tag, no character reference: the annotation and the words are read as they are.
_ONE_VOICE = re.compile(r"<v[ \t\x0c]([^<>&\n]*)>([^<&\n]*)(?:</v>)?")


def attribute_voice(annotation: str, words: str, names: SpeakerNames[P]) -> Attribution[P]:
    """`attribute_cue` of a cue `_ONE_VOICE` matches: the voice names the speaker, unless it names
    nobody, or the words begin with another name's label (two claims about who spoke)."""
    name = normalise_name(annotation)
    if not name:
        return Attribution(None, VOICE_SPAN, NO_NAME, words.strip())
    label = line_name(words, names)
    if label is not None and label[0] != name:
        return Attribution(None, VOICE_SPAN, SEVERAL_SPEAKERS, words.strip())
    return _identified(names, name, VOICE_SPAN, words.strip())


def attribute_cue(raw: str, names: SpeakerNames[P]) -> Attribution[P]:
    """`attribute` of any cue text, by the rules' steps."""
    cue = read_cue_text(raw)
    labels = [line_name(line, names) for line in cue.lines]
    named = {label[0] for label in labels if label}
    if cue.voices:
        source, name = VOICE_SPAN, cue.voices[0]
        words = "\n".join(cue.lines).strip()
        # Any label, even on the first line, that names someone else: a voice span plus a
        # different `Name:` prefix (`<v Bob>Alice: …`) is two claims about who spoke.
        others = (set(cue.voices) | named) - {name}
    else:
        if labels[0] is None:
            return Attribution(None, None, NO_NAME, "\n".join(cue.lines).strip())
        source, (name, colons) = PREFIX, labels[0]
        rest = cue.lines[0].split(":", colons)[colons]
        words = "\n".join((rest, *cue.lines[1:])).strip()
        others = {label[0] for label in labels[1:] if label} - {name}
    if not name:  # `<v>` without an annotation: a voice span naming nobody
        return Attribution(None, source, NO_NAME, words)
    if others:
        return Attribution(None, source, SEVERAL_SPEAKERS, words)
    return _identified(names, name, source, words)


def _identified(names: SpeakerNames[P], name: str, source: str, words: str) -> Attribution[P]:
    """The one participant a cue's only claimed `name` names, or why nobody."""
    matches = names.by_name.get(name, ())
    if not matches:
        return Attribution(None, source, NO_MATCH, words)
    if len(matches) > 1:
        return Attribution(None, source, SEVERAL_MATCHES, words)
    return Attribution(matches[0], source, None, words)
