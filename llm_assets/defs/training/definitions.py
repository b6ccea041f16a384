import dagster as dg

from llm_assets.defs.jobs import continued_pretraining_job, lora_sft_job, task_adaptation_job
from llm_assets.defs.training.adaptation import cpt_model, dpo_adapter, lora_adapter, lora_sweep_trial, sweep_selection
from llm_assets.defs.training.assets import base_model, sft_dataset, tokenizer


def training_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=[
            tokenizer,
            base_model,
            sft_dataset,
            cpt_model,
            lora_adapter,
            lora_sweep_trial,
            sweep_selection,
            dpo_adapter,
        ],
        jobs=[task_adaptation_job, continued_pretraining_job, lora_sft_job],
    )
