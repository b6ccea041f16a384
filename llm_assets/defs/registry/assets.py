"""Registry wiring: an adapter version whose eval report passed its gates becomes a registered candidate.

Approval stays an explicit act by a person (`llm-assets registry approve`, or the `model_approval` job with
typed config); it is refused while a blocking gate of that version has not passed.
"""

import json

import dagster as dg
from pydantic import Field

from llm_assets.defs.audit_trail import record_materialization
from llm_assets.defs.curation.assets import code_version_of
from llm_assets.defs.evaluation.reports import EVAL_REPORT_PREFIX, eval_report
from llm_assets.defs.training.adaptation import ADAPTER_PREFIX, current_pointer
from llm_assets.defs.training.assets import SFT_TASKS
from llm_assets.registry import ModelRegistry, RegistryError
from llm_assets.resources.lake import LakeResource


@dg.asset(
    deps=[eval_report],
    partitions_def=SFT_TASKS,
    group_name="registry",
    code_version="registered_model-v1",
    kinds={"json"},
)
def registered_model(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """The task's current adapter version in the registry as a candidate, with its metrics, gates and lineage."""
    storage = lake.storage()
    task = context.partition_key
    pointer = current_pointer(storage, f"{EVAL_REPORT_PREFIX}/{task}")
    report = json.loads(storage.read_bytes(f"{pointer['prefix']}/report.json"))
    gates = json.loads(storage.read_bytes(f"{pointer['prefix']}/gates.json"))
    adapter = current_pointer(storage, f"{ADAPTER_PREFIX}/{task}")
    if adapter["version"] != report["adapter_version"]:
        raise dg.Failure(
            f"eval report {pointer['version'][:16]} is for adapter {report['adapter_version'][:16]}, but the current "
            f"adapter is {adapter['version'][:16]}; materialize eval_report for {task} first"
        )
    lineage = json.loads(storage.read_bytes(f"{adapter['prefix']}/lineage.json"))
    lineage |= {"adapter_location": storage.uri(adapter["prefix"]), "eval_report": pointer["version"]}
    metrics = {
        "task": report["adapted"]["overall"],
        "per_language": report["adapted"]["per_language"],
        "base": report["without_adapter"]["overall"],
        "deployed": (report.get("deployed") or {}).get("overall"),
        "benchmark": (report.get("benchmark") or {}).get("metrics"),
    }
    registry = ModelRegistry(storage)
    try:
        entry = registry.register(
            task,
            adapter["version"],
            eval_metrics=metrics,
            gates=gates,
            lineage=lineage,
            registered_by=f"dagster run {context.run.run_id}",
        )
    except RegistryError as exc:
        raise dg.Failure(f"registered_model {task}: {exc}") from exc
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={"eval_report": pointer["version"], "lora_adapter": adapter["version"]},
        output_data_version=adapter["version"],
        counts={"registrations": entry.registrations},
        config={},
    )
    command = f"llm-assets registry approve {task} {adapter['version'][:16]} --by NAME --reason TEXT"
    return dg.MaterializeResult(
        data_version=dg.DataVersion(f"{adapter['version']}:{entry.status}"),
        metadata={
            "model": task,
            "version": adapter["version"],
            "status": entry.status,
            "failed_blocking_gates": dg.MetadataValue.json(entry.failed_blocking_gates),
            "gates": dg.MetadataValue.json(gates),
            "approve_with": dg.MetadataValue.md(f"`{command}`") if entry.status == "candidate" else "",
            "lineage": dg.MetadataValue.json(lineage),
        },
    )


class ModelApprovalConfig(dg.Config):
    """An approval given through a Dagster run instead of the CLI: who approves which version, and why."""

    model: str = Field(description="Registry model name (the task, e.g. banking77_intents).")
    version: str = Field(description="Adapter version (full or a unique prefix of at least 8 characters).")
    by: str = Field(description="The approver's name.")
    reason: str = Field(description="Why this version may serve.")


@dg.op(description="Approve a registered candidate whose blocking gates passed; recorded with who, when and why.")
def approve_model_version(context: dg.OpExecutionContext, config: ModelApprovalConfig, lake: LakeResource) -> None:
    registry = ModelRegistry(lake.storage())
    try:
        entry = registry.approve(config.model, config.version, by=config.by, reason=config.reason)
    except RegistryError as exc:
        raise dg.Failure(str(exc)) from exc
    context.log.info(f"{config.model} {entry.version[:16]}: {entry.status} by {config.by}")


@dg.job(description="Approve a model version in the registry (typed config: model, version, by, reason).")
def model_approval() -> None:
    approve_model_version()


def registry_definitions() -> dg.Definitions:
    return dg.Definitions(assets=[registered_model], jobs=[model_approval])
