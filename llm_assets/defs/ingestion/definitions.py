import dagster as dg

from llm_assets.defs.ingestion.assets import raw_corpus
from llm_assets.defs.ingestion.sensors import landing_sensor
from llm_assets.defs.jobs import corpus_pipeline_job


def ingestion_definitions() -> dg.Definitions:
    return dg.Definitions(assets=[raw_corpus], jobs=[corpus_pipeline_job], sensors=[landing_sensor])
