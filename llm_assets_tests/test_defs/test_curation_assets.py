"""The curation chain through Dagster: per-source stages, corpus-wide stages, checks and the guardrail."""

from __future__ import annotations

import itertools
import json

import dagster as dg
import pyarrow.compute as pc
import pytest

from llm_assets.curation import pipeline
from llm_assets.defs.training.assets import base_model, sft_dataset, tokenizer
from llm_assets.lake import LocalLakeStorage, read_dataset, read_manifest
from llm_assets_tests.curation_chain import ENGLISH, GLOBAL, GREEK, PER_SOURCE


def land(storage: LocalLakeStorage, name: str, texts: list[str], *, language: str, jurisdiction: str) -> None:
    descriptor = (
        f"name: {name}\nlicence: CC-BY-4.0\njurisdiction: {jurisdiction}\nsource_uri: https://example.org/{name}\n"
        f"language: {language}\ndomain: public-administration\n"
    )
    storage.write_bytes(f"landing/{name}/source.yaml", descriptor.encode())
    lines = "\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\n"
    storage.write_bytes(f"landing/{name}/docs.jsonl", lines.encode())


@pytest.fixture
def landed(storage: LocalLakeStorage, instance: dg.DagsterInstance) -> LocalLakeStorage:
    english = [*ENGLISH, ENGLISH[0], "Contact the office at maria.papadopoulou@example.gov.gr for details on the form."]
    land(storage, "council", english, language="en", jurisdiction="EU")
    land(storage, "dimos", [*GREEK, ENGLISH[1]], language="el", jurisdiction="GR")
    instance.add_dynamic_partitions("sources", ["council", "dimos"])
    return storage


def run_per_source(instance, lake, sources=("council", "dimos")):  # type: ignore[no-untyped-def]
    for source in sources:
        result = dg.materialize(PER_SOURCE, partition_key=source, resources={"lake": lake}, instance=instance)
        assert result.success


def run_global(instance, lake, run_config=None):  # type: ignore[no-untyped-def]
    return dg.materialize(
        [*PER_SOURCE, *GLOBAL],
        selection=GLOBAL,
        resources={"lake": lake},
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
    )


def test_curation_chain_end_to_end(landed, instance, lake) -> None:  # type: ignore[no-untyped-def]
    storage = landed
    run_per_source(instance, lake)
    result = run_global(instance, lake)
    assert result.success
    failed = [
        (e.asset_key.to_user_string(), e.check_name) for e in result.get_asset_check_evaluations() if not e.passed
    ]
    assert failed == []
    quality_stats = result.asset_materializations_for_node("quality_filtered_shards")[0].metadata["stats"].value
    assert quality_stats["langid_refiner"].startswith("lingua-language-detector")  # type: ignore[index]
    assert len(quality_stats["langid_model_sha256"]) == 64  # type: ignore[index]

    # Every stage accounts for every record, per source.
    chain = [
        pipeline.RAW,
        pipeline.NORMALIZED,
        pipeline.PII_SCRUBBED,
        pipeline.DEDUPLICATED,
        pipeline.QUALITY,
        pipeline.PERPLEXITY,
        pipeline.CURATED,
    ]
    for source in ("council", "dimos"):
        for upstream, downstream in itertools.pairwise(chain):
            rows_in = read_manifest(storage, upstream, source).rows
            kept = read_manifest(storage, downstream, source).rows
            rejected = read_manifest(storage, pipeline.rejects_dataset(downstream), source).rows
            assert rows_in == kept + rejected, (source, downstream)

    # The exact duplicate (inside council and across sources) is removed and its cluster recorded.
    clusters = read_dataset(storage, read_manifest(storage, pipeline.DEDUP_CLUSTERS, None))
    assert clusters.num_rows >= 3
    dedup_rejects = read_dataset(
        storage, read_manifest(storage, pipeline.rejects_dataset(pipeline.DEDUPLICATED), "council")
    )
    assert set(dedup_rejects.column("stage").to_pylist()) <= {"dedup"}

    curated = read_dataset(storage, read_manifest(storage, pipeline.CURATED, "council"))
    texts = " ".join(curated.column("text").to_pylist())
    assert "maria.papadopoulou@example.gov.gr" not in texts and "[EMAIL]" in texts
    assert set(curated.column("split").to_pylist()) <= {"train", "dev", "test"}
    assert set(curated.column("domain").to_pylist()) == {"public-administration"}
    assert pc.all(pc.is_valid(curated.column("lang"))).as_py()
    greek = read_dataset(storage, read_manifest(storage, pipeline.CURATED, "dimos"))
    assert "el" in greek.column("lang").to_pylist()

    # The tokenizer trains on the curated train split and lands in the lake, loadable by transformers.
    trained = dg.materialize(
        [*PER_SOURCE, *GLOBAL, tokenizer], selection=[tokenizer], resources={"lake": lake}, instance=instance
    )
    meta = trained.asset_materializations_for_node("tokenizer")[0].metadata
    assert meta["vocab_size"].value > 256
    assert storage.exists(f"models/tokenizer/{meta['sha256'].value[:16]}/tokenizer.json")

    # The base model is bootstrapped from that tokenizer; a staged model that is not there fails clearly.
    everything = [*PER_SOURCE, *GLOBAL, tokenizer, base_model]
    built = dg.materialize(everything, selection=[base_model], resources={"lake": lake}, instance=instance)
    model_meta = built.asset_materializations_for_node("base_model")[0].metadata
    assert model_meta["architecture"].value == "LlamaForCausalLM"
    assert "model.safetensors" in model_meta["files_sha256"].value
    missing = dg.materialize(
        everything,
        selection=[base_model],
        resources={"lake": lake},
        instance=instance,
        run_config={"ops": {"base_model": {"config": {"source": "path:/nonexistent/model"}}}},
        raise_on_error=False,
    )
    failure = next(e for e in missing.all_events if e.is_step_failure)
    assert "/nonexistent/model: not a folder" in failure.step_failure_data.error.message

    # An SFT task built from a source without intent labels has no examples: the blocking gate fails.
    gated = dg.materialize(
        [*PER_SOURCE, *GLOBAL, sft_dataset],
        selection=[sft_dataset],
        partition_key="banking77_intents",
        resources={"lake": lake},
        instance=instance,
        run_config={"ops": {"sft_dataset": {"config": {"banking_source": "council"}}}},
        raise_on_error=False,
    )
    outcomes = {e.check_name: e.passed for e in gated.get_asset_check_evaluations()}
    assert outcomes["enough_examples"] is False


def test_quality_stage_config_can_switch_off_the_close_language_step(landed, instance, lake) -> None:  # type: ignore[no-untyped-def]
    run_per_source(instance, lake)
    off = {"ops": {"quality_filtered_shards": {"config": {"refine_close_languages": False}}}}
    result = run_global(instance, lake, run_config=off)
    assert result.success
    stats = result.asset_materializations_for_node("quality_filtered_shards")[0].metadata["stats"].value
    assert stats["langid_refiner"] == "off"  # type: ignore[index]


def test_removal_guardrail_blocks_downstream(landed, instance, lake) -> None:  # type: ignore[no-untyped-def]
    run_per_source(instance, lake)
    strict = {"ops": {"deduplicated_shards": {"config": {"max_removal_fraction": 0.0}}}}
    result = run_global(instance, lake, run_config=strict)
    guardrail = next(
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_key.to_user_string() == "deduplicated_shards" and e.check_name == "removal_guardrail"
    )
    assert not guardrail.passed
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "deduplicated_shards" in materialized
    assert "quality_filtered_shards" not in materialized  # blocked by the failed blocking check
