"""Human review wiring: labels from the review page become `eval_qa_validated`, gated on acceptance per criterion.

The review sensor watches the label files of the current pilot version and requests a run when they change,
so the acceptance figures in the UI follow the reviewers without anyone launching anything.
"""

import hashlib
import json
from dataclasses import asdict

import dagster as dg
from pydantic import Field

from llm_assets.defs.audit_trail import record_check, record_materialization
from llm_assets.defs.curation.assets import code_version_of
from llm_assets.defs.evaluation.assets import (
    EVAL_QA_PREFIX,
    eval_qa_pilot,
    generate_candidates,
    grounding_problems,
)
from llm_assets.evaluation.extractive import decontamination_text, pilot_batch, stratum_counts
from llm_assets.evaluation.review import (
    CRITERIA,
    ReviewError,
    ReviewStore,
    acceptance,
    labels_prefix,
    load_pilot,
    summary,
)
from llm_assets.lake import LakeError
from llm_assets.resources.endpoint import InferenceEndpoint
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


LOCKED_PREFIX = "evaluation/qa/locked"


class EvalQaLockedConfig(dg.Config):
    """Scale-up of a validated pilot with its locked generator recipe, split into versioned dev and test sets."""

    dev_share: float = Field(default=0.3, gt=0, lt=1, description="Share of source records whose items go to dev.")
    max_items: int = Field(default=0, ge=0, description="Stratified cap on the scaled set (0 = every item).")
    llm_records: int = Field(
        default=0, ge=0, description="Records sent to the LLM generator with the pilot's locked template (0 = none)."
    )


def split_of(source_id: str, dev_share: float) -> str:
    """dev or test by a hash of the source record, so every item of one record lands in the same split."""
    bucket = int(hashlib.sha256(source_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "dev" if bucket < dev_share else "test"


@dg.asset(
    deps=[eval_qa_validated],
    group_name="evaluation",
    code_version="eval_qa_locked-v1",
    kinds={"json"},
    check_specs=[
        dg.AssetCheckSpec(
            "grounded",
            asset="eval_qa_locked",
            blocking=True,
            description="Every scaled item is the exact span of its cited source.",
        ),
        dg.AssetCheckSpec(
            "decontaminated",
            asset="eval_qa_locked",
            blocking=True,
            description="No item shares an n-gram with the curated train split or an SFT set.",
        ),
    ],
)
def eval_qa_locked(
    context: dg.AssetExecutionContext,
    config: EvalQaLockedConfig,
    lake: LakeResource,
    inference_endpoint: InferenceEndpoint,
) -> dg.MaterializeResult:
    """The locked eval set: built only from a pilot reviewers accepted, with the pilot's generator settings."""
    storage = lake.storage()
    store = ReviewStore(storage)
    pilot = store.version
    try:
        verdict = json.loads(storage.read_bytes(f"{VALIDATED_PREFIX}/{pilot[:16]}/summary.json"))
        manifest = json.loads(storage.read_bytes(f"{EVAL_QA_PREFIX}/{pilot[:16]}/manifest.json"))
    except LakeError as exc:
        raise dg.Failure(
            f"pilot {pilot[:16]} has no validation summary; review it (`llm-assets review serve`) and let "
            "eval_qa_validated run"
        ) from exc
    if not verdict["passed"]:
        raise dg.Failure(
            f"pilot {pilot[:16]} is not validated ({verdict['status']}); the locked set is only built from a pilot "
            "reviewers accepted"
        )
    settings = manifest["generator_settings"]
    generated = generate_candidates(context, storage, settings, inference_endpoint, config.llm_records)
    labels = store.labels()
    accepted = set(acceptance(labels).accepted_items)
    turned_down = {label.item_id for label in labels} - accepted
    items = [item for item in generated.items if item.id not in turned_down]
    if config.max_items:
        items = pilot_batch(items, config.max_items, seed=settings["seed"])
    ungrounded = grounding_problems(items, generated.held_out, generated.llm_settings)
    splits: dict[str, list[str]] = {"dev": [], "test": []}
    for item in sorted(items, key=lambda i: i.id):
        splits[split_of(item.source_id, config.dev_share)].append(json.dumps(asdict(item), ensure_ascii=False))
    payloads = {name: ("\n".join(lines) + "\n" if lines else "").encode() for name, lines in splits.items()}
    version = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in payloads.values())).hexdigest()
    prefix = f"{LOCKED_PREFIX}/{version[:16]}"
    for name, payload in payloads.items():
        storage.write_bytes(f"{prefix}/{name}.jsonl", payload)
    by_split = {
        name: stratum_counts(i for i in items if split_of(i.source_id, config.dev_share) == name) for name in splits
    }
    locked_manifest = {
        "version": version,
        "pilot_version": pilot,
        "validation": {k: verdict[k] for k in ("status", "min_acceptance", "rates", "labels") if k in verdict},
        "generator_settings": settings,
        "llm": generated.llm_summary,
        "items": {name: len(lines) for name, lines in splits.items()},
        "excluded_by_review": len(turned_down),
        "removed_as_contaminated": len(generated.contaminated),
        "strata": {name: {"/".join(k): v for k, v in sorted(c.items())} for name, c in by_split.items()},
        "split_rule": f"sha256(source_id) < {config.dev_share} -> dev",
    }
    storage.write_bytes(f"{prefix}/manifest.json", json.dumps(locked_manifest, indent=2, ensure_ascii=False).encode())
    storage.write_bytes(f"{LOCKED_PREFIX}/current.json", json.dumps({"version": version, "prefix": prefix}).encode())
    checks = [
        dg.AssetCheckResult(
            check_name="grounded",
            passed=bool(items) and not ungrounded,
            metadata={"items": len(items), "ungrounded": dg.MetadataValue.json(dict(list(ungrounded.items())[:20]))},
        ),
        dg.AssetCheckResult(
            check_name="decontaminated",
            passed=not any(generated.index.overlaps_for(i.id, decontamination_text(i)) for i in items),
            metadata={"removed": len(generated.contaminated)},
        ),
    ]
    for check in checks:
        record_check(
            context,
            storage,
            check_name=check.check_name or "",
            passed=check.passed,
            data_version=version,
            figures={k: getattr(v, "value", v) for k, v in (check.metadata or {}).items()},
        )
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={"eval_qa_pilot": pilot} | generated.curated_versions,
        output_data_version=version,
        counts={**locked_manifest["items"], "excluded_by_review": len(turned_down)},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        check_results=checks,
        metadata={
            "dagster/row_count": len(items),
            "dev_items": len(splits["dev"]),
            "test_items": len(splits["test"]),
            "pilot_version": pilot[:16],
            "validation": verdict["status"],
            "manifest": dg.MetadataValue.json(locked_manifest),
            "location": dg.MetadataValue.path(storage.uri(prefix)),
        },
    )


@dg.sensor(
    target=[eval_qa_validated, eval_qa_locked],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the review labels of the current pilot set; new or changed labels rebuild "
    "eval_qa_validated and, once it passes, the locked eval set.",
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
    return dg.Definitions(assets=[eval_qa_validated, eval_qa_locked], sensors=[review_labels_sensor])
