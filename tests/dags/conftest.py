"""Fixtures of the real-scheduler tests."""

from tests.dags.deployment import migrated_postgres_template  # noqa: F401 (a session fixture)
