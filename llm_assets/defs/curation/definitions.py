import dagster as dg

from llm_assets.defs.curation.assets import (
    curated_corpus,
    deduplicated_shards,
    normalized_shards,
    perplexity_scored_shards,
    pii_scrubbed_shards,
    quality_filtered_shards,
    reference_language_models,
)
from llm_assets.defs.jobs import GLOBAL_CURATION, corpus_curation_job

# When every source's scrubbed shards are in, the corpus-wide stages follow on their own.
curation_automation = dg.AutomationConditionSensorDefinition(
    "curation_automation",
    target=GLOBAL_CURATION,
    default_status=dg.DefaultSensorStatus.RUNNING,
)


def curation_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=[
            normalized_shards,
            pii_scrubbed_shards,
            deduplicated_shards,
            quality_filtered_shards,
            reference_language_models,
            perplexity_scored_shards,
            curated_corpus,
        ],
        jobs=[corpus_curation_job],
        sensors=[curation_automation],
    )
