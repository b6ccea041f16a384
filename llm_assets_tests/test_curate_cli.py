"""`llm-assets curate`: the chain on plain folders without Dagster, with the documented output layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from llm_assets.cli import CURATE_SETTINGS_EXAMPLE, CURATE_SETTINGS_KEYS, main
from llm_assets.curation.local import CurationSettings, load_settings


def test_curate_writes_kept_rejected_clusters_and_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "notices"
    folder.mkdir()
    docs = [
        "The municipal council will meet on Tuesday to discuss the budget for public libraries and parks.",
        "Applications for the housing allowance are accepted until the end of the month at the town hall.",
        "The municipal council will meet on Tuesday to discuss the budget for public libraries and parks.",
        "Call +30 691 234 5678 or write to info@dimos.example.gr for questions about the allowance forms.",
        "{broken json",
    ]
    lines = [json.dumps({"text": d}) if not d.startswith("{") else d for d in docs]
    (folder / "notices.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "readme.md").write_text(
        "# Notices\n\nPublic notices of the municipality, 2024 edition.\n", encoding="utf-8"
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["curate", str(folder), "--out", str(out), "--profile", "gr"])
    assert result.exit_code == 0, result.output

    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    for stage in manifest["stages"]:
        assert stage["in"] == stage["kept"] + stage["rejected"], stage
    # Where the time went: every stage's wall seconds, which with the export add up to at most the whole run.
    timed = [stage["seconds"] for stage in manifest["stages"]] + [manifest["export_seconds"]]
    assert all(t >= 0 for t in timed) and sum(timed) <= manifest["seconds"] + 0.05
    assert [line.split()[0] for line in result.output.splitlines()[-9:-1]] == [
        "stage",
        *(s["stage"] for s in manifest["stages"]),
    ]
    stages = {s["stage"]: s for s in manifest["stages"]}
    assert stages["ingest"]["rejected"] == 1 and stages["dedup"]["rejected"] >= 1
    assert manifest["pii_policy"]["name"] == "gr"

    kept = pq.read_table(out / "kept")
    assert {"id", "text", "lang", "source"} <= set(kept.column_names)
    assert kept.num_rows == manifest["kept_rows"] == stages["curate"]["kept"]
    assert "info@dimos.example.gr" not in " ".join(kept.column("text").to_pylist())
    rejected = pq.read_table(out / "rejected")
    assert {"id", "stage", "reason"} <= set(rejected.column_names)
    assert rejected.num_rows == sum(s["rejected"] for s in manifest["stages"])
    assert pq.read_table(out / "clusters").num_rows >= 2
    # kept and cluster files are the lake's own shard files, copied whole and left under their final names
    lake_files = {
        hashlib.sha256(path.read_bytes()).digest()
        for dataset in ("curated_corpus", "dedup_clusters")
        for path in (out / ".lake" / "datasets" / dataset).rglob("*.parquet")
    }
    exported = [*(out / "kept").iterdir(), *(out / "clusters").iterdir()]
    assert exported and all(hashlib.sha256(path.read_bytes()).digest() in lake_files for path in exported)
    assert not list(out.rglob("*.partial"))


def test_curate_bad_config_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Some text long enough to be a document of the corpus.", encoding="utf-8")
    config = tmp_path / "settings.yaml"
    config.write_text("dedup:\n  threshold: 7\n", encoding="utf-8")
    result = CliRunner().invoke(
        main, ["curate", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), "--config", str(config)]
    )
    assert result.exit_code != 0
    assert "threshold" in result.output and "Traceback" not in result.output


def test_curate_refuses_a_keep_rule_the_chain_cannot_apply(tmp_path: Path) -> None:
    # The chain deduplicates before the quality stage: no document has a quality score to rank by yet.
    (tmp_path / "a.txt").write_text("Some text long enough to be a document of the corpus.", encoding="utf-8")
    config = tmp_path / "settings.yaml"
    config.write_text("dedup:\n  keep_rule: highest_quality\n", encoding="utf-8")
    result = CliRunner().invoke(
        main, ["curate", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), "--config", str(config)]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "highest_quality" in result.output and "longest, oldest, first_id" in result.output
    assert not (tmp_path / "o").exists()
    config.write_text("dedup:\n  keep_rule: oldest\n", encoding="utf-8")
    assert load_settings(config, None).dedup.keep_rule == "oldest"


def test_curate_help_lists_every_settings_key_and_an_example_that_loads(tmp_path: Path) -> None:
    assert CURATE_SETTINGS_KEYS.split(", ") == list(CurationSettings.model_fields)
    config = tmp_path / "settings.yaml"
    config.write_text(CURATE_SETTINGS_EXAMPLE, encoding="utf-8")
    settings = load_settings(config, None)
    assert settings.max_rows_per_shard == 20_000 and settings.quality.allowed_languages == ["el", "en"]
    help_text = CliRunner().invoke(main, ["curate", "--help"]).output
    assert "max_rows_per_shard" in help_text and "refine_close_languages: true" in help_text
