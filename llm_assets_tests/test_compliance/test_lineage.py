"""Lineage documents: a real ingestion and curation chain through Dagster, then the training, evaluation and
registry steps recorded as those assets record them, traced back from the registered model."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from click.testing import CliRunner

from llm_assets.audit import AuditLog
from llm_assets.compliance.lineage import (
    LINEAGE_SCHEMA,
    NOT_RECORDED,
    VERSIONED_FILES,
    LineageError,
    build_lineage,
    missing_links,
    report_targets,
    to_html,
    to_markdown,
    validate_lineage,
)
from llm_assets.compliance.lineage_cli import lineage
from llm_assets.curation import pipeline
from llm_assets.defs.evaluation.reports import EVAL_REPORT_PREFIX
from llm_assets.defs.training.adaptation import ADAPTER_PREFIX, CPT_PREFIX
from llm_assets.defs.training.assets import SFT_PREFIX
from llm_assets.lake import LocalLakeStorage, read_manifest
from llm_assets.registry import ModelRegistry
from llm_assets.resources.lake import LocalLakeResource
from llm_assets_tests.curation_chain import ENGLISH, GLOBAL, GREEK, PER_SOURCE

TASK = "intents"
GATES = {
    "business_score": {"blocking": True, "passed": True, "figures": {"score": 0.62, "threshold": 0.5}},
    "pii_leak": {"blocking": True, "passed": True, "figures": {"canaries_leaked": 0}},
    "bias": {"blocking": False, "passed": True, "figures": {"divergent_share": 0.05}},
}


def _land(
    storage: LocalLakeStorage, name: str, texts: list[str], *, licence: str, jurisdiction: str, lang: str
) -> None:
    descriptor = (
        f"name: {name}\nlicence: {licence}\njurisdiction: {jurisdiction}\nsource_uri: https://example.org/{name}\n"
        f"language: {lang}\ndomain: public-administration\n"
    )
    storage.write_bytes(f"landing/{name}/source.yaml", descriptor.encode())
    lines = "\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\n"
    storage.write_bytes(f"landing/{name}/docs.jsonl", lines.encode())


def _version(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _materialization(
    audit: AuditLog, asset: str, partition: str | None, inputs: dict[str, str], output: str, **counts: int
) -> None:
    """An audit record in the shape `record_materialization` writes, for the steps too slow to run here."""
    audit.append(
        {
            "event": "materialization",
            "asset_key": asset,
            "partition": partition,
            "run_id": f"run-{asset}",
            "code_version": f"{asset}-v1",
            "input_data_versions": inputs,
            "output_data_version": output,
            "counts": counts,
            "config_hash": _version(asset),
            "storage": {"backend": "local"},
            "who": {"user": "trainer", "run_tags": {}},
        }
    )


def _write_json(storage: LocalLakeStorage, key: str, value: Any) -> None:
    storage.write_bytes(key, json.dumps(value).encode())


def _record_model_chain(storage: LocalLakeStorage) -> dict[str, str]:
    audit = AuditLog(storage)
    curated = {s: read_manifest(storage, pipeline.CURATED, s).data_version for s in ("council", "dimos")}
    sft, base, cpt, adapter, report = (_version(n) for n in ("sft", "base", "cpt", "adapter", "report"))
    _materialization(audit, "sft_dataset", TASK, {"curated_corpus/council": curated["council"]}, sft, examples=8)
    _write_json(
        storage,
        VERSIONED_FILES["sft_dataset"].format(partition=TASK, version16=sft[:16]),
        {"task": TASK, "version": sft, "examples": 8, "splits": {"train": 6, "test": 2}, "description": "intents"},
    )
    _materialization(audit, "base_model", None, {"source": "bootstrap"}, base, parameters=1000)
    cpt_inputs = {"base_model": base, **{f"curated_corpus/{s}": v for s, v in curated.items()}}
    _materialization(audit, "cpt_model", None, cpt_inputs, cpt, steps=4)
    _write_json(storage, VERSIONED_FILES["cpt_model"].format(version16=cpt[:16]), {"version": "mix", "texts": 12})
    _materialization(audit, "lora_adapter", TASK, {"cpt_model": cpt, f"sft_dataset/{TASK}": sft}, adapter, steps=8)
    lineage_file = {"base_model": base, "cpt_model": cpt, "sft_data_version": sft, "task": TASK}
    _write_json(storage, VERSIONED_FILES["lora_adapter"].format(partition=TASK, version16=adapter[:16]), lineage_file)
    _materialization(audit, "eval_report", TASK, {"cpt_model": cpt, "lora_adapter": adapter}, report, test_rows=2)
    _write_json(
        storage,
        VERSIONED_FILES["eval_report"].format(partition=TASK, version16=report[:16]),
        {
            "headline_metric": "exact_match",
            "adapted": {"overall": {"exact_match": 0.62}, "per_language": {"en": {"exact_match": 0.62}}},
            "without_adapter": {"overall": {"exact_match": 0.0}},
            "gates": GATES,
            "sft_data_version": sft,
            "adapter_version": adapter,
        },
    )
    _materialization(audit, "registered_model", TASK, {"eval_report": report, "lora_adapter": adapter}, adapter)
    registry = ModelRegistry(storage)
    registry.register(
        TASK,
        adapter,
        eval_metrics={"task": {"exact_match": 0.62}},
        gates=GATES,
        lineage=lineage_file,
        registered_by="ci",
    )
    registry.approve(TASK, adapter, by="A. Officer", reason="gates passed; DPIA ref 2026-17")
    registry.deploy(TASK, adapter, by="ops", endpoint="https://llm.internal/v1", reason="first release")
    return {"adapter": adapter, "report": report, "sft": sft}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str], dg.DagsterInstance]]:
    root = tmp_path_factory.mktemp("lineage") / "lake"
    storage = LocalLakeStorage(root)
    english = [*ENGLISH, ENGLISH[0], "Contact the office at maria.papadopoulou@example.gov.gr for details on the form."]
    _land(storage, "council", english, licence="CC-BY-4.0", jurisdiction="EU", lang="en")
    _land(storage, "dimos", [*GREEK, ENGLISH[1]], licence="public-domain", jurisdiction="GR", lang="el")
    lake = LocalLakeResource(root=str(root))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sources", ["council", "dimos"])
        for source in ("council", "dimos"):
            assert dg.materialize(PER_SOURCE, partition_key=source, resources={"lake": lake}, instance=instance).success
        assert dg.materialize(
            [*PER_SOURCE, *GLOBAL], selection=GLOBAL, resources={"lake": lake}, instance=instance
        ).success
        versions = _record_model_chain(storage)
        yield root, versions, instance


@pytest.fixture
def lake_copy(built: tuple[Path, dict[str, str], dg.DagsterInstance], tmp_path: Path) -> LocalLakeStorage:
    target = tmp_path / "lake"
    shutil.copytree(built[0], target)
    return LocalLakeStorage(target)


def _lineage_of_model(storage: LocalLakeStorage) -> dict[str, Any]:
    return build_lineage(
        "registered_model", TASK, audit=AuditLog(storage), storage=storage, registry=ModelRegistry(storage)
    )


def test_lineage_of_a_registered_model_names_sources_policy_counts_gates_and_approvals(built) -> None:  # type: ignore[no-untyped-def]
    storage = LocalLakeStorage(built[0])
    doc = _lineage_of_model(storage)
    validate_lineage(doc)
    assert doc["target"]["data_version"] == built[1]["adapter"]
    assert doc["audit_trail"]["intact"] is True

    sources = {s["name"]: s for s in doc["sources"]}
    assert {n: (s["licence"], s["jurisdiction"], s["language"]) for n, s in sources.items()} == {
        "council": ("CC-BY-4.0", "EU", "en"),
        "dimos": ("public-domain", "GR", "el"),
    }
    assert sources["council"]["source_uri"] == "https://example.org/council"
    assert sources["council"]["ingested_as"]["licence"] == ["CC-BY-4.0"]

    pii = {p["source"]: p for p in doc["pii"]}
    assert pii["council"]["policy"].startswith("default@")
    assert pii["council"]["hits_by_kind"] == {"email": 1}
    assert pii["council"]["counts"] == {"in": 8, "kept": 8, "rejected": 0}

    stages = {(r["stage"], r["partition"]): r for r in doc["retention"]}
    dedup = stages[("deduplicated_shards", None)]
    assert dedup["rejected"] >= 2 and dedup["in"] == dedup["kept"] + dedup["rejected"]
    assert dedup["retention"] == pytest.approx(dedup["kept"] / dedup["in"], abs=1e-6)
    assert "exact_duplicate" in dedup["rejects_by_rule"]
    assert {"quality_filtered_shards", "perplexity_scored_shards", "curated_corpus"} <= {s for s, _ in stages}

    assert doc["sft_data"][0]["manifest"]["version"] == built[1]["sft"]
    gates = {g["name"]: g for g in doc["evaluation"][0]["gates"]}
    assert gates["business_score"]["passed"] and gates["business_score"]["blocking"] is True
    assert gates["bias"]["blocking"] is False

    (entry,) = doc["registry"]
    assert entry["status"] == "deployed"
    assert entry["approval"]["by"] == "A. Officer" and "DPIA" in entry["approval"]["reason"]
    assert entry["deployment"]["endpoint"] == "https://llm.internal/v1"
    assert [p["endpoint"] for p in entry["serving_periods"]] == ["https://llm.internal/v1"]
    assert [a["event"] for a in entry["audit_acts"]] == ["registry.register", "registry.approve", "registry.deploy"]

    # Every input down the chain is tied to the version its upstream record wrote.
    links = {i["link"] for n in doc["nodes"] for i in n["inputs"]}
    assert links <= {"exact", "manifest", "external"}
    assets = {n["asset"] for n in doc["nodes"]}
    assert {"raw_corpus", "pii_scrubbed_shards", "curated_corpus", "cpt_model", "lora_adapter", "eval_report"} <= assets
    checks = {c["name"]: c["passed"] for n in doc["nodes"] if n["asset"] == "pii_scrubbed_shards" for c in n["checks"]}
    assert checks == {"no_structured_pii_left": True, "counts_reconcile": True, "removal_guardrail": True}
    assert missing_links(doc) == []
    assert report_targets(ModelRegistry(storage)) == [(TASK, built[1]["adapter"], True)]


def test_a_document_missing_a_required_field_fails_validation(built) -> None:  # type: ignore[no-untyped-def]
    doc = _lineage_of_model(LocalLakeStorage(built[0]))
    assert set(LINEAGE_SCHEMA["required"]) <= set(doc)
    broken = copy.deepcopy(doc)
    del broken["sources"][0]["licence"]
    with pytest.raises(LineageError, match=r"sources/0.*'licence' is a required property"):
        validate_lineage(broken)
    broken = copy.deepcopy(doc)
    del broken["gaps"]
    with pytest.raises(LineageError, match="'gaps' is a required property"):
        validate_lineage(broken)
    broken = copy.deepcopy(doc)
    broken["nodes"][0]["inputs"] = [{"key": "x", "data_version": "y", "link": "guessed", "node": None}]
    with pytest.raises(LineageError, match="nodes/0/inputs/0/link"):
        validate_lineage(broken)


def test_markdown_and_html_render_and_html_escapes(built) -> None:  # type: ignore[no-untyped-def]
    doc = _lineage_of_model(LocalLakeStorage(built[0]))
    markdown = to_markdown(doc)
    for expected in (
        "## Sources",
        "CC-BY-4.0",
        "## PII policy",
        "## Curation retention",
        "A. Officer",
        "business_score",
    ):
        assert expected in markdown
    doc["sources"][0]["licence"] = "<script>alert('x')</script> | A&B"
    page = to_html(doc)
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; | A&amp;B" in page
    assert "http" not in page.split("<body>")[0]  # no external stylesheet or script
    assert "\\|" in to_markdown(doc)  # a pipe in a value does not break the Markdown table


def test_unknown_asset_partition_or_version_is_a_one_line_error(built) -> None:  # type: ignore[no-untyped-def]
    storage = LocalLakeStorage(built[0])
    kw: dict[str, Any] = {"audit": AuditLog(storage), "storage": storage}
    cases = [
        (("model_card",), "unknown asset 'model_card'.*registered_model"),
        (("raw_corpus",), "partitioned; pass --partition, one of: council, dimos"),
        (("raw_corpus", "nowhere"), "no materialisation of partition 'nowhere'.*council, dimos"),
        (("registered_model", TASK, "ffff"), f"no version 'ffff'; recorded versions: {built[1]['adapter'][:16]}"),
    ]
    for args, message in cases:
        with pytest.raises(LineageError, match=message) as caught:
            build_lineage(*args, **kw)
        assert "\n" not in str(caught.value)


def test_a_missing_descriptor_is_reported_not_guessed(lake_copy: LocalLakeStorage) -> None:
    lake_copy.delete("landing/dimos/source.yaml")
    doc = _lineage_of_model(lake_copy)
    validate_lineage(doc)
    dimos = next(s for s in doc["sources"] if s["name"] == "dimos")
    assert dimos["licence"] == NOT_RECORDED and dimos["jurisdiction"] == NOT_RECORDED
    assert dimos["ingested_as"]["licence"] == ["public-domain"]  # what the records were stamped with
    assert "source dimos: licence not recorded" in missing_links(doc)
    assert any("source dimos: descriptor not readable" in gap for gap in doc["gaps"])


def test_the_artefact_paths_are_those_the_assets_write() -> None:
    assert VERSIONED_FILES["sft_dataset"].startswith(SFT_PREFIX + "/")
    assert VERSIONED_FILES["lora_adapter"].startswith(ADAPTER_PREFIX + "/")
    assert VERSIONED_FILES["cpt_model"].startswith(CPT_PREFIX + "/")
    assert VERSIONED_FILES["eval_report"].startswith(EVAL_REPORT_PREFIX + "/")


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_cli_works_on_a_read_only_lake(lake_copy: LocalLakeStorage, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root = lake_copy.root
    monkeypatch.setenv("LLM_ASSETS_LAKE", "local")
    monkeypatch.setenv("LLM_ASSETS_LAKE_ROOT", str(root))

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the lineage command tried to write to the lake")

    for method in ("write_bytes", "update_bytes", "append_line", "append_next_line", "delete"):
        monkeypatch.setattr(LocalLakeStorage, method, refuse)
    before = _snapshot(root)
    modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")]}
    for path in modes:
        path.chmod(stat.S_IMODE(modes[path]) & ~0o222)
    try:
        runner = CliRunner()
        as_json = runner.invoke(lineage, ["registered_model", "--partition", TASK, "--format", "json"])
        assert as_json.exit_code == 0, as_json.output
        doc = json.loads(as_json.output)
        validate_lineage(doc)
        assert {s["licence"] for s in doc["sources"]} == {"CC-BY-4.0", "public-domain"}

        as_md = runner.invoke(lineage, ["registered_model", "--partition", TASK, "--format", "md"])
        assert as_md.exit_code == 0, as_md.output
        assert as_md.output.startswith(f"# Lineage of registered_model / {TASK}") and "A. Officer" in as_md.output

        out = tmp_path / "report.html"
        as_html = runner.invoke(
            lineage, ["registered_model", "--partition", TASK, "--format", "html", "--out", str(out)]
        )
        assert as_html.exit_code == 0, as_html.output
        assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")

        unknown = runner.invoke(lineage, ["model_card"])
        assert unknown.exit_code == 1
        assert unknown.output.startswith("Error: unknown asset 'model_card'") and unknown.output.count("\n") == 1
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))
    assert _snapshot(root) == before


def test_compliance_report_asset_writes_the_reports_and_passes_its_check(built, lake_copy: LocalLakeStorage) -> None:  # type: ignore[no-untyped-def]
    from llm_assets.defs.compliance.lineage import compliance_report

    instance = built[2]
    result = dg.materialize(
        [compliance_report], resources={"lake": LocalLakeResource(root=str(lake_copy.root))}, instance=instance
    )
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "lineage_complete" and evaluation.passed
    metadata = result.asset_materializations_for_node("compliance_report")[0].metadata
    assert "CC-BY-4.0" in metadata["report"].value and "A. Officer" in metadata["report"].value
    prefix = f"compliance/reports/{TASK}/{built[1]['adapter'][:16]}"
    written = json.loads(lake_copy.read_bytes(f"{prefix}/lineage.json"))
    validate_lineage(written)
    raw = next(n for n in written["nodes"] if n["asset"] == "raw_corpus")
    assert raw["details"]["run"]["status"] == "SUCCESS"  # the Dagster run behind the audit record
    assert lake_copy.exists(f"{prefix}/report.md") and lake_copy.exists(f"{prefix}/report.html")
    last = AuditLog(lake_copy).records()[-2:]
    assert [(r["event"], r.get("check")) for r in last] == [("check", "lineage_complete"), ("materialization", None)]
