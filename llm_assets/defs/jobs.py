"""The jobs of the code location: one per source partition, one over the whole corpus."""

import dagster as dg

from llm_assets.defs.curation.assets import normalized_shards, pii_scrubbed_shards
from llm_assets.defs.ingestion.assets import raw_corpus

CORPUS_PIPELINE_JOB = "corpus_pipeline"
CURATION_JOB = "corpus_curation"

# Everything partitioned by source: ingest, normalise, scrub PII. The landing sensor starts it.
corpus_pipeline_job = dg.define_asset_job(
    CORPUS_PIPELINE_JOB,
    selection=dg.AssetSelection.assets(raw_corpus, normalized_shards, pii_scrubbed_shards),
    description="Ingest one landed source, normalise it and scrub PII.",
)

# Everything computed over all sources together: dedup, quality, perplexity, the curated corpus.
GLOBAL_CURATION = dg.AssetSelection.assets(pii_scrubbed_shards).downstream(include_self=False)

corpus_curation_job = dg.define_asset_job(
    CURATION_JOB,
    selection=GLOBAL_CURATION,
    description="Deduplicate across sources, filter by quality and perplexity, build curated splits.",
)
