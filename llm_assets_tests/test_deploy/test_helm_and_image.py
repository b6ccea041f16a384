"""The production deployment, checked offline: Helm values, the k8s step executor, the container images.

No helm, docker or cluster is available here, so each artefact goes through the nearest real check:
- `deploy/helm/values.yaml` against the Dagster chart's own `values.schema.json` (vendored in fixtures/) with
  jsonschema, its remote Kubernetes `$ref`s resolved to kubernetes-validate's local definitions;
- the Kubernetes objects the values and the README's commands produce without helm (Secrets, ServiceAccount,
  the code location's ConfigMap) and the step Jobs of `deploy/k8s/executor.yaml`, built with dagster-k8s's
  own container-context merge and `construct_dagster_k8s_job`, through `validate_manifests` (strict schema);
- both Dockerfiles through a small parser and hadolint-style rules, each rule shown to fail on its defect.
"""

from __future__ import annotations

import base64
import copy
import importlib.metadata
import json
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import jsonschema
import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster_k8s import construct_dagster_k8s_job, k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    get_k8s_job_name,
    get_user_defined_k8s_config,
)
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7, DRAFT202012

from llm_assets.resources.lake import S3LakeResource
from llm_assets.serving.k8s_deploy import DEFAULT_KUBERNETES_VERSION, validate_manifests
from llm_assets.training.launch_specs import GPU_RESOURCE, K8sTrainerSettings, dagster_k8s_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VALUES = DEPLOY / "helm" / "values.yaml"
HELM_README = DEPLOY / "helm" / "README.md"
EXECUTOR = DEPLOY / "k8s" / "executor.yaml"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda"]
CHART_SCHEMA = Path(__file__).with_name("fixtures") / "dagster-helm-values.schema.json"
CHART_K8S_DEFINITIONS = "https://kubernetesjsonschema.dev/v1.18.0/_definitions.json"

# What the README installs: release and namespace, and the chart version (= the Dagster version).
RELEASE = NAMESPACE = "llm-assets"
CHART_VERSION = importlib.metadata.version("dagster")
FULLNAME = f"{RELEASE}-dagster"
USER_DEPLOYMENTS_FULLNAME = f"{RELEASE}-dagster-user-deployments"
GPU_RUN_TAG = "llm_assets/gpu"
SECRET_NAME = re.compile(r"(^|_)(API_?KEY|ADMIN_KEY|KEY|SECRET|TOKEN|PASSWORD|PASSWD|WEBHOOK_URL)(_|$)")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return _yaml(VALUES)


@pytest.fixture(scope="module")
def deployment(values: dict[str, Any]) -> dict[str, Any]:
    deployments = values["dagster-user-deployments"]["deployments"]
    assert len(deployments) == 1, "one code location: llm_assets.definitions"
    return deployments[0]


@pytest.fixture(scope="module")
def executor_config() -> dict[str, Any]:
    return _yaml(EXECUTOR)["execution"]["config"]


# ---------------------------------------------------------------- values.yaml against the chart's schema


def _k8s_definitions() -> dict[str, Any]:
    """kubernetes-validate's non-strict definitions, addressable the way the chart's `$ref`s point into them."""
    version = next(
        v
        for v in kubernetes_validate.utils.all_versions()
        if kubernetes_validate.utils.major_minor(v) == DEFAULT_KUBERNETES_VERSION
    )
    contents = dict(
        kubernetes_validate.utils.schema_contents(f"kubernetes-json-schema/v{version}-local/_definitions.json", version)
    )
    contents.pop("$id", None)
    contents.pop("$schema", None)
    contents["definitions"] = contents["$defs"]
    return contents


def _without_required(node: Any) -> Any:
    """The schema minus `required`: a values file is an overlay that helm merges over the chart's defaults."""
    if isinstance(node, dict):
        return {k: _without_required(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [_without_required(v) for v in node]
    return node


def _chart_schema() -> dict[str, Any]:
    return json.loads(CHART_SCHEMA.read_text(encoding="utf-8"))


def _chart_validator(validator_class: Any, schema: dict[str, Any]) -> Any:
    """Helm's schema check without the network; the draft follows the validator class (helm has used both)."""
    spec = DRAFT7 if validator_class is jsonschema.Draft7Validator else DRAFT202012
    registry: Registry = Registry().with_resource(CHART_K8S_DEFINITIONS, Resource(_k8s_definitions(), spec))
    return validator_class(schema, registry=registry)


def _schema_errors(values: dict[str, Any], validator_class: Any = jsonschema.Draft7Validator) -> list[str]:
    """Errors of the overlay against the chart schema, plus the list items (helm replaces lists, never merges
    them, so an item must be complete on its own)."""
    schema = _chart_schema()
    overlay = _chart_validator(validator_class, _without_required(schema))
    errors = [f"{e.json_path}: {e.message}" for e in overlay.iter_errors(values)]
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    items = [
        ("UserDeployment", "$.dagster-user-deployments.deployments", values["dagster-user-deployments"]["deployments"]),
        ("TagConcurrencyLimit", "$.dagsterDaemon...tagConcurrencyLimits", queued.get("tagConcurrencyLimits") or []),
    ]
    for definition, where, entries in items:
        item_schema = {"$ref": f"#/definitions/{definition}", "definitions": schema["definitions"]}
        item = _chart_validator(validator_class, item_schema)
        for index, entry in enumerate(entries):
            errors += [f"{where}[{index}]{e.json_path[1:]}: {e.message}" for e in item.iter_errors(entry)]
    return errors


@pytest.mark.parametrize("validator_class", [jsonschema.Draft7Validator, jsonschema.Draft202012Validator])
def test_values_match_the_chart_schema(values: dict[str, Any], validator_class: Any) -> None:
    assert _schema_errors(values, validator_class) == []


def test_values_use_only_keys_the_chart_knows(values: dict[str, Any], deployment: dict[str, Any]) -> None:
    """The schema leaves the top level and a deployment open; a misspelt key there would be ignored silently."""
    schema = _chart_schema()
    assert set(values) - set(schema["properties"]) == set()
    assert set(deployment) - set(schema["definitions"]["UserDeployment"]["properties"]) == set()


_DELETE = object()


def _set(tree: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    tree = copy.deepcopy(tree)
    *parents, last = path.split(".")
    node: Any = tree
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return tree


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("dagsterWebserver.readinesProbe", {"httpGet": {"port": 80}}, "Additional properties"),
        ("runLauncher.type", "K8sRunLaucher", "is not one of"),
        ("dagster-user-deployments.deployments.0.port", "4000", "is not of type 'integer'"),
        ("dagster-user-deployments.deployments.0.image", {"tag": "1"}, "'repository' is a required property"),
        ("dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits.0.limit", _DELETE, "'limit'"),
        ("dagster-user-deployments.deployments.0.nodeSelector", {"pool": 1}, "is not of type"),
        ("dagster-user-deployments.deployments.0.tolerations", [{"operator": ["Exists"]}], "is not of type"),
        ("computeLogManager.type", "S3LogManager", "is not one of"),
        ("computeLogManager.config.s3ComputeLogManager.uploadExtraArgs", "aws:kms", "not valid under any of"),
        ("computeLogManager.type", "S3ComputeLogManager", None),
    ],
)
def test_schema_check_catches_mistakes(values: dict[str, Any], path: str, value: Any, expected: str | None) -> None:
    """The check is live: typos, wrong types, enums, list items and the Kubernetes refs (nodeSelector values,
    tolerations, resolved offline) all fail; an unchanged value passes."""
    errors = _schema_errors(_set(values, path, value))
    if expected is None:
        assert errors == []
    else:
        assert any(expected in e for e in errors), errors


# ---------------------------------------------------------------- values.yaml: what the product needs


def test_code_location_loads_this_project(deployment: dict[str, Any]) -> None:
    workspace = _yaml(REPO / "workspace.yaml")["load_from"][0]["python_module"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    module = pyproject["tool"]["dg"]["project"]["code_location_target_module"]
    assert workspace["module_name"] == module
    assert deployment["dagsterApiGrpcArgs"] == ["-m", module]
    assert deployment["image"]["tag"] not in ("", "latest") and deployment["image"]["pullPolicy"] == "IfNotPresent"
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert deployment["readinessProbe"]["enabled"] and deployment["startupProbe"]["enabled"]


def test_environment_names_are_the_documented_ones_and_hold_no_secret(deployment: dict[str, Any]) -> None:
    documented = (DEPLOY / "README.md").read_text(encoding="utf-8")
    env = deployment["env"]
    assert {"LLM_ASSETS_LAKE", "LLM_ASSETS_S3_BUCKET", "LLM_ASSETS_S3_PREFIX", "LLM_ASSETS_S3_KMS_KEY_ID"} <= set(env)
    assert env["LLM_ASSETS_LAKE"] == "s3" and env["AWS_REGION"]
    assert [name for name in env if not re.search(rf"\b{name}\b", documented)] == []
    assert [name for name in env if SECRET_NAME.search(name.removesuffix("_KMS_KEY_ID"))] == []
    assert all(isinstance(v, str) for v in env.values()), "env values must be strings for the ConfigMap"


def test_instance_settings(values: dict[str, Any]) -> None:
    postgres = values["postgresql"]
    assert postgres["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert postgres["postgresqlHost"] and "postgresqlPassword" not in postgres
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] and daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    limits = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert [limit["key"] for limit in limits] == [GPU_RUN_TAG]
    webserver = values["dagsterWebserver"]
    assert webserver["readinessProbe"]["httpGet"]["port"] == webserver["service"]["port"]


def test_step_logs_are_written_like_the_lake(values: dict[str, Any], deployment: dict[str, Any]) -> None:
    """The lake bucket refuses unencrypted puts, so the compute logs carry the lake's KMS key."""
    logs = values["computeLogManager"]["config"]["s3ComputeLogManager"]
    env = deployment["env"]
    assert logs["bucket"] == env["LLM_ASSETS_S3_BUCKET"] and logs["prefix"].startswith(env["LLM_ASSETS_S3_PREFIX"])
    encryption = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": env["LLM_ASSETS_S3_KMS_KEY_ID"]}
    assert logs["uploadExtraArgs"] == encryption


def test_environment_builds_the_s3_lake_and_k8s_training(
    deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code location's env, read by the same functions definitions.py calls at import."""
    from llm_assets.definitions import lake_resource_from_env, training_compute_from_env

    for name, value in deployment["env"].items():
        monkeypatch.setenv(name, value)
    env = deployment["env"]
    lake = lake_resource_from_env()
    assert isinstance(lake, S3LakeResource) and lake.prefix == env["LLM_ASSETS_S3_PREFIX"]
    assert lake.region == env["AWS_REGION"] and lake.endpoint_url is None
    compute = training_compute_from_env()
    assert compute.backend == "k8s" and compute.k8s is not None and compute.staging is not None
    assert compute.k8s.image == env["LLM_ASSETS_TRAINER_IMAGE"] and compute.k8s.gpus == 1
    assert compute.k8s.namespace == NAMESPACE
    assert compute.k8s.service_account_name == env["LLM_ASSETS_TRAINER_SERVICE_ACCOUNT"]
    assert compute.staging.bucket == env["LLM_ASSETS_TRAINING_BUCKET"]
    assert compute.staging.kms_key_id == env["LLM_ASSETS_TRAINING_KMS_KEY_ID"]


def _chart_run_coordinator(values: dict[str, Any]) -> dict[str, Any]:
    """The run_coordinator section the chart writes into dagster.yaml (templates/helpers/instance)."""
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    return {
        "module": "dagster._core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {
            "max_concurrent_runs": queued["maxConcurrentRuns"],
            "tag_concurrency_limits": queued["tagConcurrencyLimits"],
        },
    }


def test_dagster_accepts_the_run_queue_and_refuses_pools_beside_it(values: dict[str, Any]) -> None:
    """Why the `gpu` pool limit is set with `dagster instance concurrency set` (README) and not in the values."""
    run_coordinator = _chart_run_coordinator(values)
    with dg.instance_for_test(overrides={"run_coordinator": run_coordinator}) as instance:
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        queue = instance.run_coordinator.get_run_queue_config()
        assert queue.max_concurrent_runs == 8
        assert queue.tag_concurrency_limits == [{"key": GPU_RUN_TAG, "limit": 2}]
    beside = {"run_coordinator": run_coordinator, "concurrency": {"pools": {"default_limit": 2}}}
    with (
        pytest.raises(dg.DagsterInvalidConfigError, match="incompatible with the `concurrency > runs`"),
        dg.instance_for_test(overrides=beside),
    ):
        pass


# ---------------------------------------------------------------- objects rendered without helm


def _chart_labels() -> dict[str, str]:
    return {
        "helm.sh/chart": f"dagster-{CHART_VERSION}",
        "app.kubernetes.io/name": "dagster",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/version": CHART_VERSION,
        "app.kubernetes.io/managed-by": "Helm",
    }


def _readme_commands(prefix: str) -> Iterator[list[str]]:
    """Shell commands of the README's code blocks that start with `prefix`, continuation lines joined."""
    text = HELM_README.read_text(encoding="utf-8")
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for command in re.sub(r"\\\n\s*", " ", block).splitlines():
            if command.strip().startswith(prefix):
                yield shlex.split(command.split(" # ")[0])


def _readme_exports() -> dict[str, str]:
    return dict(tokens[1].partition("=")[::2] for tokens in _readme_commands("export ") if "=" in tokens[1])


def _readme_service_accounts() -> list[dict[str, Any]]:
    """Service accounts the README creates with kubectl, with the annotations it then sets."""
    exports = _readme_exports()
    accounts = {
        tokens[3]: {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": tokens[3], "namespace": NAMESPACE, "annotations": {}},
        }
        for tokens in _readme_commands("kubectl create serviceaccount")
    }
    for tokens in _readme_commands("kubectl annotate serviceaccount"):
        for annotation in (t for t in tokens[4:] if "=" in t and not t.startswith("-")):
            key, _, value = annotation.partition("=")
            resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: exports[m.group(1)], value)
            accounts[tokens[3]]["metadata"]["annotations"][key] = resolved
    return list(accounts.values())


def _readme_secrets() -> list[dict[str, Any]]:
    """The Secrets the README's `kubectl create secret generic` commands create (values stand in for `$VAR`)."""
    secrets = []
    for tokens in _readme_commands("kubectl create secret generic"):
        literals = [t.removeprefix("--from-literal=") for t in tokens if t.startswith("--from-literal=")]
        data = {}
        for literal in literals:
            key, _, value = literal.partition("=")
            assert re.fullmatch(r"\$\{?[A-Z][A-Z0-9_]*\}?", value), f"{key}: read it from the environment"
            data[key] = base64.b64encode(b"value-from-the-environment").decode()
        namespace = tokens[tokens.index("--namespace") + 1]
        assert namespace == "$NAMESPACE"
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": tokens[4], "namespace": NAMESPACE},
                "type": "Opaque",
                "data": data,
            }
        )
    return secrets


def test_readme_secrets_are_the_ones_the_values_reference(values: dict[str, Any], deployment: dict[str, Any]) -> None:
    secrets = {s["metadata"]["name"]: set(s["data"]) for s in _readme_secrets()}
    assert secrets[values["global"]["postgresqlSecretName"]] == {"postgresql-password"}  # the chart's key
    app_secrets = [s["name"] for s in deployment["envSecrets"]]
    assert set(app_secrets) <= set(secrets)
    app_keys = set().union(*(secrets[name] for name in app_secrets))
    assert {"LLM_ASSETS_SERVE_API_KEY", "LLM_ASSETS_ALERT_WEBHOOK_URL"} <= app_keys
    documented = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert [key for key in app_keys if f"`{key}`" not in documented] == []
    assert app_keys.isdisjoint(deployment["env"])


def test_rendered_objects_are_valid_kubernetes(values: dict[str, Any], deployment: dict[str, Any]) -> None:
    """Secrets and the trainer's service account (README), the chart's service account and the code location's
    env ConfigMap (values), strictly; both service accounts carry an IAM role for IRSA."""
    account = values["serviceAccount"]
    assert account["create"] and account["name"] == values["global"]["serviceAccountName"]
    trainer_accounts = _readme_service_accounts()
    trainer = deployment["env"]["LLM_ASSETS_TRAINER_SERVICE_ACCOUNT"]
    assert [a["metadata"]["name"] for a in trainer_accounts] == [trainer]
    for irsa in (account["annotations"], trainer_accounts[0]["metadata"]["annotations"]):
        role = irsa["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+", role), role
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": account["name"],
            "namespace": NAMESPACE,
            "labels": _chart_labels(),
            "annotations": account["annotations"],
        },
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{USER_DEPLOYMENTS_FULLNAME}-{deployment['name']}-user-env", "namespace": NAMESPACE},
        "data": deployment["env"],
    }
    manifests = [*_readme_secrets(), service_account, *trainer_accounts, config_map]
    assert len(manifests) == 5
    assert validate_manifests(manifests) == []


def test_readme_installs_the_chart_of_the_pinned_dagster() -> None:
    text = HELM_README.read_text(encoding="utf-8")
    assert f"CHART_VERSION={CHART_VERSION}" in text
    assert any(t[:4] == ["helm", "repo", "add", "dagster"] for t in _readme_commands("helm repo add"))
    assert "https://dagster-io.github.io/helm" in text
    install = next(_readme_commands("helm upgrade --install"))
    assert install[install.index("--version") + 1] == "$CHART_VERSION"
    assert install[install.index("-f") + 1] == "deploy/helm/values.yaml"
    assert "dagster/dagster" in install


# ---------------------------------------------------------------- the k8s step executor


@pytest.fixture(scope="module")
def asset_ops() -> dict[str, dg.AssetsDefinition]:
    from llm_assets.definitions import defs

    return {ad.node_def.name: ad for ad in defs.resolve_asset_graph().assets_defs if ad.is_executable}


def test_executor_config_is_valid_for_k8s_job_executor() -> None:
    @dg.op
    def noop() -> None:
        return None

    @dg.job(executor_def=k8s_job_executor)
    def any_job() -> None:
        noop()

    assert dg.validate_run_config(any_job, _yaml(EXECUTOR))


def test_executor_covers_every_training_step(
    executor_config: dict[str, Any], asset_ops: dict[str, dg.AssetsDefinition]
) -> None:
    """Every step that trains (it uses training_compute, or sits in the `gpu` pool) has a GPU, and every
    configured step exists: a renamed asset cannot silently fall back to a CPU pod."""
    trains = {
        name
        for name, ad in asset_ops.items()
        if "training_compute" in ad.required_resource_keys or getattr(ad.node_def, "pool", None) == "gpu"
    }
    configured = set(executor_config["per_step_k8s_config"])
    assert trains and trains <= configured, sorted(trains - configured)
    assert configured <= set(asset_ops), sorted(configured - set(asset_ops))


def _contains(big: Any, small: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _contains(big[k], v) for k, v in small.items())
    return big == small


@pytest.mark.parametrize("step", sorted(_yaml(EXECUTOR)["execution"]["config"]["per_step_k8s_config"]))
def test_gpu_steps_match_the_trainer_settings(executor_config: dict[str, Any], step: str) -> None:
    """The per-step config is what our own builder (launch_specs) makes of the same trainer settings."""
    raw = executor_config["per_step_k8s_config"][step]
    container, pod = raw["container_config"], raw["pod_spec_config"]
    settings = K8sTrainerSettings(
        image=container["image"],
        image_pull_policy=container["image_pull_policy"],
        gpus=int(container["resources"]["limits"][GPU_RESOURCE]),
        cpu=container["resources"]["requests"]["cpu"],
        memory=container["resources"]["requests"]["memory"],
        node_selector=pod["node_selector"],
        tolerations=pod["tolerations"],
    )
    assert _contains(raw, dagster_k8s_config(settings))
    assert container["env"] == [{"name": "LLM_ASSETS_TRAINING_BACKEND", "value": "in_process"}]


def _chart_run_launcher_context(values: dict[str, Any]) -> K8sContainerContext:
    """The K8sRunLauncher as the chart configures it (templates/helpers/instance/_run-launcher.tpl)."""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    section_names = {
        "containerConfig": "container_config",
        "podSpecConfig": "pod_spec_config",
        "podTemplateSpecMetadata": "pod_template_spec_metadata",
        "jobSpecConfig": "job_spec_config",
        "jobMetadata": "job_metadata",
    }
    run_k8s_config = {section_names[k]: v for k, v in launcher.get("runK8sConfig", {}).items()}
    return K8sContainerContext(
        image_pull_policy=launcher["imagePullPolicy"],
        service_account_name=values["global"]["serviceAccountName"],
        labels=launcher.get("labels"),
        namespace=launcher.get("jobNamespace") or NAMESPACE,
        resources=launcher.get("resources"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(run_k8s_config),
    )


def _chart_code_location_context(values: dict[str, Any], deployment: dict[str, Any]) -> dict[str, Any]:
    """DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT, which the chart gives the code server and its runs inherit."""
    k8s: dict[str, Any] = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{USER_DEPLOYMENTS_FULLNAME}-{deployment['name']}-user-env"]
        + [c["name"] for c in deployment.get("envConfigMaps", [])],
        "env_secrets": [s["name"] for s in deployment.get("envSecrets", [])],
        "namespace": NAMESPACE,
        "service_account_name": values["global"]["serviceAccountName"],
    }
    if deployment.get("resources"):
        k8s["resources"] = deployment["resources"]
    return {"k8s": k8s}


def _step_job(
    values: dict[str, Any], deployment: dict[str, Any], executor_config: dict[str, Any], step: str, op_tags: Any
) -> dict[str, Any]:
    """The Kubernetes Job k8s_job_executor launches for `step`: K8sStepHandler's merge order (run launcher, code
    location, executor, op tags, per-step config) and dagster-k8s's own job builder."""
    executor_fields = ("image_pull_policy", "service_account_name", "env_config_maps", "env_secrets", "resources")
    executor_context = K8sContainerContext(
        **{k: executor_config[k] for k in executor_fields if k in executor_config},
        namespace=executor_config.get("job_namespace"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(executor_config.get("step_k8s_config", {})),
    )
    context = (
        _chart_run_launcher_context(values)
        .merge(K8sContainerContext.create_from_config(_chart_code_location_context(values, deployment)))
        .merge(executor_context)
        .merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags)))
        .merge(
            K8sContainerContext(
                run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
                    executor_config["per_step_k8s_config"].get(step, {})
                )
            )
        )
    )
    run_id = "0c6f2a9e-4d1b-4b8e-9a57-6a1f3c2d9e10"
    name = f"dagster-step-{get_k8s_job_name(run_id, step)}"
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(
            job_image=image,
            dagster_home=values["global"]["dagsterHome"],
            instance_config_map=f"{FULLNAME}-instance",
            postgres_password_secret=values["global"]["postgresqlSecretName"],
        ),
        args=["dagster", "api", "execute_step", "{}"],
        job_name=name,
        pod_name=name,
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": "lora_sft", "dagster/op": step, "dagster/run-id": run_id},
        env_vars=[
            {"name": "DAGSTER_RUN_JOB_NAME", "value": "lora_sft"},
            {"name": "DAGSTER_RUN_STEP_KEY", "value": step},
        ],
    )
    body = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    body.update(apiVersion="batch/v1", kind="Job")
    assert context.namespace == NAMESPACE
    return body


@pytest.mark.parametrize(
    "step", [*sorted(_yaml(EXECUTOR)["execution"]["config"]["per_step_k8s_config"]), "curated_corpus"]
)
def test_step_jobs_are_valid_and_gpu_steps_get_a_gpu(
    values: dict[str, Any],
    deployment: dict[str, Any],
    executor_config: dict[str, Any],
    asset_ops: dict[str, dg.AssetsDefinition],
    step: str,
) -> None:
    job = _step_job(values, deployment, executor_config, step, asset_ops[step].node_def.tags)
    assert validate_manifests([job]) == []
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["serviceAccountName"] == values["global"]["serviceAccountName"]
    env_from = [next(iter(source.values()))["name"] for source in container["envFrom"]]
    assert f"{USER_DEPLOYMENTS_FULLNAME}-llm-assets-user-env" in env_from and "llm-assets-secrets" in env_from
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DAGSTER_RUN_STEP_KEY"] == step and "DAGSTER_PG_PASSWORD" in env
    if step in executor_config["per_step_k8s_config"]:
        assert container["resources"] == {
            "requests": {"cpu": "6", "memory": "24Gi"},
            "limits": {"memory": "24Gi", GPU_RESOURCE: "1"},
        }
        assert container["image"] == deployment["env"]["LLM_ASSETS_TRAINER_IMAGE"]
        assert env["LLM_ASSETS_TRAINING_BACKEND"] == "in_process"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    else:
        assert GPU_RESOURCE not in container["resources"].get("limits", {})
        assert container["resources"] == deployment["resources"]
        assert container["image"].endswith(f"/llm-assets:{deployment['image']['tag']}")
        assert "nodeSelector" not in pod and "LLM_ASSETS_TRAINING_BACKEND" not in env


def test_trainer_image_is_built_from_the_same_commit(deployment: dict[str, Any]) -> None:
    trainer = deployment["env"]["LLM_ASSETS_TRAINER_IMAGE"]
    assert trainer.rsplit(":", 1) == [
        deployment["image"]["repository"].replace("/llm-assets", "/llm-assets-trainer"),
        deployment["image"]["tag"],
    ]


# ---------------------------------------------------------------- Dockerfiles


class DockerfileError(ValueError):
    """A Dockerfile the parser cannot read; the message names the line."""


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        if not self.args.startswith("["):
            return None
        try:
            parsed = json.loads(self.args)
        except ValueError:
            return None
        return parsed if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed) else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their first line, continuation lines joined and comments dropped (no heredocs)."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number
        if "<<" in stripped and stripped.split()[0].upper() in ("RUN", "COPY"):
            raise DockerfileError(f"line {number}: heredocs are not supported by this checker")
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        keyword, _, args = " ".join(parts).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        parts = []
    if parts:
        raise DockerfileError(f"line {start}: the last instruction ends with a line continuation")
    return instructions


def _final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :] if starts else []


def _shell_commands(instruction: Instruction) -> list[list[str]]:
    """A RUN's commands, split at `&&`, `||`, `;` and `|`, each as tokens."""
    exec_form = instruction.exec_form()
    if exec_form is not None:
        return [exec_form]
    commands = re.split(r"&&|\|\||;|\|", instruction.args)
    return [shlex.split(c, posix=True) for c in commands if c.strip()]


def _is_pip_install(tokens: list[str]) -> bool:
    names = [t.rsplit("/", 1)[-1] for t in tokens]
    for index, name in enumerate(names):
        if re.fullmatch(r"pip3?(\.\d+)?", name) and "install" in names[index + 1 : index + 2]:
            return True
        if re.fullmatch(r"python3?(\.\d+)?", name) and names[index + 1 : index + 4] == ["-m", "pip", "install"]:
            return True
    return False


def rule_from_pinned(instructions: list[Instruction]) -> list[str]:
    """FROM names a tag other than `latest`, or a digest (ARG defaults declared before FROM are resolved)."""
    global_args: dict[str, str] = {}
    stages: set[str] = set()
    problems = []
    for ins in instructions:
        if ins.keyword == "ARG" and not stages and "=" in ins.args:
            name, _, default = ins.args.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
        if ins.keyword != "FROM":
            continue
        words = [w for w in ins.args.split() if not w.startswith("--")]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
        if image.lower() in stages or image == "scratch":
            continue
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if "$" in image:
            problems.append(f"line {ins.line}: FROM {image}: unresolved variable")
        elif "@sha256:" not in image and tag in ("", "latest"):
            problems.append(f"line {ins.line}: FROM {image}: pin a version tag or a digest, not latest")
        stages.add(image.lower())
    return problems


def rule_non_root_user(instructions: list[Instruction]) -> list[str]:
    """The final stage's last USER (the one the container runs as) is set, and is neither root nor uid 0."""
    users = [ins for ins in _final_stage(instructions) if ins.keyword == "USER"]
    if not users:
        return ["no USER in the final stage: the container would run as root"]
    if users[-1].args.split(":")[0].strip() in ("root", "0"):
        return [f"line {users[-1].line}: the container runs as root; USER <uid> instead"]
    return []


def rule_pip_no_cache(instructions: list[Instruction]) -> list[str]:
    return [
        f"line {ins.line}: pip install without --no-cache-dir"
        for ins in instructions
        if ins.keyword == "RUN"
        for tokens in _shell_commands(ins)
        if _is_pip_install(tokens) and "--no-cache-dir" not in tokens
    ]


def rule_no_add_url(instructions: list[Instruction]) -> list[str]:
    problems = []
    for ins in instructions:
        if ins.keyword == "ADD":
            sources = [w for w in (ins.exec_form() or shlex.split(ins.args)) if not w.startswith("--")][:-1]
            if any(re.match(r"(https?|ftp)://|git@", s) for s in sources):
                problems.append(f"line {ins.line}: ADD of a URL; download in a RUN with a checksum, or COPY")
    return problems


def rule_no_secrets(instructions: list[Instruction]) -> list[str]:
    """No ENV or ARG whose name says key/secret/token/password carries a value: it would stay in the image."""
    problems = []
    for ins in instructions:
        if ins.keyword not in ("ENV", "ARG"):
            continue
        if "=" in ins.args:
            pairs = [token.partition("=") for token in shlex.split(ins.args)]
            assignments = [(name, value) for name, _, value in pairs]
        else:
            name, _, value = ins.args.partition(" ")
            assignments = [(name, value.strip())]
        problems += [
            f"line {ins.line}: {ins.keyword} {name} holds a secret; pass it at run time"
            for name, value in assignments
            if value and SECRET_NAME.search(name.upper())
        ]
    return problems


def rule_apt_hygiene(instructions: list[Instruction]) -> list[str]:
    problems = []
    for ins in instructions:
        if ins.keyword != "RUN":
            continue
        installs = [t for t in _shell_commands(ins) if t[:2] in (["apt-get", "install"], ["apt", "install"])]
        if any("--no-install-recommends" not in t for t in installs):
            problems.append(f"line {ins.line}: apt-get install without --no-install-recommends")
        if installs and "rm -rf /var/lib/apt/lists" not in ins.args:
            problems.append(f"line {ins.line}: apt lists not removed (rm -rf /var/lib/apt/lists/*) in the same RUN")
    return problems


def rule_copies_project(instructions: list[Instruction]) -> list[str]:
    """pyproject.toml and the package are copied, then installed with pip."""
    copied: set[str] = set()
    for ins in instructions:
        if ins.keyword == "COPY" and not ins.args.startswith("--from"):
            words = [w for w in (ins.exec_form() or shlex.split(ins.args)) if not w.startswith("--")]
            copied |= {w.rstrip("/") for w in words[:-1]}
        if ins.keyword == "RUN" and any(_is_pip_install(t) and "." in t for t in _shell_commands(ins)):
            missing = [f for f in ("pyproject.toml", "llm_assets") if f not in copied and "." not in copied]
            return [f"line {ins.line}: pip install . before COPY of {', '.join(missing)}"] if missing else []
    return ["no `pip install .` of the project"]


def rule_expose_code_server(instructions: list[Instruction]) -> list[str]:
    ports = {p.split("/")[0] for ins in instructions if ins.keyword == "EXPOSE" for p in ins.args.split()}
    return [] if "4000" in ports else ["EXPOSE 4000 (the code server's port) is missing"]


def rule_entrypoint_passes_args(instructions: list[Instruction]) -> list[str]:
    """The chart and the run launcher set the container's args only, so an ENTRYPOINT must hand them on."""
    entrypoints = [ins for ins in _final_stage(instructions) if ins.keyword == "ENTRYPOINT"]
    if not entrypoints:
        return []
    last = entrypoints[-1]
    exec_form = last.exec_form()
    if exec_form and exec_form[0].rsplit("/", 1)[-1] in ("tini", "dumb-init") and exec_form[-1] == "--":
        return []
    return [f"line {last.line}: ENTRYPOINT must be an init that passes its arguments on, e.g. tini --"]


RULES: dict[str, Callable[[list[Instruction]], list[str]]] = {
    "from-pinned": rule_from_pinned,
    "non-root-user": rule_non_root_user,
    "pip-no-cache": rule_pip_no_cache,
    "no-add-url": rule_no_add_url,
    "no-secrets": rule_no_secrets,
    "apt-hygiene": rule_apt_hygiene,
    "copies-project": rule_copies_project,
    "expose-code-server": rule_expose_code_server,
    "entrypoint-passes-args": rule_entrypoint_passes_args,
}


def check_dockerfile(text: str) -> dict[str, list[str]]:
    """Problems by rule; empty when the Dockerfile passes every rule."""
    instructions = parse_dockerfile(text)
    return {name: problems for name, rule in RULES.items() if (problems := rule(instructions))}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_the_rules(path: Path) -> None:
    assert check_dockerfile(path.read_text(encoding="utf-8")) == {}


GOOD_DOCKERFILE = """\
FROM python:3.11.13-slim-bookworm
RUN apt-get update \\
    && apt-get install -y --no-install-recommends tini \\
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY llm_assets ./llm_assets
RUN pip install --no-cache-dir .
USER 10001:10001
EXPOSE 4000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["dagster", "code-server", "start", "-p", "4000", "-m", "llm_assets.definitions"]
"""


@pytest.mark.parametrize(
    ("rule", "old", "new"),
    [
        ("from-pinned", "python:3.11.13-slim-bookworm", "python:latest"),
        ("from-pinned", "python:3.11.13-slim-bookworm", "python"),
        ("from-pinned", "FROM python:3.11.13-slim-bookworm", "ARG BASE=python:latest\nFROM ${BASE}"),
        ("non-root-user", "USER 10001:10001", "USER root"),
        ("non-root-user", "USER 10001:10001", "USER 0:0"),
        ("non-root-user", "USER 10001:10001\n", ""),
        ("non-root-user", "USER 10001:10001", "USER 10001:10001\nUSER root"),
        ("pip-no-cache", "pip install --no-cache-dir .", "pip install ."),
        ("pip-no-cache", "pip install --no-cache-dir .", "pip install --no-cache-dir . && python -m pip install x"),
        ("no-add-url", "WORKDIR /app", "WORKDIR /app\nADD https://example.com/model.bin /opt/model.bin"),
        ("no-secrets", "WORKDIR /app", "WORKDIR /app\nENV HF_TOKEN=hf_abc123"),
        ("no-secrets", "WORKDIR /app", "WORKDIR /app\nARG AWS_SECRET_ACCESS_KEY=abc"),
        ("no-secrets", "WORKDIR /app", "WORKDIR /app\nENV LLM_ASSETS_SERVE_API_KEY sk-live-1"),
        ("apt-hygiene", "--no-install-recommends ", ""),
        ("apt-hygiene", " \\\n    && rm -rf /var/lib/apt/lists/*", ""),
        ("copies-project", "COPY pyproject.toml README.md ./", "COPY README.md ./"),
        ("copies-project", "COPY llm_assets ./llm_assets\n", ""),
        ("copies-project", "RUN pip install --no-cache-dir .", "RUN pip install --no-cache-dir llm_assets==0.1.0"),
        ("expose-code-server", "EXPOSE 4000", "EXPOSE 8080"),
        ("entrypoint-passes-args", '["/usr/bin/tini", "--"]', '["dagster", "code-server", "start"]'),
        ("entrypoint-passes-args", 'ENTRYPOINT ["/usr/bin/tini", "--"]', "ENTRYPOINT dagster api grpc"),
    ],
)
def test_each_rule_fails_on_its_defect(rule: str, old: str, new: str) -> None:
    assert check_dockerfile(GOOD_DOCKERFILE) == {}
    assert old in GOOD_DOCKERFILE
    problems = check_dockerfile(GOOD_DOCKERFILE.replace(old, new, 1))
    assert set(problems) == {rule}, problems


@pytest.mark.parametrize(
    "extra",
    ["ARG HF_TOKEN", "ENV PIP_NO_CACHE_DIR=1", "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"],
)
def test_rules_allow_what_is_harmless(extra: str) -> None:
    """A build argument without a default is not a secret in the image; unrelated names are not secrets."""
    assert check_dockerfile(GOOD_DOCKERFILE.replace("WORKDIR /app", f"WORKDIR /app\n{extra}")) == {}


def test_parser_refuses_what_it_cannot_read() -> None:
    with pytest.raises(DockerfileError, match="line 2: the last instruction ends with a line continuation"):
        parse_dockerfile("FROM python:3.11.13-slim\nRUN true \\\n")
    with pytest.raises(DockerfileError, match="heredocs"):
        parse_dockerfile("FROM python:3.11.13-slim\nRUN <<EOF\ntrue\nEOF\n")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_images_match_the_chart_and_the_project(path: Path, values: dict[str, Any], deployment: dict[str, Any]) -> None:
    """Port, module, DAGSTER_HOME, user id and the torch pin agree across Dockerfile, values and pyproject."""
    instructions = parse_dockerfile(path.read_text(encoding="utf-8"))
    by_keyword: dict[str, list[Instruction]] = {}
    for ins in instructions:
        by_keyword.setdefault(ins.keyword, []).append(ins)
    cmd = by_keyword["CMD"][-1].exec_form()
    assert cmd is not None and cmd[:3] == ["dagster", "code-server", "start"]
    assert cmd[cmd.index("-p") + 1] == str(deployment["port"]) == by_keyword["EXPOSE"][0].args
    assert cmd[cmd.index("-m") + 1] == deployment["dagsterApiGrpcArgs"][1]
    assert f'"-p", "{deployment["port"]}"' in by_keyword["HEALTHCHECK"][0].args
    env = dict(t.partition("=")[::2] for ins in by_keyword["ENV"] for t in shlex.split(ins.args))
    assert env["DAGSTER_HOME"] == values["global"]["dagsterHome"]
    security = deployment["podSecurityContext"]
    assert by_keyword["USER"][-1].args == f"{security['runAsUser']}:{security['runAsGroup']}"
    args = dict(ins.args.partition("=")[::2] for ins in by_keyword["ARG"])
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert f"torch=={args['TORCH_VERSION']}" == torch_pin


def test_the_k8s_step_executor_is_chosen_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_assets.definitions import build_definitions

    monkeypatch.setenv("LLM_ASSETS_EXECUTOR", "k8s")
    assert build_definitions().resolve_job_def("lora_sft").executor_def.name == "k8s"
    monkeypatch.setenv("LLM_ASSETS_EXECUTOR", "default")
    assert build_definitions().resolve_job_def("lora_sft").executor_def.name != "k8s"
    monkeypatch.setenv("LLM_ASSETS_EXECUTOR", "celery")
    with pytest.raises(ValueError, match="use 'default' or 'k8s'"):
        build_definitions()
