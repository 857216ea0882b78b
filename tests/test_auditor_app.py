"""The auditors' pages inside Airflow, against a real api-server the tests start (one per module).

The deployment is `scripts/airflow-local`'s environment (which must load `plugins/`), with Airflow's
SimpleAuthManager in multi-team mode: the DAG bundle belongs to the team `privacy`; `auditor` is a
viewer of that team, `outsider` a viewer of another team (so Airflow itself says they may not read
the DAG), `operator` an admin who creates the DAG runs the evidence names. The evidence: a published
day, a day whose only attempt failed its checks, and a sweep that purged a revoked account's rows.
"""

from __future__ import annotations

import asyncio
import base64
import html
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from consent_gate import airflow_local, cli
from consent_gate.config import Policy, RunSettings, utc_now
from consent_gate.errors import GateCheckFailed
from consent_gate.keys import Keyer
from consent_gate.pipeline import run_day
from consent_gate.sweep import sweep
from tests.builders import sample_identities, sample_secrets
from tests.conftest import PROJECT, service_unavailable
from tests.dags.deployment import Deployment, free_port
from tests.test_audit import CHROMIUM_HINT
from tests.test_sweep import AS_OF, PURGED_AT, REVOKED_AT, SWEEP_AS_OF, append_consent, revocation

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

DAILY, SWEEP = "consent_gate_daily", "consent_revocation_sweep"
DAY, FAILED_DAY = "2026-11-02", "2026-11-03"
PUBLISHED_RUN, FAILED_RUN, SWEEP_RUN = "manual__published", "manual__failed", "manual__sweep"
PREFIX = "/consent-audit"
TEAM, OTHER_TEAM = "privacy", "marketing"


@dataclass
class Evidence:
    sample: Path
    out: Path
    consent_db: Path
    manifest: dict[str, Any]
    failed_attempt: str
    sweep_id: str
    rows_purged: int
    artifacts: dict[str, str]  # outcome -> an artifact_id of DAY with that outcome


@pytest.fixture(scope="module")
def evidence(sample_dir, tmp_path_factory) -> Evidence:
    root = tmp_path_factory.mktemp("auditor")
    consent_db = root / "consent.db"
    shutil.copyfile(sample_dir / "consent.db", consent_db)  # the revocation goes to a copy only
    out = root / "out"
    settings = RunSettings(
        raw=str(sample_dir / "raw"), out=str(out), consent_db=f"sqlite:///{consent_db}", policy=Policy(),
        secret=(sample_dir / "hmac.key").read_bytes(),
    )  # fmt: skip
    run_day(settings, date.fromisoformat(DAY), AS_OF, run_id="audit", dag_run_id=PUBLISHED_RUN, clock=utc_now)
    with pytest.raises(GateCheckFailed):  # the sample quarantines a few units: a zero tolerance fails the day
        strict = replace(settings, policy=Policy(max_quarantine_ratio=0.0))
        run_day(strict, date.fromisoformat(FAILED_DAY), AS_OF, run_id="audit", dag_run_id=FAILED_RUN, clock=utc_now)
    (failed_attempt,) = [p.stem for p in (out / f"_audit/dt={FAILED_DAY}/attempts").glob("*.json")]

    published = ds.dataset(out / f"content/dt={DAY}", format="parquet").to_table().to_pylist()
    keyer = Keyer(settings.secret)
    keys = {k for row in published for k in row["account_keys"]}
    _, accounts = sample_identities(sample_dir)
    account = sorted(a for a in accounts if keyer.account(a) in keys)[0]
    append_consent(consent_db, [revocation("zz_auditor_revocation", "account", account, REVOKED_AT)])
    swept = sweep(settings.store(), settings.consent_db, settings.secret, SWEEP_AS_OF, clock=lambda: PURGED_AT,
                  dag_run_id=SWEEP_RUN)  # fmt: skip
    assert swept.rows_removed > 0

    audit = out / f"_audit/dt={DAY}"
    excluded = pq.read_table(audit / "excluded.parquet").to_pylist()
    withdrawn = pq.read_table(audit / "withdrawn.parquet").to_pylist()
    artifacts = {
        "published": sorted(ds.dataset(out / f"content/dt={DAY}").to_table().column("artifact_id").to_pylist())[0],
        "excluded": next(r["artifact_id"] for r in excluded if r["reason"] == "user_not_consented"),
        "withdrawn": withdrawn[0]["artifact_id"],
        "unknown": "m_0000000000000000/chat/none",
    }
    manifest = json.loads((audit / "manifest.json").read_text())
    return Evidence(sample_dir, out, consent_db, manifest, failed_attempt, swept.sweep_id, swept.rows_removed,
                    artifacts)  # fmt: skip


# --- the deployment ---------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str


@dataclass
class Server:
    port: int
    tokens: dict[str, str]
    passwords: dict[str, str]
    deployment: Deployment

    def get(self, path: str, user: str | None = None) -> Reply:
        """GET `path` exactly as written (no client-side normalisation of `..` or %-escapes)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read().decode("utf-8", errors="replace")
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
        finally:
            connection.close()


def _post_json(port: int, path: str, payload: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


# Migrate, create the teams (the auth manager refuses users of teams the DB does not know) and
# serialize the DAGs into the team's bundle: one interpreter instead of four CLI start-ups.
INIT_AIRFLOW = """
import sys
from airflow.cli.cli_parser import get_parser
for argv in (["db", "migrate"], *(["teams", "create", t] for t in sys.argv[1:]), ["dags", "reserialize"]):
    args = get_parser().parse_args(argv)
    args.func(args)
"""


@dataclass
class Booting:
    deployment: Deployment
    port: int
    passwords: dict[str, str]
    init: subprocess.Popen


@pytest.fixture(scope="module")
def airflow_init(tmp_path_factory) -> Iterator[Booting]:
    """The deployment's metadata DB, prepared in the background while the evidence is being built."""
    home = tmp_path_factory.mktemp("airflow-auditor")
    port = free_port()
    passwords = {user: secrets.token_urlsafe(12) for user in ("auditor", "outsider", "operator")}
    (home / "passwords.json").write_text(json.dumps(passwords))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST"))}
    bundle = {
        "name": "consent_gate",
        "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
        "kwargs": {"path": str(PROJECT / "dags")},
        "team_name": TEAM,
    }
    users = (f"auditor:viewer:{TEAM}", f"outsider:viewer:{OTHER_TEAM}", "operator:admin")
    base.update(
        {
            "AIRFLOW_HOME": str(home),
            "CONSENT_GATE_AIRFLOW_PORT": str(port),
            "AIRFLOW__CORE__MULTI_TEAM": "True",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([bundle]),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(users),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        }
    )
    env = airflow_local.environment(base, PROJECT)  # what scripts/airflow-local gives every process
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(PROJECT / "plugins")
    deployment = Deployment(home, env)
    with open(home / "init.log", "wb") as log:
        init = subprocess.Popen([sys.executable, "-c", INIT_AIRFLOW, TEAM, OTHER_TEAM], env=env, cwd=home,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        yield Booting(deployment, port, passwords, init)
    finally:
        if init.poll() is None:
            os.killpg(init.pid, signal.SIGKILL)
        init.wait()
        deployment.stop()


@pytest.fixture(scope="module")
def server(airflow_init, evidence) -> Server:
    deployment, port, passwords = airflow_init.deployment, airflow_init.port, airflow_init.passwords
    deployment.env.update(
        {
            "AIRFLOW_VAR_CONSENT_GATE_RAW_URI": str(evidence.sample / "raw"),
            "AIRFLOW_VAR_CONSENT_GATE_OUT_URI": str(evidence.out),
            "AIRFLOW_VAR_CONSENT_GATE_HMAC_KEY": (evidence.sample / "hmac.key").read_text(),
            "AIRFLOW_CONN_CONSENT_DB": json.dumps({"conn_type": "sqlite", "host": str(evidence.consent_db)}),
        }
    )
    assert airflow_init.init.wait(timeout=600) == 0, (deployment.home / "init.log").read_text()[-3000:]
    deployment.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")

    def api_up() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=3).close()
            return True
        except OSError:
            return False

    deployment.wait_for("the api-server", api_up, 180)
    tokens = {u: _post_json(port, "/auth/token", {"username": u, "password": p})["access_token"]
              for u, p in passwords.items()}  # fmt: skip
    for dag_id, run_id in ((DAILY, PUBLISHED_RUN), (DAILY, FAILED_RUN), (SWEEP, SWEEP_RUN)):
        _post_json(port, f"/api/v2/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None},
                   tokens["operator"])  # fmt: skip
    return Server(port, tokens, passwords, deployment)


# --- who gets in --------------------------------------------------------------------------------------


def routes(evidence: Evidence) -> list[str]:
    return [
        "/", f"/day/{DAY}", f"/day/{FAILED_DAY}", f"/day/{FAILED_DAY}/attempt/{evidence.failed_attempt}",
        f"/sweep/{evidence.sweep_id}", f"/run/{DAILY}/{PUBLISHED_RUN}", f"/run/{DAILY}/{FAILED_RUN}",
        f"/run/{SWEEP}/{SWEEP_RUN}", f"/explain?day={DAY}&artifact_id={quote(evidence.artifacts['published'])}",
        f"/files/_audit/dt={DAY}/report.html", f"/files/_audit/dt={DAY}/data_docs/index.html",
        f"/files/_audit/dt={DAY}/validation/summary.json", "/files/_audit/index.html",
    ]  # fmt: skip


def test_the_plugin_is_loaded_with_its_nav_entry_and_run_tab(server):
    plugins = json.loads(server.get("/api/v2/plugins", "operator").body)["plugins"]
    (plugin,) = [p for p in plugins if p["name"] == "consent_gate_reports"]
    views = {v["name"]: v for v in plugin["external_views"]}
    assert views["Consent audit"]["destination"] == "nav"
    assert views["Consent evidence"]["destination"] == "dag_run"
    assert "{DAG_ID}" in views["Consent evidence"]["href"] and "{RUN_ID}" in views["Consent evidence"]["href"]


def test_only_users_who_may_read_the_dags_runs_get_in(server, evidence):
    answers = {}
    for route in routes(evidence):
        answers[route] = tuple(server.get(PREFIX + route, user).status for user in (None, "outsider", "auditor"))
    wrong = {r: a for r, a in answers.items() if a[0] not in (401, 403) or a[1] != 403 or a[2] != 200}
    assert wrong == {}, "(anonymous, outsider, auditor)"
    # The refusals come from Airflow's auth manager and carry the frame policy too.
    refused = server.get(PREFIX + "/", "outsider")
    assert refused.headers["content-security-policy"] == "frame-ancestors 'self'"


def test_the_viewer_sees_the_days_figures_and_the_sweeps(server, evidence):
    index = server.get(PREFIX + "/", "auditor")
    assert index.status == 200 and index.headers["content-security-policy"] == "frame-ancestors 'self'"
    counts = evidence.manifest["counts"]["content"]
    assert f">{counts['published']}<" in index.body and f'href="{PREFIX}/day/{DAY}"' in index.body
    assert "not published" in index.body and f'href="{PREFIX}/day/{FAILED_DAY}"' in index.body
    assert evidence.sweep_id in index.body and f">{evidence.rows_purged}<" in index.body
    assert "0h 42m 00s" in index.body  # revocation recorded at REVOKED_AT, purged 42 minutes later

    day = server.get(PREFIX + f"/day/{DAY}", "auditor")
    assert day.status == 200
    for shown in (f">{counts['published']}<", evidence.manifest["consent"]["checksum"], PUBLISHED_RUN,
                  *(c["name"] for c in evidence.manifest["checks"])):  # fmt: skip
        assert shown in day.body, shown
    # index -> day -> Data Docs -> checks
    for link in (f"/files/_audit/dt={DAY}/data_docs/index.html", f"/files/_audit/dt={DAY}/validation/summary.json"):
        assert f'href="{PREFIX}{link}"' in day.body
        assert server.get(PREFIX + link, "auditor").status == 200


def test_each_run_tab_shows_what_that_run_published_or_why_it_failed(server, evidence):
    published = server.get(PREFIX + f"/run/{DAILY}/{PUBLISHED_RUN}", "auditor")
    assert published.status == 200 and f"consent-gate {DAY}" in published.body
    assert evidence.manifest["attempt"] in published.body

    failed = server.get(PREFIX + f"/run/{DAILY}/{FAILED_RUN}", "auditor").body
    assert "Failed checks (1)" in failed and evidence.failed_attempt in failed
    first_row = re.search(r"<tbody><tr><td>([a-z_]+)</td><td class=\"(\w+)\"", failed)
    assert first_row.groups() == ("quarantine_ratio", "fail")  # the failed check comes first
    assert failed.index("quarantine_ratio") < failed.index("content_reconciles")

    swept = server.get(PREFIX + f"/run/{SWEEP}/{SWEEP_RUN}", "auditor").body
    assert evidence.sweep_id in swept and f"<td>rows purged</td><td>{evidence.rows_purged}</td>" in swept
    assert f'href="{PREFIX}/day/{DAY}"' in swept

    assert server.get(PREFIX + f"/run/{DAILY}/scheduled__never", "auditor").status == 404
    assert server.get(PREFIX + "/run/some_other_dag/manual__x", "auditor").status == 404


TRAVERSALS = [
    f"/files/_audit/dt={DAY}/../../../../../../etc/passwd",
    f"/files/_audit/dt={DAY}/../manifest.json",
    "/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    f"/files/_audit/dt={DAY}/%2e%2e%2f%2e%2e%2f%2e%2e%2fconsent.db",
    "/files/%252e%252e/%252e%252e/etc/passwd",
    "/files//etc/passwd",
    "/files/%2Fetc%2Fpasswd",
    f"/files/_audit/dt={DAY}/data_docs/..%2F..%2F..%2Fcontent/dt={DAY}/part-0000.parquet",
    f"/files/content/dt={DAY}/part-0000.parquet",
    f"/files/_audit/dt={DAY}/excluded.parquet",
    f"/files/_audit/dt={DAY}/./report.html",
    "/files/_audit/sweeps/watermark.json/..",
    "/day/..%2F..%2Fetc",
    "/day/2026-13-45",
    "/sweep/..%2Fwatermark",
    f"/day/{FAILED_DAY}/attempt/..%2F..%2Fmanifest",
]


def test_traversal_and_paths_outside_the_allow_list_are_404(server):
    answers = {path: server.get(PREFIX + path, "auditor").status for path in TRAVERSALS}
    assert {p: s for p, s in answers.items() if s != 404} == {}


def test_symlinks_are_never_followed(server, evidence, tmp_path):
    outside = tmp_path / "outside"
    (outside / "docs").mkdir(parents=True)
    (outside / "secret.json").write_text('{"not": "evidence"}')
    (outside / "docs" / "index.html").write_text("<p>planted</p>")
    audit = evidence.out / f"_audit/dt={DAY}"
    links = {
        audit / "validation" / "planted.json": outside / "secret.json",  # a file link out of the root
        audit / "data_docs" / "planted": outside / "docs",  # a folder link out of the root
        evidence.out / "_audit/dt=2026-11-09": audit,  # a day that is a link to another (inside the root)
    }
    try:
        for link, target in links.items():
            link.symlink_to(target)
        assert (audit / "validation/planted.json").read_text() and (evidence.out / "_audit/dt=2026-11-09").is_dir()
        planted = (
            f"/files/_audit/dt={DAY}/validation/planted.json",
            f"/files/_audit/dt={DAY}/data_docs/planted/index.html",
            "/files/_audit/dt=2026-11-09/report.html",
            "/day/2026-11-09",
        )
        for path in planted:
            reply = server.get(PREFIX + path, "auditor")
            assert reply.status == 404 and "planted" not in reply.body and "evidence" not in reply.body, path
        assert server.get(PREFIX + f"/files/_audit/dt={DAY}/validation/summary.json", "auditor").status == 200
    finally:
        for link in links:
            link.unlink(missing_ok=True)


def _answer(page: str) -> str:
    found = re.search(r'<pre class="explain">(.*?)</pre>', page, re.S)
    assert found, "no answer on the page"
    return html.unescape(found.group(1))


@pytest.mark.parametrize("outcome", ["published", "excluded", "withdrawn", "unknown"])
def test_explain_gives_the_same_answer_as_the_command_line(server, evidence, outcome, capsys):
    artifact = evidence.artifacts[outcome]
    page = server.get(PREFIX + f"/explain?day={DAY}&artifact_id={quote(artifact)}", "auditor")
    assert page.status == 200
    cli.main(["explain", "--date", DAY, "--artifact", artifact, "--raw", str(evidence.sample / "raw"),
              "--out", str(evidence.out), "--consent-db", f"sqlite:///{evidence.consent_db}",
              "--key-file", str(evidence.sample / "hmac.key")])  # fmt: skip
    expected = capsys.readouterr().out.strip()
    assert _answer(page.body) == expected
    if outcome in ("published", "excluded", "withdrawn"):
        assert "required account" in expected  # subjects as keyed hashes, with their consent states
    if outcome == "withdrawn":
        assert f"sweep {evidence.sweep_id}" in expected


def _crawl(server: Server, start: list[str]) -> dict[str, str]:
    """Every page and file reachable from `start` by links under the app's prefix, as the auditor."""
    seen: dict[str, str] = {}
    queue = list(start)
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        reply = server.get(path, "auditor")
        assert reply.status == 200, path
        seen[path] = reply.body
        for href in re.findall(r'(?:href|src)="([^"#]+)', reply.body):
            target = urlsplit(urljoin(f"http://127.0.0.1{path}", html.unescape(href)))
            if target.netloc == "127.0.0.1" and target.path.startswith(PREFIX + "/"):
                queue.append(target.path + (f"?{target.query}" if target.query else ""))
    return seen


def test_no_response_holds_content_or_raw_ids(server, evidence):
    explains = [f"{PREFIX}/explain?day={DAY}&artifact_id={quote(a)}" for a in evidence.artifacts.values()]
    runs = [
        f"{PREFIX}/run/{DAILY}/{PUBLISHED_RUN}",
        f"{PREFIX}/run/{DAILY}/{FAILED_RUN}",
        f"{PREFIX}/run/{SWEEP}/{SWEEP_RUN}",
    ]
    pages = _crawl(server, [f"{PREFIX}/", *explains, *runs])
    assert len(pages) > 20 and any("/data_docs/" in p for p in pages) and any("/attempt/" in p for p in pages)
    secrets_ = sample_secrets(evidence.sample, texts=True, min_length=6)
    assert len(secrets_) > 300
    leaks = {path: [s for s in secrets_ if s in body][:3] for path, body in pages.items()}
    assert {p: found for p, found in leaks.items() if found} == {}


# --- a real browser, through Airflow's own login --------------------------------------------------


class ProtocolError(AssertionError):
    """A DevTools command the browser answered with an error."""

    # What Chromium answers when the page navigates while a script is evaluated in it: the script's
    # document is gone, so the question is asked again of the next one.
    NAVIGATING = ("Inspected target navigated or closed", "Execution context was destroyed",
                  "Cannot find context with specified id")  # fmt: skip

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method}: {error}")
        self.navigating = any(m in str(error.get("message", "")) for m in self.NAVIGATING)


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, socket: Any) -> None:
        self.socket, self.counter = socket, 0

    async def command(self, method: str, **params: Any) -> dict[str, Any]:
        self.counter += 1
        number = self.counter
        await self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(await self.socket.recv())
            if message.get("id") == number:
                if "error" in message:
                    raise ProtocolError(method, message["error"])
                return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.command("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def act(self, expression: str) -> None:
        """Evaluate a script that may navigate away (a click): its effect is what `until` waits for next."""
        try:
            await self.evaluate(expression)
        except ProtocolError as error:
            if not error.navigating:
                raise

    async def until(self, what: str, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = await self.evaluate(expression)
            except ProtocolError as error:  # the page navigated while it was asked (a redirect to the login)
                if not error.navigating:
                    raise
                value = None
            if value:
                return value
            await asyncio.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}")

    async def type_into(self, selector: str, text: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.command("Input.insertText", text=text)

    async def click_text(self, text: str) -> None:
        found = (
            f"Array.from(document.querySelectorAll('a,button')).find(e => e.innerText.trim() === {json.dumps(text)})"
        )
        await self.until(f"'{text}' on the page", f"!!{found}")
        await self.act(f"{found}.click()")

    async def screenshot(self, path: Path) -> None:
        shot = await self.command("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


FRAME_TEXT = (
    "(() => { const f = document.querySelector('iframe');"
    " return f && f.contentDocument && f.contentDocument.body ? f.contentDocument.body.innerText : '' })()"
)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        service_unavailable("chromium", CHROMIUM_HINT)
    return str(found)


def test_an_auditor_logs_in_through_the_ui_and_finds_the_reports(server, evidence, tmp_path):
    import websockets

    port = free_port()
    chromium = subprocess.Popen(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", f"--remote-debugging-port={port}",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{server.port}"
    counts = evidence.manifest["counts"]["content"]

    def page_socket() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=3) as response:
                pages = [t for t in json.loads(response.read()) if t["type"] == "page"]
        except OSError:
            return None
        return pages[0]["webSocketDebuggerUrl"] if pages else None

    async def session() -> dict[str, str]:
        deadline = time.monotonic() + 60
        while (address := page_socket()) is None:
            assert time.monotonic() < deadline and chromium.poll() is None, "chromium did not start"
            await asyncio.sleep(0.3)
        seen: dict[str, str] = {}
        async with websockets.connect(address, max_size=64 << 20) as socket:
            browser = Browser(socket)
            await browser.command("Page.enable")
            await browser.command("Page.navigate", url=f"{base}/")
            await browser.until("the login form", "!!document.querySelector('input[name=password]')")
            await browser.screenshot(tmp_path / "1-login.png")
            await browser.type_into("input[name=username]", "auditor")
            await browser.type_into("input[name=password]", server.passwords["auditor"])
            await browser.act("document.querySelector('button[type=submit]').click()")
            await browser.until("the home page", "!location.pathname.startsWith('/auth')")

            await browser.click_text("Consent audit")
            seen["nav"] = await browser.until(
                "the audit index in its frame", f"{FRAME_TEXT}.includes('Daily runs') && {FRAME_TEXT}"
            )
            seen["nav_url"] = await browser.evaluate("location.pathname")
            await browser.screenshot(tmp_path / "2-consent-audit.png")

            for name, run_id, marker in (("published", PUBLISHED_RUN, f"consent-gate {DAY}"),
                                         ("failed", FAILED_RUN, "Failed checks")):  # fmt: skip
                run_page = f"/dags/{DAILY}/runs/{run_id}"
                await browser.command("Page.navigate", url=base + run_page)
                await browser.until("the run's page", f"location.pathname === {json.dumps(run_page)}")
                await browser.click_text("Consent evidence")
                seen[name] = await browser.until(
                    f"the {name} run's tab", f"{FRAME_TEXT}.includes({marker!r}) && {FRAME_TEXT}"
                )
                await browser.screenshot(tmp_path / f"3-run-tab-{name}.png")
        return seen

    try:
        seen = asyncio.run(asyncio.wait_for(session(), timeout=240))
    finally:
        os.killpg(chromium.pid, signal.SIGTERM)
        chromium.wait(timeout=30)
    assert seen["nav_url"].startswith("/plugin/consent-audit")  # the UI mirrors the frame's path after it
    assert DAY in seen["nav"] and FAILED_DAY in seen["nav"] and evidence.sweep_id in seen["nav"]
    assert f"consent-gate {DAY}" in seen["published"] and str(counts["published"]) in seen["published"]
    assert "quarantine_ratio" in seen["failed"] and "Nothing of this attempt was published" in seen["failed"]
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert shots == ["1-login.png", "2-consent-audit.png", "3-run-tab-failed.png", "3-run-tab-published.png"]
    assert all((tmp_path / s).stat().st_size > 10_000 for s in shots)
    keep = os.environ.get("CONSENT_GATE_SCREENSHOTS")
    if keep:  # for a human to look at
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(tmp_path / shot, Path(keep) / f"auditor-{shot}")
