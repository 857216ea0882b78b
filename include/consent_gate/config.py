"""Policy and run settings.

The policy is the set of knobs a privacy reviewer signs off (quarantine tolerance, k for
aggregates); its version and checksum go into every manifest so an auditor knows which rules ran.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY_FILE = PROJECT_ROOT / "policy.yaml"


@dataclass(frozen=True)
class Policy:
    version: str = "builtin-1"
    max_quarantine_ratio: float = 0.01
    k_min_distinct_users: int = 10
    max_stage_age_hours: float = 24.0  # an unpublished stage older than this is abandoned: the sweep deletes it

    def __post_init__(self) -> None:
        if not 0 <= self.max_quarantine_ratio <= 1:
            raise ValueError("policy max_quarantine_ratio must lie in [0, 1]")
        if self.k_min_distinct_users < 1:
            raise ValueError("policy k_min_distinct_users must be at least 1")
        if not self.max_stage_age_hours > 0:
            raise ValueError("policy max_stage_age_hours must be positive")

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
