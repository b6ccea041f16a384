"""Faults across the chain: a killed dedup rerun gives the same output; hostile input is counted, not fatal."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from llm_assets.curation import pipeline
from llm_assets.curation.dedup import DedupConfig
from llm_assets.curation.local import curate_paths, load_settings
from llm_assets.curation.normalize import NormalizeConfig
from llm_assets.curation.perplexity import CharNgramLM, PerplexityConfig
from llm_assets.curation.pii.policy import load_policy
from llm_assets.curation.pii.scrub import PII_EVENT_SCHEMA
from llm_assets.curation.spill import ShardSpill
from llm_assets.ingestion.run import ingest_source
from llm_assets.lake import LocalLakeStorage, ShardWriter, read_dataset, read_manifest
from llm_assets.schemas import QUALITY_SCHEMA

SOURCES = ("alpha", "beta")


def prepared_lake(root: Path) -> LocalLakeStorage:
    """Two landed sources taken through ingestion, normalisation and PII scrubbing."""
    storage = LocalLakeStorage(root)
    base = "Paragraph {i} of the public register describes procedure {j} for municipal services in detail."
    for n, source in enumerate(SOURCES):
        storage.write_bytes(
            f"landing/{source}/source.yaml",
            f"name: {source}\nlicence: CC0-1.0\njurisdiction: EU\nsource_uri: https://example.org/{source}\n".encode(),
        )
        docs = [" ".join(base.format(i=i, j=(i + k) % 7) for k in range(12)) for i in range(400)]
        docs += docs[n * 50 : n * 50 + 60]  # duplicates inside and across sources
        lines = "\n".join(json.dumps({"text": d}) for d in docs) + "\n"
        storage.write_bytes(f"landing/{source}/docs.jsonl", lines.encode())
        ingest_source(storage, source, max_file_bytes=2**30, max_rows_per_shard=50)
        pipeline.normalize_source(storage, source, NormalizeConfig(), max_rows_per_shard=50)
        pipeline.scrub_source(
            storage, source, load_policy("default"), salt="s", events_schema=PII_EVENT_SCHEMA, max_rows_per_shard=50
        )
    return storage


DEDUP_CHILD = """
import sys
import pytest

from llm_assets.curation import pipeline
from llm_assets.curation.dedup import DedupConfig
from llm_assets.lake import LocalLakeStorage
pipeline.dedup_sources(LocalLakeStorage(sys.argv[1]), ["alpha", "beta"], DedupConfig(), max_rows_per_shard=50)
"""


def dedup_versions(storage: LocalLakeStorage) -> dict[str, str]:
    versions = {s: read_manifest(storage, pipeline.DEDUPLICATED, s).data_version for s in SOURCES}
    versions["clusters"] = read_manifest(storage, pipeline.DEDUP_CLUSTERS, None).data_version
    return versions


def test_dedup_killed_with_sigkill_reruns_to_the_same_output(tmp_path: Path) -> None:
    clean = prepared_lake(tmp_path / "clean")
    pipeline.dedup_sources(clean, list(SOURCES), DedupConfig(), max_rows_per_shard=50)
    expected = dedup_versions(clean)

    killed = prepared_lake(tmp_path / "killed")
    child = subprocess.Popen([sys.executable, "-c", DEDUP_CHILD, str(tmp_path / "killed")])
    deadline = time.monotonic() + 120
    written = tmp_path / "killed" / "datasets" / pipeline.DEDUPLICATED
    while time.monotonic() < deadline and child.poll() is None:
        if written.exists() and any(written.rglob("*.parquet")):
            break  # it is writing output shards: kill it mid-stage
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    pipeline.dedup_sources(killed, list(SOURCES), DedupConfig(), max_rows_per_shard=50)
    assert dedup_versions(killed) == expected


def test_normalize_and_dedup_decode_each_input_shard_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Their later passes read the first pass's local copy, not the lake's Parquet again, and filter the same
    tables (the output equals a run reading the lake every time: the chain's data versions are unchanged)."""
    reads: Counter[str] = Counter()
    real_iter_shards = pipeline.iter_shards

    def counted(storage: LocalLakeStorage, manifest: object, **kw: object) -> object:
        for table in real_iter_shards(storage, manifest, **kw):  # type: ignore[arg-type]
            reads[manifest.dataset] += 1  # type: ignore[attr-defined]
            yield table

    monkeypatch.setattr(pipeline, "iter_shards", counted)
    storage = prepared_lake(tmp_path / "lake")  # ingests, normalises, scrubs
    # near-threshold verification on: the pass that read the shards a second time
    run, _ = pipeline.dedup_sources(storage, list(SOURCES), DedupConfig(), max_rows_per_shard=50)
    shards = {
        dataset: sum(len(read_manifest(storage, dataset, s).shards) for s in SOURCES)
        for dataset in (pipeline.RAW, pipeline.NORMALIZED, pipeline.PII_SCRUBBED)
    }
    assert reads == shards
    assert run.stats["clusters"] > 0
    copied = dedup_versions(storage)

    # Without room for copies, the later passes read the lake again and write the same output.
    reads.clear()
    monkeypatch.setattr(pipeline, "ShardSpill", lambda folder: ShardSpill(folder, max_bytes=0))
    pipeline.dedup_sources(storage, list(SOURCES), DedupConfig(), max_rows_per_shard=50)
    assert dedup_versions(storage) == copied
    assert reads[pipeline.PII_SCRUBBED] == 3 * shards[pipeline.PII_SCRUBBED]  # index, verification, apply


def test_shard_spill_gives_back_what_it_was_given_within_its_budget(tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b"], "text": ["x" * 70_000, None]}).replace_schema_metadata({b"k": b"v"})
    spilled = ShardSpill(tmp_path)
    assert spilled.add("beta", table) and spilled.add("alpha", table.slice(1)) and spilled.add("beta", table[:1])
    back = list(spilled.tables("beta"))
    assert len(back) == 2
    assert all(t.equals(e, check_metadata=True) for t, e in zip(back, [table, table.slice(0, 1)], strict=True))
    assert [t.num_rows for t in spilled.tables("alpha")] == [1] and list(spilled.tables("gamma")) == []

    small = ShardSpill(tmp_path, max_bytes=table.nbytes + 100)  # room for the first copy only
    assert small.add("s", table) and not small.add("s", table)
    assert [t.num_rows for t in small.tables("s", reread=lambda n: table.slice(0, n))] == [2, 1]
    with pytest.raises(RuntimeError, match="shard 1 of source 's' was not copied"):
        list(small.tables("s"))


def test_hostile_input_is_counted_not_fatal(tmp_path: Path) -> None:
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "empty.jsonl").write_bytes(b"")
    (folder / "garbage.txt").write_bytes(os.urandom(4096))
    big = ("Η δημόσια διοίκηση δημοσιεύει τις αποφάσεις της. The council publishes its decisions. " * 8) + "\n"
    (folder / "huge.txt").write_text(big * (50 * 2**20 // len(big.encode())), encoding="utf-8")
    all_pii = " ".join(f"user{i}@example.org +30 69{i:08d}" for i in range(200))
    mixed = "Καλημέρα κόσμε, hello world, Привет мир, مرحبا بالعالم, 你好世界, and a bit more ordinary text here."
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in (all_pii, mixed, "ok text of a normal document")]
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = curate_paths([folder], tmp_path / "out", load_settings(None, None))
    assert gc.get_freeze_count() == 0  # what the run froze between stages is handed back to the collector
    for stage in manifest["stages"]:
        assert stage["in"] == stage["kept"] + stage["rejected"], stage
    ingest = manifest["stages"][0]
    assert ingest["rejected_by_rule"].get("empty_file") == 1
    assert ingest["rejected_by_rule"].get("bad_utf8") == 1
    assert ingest["in"] == 6  # empty, garbage, huge, and three JSONL lines


def test_a_host_that_freezes_objects_itself_keeps_its_frozen_set(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = [f"Notice {i} of the municipal council on the opening hours of the public library." for i in range(5)]
    (folder / "docs.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n", encoding="utf-8")
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        curate_paths([folder], tmp_path / "out", load_settings(None, None))
        assert gc.get_freeze_count() == frozen  # neither grown by the run nor unfrozen by it
    finally:
        gc.unfreeze()


def test_incremental_dedup_only_removes_from_new_sources(tmp_path: Path) -> None:
    storage = prepared_lake(tmp_path / "lake")
    pipeline.dedup_sources(storage, ["alpha"], DedupConfig(), max_rows_per_shard=50)
    alpha_before = read_manifest(storage, pipeline.DEDUPLICATED, "alpha").data_version
    assert storage.exists(pipeline.DEDUP_INDEX_KEY)

    run, _ = pipeline.dedup_sources(storage, list(SOURCES), DedupConfig(), incremental=True, max_rows_per_shard=50)
    assert read_manifest(storage, pipeline.DEDUPLICATED, "alpha").data_version == alpha_before
    assert list(run.rows_in) == ["beta"] and run.stats["frozen_sources"] == ["alpha"]
    assert run.rejected["beta"] > 0  # beta repeats alpha's documents: dropped in favour of the frozen ones
    clusters = read_dataset(storage, read_manifest(storage, pipeline.DEDUP_CLUSTERS, None)).to_pylist()
    alpha_ids = set(
        read_dataset(storage, read_manifest(storage, pipeline.DEDUPLICATED, "alpha")).column("id").to_pylist()
    )
    dropped_beta = [row for row in clusters if row["partition"] == "beta" and row["member_id"] != row["kept_id"]]
    assert dropped_beta and all(row["kept_id"] in alpha_ids for row in dropped_beta if row["rule"] == "exact")


def test_dedup_refuses_highest_quality_before_anything_is_written(tmp_path: Path) -> None:
    # Dagster's deduplicated_shards reaches dedup_sources without CurationSettings' check: same one-line refusal.
    storage = LocalLakeStorage(tmp_path / "lake")
    with pytest.raises(ValueError, match="keep_rule 'highest_quality' cannot be used in the curation chain"):
        pipeline.dedup_sources(storage, ["alpha"], DedupConfig(keep_rule="highest_quality"))
    assert not list((tmp_path / "lake").rglob("*.parquet"))


def test_reference_models_are_trained_one_language_at_a_time_from_the_capped_texts(tmp_path: Path) -> None:
    # Texts pass through per-language scratch files: the models must be exactly those of the capped texts.
    storage = LocalLakeStorage(tmp_path / "lake")
    greek = [f"Άρθρο {i}. Ο νόμος ισχύει από τη δημοσίευσή του στην Εφημερίδα της Κυβερνήσεως." for i in range(400)]
    english = [f"Section {i}. This act enters into force on the day of its publication." for i in range(400)]
    labelled = zip(greek + english, ["el"] * 400 + ["en"] * 400, strict=True)
    rows = [(f"d{i}", text, lang) for i, (text, lang) in enumerate(labelled)]
    rows.append(("und-1", "!!! ### ???", None))
    schema = QUALITY_SCHEMA
    columns = {field.name: [None] * len(rows) for field in schema}
    columns["id"] = [r[0] for r in rows]
    columns["text"] = [r[1] for r in rows]
    columns["lang"] = [r[2] for r in rows]
    columns["source"] = ["laws"] * len(rows)
    with ShardWriter(storage, pipeline.QUALITY, "laws", schema, max_rows_per_shard=150) as writer:
        writer.write(pa.table(columns, schema=schema))
        writer.commit()
    models = pipeline.train_reference_models(
        storage, ["laws"], PerplexityConfig(order=4), min_chars=1_000, max_chars_per_language=20_000
    )
    assert sorted(models) == ["el", "en"]  # "und" never gets a model
    for lang, texts in (("el", greek), ("en", english)):
        capped, total = [], 0
        for text in texts:
            if total >= 20_000:
                break
            capped.append(text[: 20_000 - total])
            total += len(capped[-1])
        assert models[lang].sha256 == CharNgramLM.train(capped, order=4, language=lang).sha256
