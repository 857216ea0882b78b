"""The auditors' pages inside Airflow: a FastAPI app the `consent_gate_reports` plugin mounts.

Airflow 3 mounts a plugin's FastAPI app as is: nothing in front of it checks a login. So every route
here depends on Airflow's own auth manager (`requires_access_dag`, read access to the DAG's runs)
and answers 401/403 before it reads anything. Files are served only by a route handler, through
`OutputStore` (local or `s3://`), and only when their path matches an allow-list of evidence
files; on local storage a path that passes through a symlink is refused. Every response carries
`Content-Security-Policy: frame-ancestors 'self'`: the pages render inside Airflow's UI only.

Pages show what the evidence holds (counts, reasons, checks, checksums, keyed hashes), never
content or raw ids; `explain` gives the same answer as `consent-gate explain`.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from consent_gate.audit import _page
from consent_gate.auditor_pages import (
    _NAME,
    AUDITED_DAGS,
    DAILY_DAG,
    MAX_ARTIFACT_ID,
    SECURITY_HEADERS,
    SWEEP_DAG,
    _e,
    _json,
    _nav,
    published_days,
    read_evidence,
    render_attempt_page,
    render_day_page,
    render_explain,
    render_index_page,
    render_sweep,
    run_evidence,
)
from consent_gate.manifest_schema import ManifestInvalid

if TYPE_CHECKING:  # the pipeline (pyarrow, GX) is imported when a page needs it, not when Airflow loads plugins
    from consent_gate.config import RunSettings


# --- the app ----------------------------------------------------------------------------------------


def _valid_day(day: str) -> str:
    """A YYYY-MM-DD day as given; anything else is not found (it never reaches a path)."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        try:
            return date.fromisoformat(day).isoformat()
        except ValueError:
            pass
    return _not_found()


def _not_found() -> Any:
    raise HTTPException(status_code=404, detail="not found")


def _html(page: str | None) -> HTMLResponse:
    if page is None:
        _not_found()
    return HTMLResponse(page)


def _base(request: Request) -> str:
    return str(request.scope.get("root_path") or "").rstrip("/")


def _explain_text(settings: RunSettings, day: str, artifact_id: str) -> str:
    from consent_gate.explain import explain_with_settings

    return explain_with_settings(settings, date.fromisoformat(day), artifact_id, datetime.now(UTC)).render()


def create_app(settings: Callable[[], RunSettings], read_access: Callable[[str], Any] | None = None) -> FastAPI:
    """The auditors' app. `settings` gives the deployment's settings per request; `read_access(dag_id)`
    is the dependency that admits a user who may read that DAG's runs (default: Airflow's auth manager)."""
    if read_access is None:
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
        from airflow.api_fastapi.core_api.security import requires_access_dag

        def read_access(dag_id: str | None) -> Any:
            return requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=dag_id)

    app = FastAPI(title="consent-gate audit", docs_url=None, redoc_url=None, openapi_url=None)
    daily = [Depends(read_access(DAILY_DAG))]
    both = [Depends(read_access(DAILY_DAG)), Depends(read_access(SWEEP_DAG))]

    @app.exception_handler(ManifestInvalid)
    def refuse_invalid_manifest(request: Request, error: ManifestInvalid) -> HTMLResponse:
        # Fail closed: a manifest that does not conform is not shown. The message names the file and
        # the field, never a value.
        return HTMLResponse(_page("consent-gate: evidence refused", f'<p class="fail">{_e(str(error))}</p>'), 500)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", dependencies=both, response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        return _html(render_index_page(settings().store(), _base(request)))

    @app.get("/day/{day}", dependencies=daily, response_class=HTMLResponse)
    def day_page(request: Request, day: str) -> HTMLResponse:
        return _html(render_day_page(settings().store(), _base(request), _valid_day(day)))

    @app.get("/day/{day}/attempt/{name}", dependencies=daily, response_class=HTMLResponse)
    def attempt_page(request: Request, day: str, name: str) -> HTMLResponse:
        if not re.fullmatch(_NAME, name):
            _not_found()
        return _html(render_attempt_page(settings().store(), _base(request), _valid_day(day), name))

    @app.get("/sweep/{sweep_id}", dependencies=[Depends(read_access(SWEEP_DAG))], response_class=HTMLResponse)
    def sweep_page(request: Request, sweep_id: str) -> HTMLResponse:
        if not re.fullmatch(_NAME, sweep_id):
            _not_found()
        record = _json(settings().store(), f"_audit/sweeps/{sweep_id}.json")
        return _html(render_sweep(_base(request), record) if isinstance(record, dict) else None)

    # dag_id from the path: requires_access_dag reads it there and checks that DAG
    @app.get("/run/{dag_id}/{run_id}", dependencies=[Depends(read_access(None))], response_class=HTMLResponse)
    def run_tab(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
        store, base = settings().store(), _base(request)
        if dag_id not in AUDITED_DAGS:
            return HTMLResponse(
                _page("consent-gate run", f"<h1>{_e(dag_id)} is not a consent-gate DAG</h1>{_nav(base)}"),
                status_code=404,
            )
        found = run_evidence(store, dag_id, run_id)
        if found is None:
            return HTMLResponse(
                _page("consent-gate run", f"<h1>No evidence for run {_e(run_id)} yet</h1>{_nav(base)}"
                      "<p>The run has not taken its consent snapshot, or is still running.</p>"),
                status_code=404,
            )  # fmt: skip
        kind, what = found
        if kind == "sweep":
            return _html(render_sweep(base, what))
        if kind == "day":
            return _html(render_day_page(store, base, what))
        return _html(render_attempt_page(store, base, *what))

    @app.get("/explain", dependencies=daily, response_class=HTMLResponse)
    def explain_page(request: Request, day: str | None = None, artifact_id: str = "") -> HTMLResponse:
        current = settings()
        days = published_days(current.store())
        answer = None
        artifact_id = artifact_id.strip()
        if day and artifact_id:
            if len(artifact_id) > MAX_ARTIFACT_ID or not artifact_id.isprintable():
                raise HTTPException(status_code=422, detail="artifact_id: not an artifact id")
            answer = _explain_text(current, _valid_day(day), artifact_id)
        return _html(render_explain(_base(request), days, day, artifact_id, answer))

    @app.get("/files/{relative:path}", dependencies=daily)
    def evidence_file(relative: str) -> Response:
        data = read_evidence(settings().store(), relative)
        if data is None:
            _not_found()
        kind = mimetypes.guess_type(relative)[0] or "application/octet-stream"
        return Response(data, media_type=kind)

    return app
