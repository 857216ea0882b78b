"""The auditors' pages: the evidence read through `OutputStore` (allow-listed files only, links never
followed) and rendered as HTML, for `auditor_app`'s routes. Counts, reasons, checks and checksums;
never content or raw ids."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

# the offline reports' building blocks, so both kinds of page look and escape alike
from consent_gate.audit import _checks_table, _page, _table, bar_chart, outcome_counts
from consent_gate.layout import AUDIT, attempt_record, attempts_folder, audit_day, day_of, file_name, manifest_path
from consent_gate.manifest_schema import check_manifest
from consent_gate.publish import OutputStore
from consent_gate.storage import NotARegularFile

if TYPE_CHECKING:  # the pipeline (pyarrow, GX) is imported when a page needs it, not when Airflow loads plugins
    pass


DAILY_DAG, SWEEP_DAG = "consent_gate_daily", "consent_revocation_sweep"
AUDITED_DAGS = (DAILY_DAG, SWEEP_DAG)
URL_PREFIX = "/consent-audit"
SECURITY_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # evidence pages are per user: no shared cache keeps them
}
_DAY = r"dt=\d{4}-\d{2}-\d{2}"
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.=-]*"  # one path segment: no '..', no '/', no '%', no leading dot
_EVIDENCE = rf"_audit/{_DAY}(?:/attempts/{_NAME})?"
# The files an auditor may open, relative to the output root. Parquet (ids) and stages (content) are not.
ALLOWED_FILES = re.compile(
    rf"""_audit/index\.html
    |_audit/sweeps/{_NAME}\.json
    |_audit/{_DAY}/attempts/{_NAME}\.json
    |{_EVIDENCE}/(?:manifest\.json|report\.html|validation/{_NAME}\.json)
    |{_EVIDENCE}/data_docs/(?:{_NAME}/)*{_NAME}\.(?:html|css|png|gif|svg|ico|otf|woff2?)""",
    re.X,
)
MAX_FILE_BYTES = 20 << 20
MAX_SWEEPS_LISTED = 200  # an hourly sweep writes 8760 records a year: the index shows the newest
MAX_ARTIFACT_ID = 300


# --- the evidence, read through OutputStore ---------------------------------------------------------


def allowed_path(relative: str) -> bool:
    """Whether `relative` (already URL-decoded) names an evidence file an auditor may open."""
    parts = relative.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return False
    return ALLOWED_FILES.fullmatch(relative) is not None


def read_evidence(store: OutputStore, relative: str) -> bytes | None:
    """An allowed evidence file's bytes; None when not allowed, missing, too large, not a regular file,
    or reached through a symlink (a link planted in a local output folder must not serve /etc)."""
    if not allowed_path(relative):
        return None
    try:
        with store.open_no_follow(relative) as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except (NotARegularFile, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        return None
    return data if len(data) <= MAX_FILE_BYTES else None


def _json(store: OutputStore, relative: str) -> Any:
    import json

    data = read_evidence(store, relative)
    return None if data is None else json.loads(data)


def _manifest(store: OutputStore, relative: str) -> dict[str, Any] | None:
    """A manifest the view shows or trusts: None when absent; ManifestInvalid (the page is refused)
    when it does not conform to docs/manifest.schema.json."""
    data = _json(store, relative)
    return None if data is None else check_manifest(data, relative)


def published_days(store: OutputStore) -> list[str]:
    """Days with a published manifest or any attempt, newest first."""
    days = [day_of(f) for f in store.folders(AUDIT) if re.fullmatch(_DAY, f)]
    return sorted(days, reverse=True)


def day_attempts(store: OutputStore, day: str) -> list[dict[str, Any]]:
    """Every attempt's manifest of a day (published versions and failed attempts), oldest first."""
    found = []
    for relative in store.files(attempts_folder(day), ".json"):
        manifest = _manifest(store, relative)
        if isinstance(manifest, dict):
            manifest["_name"] = file_name(relative).removesuffix(".json")
            found.append(manifest)
    return sorted(found, key=lambda m: str(m.get("started_at") or ""))


def sweep_records(store: OutputStore) -> Iterator[dict[str, Any]]:
    """The sweeps' records, newest first (read lazily; a sweep's generated name starts with its as_of)."""
    names = [f for f in store.files("_audit/sweeps", ".json") if not f.endswith("/watermark.json")]
    for relative in sorted(names, reverse=True):
        record = _json(store, relative)
        if isinstance(record, dict) and "sweep_id" in record:
            yield record


def run_evidence(store: OutputStore, dag_id: str, run_id: str) -> tuple[str, Any] | None:
    """What a DAG run left: ("day", day) for the daily run whose version is the day's current manifest,
    ("attempt", (day, name)) for one that failed or was superseded, ("sweep", record); None if nothing.
    Newest first, stopping at the first day that knows the run (a daily run processes one day)."""
    if dag_id == SWEEP_DAG:
        return next((("sweep", r) for r in sweep_records(store) if r.get("dag_run_id") == run_id), None)
    for day in published_days(store):
        manifest = _manifest(store, manifest_path(day))
        if isinstance(manifest, dict) and manifest.get("dag_run_id") == run_id:
            return ("day", day)
        attempts = [a for a in day_attempts(store, day) if a.get("dag_run_id") == run_id]
        if attempts:
            return ("attempt", (day, attempts[-1]["_name"]))
    return None


# --- pages -----------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _link(base: str, path: str, text: str) -> str:
    return f'<a href="{_e(base + path)}">{_e(text)}</a>'


def _file(relative: str) -> str:
    return "/files/" + quote(relative, safe="/=")


def _nav(base: str) -> str:
    return f"<p>{_link(base, '/', 'all days and sweeps')} · {_link(base, '/explain', 'explain an artifact')}</p>"


def _failed_first(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(checks, key=lambda c: bool(c.get("passed")))


def render_evidence(base: str, folder: str | None, manifest: dict[str, Any], title: str) -> str:
    """One day's (or one attempt's) evidence: failed checks first, the figures, links onwards to the
    reports in `folder` (None: none kept, as for a superseded version, whose reports the current ones replaced)."""
    day, status = manifest.get("partition", "?"), manifest.get("status", "?")
    checks = _failed_first(list(manifest.get("checks") or []))
    failed = [c for c in checks if not c.get("passed")]
    outcome = outcome_counts(manifest)
    body = [f'<h1>{_e(title)} <span class="status {_e(status)}">{_e(status)}</span></h1>', _nav(base)]
    if failed or manifest.get("failure"):
        body += [
            f'<h2 class="fail">Failed checks ({len(failed)})</h2>',
            f'<p class="fail">Nothing of this attempt was published: {_e(manifest.get("failure"))}</p>',
            _checks_table(failed),
        ]
    consent, policy = manifest.get("consent") or {}, manifest.get("policy") or {}
    body += [
        _table(
            ["field", "value"],
            [
                ("DAG run", manifest.get("dag_run_id")),
                ("attempt", manifest.get("attempt")),
                ("consent as_of", manifest.get("as_of")),
                ("consent snapshot checksum", consent.get("checksum")),
                ("policy", f"{policy.get('version')} ({policy.get('checksum')})"),
                ("code version", manifest.get("code_version")),
                ("started", manifest.get("started_at")),
                ("ended", manifest.get("ended_at")),
            ],
        ),
        "<h2>Content units by outcome</h2>",
        _table(["outcome", "units"], list(outcome.items()), numeric=[1]),
        bar_chart(outcome, title=f"content units by outcome, {day}"),
        "<h2>Evidence</h2><ul>",
        *(
            [
                f"<li>{_link(base, _file(f'{folder}/report.html'), 'the full report')} (quarantine, telemetry)</li>",
                f"<li>{_link(base, _file(f'{folder}/data_docs/index.html'), 'Great Expectations Data Docs')}</li>",
                f"<li>{_link(base, _file(f'{folder}/validation/summary.json'), 'suite results (JSON)')}, "
                f"{_link(base, _file(f'{folder}/validation/independent_verification.json'), 're-verification')}</li>",
            ]
            if folder
            else [f"<li>No reports kept for this attempt: {_link(base, f'/day/{day}', 'the day')}</li>"]
        ),
        f"<li>{_link(base, f'/explain?day={_e(day)}', 'explain an artifact of this day')}</li></ul>",
        "<h2>All checks</h2>",
        _checks_table(checks),
    ]
    for sweep in manifest.get("sweeps") or []:
        body.append(f"<p>Swept by {_e(sweep.get('sweep_id'))}: {_e(sweep.get('rows_removed'))} rows removed</p>")
    return _page(title, "".join(body))


def render_day_page(store: OutputStore, base: str, day: str) -> str | None:
    manifest = _manifest(store, manifest_path(day))
    attempts = day_attempts(store, day)
    if not isinstance(manifest, dict):
        failed = [a for a in attempts if a.get("status") == "failed"]
        if not failed:
            return None
        latest = failed[-1]  # a day that never published: its last failed attempt is its state
        page = render_evidence(
            base, f"{attempts_folder(day)}/{latest['_name']}", latest, f"consent-gate {day}: not published"
        )
    else:
        page = render_evidence(base, audit_day(day), manifest, f"consent-gate {day}")
    rows = [
        (
            _link(base, f"/day/{day}/attempt/{quote(a['_name'])}", a["_name"]),
            _e(a.get("status")),
            _e(a.get("dag_run_id")),
            _e(a.get("started_at")),
            _e(a.get("failure") or ""),
        )  # fmt: skip
        for a in attempts
    ]
    table = _raw_table(["attempt", "status", "DAG run", "started", "failure"], rows)
    return page.replace("</body>", f"<h2>Attempts of {_e(day)}</h2>{table}</body>")


def render_attempt_page(store: OutputStore, base: str, day: str, name: str) -> str | None:
    """A failed attempt, with its reports; or an earlier published version, superseded by a rerun or a sweep."""
    manifest = _manifest(store, attempt_record(day, name))
    if not isinstance(manifest, dict):
        return None
    folder = f"{attempts_folder(day)}/{name}"  # a failed attempt's reports, when it got as far as writing them
    if manifest.get("status") != "failed" or not store.exists(f"{folder}/report.html"):
        folder = None
    return render_evidence(base, folder, manifest, f"consent-gate {day}: attempt {name}")


def _raw_table(header: list[str], rows: list[tuple[str, ...]]) -> str:
    """A table of cells that are already HTML (escaped by the caller)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    lines = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>"


def _latency(seconds: Any) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"


def render_sweep(base: str, record: dict[str, Any]) -> str:
    purges = record.get("purges") or []
    body = [
        f"<h1>consent-gate sweep {_e(record.get('sweep_id'))}</h1>",
        _nav(base),
        _table(
            ["field", "value"],
            [
                ("DAG run", record.get("dag_run_id")),
                ("mode", record.get("mode")),
                ("why", record.get("why")),
                ("consent as_of", record.get("as_of")),
                ("consent read", (record.get("consent") or {}).get("scope")),
                ("consent rows read", (record.get("consent") or {}).get("rows_read")),
                ("subjects judged", (record.get("consent") or {}).get("subjects_judged") or "all"),
                ("consent checksum", (record.get("consent") or {}).get("checksum")),
                ("revocations of the subjects judged", record.get("revocations_in_force_since_watermark")),
                ("days scanned", record.get("days_scanned")),
                ("days rewritten", record.get("days_rewritten")),
                ("rows purged", record.get("rows_removed")),
                ("abandoned stages deleted", record.get("abandoned_stages_deleted")),
                ("started", record.get("started_at")),
                ("ended", record.get("ended_at")),
            ],  # fmt: skip
        ),
        "<h2>Days rewritten</h2>",
        _raw_table(
            ["day", "rows purged", "by reason", "max revocation-to-purge latency", "purged at"],
            [
                (
                    _link(base, f"/day/{p.get('partition')}", str(p.get("partition"))),
                    _e(p.get("rows_removed")),
                    _e(", ".join(f"{k} {v}" for k, v in (p.get("removed_by_reason") or {}).items())),
                    _e(_latency(p.get("max_latency_seconds"))),
                    _e(p.get("purged_at")),
                )
                for p in purges
            ],
        ),
    ]
    return _page(f"consent-gate sweep {record.get('sweep_id')}", "".join(body))


def render_index_page(store: OutputStore, base: str) -> str:
    """Every day (status, figures, checks) and, beside them, every sweep (rows purged, latency)."""
    day_rows = []
    for day in published_days(store):
        manifest = _manifest(store, manifest_path(day))
        attempts = day_attempts(store, day)
        failed = sum(1 for a in attempts if a.get("status") == "failed")
        shown = manifest if isinstance(manifest, dict) else (attempts[-1] if attempts else {})
        outcome = outcome_counts(shown)
        checks = shown.get("checks") or []
        day_rows.append(
            (
                _link(base, f"/day/{day}", day),
                _e(manifest.get("status") if isinstance(manifest, dict) else "not published"),
                _e(outcome["published"]),
                _e(sum(v for k, v in outcome.items() if k not in ("published", "quarantined"))),
                _e(outcome["quarantined"]),
                _e(f"{sum(1 for c in checks if c.get('passed'))}/{len(checks)}"),
                _e(failed),
                _e(shown.get("dag_run_id")),
            )
        )
    sweep_rows = [
        (
            _link(base, f"/sweep/{quote(str(r['sweep_id']))}", str(r["sweep_id"])),
            _e(r.get("mode")),
            _e(r.get("as_of")),
            _e(r.get("rows_removed")),
            _e(", ".join(str(p.get("partition")) for p in r.get("purges") or []) or "-"),
            _e(_latency(max((p.get("max_latency_seconds") or 0 for p in r.get("purges") or []), default=None))),
            _e(r.get("dag_run_id")),
        )
        for r in islice(sweep_records(store), MAX_SWEEPS_LISTED)
    ]
    body = (
        "<h1>consent-gate audit</h1>"
        + _nav(base)
        + "<h2>Daily runs</h2>"
        + _raw_table(
            ["day", "status", "published", "excluded", "quarantined", "checks passed", "failed attempts", "DAG run"],
            day_rows,
        )
        + f"<h2>Revocation sweeps (the newest {MAX_SWEEPS_LISTED} at most)</h2>"
        + _raw_table(
            [
                "sweep",
                "mode",
                "consent as_of",
                "rows purged",
                "days rewritten",
                "max revocation-to-purge latency",
                "DAG run",
            ],
            sweep_rows,
        )  # fmt: skip
        + f"<p>{_link(base, _file('_audit/index.html'), 'the offline index (chart over days)')}</p>"
    )
    return _page("consent-gate audit", body)


def render_explain(base: str, days: list[str], day: str | None, artifact_id: str, answer: str | None) -> str:
    options = "".join(f"<option{' selected' if d == day else ''}>{_e(d)}</option>" for d in days)
    form = (
        f'<form method="get" action="{_e(base)}/explain"><label>day <select name="day">{options}</select></label> '
        f'<label>artifact_id <input name="artifact_id" size="48" value="{_e(artifact_id)}"></label> '
        '<button type="submit">explain</button></form>'
    )
    result = f'<h2>Answer</h2><pre class="explain">{_e(answer)}</pre>' if answer is not None else ""
    intro = (
        "<p>Why was an artifact kept, excluded, withdrawn or quarantined? The same answer as "
        "<code>consent-gate explain</code>; each required subject appears as its keyed hash.</p>"
    )
    return _page("consent-gate explain", f"<h1>Explain an artifact</h1>{_nav(base)}{intro}{form}{result}")
