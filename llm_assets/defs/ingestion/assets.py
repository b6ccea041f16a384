"""`raw_corpus`: every landed source read into Parquet shards, with a reject shard for what could not be read."""

import dagster as dg
import pyarrow.compute as pc
from pydantic import Field

from llm_assets.defs.audit_trail import record_check, record_materialization
from llm_assets.defs.ingestion.partitions import sources_partitions
from llm_assets.ingestion.descriptor import IngestError
from llm_assets.ingestion.run import RAW_CORPUS, RAW_CORPUS_REJECTS, ingest_source
from llm_assets.lake import LakeStorage, iter_shards, read_manifest
from llm_assets.resources.lake import LakeResource

RAW_CORPUS_CODE_VERSION = "raw_corpus-v2"  # v2: honours the erasure exclusion list


class RawCorpusConfig(dg.Config):
    """Limits for reading one landed source."""

    max_file_mb: float = Field(default=256.0, gt=0, description="Files above this size are rejected unread.")
    max_rows_per_shard: int = Field(default=50_000, gt=0, description="Rows per Parquet shard.")


@dg.asset(
    partitions_def=sources_partitions,
    group_name="ingestion",
    code_version=RAW_CORPUS_CODE_VERSION,
    kinds={"parquet"},
    tags={"stage": "ingestion"},
    check_specs=[
        dg.AssetCheckSpec(
            "counts_reconcile",
            asset=RAW_CORPUS,
            blocking=True,
            description="Every input unit is either a kept record or a reject, as written to the lake.",
        ),
        dg.AssetCheckSpec("ids_unique", asset=RAW_CORPUS, blocking=True, description="Record ids are unique."),
    ],
)
def raw_corpus(context: dg.AssetExecutionContext, config: RawCorpusConfig, lake: LakeResource) -> dg.MaterializeResult:
    """Documents of one landed source with provenance (licence, jurisdiction, URI); unreadable input goes to
    `raw_corpus_rejects` with file, line and reason."""
    storage = lake.storage()
    source = context.partition_key
    try:
        run = ingest_source(
            storage,
            source,
            max_file_bytes=int(config.max_file_mb * 2**20),
            max_rows_per_shard=config.max_rows_per_shard,
            progress=context.log.info,
        )
    except IngestError as exc:
        raise dg.Failure(str(exc)) from exc
    descriptor = run.descriptor
    checks = [
        _check_counts(context, storage, source, run.units, run.data_version),
        _check_ids_unique(context, storage, source, run.data_version),
    ]
    record_materialization(
        context,
        storage,
        code_version=RAW_CORPUS_CODE_VERSION,
        input_data_versions={f"landing/{source}": run.input_version},
        output_data_version=run.data_version,
        counts=run.counts(),
        config=config.model_dump(),
    )
    source_uri = descriptor.source_uri
    return dg.MaterializeResult(
        data_version=dg.DataVersion(run.data_version),
        check_results=checks,
        metadata={
            "dagster/row_count": run.kept,
            **{k: dg.MetadataValue.int(v) for k, v in run.counts().items()},
            "units": run.units,
            "rejects_by_rule": dg.MetadataValue.json(dict(run.rejects_by_rule)),
            "licence": descriptor.licence,
            "jurisdiction": descriptor.jurisdiction,
            "domain": descriptor.domain,
            "source_uri": dg.MetadataValue.url(source_uri)
            if source_uri.startswith(("http://", "https://"))
            else source_uri,
            "language_hint": descriptor.language or "",
            "input_data_version": run.input_version,
            "manifest": dg.MetadataValue.path(storage.uri(f"datasets/{RAW_CORPUS}/{source}/_manifest.json")),
            "shards": len(run.records.shards),
            "rejects_manifest_version": run.rejects.data_version,
        },
    )


def _check_counts(
    context: dg.AssetExecutionContext, storage: LakeStorage, source: str, units: int, data_version: str
) -> dg.AssetCheckResult:
    """Re-reads both manifests from the lake: kept + rejected must equal the input units read."""
    records = read_manifest(storage, RAW_CORPUS, source)
    rejects = read_manifest(storage, RAW_CORPUS_REJECTS, source)
    kept = records.rows if records else -1
    rejected = rejects.rows if rejects else -1
    recorded_units = int(records.extra.get("units", -1)) if records else -1
    passed = kept >= 0 and rejected >= 0 and kept + rejected == units == recorded_units
    figures = {"input_units": units, "kept": kept, "rejected": rejected, "manifest_units": recorded_units}
    record_check(
        context,
        storage,
        check_name="counts_reconcile",
        passed=passed,
        data_version=data_version,
        figures=figures,
    )
    return dg.AssetCheckResult(
        check_name="counts_reconcile",
        passed=passed,
        metadata={k: dg.MetadataValue.int(v) for k, v in figures.items()},
        description=None if passed else f"{units} input units but {kept} kept + {rejected} rejected",
    )


def _check_ids_unique(
    context: dg.AssetExecutionContext, storage: LakeStorage, source: str, data_version: str
) -> dg.AssetCheckResult:
    manifest = read_manifest(storage, RAW_CORPUS, source)
    ids: set[str] = set()
    rows = 0
    if manifest is not None:
        for shard in iter_shards(storage, manifest):
            column = shard.column("id")
            rows += len(column)
            ids.update(pc.unique(column).to_pylist())
    passed = manifest is not None and len(ids) == rows
    figures = {"rows": rows, "distinct_ids": len(ids)}
    record_check(context, storage, check_name="ids_unique", passed=passed, data_version=data_version, figures=figures)
    return dg.AssetCheckResult(
        check_name="ids_unique",
        passed=passed,
        metadata={k: dg.MetadataValue.int(v) for k, v in figures.items()},
    )
