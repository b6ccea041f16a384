import dagster as dg

from llm_assets.defs.jobs import sft_datasets_job
from llm_assets.defs.training.assets import base_model, sft_dataset, tokenizer


def training_definitions() -> dg.Definitions:
    return dg.Definitions(assets=[tokenizer, base_model, sft_dataset], jobs=[sft_datasets_job])
