"""Reads one landed source into `raw_corpus` shards plus a reject shard; used by the asset and the CLI."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llm_assets.compliance.exclusions import excluded_ids, withhold_excluded
from llm_assets.ingestion.descriptor import IngestError, SourceDescriptor
from llm_assets.ingestion.landing import LandingSource, scan_landing
from llm_assets.ingestion.readers import STAGE, iter_source_files
from llm_assets.lake import DatasetManifest, LakeStorage, ShardWriter
from llm_assets.schemas import RECORD_SCHEMA, REJECT_SCHEMA

RAW_CORPUS = "raw_corpus"
RAW_CORPUS_REJECTS = "raw_corpus_rejects"

log = logging.getLogger(__name__)


@dataclass
class IngestRun:
    source: str
    descriptor: SourceDescriptor
    files: int
    units: int
    kept: int
    rejected: int
    input_version: str
    records: DatasetManifest
    rejects: DatasetManifest
    rejects_by_rule: Counter[str] = field(default_factory=Counter)

    @property
    def data_version(self) -> str:
        return hashlib.sha256(f"{self.records.data_version}:{self.rejects.data_version}".encode()).hexdigest()

    def counts(self) -> dict[str, int]:
        return {"files": self.files, "units": self.units, "records": self.kept, "rejects": self.rejected}


def landing_source(storage: LakeStorage, source: str) -> LandingSource:
    """The landing folder of `source`, with a usable descriptor, or a one-line error saying what to do."""
    found = scan_landing(storage).get(source)
    if found is None:
        raise IngestError(
            f"source '{source}' has no folder under {storage.uri('landing/')}: stage it first "
            "(llm-assets ingest PATH) or remove the partition"
        )
    if found.descriptor is None:
        raise IngestError(f"source '{source}': {found.error}")
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


def ingest_source(
    storage: LakeStorage,
    source: str,
    *,
    max_file_bytes: int,
    max_rows_per_shard: int = 50_000,
    progress: Callable[[str], Any] = log.info,
) -> IngestRun:
    """Every file of the landed source read into records or rejects; both datasets committed atomically.

    Records on the erasure exclusion list (`llm_assets.compliance.exclusions`) become rejects too.
    """
    landing = landing_source(storage, source)
    excluded = excluded_ids(storage)
    descriptor = landing.descriptor
    assert descriptor is not None
    file_hashes: dict[str, str] = {}
    units = kept = rejected = 0
    by_rule: Counter[str] = Counter()
    started = time.monotonic()
    with (
        ShardWriter(storage, RAW_CORPUS, source, RECORD_SCHEMA, max_rows_per_shard=max_rows_per_shard) as records,
        ShardWriter(
            storage, RAW_CORPUS_REJECTS, source, REJECT_SCHEMA, max_rows_per_shard=max_rows_per_shard
        ) as rejects,
    ):
        outcomes = iter_source_files(_loaders(storage, landing, file_hashes), descriptor, max_file_bytes=max_file_bytes)
        for done, outcome in enumerate(outcomes, start=1):
            kept_rows, withheld = withhold_excluded(outcome.records, excluded, stage=STAGE)
            rejected_rows = [*outcome.rejects, *withheld]
            records.write(kept_rows)
            rejects.write(rejected_rows)
            units += outcome.units
            kept += len(kept_rows)
            rejected += len(rejected_rows)
            by_rule.update(r["rule"] for r in rejected_rows)
            progress(
                f"{source}: file {done}/{len(landing.files)} read; {kept} records, {rejected} rejects "
                f"({units / max(time.monotonic() - started, 1e-9):.0f} units/s)"
            )
        input_version = hashlib.sha256(
            "".join(f"{k}\t{v}\n" for k, v in sorted(file_hashes.items())).encode()
        ).hexdigest()
        provenance = {"input_data_version": input_version, "source": source}
        rejects_manifest = rejects.commit(extra=provenance)
        records_manifest = records.commit(
            extra={**provenance, "units": units, "rejects_data_version": rejects_manifest.data_version}
        )
    return IngestRun(
        source=source,
        descriptor=descriptor,
        files=len(landing.files),
        units=units,
        kept=kept,
        rejected=rejected,
        input_version=input_version,
        records=records_manifest,
        rejects=rejects_manifest,
        rejects_by_rule=by_rule,
    )
