"""`compliance_report`: the lineage of every registered model's current version, as JSON, Markdown and HTML.

Serving versions come first. The Markdown report is the asset's metadata, so it reads in the Dagster UI;
the blocking check `lineage_complete` fails when a model's chain lacks a licensed source, a PII policy
or gate results.
"""

import hashlib
from typing import Any

import dagster as dg

from llm_assets.audit import AuditLog
from llm_assets.compliance.lineage import (
    LineageError,
    attach_runs,
    build_lineage,
    content_version,
    missing_links,
    report_targets,
    to_html,
    to_json,
    to_markdown,
    validate_lineage,
)
from llm_assets.defs.audit_trail import record_check, record_materialization
from llm_assets.defs.curation.assets import code_version_of
from llm_assets.defs.registry.assets import registered_model
from llm_assets.defs.serving.assets import deployed_endpoint
from llm_assets.registry import ModelRegistry
from llm_assets.resources.lake import LakeResource

COMPLIANCE_REPORT_PREFIX = "compliance/reports"


def _run_lookup(instance: dg.DagsterInstance) -> Any:
    def run_of(run_id: str) -> dict[str, Any] | None:
        run = instance.get_run_by_id(run_id)
        if run is None:
            return None
        return {"status": run.status.value, "job": run.job_name, "tags": dict(run.tags)}

    return run_of


@dg.asset(
    deps=[registered_model, deployed_endpoint],
    group_name="compliance",
    code_version="compliance_report-v1",
    kinds={"json", "html"},
    check_specs=[
        dg.AssetCheckSpec(
            "lineage_complete",
            asset="compliance_report",
            blocking=True,
            description="Every reported model traces to licensed sources with a jurisdiction, a PII policy and "
            "recorded gate results.",
        )
    ],
)
def compliance_report(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Which data, which policy, who approved and where it ran, for each registered model's current version."""
    storage = lake.storage()
    registry = ModelRegistry(storage)
    audit = AuditLog(storage)
    run_of = _run_lookup(context.instance)
    missing: dict[str, list[str]] = {}
    written: dict[str, str] = {}
    sections: list[str] = []
    versions: dict[str, str] = {}
    gaps = 0
    targets = report_targets(registry)
    for number, (model, version, serving) in enumerate(targets, start=1):
        try:
            doc = build_lineage("registered_model", model, version, audit=audit, storage=storage, registry=registry)
        except LineageError as exc:
            missing[model] = [f"lineage not available: {exc}"]
            sections.append(f"# {model} {version[:16]}\n\nLineage not available: {exc}\n")
            continue
        attach_runs(doc, run_of)
        validate_lineage(doc)
        prefix = f"{COMPLIANCE_REPORT_PREFIX}/{model}/{version[:16]}"
        markdown = to_markdown(doc)
        storage.write_bytes(f"{prefix}/lineage.json", to_json(doc).encode("utf-8"))
        storage.write_bytes(f"{prefix}/report.md", markdown.encode("utf-8"))
        storage.write_bytes(f"{prefix}/report.html", to_html(doc).encode("utf-8"))
        written[model] = storage.uri(f"{prefix}/report.html")
        versions[f"registered_model/{model}"] = version
        missing[model] = missing_links(doc)
        gaps += len(doc["gaps"])
        sections.append(f"_{'serving' if serving else 'not serving'}_\n\n{markdown}")
        context.log.info(f"compliance report {number}/{len(targets)}: {model} {version[:16]} -> {written[model]}")
        versions[f"report/{model}"] = content_version(doc)
    output_version = hashlib.sha256("\n".join(f"{k}={v}" for k, v in sorted(versions.items())).encode()).hexdigest()
    passed = bool(targets) and not any(missing.values())
    figures = {"models": len(targets), "missing": {m: v for m, v in missing.items() if v}}
    record_check(
        context, storage, check_name="lineage_complete", passed=passed, data_version=output_version, figures=figures
    )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={k: v for k, v in versions.items() if k.startswith("registered_model/")},
        output_data_version=output_version,
        counts={"models": len(targets), "reports": len(written), "gaps": gaps},
        config={},
    )
    report = "\n\n---\n\n".join(sections) or "No model in the registry."
    return dg.MaterializeResult(
        data_version=dg.DataVersion(output_version),
        check_results=[
            dg.AssetCheckResult(
                check_name="lineage_complete",
                passed=passed,
                metadata={"models": len(targets), "missing": dg.MetadataValue.json(figures["missing"])},
                description=None if passed else ("no model in the registry" if not targets else "links missing"),
            )
        ],
        metadata={
            "report": dg.MetadataValue.md(report),
            "reports": dg.MetadataValue.json(written),
            "models": len(targets),
            "gaps": gaps,
        },
    )


COMPLIANCE_JOB = "compliance_reporting"
compliance_job = dg.define_asset_job(
    COMPLIANCE_JOB,
    selection=dg.AssetSelection.assets(compliance_report, "tco_report"),
    description="Lineage reports of the registered and deployed models, and the API-vs-self-hosting cost report.",
)


def compliance_lineage_definitions() -> dg.Definitions:
    return dg.Definitions(assets=[compliance_report], jobs=[compliance_job])
