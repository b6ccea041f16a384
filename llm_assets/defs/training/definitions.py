import dagster as dg

from llm_assets.defs.training.assets import tokenizer


def training_definitions() -> dg.Definitions:
    return dg.Definitions(assets=[tokenizer])
