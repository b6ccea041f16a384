"""Drift wiring: the day's sampled prompts against each task's training prompts, and the sensor that asks for
retraining when they drift.

`drift_report` (daily partitions) compares, per served model, the day's `production_samples` prompts with the
prompts of that task's current SFT training set (language mix, length, vocabulary, MMD two-sample test) and
writes the report to `monitoring/drift/<day>/report.json`. Drift is information, not a broken asset, so its
`no_drift` check warns. `retraining_sensor` reads new reports (cursor: the reports' digests, so the same
evidence never fires twice) and the accepted feedback examples per task (cursor: the count it last fired at),
and requests a `retraining` run per task that drifted or gained enough labelled examples: SFT set -> LoRA
adapter -> eval report with its gates -> registered candidate. It never deploys: a person approves in the registry.
"""

import hashlib
import json
import os
from datetime import date
from typing import Any

import dagster as dg
from pydantic import Field

from llm_assets.curation.quality import identify_languages
from llm_assets.defs.audit_trail import record_materialization
from llm_assets.defs.curation.assets import code_version_of
from llm_assets.defs.evaluation.reports import eval_report
from llm_assets.defs.jobs import GPU_RUN_TAGS
from llm_assets.defs.monitoring.alerting import run_failure_alerts
from llm_assets.defs.monitoring.assets import (
    MONITORING_SAMPLES_JOB,
    SAMPLE_DAYS,
    production_samples,
    sample_retention,
    sample_retention_schedule,
)
from llm_assets.defs.monitoring.feedback import feedback_examples
from llm_assets.defs.monitoring.quality import deployed_eval_job, deployed_model_eval, deployed_model_eval_monthly
from llm_assets.defs.registry.assets import registered_model
from llm_assets.defs.training.adaptation import lora_adapter
from llm_assets.defs.training.assets import SFT_PREFIX, SFT_TASKS, sft_dataset
from llm_assets.lake import LakeStorage
from llm_assets.lake.shards import read_dataset, read_manifest
from llm_assets.lake.storage import LakeKeyNotFound
from llm_assets.monitoring.alerts import Alert, AlertDeliveryError
from llm_assets.monitoring.drift import DriftThresholds, Embed, compare
from llm_assets.monitoring.embeddings import PACKAGED_MODEL, EmbeddingModelMissing, SentenceEmbedder
from llm_assets.monitoring.feedback import FEEDBACK_SFT_KEY
from llm_assets.monitoring.samples import PRODUCTION_SAMPLES_DATASET
from llm_assets.plots import bar_chart
from llm_assets.resources.alerts import AlertsResource
from llm_assets.resources.lake import LakeResource

DRIFT_PREFIX = "monitoring/drift"


class DriftReportConfig(dg.Config):
    """Thresholds of the drift views and the least evidence worth a verdict."""

    language_tvd: float = Field(default=0.2, gt=0, le=1, description="Language-mix total variation distance.")
    length_relative_change: float = Field(default=0.5, gt=0, description="Relative change of the median length.")
    vocabulary_js: float = Field(default=0.35, gt=0, le=1, description="Word-distribution Jensen-Shannon (bits).")
    mmd_p_value: float = Field(default=0.01, gt=0, lt=1, description="MMD permutation-test p-value below which.")
    min_samples: int = Field(default=10, ge=2, description="Fewer sampled prompts than this: no verdict.")
    embedding_model: str = Field(
        default=PACKAGED_MODEL,
        description=f"Vectors of the MMD test: {PACKAGED_MODEL} (packaged, offline), a local sentence-transformers "
        "folder, or 'hashed' for hashed character trigrams (no model).",
    )


def _reference_prompts(storage: LakeStorage, task: str) -> list[str] | None:
    try:
        prefix = json.loads(storage.read_bytes(f"{SFT_PREFIX}/{task}/current.json"))["prefix"]
        data = storage.read_bytes(f"{prefix}/train.prompt_completion.jsonl")
    except LakeKeyNotFound:
        return None
    return [json.loads(line)["prompt"] for line in data.splitlines() if line.strip()]


def _languages(texts: Any) -> list[str]:
    return identify_languages(list(texts))[0]


@dg.asset(
    partitions_def=SAMPLE_DAYS,
    deps=[production_samples],
    group_name="monitoring",
    code_version="drift_report-v2",
    check_specs=[
        dg.AssetCheckSpec(
            "no_drift",
            asset="drift_report",
            description="No served model's prompts drifted from its training prompts (warns; the sensor acts).",
        )
    ],
    description="Per served model: the day's sampled prompts against the task's training prompts.",
)
def drift_report(
    context: dg.AssetExecutionContext, config: DriftReportConfig, lake: LakeResource, alerts: AlertsResource
) -> dg.MaterializeResult:
    storage = lake.storage()
    day = date.fromisoformat(context.partition_key)
    manifest = read_manifest(storage, PRODUCTION_SAMPLES_DATASET, day.isoformat())
    if manifest is None:
        raise dg.Failure(f"no production_samples for {day}: materialize production_samples for that day first")
    samples = read_dataset(storage, manifest)
    thresholds = DriftThresholds(
        config.language_tvd, config.length_relative_change, config.vocabulary_js, config.mmd_p_value
    )
    embed: Embed | None = None
    embedding = ""
    if config.embedding_model != "hashed":
        try:
            embedder = SentenceEmbedder(config.embedding_model)
        except EmbeddingModelMissing as exc:
            raise dg.Failure(str(exc)) from exc
        embed, embedding = embedder, f"{embedder.name}@{embedder.fingerprint}"
    by_model: dict[str, list[str]] = {}
    for model, prompt in zip(samples.column("model").to_pylist(), samples.column("prompt").to_pylist(), strict=True):
        by_model.setdefault(model, []).append(prompt)
    models: dict[str, dict[str, Any]] = {}
    for model, prompts in sorted(by_model.items()):
        reference = _reference_prompts(storage, model)
        if reference is None:
            models[model] = {"verdict": "no reference", "note": f"no SFT set for {model}", "n_current": len(prompts)}
        elif len(prompts) < config.min_samples:
            models[model] = {"verdict": "too few samples", "n_current": len(prompts), "min_samples": config.min_samples}
        else:
            result = compare(
                reference,
                prompts,
                languages=_languages,
                thresholds=thresholds,
                embed=embed,
                embedding=None if embed is None else embedding,
            )
            models[model] = {"verdict": "drifted" if result.drifted else "stable", **result.to_dict()}
        context.log.info(f"{model}: {models[model]['verdict']} ({len(prompts)} sampled prompts)")
    report = {
        "day": day.isoformat(),
        "production_samples_version": manifest.data_version,
        "embedding": embedding or "hashed-char-trigrams",
        "models": models,
    }
    body = json.dumps(report, indent=2, ensure_ascii=False, sort_keys=True).encode("utf-8")
    version = hashlib.sha256(body).hexdigest()
    key = f"{DRIFT_PREFIX}/{day.isoformat()}/report.json"
    storage.write_bytes(key, body)
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={"production_samples": manifest.data_version},
        output_data_version=version,
        counts={"models": len(models), "drifted": sum(m["verdict"] == "drifted" for m in models.values())},
        config=config,
    )
    drifted = {m: r["reasons"] for m, r in models.items() if r["verdict"] == "drifted"}
    for model, reasons in drifted.items():
        try:
            alerts.send(
                Alert(
                    kind="drift",
                    severity="warning",
                    summary=f"{model}: production prompts of {day} drifted: {'; '.join(reasons)}"[:500],
                    details={"model": model, "day": day.isoformat(), "report": storage.uri(key)},
                )
            )
        except AlertDeliveryError as exc:
            context.log.error(f"alert not delivered: {exc}")
    metadata: dict[str, dg.RawMetadataValue] = {
        "report": dg.MetadataValue.path(storage.uri(key)),
        "verdicts": dg.MetadataValue.json({m: r["verdict"] for m, r in models.items()}),
        "drifted": dg.MetadataValue.json(drifted),
    }
    for model, r in models.items():
        if "language_current" in r:
            mix = {f"{lang} (training)": share for lang, share in r["language_reference"].items()}
            mix |= {f"{lang} (production)": share for lang, share in r["language_current"].items()}
            metadata[f"language_mix_{model}"] = dg.MetadataValue.md(
                bar_chart(mix, title=f"{model}: language share, training vs production", percent=True)
            )
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(version),
        check_results=[
            dg.AssetCheckResult(
                check_name="no_drift",
                passed=not drifted,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"drifted": dg.MetadataValue.json(drifted)},
            )
        ],
    )


RETRAINING_JOB = "retraining"
retraining_job = dg.define_asset_job(
    RETRAINING_JOB,
    selection=dg.AssetSelection.assets(sft_dataset, lora_adapter, eval_report, registered_model),
    description="Retrain one task: SFT set -> LoRA adapter -> eval report with gates -> registered candidate.",
    tags=GPU_RUN_TAGS,
)


def new_drift_requests(storage: LakeStorage, seen: set[str]) -> tuple[list[dg.RunRequest], set[str]]:
    """RunRequests for drifted tasks in reports not seen before (by digest), and the updated seen set."""
    tasks = set(SFT_TASKS.get_partition_keys())
    requests = []
    seen = set(seen)
    for info in sorted(storage.list_objects(f"{DRIFT_PREFIX}/"), key=lambda i: i.key):
        if not info.key.endswith("/report.json"):
            continue
        body = storage.read_bytes(info.key)
        digest = hashlib.sha256(body).hexdigest()[:16]
        if digest in seen:
            continue
        seen.add(digest)
        report = json.loads(body)
        for model, result in sorted(report.get("models", {}).items()):
            if result.get("verdict") != "drifted" or model not in tasks:
                continue
            requests.append(
                dg.RunRequest(
                    run_key=f"drift-{report['day']}-{model}-{digest}",
                    partition_key=model,
                    tags={
                        "llm_assets/retrain_reason": str(report.get("reason", "drift")),
                        "llm_assets/evidence": info.key,
                        "llm_assets/evidence_sha256": digest,
                        "llm_assets/drift_reasons": "; ".join(result.get("reasons", []))[:250],
                    },
                )
            )
    return requests, seen


MIN_NEW_LABELLED_ENV = "LLM_ASSETS_RETRAIN_MIN_LABELLED"
DEFAULT_MIN_NEW_LABELLED = 50


def min_new_labelled() -> int:
    """Y of "new labelled examples > Y": from the environment (sensors take no run config), default 50."""
    raw = os.environ.get(MIN_NEW_LABELLED_ENV, str(DEFAULT_MIN_NEW_LABELLED))
    try:
        value = int(raw)
    except ValueError:
        raise dg.Failure(f"{MIN_NEW_LABELLED_ENV}={raw!r} is not a whole number; set it to e.g. 50") from None
    if value < 1:
        raise dg.Failure(f"{MIN_NEW_LABELLED_ENV}={value} must be at least 1")
    return value


def new_labelled_requests(
    storage: LakeStorage, counted: dict[str, int], threshold: int
) -> tuple[list[dg.RunRequest], dict[str, int]]:
    """A RunRequest per task whose accepted feedback examples grew by at least `threshold` since the count
    in `counted` (the count when the sensor last asked for that task); returns the updated counts."""
    try:
        body = storage.read_bytes(FEEDBACK_SFT_KEY)
    except LakeKeyNotFound:
        return [], dict(counted)
    per_task: dict[str, int] = {}
    for line in body.splitlines():
        if line.strip():
            task = json.loads(line).get("task")
            per_task[task] = per_task.get(task, 0) + 1
    digest = hashlib.sha256(body).hexdigest()[:16]
    counted = dict(counted)
    requests = []
    for task in sorted(set(SFT_TASKS.get_partition_keys()) & set(per_task)):
        now, before = per_task[task], counted.get(task, 0)
        if now < before:  # the inbox was pruned: count from here
            counted[task] = now
        elif now - before >= threshold:
            counted[task] = now
            requests.append(
                dg.RunRequest(
                    run_key=f"labelled-{task}-{now}-{digest}",
                    partition_key=task,
                    tags={
                        "llm_assets/retrain_reason": "new_labelled_examples",
                        "llm_assets/evidence": FEEDBACK_SFT_KEY,
                        "llm_assets/evidence_sha256": digest,
                        "llm_assets/new_labelled_examples": str(now - before),
                        "llm_assets/min_new_labelled": str(threshold),
                    },
                )
            )
    return requests, counted


def _read_cursor(cursor: str | None) -> tuple[set[str], dict[str, int]]:
    if not cursor:
        return set(), {}
    state = json.loads(cursor)
    if isinstance(state, list):  # the first cursor format: report digests only
        return set(state), {}
    return set(state.get("reports", [])), {k: int(v) for k, v in state.get("labelled", {}).items()}


@dg.sensor(
    job=retraining_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests a retraining run per task whose production prompts drifted or whose accepted feedback "
    f"grew by {MIN_NEW_LABELLED_ENV} examples (default {DEFAULT_MIN_NEW_LABELLED}); never deploys.",
)
def retraining_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    seen, counted = _read_cursor(context.cursor)
    storage = lake.storage()
    drift_requests, seen = new_drift_requests(storage, seen)
    labelled_requests, counted = new_labelled_requests(storage, counted, min_new_labelled())
    # One run per task and tick: drift evidence first, the labelled count is already advanced.
    requested = {r.partition_key for r in drift_requests}
    requests = drift_requests + [r for r in labelled_requests if r.partition_key not in requested]
    return dg.SensorResult(
        run_requests=requests, cursor=json.dumps({"reports": sorted(seen), "labelled": counted}, sort_keys=True)
    )


def monitoring_definitions() -> dg.Definitions:
    sampling = dg.define_asset_job(
        MONITORING_SAMPLES_JOB,
        selection=dg.AssetSelection.assets(production_samples, drift_report),
        description="One day of sampled production traffic (PII re-scrubbed, rejects kept) and its drift report.",
    )
    return dg.Definitions(
        assets=[production_samples, drift_report, feedback_examples, deployed_model_eval],
        jobs=[sample_retention, sampling, retraining_job, deployed_eval_job],
        schedules=[sample_retention_schedule, deployed_model_eval_monthly],
        sensors=[run_failure_alerts, retraining_sensor],
    )
