"""A deterministic, realistic landing zone and consent database to run the gate against.

Everything the gate must cope with appears on purpose: guests, ambiguous and unknown speakers,
private messages, timestamps in several offsets, out-of-partition telemetry, consent ties, late and
future-dated consent, unreadable consent rows, and a small, fixed share of malformed units. Output
depends only on the arguments (one seeded `random.Random` per concern, gzip mtime 0, no wall clock),
so a test or a demo can name the exact bytes it ran on.

E-mails, IPs and device ids are planted in participants and telemetry as bait: the gate must never
publish them. Content text (cue words, chat, summaries, recording URIs) deliberately carries no
names, e-mails or raw ids, so any such value found in published output is a leak, not sample noise.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
import re
import shutil
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.schema import CreateTable

from consent_gate.consent_store import create_consent_indexes

__all__ = [
    "CONSENT_EVENTS_COLUMNS",
    "DEFAULT_SAMPLE_START",
    "SampleSummary",
    "create_consent_table",
    "write_consent_events",
    "write_sample",
]

DEFAULT_SAMPLE_START = date(2026, 11, 2)

CONSENT_EVENTS_COLUMNS = (
    "event_id",
    "subject_type",
    "subject_id",
    "purpose",
    "content_type",
    "decision",
    "effective_at",
    "recorded_at",
    "terms_version",
)

_CONSENT_EVENTS = sa.Table(
    "consent_events",
    sa.MetaData(),
    *(sa.Column(name, sa.Text, primary_key=name == "event_id") for name in CONSENT_EVENTS_COLUMNS),
)
_INSERT_BATCH = 1000

# Specials are placed once per block of this many meetings, so every kind shows up in a 40-meeting
# day and the malformed share stays the same (about 0.3% of units) however large the day is.
_BLOCK = 40
_MALFORMED_KINDS = (
    "meeting_truncated",
    "meeting_missing",
    "chat_not_json",
    "chat_no_offset",
    "chat_unknown_sender",
    "chat_duplicate_id",
    "summary_truncated",
    "telemetry_not_json",
    "telemetry_no_offset",
)
_SPECIAL_KINDS = (*_MALFORMED_KINDS, "ambiguous_name", "late_night", "late_telemetry", "local_date_differs")

_TELEMETRY_PARTS = 4
_GUEST_RATE = 0.07  # of non-host participants; the host is never a guest, so ~5% overall
_CONTENT_TYPES = ("transcript", "chat", "summary", "recording")

# --- vocabulary ------------------------------------------------------------------------------

_FIRST_NAMES = (
    "Alice", "Bruno", "Chen", "Daniela", "Emeka", "Fatima", "Gabriel", "Hana", "Ibrahim", "Julia",
    "Kenji", "Laura", "Mateo", "Nadia", "Oliver", "Priya", "Quentin", "Rosa", "Samuel", "Tanvi",
    "Umar", "Valentina", "William", "Ximena", "Yusuf", "Zoë", "Aisha", "Benjamin", "Camille", "Diego",
    "Elena", "Farid", "Grace", "Hugo", "Ingrid", "Jamal", "Katarzyna", "Liam", "Mei", "Noah", "Olga",
    "Pedro", "Rania", "Sofia", "Thomas", "Ulla", "Viktor", "Wen", "Yara", "Zainab", "Amir",
    "Beatriz", "Carlos", "Dmitri", "Eva", "Femi", "Giulia", "Hiroshi", "Isabel", "Jonas", "Kwame",
    "Lucía", "Marta", "Nikhil", "Oscar", "Paula", "Raj", "Sara", "Tomás", "Ana",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "García", "Müller", "Nguyen", "Okafor", "Rossi", "Kowalski", "Tanaka", "Johansson",
    "Silva", "Patel", "Kim", "Dubois", "O'Brien", "Novak", "Hernández", "Schmidt", "Chen", "Ivanova",
    "Mensah", "Haddad", "Andersen", "Costa", "Yamamoto", "Fischer", "Singh", "Lopez", "Wright",
    "Bianchi", "Nowak", "Martin", "Park", "Rahman", "Ali", "Jensen", "Moreau", "Sato", "Kaur",
    "Walker", "Ferreira", "Petrov", "Cohen", "Adeyemi", "Larsen", "Romero", "Hoffmann", "Zhang",
    "Wang", "Kovács", "Lindqvist", "Murphy", "Dias", "Suzuki", "Bauer", "Vargas", "Khan", "Ortiz",
    "Popescu", "Nielsen", "Gonzalez", "Hughes", "Lee-Chang", "Abdi", "Fontaine", "Ricci", "Horvat",
    "Mwangi", "Sousa", "Berg", "Da Silva",
)  # fmt: skip
_COMPANIES = (
    "Northwind Traders", "Contoso", "Fabrikam", "Tailspin Toys", "Wingtip", "Adventure Works",
    "Litware", "Proseware", "Lucerne Publishing", "Margie's Travel", "Alpine Ski House",
    "Coho Winery", "Fourth Coffee", "Humongous Insurance", "Blue Yonder Airlines", "Trey Research",
    "Woodgrove Bank", "Wide World Importers", "Southridge Video", "City Power & Light",
    "Consolidated Messenger", "Relecloud", "VanArsdel", "Bellows College", "Best For You Organics",
    "Munson's Pickles", "Nod Publishers", "Graphic Design Institute", "A. Datum", "Lamna Healthcare",
)  # fmt: skip
_TOPICS = (
    "Weekly sync", "Quarterly roadmap review", "Customer onboarding", "Sprint planning",
    "Vendor contract review", "Hiring debrief", "Incident retro", "Design review", "Budget planning",
    "Sales pipeline", "All-hands prep", "Security audit follow-up", "Product demo", "Standup",
    "Pricing workshop", "Board deck review", "Partner check-in", "Support escalation",
)  # fmt: skip
# No colons: the words of a cue must never create a speaker prefix by accident.
_SENTENCES = (
    "Let's get started, thanks everyone for joining.", "Can everyone hear me okay?",
    "I think we should push the launch by a week.", "The numbers for last quarter look better than expected.",
    "Could you share your screen?", "We still need sign-off from legal on the contract.",
    "I'll follow up with the vendor after this call.", "The migration finished over the weekend without issues.",
    "Does anyone have concerns about the timeline?", "Let's take that offline.",
    "I'm seeing a spike in support tickets since Tuesday.", "We agreed to freeze the scope for this release.",
    "Sorry, I was on mute.", "The customer asked for a demo next Thursday.",
    "Budget is tight, so we need to prioritise.", "I'll draft the proposal and send it around.",
    "Can we revisit the pricing tiers?", "The test environment is down again.",
    "Great work on the onboarding flow.", "Let's review the action items before we wrap up.",
    "We hired two new engineers for the platform team.", "The design review is scheduled for Monday.",
    "I don't think that estimate is realistic.", "Marketing wants the copy by Friday.",
    "Let's keep the retro to thirty minutes.", "Any updates on the security audit?",
    "I need a few more days to finish the analysis.", "The dashboard shows latency back to normal.",
    "We should document this decision.", "Thanks, that's all from my side.",
)  # fmt: skip
_NOISE_CUES = ("[inaudible]", "(crosstalk)", "[music]", "[laughter]", "[silence]")
# Which platform exported a transcript: Zoom (`Name: words`), Microsoft Teams (`<v Name>words</v>`) or a
# caption tool (no speaker at all, so every cue is unidentified).
_TRANSCRIPT_STYLES = (("zoom", 65), ("teams", 27), ("captions", 8))
_UNKNOWN_SPEAKERS = ("Speaker 2", "Unknown Speaker", "Conference Room B", "Dial-in User", "Speaker 1")
_CHAT_TEXTS = (
    "Here's the link to the doc", "+1", "Sorry, dropping off in 5", "Can you hear me?", "Agreed",
    "I'll send the slides after", "Running late, start without me", "Thanks all!",
    "Which version are we on?", "Nice work", "Can someone share the agenda?", "Back in 2 min",
    "Let's discuss the budget next week", "Sounds good to me", "My audio keeps cutting out",
    "Can we chat after this?", "Great point 👍", "Recording is on, just so everyone knows",
)  # fmt: skip
_SUMMARY_SENTENCES = (
    "The team reviewed progress on the quarterly roadmap.",
    "Participants agreed to postpone the launch by one week.",
    "Open questions remain about the vendor contract.",
    "Action items were assigned for the security audit.",
    "The group discussed hiring plans for the platform team.",
    "Customer feedback on the onboarding flow was positive.",
    "Budget constraints require prioritising two of the five proposals.",
    "A follow-up meeting will review the pricing tiers.",
    "Latency issues from last week have been resolved.",
    "The design review was scheduled for next Monday.",
)

# (region, offset of its working day from UTC in hours, share of accounts, offset its systems
# render timestamps in, share of accounts that render in it): most render UTC (`Z`).
_REGIONS = (
    ("us-east", -5, 0.40, timezone(timedelta(hours=-5)), 0.35),
    ("eu-west", 0, 0.22, UTC, 0.0),
    ("eu-central", 2, 0.15, timezone(timedelta(hours=2)), 1.0),
    ("us-west", -8, 0.12, UTC, 0.0),
    ("ap-southeast", 8, 0.08, UTC, 0.0),
    ("sa-east", -3, 0.03, UTC, 0.0),
)
_PLATFORMS = (("windows", 36), ("macos", 24), ("web", 18), ("ios", 10), ("android", 8), ("linux", 4))
_CLIENT_VERSIONS = (("6.3.0", 55), ("6.2.4", 30), ("6.1.2", 11), ("5.17.9", 4))
_MOBILE = frozenset({"ios", "android"})
_ABSENT = object()  # a telemetry key left out, as opposed to a null value
_OFFSET_SUFFIX = re.compile(r"(Z|[+-]\d{2}:\d{2})$")
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))  # reused: json.dumps builds one per call


@dataclass(frozen=True)
class SampleSummary:
    """What `write_sample` wrote: where, and how much (counts only, never ids)."""

    raw_dir: Path
    consent_db: Path
    days: list[date]
    meetings: int
    telemetry_events: int
    consent_events: int


@dataclass(frozen=True, slots=True)
class _Person:
    """Someone who can join a meeting; a guest has a null user_id and/or account_id."""

    user_id: str | None
    account_id: str | None
    display_name: str
    email: str | None
    platform: str
    client_version: str
    region: str
    device_id: str
    ip: str
    tz: timezone  # how this person's mobile client renders timestamps


@dataclass(frozen=True, slots=True)
class _Account:
    account_id: str
    region: str
    work_offset: int  # hours from UTC of its working day, for realistic meeting times
    tz: timezone  # how its systems render meeting timestamps
    users: tuple[_Person, ...]


@dataclass(frozen=True, slots=True)
class _Population:
    accounts: tuple[_Account, ...]
    users: tuple[_Person, ...]
    host_weights: tuple[float, ...]  # cumulative; bigger accounts host more meetings


@dataclass(slots=True)
class _Participant:
    participant_id: str
    person: _Person
    joined: datetime
    left: datetime
    session_id: str


@dataclass(slots=True)
class _Meeting:
    meeting_id: str
    account: _Account
    host: _Person
    topic: str
    start: datetime
    end: datetime
    participants: list[_Participant] = field(default_factory=list)


# --- public API ------------------------------------------------------------------------------


def write_sample(
    out_dir: Path,
    *,
    start: date = DEFAULT_SAMPLE_START,
    days: int = 3,
    meetings_per_day: int = 40,
    seed: int = 7,
    progress: Callable[[str], None] | None = None,
) -> SampleSummary:
    """Write `out_dir/raw` (landing zone) and `out_dir/consent.db`, replacing any previous sample.

    Meetings are written one by one and telemetry is streamed into gzip parts, so a day of 100k
    meetings never sits in memory. Consent is recorded at most about a day after the last sampled
    day (for the default start: before 2026-11-20), so a run pinned to any later `as_of` sees it all.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    if meetings_per_day < 0:
        raise ValueError("meetings_per_day must not be negative")
    out_dir = Path(out_dir)
    raw_dir = out_dir / "raw"
    consent_db = out_dir / "consent.db"
    _remove_previous(raw_dir, consent_db)
    report = progress or (lambda _message: None)

    # Separate streams per concern: the population never depends on the sizes, consent depends only
    # on which days are sampled, and a day's content does not depend on the days before it.
    population = _population(random.Random(f"{seed}/population"))
    day_list = [start + timedelta(days=i) for i in range(days)]
    meetings = events = 0
    for day in day_list:
        day_rng = random.Random(f"{seed}/day/{day.isoformat()}")
        written, lines = _write_day(raw_dir, day, meetings_per_day, population, day_rng, report)
        meetings += written
        events += lines

    url = f"sqlite:///{consent_db}"
    create_consent_table(url)
    consent_events = write_consent_events(url, _consent_rows(population, day_list, random.Random(f"{seed}/consent")))
    create_consent_indexes(url)  # the look-ups by subject and by recorded_at/effective_at the gate makes
    report(f"consent: {consent_events} events")
    return SampleSummary(raw_dir, consent_db, day_list, meetings, events, consent_events)


def create_consent_table(url: str) -> None:
    """Create `consent_events` (all TEXT, event_id primary key) unless it exists."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(CreateTable(_CONSENT_EVENTS, if_not_exists=True))
    finally:
        engine.dispose()


def write_consent_events(url: str, rows: Iterable[tuple[str, ...]]) -> int:
    """Insert rows (in CONSENT_EVENTS_COLUMNS order) in one transaction, batch by batch."""
    engine = sa.create_engine(url)
    count = 0
    try:
        with engine.begin() as conn:
            for batch in _batches(rows, _INSERT_BATCH):
                conn.execute(sa.insert(_CONSENT_EVENTS), batch)
                count += len(batch)
    finally:
        engine.dispose()
    return count


def _batches(rows: Iterable[tuple[str, ...]], size: int) -> Iterator[list[dict[str, str]]]:
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        for row in chunk:
            if len(row) != len(CONSENT_EVENTS_COLUMNS):
                raise ValueError(f"consent row has {len(row)} values, expected {len(CONSENT_EVENTS_COLUMNS)}")
        yield [dict(zip(CONSENT_EVENTS_COLUMNS, row, strict=True)) for row in chunk]


def _remove_previous(raw_dir: Path, consent_db: Path) -> None:
    # Only what a sample writes is removed: out_dir may hold other things (e.g. a gate's output).
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    for path in (consent_db, consent_db.with_name(consent_db.name + "-journal")):
        path.unlink(missing_ok=True)


# --- small helpers ---------------------------------------------------------------------------


def _hex(rng: random.Random, bits: int = 64) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _iso(moment: datetime, tz: timezone = UTC, *, millis: bool = False, zulu: bool = True) -> str:
    """ISO-8601 with an offset; UTC as `Z` unless `zulu` is off (some systems write `+00:00`)."""
    text = moment.astimezone(tz).isoformat(timespec="milliseconds" if millis else "seconds")
    if zulu and text.endswith("+00:00"):
        return text[:-6] + "Z"
    return text


def _weighted(rng: random.Random, options: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([name for name, _ in options], weights=[weight for _, weight in options])[0]


def _ascii_slug(text: str, sep: str = "") -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9-]+", sep, folded).strip(sep)


def _random_name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"


def _ip(rng: random.Random) -> str:
    # Documentation ranges (RFC 5737 / 3849): realistic shape, never a real address.
    if rng.random() < 0.1:
        return f"2001:db8::{rng.getrandbits(16):x}:{rng.getrandbits(16):x}"
    return f"{rng.choice(('192.0.2', '198.51.100', '203.0.113'))}.{rng.randint(1, 254)}"


def _between(rng: random.Random, low: datetime, high: datetime) -> datetime:
    span = max(0, int((high - low).total_seconds() * 1000))
    return low + timedelta(milliseconds=rng.randint(0, span))


# --- population ------------------------------------------------------------------------------


def _population(rng: random.Random, n_accounts: int = 30, n_users: int = 600) -> _Population:
    # Log-normal sizes: a few large customers and a long tail of small ones (small groups for k).
    sizes = [rng.lognormvariate(0, 0.8) for _ in range(n_accounts)]
    total = sum(sizes)
    sizes = [max(3, round(n_users * size / total)) for size in sizes]
    emails: set[str] = set()
    accounts: list[_Account] = []
    for company, size in zip(_COMPANIES, sizes, strict=False):
        region, work_offset, _, tz, tz_share = rng.choices(_REGIONS, weights=[r[2] for r in _REGIONS])[0]
        account = _Account(
            account_id=f"acct_{_hex(rng, 48)}",
            region=region,
            work_offset=work_offset,
            tz=tz if rng.random() < tz_share else UTC,
            users=(),
        )
        domain = f"{_ascii_slug(company, '-')}.example.com"
        users = tuple(_user(rng, account, domain, emails) for _ in range(size))
        accounts.append(_Account(account.account_id, region, work_offset, account.tz, users))
    all_users = tuple(user for account in accounts for user in account.users)
    cumulative = tuple(itertools.accumulate(float(len(a.users)) for a in accounts))
    return _Population(tuple(accounts), all_users, cumulative)


def _user(rng: random.Random, account: _Account, domain: str, emails: set[str]) -> _Person:
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    local = f"{_ascii_slug(first)}.{_ascii_slug(last)}"
    email = f"{local}@{domain}"
    suffix = 2
    while email in emails:  # homonyms are realistic; shared mailboxes are not
        email = f"{local}{suffix}@{domain}"
        suffix += 1
    emails.add(email)
    # Mostly the account's region; some travel or work remotely.
    region = account.region if rng.random() < 0.9 else rng.choice(_REGIONS)[0]
    return _Person(
        user_id=f"u_{_hex(rng, 48)}",
        account_id=account.account_id,
        display_name=f"{first} {last}",
        email=email,
        platform=_weighted(rng, _PLATFORMS),
        client_version=_weighted(rng, _CLIENT_VERSIONS),
        region=region,
        device_id=f"dev_{_hex(rng)}",
        ip=_ip(rng),
        tz=account.tz,
    )


def _guest(rng: random.Random, host_account: _Account) -> _Person:
    kind = rng.random()
    if kind < 0.6:  # joined by link, no sign-in
        user_id, account_id = None, None
    elif kind < 0.85:  # invited under the host's account but never created a user
        user_id, account_id = None, host_account.account_id
    else:  # a free user with no account
        user_id, account_id = f"u_{_hex(rng, 48)}", None
    name = _random_name(rng) if rng.random() < 0.8 else f"Guest {rng.randint(100, 9999)}"
    email = f"{_ascii_slug(name, '.')}@mail.example" if rng.random() < 0.5 else None
    return _Person(
        user_id=user_id,
        account_id=account_id,
        display_name=name,
        email=email,
        platform="web" if rng.random() < 0.7 else _weighted(rng, _PLATFORMS),
        client_version=_weighted(rng, _CLIENT_VERSIONS),
        region=host_account.region,
        device_id=f"dev_{_hex(rng)}",
        ip=_ip(rng),
        tz=UTC,
    )


# --- one day ---------------------------------------------------------------------------------


def _write_day(
    raw_dir: Path,
    day: date,
    n_meetings: int,
    population: _Population,
    rng: random.Random,
    report: Callable[[str], None],
) -> tuple[int, int]:
    meetings_dir = raw_dir / "meetings" / f"dt={day.isoformat()}"
    telemetry_dir = raw_dir / "telemetry" / f"dt={day.isoformat()}"
    meetings_dir.mkdir(parents=True)
    telemetry_dir.mkdir(parents=True)
    lines_written = 0
    with ExitStack() as stack:
        parts = [_open_part(stack, telemetry_dir / f"part-{i:04d}.jsonl.gz") for i in range(_TELEMETRY_PARTS)]
        specials: dict[int, str] = {}
        for index in range(n_meetings):
            if index % _BLOCK == 0:
                offsets = rng.sample(range(_BLOCK), len(_SPECIAL_KINDS))
                specials = dict(zip(offsets, _SPECIAL_KINDS, strict=True))
            special = specials.get(index % _BLOCK)
            lines = _write_meeting(meetings_dir, day, population, rng, special)
            parts[index % _TELEMETRY_PARTS].write(("\n".join(lines) + "\n").encode())
            lines_written += len(lines)
            if (index + 1) % 1000 == 0:
                report(f"{day.isoformat()}: {index + 1}/{n_meetings} meetings")
    report(f"{day.isoformat()}: {n_meetings} meetings, {lines_written} telemetry events")
    return n_meetings, lines_written


def _open_part(stack: ExitStack, path: Path) -> BinaryIO:
    raw = stack.enter_context(path.open("wb"))
    # mtime=0 and no file name in the header: the bytes must not depend on when or where.
    return stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6))


def _write_meeting(
    meetings_dir: Path, day: date, population: _Population, rng: random.Random, special: str | None
) -> list[str]:
    """Write one meeting folder; return its telemetry lines (already serialised)."""
    meeting = _meeting(rng, population, day, special)
    folder = meetings_dir / meeting.meeting_id
    folder.mkdir()

    needs_chat = special is not None and special.startswith("chat_")
    needs_transcript = special in ("meeting_missing", "summary_truncated", "ambiguous_name")
    has_transcript = needs_transcript or rng.random() < 0.8
    has_chat = needs_chat or rng.random() < 0.6
    has_summary = special == "summary_truncated" or (has_transcript and rng.random() < 0.7)
    has_recordings = rng.random() < 0.35

    meeting_json = json.dumps(_meeting_record(meeting), indent=2, ensure_ascii=False)
    if special == "meeting_truncated":
        meeting_json = meeting_json[: len(meeting_json) // 2]
    if special != "meeting_missing":
        _write_text(folder / "meeting.json", meeting_json)

    if has_transcript:
        ambiguous = special == "ambiguous_name"
        _write_text(folder / "transcript.vtt", _transcript(rng, meeting, force_ambiguous=ambiguous))
    chat: list[dict[str, Any]] = []
    if has_chat:
        chat = _chat(rng, meeting, rng.randint(4, 14) if needs_chat else rng.randint(1, 14))
        _write_text(folder / "chat.jsonl", _chat_text(rng, chat, special))
    if has_summary:
        summary = json.dumps(_summary(rng, meeting), indent=2, ensure_ascii=False)
        if special == "summary_truncated":
            summary = summary[: len(summary) // 2]
        _write_text(folder / "summary.json", summary)
    recordings: list[dict[str, Any]] = []
    if has_recordings:
        recordings = _recordings(rng, meeting)
        _write_text(folder / "recordings.json", json.dumps(recordings, indent=2))
    return _telemetry_lines(rng, population, meeting, chat, recordings, special)


def _write_text(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8"))  # no newline translation, whatever the platform


def _meeting(rng: random.Random, population: _Population, day: date, special: str | None) -> _Meeting:
    account = rng.choices(population.accounts, cum_weights=population.host_weights)[0]
    offset_accounts = [a for a in population.accounts if a.tz is not UTC]
    if special == "local_date_differs" and offset_accounts:
        account = rng.choice(offset_accounts)
    host = rng.choice(account.users)
    midnight = datetime.combine(day, time(), UTC)
    if special == "local_date_differs" and account.tz is not UTC:
        start = midnight + timedelta(seconds=_crossing_second(rng, account.tz))
        duration = timedelta(minutes=rng.choice((15, 30, 45)))
    elif special == "late_night":  # runs past midnight: its telemetry lands on the next day
        start = midnight + timedelta(hours=23, minutes=rng.randint(10, 40), seconds=rng.randint(0, 59))
        duration = timedelta(minutes=rng.randint(45, 90))
    else:
        start = midnight + timedelta(seconds=_start_second(rng, account))
        duration = timedelta(minutes=rng.choice((15, 25, 30, 30, 45, 50, 60, 60, 90)), seconds=rng.randint(-90, 240))
    meeting = _Meeting(
        meeting_id=f"m_{_hex(rng)}",
        account=account,
        host=host,
        topic=rng.choice(_TOPICS),
        start=start,
        end=start + duration,
    )
    _add_participants(rng, population, meeting, ambiguous=special == "ambiguous_name")
    return meeting


def _crossing_second(rng: random.Random, tz: timezone) -> int:
    """A second of the UTC day whose local date in `tz` is another day: the trap for dt by local date."""
    offset = int(tz.utcoffset(None).total_seconds())
    if offset < 0:  # early UTC morning is still yesterday evening locally
        return rng.randint(0, -offset - 1)
    return rng.randint(86400 - offset, 86399)  # late UTC evening is already tomorrow locally


def _start_second(rng: random.Random, account: _Account) -> int:
    # Most meetings fall in the account's working hours; the modulo keeps the UTC date on the day.
    if rng.random() < 0.85:
        local_hour = rng.uniform(8, 18)
    else:
        local_hour = rng.uniform(0, 24)
    utc_hour = (local_hour - account.work_offset) % 24
    return min(int(utc_hour * 3600), 86399)


def _add_participants(rng: random.Random, population: _Population, meeting: _Meeting, *, ambiguous: bool) -> None:
    n = rng.choices(range(2, 9), weights=(20, 22, 18, 14, 10, 8, 8))[0]
    if ambiguous:
        n = min(n, 7)  # room for the look-alike below, keeping at most 8
    seen = {meeting.host.user_id}
    people = [meeting.host]
    while len(people) < n:
        roll = rng.random()
        if roll < _GUEST_RATE:
            people.append(_guest(rng, meeting.account))
            continue
        # Mostly colleagues; redraw from everyone when the pick is already in (tiny accounts).
        pool = meeting.account.users if roll < 0.8 else population.users
        candidate = rng.choice(pool)
        while candidate.user_id in seen:
            candidate = rng.choice(population.users)
        seen.add(candidate.user_id)
        people.append(candidate)
    if ambiguous:
        people.append(_look_alike(rng, population, rng.choice(people[1:]), seen))
    meeting.participants = [_participant(rng, meeting, person, is_host=i == 0) for i, person in enumerate(people)]


def _look_alike(rng: random.Random, population: _Population, original: _Person, seen: set[str | None]) -> _Person:
    """A second participant with the same display name: the same user on a phone, or a homonym."""
    if original.user_id is not None and rng.random() < 0.5:
        return _Person(
            original.user_id, original.account_id, original.display_name, original.email,
            rng.choice(("ios", "android")), original.client_version, original.region,
            f"dev_{_hex(rng)}", _ip(rng), original.tz,
        )  # fmt: skip
    other = rng.choice(population.users)
    while other.user_id in seen:
        other = rng.choice(population.users)
    return _Person(
        other.user_id, other.account_id, original.display_name, other.email, other.platform,
        other.client_version, other.region, other.device_id, other.ip, other.tz,
    )  # fmt: skip


def _participant(rng: random.Random, meeting: _Meeting, person: _Person, *, is_host: bool) -> _Participant:
    length = meeting.end - meeting.start
    if is_host:
        joined = meeting.start + timedelta(seconds=rng.randint(0, 30))
    elif rng.random() < 0.7:
        joined = meeting.start + timedelta(seconds=rng.randint(0, 120))
    else:  # joined late
        joined = _between(rng, meeting.start, meeting.start + length / 3)
    if is_host or rng.random() < 0.8:
        left = meeting.end - timedelta(seconds=rng.randint(0, 60))
    else:  # left early
        left = _between(rng, joined + (meeting.end - joined) / 4, meeting.end)
    left = max(left, joined + timedelta(seconds=30))
    return _Participant(f"p_{_hex(rng)}", person, joined, left, f"sess_{_hex(rng)}")


# --- meeting artifacts -----------------------------------------------------------------------


def _meeting_record(meeting: _Meeting) -> dict[str, Any]:
    tz = meeting.account.tz
    return {
        "meeting_id": meeting.meeting_id,
        "account_id": meeting.account.account_id,
        "host_user_id": meeting.host.user_id,
        "topic": meeting.topic,
        "started_at": _iso(meeting.start, tz),
        "ended_at": _iso(meeting.end, tz),
        "participants": [_participant_record(p, tz) for p in meeting.participants],
    }


def _participant_record(participant: _Participant, tz: timezone) -> dict[str, Any]:
    person = participant.person
    record: dict[str, Any] = {
        "participant_id": participant.participant_id,
        "user_id": person.user_id,
        "account_id": person.account_id,
        "display_name": person.display_name,
        "joined_at": _iso(participant.joined, tz),
        "left_at": _iso(participant.left, tz),
    }
    if person.email is not None:  # bait: an extra key the gate must never read or publish
        record["email"] = person.email
    return record


def _transcript(rng: random.Random, meeting: _Meeting, *, force_ambiguous: bool) -> str:
    duration_ms = int((meeting.end - meeting.start).total_seconds() * 1000)
    count = max(3, min(150, int(duration_ms / 60000 * rng.uniform(0.4, 0.9))))
    step = duration_ms // (count + 1)
    names = [p.person.display_name for p in meeting.participants]
    weights = [3] + [1] * (len(names) - 1)  # the host talks most
    ambiguous = [name for name in names if names.count(name) > 1]
    numbered = rng.random() < 0.5  # some platforms export cue identifiers, some do not
    # The export's platform comes from its own generator, so the main stream (and every other file of
    # the sample) is the same whichever platform a meeting got.
    style_rng = random.Random(f"transcript-style/{meeting.meeting_id}")
    style = _weighted(style_rng, _TRANSCRIPT_STYLES)
    if force_ambiguous and style == "captions":
        style = "zoom"  # the ambiguous meeting must name its speaker
    blocks = ["WEBVTT"]
    for i in range(1, count + 1):
        start = i * step + rng.randint(0, step // 4)
        end = start + min(step * 3 // 4, rng.randint(1500, 9000))
        name = ambiguous[0] if force_ambiguous and i == 1 and ambiguous else None
        speaker, words = _cue_text(rng, names, weights, name)
        crosstalk = None
        if style != "captions" and speaker is not None and style_rng.random() < 0.01:
            # Two people in one cue (crosstalk the platform did not split): nobody's words alone.
            crosstalk = (style_rng.choice([n for n in names if n != speaker] or names), style_rng.choice(_SENTENCES))
        timing = f"{_vtt_time(start)} --> {_vtt_time(end)}"
        if style == "teams":  # Microsoft Teams: a GUID-like identifier and a voice span per cue
            identifier = f"{style_rng.getrandbits(32):08x}-{i}/{i}-0"
            text = _voice(speaker, words) + (f"\n{_voice(*crosstalk)}" if crosstalk else "")
            blocks.append(f"{identifier}\n{timing}\n{text}")
            continue
        text = words if style == "captions" or speaker is None else f"{speaker}: {words}"  # Zoom: `Name: words`
        text += f"\n{crosstalk[0]}: {crosstalk[1]}" if crosstalk else ""
        blocks.append(f"{i}\n{timing}\n{text}" if numbered else f"{timing}\n{text}")
    return "\n\n".join(blocks) + "\n"


def _voice(speaker: str | None, words: str) -> str:
    """A Teams cue: `<v Name>words</v>`, with `&`, `<` and `>` written as character references."""
    escape = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;"}
    if speaker is None:
        return words.translate(escape)
    return f"<v {speaker.translate(escape)}>{words.translate(escape)}</v>"


def _cue_text(rng: random.Random, names: list[str], weights: list[int], speaker: str | None) -> tuple[str | None, str]:
    """(speaker, words) of one cue; speaker None when the platform could not attribute the line."""
    words = rng.choice(_SENTENCES)
    if rng.random() < 0.15:  # a multi-line cue
        words += "\n" + rng.choice(_SENTENCES)
    if speaker is None:
        roll = rng.random()
        if roll < 0.03:  # the platform could not attribute the line
            return None, (rng.choice(_NOISE_CUES) if rng.random() < 0.6 else words)
        if roll < 0.05:  # a name that matches no participant
            speaker = rng.choice(_UNKNOWN_SPEAKERS)
        else:
            speaker = rng.choices(names, weights=weights)[0]
    return speaker, words


def _vtt_time(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _chat(rng: random.Random, meeting: _Meeting, count: int) -> list[dict[str, Any]]:
    participants = meeting.participants
    messages: list[tuple[datetime, dict[str, Any]]] = []
    for _ in range(count):
        sender = rng.choice(participants)
        sent = _between(rng, sender.joined, sender.left)
        recipient = "everyone"
        if rng.random() < 0.1:  # a private message to another participant
            others = [p for p in participants if p is not sender]
            recipient = rng.choice(others).participant_id
        messages.append(
            (
                sent,
                {
                    "message_id": f"msg_{_hex(rng)}",
                    "sender_participant_id": sender.participant_id,
                    "sent_at": _iso(sent, millis=True),
                    "recipient": recipient,
                    "text": rng.choice(_CHAT_TEXTS),
                },
            )
        )
    messages.sort(key=lambda item: item[0])
    return [message for _, message in messages]


def _chat_text(rng: random.Random, chat: list[dict[str, Any]], special: str | None) -> str:
    """Serialise chat lines, breaking one of them the way `special` says."""
    target = rng.randrange(len(chat))
    lines: list[str] = []
    for i, message in enumerate(chat):
        record = dict(message)
        if i == target and special == "chat_no_offset":
            record["sent_at"] = _OFFSET_SUFFIX.sub("", record["sent_at"])
        if i == target and special == "chat_unknown_sender":  # e.g. someone from a breakout room
            record["sender_participant_id"] = f"p_{_hex(rng)}"
        line = json.dumps(record, ensure_ascii=False)
        if i == target and special == "chat_not_json":
            line = line[: len(line) // 2]
        lines.append(line)
        if i == target and special == "chat_duplicate_id":  # an at-least-once delivery repeat
            lines.append(line)
    return "\n".join(lines) + "\n"


def _summary(rng: random.Random, meeting: _Meeting) -> dict[str, Any]:
    generated = meeting.end + timedelta(seconds=rng.randint(30, 600))
    return {
        "summary_id": f"sum_{_hex(rng)}",
        "generated_at": _iso(generated),
        "text": " ".join(rng.sample(_SUMMARY_SENTENCES, rng.randint(2, 4))),
        "model": rng.choice(("summarizer-2026-06", "summarizer-2026-09")),
    }


def _recordings(rng: random.Random, meeting: _Meeting) -> list[dict[str, Any]]:
    # URIs carry no account or meeting id: media_uri is published, raw ids must not be.
    minutes = (meeting.end - meeting.start).total_seconds() / 60
    started = meeting.start + timedelta(seconds=rng.randint(5, 120))
    prefix = f"s3://media-bucket/recordings/{meeting.start:%Y/%m/%d}"
    kinds = ["audio"] + (["video"] if rng.random() < 0.7 else [])
    if rng.random() < 0.1:  # recording stopped and restarted: a second video segment
        kinds.append("video")
    recordings = []
    for kind in kinds:
        recording_id = f"rec_{_hex(rng)}"
        per_minute = 1_000_000 if kind == "audio" else 18_000_000
        recordings.append(
            {
                "recording_id": recording_id,
                "kind": kind,
                "uri": f"{prefix}/{recording_id}.{'m4a' if kind == 'audio' else 'mp4'}",
                "sha256": _hex(rng, 256),
                "bytes": int(per_minute * minutes * rng.uniform(0.8, 1.2)),
                "started_at": _iso(started),
            }
        )
    return recordings


# --- telemetry -------------------------------------------------------------------------------


def _telemetry_lines(
    rng: random.Random,
    population: _Population,
    meeting: _Meeting,
    chat: list[dict[str, Any]],
    recordings: list[dict[str, Any]],
    special: str | None,
) -> list[str]:
    events = _meeting_events(rng, meeting, chat, recordings)
    events.extend(_background_events(rng, population, meeting, special))
    events.sort(key=lambda item: item[0])
    lines = [_COMPACT_JSON.encode(event) for _, event in events]
    if special == "telemetry_not_json":
        target = rng.randrange(len(lines))
        lines[target] = lines[target][: len(lines[target]) // 3]
    elif special == "telemetry_no_offset":
        target = rng.randrange(len(lines))
        broken = dict(events[target][1])
        broken["ts"] = _OFFSET_SUFFIX.sub("", broken["ts"])
        lines[target] = _COMPACT_JSON.encode(broken)
    return lines


def _meeting_events(
    rng: random.Random, meeting: _Meeting, chat: list[dict[str, Any]], recordings: list[dict[str, Any]]
) -> list[tuple[datetime, dict[str, Any]]]:
    events: list[tuple[datetime, dict[str, Any]]] = []
    by_id = {p.participant_id: p for p in meeting.participants}

    def add(p: _Participant, ts: datetime, event_type: str, duration: object = _ABSENT) -> None:
        events.append((ts, _event(rng, p, ts, meeting.meeting_id, event_type, duration)))

    for p in meeting.participants:
        stay = p.left - p.joined
        add(p, p.joined, "meeting_join")
        add(p, p.joined + timedelta(milliseconds=rng.randint(300, 5000)), "audio_connect",
            None if rng.random() < 0.05 else rng.randint(80, 2500))  # fmt: skip
        if rng.random() < 0.8:
            add(p, p.joined + timedelta(seconds=rng.randint(2, 30)), "video_start")
        for k in range(1, int(stay.total_seconds() // 360) + 1):
            add(p, p.joined + timedelta(seconds=360 * k - rng.randint(0, 60)), "network_quality")
        for _ in range(rng.randint(0, 3)):
            add(p, _between(rng, p.joined, p.left), "reaction")
        if rng.random() < 0.15:
            add(p, _between(rng, p.joined, p.left), "screen_share", rng.randint(20_000, 900_000))
        add(p, p.left, "meeting_leave", None if rng.random() < 0.03 else int(stay.total_seconds() * 1000))
    for message in chat:
        sender = by_id.get(message["sender_participant_id"])
        if sender is not None:
            sent = datetime.fromisoformat(message["sent_at"])
            add(sender, sent, "chat_send")
    if recordings:
        add(meeting.participants[0], datetime.fromisoformat(recordings[0]["started_at"]), "recording_start")
    return events


def _background_events(
    rng: random.Random, population: _Population, meeting: _Meeting, special: str | None
) -> list[tuple[datetime, dict[str, Any]]]:
    """Events outside any meeting; `late_telemetry` adds some a mobile client buffered since yesterday."""
    midnight = datetime.combine(meeting.start.date(), time(), UTC)
    events = []
    for _ in range(2):
        person = rng.choice(population.users)
        ts = _between(rng, midnight, midnight + timedelta(hours=24) - timedelta(milliseconds=1))
        event_type = rng.choice(("app_open", "settings_change", "calendar_sync"))
        duration = rng.randint(200, 6000) if event_type == "app_open" else _ABSENT
        events.append((ts, _event(rng, _Participant("", person, ts, ts, ""), ts, None, event_type, duration)))
    if special == "late_telemetry":
        person = rng.choice(population.users)
        for _ in range(2):
            ts = _between(rng, midnight - timedelta(hours=2), midnight - timedelta(seconds=1))
            holder = _Participant("", person, ts, ts, "")
            events.append((ts, _event(rng, holder, ts, None, "app_open", rng.randint(200, 6000))))
    return events


def _event(
    rng: random.Random, p: _Participant, ts: datetime, meeting_id: str | None, event_type: str, duration: object
) -> dict[str, Any]:
    person = p.person
    # Mobile clients report local time with its offset; the others report UTC.
    tz = person.tz if person.platform in _MOBILE else UTC
    event: dict[str, Any] = {
        "event_id": f"ev_{_hex(rng)}",
        "ts": _iso(ts, tz, millis=True),
        "account_id": person.account_id,
        "user_id": person.user_id,
        "meeting_id": meeting_id,
        "event_type": event_type,
        "client_version": person.client_version,
        "platform": person.platform,
        "region": person.region,
    }
    quirk = rng.random()
    if quirk < 0.01:  # old clients do not send the platform at all
        del event["platform"]
    elif quirk < 0.02:
        event["platform"] = ""
    if duration is not _ABSENT:
        event["duration_ms"] = duration
    # Extra keys upstream sends and the gate must ignore (allow-list): identifiers among them.
    event["device_id"] = person.device_id
    if p.session_id:
        event["session_id"] = p.session_id
    if event_type == "meeting_join":
        event["ip"] = person.ip
        if person.email is not None:
            event["email"] = person.email
    elif event_type == "network_quality":
        event["packet_loss_pct"] = round(rng.uniform(0, 4), 2)
        event["jitter_ms"] = rng.randint(1, 80)
    return event


# --- consent ---------------------------------------------------------------------------------


class _ConsentLog:
    """Collects consent rows and renders their timestamps the varied ways real systems do."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.rows: list[tuple[datetime, tuple[str, ...]]] = []
        self.ids: set[str] = set()

    def add(
        self,
        subject_type: str,
        subject_id: str,
        decision: str,
        effective: datetime,
        *,
        content_type: str = "*",
        purpose: str = "ai_training",
        recorded: datetime | None = None,
        same_strings: bool = False,
        raw_effective: str | None = None,
        terms: str | None = None,
    ) -> None:
        rng = self.rng
        if recorded is None:  # recorded as it happens, give or take the consent system's latency
            recorded = effective + timedelta(milliseconds=rng.randint(0, 3000))
        if same_strings:
            effective_text = recorded_text = _iso(effective)
        else:
            effective_text = raw_effective or self._render(effective)
            recorded_text = self._render(recorded)
        event_id = f"ce_{_hex(rng)}"
        while event_id in self.ids:
            event_id = f"ce_{_hex(rng)}"
        self.ids.add(event_id)
        row = (
            event_id, subject_type, subject_id, purpose, content_type, decision,
            effective_text, recorded_text, terms or _terms_version(effective),
        )  # fmt: skip
        self.rows.append((recorded, row))

    def _render(self, moment: datetime) -> str:
        style = self.rng.random()
        if style < 0.7:
            return _iso(moment)
        if style < 0.85:
            return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        if style < 0.95:
            return _iso(moment, zulu=False)
        return _iso(moment, timezone(timedelta(hours=2)))

    def ordered(self) -> list[tuple[str, ...]]:
        # An append log: rows in the order the consent system recorded them.
        return [row for _, row in sorted(self.rows, key=lambda item: (item[0], item[1][0]))]


def _terms_version(moment: datetime) -> str:
    return f"{moment.year}-{'01' if moment.month < 6 else '06'}"


@dataclass(frozen=True, slots=True)
class _Window:
    """The sample's days, and the instants consent scenarios are pinned to."""

    start: datetime
    end: datetime
    mid_day: datetime  # midnight of the middle day

    def historical(self, rng: random.Random) -> datetime:
        """Some moment in the year before the window."""
        return self.start - timedelta(days=rng.uniform(3, 365), seconds=rng.randint(0, 86399))

    def inside(self, rng: random.Random) -> datetime:
        return _between(rng, self.start, self.end - timedelta(seconds=1)).replace(microsecond=0)


def _consent_rows(population: _Population, days: list[date], rng: random.Random) -> list[tuple[str, ...]]:
    window = _Window(
        start=datetime.combine(days[0], time(), UTC),
        end=datetime.combine(days[-1], time(), UTC) + timedelta(days=1),
        mid_day=datetime.combine(days[len(days) // 2], time(), UTC),
    )
    log = _ConsentLog(rng)
    roles = _account_roles(rng, population)
    for account in population.accounts:
        _account_consent(log, rng, window, account.account_id, roles[account.account_id])
    specials = _special_users(rng, population, roles)
    for user in population.users:
        assert user.user_id is not None
        special = specials.get(user.user_id)
        if special is not None:
            _special_user_consent(log, rng, window, user.user_id, special)
        else:
            never = roles[user.account_id or ""].startswith("never")
            _user_consent(log, rng, window, user.user_id, account_never_grants=never)
        if rng.random() < 0.15:  # other purposes live in the same table and must be ignored
            purpose = rng.choice(("marketing", "product_research"))
            log.add("user", user.user_id, rng.choice(("grant", "revoke")), window.historical(rng), purpose=purpose)
    return log.ordered()


_FIXED_ACCOUNT_ROLES = (
    "revoke_midday", "revoke_regrant", "never_silent", "never_marketing", "never_opted_out",
    "types:transcript,chat", "types:summary,recording", "types:transcript", "types:transcript,chat,summary",
    "all_but_recordings", "late_grant",
)  # fmt: skip


def _account_roles(rng: random.Random, population: _Population) -> dict[str, str]:
    ids = [account.account_id for account in population.accounts]
    rng.shuffle(ids)
    roles = list(_FIXED_ACCOUNT_ROLES) + ["all"] * max(0, len(ids) - len(_FIXED_ACCOUNT_ROLES))
    return dict(zip(ids, roles, strict=False))


def _account_consent(log: _ConsentLog, rng: random.Random, window: _Window, account_id: str, role: str) -> None:
    granted = window.historical(rng)
    if role == "never_silent":
        return
    if role == "never_marketing":
        log.add("account", account_id, "grant", granted, purpose="marketing")
    elif role == "never_opted_out":
        log.add("account", account_id, "revoke", granted)
    elif role.startswith("types:"):
        for content_type in role.removeprefix("types:").split(","):
            log.add("account", account_id, "grant", granted, content_type=content_type)
    elif role == "late_grant":  # granted on the first morning, reached the consent DB a day later
        effective = window.start + timedelta(hours=8, minutes=rng.randint(0, 59))
        log.add("account", account_id, "grant", effective, recorded=effective + timedelta(days=1, hours=2))
    else:
        log.add("account", account_id, "grant", granted)
        if role == "all" and rng.random() < 0.3:  # re-accepted newer terms
            log.add("account", account_id, "grant", granted + timedelta(days=rng.uniform(1, 2)), terms="2026-06")
        if role == "all_but_recordings":
            log.add("account", account_id, "revoke", granted + timedelta(days=1), content_type="recording")
        elif role == "revoke_midday":
            revoked = window.mid_day + timedelta(hours=12, minutes=rng.randint(0, 59))
            log.add("account", account_id, "revoke", revoked)
        elif role == "revoke_regrant":
            revoked = window.start + timedelta(hours=9, minutes=rng.randint(0, 59))
            log.add("account", account_id, "revoke", revoked)
            log.add("account", account_id, "grant", revoked + timedelta(hours=6), terms="2026-06")


_SPECIAL_USER_ROLES = (
    "tie_recorded_differs", "tie_same_instant", "late_revoke", "future_grant",
    "unreadable_no_offset", "unreadable_decision", "unreadable_content_type",
)  # fmt: skip


def _special_users(rng: random.Random, population: _Population, roles: dict[str, str]) -> dict[str, str]:
    # Users of fully granting accounts, so the scenario decides whether their content is eligible.
    candidates = [u.user_id for u in population.users if roles[u.account_id or ""] == "all" and u.user_id]
    chosen = rng.sample(candidates, len(_SPECIAL_USER_ROLES))
    return dict(zip(chosen, _SPECIAL_USER_ROLES, strict=True))


def _special_user_consent(log: _ConsentLog, rng: random.Random, window: _Window, user_id: str, role: str) -> None:
    log.add("user", user_id, "grant", window.historical(rng))
    if role == "tie_recorded_differs":  # same effective_at; the later-recorded grant wins
        tie = window.mid_day + timedelta(hours=10, minutes=30)
        log.add("user", user_id, "revoke", tie, recorded=tie + timedelta(seconds=1))
        log.add("user", user_id, "grant", tie, recorded=tie + timedelta(seconds=40))
    elif role == "tie_same_instant":  # identical instants: only "revoke after grant" decides
        tie = window.start + timedelta(hours=14)
        log.add("user", user_id, "grant", tie, recorded=tie, same_strings=True)
        log.add("user", user_id, "revoke", tie, recorded=tie, same_strings=True)
    elif role == "late_revoke":
        revoked = window.start + timedelta(hours=11)
        log.add("user", user_id, "revoke", revoked, recorded=revoked + timedelta(days=1, hours=2))
    elif role == "future_grant":  # a new grant, known in advance, not yet in force
        effective = window.end + timedelta(days=2, hours=9)
        log.add("user", user_id, "grant", effective, content_type="chat", recorded=window.start - timedelta(days=1))
    elif role == "unreadable_no_offset":
        moment = window.historical(rng).replace(microsecond=0)
        naive = moment.replace(tzinfo=None).isoformat()
        log.add("user", user_id, "grant", moment, content_type="transcript", raw_effective=naive)
    elif role == "unreadable_decision":
        log.add("user", user_id, "maybe", window.historical(rng))
    elif role == "unreadable_content_type":
        log.add("user", user_id, "grant", window.historical(rng), content_type="video")


def _user_consent(
    log: _ConsentLog, rng: random.Random, window: _Window, user_id: str, *, account_never_grants: bool
) -> None:
    granted = window.historical(rng)
    roll = rng.random()
    if account_never_grants:
        if roll < 0.3:  # willing users of an unwilling account: still not eligible
            log.add("user", user_id, "grant", granted)
        return
    if roll < 0.62:
        log.add("user", user_id, "grant", granted)
    elif roll < 0.74:
        for content_type in rng.sample(_CONTENT_TYPES, rng.randint(1, 3)):
            log.add("user", user_id, "grant", granted, content_type=content_type)
    elif roll < 0.86:
        return  # never asked, or never answered
    elif roll < 0.91:
        log.add("user", user_id, "grant", granted)
        revoked = window.inside(rng) if rng.random() < 0.5 else granted + timedelta(days=rng.uniform(1, 2))
        log.add("user", user_id, "revoke", revoked)
    elif roll < 0.94:
        log.add("user", user_id, "grant", granted)
        revoked = granted + timedelta(days=1)
        log.add("user", user_id, "revoke", revoked)
        regranted = window.inside(rng) if rng.random() < 0.5 else revoked + timedelta(hours=rng.uniform(1, 30))
        log.add("user", user_id, "grant", regranted)
    elif roll < 0.97:
        effective = window.end + timedelta(days=rng.randint(1, 5), hours=rng.randint(8, 17))
        log.add("user", user_id, "grant", effective, recorded=window.start - timedelta(days=rng.randint(1, 9)))
    else:
        effective = window.inside(rng)
        log.add("user", user_id, "grant", effective, recorded=effective + timedelta(days=1, hours=rng.randint(0, 6)))
