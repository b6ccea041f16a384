"""`raw_corpus`: every landed source read into Parquet shards, with a reject shard for what could not be read."""

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator

import dagster as dg
import pyarrow.compute as pc
from pydantic import Field

from llm_assets.defs.audit_trail import record_check, record_materialization
from llm_assets.defs.ingestion.partitions import sources_partitions
from llm_assets.ingestion.landing import LandingSource, scan_landing
from llm_assets.ingestion.readers import iter_source_files
from llm_assets.lake import LakeStorage, ShardWriter, iter_shards, read_manifest
from llm_assets.resources.lake import LakeResource
from llm_assets.schemas import RECORD_SCHEMA, REJECT_SCHEMA

RAW_CORPUS_CODE_VERSION = "raw_corpus-v1"
RAW_CORPUS = "raw_corpus"
RAW_CORPUS_REJECTS = "raw_corpus_rejects"


class RawCorpusConfig(dg.Config):
    """Limits for reading one landed source."""

    max_file_mb: float = Field(default=256.0, gt=0, description="Files above this size are rejected unread.")
    max_rows_per_shard: int = Field(default=50_000, gt=0, description="Rows per Parquet shard.")


def _landing_source(storage: LakeStorage, source: str) -> LandingSource:
    found = scan_landing(storage).get(source)
    if found is None:
        raise dg.Failure(
            f"source '{source}' has no folder under {storage.uri('landing/')}: stage it first "
            "(llm-assets ingest PATH) or remove the partition"
        )
    if found.descriptor is None:
        raise dg.Failure(f"source '{source}': {found.error}")
    return found


def _loaders(
    storage: LakeStorage, landing: LandingSource, file_hashes: dict[str, str]
) -> Iterator[tuple[str, Callable[[], bytes], int]]:
    """Lazy file loaders that also record each file's SHA-256, the input data version of the source."""
    for info in landing.files:
        rel = landing.relpath(info)

        def load(key: str = info.key, rel: str = rel) -> bytes:
            data = storage.read_bytes(key)
            file_hashes[rel] = hashlib.sha256(data).hexdigest()
            return data

        yield rel, load, info.size


def _input_version(file_hashes: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{k}\t{v}\n" for k, v in sorted(file_hashes.items())).encode()).hexdigest()


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
    landing = _landing_source(storage, source)
    descriptor = landing.descriptor
    assert descriptor is not None
    file_hashes: dict[str, str] = {}
    units = kept = rejected = 0
    by_rule: Counter[str] = Counter()
    started = time.monotonic()
    with (
        ShardWriter(
            storage, RAW_CORPUS, source, RECORD_SCHEMA, max_rows_per_shard=config.max_rows_per_shard
        ) as records,
        ShardWriter(
            storage, RAW_CORPUS_REJECTS, source, REJECT_SCHEMA, max_rows_per_shard=config.max_rows_per_shard
        ) as rejects,
    ):
        outcomes = iter_source_files(
            _loaders(storage, landing, file_hashes),
            descriptor,
            max_file_bytes=int(config.max_file_mb * 2**20),
        )
        for done, outcome in enumerate(outcomes, start=1):
            records.write(outcome.records)
            rejects.write(outcome.rejects)
            units += outcome.units
            kept += len(outcome.records)
            rejected += len(outcome.rejects)
            by_rule.update(r["rule"] for r in outcome.rejects)
            context.log.info(
                f"{source}: file {done}/{len(landing.files)} read; {kept} records, {rejected} rejects "
                f"({units / max(time.monotonic() - started, 1e-9):.0f} units/s)"
            )
        input_version = _input_version(file_hashes)
        provenance = {"input_data_version": input_version, "source": source}
        rejects_manifest = rejects.commit(extra=provenance)
        records_manifest = records.commit(
            extra={**provenance, "units": units, "rejects_data_version": rejects_manifest.data_version}
        )

    data_version = hashlib.sha256(
        f"{records_manifest.data_version}:{rejects_manifest.data_version}".encode()
    ).hexdigest()
    counts = {"files": len(landing.files), "units": units, "records": kept, "rejects": rejected}
    checks = [
        _check_counts(context, storage, source, units, data_version),
        _check_ids_unique(context, storage, source, data_version),
    ]
    record_materialization(
        context,
        storage,
        code_version=RAW_CORPUS_CODE_VERSION,
        input_data_versions={f"landing/{source}": input_version},
        output_data_version=data_version,
        counts=counts,
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(data_version),
        check_results=checks,
        metadata={
            "dagster/row_count": kept,
            **{k: dg.MetadataValue.int(v) for k, v in counts.items()},
            "rejects_by_rule": dg.MetadataValue.json(dict(by_rule)),
            "licence": descriptor.licence,
            "jurisdiction": descriptor.jurisdiction,
            "source_uri": dg.MetadataValue.url(descriptor.source_uri)
            if descriptor.source_uri.startswith(("http://", "https://"))
            else descriptor.source_uri,
            "language_hint": descriptor.language or "",
            "input_data_version": input_version,
            "manifest": dg.MetadataValue.path(storage.uri(f"datasets/{RAW_CORPUS}/{source}/_manifest.json")),
            "shards": len(records_manifest.shards),
            "rejects_manifest_version": rejects_manifest.data_version,
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
