"""Output-quality drift: the deployed model re-scored, monthly, against the score it was approved on.

`deployed_model_eval` (per task) loads the version the registry says is serving, scores it on the task's
held-out test split (the business eval the gates used) and on reviewer-labelled production prompts (the
accepted corrections of `feedback_examples`: real traffic with a known right answer). When the labelled
production score falls more than `max_drop` below the score recorded at registration, the report says
`drifted`; the report is written under `monitoring/drift/quality/`, where `retraining_sensor` reads it like a
prompt-drift report, and an alert goes out. `deployed_model_eval_monthly` runs it on the 1st of each month
for every task with a deployed version.
"""

import hashlib
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from llm_assets.defs.audit_trail import record_materialization
from llm_assets.defs.curation.assets import code_version_of
from llm_assets.defs.evaluation.reports import EVAL_REPORT_PREFIX, HEADLINE, TASK_KINDS
from llm_assets.defs.monitoring.feedback import feedback_examples
from llm_assets.defs.registry.assets import registered_model
from llm_assets.defs.training.adaptation import ADAPTER_PREFIX, CPT_PREFIX, current_pointer
from llm_assets.defs.training.assets import SFT_PREFIX, SFT_TASKS
from llm_assets.evaluation.task_eval import TaskEvalError, evaluate_task
from llm_assets.lake import LakeError, LakeStorage
from llm_assets.lake.storage import LakeKeyNotFound
from llm_assets.monitoring.alerts import Alert, AlertDeliveryError
from llm_assets.monitoring.feedback import FEEDBACK_SFT_KEY
from llm_assets.plots import bar_chart
from llm_assets.registry import ModelRegistry
from llm_assets.resources.alerts import AlertsResource
from llm_assets.resources.lake import LakeResource
from llm_assets.training.base_model import download_prefix

QUALITY_PREFIX = "monitoring/drift/quality"
DEPLOYED_EVAL_JOB = "deployed_model_evaluation"


class DeployedModelEvalConfig(dg.Config):
    max_drop: float = Field(
        default=0.10,
        ge=0,
        le=1,
        description="Largest drop of the headline metric on labelled production prompts below the score at "
        "registration before the report says drifted.",
    )
    min_labelled: int = Field(default=10, ge=1, description="Fewer labelled production prompts: no verdict.")
    max_labelled: int = Field(default=500, ge=1, description="Score at most this many (the newest) labelled rows.")
    max_new_tokens: int | None = Field(
        default=None, ge=1, le=512, description="Decoding length; default: the registration eval report's."
    )


def labelled_production_rows(storage: LakeStorage, task: str, limit: int) -> list[dict[str, Any]]:
    """The task's accepted feedback corrections as eval rows (prompt, completion = the reviewer's answer)."""
    try:
        body = storage.read_bytes(FEEDBACK_SFT_KEY)
    except LakeKeyNotFound:
        return []
    rows = [json.loads(line) for line in body.splitlines() if line.strip()]
    picked = [r for r in rows if r.get("task") == task][-limit:]
    return [
        {
            "id": r["id"],
            "prompt": r["prompt"],
            "completion": r["completion"] if r["completion"][:1].isspace() else f" {r['completion'].strip()}",
            "lang": r.get("lang") or "und",
        }
        for r in picked
    ]


def _registration_decoding(storage: LakeStorage, task: str, lineage: dict[str, Any]) -> int:
    """max_new_tokens of the eval report the version was registered with (32 when it cannot be found)."""
    report_version = lineage.get("eval_report")
    if not report_version:
        return 32
    try:
        report = json.loads(storage.read_bytes(f"{EVAL_REPORT_PREFIX}/{task}/{report_version[:16]}/report.json"))
    except LakeKeyNotFound:
        return 32
    return int(report["adapted"]["manifest"]["decoding"]["max_new_tokens"])


def quality_verdict(
    registered: float | None, production: float | None, n_labelled: int, config: DeployedModelEvalConfig
) -> tuple[str, list[str]]:
    if registered is None:
        return "no registered score", []
    if production is None or n_labelled < config.min_labelled:
        return "too few labels", []
    if production < registered - config.max_drop:
        return "drifted", [
            f"on {n_labelled} labelled production prompts the score is {production:.3f}, "
            f"{registered - production:.3f} below {registered:.3f} at registration (max drop {config.max_drop})"
        ]
    return "stable", []


@dg.asset(
    deps=[registered_model, feedback_examples],
    partitions_def=SFT_TASKS,
    group_name="monitoring",
    code_version="deployed_model_eval-v1",
    kinds={"json"},
    check_specs=[
        dg.AssetCheckSpec(
            "output_quality_stable",
            asset="deployed_model_eval",
            description="The deployed model scores on labelled production prompts within max_drop of its "
            "registration score (warns; retraining_sensor acts).",
        )
    ],
    description="The deployed version re-scored on the test split and on reviewer-labelled production prompts.",
)
def deployed_model_eval(
    context: dg.AssetExecutionContext, config: DeployedModelEvalConfig, lake: LakeResource, alerts: AlertsResource
) -> dg.MaterializeResult:
    storage = lake.storage()
    task = context.partition_key
    kind = TASK_KINDS[task]
    headline = HEADLINE[kind]
    entry = ModelRegistry(storage).deployed(task)
    if entry is None:
        raise dg.Failure(f"no deployed version of {task} in the registry: deploy one (serving job) before evaluating")
    data = current_pointer(storage, f"{SFT_PREFIX}/{task}")
    test_lines = storage.read_bytes(f"{data['prefix']}/test.prompt_completion.jsonl").splitlines()
    test = [json.loads(line) for line in test_lines if line.strip()]
    sft_version = json.loads(storage.read_bytes(f"{data['prefix']}/manifest.json"))["version"]
    labelled = labelled_production_rows(storage, task, config.max_labelled)
    served = f"{ADAPTER_PREFIX}/{task}/{entry.version[:16]}"
    try:
        lineage = json.loads(storage.read_bytes(f"{served}/lineage.json"))
        max_new_tokens = config.max_new_tokens or _registration_decoding(storage, task, entry.lineage)
        decode = {"max_new_tokens": max_new_tokens}
        with tempfile.TemporaryDirectory(prefix="deployed-eval-") as tmp:
            model_dir = download_prefix(storage, f"{CPT_PREFIX}/{lineage['cpt_model'][:16]}", Path(tmp) / "model")
            adapter_dir = download_prefix(storage, f"{served}/adapter", Path(tmp) / "adapter")
            context.log.info(f"{task} {entry.version[:16]}: {len(test)} test rows, {len(labelled)} labelled prompts")
            on_test = evaluate_task(model_dir, test, kind, adapter_dir=adapter_dir, **decode)
            on_production = (
                evaluate_task(model_dir, labelled, kind, adapter_dir=adapter_dir, **decode) if labelled else None
            )
    except (TaskEvalError, LakeError, ValueError, KeyError) as exc:
        raise dg.Failure(f"deployed_model_eval {task}: {str(exc).splitlines()[0]}") from exc
    registered = (entry.eval_metrics.get("task") or {}).get(headline)
    test_score = float(on_test["overall"][headline])
    production = float(on_production["overall"][headline]) if on_production else None
    verdict, reasons = quality_verdict(registered, production, len(labelled), config)
    day = datetime.now(UTC).date().isoformat()
    result = {
        "verdict": verdict,
        "reasons": reasons,
        "version": entry.version,
        "headline_metric": headline,
        "registered_score": registered,
        "test_score": test_score,
        "test_rows": len(test),
        "sft_data_prefix": data["prefix"],
        "sft_data_version": sft_version,
        "production_score": production,
        "labelled_rows": len(labelled),
        "max_drop": config.max_drop,
        "decoding": {"strategy": "greedy", "max_new_tokens": decode["max_new_tokens"]},
        "test": {k: on_test[k] for k in ("overall", "per_language", "manifest", "samples")},
        "production": (
            {k: on_production[k] for k in ("overall", "per_language", "manifest", "samples")} if on_production else None
        ),
    }
    report = {"day": day, "reason": "output_quality_drift", "models": {task: result}}
    body = json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False).encode()
    version = hashlib.sha256(body).hexdigest()
    key = f"{QUALITY_PREFIX}/{task}/{day}/report.json"
    storage.write_bytes(key, body)
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={f"registered_model/{task}": entry.version, f"sft_dataset/{task}": sft_version}
        | ({"feedback_examples": hashlib.sha256(json.dumps(labelled).encode()).hexdigest()} if labelled else {}),
        output_data_version=version,
        counts={"test_rows": len(test), "labelled_rows": len(labelled)},
        config=config.model_dump(),
    )
    if verdict == "drifted":
        try:
            alerts.send(
                Alert(
                    kind="output_quality_drift",
                    severity="warning",
                    summary=f"{task} {entry.version[:16]}: {reasons[0]}",
                    details={"task": task, "version": entry.version, "report": storage.uri(key)},
                )
            )
        except AlertDeliveryError as exc:
            context.log.error(f"alert not delivered: {exc}")
    scores = {"at registration": registered or 0.0, "test split now": test_score}
    if production is not None:
        scores["labelled production"] = production
    context.log.info(f"{task}: {verdict} ({headline} {scores})")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "verdict": verdict,
            "metric": headline,
            "registered_score": dg.MetadataValue.float(float(registered)) if registered is not None else None,
            "test_score": dg.MetadataValue.float(test_score),
            "production_score": dg.MetadataValue.float(production) if production is not None else None,
            "labelled_rows": len(labelled),
            "report": dg.MetadataValue.path(storage.uri(key)),
            "scores": dg.MetadataValue.md(bar_chart(scores, title=f"{task}: {headline} of the deployed version")),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="output_quality_stable",
                passed=verdict != "drifted",
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"verdict": verdict, "reasons": dg.MetadataValue.json(reasons)},
            )
        ],
    )


deployed_eval_job = dg.define_asset_job(
    DEPLOYED_EVAL_JOB,
    selection=dg.AssetSelection.assets(deployed_model_eval),
    description="Re-score each deployed model on its test split and on labelled production prompts.",
)


def deployed_tasks(storage: LakeStorage) -> list[str]:
    registry = ModelRegistry(storage)
    return [task for task in SFT_TASKS.get_partition_keys() if registry.deployed(task) is not None]


@dg.schedule(
    cron_schedule="0 4 1 * *",
    job=deployed_eval_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Monthly: the eval suite re-run on every deployed model (one run per task with a deployment).",
)
def deployed_model_eval_monthly(
    context: dg.ScheduleEvaluationContext, lake: LakeResource
) -> dg.SkipReason | list[dg.RunRequest]:
    month = context.scheduled_execution_time.strftime("%Y-%m")
    tasks = deployed_tasks(lake.storage())
    if not tasks:
        return dg.SkipReason("no task has a deployed version in the registry")
    return [
        dg.RunRequest(run_key=f"monthly-eval-{month}-{task}", partition_key=task, tags={"llm_assets/eval": "monthly"})
        for task in tasks
    ]
