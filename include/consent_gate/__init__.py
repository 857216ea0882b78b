"""consent-gate: publish only the meeting content its subjects opted in to.

The package holds all logic; Airflow DAGs and the CLI are thin callers of it.
"""

__version__ = "0.1.0"
