"""The offline audit reports: what they show, that they never hold content, and how a browser renders them."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from datetime import date
from pathlib import Path

import pytest

from consent_gate.audit import REASON_COLOURS, render_day, render_index
from consent_gate.config import utc_now
from consent_gate.pipeline import run_day
from tests.builders import sample_secrets
from tests.conftest import service_unavailable
from tests.test_validation import AS_OF, settings_for

DAYS = (date(2026, 11, 2), date(2026, 11, 3))
CHROMIUM_HINT = "install Debian's chromium (`apt-get install chromium`; scripts/browser does it as root)"

MANIFEST = {
    "partition": "2026-11-02", "status": "published", "run_id": "r1", "as_of": "2026-11-20T00:00:00+00:00",
    "code_version": "0.1.0+abc", "consent": {"checksum": "c" * 64, "visible_events": 12},
    "policy": {"version": "2026-11-1", "checksum": "p" * 64, "k_min_distinct_users": 10},
    "counts": {
        "content": {"units_in": 20, "published": 11, "quarantined": 2,
                    "excluded": {"private_message": 1, "user_not_consented": 6}},
        "telemetry": {"lines_read": 50, "aggregated": 30, "suppressed_groups": 3, "suppressed_events": 18},
    },
    "checks": [{"name": "gx_content", "passed": True, "detail": "13 expectation results"},
               {"name": "independent_verification", "passed": False, "detail": "1 of 11 rows not eligible"}],
}  # fmt: skip


@pytest.mark.unit
def test_a_day_report_shows_counts_checks_and_evidence_without_scripts():
    page = render_day(MANIFEST, quarantine=[{"unit": "meetings/dt=2026-11-02/m_1/chat.jsonl:3", "error": "bad"}])
    for shown in ("user_not_consented", ">6<", ">11<", "suppressed_groups", "c" * 64, "p" * 64, "0.1.0+abc",
                  "independent_verification", "FAILED", "chat.jsonl:3"):  # fmt: skip
        assert shown in page, shown
    assert page.count("<svg") == 1 and 'data-name="published"' in page
    assert "<script" not in page.lower()
    assert not re.search(r"(?:src|href)=\"https?://", page)


@pytest.mark.unit
def test_the_index_charts_kept_vs_excluded_by_reason_over_days():
    second = {**MANIFEST, "partition": "2026-11-03"}
    page = render_index([{"day": "2026-11-02", "manifest": MANIFEST}, {"day": "2026-11-03", "manifest": second}])
    segments = re.findall(r'<rect class="segment" data-day="([^"]+)" data-name="([^"]+)"', page)
    assert ("2026-11-03", "published") in segments and ("2026-11-02", "user_not_consented") in segments
    assert 'href="dt=2026-11-02/report.html"' in page and "<script" not in page.lower()


@pytest.fixture(scope="module")
def audited(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("audited")
    for day in DAYS:
        run_day(settings_for(sample_dir, out), day, AS_OF, run_id=f"audit-{day}", clock=utc_now)
    return out


@pytest.mark.integration
def test_publication_writes_a_report_per_day_and_an_index(audited):
    index = (audited / "_audit/index.html").read_text()
    for day in DAYS:
        manifest = json.loads((audited / f"_audit/dt={day}/manifest.json").read_text())
        report = (audited / f"_audit/dt={day}/report.html").read_text()
        assert manifest["consent"]["checksum"] in report and manifest["policy"]["checksum"] in report
        assert f">{manifest['counts']['content']['published']}<" in report
        assert all(c["name"] in report for c in manifest["checks"])
        assert f'data-day="{day}"' in index


@pytest.mark.integration
def test_no_report_file_holds_content_or_raw_ids(audited, sample_dir):
    secrets = sample_secrets(sample_dir, texts=True, min_length=6)
    assert len(secrets) > 300
    reports = [p for p in (audited / "_audit").rglob("*") if p.suffix in (".html", ".json")]
    assert any(p.name == "report.html" for p in reports) and any("data_docs" in p.parts for p in reports)
    for path in reports:
        text = path.read_text(errors="replace")
        leaked = [s for s in secrets if s in text]
        assert leaked == [], f"{path.relative_to(audited)} holds content or raw ids"


# --- a real browser, offline -------------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        service_unavailable("chromium", CHROMIUM_HINT)
    return str(found)


def _headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves: the page must render offline
        f"--user-data-dir={profile}", "--window-size=1200,1500", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels of an 8-bit non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0
    channels = 3 if colour == 2 else 4
    raw, stride, rows, previous = zlib.decompress(idat), width * channels, [], bytearray(width * channels)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, [bytes(b for i, b in enumerate(r) if i % channels < 3) for r in rows]


def _has_colour(rows: list[bytes], hex_colour: str, at_least: int = 200) -> bool:
    """At least `at_least` pixels of exactly this colour."""
    rgb = bytes.fromhex(hex_colour.lstrip("#"))
    return sum(1 for row in rows for i in range(0, len(row), 3) if row[i : i + 3] == rgb) >= at_least


@pytest.mark.integration
@pytest.mark.parametrize("page", ["_audit/dt=2026-11-02/report.html", "_audit/index.html"])
def test_reports_render_offline_in_headless_chromium(audited, tmp_path, page):
    chromium = _chromium()
    target = (audited / page).as_uri()
    dom = _headless(chromium, tmp_path / "profile-dom", "--dump-dom", target)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<svg" in dom.stdout and "consent-gate audit" in dom.stdout
    manifest = json.loads((audited / "_audit/dt=2026-11-02/manifest.json").read_text())
    assert str(manifest["counts"]["content"]["published"]) in dom.stdout

    shot = tmp_path / f"{Path(page).stem}.png"
    result = _headless(chromium, tmp_path / "profile-shot", f"--screenshot={shot}", target)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    width, height, rows = _png_pixels(shot)
    assert (width, height) == (1200, 1500)
    # The charts were drawn: the bars' own colours are on screen (kept, and an exclusion reason).
    assert _has_colour(rows, REASON_COLOURS["published"])
    assert _has_colour(rows, REASON_COLOURS["user_not_consented"])
    keep = os.environ.get("CONSENT_GATE_SCREENSHOTS")
    if keep:  # for a human to look at
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
