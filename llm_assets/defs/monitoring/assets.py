"""Monitoring wiring: the day's sampled production traffic as a dataset, and the retention that deletes it.

`production_samples` (daily partitions) commits the gateway's 1 % sample of one day, scrubbed again with the
curation detectors, with a reject row for every unusable line; its blocking checks prove the counts add up
and that no structured PII is left. `sample_retention` (scheduled daily) deletes every sample day older than
the retention period — raw files and committed partitions — and writes one audit record per deleted day.
"""

from datetime import UTC, date, datetime, timedelta

import dagster as dg
from pydantic import Field

from llm_assets.curation.pii.policy import load_policy
from llm_assets.curation.pii.scrub import rescan_clean
from llm_assets.defs.audit_trail import record_check, record_materialization
from llm_assets.defs.curation.assets import code_version_of
from llm_assets.lake.shards import read_dataset, write_table
from llm_assets.monitoring.samples import (
    PRODUCTION_SAMPLES_DATASET,
    PRODUCTION_SAMPLES_REJECTS,
    collect_day,
    enforce_retention,
)
from llm_assets.plots import bar_chart
from llm_assets.resources.lake import LakeResource

SAMPLE_DAYS = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_offset=1, timezone="UTC")


class ProductionSamplesConfig(dg.Config):
    """The PII policy of the re-scan and how long samples live."""

    policy: str = Field(default="eu-gdpr", description="PII policy profile (name or YAML path) of the re-scan.")
    retention_days: int = Field(default=30, ge=1, description="Days a sample is kept; recorded as its expiry.")


@dg.asset(
    partitions_def=SAMPLE_DAYS,
    group_name="monitoring",
    code_version="production_samples-v1",
    check_specs=[
        dg.AssetCheckSpec(
            "counts_reconcile",
            asset="production_samples",
            blocking=True,
            description="Every sampled line is kept or in the reject shard: lines = kept + rejected.",
        ),
        dg.AssetCheckSpec(
            "no_structured_pii_left",
            asset="production_samples",
            blocking=True,
            description="A third scan of the kept prompts and responses finds no structured PII.",
        ),
    ],
    description="One day of the gateway's sampled traffic, PII-scrubbed again, with a reject row per bad line.",
)
def production_samples(
    context: dg.AssetExecutionContext, config: ProductionSamplesConfig, lake: LakeResource
) -> dg.MaterializeResult:
    storage = lake.storage()
    day = date.fromisoformat(context.partition_key)
    policy = load_policy(config.policy)
    samples = collect_day(storage, day, policy, retention_days=config.retention_days)
    stats = samples.stats()
    context.log.info(
        f"{day}: {stats['lines']} sampled lines in {stats['objects']} files -> {stats['kept']} kept, "
        f"{stats['rejected']} rejected"
    )
    rejects = write_table(storage, PRODUCTION_SAMPLES_REJECTS, day.isoformat(), samples.rejects)
    manifest = write_table(storage, PRODUCTION_SAMPLES_DATASET, day.isoformat(), samples.kept, extra={"stats": stats})
    # The checks read back what was committed, not what was meant to be.
    committed = read_dataset(storage, manifest)
    counted = committed.num_rows + read_dataset(storage, rejects).num_rows
    leftover = rescan_clean(committed.column("prompt").to_pylist() + committed.column("response").to_pylist())
    checks = [
        ("counts_reconcile", counted == samples.lines, {"lines": samples.lines, "kept_plus_rejected": counted}),
        ("no_structured_pii_left", not any(leftover.values()), {"structured_pii_left": leftover}),
    ]
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={},
        output_data_version=manifest.data_version,
        counts={"lines": samples.lines, "kept": stats["kept"], "rejected": stats["rejected"]},
        config=config,
    )
    for name, passed, figures in checks:
        record_check(
            context, storage, check_name=name, passed=passed, data_version=manifest.data_version, figures=figures
        )
    metadata: dict[str, dg.RawMetadataValue] = {
        "dataset": dg.MetadataValue.path(storage.uri(f"datasets/{PRODUCTION_SAMPLES_DATASET}/{day.isoformat()}")),
        "dagster/row_count": stats["kept"],
        "lines": samples.lines,
        "kept": stats["kept"],
        "rejected": stats["rejected"],
        "per_model": dg.MetadataValue.json(stats["per_model"]),
        "residual_pii_by_kind": dg.MetadataValue.json(stats["residual_pii_by_kind"]),
        "policy": f"{policy.name}@{policy.version}",
        "expires": (day + timedelta(days=config.retention_days)).isoformat(),
    }
    if stats["per_model"]:
        metadata["samples_per_model"] = dg.MetadataValue.md(bar_chart(stats["per_model"], title="Samples per model"))
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(manifest.data_version),
        check_results=[
            dg.AssetCheckResult(check_name=name, passed=passed, metadata={"figures": dg.MetadataValue.json(figures)})
            for name, passed, figures in checks
        ],
    )


class SampleRetentionConfig(dg.Config):
    retention_days: int = Field(default=30, ge=1, description="Sample days older than this are deleted.")
    today: str = Field(default="", description="ISO date to apply retention as of (empty: today, UTC).")


@dg.op(description="Delete sampled traffic older than the retention period; one audit record per deleted day.")
def delete_expired_samples(context: dg.OpExecutionContext, config: SampleRetentionConfig, lake: LakeResource) -> None:
    today = date.fromisoformat(config.today) if config.today else datetime.now(UTC).date()
    records = enforce_retention(lake.storage(), today, retention_days=config.retention_days)
    for record in records:
        context.log.info(
            f"deleted samples of {record['day']}: {record['objects_deleted']} objects (audit seq {record['seq']})"
        )
    if not records:
        context.log.info(f"no sample day older than {config.retention_days} days as of {today}")


@dg.job(description="Enforce the retention of sampled production traffic (default 30 days), audited.")
def sample_retention() -> None:
    delete_expired_samples()


sample_retention_schedule = dg.ScheduleDefinition(
    name="sample_retention_daily",
    job=sample_retention,
    cron_schedule="15 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:15 UTC: delete sample days past their retention.",
)


MONITORING_SAMPLES_JOB = "production_sampling"
