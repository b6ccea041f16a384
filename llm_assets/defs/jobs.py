"""The jobs of the code location: one per source partition, one over the whole corpus."""

import dagster as dg

from llm_assets.defs.curation.assets import normalized_shards, pii_scrubbed_shards
from llm_assets.defs.ingestion.assets import raw_corpus
from llm_assets.defs.training.assets import sft_dataset

CORPUS_PIPELINE_JOB = "corpus_pipeline"
CURATION_JOB = "corpus_curation"
SFT_JOB = "sft_datasets"

# Everything partitioned by source: ingest, normalise, scrub PII. The landing sensor starts it.
corpus_pipeline_job = dg.define_asset_job(
    CORPUS_PIPELINE_JOB,
    selection=dg.AssetSelection.assets(raw_corpus, normalized_shards, pii_scrubbed_shards),
    description="Ingest one landed source, normalise it and scrub PII.",
)

# Everything computed over all sources together: dedup, quality, perplexity, the curated corpus.
GLOBAL_CURATION = dg.AssetSelection.assets(pii_scrubbed_shards).downstream(
    include_self=False
) - dg.AssetSelection.assets(sft_dataset)

corpus_curation_job = dg.define_asset_job(
    CURATION_JOB,
    selection=GLOBAL_CURATION,
    description="Deduplicate across sources, filter by quality and perplexity, build curated splits.",
)

# Instruction data per task (partitioned by task), built from the curated corpus.
sft_datasets_job = dg.define_asset_job(
    SFT_JOB,
    selection=dg.AssetSelection.assets(sft_dataset),
    description="Build the SFT data sets (prompt/completion and chat messages) with their manifests.",
)
