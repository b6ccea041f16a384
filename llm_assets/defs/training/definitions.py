import dagster as dg

from llm_assets.defs.training.assets import base_model, tokenizer


def training_definitions() -> dg.Definitions:
    return dg.Definitions(assets=[tokenizer, base_model])
