"""The manifest's JSON Schema (docs/manifest.schema.json), and the check every reader that trusts a
manifest makes: `verify` and the auditors' view refuse a manifest that does not conform (fail closed),
naming the file and the field, never a value (a manifest holds no content, but an error is no place
to start echoing one).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from consent_gate.publish import OutputStore

# docs/manifest.schema.json, through the package's link to it: an installed wheel carries a copy.
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")


class ManifestInvalid(ValueError):
    """A manifest that does not conform to docs/manifest.schema.json: refused (fail closed)."""


@cache
def _validator() -> Any:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))


def manifest_problems(data: Any) -> list[str]:
    """Where `data` departs from the manifest schema: field paths and the rule broken, never a value."""
    problems = []
    for error in sorted(_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        while error.context:  # oneOf (a count or null): name the deepest field that failed, not the choice
            error = max(error.context, key=lambda e: len(e.absolute_path))
        where = "/".join(map(str, error.absolute_path)) or "(top level)"
        rule = error.validator
        if rule == "required" and isinstance(error.instance, dict):
            missing = [name for name in error.validator_value if name not in error.instance]
            problems.append(f"{where}: missing {', '.join(missing)}")
        elif rule == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}))
            problems.append(f"{where}: unexpected field(s) {', '.join(sorted(set(error.instance) - allowed))}")
        else:
            problems.append(f"{where}: breaks the schema's '{rule}' rule")
    return list(dict.fromkeys(problems))  # one line per problem: `required` reports each missing field


def check_manifest(data: Any, name: str) -> dict[str, Any]:
    """`data` if it conforms to the schema; else ManifestInvalid naming `name` and the first field."""
    problems = manifest_problems(data)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ManifestInvalid(f"{name} does not conform to docs/manifest.schema.json: {problems[0]}{more}; refused")
    return data


def read_checked(store: OutputStore, relative: str) -> dict[str, Any]:
    """The manifest at `relative`, refused (ManifestInvalid) unless it conforms to the schema."""
    return check_manifest(store.read_json(relative), relative)
