"""Serving wiring without an engine: which replicas an endpoint needs, and refusals in one line."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from llm_assets.defs.serving.assets import DeployedEndpointConfig, _json_object, _servable_entry, local_spec
from llm_assets.lake import LocalLakeStorage
from llm_assets.registry import ModelRegistry


def _plan(model: str, path: str, base: str = "/lake/models/cpt/aaaa", rank: int = 16) -> dict:
    return {"model": model, "path": path, "base_dir": base, "served_dir": f"/serve/{model}", "rank": rank}


def test_merged_models_get_their_own_replica_and_adapters_share_their_base() -> None:
    config = DeployedEndpointConfig(models=["a", "b", "c"], port=8123)
    plans = [_plan("a", "merged"), _plan("b", "lora"), _plan("c", "lora", rank=32)]
    spec = local_spec(config, plans, lake_root="/lake")
    assert [r.served_model_name for r in spec.replicas] == ["a", "base"]
    assert spec.replicas[0].lora_modules == {} and not spec.replicas[0].runtime_lora_updating
    assert spec.replicas[1].lora_modules == {"b": "/serve/b", "c": "/serve/c"}
    assert spec.replicas[1].max_lora_rank == 32 and spec.replicas[1].runtime_lora_updating
    assert spec.routes == {"a": [(0, "a")], "b": [(1, "b")], "c": [(1, "c")]}
    assert spec.port == 8123 and spec.sample_rate == 0.01 and spec.lake_root == "/lake"


def test_adapters_on_different_bases_get_different_replicas() -> None:
    plans = [_plan("a", "lora", base="/b1"), _plan("b", "lora", base="/b2")]
    spec = local_spec(DeployedEndpointConfig(models=["a", "b"]), plans, lake_root=None)
    assert [r.model_dir for r in spec.replicas] == ["/b1", "/b2"]


def test_serving_needs_an_approved_version(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalLakeStorage(tmp_path))
    registry.register(
        "m", "v1", eval_metrics={}, gates={"g": {"passed": True, "blocking": True}}, lineage={}, registered_by="x"
    )
    with pytest.raises(dg.Failure, match="no approved version of m: approve one with `llm-assets registry approve m"):
        _servable_entry(registry, "m")
    registry.approve("m", "v1", by="ana", reason="ok")
    assert _servable_entry(registry, "m").version == "v1"


def test_a_rolled_back_version_is_not_served_again_but_a_new_approval_is(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalLakeStorage(tmp_path))
    for version in ("v1", "v2"):
        registry.register("m", version, eval_metrics={}, lineage={}, registered_by="x",
                          gates={"g": {"passed": True, "blocking": True}})  # fmt: skip
        registry.approve("m", version, by="ana", reason="ok")
        registry.deploy("m", version, by="ana", endpoint="http://127.0.0.1:8000/v1")
    assert _servable_entry(registry, "m").version == "v2"
    registry.rollback("m", by="ana", reason="v2 gives wrong answers")
    assert _servable_entry(registry, "m").version == "v1"  # v2 is approved again, but it was rolled back from
    registry.register("m", "v3", eval_metrics={}, lineage={}, registered_by="x",
                      gates={"g": {"passed": True, "blocking": True}})  # fmt: skip
    registry.approve("m", "v3", by="ana", reason="fixed")
    assert _servable_entry(registry, "m").version == "v3"


def test_platform_config_must_be_a_json_object() -> None:
    assert _json_object('{"gpus": 1}', "k8s") == {"gpus": 1}
    with pytest.raises(dg.Failure, match="'k8s' is not JSON"):
        _json_object("{gpus", "k8s")
    with pytest.raises(dg.Failure, match="must be a JSON object"):
        _json_object("[1]", "k8s")
