"""Rate of adaptation per candidate and the model selection that weighs it against baseline b and cost.

`adaptation_curve` adapts each candidate base briefly on the KPI task through the same trainer and compute
resource as the real runs, scoring held-out examples at every evaluation; `model_selection` puts b, ra and
the projected cost side by side, picks the smallest candidate that reaches the KPI within budget and
recommends a route by the decision matrix.
"""

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pyarrow.compute as pc
from pydantic import Field

from llm_assets.curation import pipeline
from llm_assets.defs.audit_trail import record_materialization
from llm_assets.defs.curation.assets import code_version_of, curated_corpus
from llm_assets.defs.evaluation.assets import BASELINE_PREFIX, CANDIDATES, baseline_eval, stage_candidate
from llm_assets.defs.ingestion.partitions import sources_partitions
from llm_assets.defs.training.adaptation import (
    ADAPTER_PREFIX,
    _write_jsonl,
    current_pointer,
    lora_adapter,
    split_validation,
)
from llm_assets.defs.training.assets import SFT_PREFIX, SFT_TASKS, sft_dataset, tokenizer
from llm_assets.evaluation.selection import (
    SelectionError,
    candidate,
    fit_rate,
    recommend_route,
    select,
    selection_table,
)
from llm_assets.lake import LakeError, LakeStorage, iter_shards
from llm_assets.plots import line_chart
from llm_assets.resources.lake import LakeResource
from llm_assets.resources.training_compute import TrainingCompute
from llm_assets.training.base_model import ModelError
from llm_assets.training.config import TrainingConfig

ADAPTATION_PREFIX = "evaluation/adaptation"
SELECTION_PREFIX = "evaluation/selection"


def _jsonl(storage: LakeStorage, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in storage.read_bytes(key).splitlines() if line.strip()]


def curve_plot(curves: dict[str, list[dict[str, Any]]], title: str, kpi: float | None = None) -> str:
    return line_chart(
        {name: [(p["tokens"] / 1e6, p["score"]) for p in points] for name, points in curves.items()},
        title=title,
        xlabel="training tokens (millions)",
        ylabel="held-out score",
        hlines={f"KPI {kpi:g}": kpi} if kpi is not None else None,
    )


class AdaptationCurveConfig(dg.Config):
    """A short adaptation run of one candidate on the KPI task, scoring held-out examples at each evaluation."""

    task: str = Field(default="banking77_intents", description="The SFT task whose held-out score is the KPI.")
    source: str = Field(
        default="",
        description="Empty: the candidate's size, random init on the project tokenizer (embedded default). "
        "'path:/dir' or 'lake:prefix': a staged open-weight candidate.",
    )
    method: Literal["full", "lora"] = Field(
        default="full", description="Full fine-tune (random-init candidates: a low-rank update cannot adapt them)."
    )
    epochs: float = Field(default=8.0, gt=0)
    max_steps: int = Field(default=0, ge=0)
    learning_rate: float = Field(default=2e-3, gt=0)
    batch_size: int = Field(default=16, ge=1)
    eval_points: int = Field(default=6, ge=2, description="Points on the curve besides the one before training.")
    curve_examples: int = Field(default=64, ge=1, description="Held-out examples scored at every point.")
    validation_share: float = Field(default=0.1, gt=0, lt=0.5)
    hourly_cost_usd: float = Field(
        default=0.10,
        ge=0,
        description="Price of one hour of the compute the run used (the embedded default: a 2-vCPU instance); "
        "turns training seconds into cost.",
    )
    seed: int = 0


@dg.asset(
    deps=[sft_dataset, tokenizer],
    partitions_def=CANDIDATES,
    group_name="evaluation",
    code_version="adaptation_curve-v1",
    kinds={"pytorch", "json"},
)
def adaptation_curve(
    context: dg.AssetExecutionContext,
    config: AdaptationCurveConfig,
    lake: LakeResource,
    training_compute: TrainingCompute,
) -> dg.MaterializeResult:
    """Held-out score vs training tokens, steps, wall time and cost for one candidate; ra is the fitted slope."""
    storage = lake.storage()
    name = context.partition_key
    if config.task not in SFT_TASKS.get_partition_keys():
        raise dg.Failure(f"task {config.task!r}: not an SFT task; use one of {SFT_TASKS.get_partition_keys()}")
    data = current_pointer(storage, f"{SFT_PREFIX}/{config.task}")
    sft_manifest = json.loads(storage.read_bytes(f"{data['prefix']}/manifest.json"))
    rows = _jsonl(storage, f"{data['prefix']}/train.prompt_completion.jsonl")
    test = _jsonl(storage, f"{data['prefix']}/test.prompt_completion.jsonl")
    train, validation = split_validation(rows, config.validation_share, config.seed)
    training = TrainingConfig(
        mode="sft",
        method=config.method,
        epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        eval_points=config.eval_points,
        checkpoint_points=1,
        keep_best=False,
        curve_examples=config.curve_examples,
        probe_generations=0,
        seed=config.seed,
    )
    with tempfile.TemporaryDirectory(prefix="adaptation-") as tmp:
        work = Path(tmp)
        try:
            model_dir, parameters = stage_candidate(storage, name, config.source, work)
        except (ModelError, LakeError) as exc:
            raise dg.Failure(f"adaptation_curve {name}: {str(exc).splitlines()[0]}") from exc
        _write_jsonl(work / "data" / "train.jsonl", train)
        _write_jsonl(work / "data" / "eval.jsonl", validation)
        _write_jsonl(work / "data" / "test.jsonl", test)
        result = training_compute.run(
            context,
            job_name=f"adaptation-{name}-{context.run.run_id[:8]}",
            spec={"config": training.model_dump()},
            channels={"model": model_dir, "data": work / "data"},
            output_dir=work / "output",
        )
    points = [
        {**p, "cost_usd": round(p["train_seconds"] / 3600 * config.hourly_cost_usd, 8)}
        for p in result["adaptation_curve"]
    ]
    try:
        fit = fit_rate(points)
    except SelectionError as exc:
        raise dg.Failure(f"adaptation_curve {name}: {exc}") from exc
    report = {
        "candidate": name,
        "parameters": parameters,
        "task": config.task,
        "sft_data_version": sft_manifest["version"],
        "curve": points,
        "curve_examples": result["curve_examples"],
        "fit": {**fit.__dict__, "ra_per_hour": fit.ra_per_hour},
        "hourly_cost_usd": config.hourly_cost_usd,
        "training_config": training.model_dump(),
        "tokens_per_second": result["tokens_per_second"],
    }
    payload = json.dumps(report, indent=2, sort_keys=True).encode()
    version = hashlib.sha256(payload).hexdigest()
    storage.write_bytes(f"{ADAPTATION_PREFIX}/{name}/{version[:16]}/curve.json", payload)
    storage.write_bytes(
        f"{ADAPTATION_PREFIX}/{name}/current.json",
        json.dumps({"version": version, "prefix": f"{ADAPTATION_PREFIX}/{name}/{version[:16]}"}).encode(),
    )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={f"sft_dataset/{config.task}": sft_manifest["version"]},
        output_data_version=version,
        counts={"points": len(points), "steps": result["global_step"]},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "ra_per_million_tokens": dg.MetadataValue.float(fit.ra_per_million_tokens),
            "fit_r2": dg.MetadataValue.float(fit.r2),
            "fit_points": fit.points_used,
            "b_on_task": dg.MetadataValue.float(float(points[0]["score"])),
            "best_score": dg.MetadataValue.float(max(float(p["score"]) for p in points)),
            "parameters": parameters,
            "cost_usd": dg.MetadataValue.float(float(points[-1]["cost_usd"])),
            "curve": dg.MetadataValue.json(points),
            "curve_plot": dg.MetadataValue.md(curve_plot({name: points}, f"Adaptation of {name} on {config.task}")),
        },
    )


class ModelSelectionConfig(dg.Config):
    """The KPI and budget a candidate must meet, and the thresholds of the decision matrix."""

    task: str = "banking77_intents"
    kpi: float = Field(default=0.5, gt=0, le=1, description="Held-out score on the task the model must reach.")
    budget_usd: float = Field(default=5.0, ge=0, description="Most the adaptation to the KPI may cost.")
    hourly_cost_usd: float = Field(default=0.10, ge=0, description="Price of an hour of the training compute.")
    min_labelled_examples: int = Field(default=100, ge=0)
    max_extrapolation: float = Field(
        default=2.0, ge=1, description="Trust a straight-line projection up to this multiple of the measured tokens."
    )
    min_unlabelled_chars: int = Field(
        default=500_000,
        ge=0,
        description="Curated train-split characters that count as a large unlabelled in-domain corpus (the sample's "
        "scale; a national-language deployment sets billions).",
    )
    coverage_margin: float = Field(
        default=0.05, ge=0, le=1, description="Benchmark baselines this close to chance mean poor coverage."
    )


def _current_json(storage: LakeStorage, prefix: str, name: str) -> dict[str, Any] | None:
    """The `name` file of an asset's current version (with that version under "_version"), None if never built."""
    try:
        pointer = json.loads(storage.read_bytes(f"{prefix}/current.json"))
        key = f"{pointer['prefix']}/{name}" if "prefix" in pointer else f"{prefix}/{pointer['version'][:16]}/{name}"
        return {**json.loads(storage.read_bytes(key)), "_version": pointer["version"]}
    except LakeError:
        return None


def _unlabelled_chars(storage: LakeStorage, sources: list[str]) -> int:
    total = 0
    for source in sources:
        for shard in iter_shards(storage, pipeline.input_manifest(storage, pipeline.CURATED, source)):
            train = shard.filter(pc.equal(shard["split"], "train"))
            total += int(pc.sum(pc.utf8_length(train["text"])).as_py() or 0)
    return total


@dg.asset(
    deps=[baseline_eval, adaptation_curve, lora_adapter, curated_corpus],
    group_name="evaluation",
    code_version="model_selection-v1",
    kinds={"json"},
)
def model_selection(
    context: dg.AssetExecutionContext, config: ModelSelectionConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """The smallest candidate that reaches the KPI within budget, with b, ra and cost side by side and a route."""
    storage = lake.storage()
    evidence, missing, versions = [], [], {}
    for name in CANDIDATES.get_partition_keys():
        curve = _current_json(storage, f"{ADAPTATION_PREFIX}/{name}", "curve.json")
        if curve is None or curve["task"] != config.task:
            missing.append(name)
            continue
        baseline = _current_json(storage, f"{BASELINE_PREFIX}/{name}", "report.json")
        versions[f"adaptation_curve/{name}"] = curve["_version"]
        if baseline:
            versions[f"baseline_eval/{name}"] = baseline["_version"]
        benchmark = float(baseline["metrics"]["acc"]) if baseline else None
        points = [{**p, "cost_usd": p["train_seconds"] / 3600 * config.hourly_cost_usd} for p in curve["curve"]]
        evidence.append(
            candidate(
                name,
                points,
                kpi=config.kpi,
                hourly_cost=config.hourly_cost_usd,
                parameters=curve["parameters"],
                benchmark=benchmark,
                chance=float(baseline["chance"]) if baseline else 0.25,
                benchmark_items=int(baseline["items_scored"] or 0) if baseline else None,
                max_extrapolation=config.max_extrapolation,
            )
        )
    if not evidence:
        raise dg.Failure(
            f"no adaptation curve for task {config.task!r}; materialize adaptation_curve for at least one candidate"
        )
    data = current_pointer(storage, f"{SFT_PREFIX}/{config.task}")
    labelled = len(_jsonl(storage, f"{data['prefix']}/train.prompt_completion.jsonl"))
    sources = sorted(context.instance.get_dynamic_partitions(sources_partitions.name or "sources"))
    unlabelled = _unlabelled_chars(storage, sources)
    chosen = select(evidence, budget=config.budget_usd)
    route = recommend_route(
        evidence,
        kpi=config.kpi,
        budget=config.budget_usd,
        labelled_examples=labelled,
        unlabelled_chars=unlabelled,
        min_labelled_examples=config.min_labelled_examples,
        min_unlabelled_chars=config.min_unlabelled_chars,
        coverage_margin=config.coverage_margin,
    )
    # The route the project trained (CPT, then the task's LoRA adapter), for comparison with direct adaptation.
    trained = _current_json(storage, f"{ADAPTER_PREFIX}/{config.task}", "adapter/training_result.json")
    curves = {c.name: c.curve for c in evidence}
    if trained and trained.get("adaptation_curve"):
        curves["trained route (CPT + LoRA)"] = trained["adaptation_curve"]
    table = selection_table(evidence, chosen.chosen, config.kpi)
    report = {
        "task": config.task,
        "kpi": config.kpi,
        "budget_usd": config.budget_usd,
        "chosen": chosen.chosen,
        "why": chosen.why,
        "within_budget": chosen.within_budget,
        "route": route.to_dict(),
        "candidates": [
            {
                "name": c.name,
                "parameters": c.parameters,
                "benchmark_b": c.benchmark,
                "b_on_task": c.b,
                "best": c.best,
                "fit": c.fit.__dict__,
                "projection": c.projection.__dict__,
            }
            for c in evidence
        ],
        "not_evaluated": missing,
        "labelled_examples": labelled,
        "unlabelled_chars": unlabelled,
        "trained_route_best": max((p["score"] for p in curves.get("trained route (CPT + LoRA)", [])), default=None),
    }
    payload = json.dumps(report, indent=2, sort_keys=True, default=str).encode()
    version = hashlib.sha256(payload).hexdigest()
    storage.write_bytes(f"{SELECTION_PREFIX}/{version[:16]}/selection.json", payload)
    storage.write_bytes(f"{SELECTION_PREFIX}/current.json", json.dumps({"version": version}).encode())
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions=versions,
        output_data_version=version,
        counts={"candidates": len(evidence)},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "chosen": chosen.chosen or "none",
            "why": chosen.why,
            "route": route.route,
            "route_reason": route.reason,
            "selection_table": dg.MetadataValue.md(table),
            "decision_matrix": dg.MetadataValue.json([row.__dict__ for row in route.rows]),
            "curves_plot": dg.MetadataValue.md(
                curve_plot(curves, f"Held-out score while adapting ({config.task})", config.kpi)
            ),
            "not_evaluated": dg.MetadataValue.json(missing),
        },
    )
