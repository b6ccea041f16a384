"""The jobs of the code location: one per source partition, one over the whole corpus."""

import dagster as dg

from llm_assets.defs.curation.assets import normalized_shards, pii_scrubbed_shards
from llm_assets.defs.ingestion.assets import raw_corpus
from llm_assets.defs.training.adaptation import cpt_model, lora_adapter
from llm_assets.defs.training.assets import sft_dataset

# Runs that train or score a model hold a GPU node on a cluster: the production instance caps them by this tag
# (deploy/dagster.yaml, concurrency.runs.tag_concurrency_limits).
GPU_RUN_TAGS = {"llm_assets/gpu": "1"}

CORPUS_PIPELINE_JOB = "corpus_pipeline"
CURATION_JOB = "corpus_curation"
SFT_JOB = "task_adaptation"

# Everything partitioned by source: ingest, normalise, scrub PII. The landing sensor starts it.
corpus_pipeline_job = dg.define_asset_job(
    CORPUS_PIPELINE_JOB,
    selection=dg.AssetSelection.assets(raw_corpus, normalized_shards, pii_scrubbed_shards),
    description="Ingest one landed source, normalise it and scrub PII.",
)

# Everything computed over all sources together: dedup, quality, perplexity, the curated corpus, then the
# tokenizer, the base model and continued pre-training. Per-task assets run in the task job below.
PER_TASK = dg.AssetSelection.assets(sft_dataset, lora_adapter)
GLOBAL_CURATION = (
    dg.AssetSelection.assets(pii_scrubbed_shards).downstream(include_self=False)
    - PER_TASK.downstream()
    - dg.AssetSelection.groups("evaluation")
)

corpus_curation_job = dg.define_asset_job(
    CURATION_JOB,
    selection=GLOBAL_CURATION,
    description="Deduplicate across sources, filter by quality and perplexity, build curated splits.",
    tags=GPU_RUN_TAGS,
)

# Per task (partitioned by task): the SFT data set with its manifest, then the LoRA adapter trained on it.
task_adaptation_job = dg.define_asset_job(
    SFT_JOB,
    selection=PER_TASK,
    description="Build a task's SFT data set (prompt/completion and chat messages) and train its LoRA adapter.",
    tags=GPU_RUN_TAGS,
)

# One training asset each, for `llm-assets train` and the Launchpad: the config is the asset's own.
CPT_JOB = "continued_pretraining"
LORA_JOB = "lora_sft"
continued_pretraining_job = dg.define_asset_job(
    CPT_JOB,
    selection=dg.AssetSelection.assets(cpt_model),
    description="Continued pre-training of the base model.",
    tags=GPU_RUN_TAGS,
)
lora_sft_job = dg.define_asset_job(
    LORA_JOB,
    selection=dg.AssetSelection.assets(lora_adapter),
    description="Train one task's LoRA adapter.",
    tags=GPU_RUN_TAGS,
)

# The eval sets, after the SFT sets they are decontaminated against.
EVAL_JOB = "evaluation_sets"


evaluation_sets_job = dg.define_asset_job(
    EVAL_JOB,
    # eval_qa_validated is left to the review sensor: it runs when reviewers' labels land.
    selection=dg.AssetSelection.assets("eval_qa_pilot"),
    description="Build the pilot eval Q&A set (grounded, decontaminated, awaiting human review).",
)

# Per candidate base model (partitioned by candidate): baseline b on the eval set, then a short adaptation run
# whose held-out score at every evaluation gives the rate of adaptation ra.
BASELINE_JOB = "candidate_evaluation"
baseline_eval_job = dg.define_asset_job(
    BASELINE_JOB,
    selection=dg.AssetSelection.assets("baseline_eval", "adaptation_curve"),
    description="Score each candidate base model on the eval set before adaptation, then measure its rate of "
    "adaptation on the KPI task.",
)

# b, ra and projected cost side by side: the smallest candidate that reaches the KPI, and the route.
SELECTION_JOB = "candidate_selection"
model_selection_job = dg.define_asset_job(
    SELECTION_JOB,
    selection=dg.AssetSelection.assets("model_selection"),
    description="Pick the smallest candidate that reaches the KPI within budget; recommend a route.",
)

# Per task, once the eval set exists: the adapter's eval report with its gates, then (gates passed) its
# registration as a candidate in the model registry.
TASK_EVAL_JOB = "task_evaluation"
task_evaluation_job = dg.define_asset_job(
    TASK_EVAL_JOB,
    selection=dg.AssetSelection.assets("eval_report", "registered_model"),
    description="Evaluate each task's adapter against the base and the deployed model, gate it, and register it "
    "as a candidate.",
)
