import dagster as dg

from llm_assets.defs.evaluation.assets import baseline_eval, eval_qa_pilot
from llm_assets.defs.evaluation.reports import eval_report
from llm_assets.defs.evaluation.review import review_definitions
from llm_assets.defs.evaluation.selection import adaptation_curve, model_selection
from llm_assets.defs.jobs import baseline_eval_job, evaluation_sets_job, model_selection_job, task_evaluation_job


def evaluation_definitions() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.Definitions(
            assets=[eval_qa_pilot, baseline_eval, adaptation_curve, model_selection, eval_report],
            jobs=[evaluation_sets_job, baseline_eval_job, model_selection_job, task_evaluation_job],
        ),
        review_definitions(),
    )
