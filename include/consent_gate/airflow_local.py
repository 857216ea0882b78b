"""Airflow on the embedded default, without the Astro CLI: SQLite metadata, LocalExecutor, 127.0.0.1.

`scripts/airflow-local` calls `main`. It applies `airflow_settings.yaml` itself: connections and
variables become AIRFLOW_CONN_* / AIRFLOW_VAR_* of every Airflow process it starts (a value already
in the environment wins, so tests and operators can point elsewhere), pools are created with
`airflow pools set`. Paths starting with ./ resolve against the project root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from consent_gate.config import PROJECT_ROOT
from consent_gate.runs import PUBLISH_POOL, PUBLISH_POOL_ENV

DAG_IDS = ("consent_gate_daily", "consent_revocation_sweep", "consent_gate_content_consumer")
# scheduler, dag-processor, api-server and the CLI all write one SQLite file: a writer that finds it
# locked waits this long (sqlite3's default, 5 s, is shorter than a busy scheduler's transactions)
# (two dicts: Airflow adds its own keys to the one it is given)
SQLITE_CONNECT_ARGS = {"timeout": 60}
SQLITE_CONNECT_ARGS_ASYNC = {"timeout": 60}
USAGE = """usage: scripts/airflow-local COMMAND
  init         migrate the metadata DB, create the pools, parse and unpause the DAGs
  standalone   init, then `airflow standalone` on 127.0.0.1 (port $CONSENT_GATE_AIRFLOW_PORT, default 8080)
  env          print the environment as shell exports (eval "$(scripts/airflow-local env)")
  airflow ...  any Airflow CLI command in this environment, e.g.
               scripts/airflow-local airflow backfill create --dag-id consent_gate_daily \\
                   --from-date 2026-11-02 --to-date 2026-11-04
"""


def resolve(value: Any, root: Path) -> Any:
    """A setting's value, with ./relative paths made absolute against the project root."""
    if isinstance(value, str) and value.startswith("./"):
        return str(root / value[2:])
    return value


def read_settings(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text()) or {}
    return document.get("airflow") or {}


def connection_uri_json(connection: dict[str, Any], root: Path) -> str:
    """An Airflow connection as the JSON form AIRFLOW_CONN_* accepts."""
    fields = {
        "conn_type": connection.get("conn_type"),
        "host": resolve(connection.get("conn_host"), root),
        "schema": connection.get("conn_schema"),
        "login": connection.get("conn_login"),
        "password": connection.get("conn_password"),
        "port": connection.get("conn_port"),
        "extra": connection.get("conn_extra") or None,
    }
    return json.dumps({k: v for k, v in fields.items() if v not in (None, "")})


def environment(base: dict[str, str], root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The environment of every Airflow process of the local deployment."""
    settings = read_settings(root / "airflow_settings.yaml")
    home = Path(base.get("AIRFLOW_HOME") or root / "var/airflow").resolve()
    port = base.get("CONSENT_GATE_AIRFLOW_PORT", "8080")
    env = dict(base)
    defaults = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        # the auditor pages (plugins/consent_gate_reports.py): Airflow loads no plugins/ folder by itself
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": port,
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # one small machine runs every component on SQLite: one API worker, patience for slow answers
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
        "PYTHONPATH": os.pathsep.join(p for p in (str(root), str(root / "include"), base.get("PYTHONPATH")) if p),
    }
    for connection in settings.get("connections") or []:
        defaults[f"AIRFLOW_CONN_{connection['conn_id'].upper()}"] = connection_uri_json(connection, root)
    for variable in settings.get("variables") or []:
        defaults[f"AIRFLOW_VAR_{variable['variable_name'].upper()}"] = str(resolve(variable["variable_value"], root))
    if any(pool["pool_name"] == PUBLISH_POOL for pool in settings.get("pools") or []):
        defaults[PUBLISH_POOL_ENV] = PUBLISH_POOL  # the pool exists once `init` ran: the DAG may use it
    for key, value in defaults.items():
        env.setdefault(key, value)
    if env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite"):
        env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", "consent_gate.airflow_local.SQLITE_CONNECT_ARGS")
        env.setdefault(
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC", "consent_gate.airflow_local.SQLITE_CONNECT_ARGS_ASYNC"
        )
    # `airflow standalone` starts its components as `airflow ...`: this venv's airflow must come first
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), base.get("PATH")) if p)
    return env


def airflow(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "airflow", *args], env=env, check=True)


def init(env: dict[str, str], root: Path = PROJECT_ROOT) -> None:
    """Migrate the metadata DB, create the pools, parse the DAGs and unpause them."""
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    airflow(env, "db", "migrate")
    for pool in read_settings(root / "airflow_settings.yaml").get("pools") or []:
        airflow(env, "pools", "set", pool["pool_name"], str(pool["pool_slot"]), pool.get("pool_description") or "")
    airflow(env, "dags", "reserialize")
    for dag_id in DAG_IDS:  # a paused DAG leaves backfill runs queued without a word
        airflow(env, "dags", "unpause", dag_id)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    env = environment(dict(os.environ))
    command, rest = args[0], args[1:]
    if command == "env":
        for key in sorted(k for k in env if k.startswith(("AIRFLOW", "CONSENT_GATE", "PYTHONPATH"))):
            print(f"export {key}={_quote(env[key])}")
        return 0
    if command == "init":
        init(env)
        return 0
    if command == "standalone":
        init(env)
        os.execve(sys.executable, [sys.executable, "-m", "airflow", "standalone"], env)
    if command == "airflow":
        os.execve(sys.executable, [sys.executable, "-m", "airflow", *rest], env)
    print(USAGE, file=sys.stderr)
    return 2


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


if __name__ == "__main__":
    raise SystemExit(main())
