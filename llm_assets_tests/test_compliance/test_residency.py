"""Residency: the policy against attestation facts, and the blocking check stopping downstream assets."""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from llm_assets.audit import AuditLog
from llm_assets.compliance import residency
from llm_assets.compliance.residency import (
    ResidencyError,
    ResidencyPolicy,
    attestation,
    load_policy,
    note_egress,
    note_remote_compute,
    storage_facts,
    violations,
)
from llm_assets.definitions import build_definitions
from llm_assets.defs.audit_trail import RESIDENCY_METADATA_KEY, record_materialization
from llm_assets.defs.compliance.residency import RESIDENCY_CHECK, residency_checks
from llm_assets.lake import LocalLakeStorage
from llm_assets.resources import EndpointError, InferenceEndpoint
from llm_assets.resources.lake import LakeResource, LocalLakeResource
from llm_assets.resources.residency import ResidencyResource

EU = ResidencyPolicy(
    name="eu",
    version="3",
    allowed_regions=["eu-*"],
    allowed_storage=["s3://gov-lake/"],
    allowed_endpoint_hosts=["*.eu-central-1.amazonaws.com", "llm.gov.example"],
    require_encryption=True,
)
S3_EU = {"backend": "s3", "bucket": "gov-lake", "prefix": "prod", "region": "eu-central-1", "kms_key_id": "alias/lake"}


def _facts(**over: Any) -> dict[str, Any]:
    facts = {
        "storage": storage_facts(S3_EU),
        "compute": {"backend": "process", "region": "eu-central-1", "host": "pod-1", "remote": []},
        "egress": [],
    }
    return facts | over


@pytest.fixture(autouse=True)
def _empty_step_log() -> None:
    residency.STEP_LOG.drain()


def test_compliant_facts_have_no_violations() -> None:
    assert violations(_facts(), EU) == []
    assert storage_facts(S3_EU)["uri"] == "s3://gov-lake/prod/"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"storage": storage_facts(S3_EU | {"bucket": "us-lake"})}, "storage s3://us-lake/prod/ is outside"),
        ({"storage": storage_facts(S3_EU | {"region": "us-east-1"})}, "storage region us-east-1 is not"),
        ({"storage": storage_facts(S3_EU | {"kms_key_id": ""})}, "is not KMS-encrypted"),
        (
            {"compute": {"backend": "process", "region": "us-west-2", "host": "h", "remote": []}},
            "compute region us-west-2 (process)",
        ),
        (
            {
                "compute": {
                    "backend": "process",
                    "region": "eu-west-1",
                    "remote": [{"backend": "sagemaker", "region": "us-east-1"}],
                }
            },
            "compute region us-east-1 (sagemaker)",
        ),
        ({"egress": [{"host": "api.openai.com", "purposes": ["inference_endpoint"]}]}, "contacted api.openai.com"),
    ],
)
def test_each_kind_of_violation_is_named(change: dict[str, Any], expected: str) -> None:
    found = violations(_facts(**change), EU)
    assert len(found) == 1 and expected in found[0], found


def test_allowed_hosts_match_wildcards_and_loopback() -> None:
    egress = [
        {"host": "sagemaker.eu-central-1.amazonaws.com", "purposes": ["x"]},
        {"host": "llm.gov.example", "purposes": ["y"]},
        {"host": "127.0.0.1", "purposes": ["z"]},
    ]
    assert violations(_facts(egress=egress), EU) == []
    strict = EU.model_copy(update={"allow_loopback": False})
    expected = ["contacted 127.0.0.1 (z), which is not an allowed endpoint host"]
    assert violations(_facts(egress=egress), strict) == expected


def test_local_policy_allows_the_embedded_default_and_nothing_remote(tmp_path: Path) -> None:
    policy = load_policy("local")
    local = attestation(LocalLakeStorage(tmp_path).describe_location())
    assert local["storage"]["uri"] == tmp_path.as_uri() and local["compute"]["region"] == "local"
    assert violations(local, policy) == []
    note_egress("https://api.example.com/v1", "inference_endpoint")
    found = violations(attestation(LocalLakeStorage(tmp_path).describe_location()), policy)
    assert found == ["contacted api.example.com (inference_endpoint), which is not an allowed endpoint host"]


def test_bundled_eu_policy_expands_the_environment_and_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ASSETS_S3_BUCKET", "gov-lake")
    monkeypatch.delenv("LLM_ASSETS_ORG_DOMAIN", raising=False)
    policy = load_policy("eu-sovereign")
    assert policy.allowed_storage == ["s3://gov-lake/"] and policy.require_encryption
    assert violations(_facts(), policy) == []
    # The unset domain variable stays literal, so no real host matches it.
    assert violations(_facts(egress=[{"host": "llm.gov.example", "purposes": ["e"]}]), policy)
    monkeypatch.delenv("LLM_ASSETS_S3_BUCKET")
    assert "outside the allowed storage" in violations(_facts(), load_policy("eu-sovereign"))[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\n  bad: [", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("name: x\nversion: '1'\nallowed_regions: [local]\n", "field allowed_storage: Field required"),
        ("name: x\nversion: '1'\nallowed_regions: [l]\nallowed_storage: [f]\nregion: y\n", "field region"),
    ],
)
def test_bad_policy_files_fail_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ResidencyError, match=r"residency policy .*policy\.yaml") as err:
        load_policy(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ResidencyError, match="no such file"):
        load_policy(tmp_path / "missing.yaml")


def test_clients_note_the_hosts_and_remote_compute_they_use() -> None:
    endpoint = InferenceEndpoint(base_url="http://127.0.0.2:9/v1", model="m", timeout_s=0.5, max_retries=0)
    with pytest.raises(EndpointError):
        endpoint.models()
    note_remote_compute("sagemaker", "eu-west-1", job="train-1")
    egress, remote = residency.STEP_LOG.drain()
    assert egress == [{"host": "127.0.0.2", "purposes": ["inference_endpoint"]}]
    assert remote == [{"backend": "sagemaker", "region": "eu-west-1", "job": "train-1"}]
    assert residency.STEP_LOG.drain() == ([], [])


# ---- through Dagster: the blocking check stops what is downstream ---------------------------------------------


def _graph() -> list[dg.AssetsDefinition]:
    @dg.asset
    def prompts(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        storage = lake.storage()
        storage.write_bytes("prompts.txt", b"hello")
        note_egress("https://api.vendor.example/v1/chat", "inference_endpoint")  # e.g. an LLM judge abroad
        record_materialization(
            context, storage, code_version="1", input_data_versions={}, output_data_version="p1", counts={}, config={}
        )
        return dg.MaterializeResult(data_version=dg.DataVersion("p1"), metadata={"rows": 1})

    @dg.asset(deps=[prompts])
    def answers(context: dg.AssetExecutionContext, lake: LakeResource) -> None:
        storage = lake.storage()
        record_materialization(
            context, storage, code_version="1", input_data_versions={}, output_data_version="a1", counts={}, config={}
        )

    return [prompts, answers]


def _run(tmp_path: Path, policy: str) -> tuple[dg.ExecuteInProcessResult, LocalLakeStorage]:
    assets = _graph()
    lake = LocalLakeResource(root=str(tmp_path / "lake"))
    defs = dg.Definitions(
        assets=assets,
        asset_checks=residency_checks(k for a in assets for k in a.keys),
        resources={"lake": lake, "residency": ResidencyResource(policy=policy)},
    )
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(raise_on_error=False), LocalLakeStorage(tmp_path / "lake")


def test_a_violation_blocks_downstream_assets_and_is_audited(tmp_path: Path) -> None:
    result, storage = _run(tmp_path, "local")
    materialised = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialised == {"prompts"}  # answers never ran
    (check,) = [c for c in result.get_asset_check_evaluations() if c.asset_key == dg.AssetKey("prompts")]
    assert check.check_name == RESIDENCY_CHECK and not check.passed
    assert check.severity == dg.AssetCheckSeverity.ERROR
    assert "api.vendor.example" in check.metadata["violations"].value  # type: ignore[operator]
    (mat,) = result.get_asset_materialization_events()
    facts = mat.step_materialization_data.materialization.metadata[RESIDENCY_METADATA_KEY].value
    assert facts["egress"] == [{"host": "api.vendor.example", "purposes": ["inference_endpoint"]}]  # type: ignore[index]
    records = AuditLog(storage).records()
    (audit,) = [r for r in records if r.get("check") == RESIDENCY_CHECK]
    assert audit["passed"] is False and audit["figures"]["policy"]["name"] == "local"
    assert [r["residency"]["egress"][0]["host"] for r in records if r["event"] == "materialization"] == [
        "api.vendor.example"
    ]


def test_with_the_host_allowed_the_whole_graph_builds(tmp_path: Path) -> None:
    policy = tmp_path / "allow.yaml"
    policy.write_text(
        "name: site\nversion: '2'\nallowed_regions: [local]\nallowed_storage: ['file://']\n"
        "allowed_endpoint_hosts: ['api.vendor.example']\n"
    )
    result, _ = _run(tmp_path, str(policy))
    assert result.success
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == {"prompts", "answers"}
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 2 and all(c.passed for c in checks)
    assert checks[0].metadata["policy"].value == "site v2"


def test_the_code_location_checks_every_asset_and_the_lake_outside_policy_stops_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real definitions: every materialisable asset has the check; a lake outside the allowed storage
    stops the per-source pipeline after raw_corpus."""
    root = tmp_path / "lake"
    policy = tmp_path / "eu.yaml"
    policy.write_text("name: eu\nversion: '1'\nallowed_regions: [local]\nallowed_storage: ['s3://gov-lake/']\n")
    monkeypatch.setenv("LLM_ASSETS_LAKE_ROOT", str(root))
    monkeypatch.setenv("LLM_ASSETS_RESIDENCY_POLICY", str(policy))
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    checked = {key.asset_key for key in graph.asset_check_keys if key.name == RESIDENCY_CHECK}
    assert checked == set(graph.materializable_asset_keys)
    storage = LocalLakeStorage(root)
    storage.write_bytes(
        "landing/council/source.yaml",
        b"name: council\nlicence: CC0-1.0\njurisdiction: EU\nsource_uri: https://example.org/c\n",
    )
    storage.write_bytes("landing/council/docs.jsonl", json.dumps({"text": "A public notice."}).encode() + b"\n")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sources", ["council"])
        result = defs.resolve_job_def("corpus_pipeline").execute_in_process(
            partition_key="council", instance=instance, raise_on_error=False
        )
    assert [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()] == ["raw_corpus"]
    failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
    assert [(c.asset_key.to_user_string(), c.check_name) for c in failed] == [("raw_corpus", RESIDENCY_CHECK)]
    assert "outside the allowed storage (s3://gov-lake/)" in failed[0].metadata["violations"].value  # type: ignore[operator]
