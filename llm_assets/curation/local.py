"""The whole curation chain on local files, without Dagster: for debugging and for scale-out scripts.

It runs exactly the functions the assets run, against a lake in `OUT/.lake`, then exports
`OUT/kept/*.parquet`, `OUT/rejected/*.parquet`, `OUT/clusters/*.parquet` and `OUT/manifest.json`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import re
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llm_assets.curation import pipeline
from llm_assets.curation.dedup import DedupConfig
from llm_assets.curation.normalize import NormalizeConfig
from llm_assets.curation.perplexity import PerplexityConfig
from llm_assets.curation.pii.policy import load_policy
from llm_assets.curation.pii.scrub import PII_EVENT_SCHEMA
from llm_assets.curation.quality import QualityConfig
from llm_assets.ingestion.descriptor import DESCRIPTOR_FILENAME, IngestError
from llm_assets.ingestion.landing import landing_key, scan_landing, stage_source_folder
from llm_assets.ingestion.run import RAW_CORPUS_REJECTS, ingest_source
from llm_assets.lake import LakeStorage, LocalLakeStorage, iter_shards, read_manifest
from llm_assets.lake.shards import DatasetManifest, ShardInfo, dictionary_columns, read_shard_bytes

log = logging.getLogger(__name__)


class CurationSettings(BaseModel):
    """Every knob of the chain in one file (`--config`), with the same defaults as the assets."""

    model_config = ConfigDict(extra="forbid")

    pii_policy: str = "default"
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    perplexity: PerplexityConfig = Field(default_factory=PerplexityConfig)
    reference_sources: list[str] = Field(default_factory=list)
    split_ratios: dict[str, float] = Field(default_factory=lambda: {"train": 0.9, "dev": 0.05, "test": 0.05})
    split_salt: str = "llm_assets-v1"
    max_file_mb: float = Field(default=256.0, gt=0)
    max_rows_per_shard: int = Field(default=50_000, gt=0)
    pii_salt: str = Field(default="", description="Salt for hashing PII hits; empty = a random one per run.")

    @field_validator("dedup")
    @classmethod
    def _chain_keep_rule(cls, value: DedupConfig) -> DedupConfig:
        if value.keep_rule not in pipeline.CHAIN_KEEP_RULES:
            raise ValueError(pipeline.keep_rule_error(value.keep_rule))
        return value


def load_settings(path: Path | None, profile: str | None) -> CurationSettings:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise IngestError(f"{path}: cannot read the config ({exc}); fix the YAML") from exc
        if not isinstance(loaded, dict):
            raise IngestError(f"{path}: the config must be a YAML mapping of settings")
        data.update(loaded)
    if profile:
        data["pii_policy"] = profile
    try:
        return CurationSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise IngestError(f"{path or 'settings'}: {where}: {first['msg']}") from exc


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_") or "source"
    return slug[:64]


def stage_inputs(storage: LakeStorage, inputs: Sequence[Path]) -> list[str]:
    """Folders with a source.yaml keep theirs; other folders and loose files get a generated descriptor
    with licence and jurisdiction 'unknown' (say so downstream rather than guess)."""
    sources: list[str] = []
    for path in inputs:
        if not path.exists():
            raise IngestError(f"{path}: no such file or folder")
        if path.is_dir() and (path / DESCRIPTOR_FILENAME).is_file():
            sources.append(stage_source_folder(storage, path))
            continue
        name = _slug(path.stem if path.is_file() else path.name)
        if name in sources:
            raise IngestError(f"{path}: a second input is also named '{name}'; rename one of them")
        descriptor = {
            "name": name,
            "licence": "unknown",
            "jurisdiction": "unknown",
            "source_uri": path.resolve().as_uri(),
            "description": "staged by llm-assets curate without a source.yaml",
        }
        storage.write_bytes(landing_key(name, DESCRIPTOR_FILENAME), yaml.safe_dump(descriptor).encode())
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            rel = file.name if path.is_file() else file.relative_to(path).as_posix()
            storage.write_bytes(landing_key(name, rel), file.read_bytes())
        sources.append(name)
    return sources


def _copy_shard(storage: LakeStorage, manifest: DatasetManifest, info: ShardInfo, path: Path) -> None:
    """The lake's shard file, checked against its manifest, written under `path` (temporary name, then rename)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(read_shard_bytes(storage, manifest, info))
    partial.replace(path)


def _export(storage: LakeStorage, dataset: str, sources: Sequence[str], target: Path, *, rename: dict[str, str]) -> int:
    target.mkdir(parents=True, exist_ok=True)
    rows = 0
    for source in sources:
        manifest = read_manifest(storage, dataset, source)
        if manifest is None:
            continue
        if not rename:
            # The lake's shard files are already the Parquet wanted here: copy them (checked against the
            # manifest's sha256) instead of decoding and encoding them again.
            for number, info in enumerate(manifest.shards):
                _copy_shard(storage, manifest, info, target / f"{dataset}-{source}-{number:05d}.parquet")
                rows += info.rows
            continue
        for number, shard in enumerate(iter_shards(storage, manifest)):
            shard = shard.rename_columns([rename.get(c, c) for c in shard.column_names])
            pq.write_table(
                shard,
                target / f"{dataset}-{source}-{number:05d}.parquet",
                compression="zstd",
                use_dictionary=list(dictionary_columns(shard.schema)),
            )
            rows += shard.num_rows
    return rows


def curate_paths(
    inputs: Sequence[Path],
    out: Path,
    settings: CurationSettings,
    progress: Callable[[str], Any] = log.info,
) -> dict[str, Any]:
    """Runs ingestion and every curation stage on `inputs`; returns (and writes) the run manifest."""
    # Between stages, what is left is frozen out of the cycle collector's reach (`settle_heap`) for the run,
    # unless the host process freezes objects itself.
    freeze = gc.get_freeze_count() == 0
    try:
        return _curate_paths(inputs, out, settings, progress, freeze)
    finally:
        if freeze:
            gc.unfreeze()


def _curate_paths(
    inputs: Sequence[Path],
    out: Path,
    settings: CurationSettings,
    progress: Callable[[str], Any],
    freeze: bool,
) -> dict[str, Any]:
    started = time.monotonic()
    work = out / ".lake"
    if work.exists():
        shutil.rmtree(work)
    for folder in ("kept", "rejected", "clusters"):
        shutil.rmtree(out / folder, ignore_errors=True)
    storage = LocalLakeStorage(work)
    sources = stage_inputs(storage, inputs)
    settle_heap(freeze)
    stages: list[dict[str, Any]] = []
    clock = time.monotonic()

    def timed(figures: dict[str, Any]) -> dict[str, Any]:
        """Wall seconds since the previous stage ended, so a slow stage shows in the manifest and the summary."""
        nonlocal clock
        settle_heap(freeze)
        now = time.monotonic()
        figures["seconds"] = round(now - clock, 2)
        clock = now
        return figures

    ingest: dict[str, Any] = {"stage": "ingest", "in": 0, "kept": 0, "rejected": 0, "rejected_by_rule": {}}
    for source in sources:
        run = ingest_source(
            storage,
            source,
            max_file_bytes=int(settings.max_file_mb * 2**20),
            max_rows_per_shard=settings.max_rows_per_shard,
            progress=progress,
        )
        ingest["in"] += run.units
        ingest["kept"] += run.kept
        ingest["rejected"] += run.rejected
        for rule, count in run.rejects_by_rule.items():
            ingest["rejected_by_rule"][rule] = ingest["rejected_by_rule"].get(rule, 0) + count
    stages.append(timed(ingest))

    kw: dict[str, Any] = {"max_rows_per_shard": settings.max_rows_per_shard, "progress": progress}
    policy = load_policy(settings.pii_policy)
    salt = settings.pii_salt or secrets.token_hex(32)
    per_source: list[pipeline.StageRun] = []
    for source in sources:
        per_source.append(pipeline.normalize_source(storage, source, settings.normalize, **kw))
    stages.append(timed(_stage_figures("normalize", per_source)))
    per_source = [
        pipeline.scrub_source(storage, source, policy, salt=salt, events_schema=PII_EVENT_SCHEMA, **kw)
        for source in sources
    ]
    stages.append(timed(_stage_figures("pii", per_source)))
    dedup_run, _clusters = pipeline.dedup_sources(storage, sources, settings.dedup, **kw)
    stages.append(timed(_stage_figures("dedup", [dedup_run])))
    del _clusters
    release_memory(freeze)
    quality_run = pipeline.quality_sources(storage, sources, settings.quality, **kw)
    stages.append(timed(_stage_figures("quality", [quality_run])))
    release_memory(freeze)
    models = pipeline.train_reference_models(storage, settings.reference_sources or sources, settings.perplexity)
    model_hashes = pipeline.save_reference_models(storage, models)
    ppl_run, bounds = pipeline.perplexity_sources(storage, sources, models, settings.perplexity, **kw)
    stages.append(timed(_stage_figures("perplexity", [ppl_run])))  # reference-model training included
    del models
    release_memory(freeze)
    domains = {n: s.descriptor.domain for n, s in scan_landing(storage).items() if s.descriptor is not None}
    curated_run = pipeline.curate_sources(
        storage, sources, domain_by_source=domains, ratios=settings.split_ratios, salt=settings.split_salt, **kw
    )
    stages.append(timed(_stage_figures("curate", [curated_run])))

    kept_rows = _export(storage, pipeline.CURATED, sources, out / "kept", rename={})
    rejected_rows = 0
    for dataset in [
        RAW_CORPUS_REJECTS,
        *(
            pipeline.rejects_dataset(d)
            for d in (
                pipeline.NORMALIZED,
                pipeline.PII_SCRUBBED,
                pipeline.DEDUPLICATED,
                pipeline.QUALITY,
                pipeline.PERPLEXITY,
            )
        ),
    ]:
        rejected_rows += _export(storage, dataset, sources, out / "rejected", rename={"record_id": "id"})
    clusters = read_manifest(storage, pipeline.DEDUP_CLUSTERS, None)
    cluster_rows = 0
    (out / "clusters").mkdir(parents=True, exist_ok=True)
    if clusters is not None:
        for number, info in enumerate(clusters.shards):
            _copy_shard(storage, clusters, info, out / "clusters" / f"clusters-{number:05d}.parquet")
            cluster_rows += info.rows
    manifest = {
        "inputs": [str(p) for p in inputs],
        "sources": sources,
        "stages": stages,
        "kept_rows": kept_rows,
        "rejected_rows": rejected_rows,
        "cluster_rows": cluster_rows,
        "pii_policy": {"name": policy.name, "version": policy.version, "sha256": policy.sha256},
        "reference_models": model_hashes,
        "perplexity_bounds": pipeline.bounds_json(bounds),
        "settings": json.loads(settings.model_dump_json()),
        "export_seconds": round(time.monotonic() - clock, 2),
        "seconds": round(time.monotonic() - started, 2),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def settle_heap(freeze: bool = True) -> None:
    """Collect, then (with `freeze`) move what is left (modules, models, caches: ~200,000 objects) out of
    the cycle collector's reach, so its full collections during the next stage scan only what that stage
    made: they took ~2 % of a run rescanning the same long-lived objects. Frozen objects are still freed by
    reference counting; `gc.unfreeze()` at the end of the run hands any cycle among them back."""
    gc.collect()
    if freeze:
        gc.freeze()


def release_memory(freeze: bool = True) -> None:
    """Hand freed heap back to the OS between stages (glibc keeps it otherwise), so the peak RSS of a long
    run is one stage's working set, not the sum of every stage's leftovers."""
    settle_heap(freeze)
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _stage_figures(stage: str, runs: Sequence[pipeline.StageRun]) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "stage": stage,
        "in": sum(r.total_in for r in runs),
        "kept": sum(r.total_kept for r in runs),
        "rejected": sum(r.total_rejected for r in runs),
    }
    by_rule: dict[str, int] = {}
    for run in runs:
        for rule, count in run.rejects_by_rule.items():
            by_rule[rule] = by_rule.get(rule, 0) + count
    figures["rejected_by_rule"] = by_rule
    return figures
