"""consent-gate's auditor pages inside Airflow's UI, behind its login.

A thin wiring file (logic: `include/consent_gate/auditor_app.py`): the FastAPI app, whose every
route asks Airflow's auth manager for read access to the DAG's runs, a "Consent audit" entry in the
navigation, and a tab on each run of the two consent-gate DAGs showing what that run published.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from consent_gate.auditor_app import create_app
from consent_gate.auditor_pages import URL_PREFIX
from consent_gate.runs import settings_from_server

# hrefs are relative to Airflow's base URL (no leading slash), so a deployment under a path prefix works
_BASE = URL_PREFIX.lstrip("/")


class ConsentGateReportsPlugin(AirflowPlugin):
    name = "consent_gate_reports"
    fastapi_apps = [{"app": create_app(settings_from_server), "url_prefix": URL_PREFIX, "name": "consent-gate audit"}]
    # A dag_run view is a tab on every DAG's runs (Airflow filters by destination only): the app
    # answers for the consent-gate DAGs and says "not a consent-gate DAG" for any other.
    external_views = [
        {"name": "Consent audit", "href": f"{_BASE}/", "destination": "nav", "url_route": "consent-audit"},
        {"name": "Consent evidence", "href": f"{_BASE}/run/{{DAG_ID}}/{{RUN_ID}}", "destination": "dag_run",
         "url_route": "consent-evidence"},
    ]  # fmt: skip
