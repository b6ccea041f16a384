import dagster as dg

from llm_assets.defs.evaluation.assets import eval_qa_pilot
from llm_assets.defs.evaluation.review import review_definitions
from llm_assets.defs.jobs import evaluation_sets_job


def evaluation_definitions() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.Definitions(assets=[eval_qa_pilot], jobs=[evaluation_sets_job]), review_definitions()
    )
