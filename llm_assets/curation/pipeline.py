"""Runs curation stages over lake datasets, shard by shard, for the Dagster assets and the CLI alike.

Each stage reads its input dataset one shard at a time (memory bounded by shard size), applies a pure
batch function and writes kept rows, rejects and optional events through atomic `ShardWriter`s. Datasets
keep one lake partition per source even for global stages, so later stages stream per source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from llm_assets.curation.dedup import PARAGRAPH_EVENT_SCHEMA, DedupConfig, DedupIndex, apply_plan
from llm_assets.curation.normalize import (
    LineCounts,
    NormalizeConfig,
    boilerplate_lines,
    count_prepared_lines,
    normalize_batch,
    prepare_text_array,
)
from llm_assets.curation.perplexity import (
    CharNgramLM,
    PerplexityConfig,
    percentile_bounds,
    score_batch,
    trim_batch,
)
from llm_assets.curation.pii.policy import PiiPolicy
from llm_assets.curation.pii.scrub import scrub_batch
from llm_assets.curation.quality import QualityConfig, quality_filter_batch
from llm_assets.curation.spill import ShardSpill
from llm_assets.curation.splits import tag_batch
from llm_assets.curation.stage import StageOutput
from llm_assets.lake import DatasetManifest, LakeError, LakeStorage, ShardWriter, iter_shards, read_manifest
from llm_assets.schemas import (
    CURATED_SCHEMA,
    PERPLEXITY_SCHEMA,
    QUALITY_SCHEMA,
    RECORD_SCHEMA,
    REJECT_SCHEMA,
)

log = logging.getLogger(__name__)

RAW = "raw_corpus"
NORMALIZED = "normalized_shards"
PII_SCRUBBED = "pii_scrubbed_shards"
DEDUPLICATED = "deduplicated_shards"
QUALITY = "quality_filtered_shards"
PERPLEXITY = "perplexity_scored_shards"
CURATED = "curated_corpus"
PII_HITS = "pii_hits"
DEDUP_CLUSTERS = "dedup_clusters"
DEDUP_PARAGRAPH_EVENTS = "dedup_paragraph_events"
DEDUP_INDEX_KEY = "indexes/dedup/frozen.arrow"
REFERENCE_LM_PREFIX = "models/reference_lm"


def rejects_dataset(dataset: str) -> str:
    return f"{dataset}_rejects"


@dataclass
class StageRun:
    """What one stage did over one or more sources: the figures every check and the audit trail need."""

    stage: str
    dataset: str
    rows_in: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    input_versions: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, DatasetManifest] = field(default_factory=dict)
    reject_manifests: dict[str, DatasetManifest] = field(default_factory=dict)
    rejects_by_rule: Counter[str] = field(default_factory=Counter)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    bytes_in: int = 0

    @property
    def data_version(self) -> str:
        parts = [
            f"{s}:{self.manifests[s].data_version}:{self.reject_manifests[s].data_version}"
            for s in sorted(self.manifests)
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    @property
    def total_in(self) -> int:
        return sum(self.rows_in.values())

    @property
    def total_kept(self) -> int:
        return sum(self.kept.values())

    @property
    def total_rejected(self) -> int:
        return sum(self.rejected.values())

    def removal_fraction(self, source: str | None = None) -> float:
        rows_in = self.rows_in[source] if source else self.total_in
        rejected = self.rejected[source] if source else self.total_rejected
        return rejected / rows_in if rows_in else 0.0

    def counts(self) -> dict[str, int]:
        return {"in": self.total_in, "kept": self.total_kept, "rejected": self.total_rejected}


class ColumnTally:
    """Counts the values of some columns over every kept batch, e.g. documents per language or domain."""

    def __init__(self, *columns: str) -> None:
        self.counts: dict[str, dict[str, int]] = {column: {} for column in columns}

    def __call__(self, table: pa.Table) -> None:
        for column, counts in self.counts.items():
            for item in pa.compute.value_counts(table.column(column)).to_pylist():
                key = str(item["values"])
                counts[key] = counts.get(key, 0) + int(item["counts"])


def merge_stats(total: dict[str, Any], part: Mapping[str, Any]) -> None:
    """Adds numbers and merges nested count dicts, so per-batch stats sum to per-stage stats."""
    for key, value in part.items():
        if isinstance(value, bool):
            total[key] = total.get(key, False) or value
        elif isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, Mapping):
            nested = total.setdefault(key, {})
            if isinstance(nested, dict):
                merge_stats(nested, value)
        else:
            total[key] = value


def input_manifest(storage: LakeStorage, dataset: str, source: str) -> DatasetManifest:
    manifest = read_manifest(storage, dataset, source)
    if manifest is None:
        raise LakeError(
            f"{storage.uri(f'datasets/{dataset}/{source}/_manifest.json')} not found: materialize {dataset} "
            f"for source '{source}' first"
        )
    return manifest


def _text_bytes(table: pa.Table) -> int:
    return int(pa.compute.sum(pa.compute.binary_length(table.column("text"))).as_py() or 0)


def run_batch_stage(
    storage: LakeStorage,
    *,
    stage: str,
    input_dataset: str,
    output_dataset: str,
    output_schema: pa.Schema,
    sources: Sequence[str],
    batch_fn: Callable[[pa.Table, str], StageOutput],
    events_dataset: str | None = None,
    events_schema: pa.Schema | None = None,
    max_rows_per_shard: int = 50_000,
    progress: Callable[[str], Any] = log.info,
    extra: Mapping[str, Any] | None = None,
    on_kept: Callable[[pa.Table], Any] | None = None,
    read_shards: Callable[[str, DatasetManifest], Iterable[pa.Table]] | None = None,
) -> StageRun:
    """Streams every shard of `input_dataset` for each source through `batch_fn(table, source)`.

    `on_kept` sees every kept batch as it is written (for figures and plots, without reading it back).
    `read_shards(source, manifest)` replaces reading the manifest's shards from the lake (a stage that has
    read them before and kept a local copy, as dedup does).
    """
    run = StageRun(stage=stage, dataset=output_dataset)
    started = time.monotonic()
    for number, source in enumerate(sources, start=1):
        manifest = input_manifest(storage, input_dataset, source)
        run.input_versions[f"{input_dataset}/{source}"] = manifest.data_version
        rows_in = kept = rejected = 0
        with ExitStack() as stack:
            kept_writer = stack.enter_context(
                ShardWriter(storage, output_dataset, source, output_schema, max_rows_per_shard=max_rows_per_shard)
            )
            reject_writer = stack.enter_context(
                ShardWriter(
                    storage,
                    rejects_dataset(output_dataset),
                    source,
                    REJECT_SCHEMA,
                    max_rows_per_shard=max_rows_per_shard,
                )
            )
            events_writer = (
                stack.enter_context(
                    ShardWriter(storage, events_dataset, source, events_schema, max_rows_per_shard=max_rows_per_shard)
                )
                if events_dataset and events_schema is not None
                else None
            )
            for shard in iter_shards(storage, manifest) if read_shards is None else read_shards(source, manifest):
                run.bytes_in += _text_bytes(shard)
                out = batch_fn(shard, source)
                if out.kept.num_rows + out.rejects.num_rows != shard.num_rows:
                    raise RuntimeError(
                        f"{stage} on source '{source}': {shard.num_rows} rows in but {out.kept.num_rows} kept + "
                        f"{out.rejects.num_rows} rejected; a stage must account for every record"
                    )
                kept_writer.write(out.kept)
                if on_kept is not None:
                    on_kept(out.kept)
                reject_writer.write(out.rejects)
                if events_writer is not None and out.events is not None:
                    events_writer.write(out.events)
                rows_in += shard.num_rows
                kept += out.kept.num_rows
                rejected += out.rejects.num_rows
                run.rejects_by_rule.update(out.rejects.column("rule").to_pylist())
                merge_stats(run.stats, out.stats)
            provenance = {"stage": stage, "input": {input_dataset: manifest.data_version}, "rows_in": rows_in}
            provenance.update(extra or {})
            if events_writer is not None:
                events_writer.commit(extra=provenance)
            run.reject_manifests[source] = reject_writer.commit(extra=provenance)
            run.manifests[source] = kept_writer.commit(extra=provenance)
        run.rows_in[source], run.kept[source], run.rejected[source] = rows_in, kept, rejected
        elapsed = max(time.monotonic() - started, 1e-9)
        progress(
            f"{stage}: source {number}/{len(sources)} '{source}': {rows_in} in, {kept} kept, {rejected} rejected "
            f"({run.bytes_in / 2**20 / elapsed:.1f} MB/s so far)"
        )
    run.seconds = time.monotonic() - started
    return run


def normalize_source(
    storage: LakeStorage, source: str, config: NormalizeConfig, *, max_rows_per_shard: int = 50_000, **kw: Any
) -> StageRun:
    """Two passes over one source: count lines across documents (boilerplate), then normalise.

    Pass 1 prepares every shard (every step but boilerplate removal) and spills the prepared texts, their
    candidate lines and the shard itself to local scratch files (uncompressed Arrow), so pass 2 only removes
    boilerplate, without preparing or decoding anything again; memory stays bounded by one shard, local disk
    by about twice the source's text.
    """
    manifest = input_manifest(storage, RAW, source)
    counts = LineCounts()
    changes: list[dict[str, int]] = []
    spill_schema = pa.schema([pa.field("text", pa.large_string())])
    lines_schema = pa.schema([("doc", pa.int64()), ("position", pa.int64()), ("key", pa.uint64())])
    with tempfile.TemporaryDirectory(prefix="normalize-") as scratch:
        spill = str(Path(scratch) / "prepared.arrows")
        lines_spill = str(Path(scratch) / "lines.arrows")  # pass 2 removes lines by these, not found again
        # uncompressed: local scratch read back once, where lz4 cost ~5 % of the stage for nothing kept
        options = pa.ipc.IpcWriteOptions(compression=None, use_threads=False)
        (Path(scratch) / "shards").mkdir()
        shards = ShardSpill(Path(scratch) / "shards")
        with (
            pa.OSFile(spill, "wb") as sink,
            pa.ipc.new_stream(sink, spill_schema, options=options) as writer,
            pa.OSFile(lines_spill, "wb") as lines_sink,
            pa.ipc.new_stream(lines_sink, lines_schema, options=options) as lines_writer,
        ):
            for shard in iter_shards(storage, manifest):
                shards.add(source, shard)
                texts, shard_changes = prepare_text_array(shard.column("text"), config)
                lines = count_prepared_lines(texts, config, counts)
                writer.write_batch(pa.record_batch([texts], schema=spill_schema))
                columns = [pa.array(lines.get_column(name).to_numpy()) for name in lines_schema.names]
                lines_writer.write_batch(pa.record_batch(columns, schema=lines_schema))  # one batch per shard
                changes.append(shard_changes)
        boilerplate = boilerplate_lines(counts, manifest.rows, config)
        with pa.OSFile(spill, "rb") as spilled, pa.OSFile(lines_spill, "rb") as spilled_lines:
            reader = pa.ipc.open_stream(spilled, options=pa.ipc.IpcReadOptions(use_threads=False))
            lines_reader = pa.ipc.open_stream(spilled_lines, options=pa.ipc.IpcReadOptions(use_threads=False))
            prepared = zip(reader, lines_reader, changes, strict=True)

            def normalize(table: pa.Table, _source: str) -> StageOutput:
                batch, lines, shard_changes = next(prepared)
                if batch.num_rows != table.num_rows:  # the spill is read in the order pass 1 wrote it
                    raise RuntimeError(
                        f"normalize {source}: prepared shard has {batch.num_rows} rows, input shard {table.num_rows}"
                    )
                texts = batch.column(0)
                frame = pl.DataFrame(pa.Table.from_batches([lines]))
                return normalize_batch(table, config, boilerplate, prepared=(texts, shard_changes), lines=frame)

            run = run_batch_stage(
                storage,
                stage="normalize",
                input_dataset=RAW,
                output_dataset=NORMALIZED,
                output_schema=RECORD_SCHEMA,
                sources=[source],
                batch_fn=normalize,
                max_rows_per_shard=max_rows_per_shard,
                extra={"boilerplate_lines": len(boilerplate)},
                read_shards=lambda source, manifest: shards.tables(source, _reread(storage, manifest)),
                **kw,
            )
    run.stats["boilerplate_line_patterns"] = len(boilerplate)
    return run


def scrub_source(
    storage: LakeStorage,
    source: str,
    policy: PiiPolicy,
    *,
    salt: str,
    events_schema: pa.Schema,
    max_rows_per_shard: int = 50_000,
    **kw: Any,
) -> StageRun:
    return run_batch_stage(
        storage,
        stage="pii",
        input_dataset=NORMALIZED,
        output_dataset=PII_SCRUBBED,
        output_schema=RECORD_SCHEMA,
        sources=[source],
        batch_fn=lambda table, _source: scrub_batch(table, policy, salt=salt),
        events_dataset=PII_HITS,
        events_schema=events_schema,
        max_rows_per_shard=max_rows_per_shard,
        extra={"policy": policy.name, "policy_version": policy.version, "policy_sha256": policy.sha256},
        **kw,
    )


def frozen_partitions(frozen_index: bytes) -> set[str]:
    """The sources a frozen dedup index already holds."""
    table = pa.ipc.open_stream(io.BytesIO(frozen_index)).read_all()
    return set(table.column("partition").to_pylist())


# Keep rules the chain can apply: it deduplicates before the quality stage, so no document has a quality score
# yet ("highest_quality" is for callers of DedupIndex that pass one).
CHAIN_KEEP_RULES = ("longest", "oldest", "first_id")


def keep_rule_error(rule: str) -> str:
    return (
        f"dedup keep_rule {rule!r} cannot be used in the curation chain: it deduplicates before the quality "
        f"stage, so documents have no quality score yet; use one of {', '.join(CHAIN_KEEP_RULES)}"
    )


def dedup_sources(
    storage: LakeStorage,
    sources: Sequence[str],
    config: DedupConfig,
    *,
    incremental: bool = False,
    max_rows_per_shard: int = 50_000,
    progress: Callable[[str], Any] = log.info,
) -> tuple[StageRun, DatasetManifest]:
    """Global dedup: index every source's shards (signatures only), resolve clusters, then filter.

    With `incremental=True` and a frozen index in the lake (written by every run), only sources the frozen
    index does not hold are indexed and filtered, against it: earlier sources are never changed. The new
    frozen index is written last.
    """
    if config.keep_rule not in CHAIN_KEEP_RULES:
        raise ValueError(keep_rule_error(config.keep_rule))
    frozen = storage.read_bytes(DEDUP_INDEX_KEY) if incremental and storage.exists(DEDUP_INDEX_KEY) else None
    done = frozen_partitions(frozen) if frozen is not None else set()
    todo = sorted(s for s in sources if s not in done)

    with tempfile.TemporaryDirectory(prefix="dedup-") as scratch:
        spill = ShardSpill(Path(scratch))
        manifests = {source: input_manifest(storage, PII_SCRUBBED, source) for source in todo}
        with DedupIndex.from_frozen(frozen, config) if frozen is not None else DedupIndex(config) as index:
            for source in todo:
                for shard in iter_shards(storage, manifests[source]):
                    spill.add(source, shard)
                    index.add_batch(shard.select(["id", "text"]), partition=source)
                progress(f"dedup: indexed source '{source}' ({len(index)} documents so far)")
            if index.verification_ids(incremental=frozen is not None):
                # Pairs near the threshold are decided on exact shingle sets: one more pass over the shards.
                for source in todo:
                    for shard in spill.tables(source, _reread(storage, manifests[source])):
                        index.add_shingle_sets(shard.select(["id", "text"]))
                progress("dedup: verified near-threshold pairs on exact shingle sets")
            plan = index.resolve(incremental=frozen is not None)
            frozen_next = index.freeze(plan)
        with ShardWriter(
            storage, DEDUP_CLUSTERS, None, plan.clusters.schema, max_rows_per_shard=max_rows_per_shard
        ) as w:
            w.write(plan.clusters)
            clusters_manifest = w.commit(extra={"config": config.model_dump(), "incremental": frozen is not None})
        run = run_batch_stage(
            storage,
            stage="dedup",
            input_dataset=PII_SCRUBBED,
            output_dataset=DEDUPLICATED,
            output_schema=RECORD_SCHEMA,
            sources=todo,
            batch_fn=lambda table, _source: apply_plan(table, plan),
            events_dataset=DEDUP_PARAGRAPH_EVENTS,
            events_schema=PARAGRAPH_EVENT_SCHEMA,
            max_rows_per_shard=max_rows_per_shard,
            progress=progress,
            extra={"clusters_data_version": clusters_manifest.data_version, "incremental": frozen is not None},
            read_shards=lambda source, manifest: spill.tables(source, _reread(storage, manifest)),
        )
    for source in sorted(done.intersection(sources)):
        # Untouched by an incremental run, but part of this version of the asset.
        run.manifests[source] = input_manifest(storage, DEDUPLICATED, source)
        run.reject_manifests[source] = input_manifest(storage, rejects_dataset(DEDUPLICATED), source)
    storage.write_bytes(DEDUP_INDEX_KEY, frozen_next)
    run.stats["clusters"] = len(set(plan.clusters.column("cluster_id").to_pylist()))
    run.stats["frozen_sources"] = sorted(done)
    return run, clusters_manifest


def _reread(storage: LakeStorage, manifest: DatasetManifest) -> Callable[[int], pa.Table]:
    """Shard n of `manifest`, read from the lake again: for a `ShardSpill` that had no room for its copy."""
    return lambda number: next(iter_shards(storage, dataclasses.replace(manifest, shards=(manifest.shards[number],))))


def quality_sources(storage: LakeStorage, sources: Sequence[str], config: QualityConfig, **kw: Any) -> StageRun:
    return run_batch_stage(
        storage,
        stage="quality",
        input_dataset=DEDUPLICATED,
        output_dataset=QUALITY,
        output_schema=QUALITY_SCHEMA,
        sources=sorted(sources),
        batch_fn=lambda table, _source: quality_filter_batch(table, config),
        **kw,
    )


def train_reference_models(
    storage: LakeStorage,
    reference_sources: Iterable[str],
    config: PerplexityConfig,
    *,
    min_chars: int = 20_000,
    max_chars_per_language: int = 2_000_000,
) -> dict[str, CharNgramLM]:
    """One character n-gram LM per language of the reference sources' quality-filtered text.

    Languages with less than `min_chars` of reference text get no model (their documents are not
    trimmed). Each language's training text is capped (first documents in source/shard order, so deterministic):
    the model's cost and memory stay bounded whatever the corpus size. The capped texts are spilled to local
    scratch files per language and each model is trained from its own file, so memory holds one language's
    text at a time, not every language's at once.
    """
    chars_by_lang: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="reference-lm-") as scratch, _LanguageSpill(Path(scratch)) as spill:
        for source in sorted(reference_sources):
            for shard in iter_shards(storage, input_manifest(storage, QUALITY, source), columns=["text", "lang"]):
                # Only documents whose language is still under its cap become Python strings: past the cap,
                # which a large corpus reaches early, a shard costs a look at its `lang` column.
                langs = shard.column("lang").to_pylist()
                wanted = [
                    i
                    for i, lang in enumerate(langs)
                    if lang and lang != "und" and chars_by_lang.get(lang, 0) < max_chars_per_language
                ]
                texts = shard.column("text").take(pa.array(wanted, pa.int64())).to_pylist()
                for i, text in zip(wanted, texts, strict=True):
                    lang = langs[i]
                    if chars_by_lang.get(lang, 0) >= max_chars_per_language:
                        continue
                    piece = text[: max_chars_per_language - chars_by_lang.get(lang, 0)]
                    spill.add(lang, piece)
                    chars_by_lang[lang] = chars_by_lang.get(lang, 0) + len(piece)
        spill.flush()
        models = {}
        for lang in sorted(chars_by_lang):
            if chars_by_lang[lang] >= min_chars:
                models[lang] = CharNgramLM.train(spill.texts(lang), order=config.order, language=lang)
    return models


class _LanguageSpill:
    """Texts appended per language to lz4 Arrow streams in a scratch folder, in about 1 MB batches."""

    _SCHEMA = pa.schema([pa.field("text", pa.large_string())])
    _BATCH_CHARS = 1 << 20

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._pending: dict[str, list[str]] = {}
        self._pending_chars: dict[str, int] = {}
        self._writers: dict[str, tuple[Any, Any]] = {}

    def __enter__(self) -> _LanguageSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def _path(self, lang: str) -> Path:
        return self.folder / f"{hashlib.sha256(lang.encode()).hexdigest()[:16]}.arrows"  # any label is a safe name

    def add(self, lang: str, text: str) -> None:
        self._pending.setdefault(lang, []).append(text)
        self._pending_chars[lang] = self._pending_chars.get(lang, 0) + len(text)
        if self._pending_chars[lang] >= self._BATCH_CHARS:
            self._write(lang)

    def _write(self, lang: str) -> None:
        if lang not in self._writers:
            sink = pa.OSFile(str(self._path(lang)), "wb")
            options = pa.ipc.IpcWriteOptions(compression="lz4", use_threads=False)
            self._writers[lang] = (sink, pa.ipc.new_stream(sink, self._SCHEMA, options=options))
        batch = pa.record_batch([pa.array(self._pending.pop(lang), pa.large_string())], schema=self._SCHEMA)
        self._writers[lang][1].write_batch(batch)
        self._pending_chars[lang] = 0

    def flush(self) -> None:
        """Write what is pending and close every stream (texts() reads them back)."""
        for lang in list(self._pending):
            self._write(lang)
        for sink, writer in self._writers.values():
            writer.close()
            sink.close()
        self._writers = {}

    def texts(self, lang: str) -> list[str]:
        with pa.OSFile(str(self._path(lang)), "rb") as source:
            table = pa.ipc.open_stream(source).read_all()
        return table.column("text").to_pylist()


def save_reference_models(storage: LakeStorage, models: Mapping[str, CharNgramLM]) -> dict[str, str]:
    """Writes each model to the lake; returns language → sha256 (recorded in lineage)."""
    hashes = {}
    for lang, model in sorted(models.items()):
        storage.write_bytes(f"{REFERENCE_LM_PREFIX}/{lang}.lm", model.to_bytes())
        hashes[lang] = model.sha256
    return hashes


def load_reference_models(storage: LakeStorage, hashes: Mapping[str, str]) -> dict[str, CharNgramLM]:
    models = {}
    for lang, expected in hashes.items():
        model = CharNgramLM.from_bytes(storage.read_bytes(f"{REFERENCE_LM_PREFIX}/{lang}.lm"))
        if model.sha256 != expected:
            raise LakeError(
                f"{storage.uri(f'{REFERENCE_LM_PREFIX}/{lang}.lm')}: hash {model.sha256[:12]} differs from the "
                f"recorded {expected[:12]}; rematerialize the reference model"
            )
        models[lang] = model
    return models


def bounds_json(bounds: Mapping[str, tuple[float, float]]) -> dict[str, list[float | None]]:
    """Percentile bounds as JSON: an open end (±inf) becomes null."""
    return {lang: [float(b) if np.isfinite(b) else None for b in pair] for lang, pair in sorted(bounds.items())}


def perplexity_sources(
    storage: LakeStorage,
    sources: Sequence[str],
    models: Mapping[str, CharNgramLM],
    config: PerplexityConfig,
    **kw: Any,
) -> tuple[StageRun, dict[str, tuple[float, float]]]:
    """Scores every document once, computes per-language percentile bounds over the corpus, then trims.

    The first pass keeps only the scores (8 bytes a document, in shard order); the second pass attaches
    them again instead of scoring twice.
    """
    scores: dict[tuple[str, int], pa.Array] = {}
    values: dict[str, list[np.ndarray]] = {}
    for source in sorted(sources):
        shards = iter_shards(storage, input_manifest(storage, QUALITY, source), columns=["text", "lang"])
        for number, shard in enumerate(shards):
            scored = score_batch(shard, models, max_chars_scored=config.max_chars_scored)
            scores[(source, number)] = scored.column("perplexity").combine_chunks()
            for lang in set(scored.column("lang").to_pylist()):
                mask = pa.compute.equal(scored.column("lang"), lang)
                ppl = scored.filter(mask).column("perplexity").drop_null().to_numpy()
                values.setdefault(lang, []).append(ppl)
    bounds = percentile_bounds({lang: np.concatenate(parts) for lang, parts in values.items()}, config)
    shard_numbers: dict[str, int] = {}

    def attach_and_trim(table: pa.Table, source: str) -> StageOutput:
        number = shard_numbers.get(source, 0)
        shard_numbers[source] = number + 1
        return trim_batch(table.append_column("perplexity", scores.pop((source, number))), bounds)

    run = run_batch_stage(
        storage,
        stage="perplexity",
        input_dataset=QUALITY,
        output_dataset=PERPLEXITY,
        output_schema=PERPLEXITY_SCHEMA,
        sources=sorted(sources),
        batch_fn=attach_and_trim,
        extra={"bounds": bounds_json(bounds), "models": {k: m.sha256 for k, m in models.items()}},
        **kw,
    )
    return run, bounds


def curate_sources(
    storage: LakeStorage,
    sources: Sequence[str],
    *,
    domain_by_source: Mapping[str, str],
    ratios: Mapping[str, float],
    salt: str,
    **kw: Any,
) -> StageRun:
    """Tags domain/jurisdiction/language and assigns hashed splits; removes nothing."""

    def tag(table: pa.Table, _source: str) -> StageOutput:
        return StageOutput(
            kept=tag_batch(table, domain_by_source=domain_by_source, ratios=ratios, salt=salt),
            rejects=REJECT_SCHEMA.empty_table(),
        )

    return run_batch_stage(
        storage,
        stage="curate",
        input_dataset=PERPLEXITY,
        output_dataset=CURATED,
        output_schema=CURATED_SCHEMA,
        sources=sorted(sources),
        batch_fn=tag,
        extra={"ratios": dict(ratios), "split_salt": salt},
        **kw,
    )
