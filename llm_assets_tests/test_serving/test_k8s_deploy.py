"""k8s_deploy: rendered manifests are valid for the API server, keep secrets out, and apply create-or-patch."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes
import kubernetes_validate
import pydantic
import pytest
import yaml

from llm_assets.serving.k8s_deploy import (
    K8sDeployError,
    K8sServingConfig,
    apply_manifests,
    render_manifests,
    to_yaml,
    validate_manifests,
)

BUILT_IN = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}


def _config(**overrides: Any) -> K8sServingConfig:
    values: dict[str, Any] = {
        "name": "llm-assets",
        "base_model_uri": "s3://lake/models/cpt/abc",
        "adapters": {"banking77_intents": "s3://lake/adapters/b77/v1/adapter", "faq": "s3://lake/adapters/faq"},
        "served_model_name": "base",
        "service_account": "lake-reader",
        "aws_region": "eu-west-1",
    }
    return K8sServingConfig(**(values | overrides))


def _by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


def _vllm(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return _by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"scale_to_zero": False, "replicas_min": 1},
        {"scale_to_zero": False, "replicas_min": 1, "hpa_pods_metric": "x"},
    ],
    ids=["keda", "hpa-cpu", "hpa-pods"],
)
def test_rendered_manifests_validate_strictly(overrides: dict[str, Any]) -> None:
    manifests = render_manifests(_config(**overrides))
    assert validate_manifests(manifests) == []
    for m in manifests:
        if m["kind"] in BUILT_IN:
            kubernetes_validate.validate(m, "1.30", strict=True)
    kinds = [m["kind"] for m in manifests]
    autoscaler = "ScaledObject" if not overrides else "HorizontalPodAutoscaler"
    assert kinds == ["Deployment", "Service", autoscaler, "PodDisruptionBudget", "NetworkPolicy"]


def test_scaled_object_scales_to_zero_on_vllm_load() -> None:
    scaled = _by_kind(render_manifests(_config(idle_minutes=20, replicas_max=3)))["ScaledObject"]
    spec = scaled["spec"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"]["name"] == "llm-assets"
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (0, 3, 1200)
    query = spec["triggers"][0]["metadata"]["query"]
    assert "vllm:num_requests_running" in query and "vllm:num_requests_waiting" in query
    deployment = _by_kind(render_manifests(_config()))["Deployment"]
    assert "replicas" not in deployment["spec"], "the autoscaler owns replicas; a re-apply must not reset them"


def _break_replicas(ms: list[dict[str, Any]]) -> None:
    ms[0]["spec"]["replicas"] = -1


def _break_name(ms: list[dict[str, Any]]) -> None:
    ms[1]["metadata"]["name"] = "Bad_Name"


def _break_target(ms: list[dict[str, Any]]) -> None:
    ms[2]["spec"]["scaleTargetRef"]["name"] = "other"


def _break_bounds(ms: list[dict[str, Any]]) -> None:
    ms[2]["spec"]["minReplicaCount"] = 5


def _break_triggers(ms: list[dict[str, Any]]) -> None:
    ms[2]["spec"]["triggers"] = []


def _break_unknown_field(ms: list[dict[str, Any]]) -> None:
    ms[0]["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"


def _break_selector(ms: list[dict[str, Any]]) -> None:
    ms[1]["spec"]["selector"] = {"app": "nothing"}


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (_break_replicas, "Deployment/llm-assets: spec.replicas -1 is negative"),
        (_break_name, "Service/Bad_Name: name 'Bad_Name' is not a valid DNS label"),
        (_break_target, "ScaledObject/llm-assets: scaleTargetRef.name 'other' is no Deployment in this set"),
        (_break_bounds, "ScaledObject/llm-assets: needs 0 <= minReplicaCount (5) <= maxReplicaCount (2), max >= 1"),
        (_break_triggers, "ScaledObject/llm-assets: triggers must be a non-empty list"),
        (_break_unknown_field, "Deployment/llm-assets: spec.template.spec.containers.0: Additional properties"),
        (_break_selector, "Service/llm-assets: its selector matches no Deployment's pods in this set"),
    ],
)
def test_broken_manifests_are_reported(breaker: Any, expected: str) -> None:
    manifests = copy.deepcopy(render_manifests(_config()))
    breaker(manifests)
    problems = validate_manifests(manifests)
    assert any(p.startswith(expected) for p in problems), problems


def test_unsupported_kubernetes_version_is_one_problem() -> None:
    problems = validate_manifests(render_manifests(_config()), kubernetes_version="1.99")
    assert len(problems) == 1 and "1.99" in problems[0]


def test_gpu_limits_only_when_gpus_requested() -> None:
    gpu = _vllm(render_manifests(_config(gpus=2)))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 2
    cpu_manifests = render_manifests(_config(gpus=0, image="example/vllm-cpu:1"))
    assert "nvidia.com/gpu" not in _vllm(cpu_manifests)["resources"]["limits"]
    assert "nvidia.com/gpu" not in to_yaml(cpu_manifests)
    assert validate_manifests(cpu_manifests) == []


def test_vllm_arguments_and_model_sync() -> None:
    manifests = render_manifests(_config())
    args = _vllm(manifests)["args"]
    assert args[args.index("--model") + 1] == "/models/base"
    assert args[args.index("--served-model-name") + 1] == "base"
    assert "--enable-lora" in args and args[args.index("--max-lora-rank") + 1] == "16"
    modules = args[args.index("--lora-modules") + 1 :]
    assert modules == ["banking77_intents=/models/adapters/banking77_intents", "faq=/models/adapters/faq"]
    pod = _by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]
    syncs = [c["command"] for c in pod["initContainers"]]
    assert syncs[0][:5] == ["aws", "s3", "sync", "s3://lake/models/cpt/abc/", "/models/base"]
    assert [c[4] for c in syncs[1:]] == ["/models/adapters/banking77_intents", "/models/adapters/faq"]
    assert pod["serviceAccountName"] == "lake-reader"
    assert {v["name"]: v for v in pod["volumes"]}["dshm"]["emptyDir"]["medium"] == "Memory"
    for container in [*pod["initContainers"], *pod["containers"]]:
        security = container["securityContext"]
        assert security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"] == {"drop": ["ALL"]} and security["readOnlyRootFilesystem"]
    vllm = _vllm(manifests)
    assert all(vllm[p]["httpGet"]["path"] == "/health" for p in ("startupProbe", "readinessProbe", "livenessProbe"))
    assert vllm["startupProbe"]["failureThreshold"] * vllm["startupProbe"]["periodSeconds"] >= 1800


def test_api_key_only_through_secret_ref(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sk-must-never-appear")
    manifests = render_manifests(_config(api_key_secret="serving-keys"))
    text = to_yaml(manifests)
    assert "sk-must-never-appear" not in text
    assert "--api-key" not in text
    env = {e["name"]: e for e in _vllm(manifests)["env"]}
    assert env["VLLM_API_KEY"] == {
        "name": "VLLM_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "serving-keys", "key": "api-key"}},
    }
    assert list(yaml.safe_load_all(text)) == manifests


def test_network_policy_admits_gateway_and_metrics_only() -> None:
    policy = _by_kind(render_manifests(_config(gateway_pod_labels={"app": "gw"})))["NetworkPolicy"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert rule["from"][0]["podSelector"] == {"matchLabels": {"app": "gw"}}
    assert "namespaceSelector" in rule["from"][0] and "podSelector" not in rule["from"][1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "LLM_assets"}, "DNS-1035"),
        ({"base_model_uri": "file:///lake/base"}, "must be an s3:// prefix"),
        ({"adapters": {"a=b": "s3://x/y"}}, "adapter name"),
        ({"max_lora_rank": 12}, "max_lora_rank 12"),
        ({"scale_to_zero": False}, "HPA cannot scale to zero"),
        ({"replicas_min": 1}, "scale_to_zero needs replicas_min 0"),
        ({"cpu_limit": "lots"}, "Kubernetes quantity"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_config_fails_fast(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        _config(**overrides)


class _Recorder:
    """Stands in for the generated API classes and CustomObjectsApi: records calls, answers 409 where told."""

    def __init__(self, calls: list[tuple[Any, ...]], conflicts: set[str]) -> None:
        self.calls, self.conflicts = calls, conflicts

    def __call__(self, api_client: Any) -> _Recorder:
        return self

    def patch_namespaced_deployment(self, **kwargs: Any) -> None:
        self.calls.append(("patch", "Deployment", kwargs["name"], kwargs["_content_type"], kwargs.get("dry_run")))

    def create_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, body: Any, **kw: Any):
        self.calls.append(("custom-create", plural, body["metadata"]["name"], kw.get("dry_run")))
        if "ScaledObject" in self.conflicts:
            raise kubernetes.client.ApiException(status=409, reason="Conflict")

    def patch_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str, body, **kw):
        self.calls.append(("custom-patch", plural, name, kw["_content_type"]))


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[Any, ...]], set[str]]:
    calls: list[tuple[Any, ...]] = []
    conflicts: set[str] = set()

    def create_from_dict(api_client: Any, data: dict[str, Any], namespace: str = "default", **kwargs: Any) -> None:
        calls.append(("create", data["kind"], namespace, kwargs.get("dry_run")))
        if data["kind"] in conflicts:
            raise kubernetes.utils.FailToCreateError([kubernetes.client.ApiException(status=409, reason="Conflict")])

    recorder = _Recorder(calls, conflicts)
    monkeypatch.setattr(kubernetes.utils, "create_from_dict", create_from_dict)
    monkeypatch.setattr(kubernetes.client, "AppsV1Api", recorder)
    monkeypatch.setattr(kubernetes.client, "CustomObjectsApi", recorder)
    return calls, conflicts


def test_apply_creates_in_order(fake_cluster: tuple[list[tuple[Any, ...]], set[str]]) -> None:
    calls, _ = fake_cluster
    lines = apply_manifests(render_manifests(_config()), api_client=object())
    assert lines == [
        "deployment llm-serving/llm-assets created",
        "service llm-serving/llm-assets created",
        "scaledobject llm-serving/llm-assets created",
        "poddisruptionbudget llm-serving/llm-assets created",
        "networkpolicy llm-serving/llm-assets created",
    ]
    assert [c[1] for c in calls] == ["Deployment", "Service", "scaledobjects", "PodDisruptionBudget", "NetworkPolicy"]


def test_apply_patches_what_exists(fake_cluster: tuple[list[tuple[Any, ...]], set[str]]) -> None:
    calls, conflicts = fake_cluster
    conflicts |= {"Deployment", "ScaledObject"}
    lines = apply_manifests(render_manifests(_config()), api_client=object(), dry_run=True)
    assert lines[0] == "deployment llm-serving/llm-assets configured (dry run)"
    assert lines[2] == "scaledobject llm-serving/llm-assets configured (dry run)"
    assert calls[:2] == [
        ("create", "Deployment", "llm-serving", "All"),
        ("patch", "Deployment", "llm-assets", "application/strategic-merge-patch+json", "All"),
    ]
    assert ("custom-patch", "scaledobjects", "llm-assets", "application/merge-patch+json") in calls


def test_apply_reports_other_api_errors_in_one_line(
    fake_cluster: tuple[list[tuple[Any, ...]], set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        error = kubernetes.client.ApiException(status=403, reason="Forbidden")
        error.body = '{"kind": "Status", "message": "deployments.apps is forbidden:\\n user x"}'
        raise kubernetes.utils.FailToCreateError([error])

    monkeypatch.setattr(kubernetes.utils, "create_from_dict", forbidden)
    with pytest.raises(K8sDeployError) as caught:
        apply_manifests(render_manifests(_config()), api_client=object())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("Deployment llm-serving/llm-assets: 403 deployments.apps is forbidden")
    assert "RBAC" in message


def test_no_cluster_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    with pytest.raises(K8sDeployError) as caught:
        apply_manifests(render_manifests(_config()), rendered_at="s3://lake/deployments/x.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("no Kubernetes cluster configured: set KUBECONFIG or run in-cluster")
    assert "s3://lake/deployments/x.yaml" in message
