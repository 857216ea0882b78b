"""OpenLineage for the organisation's catalogue, through Airflow's OpenLineage provider (optional).

Installed with the `lineage` extra (`apache-airflow-providers-openlineage`) and configured as the
provider is (`[openlineage] transport`, e.g. `AIRFLOW__OPENLINEAGE__TRANSPORT`), each publication emits
one COMPLETE event of the job `consent_gate_daily.publish`:

- inputs: the landing zone's day (meetings and telemetry folders) and the consent store's
  `consent_events` table, with the consent snapshot's checksum and row count as a quality metric;
- outputs: the published `content/dt=D` and `aggregates/dt=D`, with their row counts, each with a
  **data-quality assertions** facet built from the day's checks (GX suites, reconciliation,
  re-verification): check names and pass/fail only.

The event is built from the manifest alone: counts, check names, locations. Never a value of a content
column, never an id (keyed or raw), never the consent store's password. Without the provider, or
with no transport configured, nothing is emitted; a lineage failure never fails a publication.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from consent_gate.layout import day_folder

log = logging.getLogger(__name__)

NAMESPACE = "consent-gate"
PRODUCER = "https://github.com/consent-gate/consent-gate"
JOB = "consent_gate_daily.publish"


def dataset_location(uri: str) -> tuple[str, str]:
    """OpenLineage (namespace, name) of a path or fsspec URI: `file` + absolute path, `s3://bucket` + key."""
    if "://" not in uri:
        from pathlib import Path

        return "file", str(Path(uri).absolute())
    scheme, rest = uri.split("://", 1)
    if scheme in ("file", "local"):
        return "file", "/" + rest.lstrip("/")
    bucket, _, key = rest.partition("/")
    return f"{scheme}://{bucket}", key


def consent_store_location(url: str) -> tuple[str, str]:
    """(namespace, name) of the consent table from a SQLAlchemy URL, never with its password."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return "sqlite", f"{parsed.database}.consent_events"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{backend}://{parsed.host or 'localhost'}{port}", f"{parsed.database}.public.consent_events"


def lineage_run_id(manifest: dict[str, Any]) -> str:
    """A stable run id per attempt: the same publication always reports as the same run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"consent-gate/{manifest['partition']}/{manifest['attempt']}"))


def publication_event(manifest: dict[str, Any], raw: str, out: str, consent_db: str) -> Any:
    """The COMPLETE RunEvent of one publication (needs the `openlineage-python` client)."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import (
        data_quality_assertions_dataset,
        data_quality_metrics_input_dataset,
        output_statistics_output_dataset,
    )

    from consent_gate.assets import output_rows

    day = manifest["partition"]
    counts = manifest.get("counts") or {}
    content_in = (counts.get("content") or {}).get("units_in")
    telemetry_in = (counts.get("telemetry") or {}).get("lines_read")
    consent = manifest.get("consent") or {}
    assertions = data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(
        assertions=[
            data_quality_assertions_dataset.Assertion(assertion=str(c["name"]), success=bool(c["passed"]))
            for c in manifest.get("checks") or []
        ]
    )
    rows = output_rows(manifest, day)

    def landing(kind: str, units: Any) -> InputDataset:
        namespace, name = dataset_location(f"{raw.rstrip('/')}/{day_folder(kind, day)}")
        metrics = data_quality_metrics_input_dataset.DataQualityMetricsInputDatasetFacet(
            rowCount=int(units) if units is not None else None, columnMetrics={}
        )
        return InputDataset(namespace=namespace, name=name, inputFacets={"dataQualityMetrics": metrics})

    consent_namespace, consent_name = consent_store_location(consent_db)
    consent_metrics = data_quality_metrics_input_dataset.DataQualityMetricsInputDatasetFacet(
        rowCount=consent.get("visible_events"), columnMetrics={}
    )

    def published(dataset: str) -> OutputDataset:
        namespace, name = dataset_location(f"{out.rstrip('/')}/{day_folder(dataset, day)}")
        statistics = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=rows[dataset])
        return OutputDataset(
            namespace=namespace, name=name, facets={"dataQualityAssertions": assertions},
            outputFacets={"outputStatistics": statistics},
        )  # fmt: skip

    return RunEvent(
        eventType=RunState.COMPLETE,
        eventTime=str(manifest.get("ended_at") or manifest.get("started_at")),
        run=Run(runId=lineage_run_id(manifest)),
        job=Job(namespace=NAMESPACE, name=JOB),
        producer=PRODUCER,
        inputs=[
            landing("meetings", content_in),
            landing("telemetry", telemetry_in),
            InputDataset(
                namespace=consent_namespace, name=consent_name, inputFacets={"dataQualityMetrics": consent_metrics}
            ),
        ],
        outputs=[published("content"), published("aggregates")],
    )


def emit_publication(manifest: dict[str, Any], raw: str, out: str, consent_db: str) -> bool:
    """Emit the publication's event through the provider's configured client; False when lineage is not
    installed or fails (logged): the catalogue must never stop a publication."""
    try:
        from airflow.providers.openlineage.plugins.adapter import OpenLineageAdapter
    except ImportError:
        return False
    try:
        OpenLineageAdapter().emit(publication_event(manifest, raw, out, consent_db))
        return True
    except Exception:
        log.warning("lineage for %s was not emitted", manifest.get("partition"), exc_info=True)
        return False
