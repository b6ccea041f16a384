"""Drift wiring: the day's sampled prompts against each task's training prompts, and the sensor that asks for
retraining when they drift.

`drift_report` (daily partitions) compares, per served model, the day's `production_samples` prompts with the
prompts of that task's current SFT training set (language mix, length, vocabulary, MMD two-sample test) and
writes the report to `monitoring/drift/<day>/report.json`. Drift is information, not a broken asset, so its
`no_drift` check warns. `retraining_sensor` reads new reports (cursor: the reports' digests, so the same
evidence never fires twice) and requests a `retraining` run per drifted task: SFT set -> LoRA adapter -> eval
report with its gates -> registered candidate. It never deploys: a person approves in the registry.
"""

import hashlib
import json
from datetime import date
from typing import Any

import dagster as dg
from pydantic import Field

from llm_assets.curation.quality import identify_languages
from llm_assets.defs.audit_trail import record_materialization
from llm_assets.defs.curation.assets import code_version_of
from llm_assets.defs.evaluation.reports import eval_report
from llm_assets.defs.monitoring.alerting import run_failure_alerts
from llm_assets.defs.monitoring.assets import (
    MONITORING_SAMPLES_JOB,
    SAMPLE_DAYS,
    production_samples,
    sample_retention,
    sample_retention_schedule,
)
from llm_assets.defs.monitoring.feedback import feedback_examples
from llm_assets.defs.registry.assets import registered_model
from llm_assets.defs.training.adaptation import lora_adapter
from llm_assets.defs.training.assets import SFT_PREFIX, SFT_TASKS, sft_dataset
from llm_assets.lake import LakeStorage
from llm_assets.lake.shards import read_dataset, read_manifest
from llm_assets.lake.storage import LakeKeyNotFound
from llm_assets.monitoring.drift import DriftThresholds, compare
from llm_assets.monitoring.samples import PRODUCTION_SAMPLES_DATASET
from llm_assets.plots import bar_chart
from llm_assets.resources.lake import LakeResource

DRIFT_PREFIX = "monitoring/drift"


class DriftReportConfig(dg.Config):
    """Thresholds of the drift views and the least evidence worth a verdict."""

    language_tvd: float = Field(default=0.2, gt=0, le=1, description="Language-mix total variation distance.")
    length_relative_change: float = Field(default=0.5, gt=0, description="Relative change of the median length.")
    vocabulary_js: float = Field(default=0.35, gt=0, le=1, description="Word-distribution Jensen-Shannon (bits).")
    mmd_p_value: float = Field(default=0.01, gt=0, lt=1, description="MMD permutation-test p-value below which.")
    min_samples: int = Field(default=10, ge=2, description="Fewer sampled prompts than this: no verdict.")


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
    code_version="drift_report-v1",
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
    context: dg.AssetExecutionContext, config: DriftReportConfig, lake: LakeResource
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
            result = compare(reference, prompts, languages=_languages, thresholds=thresholds)
            models[model] = {"verdict": "drifted" if result.drifted else "stable", **result.to_dict()}
        context.log.info(f"{model}: {models[model]['verdict']} ({len(prompts)} sampled prompts)")
    report = {
        "day": day.isoformat(),
        "production_samples_version": manifest.data_version,
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
                        "llm_assets/retrain_reason": "drift",
                        "llm_assets/evidence": info.key,
                        "llm_assets/evidence_sha256": digest,
                        "llm_assets/drift_reasons": "; ".join(result.get("reasons", []))[:250],
                    },
                )
            )
    return requests, seen


@dg.sensor(
    job=retraining_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests a retraining run per task whose production prompts drifted (never deploys).",
)
def retraining_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    requests, seen = new_drift_requests(lake.storage(), seen)
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(sorted(seen)))


def monitoring_definitions() -> dg.Definitions:
    sampling = dg.define_asset_job(
        MONITORING_SAMPLES_JOB,
        selection=dg.AssetSelection.assets(production_samples, drift_report),
        description="One day of sampled production traffic (PII re-scrubbed, rejects kept) and its drift report.",
    )
    return dg.Definitions(
        assets=[production_samples, drift_report, feedback_examples],
        jobs=[sample_retention, sampling, retraining_job],
        schedules=[sample_retention_schedule],
        sensors=[run_failure_alerts, retraining_sensor],
    )
