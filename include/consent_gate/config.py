"""Policy and run settings (`RunSettings`: where a run reads and writes, with which policy and key).

The policy is the set of knobs a privacy reviewer signs off (quarantine tolerance, k for
aggregates); its version and checksum go into every manifest so an auditor knows which rules ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # storage classes: imported when a run asks for them, not when a DAG file is parsed
    from consent_gate.publish import OutputStore
    from consent_gate.sources import LandingZone

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# The clock is read at the edges (the command line, the Airflow task bodies) and passed in: logic that
# needs "now" takes a `clock`, so tests pin instants and one run reads one timeline.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


DEFAULT_POLICY_FILE = PROJECT_ROOT / "policy.yaml"


# SPEC §4 (revised): the telemetry group key values that may be published; anything else is "other".
# The SPEC's minimum lists plus every value the sample writes.
DEFAULT_EVENT_TYPES = (
    "join", "leave", "quality_sample", "meeting_join", "meeting_leave", "audio_connect", "video_start",
    "network_quality", "reaction", "screen_share", "chat_send", "recording_start", "app_open",
    "settings_change", "calendar_sync",
)  # fmt: skip
DEFAULT_PLATFORMS = ("mac", "win", "linux", "web", "ios", "android", "macos", "windows")
DEFAULT_REGIONS = (
    "us", "eu", "ap", "ca", "sa", "me", "af", "au",
    "us-east", "us-west", "eu-west", "eu-central", "ap-southeast", "sa-east",
)  # fmt: skip
DEFAULT_CLIENT_VERSION_PATTERN = r"[0-9]{1,9}(\.[0-9]{1,9}){0,3}"  # dot-separated numbers, at most four parts


@dataclass(frozen=True)
class Policy:
    version: str = "builtin-3"
    max_quarantine_ratio: float = 0.01
    k_min_distinct_users: int = 10
    max_stage_age_hours: float = 24.0  # an unpublished stage older than this is abandoned: the sweep deletes it
    full_sweep_every_hours: float = 24.0  # the sweep reads the whole consent store at least this often
    # The consent ledger's life: the sweep DAG renews it before (consent_ledger.RENEW_AT); a run finding
    # none it can use reads the whole store itself.
    full_snapshot_every_hours: float = 168.0
    telemetry_event_types: tuple[str, ...] = field(default=DEFAULT_EVENT_TYPES)
    telemetry_platforms: tuple[str, ...] = field(default=DEFAULT_PLATFORMS)
    telemetry_regions: tuple[str, ...] = field(default=DEFAULT_REGIONS)
    telemetry_client_version_pattern: str = DEFAULT_CLIENT_VERSION_PATTERN

    def __post_init__(self) -> None:
        for name in ("telemetry_event_types", "telemetry_platforms", "telemetry_regions"):
            values = getattr(self, name)
            if isinstance(values, str) or not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"policy {name} must be a list of non-empty strings")
            object.__setattr__(self, name, tuple(sorted(set(values))))  # YAML lists; order is not policy
        try:
            re.compile(self.telemetry_client_version_pattern)
        except (re.error, TypeError):
            raise ValueError("policy telemetry_client_version_pattern must be a regular expression") from None
        if not 0 <= self.max_quarantine_ratio <= 1:
            raise ValueError("policy max_quarantine_ratio must lie in [0, 1]")
        if self.k_min_distinct_users < 1:
            raise ValueError("policy k_min_distinct_users must be at least 1")
        if not self.max_stage_age_hours > 0:
            raise ValueError("policy max_stage_age_hours must be positive")
        for name in ("full_sweep_every_hours", "full_snapshot_every_hours"):
            if not getattr(self, name) > 0:
                raise ValueError(f"policy {name} must be positive")

    @property
    def checksum(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """The policy in `path` (YAML), or the project's policy.yaml, or the built-in defaults."""
    file = Path(path) if path else DEFAULT_POLICY_FILE
    if path is None and not file.exists():
        return Policy()
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{file}: policy must be a mapping")
    unknown = set(data) - {f.name for f in fields(Policy)}
    if unknown:
        raise ValueError(f"{file}: unknown policy keys {sorted(unknown)}")
    return Policy(**data)


@dataclass(frozen=True)
class RunSettings:
    raw: str
    out: str
    consent_db: str
    policy: Policy
    secret: bytes = field(repr=False)
    storage_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 20_000
    # A rerun may replace a published day with fewer than half of its units only when the operator
    # says so (`--allow-shrink`, the DAG's `allow_shrink` param): a missing partition is not a day.
    allow_shrink: bool = False

    def zone(self) -> LandingZone:
        # Imported here, not at the top: `runs` (imported by the DAG files at parse time) reads this module.
        from consent_gate.sources import LandingZone

        return LandingZone(self.raw, self.storage_options)

    def store(self) -> OutputStore:
        from consent_gate.stores import storage_for

        return storage_for(self.out, self.storage_options)


def project_var() -> Path:
    """The embedded default's working folder: sample data, consent DB, outputs."""
    return PROJECT_ROOT / "var"
