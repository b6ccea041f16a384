"""The code location loads, and its asset graph only changes on purpose (snapshot)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from llm_assets.definitions import build_definitions, defs, lake_resource_from_env
from llm_assets.resources.lake import LocalLakeResource, S3LakeResource

SNAPSHOT = Path(__file__).with_name("asset_graph_snapshot.json")


def graph_snapshot(definitions: dg.Definitions) -> dict[str, object]:
    """Keys, deps, groups, code versions, partitioning and checks of every asset."""
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(dep.to_user_string() for dep in node.parent_keys),
            "group": node.group_name,
            "code_version": node.code_version,
            "partitions": type(node.partitions_def).__name__ if node.partitions_def else None,
            "checks": sorted(
                f"{spec.name}{' (blocking)' if spec.blocking else ''}"
                for spec in (graph.get_check_spec(ck) for ck in graph.get_check_keys_for_assets({key}))
            ),
        }
    jobs = sorted(job.name for job in definitions.resolve_all_job_defs() if not job.name.startswith("__"))
    sensors = sorted(sensor.name for sensor in definitions.sensors or [])
    return {"assets": assets, "jobs": jobs, "sensors": sensors}


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("corpus_pipeline") is not None


def test_every_asset_has_a_code_version() -> None:
    graph = defs.resolve_asset_graph()
    missing = [k.to_user_string() for k in graph.get_all_asset_keys() if not graph.get(k).code_version]
    assert missing == []


def test_asset_graph_matches_snapshot() -> None:
    current = graph_snapshot(defs)
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    assert SNAPSHOT.exists(), f"{SNAPSHOT} missing; create it with UPDATE_SNAPSHOTS=1"
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert current == expected, "asset graph changed; if on purpose, rerun with UPDATE_SNAPSHOTS=1"


def test_lake_backend_comes_from_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("LLM_ASSETS_LAKE", raising=False)
    assert isinstance(lake_resource_from_env(), LocalLakeResource)
    monkeypatch.setenv("LLM_ASSETS_LAKE", "s3")
    monkeypatch.setenv("LLM_ASSETS_S3_BUCKET", "lake-bucket")
    monkeypatch.setenv("LLM_ASSETS_S3_KMS_KEY_ID", "alias/lake")
    resource = lake_resource_from_env()
    assert isinstance(resource, S3LakeResource)
    dg.Definitions.validate_loadable(build_definitions())
    monkeypatch.setenv("LLM_ASSETS_LAKE", "ftp")
    try:
        lake_resource_from_env()
    except ValueError as exc:
        assert "ftp" in str(exc)
    else:
        raise AssertionError("an unknown lake backend must be refused")
