"""Human review wiring: labels from the review page become `eval_qa_validated`, gated on acceptance per criterion.

The review sensor watches the label files of the current pilot version and requests a run when they change,
so the acceptance figures in the UI follow the reviewers without anyone launching anything.
"""

import hashlib
import json

import dagster as dg
from pydantic import Field

from llm_assets.defs.audit_trail import record_check, record_materialization
from llm_assets.defs.curation.assets import code_version_of
from llm_assets.defs.evaluation.assets import eval_qa_pilot
from llm_assets.evaluation.review import (
    CRITERIA,
    ReviewError,
    ReviewStore,
    acceptance,
    labels_prefix,
    load_pilot,
    summary,
)
from llm_assets.resources.lake import LakeResource

VALIDATED_PREFIX = "evaluation/qa/validated"


class EvalQaValidatedConfig(dg.Config):
    """The acceptance gate on the reviewed pilot set."""

    min_acceptance: float = Field(
        default=0.9, ge=0, le=1, description="Share of labels that must accept an item, on every criterion."
    )
    locked: bool = Field(
        default=True, description="The set is the locked eval set: a failed gate blocks (ERROR) instead of warning."
    )


@dg.asset(
    deps=[eval_qa_pilot],
    group_name="evaluation",
    code_version="eval_qa_validated-v1",
    kinds={"json"},
    check_specs=[
        dg.AssetCheckSpec(
            "acceptance_threshold",
            asset="eval_qa_validated",
            blocking=True,
            description=(
                "Reviewers accepted >= min_acceptance of the items on each of "
                f"{', '.join(CRITERIA)}; blocking when locked, a warning otherwise; never passes without labels."
            ),
        )
    ],
)
def eval_qa_validated(
    context: dg.AssetExecutionContext, config: EvalQaValidatedConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Acceptance per criterion over the reviewers' latest labels of the current pilot set, and the accepted items."""
    storage = lake.storage()
    store = ReviewStore(storage)
    labels = store.labels()
    result = acceptance(labels)
    report = summary(store.version, result, config.min_acceptance)
    prefix = f"{VALIDATED_PREFIX}/{store.version[:16]}"
    accepted = set(result.accepted_items)
    items = "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in store.items if i["id"] in accepted).encode()
    storage.write_bytes(f"{prefix}/accepted.jsonl", items)
    storage.write_bytes(f"{prefix}/summary.json", json.dumps(report, indent=2, ensure_ascii=False).encode())
    context.log.info(f"{report['status']}; {len(accepted)} of {len(store.items)} items accepted")

    label_lines = "".join(label.to_json() + "\n" for label in labels)
    version = hashlib.sha256(f"{store.version}\n{label_lines}".encode()).hexdigest()
    passed = result.passes(config.min_acceptance)
    check = dg.AssetCheckResult(
        check_name="acceptance_threshold",
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR if config.locked else dg.AssetCheckSeverity.WARN,
        metadata={
            "status": report["status"],
            "labels": result.labels,
            "items_reviewed": result.items_reviewed,
            "items": len(store.items),
            "min_acceptance": config.min_acceptance,
            "locked": config.locked,
            **{f"acceptance_{name}": result.rates[name] for name in CRITERIA},
            "labels_location": dg.MetadataValue.path(storage.uri(labels_prefix(store.version))),
        },
    )
    record_check(
        context,
        storage,
        check_name="acceptance_threshold",
        passed=passed,
        data_version=version,
        figures={k: getattr(v, "value", v) for k, v in (check.metadata or {}).items()},
    )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={"eval_qa_pilot": store.version},
        output_data_version=version,
        counts={"labels": result.labels, "items_reviewed": result.items_reviewed, "accepted_items": len(accepted)},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        check_results=[check],
        metadata={
            "dagster/row_count": len(accepted),
            "summary": dg.MetadataValue.json(report),
            "location": dg.MetadataValue.path(storage.uri(prefix)),
        },
    )


@dg.sensor(
    target=[eval_qa_validated],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the review labels of the current pilot set; new or changed labels rebuild eval_qa_validated.",
)
def review_labels_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    storage = lake.storage()
    try:
        version, _ = load_pilot(storage)
    except ReviewError as exc:
        return dg.SensorResult(skip_reason=str(exc), cursor=context.cursor)
    files = [info for info in storage.list_objects(labels_prefix(version)) if info.key.endswith(".jsonl")]
    if not files:
        reason = f"awaiting review: no labels for pilot {version[:16]}"
        return dg.SensorResult(skip_reason=reason, cursor=context.cursor)
    listing = "\n".join(f"{info.key}\t{info.size}\t{info.version}" for info in files)
    fingerprint = hashlib.sha256(f"{version}\n{listing}".encode()).hexdigest()
    if fingerprint == context.cursor:
        return dg.SensorResult(skip_reason="labels unchanged", cursor=fingerprint)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=fingerprint, tags={"llm_assets/trigger": "review_labels_sensor"})],
        cursor=fingerprint,
    )


def review_definitions() -> dg.Definitions:
    return dg.Definitions(assets=[eval_qa_validated], sensors=[review_labels_sensor])
