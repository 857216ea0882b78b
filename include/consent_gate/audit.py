"""Static HTML audit reports an auditor reads offline: one per day (and per failed attempt), and an index.

Inline CSS and inline SVG only: no script, no stylesheet, font or image from anywhere. Everything shown
comes from the run's evidence (manifest, quarantine list, validation summary): counts, reasons, file
and field names, checksums; never meeting content or raw ids.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from consent_gate.layout import AUDIT, attempts_folder, day_folders_glob, day_name, day_of, manifest_path
from consent_gate.publish import OutputStore

REASON_COLOURS = {
    "published": "#2e7d32",
    "private_message": "#8e24aa",
    "unidentified_speaker": "#f9a825",
    "guest_participant": "#6d4c41",
    "account_not_consented": "#c62828",
    "user_not_consented": "#ef6c00",
    "quarantined": "#546e7a",
}
_OTHER_COLOUR = "#9e9e9e"
MAX_QUARANTINE_LISTED = 200

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem;color:#1d1d1d;max-width:70rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.pass{color:#2e7d32;font-weight:600}
.fail{color:#c62828;font-weight:600}.status{display:inline-block;padding:.2rem .6rem;border-radius:4px;color:#fff}
.published{background:#2e7d32}.failed{background:#c62828}code{font-size:.9em}
.legend span{display:inline-block;margin-right:1rem}.swatch{display:inline-block;width:.8rem;height:.8rem;
margin-right:.3rem;vertical-align:middle}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    lines = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>" for i, v in enumerate(row)
        )
        lines.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def outcome_counts(manifest: dict[str, Any]) -> dict[str, int]:
    """Content units by outcome: published, each exclusion reason, quarantined."""
    counts = manifest.get("counts") or {}
    content = counts.get("content") or {}
    outcome = {"published": int(content.get("published", 0))}
    outcome.update({reason: int(n) for reason, n in (content.get("excluded") or {}).items()})
    outcome["quarantined"] = int(content.get("quarantined", 0))
    return outcome


def bar_chart(values: dict[str, int], *, width: int = 640, title: str = "") -> str:
    """Horizontal bars, one per outcome, as inline SVG."""
    bar, gap, label_width = 22, 8, 190
    biggest = max([*values.values(), 1])
    height = len(values) * (bar + gap) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'aria-label="{_e(title)}"><title>{_e(title)}</title>'
    ]
    for i, (name, value) in enumerate(values.items()):
        y = 5 + i * (bar + gap)
        length = int((width - label_width - 70) * value / biggest)
        colour = REASON_COLOURS.get(name, _OTHER_COLOUR)
        parts.append(
            f'<text x="0" y="{y + 16}" font-size="13">{_e(name)}</text>'
            f'<rect class="bar" data-name="{_e(name)}" x="{label_width}" y="{y}" width="{max(length, 1)}" '
            f'height="{bar}" fill="{colour}"/>'
            f'<text x="{label_width + max(length, 1) + 6}" y="{y + 16}" font-size="13">{value}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def stacked_days_chart(days: Sequence[tuple[str, dict[str, int]]], *, height: int = 260) -> str:
    """One stacked column per day: kept vs excluded by reason (and quarantined), as inline SVG."""
    names = list(REASON_COLOURS)
    for _, values in days:
        names += [n for n in values if n not in names]
    column, gap, left, bottom = 48, 24, 50, 40
    width = left + max(len(days), 1) * (column + gap) + 20
    tallest = max([sum(v.values()) for _, v in days] + [1])
    plot = height - bottom - 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        'aria-label="kept vs excluded by reason over days"><title>kept vs excluded by reason over days</title>',
        f'<line x1="{left - 4}" y1="10" x2="{left - 4}" y2="{10 + plot}" stroke="#888"/>',
        f'<text x="0" y="20" font-size="11">{tallest}</text><text x="0" y="{10 + plot}" font-size="11">0</text>',
    ]
    for i, (day, values) in enumerate(days):
        x = left + i * (column + gap)
        y = 10 + plot
        for name in names:
            value = values.get(name, 0)
            if not value:
                continue
            h = plot * value / tallest
            y -= h
            parts.append(
                f'<rect class="segment" data-day="{_e(day)}" data-name="{_e(name)}" x="{x}" y="{y:.1f}" '
                f'width="{column}" height="{h:.1f}" fill="{REASON_COLOURS.get(name, _OTHER_COLOUR)}">'
                f"<title>{_e(day)} {_e(name)}: {value}</title></rect>"
            )
        parts.append(f'<text x="{x}" y="{height - 22}" font-size="11">{_e(day[5:])}</text>')
    parts.append("</svg>")
    legend = "".join(
        f'<span><i class="swatch" style="background:{REASON_COLOURS.get(n, _OTHER_COLOUR)}"></i>{_e(n)}</span>'
        for n in names
    )
    return "".join(parts) + f'<p class="legend">{legend}</p>'


def _checks_table(checks: Sequence[dict[str, Any]]) -> str:
    rows = []
    for check in checks:
        result = '<td class="pass">passed</td>' if check.get("passed") else '<td class="fail">FAILED</td>'
        rows.append(f"<tr><td>{_e(check.get('name'))}</td>{result}<td>{_e(check.get('detail'))}</td></tr>")
    head = "<thead><tr><th>check</th><th>result</th><th>detail</th></tr></thead>"
    return f"<table>{head}<tbody>{''.join(rows)}</tbody></table>"


def render_day(
    manifest: dict[str, Any],
    *,
    quarantine: Sequence[dict[str, Any]] = (),
    validation: Sequence[dict[str, Any]] = (),
    data_docs: str | None = None,
    index: str = "../index.html",
) -> str:
    """The audit page of one day (or one failed attempt); `index` is the link back to the index."""
    day, status = manifest.get("partition", "?"), manifest.get("status", "?")
    counts = manifest.get("counts") or {}
    telemetry = counts.get("telemetry") or {}
    consent = manifest.get("consent") or {}
    policy = manifest.get("policy") or {}
    outcome = outcome_counts(manifest)
    body = [
        f'<h1>consent-gate audit report: {_e(day)} <span class="status {_e(status)}">{_e(status)}</span></h1>',
        _table(
            ["field", "value"],
            [
                ("run", manifest.get("run_id")),
                ("DAG run", manifest.get("dag_run_id")),
                ("attempt", manifest.get("attempt")),
                ("consent as_of", manifest.get("as_of")),
                ("consent snapshot checksum", consent.get("checksum")),
                ("visible consent events", consent.get("visible_events")),
                ("subjects failed closed (unreadable consent rows)", consent.get("failed_closed_subjects")),
                ("consent read", _consent_read(consent.get("basis"))),
                ("policy version", policy.get("version")),
                ("policy checksum", policy.get("checksum")),
                ("k (minimum distinct users)", policy.get("k_min_distinct_users")),
                ("max quarantine ratio", policy.get("max_quarantine_ratio")),
                ("code version", manifest.get("code_version")),
                ("started", manifest.get("started_at")),
                ("ended", manifest.get("ended_at")),
            ],
        ),
    ]
    if manifest.get("failure"):
        body.append(f'<p class="fail">Failed, nothing published: {_e(manifest["failure"])}</p>')
    units_in = (counts.get("content") or {}).get("units_in")
    body += [
        "<h2>Content units by outcome</h2>",
        f"<p>{_e(units_in)} content units in; each ends published, excluded with one reason, or quarantined.</p>",
        _table(["outcome", "units"], list(outcome.items()), numeric=[1]),
        bar_chart(outcome, title=f"content units by outcome, {day}"),
    ]
    unidentified = (counts.get("content") or {}).get("unidentified_speakers")
    if unidentified is not None:  # manifests written before the speakers evidence have none
        body += [
            "<h3>Why transcript segments were <code>unidentified_speaker</code></h3>",
            _table(["reason", "segments"], list(unidentified.items()), numeric=[1]),
        ]
    body += [
        "<h2>Telemetry aggregates</h2>",
        _table(
            ["measure", "value"],
            [
                (k, telemetry.get(k))
                for k in (
                    "lines_read",
                    "telemetry_in",
                    "aggregated",
                    "suppressed_groups",
                    "suppressed_events",
                    "out_of_partition",
                    "duplicate",
                    "quarantined",
                )
            ],  # fmt: skip
            numeric=[1],
        ),
        "<h2>Checks</h2>",
        _checks_table(manifest.get("checks", [])),
    ]
    if validation:
        body += [
            "<h2>Great Expectations suites</h2>",
            _table(
                ["suite", "result", "batches", "expectation results", "failed expectations"],
                [
                    (
                        v["suite"],
                        "passed" if v["passed"] else "FAILED",
                        v["batches"],
                        v["expectations"],
                        ", ".join(v["failed"]) or "none",
                    )
                    for v in validation
                ],  # fmt: skip
                numeric=[2, 3],
            ),
        ]
    if data_docs:
        body.append(f'<p>Data Docs (offline): <a href="{_e(data_docs)}">{_e(data_docs)}</a></p>')
    body += [f"<h2>Quarantine ({len(quarantine)} units)</h2>"]
    if quarantine:
        shown = list(quarantine)[:MAX_QUARANTINE_LISTED]
        body.append(_table(["unit", "error"], [(q.get("unit"), q.get("error")) for q in shown]))
        if len(quarantine) > len(shown):
            body.append(f"<p>… and {len(quarantine) - len(shown)} more in quarantine.parquet</p>")
    unreadable = consent.get("unreadable_rows") or []
    if unreadable:
        body += [
            f"<h2>Unreadable consent rows ({len(unreadable)})</h2>",
            _table(
                ["event_id", "subject type", "error"],
                [(r.get("event_id"), r.get("subject_type"), r.get("error")) for r in unreadable],
            ),
        ]
    body.append(f'<p><a href="{_e(index)}">all days</a></p>')
    return _page(f"consent-gate audit {day}", "".join(body))


def render_index(days: Sequence[dict[str, Any]]) -> str:
    """Every day with a manifest: status, outcomes, checks, failed attempts, and the chart over days."""
    rows = []
    chart = []
    for entry in days:
        manifest = entry["manifest"]
        outcome = outcome_counts(manifest)
        checks = manifest.get("checks", [])
        passed = sum(1 for c in checks if c.get("passed"))
        rows.append(
            (
                f'<a href="{_e(day_name(entry["day"]))}/report.html">{_e(entry["day"])}</a>',
                _e(manifest.get("status")),
                outcome["published"],
                sum(v for k, v in outcome.items() if k not in ("published", "quarantined")),
                outcome["quarantined"],
                f"{passed}/{len(checks)}",
                entry.get("failed_attempts", 0),
                _e((manifest.get("consent") or {}).get("checksum", ""))[:16],
            )
        )
        chart.append((entry["day"], outcome))
    header = [
        "day", "status", "published", "excluded", "quarantined", "checks passed", "failed attempts", "consent checksum",
    ]  # fmt: skip
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    lines = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    body = (
        "<h1>consent-gate audit index</h1>"
        f"<p>{len(days)} day(s) published.</p>"
        "<h2>Kept vs excluded by reason, over days</h2>"
        f"{stacked_days_chart(chart)}"
        f"<h2>Days</h2><table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>"
    )
    return _page("consent-gate audit index", body)


# --- writing them ---------------------------------------------------------------------------------


def _quarantine_rows(store: OutputStore, folder: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    merged = f"{folder}/quarantine.parquet"
    files = [merged] if store.exists(merged) else store.files(f"{folder}/quarantine", ".parquet")
    rows: list[dict[str, Any]] = []
    for path in files:
        with store.open(path) as handle:
            rows += pq.read_table(handle, columns=["unit", "error"]).to_pylist()
    return rows


def write_day_report(
    store: OutputStore, folder: str, manifest: dict[str, Any], target: str | None = None, index: str = "../index.html"
) -> str:
    """Render the report of the audit `folder` (stage or published) into `target` (default: its report.html);
    `index` is the index's path relative to the page where it is published."""
    summary = f"{folder}/validation/summary.json"
    validation = store.read_json(summary) if store.exists(summary) else []
    docs = "data_docs/index.html" if store.exists(f"{folder}/data_docs/index.html") else None
    target = target or f"{folder}/report.html"
    quarantine = _quarantine_rows(store, folder)
    page = render_day(manifest, quarantine=quarantine, validation=validation, data_docs=docs, index=index)
    store.write_bytes(target, page.encode("utf-8"))
    return target


def write_index(store: OutputStore) -> str:
    """`_audit/index.html` across every published day."""
    days = []
    for folder in sorted(store.fs.glob(store.path(day_folders_glob(AUDIT)))):
        day = day_of(folder)
        if day is None or not store.exists(manifest_path(day)):
            continue
        attempts = store.files(attempts_folder(day), ".json")
        failed = sum(1 for a in attempts if store.read_json(a).get("status") == "failed")
        days.append({"day": day, "manifest": store.read_json(manifest_path(day)), "failed_attempts": failed})
    store.write_bytes("_audit/index.html", render_index(days).encode("utf-8"))
    return "_audit/index.html"


def keep_failed_attempt(store: OutputStore, stage_audit: str, attempt_folder: str, manifest: dict[str, Any]) -> None:
    """Copy a failed stage's validation reports and Data Docs beside its manifest, with a report page."""
    for name in ("validation", "data_docs"):
        source = f"{stage_audit}/{name}"
        if store.exists(source):
            store.remove(f"{attempt_folder}/{name}")
            store.fs.copy(store.path(source), store.path(f"{attempt_folder}/{name}"), recursive=True)
    # published as _audit/dt=D/attempts/<attempt>/report.html: the index is three folders up
    write_day_report(store, stage_audit, manifest, target=f"{attempt_folder}/report.html", index="../../../index.html")


def _consent_read(basis: Any) -> str | None:
    """How the run read the consent store (run.json consent.basis): the whole store, or the ledger."""
    if not isinstance(basis, dict):
        return None
    if basis.get("scope") == "ledger":
        rows, bound = basis.get("rows_read"), basis.get("bound")
        return f"consent ledger: {rows} rows read (recorded from {bound} on, or of the day's subjects)"
    return f"whole store: {basis.get('rows_read')} rows read ({basis.get('why')})"
