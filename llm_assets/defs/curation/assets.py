"""The curation chain as assets: normalise and PII-scrub per source, then dedup, quality, perplexity and
splits over the whole corpus. Bodies are thin: they call `llm_assets.curation.pipeline` and report."""

import hashlib
import json
import os
import secrets

import dagster as dg
import pyarrow as pa
from pydantic import Field

from llm_assets.curation import pipeline
from llm_assets.curation.contract import validate_curated_shards
from llm_assets.curation.dedup import DedupConfig
from llm_assets.curation.normalize import NormalizeConfig
from llm_assets.curation.perplexity import PerplexityConfig
from llm_assets.curation.pii.policy import load_policy
from llm_assets.curation.pii.scrub import PII_EVENT_SCHEMA, rescan_clean
from llm_assets.curation.quality import QualityConfig
from llm_assets.defs.audit_trail import record_check, record_materialization
from llm_assets.defs.curation.checks import check_specs, counts_reconcile, removal_guardrail
from llm_assets.defs.ingestion.assets import raw_corpus
from llm_assets.defs.ingestion.partitions import sources_partitions
from llm_assets.ingestion.landing import scan_landing
from llm_assets.lake import LakeStorage, iter_shards
from llm_assets.plots import bar_chart, histogram
from llm_assets.resources.lake import LakeResource

GROUP = "curation"
PII_SALT_KEY = "_secrets/pii_salt"


class StageConfig(dg.Config):
    """Settings every stage shares: shard size and the removal-rate guardrail band."""

    max_rows_per_shard: int = Field(default=50_000, gt=0)
    min_removal_fraction: float = Field(default=0.0, ge=0, le=1)
    max_removal_fraction: float = Field(default=0.5, ge=0, le=1)


class NormalizeStageConfig(StageConfig):
    max_removal_fraction: float = 0.05
    fix_mojibake: bool = True
    boilerplate_min_docs: int = Field(default=3, ge=2)
    boilerplate_min_doc_fraction: float = Field(default=0.5, gt=0, le=1)


class PiiStageConfig(StageConfig):
    policy: str = Field(default="default", description="Policy profile name (default, eu-gdpr, gr) or YAML path.")
    max_removal_fraction: float = 0.2


class DedupStageConfig(StageConfig):
    threshold: float = Field(default=0.8, gt=0, lt=1)
    keep_rule: str = Field(
        default="longest",
        description="Which copy of a duplicate cluster stays: longest, oldest (by partition) or first_id.",
    )
    paragraph_level: bool = True
    incremental: bool = Field(
        default=False,
        description="Deduplicate only sources new since the last run, against its frozen index; never "
        "changes earlier sources.",
    )
    max_removal_fraction: float = 0.5


class QualityStageConfig(StageConfig):
    allowed_languages: list[str] | None = None
    refine_close_languages: bool = Field(
        default=True,
        description="Let lingua decide Norwegian/Nynorsk/Danish and Malay/Indonesian, and the standards' markers "
        "Serbian/Croatian/Bosnian and Egyptian/standard Arabic, which the fastText lite model confuses; off "
        "trades that accuracy for speed.",
    )
    max_removal_fraction: float = 0.5


class PerplexityStageConfig(StageConfig):
    order: int = Field(default=5, ge=2, le=8)
    upper_percentile: float = Field(default=99.0, gt=0, le=100)
    lower_percentile: float = Field(default=0.0, ge=0, lt=100)
    max_removal_fraction: float = 0.1


class ReferenceModelConfig(dg.Config):
    reference_sources: list[str] = Field(
        default_factory=list, description="Sources whose text trains the reference LMs; empty = every source."
    )
    order: int = Field(default=5, ge=2, le=8)


class CuratedCorpusConfig(StageConfig):
    train: float = 0.9
    dev: float = 0.05
    test: float = 0.05
    split_salt: str = "llm_assets-v1"
    max_removal_fraction: float = 0.0


def code_version_of(context: dg.AssetExecutionContext) -> str:
    """The code version declared on the asset, so it is written in one place only."""
    return context.assets_def.code_versions_by_key.get(context.asset_key) or "unversioned"


def _sources(context: dg.AssetExecutionContext) -> list[str]:
    return sorted(context.instance.get_dynamic_partitions(sources_partitions.name or "sources"))


def _result(
    context: dg.AssetExecutionContext,
    storage: LakeStorage,
    run: pipeline.StageRun,
    *,
    config: dg.Config,
    checks: list[dg.AssetCheckResult],
    metadata: dict[str, object] | None = None,
) -> dg.MaterializeResult:
    """Audit record + Dagster result with the figures every stage reports."""
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions=run.input_versions,
        output_data_version=run.data_version,
        counts=run.counts(),
        config=config.model_dump(),
    )
    retention = {s: (run.kept[s] / run.rows_in[s] if run.rows_in[s] else 1.0) for s in sorted(run.rows_in)}
    return dg.MaterializeResult(
        data_version=dg.DataVersion(run.data_version),
        check_results=checks,
        metadata={
            "dagster/row_count": run.total_kept,
            "in": run.total_in,
            "kept": run.total_kept,
            "rejected": run.total_rejected,
            "retention": dg.MetadataValue.float(1 - run.removal_fraction()),
            "rejects_by_rule": dg.MetadataValue.json(dict(run.rejects_by_rule)),
            "stats": dg.MetadataValue.json(run.stats),
            "throughput_mb_s": dg.MetadataValue.float(round(run.bytes_in / 2**20 / max(run.seconds, 1e-9), 2)),
            "retention_plot": dg.MetadataValue.md(bar_chart(retention, title="Retention per source", percent=True)),
            **(metadata or {}),
        },
    )


def _checks(
    context: dg.AssetExecutionContext,
    storage: LakeStorage,
    run: pipeline.StageRun,
    input_dataset: str,
    cfg: StageConfig,
) -> list[dg.AssetCheckResult]:
    return [
        counts_reconcile(context, storage, run, input_dataset),
        removal_guardrail(context, storage, run, cfg.min_removal_fraction, cfg.max_removal_fraction),
    ]


@dg.asset(
    deps=[raw_corpus],
    partitions_def=sources_partitions,
    group_name=GROUP,
    code_version="normalized_shards-v1",
    kinds={"parquet"},
    check_specs=check_specs("normalized_shards"),
)
def normalized_shards(
    context: dg.AssetExecutionContext, config: NormalizeStageConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """NFKC, mojibake and control-character repair, whitespace/punctuation standardisation, and removal of
    boilerplate lines repeated across many documents of the source."""
    storage = lake.storage()
    normalize_config = NormalizeConfig(
        fix_mojibake=config.fix_mojibake,
        boilerplate_min_docs=config.boilerplate_min_docs,
        boilerplate_min_doc_fraction=config.boilerplate_min_doc_fraction,
    )
    run = pipeline.normalize_source(
        storage,
        context.partition_key,
        normalize_config,
        max_rows_per_shard=config.max_rows_per_shard,
        progress=context.log.info,
    )
    checks = _checks(context, storage, run, pipeline.RAW, config)
    return _result(context, storage, run, config=config, checks=checks)


def _pii_salt(storage: LakeStorage) -> str:
    """LLM_ASSETS_PII_SALT from the environment (production: a secret store); else one kept in the lake."""
    salt = os.environ.get("LLM_ASSETS_PII_SALT")
    if salt:
        return salt
    if storage.exists(PII_SALT_KEY):
        return storage.read_bytes(PII_SALT_KEY).decode()
    salt = secrets.token_hex(32)
    storage.write_bytes(PII_SALT_KEY, salt.encode())
    return salt


@dg.asset(
    deps=[normalized_shards],
    partitions_def=sources_partitions,
    group_name=GROUP,
    code_version="pii_scrubbed_shards-v1",
    kinds={"parquet"},
    check_specs=check_specs(
        "pii_scrubbed_shards",
        dg.AssetCheckSpec(
            "no_structured_pii_left",
            asset="pii_scrubbed_shards",
            blocking=True,
            description="A re-scan of the kept text finds no structured PII.",
        ),
    ),
)
def pii_scrubbed_shards(
    context: dg.AssetExecutionContext, config: PiiStageConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """PII redacted or documents dropped per the policy profile; every hit logged as type, span, recognizer
    and salted hash (never the raw value) in `pii_hits`."""
    storage = lake.storage()
    policy = load_policy(config.policy)
    salt = _pii_salt(storage)
    run = pipeline.scrub_source(
        storage,
        context.partition_key,
        policy,
        salt=salt,
        events_schema=PII_EVENT_SCHEMA,
        max_rows_per_shard=config.max_rows_per_shard,
        progress=context.log.info,
    )
    leftover: dict[str, int] = {}
    for shard in iter_shards(storage, run.manifests[context.partition_key]):
        for kind, count in rescan_clean(shard.column("text").to_pylist()).items():
            leftover[kind] = leftover.get(kind, 0) + count
    rescan = dg.AssetCheckResult(
        check_name="no_structured_pii_left",
        passed=not any(leftover.values()),
        metadata={"leftover_by_type": dg.MetadataValue.json(leftover)},
    )
    record_check(
        context,
        storage,
        check_name="no_structured_pii_left",
        passed=rescan.passed,
        data_version=run.data_version,
        figures=leftover,
    )
    hits = run.stats.get("hits_by_kind", {})
    return _result(
        context,
        storage,
        run,
        config=config,
        checks=[*_checks(context, storage, run, pipeline.NORMALIZED, config), rescan],
        metadata={
            "policy": f"{policy.name}@{policy.version}",
            "policy_sha256": policy.sha256,
            "salt_fingerprint": hashlib.sha256(salt.encode()).hexdigest()[:12],
            "hits_plot": dg.MetadataValue.md(bar_chart(hits or {"none": 0}, title="PII hits per type")),
        },
    )


@dg.asset(
    deps=[pii_scrubbed_shards],
    group_name=GROUP,
    # v3: paragraphs hashed with FNV-1a 64 (mixed) instead of blake2b; an index frozen by v2 is refused
    code_version="deduplicated_shards-v3",
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"parquet"},
    check_specs=check_specs("deduplicated_shards"),
)
def deduplicated_shards(
    context: dg.AssetExecutionContext, config: DedupStageConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Exact and MinHash near duplicates removed across all sources; every cluster (members, kept id, rule)
    recorded in `dedup_clusters`."""
    storage = lake.storage()
    dedup_config = DedupConfig(
        threshold=config.threshold, keep_rule=config.keep_rule, paragraph_level=config.paragraph_level
    )
    run, clusters = pipeline.dedup_sources(
        storage,
        _sources(context),
        dedup_config,
        incremental=config.incremental,
        max_rows_per_shard=config.max_rows_per_shard,
        progress=context.log.info,
    )
    duplicate_ratio = {s: run.removal_fraction(s) for s in sorted(run.rows_in)}
    return _result(
        context,
        storage,
        run,
        config=config,
        checks=_checks(context, storage, run, pipeline.PII_SCRUBBED, config),
        metadata={
            "clusters_manifest_version": clusters.data_version,
            "cluster_rows": clusters.rows,
            "duplicate_ratio_plot": dg.MetadataValue.md(
                bar_chart(duplicate_ratio, title="Duplicate ratio per source", percent=True)
            ),
        },
    )


@dg.asset(
    deps=[deduplicated_shards],
    group_name=GROUP,
    # v2: lingua decides no/nn/da and ms/id; v3: the standards' markers decide sr/hr/bs and arz/ar;
    # v4: a word 2-gram seen once is no longer counted as repeated when the next doc starts with it too
    code_version="quality_filtered_shards-v5",
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"parquet"},
    check_specs=check_specs("quality_filtered_shards"),
)
def quality_filtered_shards(
    context: dg.AssetExecutionContext, config: QualityStageConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Language identification and heuristic quality filters with per-language thresholds."""
    storage = lake.storage()
    quality_config = QualityConfig(
        allowed_languages=config.allowed_languages, refine_close_languages=config.refine_close_languages
    )
    tally = pipeline.ColumnTally("lang")
    run = pipeline.quality_sources(
        storage,
        _sources(context),
        quality_config,
        max_rows_per_shard=config.max_rows_per_shard,
        progress=context.log.info,
        on_kept=tally,
    )
    languages = tally.counts["lang"]
    return _result(
        context,
        storage,
        run,
        config=config,
        checks=_checks(context, storage, run, pipeline.DEDUPLICATED, config),
        metadata={
            "languages": dg.MetadataValue.json(languages),
            "language_plot": dg.MetadataValue.md(bar_chart(languages, title="Documents per language")),
        },
    )


@dg.asset(
    deps=[quality_filtered_shards],
    group_name=GROUP,
    code_version="reference_language_models-v1",
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"python"},
)
def reference_language_models(
    context: dg.AssetExecutionContext, config: ReferenceModelConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Character n-gram LMs per language, trained on the reference sources; hashes recorded for lineage."""
    storage = lake.storage()
    sources = config.reference_sources or _sources(context)
    models = pipeline.train_reference_models(storage, sources, PerplexityConfig(order=config.order))
    if not models:
        context.log.warning(
            f"no language has enough reference text in sources {sources}: no document will be perplexity-trimmed; "
            "add reference sources with more text"
        )
    hashes = pipeline.save_reference_models(storage, models)
    storage.write_bytes(f"{pipeline.REFERENCE_LM_PREFIX}/index.json", _json(hashes))
    version = hashlib.sha256(_json(hashes)).hexdigest()
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={f"quality_filtered_shards/{s}": "" for s in sources},
        output_data_version=version,
        counts={"models": len(models)},
        config=config.model_dump(),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "models": dg.MetadataValue.json({lang: m.metadata() for lang, m in models.items()}),
            "sha256": dg.MetadataValue.json(hashes),
            "reference_sources": dg.MetadataValue.json(list(sources)),
        },
    )


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


@dg.asset(
    deps=[quality_filtered_shards, reference_language_models],
    group_name=GROUP,
    code_version="perplexity_scored_shards-v1",
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"parquet"},
    check_specs=check_specs("perplexity_scored_shards"),
)
def perplexity_scored_shards(
    context: dg.AssetExecutionContext, config: PerplexityStageConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Perplexity under the reference LMs; documents outside the per-language percentile bounds trimmed."""
    storage = lake.storage()
    hashes = json.loads(storage.read_bytes(f"{pipeline.REFERENCE_LM_PREFIX}/index.json"))
    models = pipeline.load_reference_models(storage, hashes)
    ppl_config = PerplexityConfig(
        order=config.order, upper_percentile=config.upper_percentile, lower_percentile=config.lower_percentile
    )
    samples: dict[str, list[float]] = {}

    def collect(table: pa.Table) -> None:
        for lang, ppl in zip(table.column("lang").to_pylist(), table.column("perplexity").to_pylist(), strict=True):
            if ppl is not None:
                samples.setdefault(lang, []).append(ppl)

    run, bounds = pipeline.perplexity_sources(
        storage,
        _sources(context),
        models,
        ppl_config,
        max_rows_per_shard=config.max_rows_per_shard,
        progress=context.log.info,
        on_kept=collect,
    )
    top = dict(sorted(samples.items(), key=lambda kv: -len(kv[1]))[:6])
    return _result(
        context,
        storage,
        run,
        config=config,
        checks=_checks(context, storage, run, pipeline.QUALITY, config),
        metadata={
            "bounds": dg.MetadataValue.json(pipeline.bounds_json(bounds)),
            "reference_models": dg.MetadataValue.json(hashes),
            "perplexity_histogram": dg.MetadataValue.md(
                histogram(top, title="Perplexity per language (kept)", xlabel="perplexity per char", log_x=True)
            ),
        },
    )


@dg.asset(
    deps=[perplexity_scored_shards],
    group_name=GROUP,
    code_version="curated_corpus-v1",
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"parquet"},
    check_specs=check_specs(
        "curated_corpus",
        dg.AssetCheckSpec(
            "schema_contract",
            asset="curated_corpus",
            blocking=True,
            description="great-expectations suite over every shard: ids, text, language, split, provenance.",
        ),
    ),
)
def curated_corpus(
    context: dg.AssetExecutionContext, config: CuratedCorpusConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """The curated corpus: domain, jurisdiction and language tags, and deterministic hashed splits."""
    storage = lake.storage()
    sources = _sources(context)
    landing = scan_landing(storage)
    domain_by_source = {name: (src.descriptor.domain if src.descriptor else "general") for name, src in landing.items()}
    ratios = {"train": config.train, "dev": config.dev, "test": config.test}
    tally = pipeline.ColumnTally("lang", "domain", "split", "jurisdiction")
    run = pipeline.curate_sources(
        storage,
        sources,
        on_kept=tally,
        domain_by_source=domain_by_source,
        ratios=ratios,
        salt=config.split_salt,
        max_rows_per_shard=config.max_rows_per_shard,
        progress=context.log.info,
    )
    contract = validate_curated_shards(
        shard for manifest in run.manifests.values() for shard in iter_shards(storage, manifest)
    )
    contract_result = dg.AssetCheckResult(
        check_name="schema_contract",
        passed=contract.success,
        metadata={
            "shards_validated": contract.shards,
            "expectations": contract.expectations,
            "failures": dg.MetadataValue.json(contract.failures),
        },
    )
    record_check(
        context,
        storage,
        check_name="schema_contract",
        passed=contract.success,
        data_version=run.data_version,
        figures={"shards": contract.shards, "failures": len(contract.failures)},
    )
    coverage = tally.counts
    return _result(
        context,
        storage,
        run,
        config=config,
        checks=[*_checks(context, storage, run, pipeline.PERPLEXITY, config), contract_result],
        metadata={
            "coverage": dg.MetadataValue.json(coverage),
            "domain_plot": dg.MetadataValue.md(bar_chart(coverage["domain"], title="Documents per domain")),
            "language_plot": dg.MetadataValue.md(bar_chart(coverage["lang"], title="Documents per language")),
        },
    )
