"""Kubernetes manifests for a vLLM endpoint (base model + LoRA adapters from the S3 lake), checked offline, applied
through the Kubernetes Python client.

What is rendered, in apply order: a Deployment (init containers `aws s3 sync` the base model and each adapter into an
emptyDir, then vLLM serves them), a ClusterIP Service, the autoscaler (a KEDA ScaledObject when `scale_to_zero`, else
an `autoscaling/v2` HorizontalPodAutoscaler), a PodDisruptionBudget and a NetworkPolicy that admits only the gateway
and Prometheus. The Deployment carries no `replicas`: the autoscaler owns it, and a re-apply must not reset it.

Scale-to-zero caveat: KEDA's Prometheus trigger reads vLLM's own metrics, which vanish with the last pod, so a
ScaledObject alone scales *to* zero but never back *from* it. Put the KEDA HTTP add-on (an interceptor that holds
requests and wakes the Deployment) or a queue the trigger can read in front of the Service.

Secrets: the API key reaches vLLM only as env `VLLM_API_KEY` from a Secret (`secretKeyRef`); vLLM reads that variable
itself, so no key ever appears in the manifests or in the process arguments.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

import pydantic
import yaml
from pydantic import Field

from llm_assets.serving.vllm_server import VLLM_LORA_RANKS

KEDA_API_VERSION = "keda.sh/v1alpha1"
DEFAULT_KUBERNETES_VERSION = "1.30"
MODELS_DIR = "/models"
FIELD_MANAGER = "llm-assets"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


class K8sDeployError(RuntimeError):
    """The manifests could not be applied; the message is one line saying what to do."""


class K8sServingConfig(pydantic.BaseModel):
    """One vLLM endpoint on Kubernetes. Invalid values fail here, before anything is rendered."""

    model_config = pydantic.ConfigDict(extra="forbid")

    name: str = Field(description="DNS-1035 label (it names the Service): lowercase letters, digits and '-'.")
    namespace: str = "llm-serving"
    image: str = Field(
        default="vllm/vllm-openai:v0.11.0",
        description="vLLM image. Pin it by digest in production (`vllm/vllm-openai@sha256:...`): tags move.",
    )
    base_model_uri: str = Field(description="s3:// prefix of the base (or merged) model folder.")
    adapters: dict[str, str] = Field(default_factory=dict, description="LoRA adapter name -> s3:// prefix.")
    served_model_name: str
    gpus: int = Field(default=1, ge=0, description="GPUs per replica; 0 runs on CPU (use a CPU build of vLLM).")
    gpu_resource: str = "nvidia.com/gpu"
    cpu_request: str = "4"
    cpu_limit: str = "8"
    memory_request: str = "32Gi"
    memory_limit: str = "32Gi"
    shm_size: str = Field(default="8Gi", description="Size of the in-memory /dev/shm (NCCL, torch workers).")
    model_volume_size: str = Field(default="100Gi", description="emptyDir limit for the synced model and adapters.")
    max_lora_rank: int = 16
    max_model_len: int = Field(default=4096, ge=32)
    port: int = Field(default=8000, ge=1024, le=65535)
    replicas_min: int = Field(default=0, ge=0)
    replicas_max: int = Field(default=2, ge=1)
    scale_to_zero: bool = Field(default=True, description="KEDA ScaledObject (min 0); otherwise an HPA (min >= 1).")
    idle_minutes: int = Field(default=15, ge=1, description="KEDA cooldown before scaling an idle endpoint to zero.")
    target_concurrency: int = Field(default=8, ge=1, description="Running + waiting requests per replica to aim at.")
    prometheus_address: str = Field(
        default="http://prometheus-server.monitoring.svc.cluster.local",
        description="Prometheus the KEDA trigger queries; it must scrape the pods' /metrics.",
    )
    hpa_pods_metric: str | None = Field(
        default=None,
        description="HPA only: a per-pod custom metric (e.g. `vllm_num_requests_running` from prometheus-adapter);"
        " CPU utilisation when unset.",
    )
    startup_timeout_s: int = Field(default=1800, ge=60, description="Model sync + load budget before restarts.")
    api_key_secret: str = Field(
        default="vllm-api-key", description="Secret (same namespace) whose key 'api-key' holds vLLM's API key."
    )
    service_account: str | None = Field(default=None, description="Service account with IRSA read on the lake.")
    aws_region: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    model_sync_image: str = "amazon/aws-cli:2.27.0"
    gateway_namespace_labels: dict[str, str] = Field(
        default_factory=lambda: {"kubernetes.io/metadata.name": "llm-gateway"},
        description="NetworkPolicy: namespaces the gateway runs in.",
    )
    gateway_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/component": "gateway"},
        description="NetworkPolicy: the gateway pods within those namespaces.",
    )
    metrics_namespace_labels: dict[str, str] = Field(
        default_factory=lambda: {"kubernetes.io/metadata.name": "monitoring"},
        description="NetworkPolicy: namespaces whose pods may scrape /metrics (Prometheus, which KEDA reads).",
    )

    @pydantic.field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if len(value) > 63 or not _DNS1035_LABEL.match(value):
            raise ValueError(f"name {value!r} must be a DNS-1035 label: <= 63 of a-z 0-9 '-', starting with a letter")
        return value

    @pydantic.field_validator("namespace", "api_key_secret", "service_account")
    @classmethod
    def _check_label(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 63 or not _DNS1123_LABEL.match(value)):
            raise ValueError(f"{value!r} must be a DNS-1123 label: <= 63 of a-z 0-9 '-'")
        return value

    @pydantic.field_validator("base_model_uri")
    @classmethod
    def _check_base_uri(cls, value: str) -> str:
        if not value.startswith("s3://") or len(value) <= len("s3://"):
            raise ValueError(f"base_model_uri {value!r} must be an s3:// prefix: pods read models from the S3 lake")
        return value

    @pydantic.field_validator("adapters")
    @classmethod
    def _check_adapters(cls, value: dict[str, str]) -> dict[str, str]:
        for adapter, uri in value.items():
            if not _ADAPTER_NAME.match(adapter):
                raise ValueError(f"adapter name {adapter!r}: use <= 63 of A-Z a-z 0-9 . _ - (it is a folder name)")
            if not uri.startswith("s3://"):
                raise ValueError(f"adapter {adapter}: {uri!r} must be an s3:// prefix")
        return value

    @pydantic.field_validator("served_model_name")
    @classmethod
    def _check_served_name(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"served_model_name {value!r} must be non-empty without spaces")
        return value

    @pydantic.field_validator(
        "cpu_request", "cpu_limit", "memory_request", "memory_limit", "shm_size", "model_volume_size"
    )
    @classmethod
    def _check_quantity(cls, value: str) -> str:
        if not _QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 4, 32Gi)")
        return value

    @pydantic.field_validator("max_lora_rank")
    @classmethod
    def _check_rank(cls, value: int) -> int:
        if value not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank {value} is not one vLLM accepts; use one of {VLLM_LORA_RANKS}")
        return value

    @pydantic.model_validator(mode="after")
    def _check_replicas(self) -> K8sServingConfig:
        if self.replicas_min > self.replicas_max:
            raise ValueError(f"replicas_min {self.replicas_min} > replicas_max {self.replicas_max}")
        if self.scale_to_zero and self.replicas_min != 0:
            raise ValueError("scale_to_zero needs replicas_min 0; set scale_to_zero false to keep replicas warm")
        if not self.scale_to_zero and self.replicas_min < 1:
            raise ValueError("an HPA cannot scale to zero: set replicas_min >= 1 or scale_to_zero true (KEDA)")
        return self


def render_manifests(config: K8sServingConfig) -> list[dict[str, Any]]:
    """Deployment, Service, autoscaler, PodDisruptionBudget and NetworkPolicy, in the order they should be applied."""
    autoscaler = _scaled_object(config) if config.scale_to_zero else _hpa(config)
    return [_deployment(config), _service(config), autoscaler, _pdb(config), _network_policy(config)]


def _selector(config: K8sServingConfig) -> dict[str, str]:
    return {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": config.name}


def _labels(config: K8sServingConfig) -> dict[str, str]:
    return _selector(config) | {
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/part-of": "llm-assets",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
    }


def _metadata(config: K8sServingConfig) -> dict[str, Any]:
    return {"name": config.name, "namespace": config.namespace, "labels": _labels(config)}


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _sync_container(config: K8sServingConfig, name: str, uri: str, target: str) -> dict[str, Any]:
    """One `aws s3 sync` per folder, as argv (no shell): URIs are never interpreted. SSE-KMS objects decrypt
    transparently when the service account's role may kms:Decrypt with the lake's key."""
    env = [{"name": "HOME", "value": "/tmp"}]
    if config.aws_region:
        env += [
            {"name": "AWS_REGION", "value": config.aws_region},
            {"name": "AWS_DEFAULT_REGION", "value": config.aws_region},
        ]
    return {
        "name": name,
        "image": config.model_sync_image,
        "command": ["aws", "s3", "sync", uri.rstrip("/") + "/", target, "--only-show-errors", "--no-progress"],
        "env": env,
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }


def _vllm_args(config: K8sServingConfig) -> list[str]:
    args = [
        "--model", f"{MODELS_DIR}/base",
        "--served-model-name", config.served_model_name,
        "--host", "0.0.0.0",
        "--port", str(config.port),
        "--max-model-len", str(config.max_model_len),
        "--enable-lora",
        "--max-lora-rank", str(config.max_lora_rank),
        "--max-loras", str(max(1, len(config.adapters))),
    ]  # fmt: skip
    if config.adapters:
        args += ["--lora-modules", *(f"{a}={MODELS_DIR}/adapters/{a}" for a in sorted(config.adapters))]
    return args


def _deployment(config: K8sServingConfig) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": config.cpu_limit, "memory": config.memory_limit}
    tolerations = list(config.tolerations)
    if config.gpus > 0:
        limits[config.gpu_resource] = config.gpus
        if not any(t.get("key") == config.gpu_resource for t in tolerations):
            tolerations.append({"key": config.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    probe = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 5}
    env = [
        {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": config.api_key_secret, "key": "api-key"}}},
        {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/cache"},
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
    ]
    syncs = [_sync_container(config, "sync-base", config.base_model_uri, f"{MODELS_DIR}/base")]
    syncs += [
        _sync_container(config, f"sync-adapter-{i}", config.adapters[a], f"{MODELS_DIR}/adapters/{a}")
        for i, a in enumerate(sorted(config.adapters))
    ]
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 60,
        "initContainers": syncs,
        "containers": [
            {
                "name": "vllm",
                "image": config.image,
                "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
                "args": _vllm_args(config),
                "env": env,
                "ports": [{"name": "http", "containerPort": config.port, "protocol": "TCP"}],
                "resources": {
                    "requests": {"cpu": config.cpu_request, "memory": config.memory_request},
                    "limits": limits,
                },
                "startupProbe": probe
                | {"periodSeconds": 10, "failureThreshold": max(1, config.startup_timeout_s // 10)},
                "readinessProbe": probe | {"periodSeconds": 5, "failureThreshold": 3},
                "livenessProbe": probe | {"periodSeconds": 15, "failureThreshold": 4},
                "securityContext": _container_security(),
                "volumeMounts": [
                    {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "cache", "mountPath": "/cache"},
                ],
            }
        ],
        "volumes": [
            {"name": "models", "emptyDir": {"sizeLimit": config.model_volume_size}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
            {"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}},
        ],
    }
    if config.service_account:
        pod["serviceAccountName"] = config.service_account
    if config.node_selector:
        pod["nodeSelector"] = dict(config.node_selector)
    if tolerations:
        pod["tolerations"] = tolerations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(config),
        "spec": {
            "selector": {"matchLabels": _selector(config)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": _labels(config),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(config.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod,
            },
        },
    }


def _service(config: K8sServingConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(config),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(config),
            "ports": [{"name": "http", "port": config.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _scaled_object(config: K8sServingConfig) -> dict[str, Any]:
    match = f'{{namespace="{config.namespace}",model_name="{config.served_model_name}"}}'
    query = f"sum(vllm:num_requests_running{match} or vector(0)) + sum(vllm:num_requests_waiting{match} or vector(0))"
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": _metadata(config),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": config.name},
            "pollingInterval": 15,
            "cooldownPeriod": config.idle_minutes * 60,
            "minReplicaCount": 0,
            "maxReplicaCount": config.replicas_max,
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": config.prometheus_address,
                        "query": query,
                        "threshold": str(config.target_concurrency),
                        "activationThreshold": "0",
                    },
                }
            ],
        },
    }


def _hpa(config: K8sServingConfig) -> dict[str, Any]:
    metric: dict[str, Any]
    if config.hpa_pods_metric:
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": config.hpa_pods_metric},
                "target": {"type": "AverageValue", "averageValue": str(config.target_concurrency)},
            },
        }
    else:
        metric = {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(config),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": config.name},
            "minReplicas": config.replicas_min,
            "maxReplicas": config.replicas_max,
            "metrics": [metric],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": config.idle_minutes * 60}},
        },
    }


def _pdb(config: K8sServingConfig) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(config),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(config)}},
    }


def _network_policy(config: K8sServingConfig) -> dict[str, Any]:
    peers = [
        {
            "namespaceSelector": {"matchLabels": dict(config.gateway_namespace_labels)},
            "podSelector": {"matchLabels": dict(config.gateway_pod_labels)},
        },
        {"namespaceSelector": {"matchLabels": dict(config.metrics_namespace_labels)}},
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(config),
        "spec": {
            "podSelector": {"matchLabels": _selector(config)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": config.port}]}],
        },
    }


def validate_manifests(
    manifests: list[dict[str, Any]], *, kubernetes_version: str = DEFAULT_KUBERNETES_VERSION
) -> list[str]:
    """Problems, one line each (empty when all is well). Built-in kinds are checked strictly against the
    Kubernetes OpenAPI schema of `kubernetes_version` (kubernetes-validate ships 1.25-1.37), plus what a schema
    cannot say (names, replica bounds, selectors that match); the KEDA ScaledObject, a CRD, structurally."""
    import kubernetes_validate

    supported = kubernetes_validate.utils.all_versions()
    wanted = kubernetes_validate.utils.major_minor(kubernetes_version.removeprefix("v"))
    if wanted not in {kubernetes_validate.utils.major_minor(v) for v in supported}:
        return [
            f"kubernetes_version {kubernetes_version}: kubernetes-validate {kubernetes_validate.__version__} has "
            f"schemas for {supported[0]} to {supported[-1]} only"
        ]
    problems: list[str] = []
    deployments: dict[str, Mapping[str, str]] = {}
    for m in manifests:
        if m.get("kind") == "Deployment":
            name = m.get("metadata", {}).get("name", "")
            deployments[name] = m.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    for index, m in enumerate(manifests):
        kind, api_version = m.get("kind"), m.get("apiVersion")
        name = m.get("metadata", {}).get("name")
        where = f"{kind or '?'}/{name or f'#{index}'}"
        if not kind or not api_version or not name:
            problems.append(f"{where}: needs apiVersion, kind and metadata.name")
            continue
        pattern = _DNS1035_LABEL if kind == "Service" else _DNS1123_LABEL
        if len(name) > 63 or not pattern.match(name):
            problems.append(f"{where}: name {name!r} is not a valid DNS label")
        if api_version.startswith("keda.sh/"):
            problems += [f"{where}: {p}" for p in _scaled_object_problems(m, deployments)]
            continue
        try:
            kubernetes_validate.validate(m, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path) or "(root)"
            problems.append(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{where}: {exc.message}")
        problems += [f"{where}: {p}" for p in _semantic_problems(m, deployments)]
    return problems


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _semantic_problems(m: dict[str, Any], deployments: Mapping[str, Mapping[str, str]]) -> list[str]:
    spec = m.get("spec", {})
    kind = m["kind"]
    problems = []
    if kind == "Deployment":
        replicas = spec.get("replicas")
        if isinstance(replicas, int) and replicas < 0:
            problems.append(f"spec.replicas {replicas} is negative")
        labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
        if not _matches(spec.get("selector", {}).get("matchLabels", {}), labels):
            problems.append("spec.selector.matchLabels does not match the pod template's labels")
    elif kind == "HorizontalPodAutoscaler":
        target = spec.get("scaleTargetRef", {}).get("name")
        if target not in deployments:
            problems.append(f"scaleTargetRef.name {target!r} is no Deployment in this set")
        low, high = spec.get("minReplicas", 1), spec.get("maxReplicas", 0)
        if not 1 <= low <= high:
            problems.append(f"needs 1 <= minReplicas ({low}) <= maxReplicas ({high})")
    elif kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        selector = (
            spec.get("selector", {})
            if kind == "Service"
            else spec.get("podSelector" if kind == "NetworkPolicy" else "selector", {}).get("matchLabels", {})
        )
        if not any(_matches(selector, labels) for labels in deployments.values()):
            problems.append("its selector matches no Deployment's pods in this set")
    return problems


def _scaled_object_problems(m: dict[str, Any], deployments: Mapping[str, Mapping[str, str]]) -> list[str]:
    if m["apiVersion"] != KEDA_API_VERSION or m["kind"] != "ScaledObject":
        return [f"expected {KEDA_API_VERSION} ScaledObject, got {m['apiVersion']} {m['kind']}"]
    spec = m.get("spec")
    if not isinstance(spec, dict):
        return ["spec is missing"]
    problems = []
    ref = spec.get("scaleTargetRef") or {}
    if ref.get("name") not in deployments:
        problems.append(f"scaleTargetRef.name {ref.get('name')!r} is no Deployment in this set")
    if ref.get("kind", "Deployment") != "Deployment":
        problems.append(f"scaleTargetRef.kind {ref.get('kind')!r} should be Deployment")
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high and high >= 1):
        problems.append(f"needs 0 <= minReplicaCount ({low}) <= maxReplicaCount ({high}), max >= 1")
    cooldown = spec.get("cooldownPeriod", 300)
    if not isinstance(cooldown, int) or cooldown < 0:
        problems.append(f"cooldownPeriod {cooldown!r} must be a non-negative integer")
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        problems.append("triggers must be a non-empty list")
    else:
        for i, trigger in enumerate(triggers):
            if (
                not isinstance(trigger, dict)
                or not trigger.get("type")
                or not isinstance(trigger.get("metadata"), dict)
            ):
                problems.append(f"triggers[{i}] needs a type and a metadata mapping")
            elif any(not isinstance(v, str) for v in trigger["metadata"].values()):
                problems.append(f"triggers[{i}].metadata values must all be strings")
    return problems


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML, ready for `kubectl apply -f -`."""
    return yaml.safe_dump_all(manifests, sort_keys=False, explicit_start=True)


def apply_manifests(
    manifests: list[dict[str, Any]],
    api_client: Any = None,
    *,
    dry_run: bool = False,
    rendered_at: str | None = None,
) -> list[str]:
    """Create each object, or patch it when it exists (409), in order; one line per object.

    Built-in kinds go through `kubernetes.utils.create_from_dict` and a strategic-merge patch, the ScaledObject
    through `CustomObjectsApi` and a merge patch. `dry_run` asks the API server to validate without persisting.
    `api_client` defaults to the in-cluster config, then the kubeconfig; `rendered_at` (where the YAML was saved)
    goes into the error when neither exists.
    """
    import kubernetes
    import urllib3

    client = api_client if api_client is not None else _default_api_client(rendered_at)
    lines = []
    for m in manifests:
        kind, name = m["kind"], m["metadata"]["name"]
        namespace = m["metadata"].get("namespace", "default")
        try:
            if m["apiVersion"].startswith("keda.sh/"):
                verb = _apply_custom(client, m, namespace, dry_run)
            else:
                verb = _apply_builtin(client, m, namespace, dry_run)
        except kubernetes.client.ApiException as exc:
            raise K8sDeployError(f"{kind} {namespace}/{name}: {_api_error(exc)}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise K8sDeployError(
                f"{kind} {namespace}/{name}: cannot reach the Kubernetes API ({type(exc).__name__}): "
                "check the kubeconfig's server and your network"
            ) from exc
        lines.append(f"{kind.lower()} {namespace}/{name} {verb}" + (" (dry run)" if dry_run else ""))
    return lines


def _default_api_client(rendered_at: str | None) -> Any:
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, OSError, TypeError) as exc:
            where = rendered_at or "the output of to_yaml()"
            raise K8sDeployError(
                "no Kubernetes cluster configured: set KUBECONFIG or run in-cluster; "
                f"the rendered manifests are in {where} (apply them with `kubectl apply -f`)"
            ) from exc
    return kubernetes.client.ApiClient()


def _api_error(exc: Any) -> str:
    """The API server's one-line message from an ApiException (its body is a Status object in JSON)."""
    import json

    message = exc.reason or ""
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        message = json.loads(exc.body).get("message", message)
    hint = {
        401: "refresh your credentials",
        403: "grant this identity create/patch on it (RBAC)",
        404: "is the namespace (or the KEDA CRD) installed?",
        422: "the server rejected the manifest: run validate_manifests for this Kubernetes version",
    }.get(exc.status, "")
    return " ".join(f"{exc.status} {message}".split()) + (f" ({hint})" if hint else "")


def _typed_api(client: Any, api_version: str) -> Any:
    """The generated API class for an apiVersion, found as kubernetes.utils does (`apps/v1` -> AppsV1Api)."""
    import kubernetes

    group, _, version = api_version.partition("/")
    if not version:
        group, version = "core", group
    group = "".join(group.rsplit(".k8s.io", 1))
    name = "".join(word.capitalize() for word in group.split(".")) + version.capitalize() + "Api"
    return getattr(kubernetes.client, name)(client)


def _snake(kind: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", kind).lower()


def _apply_builtin(client: Any, m: dict[str, Any], namespace: str, dry_run: bool) -> str:
    import kubernetes

    options: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
    try:
        kubernetes.utils.create_from_dict(client, m, namespace=namespace, **options)
        return "created"
    except kubernetes.utils.FailToCreateError as exc:
        others = [e for e in exc.api_exceptions if getattr(e, "status", None) != 409]
        if others:
            raise others[0] from exc
    patch = getattr(_typed_api(client, m["apiVersion"]), f"patch_namespaced_{_snake(m['kind'])}")
    patch(
        name=m["metadata"]["name"],
        namespace=namespace,
        body=m,
        field_manager=FIELD_MANAGER,
        _content_type="application/strategic-merge-patch+json",
        **options,
    )
    return "configured"


def _apply_custom(client: Any, m: dict[str, Any], namespace: str, dry_run: bool) -> str:
    import kubernetes

    group, _, version = m["apiVersion"].partition("/")
    plural = m["kind"].lower() + "s"
    api = kubernetes.client.CustomObjectsApi(client)
    options: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
    try:
        api.create_namespaced_custom_object(
            group, version, namespace, plural, m, field_manager=FIELD_MANAGER, **options
        )
        return "created"
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise
    api.patch_namespaced_custom_object(
        group,
        version,
        namespace,
        plural,
        m["metadata"]["name"],
        m,
        field_manager=FIELD_MANAGER,
        _content_type="application/merge-patch+json",
        **options,
    )
    return "configured"
