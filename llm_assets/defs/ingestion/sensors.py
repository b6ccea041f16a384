"""The landing sensor: registers each new source folder as a partition and requests its ingestion."""

import json

import dagster as dg

from llm_assets.defs.ingestion.partitions import sources_partitions
from llm_assets.defs.jobs import corpus_pipeline_job
from llm_assets.ingestion.landing import scan_landing
from llm_assets.resources.lake import LakeResource


@dg.sensor(
    job=corpus_pipeline_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the lake's landing/ folder; a new or changed source folder starts a run.",
)
def landing_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    storage = lake.storage()
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    found = scan_landing(storage)
    known = set(context.instance.get_dynamic_partitions(sources_partitions.name or "sources"))
    new_partitions: list[str] = []
    run_requests: list[dg.RunRequest] = []
    for name, source in found.items():
        if source.descriptor is None:
            context.log.warning(f"landing source '{name}' skipped: {source.error}")
            continue
        if name not in known:
            new_partitions.append(name)
        if seen.get(name) != source.fingerprint:
            run_requests.append(
                dg.RunRequest(
                    partition_key=name,
                    run_key=f"{name}:{source.fingerprint}",
                    tags={"llm_assets/trigger": "landing_sensor"},
                )
            )
            seen[name] = source.fingerprint
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[sources_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(seen, sort_keys=True),
    )
