"""Erasure impact and replay across a two-source graph: ingestion and curation run through Dagster, the SFT
set, adapter, eval report and registry entry written as those assets write them."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest
from click.testing import CliRunner

from llm_assets.audit import AuditLog
from llm_assets.compliance.erasure import ErasureError, erasure_impact, sft_example_id, to_markdown
from llm_assets.compliance.erasure_cli import erasure_impact_command
from llm_assets.compliance.exclusions import (
    ERASURE_RULE,
    EXCLUSIONS_KEY,
    add_exclusion,
    excluded_ids,
    withhold_excluded,
)
from llm_assets.curation import pipeline
from llm_assets.lake import LocalLakeStorage, read_dataset, read_manifest
from llm_assets.registry import ModelRegistry
from llm_assets.resources.lake import LocalLakeResource
from llm_assets.training import sft_data
from llm_assets_tests.curation_chain import ENGLISH, GLOBAL, GREEK, PER_SOURCE

EMAIL_LINE = "Contact the office at maria.papadopoulou@example.gov.gr for details on the form."
TASK = "intents"
ENDPOINT = "https://llm.internal/v1"


def _land(storage: LocalLakeStorage, name: str, texts: list[str], *, lang: str) -> None:
    descriptor = (
        f"name: {name}\nlicence: CC-BY-4.0\njurisdiction: EU\nsource_uri: https://example.org/{name}\n"
        f"language: {lang}\ndomain: public-administration\n"
    )
    storage.write_bytes(f"landing/{name}/source.yaml", descriptor.encode())
    lines = "\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\n"
    storage.write_bytes(f"landing/{name}/docs.jsonl", lines.encode())


def _materialize_all(root: Path, instance: dg.DagsterInstance, sources: list[str]) -> None:
    lake = LocalLakeResource(root=str(root))
    for source in sources:
        assert dg.materialize(PER_SOURCE, partition_key=source, resources={"lake": lake}, instance=instance).success
    assert dg.materialize([*PER_SOURCE, *GLOBAL], selection=GLOBAL, resources={"lake": lake}, instance=instance).success


def _write_json(storage: LocalLakeStorage, key: str, value: Any) -> None:
    storage.write_bytes(key, json.dumps(value).encode())


def _model_chain(storage: LocalLakeStorage, doc_id: str) -> dict[str, str]:
    """An SFT set with one example built from `doc_id`, an adapter trained on it, its eval report, and the
    adapter registered, approved and deployed, in the files and shapes the real assets write."""
    sft = hashlib.sha256(b"sft").hexdigest()
    adapter = hashlib.sha256(b"adapter").hexdigest()
    cpt = hashlib.sha256(b"cpt").hexdigest()
    folder = f"datasets_export/sft/{TASK}/{sft[:16]}"
    example = sft_data.SftExample(
        id=sft_example_id(TASK, doc_id, sft_data.TEMPLATE_VERSION),
        prompt="Classify: ...",
        completion=" budget",
        split="train",
        source_id=doc_id,
    )
    other = sft_data.SftExample(id="0" * 32, prompt="p", completion="c", split="train", source_id="x")
    storage.write_bytes(
        f"{folder}/train.prompt_completion.jsonl", sft_data.to_jsonl([other, example], "prompt_completion")
    )
    storage.write_bytes(f"{folder}/test.prompt_completion.jsonl", b"")
    _write_json(
        storage,
        f"{folder}/manifest.json",
        {"task": TASK, "version": sft, "template_version": sft_data.TEMPLATE_VERSION, "examples": 2},
    )
    lineage = {"task": TASK, "cpt_model": cpt, "sft_data_version": sft}
    _write_json(storage, f"models/adapters/{TASK}/{adapter[:16]}/lineage.json", lineage)
    _write_json(
        storage,
        f"evaluation/reports/{TASK}/{hashlib.sha256(b'report').hexdigest()[:16]}/report.json",
        {"adapter_version": adapter, "sft_data_version": sft, "gates": {}},
    )
    registry = ModelRegistry(storage)
    gates = {"business_score": {"blocking": True, "passed": True, "figures": {}}}
    registry.register(TASK, adapter, eval_metrics={}, gates=gates, lineage=lineage, registered_by="ci")
    registry.approve(TASK, adapter, by="A. Officer", reason="gates passed")
    registry.deploy(TASK, adapter, by="ops", endpoint=ENDPOINT, reason="first release")
    return {"sft": sft, "adapter": adapter}


def _rows(storage: LocalLakeStorage, dataset: str, source: str) -> list[dict[str, Any]]:
    manifest = read_manifest(storage, dataset, source)
    assert manifest is not None
    return read_dataset(storage, manifest).to_pylist()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    root = tmp_path_factory.mktemp("erasure") / "lake"
    storage = LocalLakeStorage(root)
    _land(storage, "council", [*ENGLISH, ENGLISH[0], EMAIL_LINE], lang="en")
    _land(storage, "dimos", [*GREEK, ENGLISH[1]], lang="el")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sources", ["council", "dimos"])
        _materialize_all(root, instance, ["council", "dimos"])
    clusters = pa.concat_tables(
        [read_dataset(storage, m) for m in [read_manifest(storage, pipeline.DEDUP_CLUSTERS, None)] if m]
    ).to_pylist()
    (duplicate,) = [c for c in clusters if c["rule"] == "exact" and c["partition"] == "council"]
    kept, dropped = duplicate["kept_id"], duplicate["member_id"]
    yield root, {"kept": kept, "duplicate": dropped, **_model_chain(storage, kept)}


@pytest.fixture
def lake_copy(built: tuple[Path, dict[str, str]], tmp_path: Path) -> LocalLakeStorage:
    shutil.copytree(built[0], tmp_path / "lake")
    return LocalLakeStorage(tmp_path / "lake")


def test_impact_of_a_kept_document_reaches_every_stage_the_adapter_and_its_deployment(built) -> None:  # type: ignore[no-untyped-def]
    root, ids = built
    storage = LocalLakeStorage(root)
    doc = erasure_impact(storage, doc_id=ids["kept"])
    json.loads(json.dumps(doc))
    assert doc["schema_version"] == "1" and doc["documents"] == [ids["kept"]]
    kept_in = {e["dataset"] for e in doc["datasets"] if any(r["role"] == "kept" for r in e["rows"]) and e["current"]}
    assert {
        "raw_corpus",
        "normalized_shards",
        "pii_scrubbed_shards",
        "deduplicated_shards",
        "quality_filtered_shards",
        "perplexity_scored_shards",
        "curated_corpus",
    } <= kept_in
    assert all(e["data_version"] for e in doc["datasets"] if e["current"])
    assert doc["landing"] == [
        {"doc_id": ids["kept"], "source": "council", "key": "landing/council/docs.jsonl", "locator": "line 1"}
    ]
    (cluster,) = doc["dedup_clusters"]
    assert cluster["was_kept"] is True and cluster["kept_id"] == ids["kept"]
    assert cluster["content_also_in"] == [ids["duplicate"]] == doc["content_also_in"]
    (sft,) = doc["sft_sets"]
    assert (sft["task"], sft["data_version"], sft["split"]) == (TASK, ids["sft"], "train")
    (adapter,) = doc["adapters"]
    assert adapter["version16"] == ids["adapter"][:16] and adapter["via"] == ["sft_data"]
    (model,) = doc["registry"]
    assert model["status"] == "deployed" and model["deployment"]["endpoint"] == ENDPOINT
    assert [p["endpoint"] for p in model["serving_periods"]] == [ENDPOINT]
    assert len(doc["eval_reports"]) == 1
    assert doc["rebuild"]["sources"] == ["council"] and doc["rebuild"]["tasks"] == [TASK]
    assert any("corpus_pipeline" in s and "council" in s for s in doc["rebuild"]["steps"])
    assert any(s.startswith(f"llm-assets registry retire {TASK}") for s in doc["rebuild"]["steps"])
    text = to_markdown(doc)
    assert "## Dedup clusters" in text and ENDPOINT in text
    assert ENGLISH[0] not in json.dumps(doc) + text  # ids and versions, never the content


def test_impact_of_a_duplicate_names_its_reject_and_the_copy_that_survived(built) -> None:  # type: ignore[no-untyped-def]
    root, ids = built
    doc = erasure_impact(LocalLakeStorage(root), doc_id=ids["duplicate"])
    rejected = [r for e in doc["datasets"] for r in e["rows"] if r["role"] == "rejected"]
    assert rejected == [{"role": "rejected", "stage": "dedup", "rule": "exact_duplicate"}]
    (cluster,) = doc["dedup_clusters"]
    assert cluster["was_kept"] is False and doc["content_also_in"] == [ids["kept"]]
    assert doc["sft_sets"] == [] and doc["adapters"] == []


def test_person_hash_maps_to_the_documents_that_held_it(built) -> None:  # type: ignore[no-untyped-def]
    root, _ = built
    storage = LocalLakeStorage(root)
    (hit,) = _rows(storage, pipeline.PII_HITS, "council")
    doc = erasure_impact(storage, person_hash=hit["value_hash"])
    assert doc["documents"] == [hit["record_id"]]
    assert doc["person_hits"] == [{"doc_id": hit["record_id"], "source": "council", "kind": "email"}]
    assert any(r["role"] == "pii_hit" for e in doc["datasets"] for r in e["rows"])
    with pytest.raises(ErasureError, match="no PII hit"):
        erasure_impact(storage, person_hash="f" * 64)
    with pytest.raises(ErasureError, match="in no dataset"):
        erasure_impact(storage, doc_id="0" * 32)


def test_exclusion_list_is_idempotent_and_withholds_without_excerpt(tmp_path: Path) -> None:
    storage = LocalLakeStorage(tmp_path)
    assert excluded_ids(storage) == set()
    entry, added = add_exclusion(storage, "a", "req-1", "dpo", at="2026-01-01T00:00:00+00:00")
    assert added and entry["requested_by"] == "dpo"
    assert add_exclusion(storage, "a", "req-2", "someone")[1] is False
    add_exclusion(storage, "b", "req-3", "dpo")
    assert excluded_ids(storage) == {"a", "b"}
    assert len(storage.read_bytes(EXCLUSIONS_KEY).splitlines()) == 2
    kept, withheld = withhold_excluded(
        [{"id": "a", "source": "s", "file": "f", "locator": "line 1"}, {"id": "c", "source": "s"}],
        {"a"},
        stage="ingest",
    )
    assert [r["id"] for r in kept] == ["c"]
    assert withheld[0]["rule"] == ERASURE_RULE and withheld[0]["excerpt"] is None
    with pytest.raises(ValueError, match="reason"):
        add_exclusion(storage, "d", " ", "dpo")


def test_erasure_replay_excludes_the_document_and_its_duplicate_on_rebuild(lake_copy, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    storage = lake_copy
    monkeypatch.setenv("LLM_ASSETS_LAKE", "local")
    monkeypatch.setenv("LLM_ASSETS_LAKE_ROOT", str(storage.root))
    clusters = read_dataset(storage, read_manifest(storage, pipeline.DEDUP_CLUSTERS, None)).to_pylist()  # type: ignore[arg-type]
    (cluster,) = [c for c in clusters if c["rule"] == "exact" and c["partition"] == "council"]
    kept, duplicate = cluster["kept_id"], cluster["member_id"]
    result = CliRunner().invoke(
        erasure_impact_command,
        [
            "--doc-id",
            kept,
            "--format",
            "json",
            "--exclude",
            "--with-duplicates",
            "--reason",
            "Art.17 #42",
            "--by",
            "DPO",
        ],
    )
    assert result.exit_code == 0, result.output
    assert excluded_ids(storage) == {kept, duplicate}
    assert "corpus_pipeline" in result.output
    (record,) = [r for r in AuditLog(storage).records() if r.get("event") == "erasure_request"]
    assert record["excluded"] == sorted([kept, duplicate]) and record["who"] == {"user": "DPO"}
    assert record["reason"] == "Art.17 #42" and record["impact"]["adapters"] == 1
    assert AuditLog(storage).verify().ok

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sources", ["council", "dimos"])
        lake = LocalLakeResource(root=str(storage.root))
        result_source = dg.materialize(PER_SOURCE, partition_key="council", resources={"lake": lake}, instance=instance)
        assert result_source.success
        checks = {
            (c.asset_key.to_user_string(), c.check_name): c.passed for c in result_source.get_asset_check_evaluations()
        }
        assert checks[("raw_corpus", "counts_reconcile")] and all(checks.values())
        result_global = dg.materialize(
            [*PER_SOURCE, *GLOBAL], selection=GLOBAL, resources={"lake": lake}, instance=instance
        )
        assert result_global.success
        assert all(c.passed for c in result_global.get_asset_check_evaluations() if c.check_name == "counts_reconcile")

    erased = {kept, duplicate}
    for dataset in (pipeline.RAW, pipeline.PII_SCRUBBED, pipeline.DEDUPLICATED, pipeline.CURATED):
        assert not erased & {r["id"] for r in _rows(storage, dataset, "council")}, dataset
    rejects = [r for r in _rows(storage, "raw_corpus_rejects", "council") if r["record_id"] in erased]
    assert {r["rule"] for r in rejects} == {ERASURE_RULE} and len(rejects) == 2
    assert all(r["excerpt"] is None for r in rejects)
    raw = read_manifest(storage, pipeline.RAW, "council")
    assert raw is not None and raw.extra["units"] == 8 and raw.rows == 6
    assert ENGLISH[0] not in {r["text"] for r in _rows(storage, pipeline.CURATED, "council")}

    after = erasure_impact(storage, doc_id=kept)
    current = {e["dataset"] for e in after["datasets"] if e["current"]}
    assert current == {"raw_corpus_rejects"}
    assert after["superseded_writes"] and [e["doc_id"] for e in after["exclusions"]] == [kept]


def test_cli_json_and_errors(built, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root, ids = built
    monkeypatch.setenv("LLM_ASSETS_LAKE", "local")
    monkeypatch.setenv("LLM_ASSETS_LAKE_ROOT", str(root))
    runner = CliRunner()
    ok = runner.invoke(erasure_impact_command, ["--doc-id", ids["kept"], "--format", "json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["documents"] == [ids["kept"]]
    unknown = runner.invoke(erasure_impact_command, ["--doc-id", "nope"])
    assert unknown.exit_code == 1 and len(unknown.output.strip().splitlines()) == 1
    assert "document nope is in no dataset" in unknown.output
    for args in ([], ["--doc-id", ids["kept"], "--person-hash", "ab"]):
        usage = runner.invoke(erasure_impact_command, args)
        assert usage.exit_code == 2 and "exactly one of --doc-id or --person-hash" in usage.output
    missing = runner.invoke(erasure_impact_command, ["--doc-id", ids["kept"], "--exclude"])
    assert missing.exit_code == 2 and "--reason and --by" in missing.output
    assert not LocalLakeStorage(root).exists(EXCLUSIONS_KEY)


def test_cli_rebuild_runs_the_affected_sources_pipeline_without_the_document(lake_copy, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`--exclude --rebuild`: the exclusion is recorded, then the affected source's pipeline and the corpus-wide
    curation run again through the code location's jobs, and the document is gone from every kept dataset."""
    storage = lake_copy
    monkeypatch.setenv("LLM_ASSETS_LAKE", "local")
    monkeypatch.setenv("LLM_ASSETS_LAKE_ROOT", str(storage.root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    doc = erasure_impact(storage, doc_id=_rows(storage, pipeline.RAW, "dimos")[0]["id"])
    (doc_id,) = doc["documents"]
    result = CliRunner().invoke(
        erasure_impact_command,
        ["--doc-id", doc_id, "--exclude", "--rebuild", "--reason", "Art.17 #43", "--by", "DPO"],
    )
    assert result.exit_code == 0, result.output
    assert "corpus_pipeline for source 'dimos'" in result.output and "curation" in result.output
    assert "FAILED" not in result.output
    assert excluded_ids(storage) == {doc_id}
    for dataset in (pipeline.RAW, pipeline.PII_SCRUBBED, pipeline.DEDUPLICATED, pipeline.CURATED):
        assert doc_id not in {r["id"] for r in _rows(storage, dataset, "dimos")}, dataset
    (reject,) = [r for r in _rows(storage, "raw_corpus_rejects", "dimos") if r["record_id"] == doc_id]
    assert reject["rule"] == ERASURE_RULE
    assert AuditLog(storage).verify().ok
