"""Feedback wiring: corrections dropped in `feedback/inbox/` become SFT and DPO examples.

`feedback_examples` writes the preference pairs where `dpo_adapter` reads them (`feedback/preferences/`) and the
SFT pairs to `feedback/sft/`, both replaced atomically on each run; blocking checks prove every line is kept
or rejected and that no structured PII reached the examples.
"""

import hashlib
import json

import dagster as dg
from pydantic import Field

from llm_assets.curation.pii.policy import load_policy
from llm_assets.curation.pii.scrub import rescan_clean
from llm_assets.defs.audit_trail import record_materialization
from llm_assets.defs.curation.assets import code_version_of
from llm_assets.defs.training.adaptation import FEEDBACK_PREFIX
from llm_assets.defs.training.assets import SFT_PREFIX, SFT_TASKS
from llm_assets.lake.storage import LakeKeyNotFound
from llm_assets.monitoring.feedback import (
    FEEDBACK_ID_PREFIX,
    FEEDBACK_INBOX,
    FEEDBACK_SFT_KEY,
    build_examples,
    normalise,
)
from llm_assets.resources.lake import LakeResource

FEEDBACK_PREFERENCES_KEY = f"{FEEDBACK_PREFIX}/feedback_examples.jsonl"
FEEDBACK_REJECTS_KEY = "feedback/rejects/feedback_examples.jsonl"


class FeedbackConfig(dg.Config):
    policy: str = Field(default="eu-gdpr", description="PII policy profile of the scrub.")


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


@dg.asset(
    group_name="monitoring",
    code_version="feedback_examples-v1",
    check_specs=[
        dg.AssetCheckSpec("counts_reconcile", asset="feedback_examples", blocking=True),
        dg.AssetCheckSpec("no_structured_pii", asset="feedback_examples", blocking=True),
    ],
    description="Reviewers' and citizens' corrections as SFT and DPO preference pairs, scrubbed, deduplicated.",
)
def feedback_examples(
    context: dg.AssetExecutionContext, config: FeedbackConfig, lake: LakeResource
) -> dg.MaterializeResult:
    storage = lake.storage()
    files = [
        (info.key, storage.read_bytes(info.key))
        for info in sorted(storage.list_objects(f"{FEEDBACK_INBOX}/"), key=lambda i: i.key)
        if info.key.endswith(".jsonl")
    ]
    training: dict[str, set[str]] = {}
    for task in SFT_TASKS.get_partition_keys():
        try:
            prefix = json.loads(storage.read_bytes(f"{SFT_PREFIX}/{task}/current.json"))["prefix"]
            data = storage.read_bytes(f"{prefix}/train.prompt_completion.jsonl")
        except LakeKeyNotFound:
            continue
        rows = [json.loads(line) for line in data.splitlines() if line.strip()]
        # Rows sft_dataset took from earlier feedback are this asset's own output, not a reason to reject it.
        training[task] = {
            normalise(r["prompt"]) for r in rows if not str(r.get("id", "")).startswith(FEEDBACK_ID_PREFIX)
        }
    batch = build_examples(files, load_policy(config.policy), training)
    context.log.info(
        f"{batch.lines} feedback lines in {len(files)} files -> {len(batch.sft)} examples, "
        f"{len(batch.rejects)} rejected"
    )
    storage.write_bytes(FEEDBACK_REJECTS_KEY, _jsonl(batch.rejects))
    storage.write_bytes(FEEDBACK_SFT_KEY, _jsonl(batch.sft))
    storage.write_bytes(FEEDBACK_PREFERENCES_KEY, _jsonl(batch.preferences))  # last: what dpo_adapter reads
    texts = [e[k] for e in batch.preferences for k in ("prompt", "chosen", "rejected")]
    leftover = rescan_clean(texts)
    version = hashlib.sha256(_jsonl(batch.sft) + _jsonl(batch.preferences)).hexdigest()
    counted = len(batch.sft) + len(batch.rejects)
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={k: hashlib.sha256(v).hexdigest() for k, v in files},
        output_data_version=version,
        counts={"lines": batch.lines, "examples": len(batch.sft), "rejected": len(batch.rejects)},
        config=config,
    )
    rules: dict[str, int] = {}
    for reject in batch.rejects:
        rules[reject["rule"]] = rules.get(reject["rule"], 0) + 1
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(batch.sft),
            "lines": batch.lines,
            "examples": len(batch.sft),
            "rejected_by_rule": dg.MetadataValue.json(rules),
            "pii_redactions": batch.redactions,
            "preferences": dg.MetadataValue.path(storage.uri(FEEDBACK_PREFERENCES_KEY)),
        },
        data_version=dg.DataVersion(version),
        check_results=[
            dg.AssetCheckResult(
                check_name="counts_reconcile",
                passed=counted == batch.lines,
                metadata={"lines": batch.lines, "kept_plus_rejected": counted},
            ),
            dg.AssetCheckResult(
                check_name="no_structured_pii",
                passed=not any(leftover.values()),
                metadata={"left": dg.MetadataValue.json(leftover)},
            ),
        ],
    )
