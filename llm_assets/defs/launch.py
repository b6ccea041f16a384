"""Runs the main job from the CLI against the real instance, so runs show up in the Dagster UI."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from llm_assets.defs.evaluation.assets import CANDIDATES
from llm_assets.defs.ingestion.partitions import sources_partitions
from llm_assets.defs.jobs import (
    BASELINE_JOB,
    CORPUS_PIPELINE_JOB,
    CURATION_JOB,
    EVAL_JOB,
    SELECTION_JOB,
    SFT_JOB,
    TASK_EVAL_JOB,
)
from llm_assets.defs.training.assets import SFT_TASKS
from llm_assets.ingestion.landing import scan_landing
from llm_assets.lake import LakeStorage


@dataclass
class Materialized:
    asset: str
    partition: str | None
    rows: int | None
    data_version: str | None
    note: str = ""  # a headline figure, e.g. held-out accuracy before and after training


@dataclass
class CheckOutcome:
    asset: str
    check: str
    passed: bool
    blocking_severity: bool = True  # False for WARN checks: a failure is reported, nothing is stopped


@dataclass
class PartitionRun:
    partition: str
    run_id: str
    success: bool
    materialized: list[Materialized] = field(default_factory=list)
    checks: list[CheckOutcome] = field(default_factory=list)
    error: str | None = None


def register_landed_sources(instance: dg.DagsterInstance, storage: LakeStorage) -> tuple[list[str], list[str]]:
    """Adds every valid landing folder as a `sources` partition; returns (valid sources, problems)."""
    found = scan_landing(storage)
    valid = [name for name, src in found.items() if src.descriptor is not None]
    problems = [f"{name}: {src.error}" for name, src in found.items() if src.descriptor is None]
    partitions_name = sources_partitions.name or "sources"
    known = set(instance.get_dynamic_partitions(partitions_name))
    missing = [name for name in valid if name not in known]
    if missing:
        instance.add_dynamic_partitions(partitions_name, missing)
    return valid, problems


def _first_error(result: dg.ExecuteInProcessResult) -> str | None:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            while (
                error is not None and error.cause is not None and "DagsterExecutionStepExecutionError" in error.cls_name
            ):
                error = error.cause
            if error is not None:
                return f"{event.step_key}: {error.message.strip().splitlines()[0]}"
    return None


def _headline(metadata: Mapping[str, Any]) -> str:
    after = metadata.get("accuracy_after")
    before = metadata.get("accuracy_before")
    if after is not None and after.value is not None:
        start = f"{before.value:.1%} -> " if before is not None and before.value is not None else ""
        return f"held-out accuracy {start}{after.value:.1%}"
    baseline = metadata.get("baseline_acc")
    if baseline is not None:
        return f"baseline accuracy {baseline.value:.1%} (chance 25.0%)"
    metric = metadata.get("metric")
    if metric is not None and "score_without_adapter" in metadata:
        before, after = metadata["score_without_adapter"].value, metadata["score"].value
        return f"test {metric.value} {before:.3f} without the adapter -> {after:.3f} with it"
    ra = metadata.get("ra_per_million_tokens")
    if ra is not None:
        start, best = metadata["b_on_task"].value, metadata["best_score"].value
        return f"held-out score {start:.1%} -> best {best:.1%}, ra {ra.value:.3g} per 1M tokens"
    url = metadata.get("url")
    if url is not None:
        return f"serving at {url.value}"
    p99 = metadata.get("p99_e2e_s")
    if p99 is not None and p99.value is not None:
        tps = metadata["output_tokens_per_s"].value
        return f"p99 latency {p99.value:.2f} s, {tps:.0f} output tokens/s, errors {metadata['error_rate'].value:.1%}"
    lines = metadata.get("lines")
    if lines is not None and "residual_pii_by_kind" in metadata:
        return (
            f"{metadata['kept'].value} of {lines.value} sampled requests kept (PII re-scrubbed), "
            f"{metadata['rejected'].value} rejected"
        )
    registered = metadata.get("registered_score")
    if registered is not None and "test_score" in metadata:
        at = f"{registered.value:.3f}" if registered.value is not None else "n/a"
        return (
            f"deployed version: test {metadata['metric'].value} {metadata['test_score'].value:.3f} (at registration "
            f"{at}); {metadata['labelled_rows'].value} labelled production prompts: {metadata['verdict'].value}"
        )
    reports = metadata.get("reports")
    if reports is not None and "gaps" in metadata:
        return f"lineage reports: {', '.join(sorted(reports.value)) or 'none'} ({metadata['gaps'].value} gaps noted)"
    verdicts = metadata.get("verdicts")
    if verdicts is not None:
        return "drift: " + (", ".join(f"{m} {v}" for m, v in verdicts.value.items()) or "no sampled traffic")
    chosen = metadata.get("chosen")
    if chosen is not None:
        return f"chosen: {chosen.value}; route: {metadata['route'].value}"
    loss = metadata.get("final_eval_loss")
    return f"validation loss {loss.value:.3f}" if loss is not None else ""


def execute(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job_name: str,
    partition: str | None,
    log_level: str = "INFO",
    ops_config: dict[str, Any] | None = None,
    asset_selection: Sequence[dg.AssetKey] | None = None,
) -> PartitionRun:
    """Executes one job (one partition, or unpartitioned; optionally only some of its assets) in process,
    recording into `instance`."""
    job = defs.resolve_job_def(job_name)
    run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    if ops_config:
        run_config["ops"] = {name: {"config": values} for name, values in ops_config.items()}
    result = job.execute_in_process(
        partition_key=partition,
        instance=instance,
        raise_on_error=False,
        tags={"llm_assets/trigger": "cli"},
        run_config=run_config,
        asset_selection=asset_selection,
    )
    run = PartitionRun(partition or "(all sources)", result.run_id, result.success, error=_first_error(result))
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        rows = mat.metadata.get("dagster/row_count")
        run.materialized.append(
            Materialized(
                mat.asset_key.to_user_string(),
                mat.partition,
                int(rows.value) if rows is not None else None,  # type: ignore[arg-type]
                mat.tags.get("dagster/data_version") if mat.tags else None,
                _headline(mat.metadata),
            )
        )
    for evaluation in result.get_asset_check_evaluations():
        run.checks.append(
            CheckOutcome(
                evaluation.asset_key.to_user_string(),
                evaluation.check_name,
                evaluation.passed,
                evaluation.severity != dg.AssetCheckSeverity.WARN,
            )
        )
    return run


def run_data_rebuild(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    partitions: Sequence[str],
    log: Callable[[str], Any] = print,
) -> list[PartitionRun]:
    """An erasure rebuild's data part: each affected source's pipeline, then the corpus-wide curation assets
    (group `curation`). Model stages (tokenizer, continued pretraining, adapters) are left to the operator:
    they retrain on GPUs and need a new approval, so the rebuild plan lists them instead."""
    runs: list[PartitionRun] = []
    for number, partition in enumerate(partitions, start=1):
        log(f"[{number}/{len(partitions)}] {CORPUS_PIPELINE_JOB} for source '{partition}' ...")
        runs.append(execute(defs, instance, CORPUS_PIPELINE_JOB, partition))
    if runs and all(run.success for run in runs):
        graph = defs.resolve_asset_graph()
        job = defs.resolve_job_def(CURATION_JOB)
        data = [key for key in job.asset_layer.selected_asset_keys if graph.get(key).group_name == "curation"]
        log(f"{CURATION_JOB} over all sources (data assets only: {', '.join(k.to_user_string() for k in data)}) ...")
        runs.append(execute(defs, instance, CURATION_JOB, None, asset_selection=data))
    return runs


def run_corpus_pipeline(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    partitions: Sequence[str],
    log: Callable[[str], Any] = print,
    *,
    curate: bool = True,
) -> list[PartitionRun]:
    """The main job: the per-source pipeline for each partition, then corpus-wide curation once."""
    runs: list[PartitionRun] = []
    for number, partition in enumerate(partitions, start=1):
        log(f"[{number}/{len(partitions)}] {CORPUS_PIPELINE_JOB} for source '{partition}' ...")
        runs.append(execute(defs, instance, CORPUS_PIPELINE_JOB, partition))
    if curate and all(run.success for run in runs):
        log(f"{CURATION_JOB} over all sources ...")
        runs.append(execute(defs, instance, CURATION_JOB, None))
        if runs[-1].success and _has_sft_sources(partitions):
            for task in SFT_TASKS.get_partition_keys():
                log(f"{SFT_JOB} for task '{task}' ...")
                runs.append(execute(defs, instance, SFT_JOB, task))
            log(f"{EVAL_JOB} ...")
            runs.append(execute(defs, instance, EVAL_JOB, None))
            if runs[-1].success:
                for task in SFT_TASKS.get_partition_keys():
                    log(f"{TASK_EVAL_JOB} for task '{task}' ...")
                    runs.append(execute(defs, instance, TASK_EVAL_JOB, task))
                for candidate in CANDIDATES.get_partition_keys():
                    log(f"{BASELINE_JOB} for candidate '{candidate}' ...")
                    runs.append(execute(defs, instance, BASELINE_JOB, candidate))
                if all(run.success for run in runs[-len(CANDIDATES.get_partition_keys()) :]):
                    log(f"{SELECTION_JOB} ...")
                    runs.append(execute(defs, instance, SELECTION_JOB, None))
    return runs


DEMO_APPROVER = "llm-assets demo"


def approve_and_serve(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    storage: LakeStorage,
    models: Sequence[str],
    *,
    port: int,
    sample_rate: float = 0.01,
    log: Callable[[str], Any] = print,
) -> PartitionRun | None:
    """The demo's last step: approve each task's newest candidate (recorded as the demo's act), then serve
    them on vLLM behind the gateway and load-test the endpoint (`serving` job). None when nothing passed."""
    from llm_assets.defs.serving.assets import SERVING_JOB
    from llm_assets.registry import ModelRegistry, RegistryError

    registry = ModelRegistry(storage)
    servable = []
    for model in models:
        entries = registry.entries(model)
        if not entries:
            log(f"{model}: not registered; nothing to serve")
            continue
        newest = entries[-1]
        if newest.status == "candidate":
            try:
                registry.approve(
                    model, newest.version, by=DEMO_APPROVER, reason="demo on the bundled sample corpus; gates passed"
                )
                log(f"{model} {newest.version[:16]}: approved by '{DEMO_APPROVER}'")
            except RegistryError as exc:
                log(f"{model}: not approved: {exc}")
                continue
        servable.append(model)
    if not servable:
        return None
    log(f"{SERVING_JOB}: vLLM on CPU for {', '.join(servable)} (model load takes a few minutes) ...")
    return execute(
        defs,
        instance,
        SERVING_JOB,
        None,
        ops_config={"deployed_endpoint": {"models": servable, "port": port, "sample_rate": sample_rate}},
    )


def collect_production_samples(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    storage: LakeStorage,
    *,
    wait_s: float = 60.0,
    log: Callable[[str], Any] = print,
) -> PartitionRun:
    """Today's `production_samples` partition, once the gateway's periodic flush has written the sample."""
    import time
    from datetime import UTC, datetime

    from llm_assets.defs.monitoring.assets import MONITORING_SAMPLES_JOB
    from llm_assets.monitoring.samples import raw_sample_keys

    day = datetime.now(UTC).date()
    deadline = time.monotonic() + wait_s
    while not raw_sample_keys(storage, day) and time.monotonic() < deadline:
        time.sleep(1.0)
    log(f"{MONITORING_SAMPLES_JOB}: committing the sampled traffic of {day} ...")
    return execute(defs, instance, MONITORING_SAMPLES_JOB, day.isoformat())


def evaluate_deployed_models(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    storage: LakeStorage,
    *,
    log: Callable[[str], Any] = print,
) -> list[PartitionRun]:
    """What the monthly schedule does, now: each deployed model re-scored (`deployed_model_evaluation`)."""
    from llm_assets.defs.monitoring.quality import DEPLOYED_EVAL_JOB, deployed_tasks

    runs = []
    for task in deployed_tasks(storage):
        log(f"{DEPLOYED_EVAL_JOB} [{task}]: re-scoring the deployed version ...")
        runs.append(execute(defs, instance, DEPLOYED_EVAL_JOB, task))
    return runs


def _has_sft_sources(partitions: Sequence[str]) -> bool:
    """The demo's SFT tasks are built from the bundled Banking77 and civics sources."""
    return {"banking77", "uscis_civics"} <= set(partitions)
