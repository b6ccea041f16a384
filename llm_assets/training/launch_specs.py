"""Launch specs for the trainer on Kubernetes and SageMaker: pure builders, no Dagster, no network.

The trainer is the same script everywhere (`python -m llm_assets.training.trainer --pipes`); what differs is
the pod body or the `CreateTrainingJob` request around it. Building those here, from small validated models,
lets the tests check them offline (kubernetes-validate, botocore's request model) and keeps the resource thin.

Op tags that override the Kubernetes settings per asset (values are strings; Dagster JSON-encodes
non-string `op_tags` values):
  `llm_assets/gpu`            number of `nvidia.com/gpu` to request as a limit, e.g. "2"
  `llm_assets/node_selector`  JSON object merged over the resource's node selector
  `llm_assets/tolerations`    JSON list of Kubernetes tolerations appended to the resource's
  `dagster-k8s/config`        dagster-k8s's own shape (`container_config`, `pod_spec_config`,
                              `pod_template_spec_metadata`), deep-merged last, as dagster-k8s's launcher does
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

if TYPE_CHECKING:
    from dagster_pipes import PipesContext

TAG_GPU = "llm_assets/gpu"
TAG_NODE_SELECTOR = "llm_assets/node_selector"
TAG_TOLERATIONS = "llm_assets/tolerations"
TAG_DAGSTER_K8S_CONFIG = "dagster-k8s/config"

TRAINER_CONTAINER = "trainer"
GPU_RESOURCE = "nvidia.com/gpu"

# Where SageMaker puts things inside the training container. The request sets these SM_* variables itself,
# so any image (with or without the sagemaker-training toolkit) sees the same names the trainer spec uses.
SAGEMAKER_ROOT = "/opt/ml"
SAGEMAKER_MODEL_DIR = f"{SAGEMAKER_ROOT}/model"
SAGEMAKER_CHECKPOINT_DIR = f"{SAGEMAKER_ROOT}/checkpoints"
SAGEMAKER_INPUT_DIR = f"{SAGEMAKER_ROOT}/input/data"
SAGEMAKER_OUTPUT_DATA_DIR = f"{SAGEMAKER_ROOT}/output/data"
SAGEMAKER_MAX_RUN_S = 28 * 24 * 3600
SAGEMAKER_MAX_ENV = 100
SAGEMAKER_MAX_ENV_VALUE = 512

_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-/]+$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds", "toleration_seconds"}
_EFFECTS = {"", "NoSchedule", "PreferNoSchedule", "NoExecute"}


class LaunchSpecError(ValueError):
    """A launch spec that cannot be built; the message is one line naming the setting and the fix."""


# ---------------------------------------------------------------- Kubernetes


def _toleration(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One toleration in dagster-k8s's snake_case form, checked the way the API server would."""
    unknown = set(raw) - _TOLERATION_KEYS
    if unknown:
        raise LaunchSpecError(f"{where}: unknown toleration field(s) {sorted(unknown)}; use {sorted(_TOLERATION_KEYS)}")
    operator = str(raw.get("operator", "Equal"))
    if operator not in ("Equal", "Exists"):
        raise LaunchSpecError(f"{where}: toleration operator {operator!r} must be Equal or Exists")
    if operator == "Exists" and raw.get("value"):
        raise LaunchSpecError(f"{where}: toleration with operator Exists must not set a value")
    if operator == "Equal" and not raw.get("key"):
        raise LaunchSpecError(f"{where}: toleration with operator Equal needs a key")
    effect = str(raw.get("effect", ""))
    if effect not in _EFFECTS:
        raise LaunchSpecError(f"{where}: toleration effect {effect!r} must be one of {sorted(_EFFECTS - {''})}")
    out: dict[str, Any] = {"operator": operator}
    if raw.get("key"):
        out["key"] = str(raw["key"])
    if raw.get("value"):
        out["value"] = str(raw["value"])
    if effect:
        out["effect"] = effect
    seconds = raw.get("tolerationSeconds", raw.get("toleration_seconds"))
    if seconds not in (None, ""):
        if effect != "NoExecute":
            raise LaunchSpecError(f"{where}: tolerationSeconds only applies with effect NoExecute")
        try:
            out["toleration_seconds"] = int(str(seconds))
        except ValueError:
            raise LaunchSpecError(f"{where}: tolerationSeconds {seconds!r} is not a whole number") from None
    return out


class K8sTrainerSettings(BaseModel):
    """Where and how the trainer pod runs; op tags may override gpus, node selector and tolerations per asset.

    Field types stay within what Dagster config accepts (primitives, lists, string dicts), so the resource's
    config class can inherit this model instead of repeating it.
    """

    image: str = Field(min_length=1, description="Trainer image; it must have llm_assets installed.")
    namespace: str = Field(default="default", description="Namespace the pod runs in.")
    service_account_name: str | None = Field(
        default=None, description="Service account (IRSA / workload identity) that grants the pod S3 access."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    gpus: int = Field(default=0, ge=0, le=64, description="nvidia.com/gpu limit; tag llm_assets/gpu overrides.")
    cpu: str = Field(default="4", description="CPU request (Kubernetes quantity).")
    memory: str = Field(default="32Gi", description="Memory request and limit (Kubernetes quantity).")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, str]] = Field(
        default_factory=list,
        description='Kubernetes tolerations, e.g. {"key": "nvidia.com/gpu", "operator": "Exists"}.',
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"namespace {value!r} is not a DNS label (lowercase letters, digits, '-')")
        return value

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not _QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity such as 4, 500m or 32Gi")
        return value

    @field_validator("tolerations")
    @classmethod
    def _tolerations(cls, value: list[dict[str, str]]) -> list[dict[str, str]]:
        for index, raw in enumerate(value):
            _toleration(raw, f"tolerations[{index}]")
        return value


def _json_tag(tags: Mapping[str, Any], name: str) -> Any:
    raw = tags[name]
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise LaunchSpecError(f"op tag {name}: not valid JSON ({exc})") from None


def apply_op_tags(settings: K8sTrainerSettings, tags: Mapping[str, Any]) -> K8sTrainerSettings:
    """The settings with the `llm_assets/*` op tags applied (gpu replaces, node selector merges, tolerations add)."""
    update: dict[str, Any] = {}
    if TAG_GPU in tags:
        try:
            gpus = int(str(tags[TAG_GPU]))
        except ValueError:
            raise LaunchSpecError(f"op tag {TAG_GPU}: {tags[TAG_GPU]!r} is not a whole number of GPUs") from None
        if gpus < 0:
            raise LaunchSpecError(f"op tag {TAG_GPU}: {gpus} GPUs; use 0 or more")
        update["gpus"] = gpus
    if TAG_NODE_SELECTOR in tags:
        selector = _json_tag(tags, TAG_NODE_SELECTOR)
        if not isinstance(selector, dict) or not all(isinstance(v, str) for v in selector.values()):
            raise LaunchSpecError(f'op tag {TAG_NODE_SELECTOR}: give a JSON object of strings, e.g. {{"pool": "gpu"}}')
        update["node_selector"] = {**settings.node_selector, **selector}
    if TAG_TOLERATIONS in tags:
        tolerations = _json_tag(tags, TAG_TOLERATIONS)
        if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
            raise LaunchSpecError(f"op tag {TAG_TOLERATIONS}: give a JSON list of toleration objects")
        for index, raw in enumerate(tolerations):
            _toleration(raw, f"op tag {TAG_TOLERATIONS}[{index}]")
        as_strings = [{k: str(v) for k, v in t.items()} for t in tolerations]
        update["tolerations"] = [*settings.tolerations, *as_strings]
    return settings.model_copy(update=update) if update else settings


def dagster_k8s_config(settings: K8sTrainerSettings) -> dict[str, Any]:
    """The settings in dagster-k8s's `dagster-k8s/config` shape, usable as op tags for its launcher/executor too."""
    limits: dict[str, str] = {"memory": settings.memory}
    if settings.gpus:
        limits[GPU_RESOURCE] = str(settings.gpus)
    pod_spec: dict[str, Any] = {}
    if settings.service_account_name:
        pod_spec["service_account_name"] = settings.service_account_name
    if settings.node_selector:
        pod_spec["node_selector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [_toleration(t, "tolerations") for t in settings.tolerations]
    config: dict[str, Any] = {
        "container_config": {
            "image": settings.image,
            "image_pull_policy": settings.image_pull_policy,
            "resources": {"requests": {"cpu": settings.cpu, "memory": settings.memory}, "limits": limits},
        },
        "pod_spec_config": pod_spec,
    }
    if settings.labels:
        config["pod_template_spec_metadata"] = {"labels": dict(settings.labels)}
    return config


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def _snake_keys(section: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level camelCase keys to dagster-k8s's snake_case, so a tag and our spec never both set one field."""
    out = {_snake(k): v for k, v in section.items()}
    if "tolerations" in out:
        out["tolerations"] = [_toleration(t, f"{TAG_DAGSTER_K8S_CONFIG} tolerations") for t in out["tolerations"]]
    return out


def _deep_merge(base: Any, override: Any) -> Any:
    """dagster-k8s's DEEP merge: dicts merge key by key, lists append new items, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return [*base, *(item for item in override if item not in base)]
    return override


@dataclass(frozen=True)
class K8sTrainerLaunch:
    """What `PipesK8sClient.run` needs for the trainer pod; `pipes_kwargs()` passes it on as keyword arguments."""

    namespace: str
    base_pod_meta: dict[str, Any]
    base_pod_spec: dict[str, Any]

    def pipes_kwargs(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "base_pod_meta": self.base_pod_meta, "base_pod_spec": self.base_pod_spec}


def k8s_trainer_launch(
    settings: K8sTrainerSettings,
    *,
    command: Sequence[str],
    env: Mapping[str, str],
    tags: Mapping[str, Any] | None = None,
) -> K8sTrainerLaunch:
    """The trainer pod's metadata and spec (snake_case, as dagster-k8s takes them) with op tags applied."""
    if not command:
        raise LaunchSpecError("trainer command is empty; give e.g. python -m llm_assets.training.trainer --pipes")
    tags = tags or {}
    config = dagster_k8s_config(apply_op_tags(settings, tags))
    if TAG_DAGSTER_K8S_CONFIG in tags:
        raw = _json_tag(tags, TAG_DAGSTER_K8S_CONFIG)
        if not isinstance(raw, dict):
            raise LaunchSpecError(f"op tag {TAG_DAGSTER_K8S_CONFIG}: give a JSON object")
        for section in ("container_config", "pod_spec_config", "pod_template_spec_metadata"):
            if isinstance(raw.get(section), dict):
                config[section] = _deep_merge(config.get(section, {}), _snake_keys(raw[section]))
    container = {
        "name": TRAINER_CONTAINER,
        **config["container_config"],
        "command": list(command),
        "env": [{"name": name, "value": value} for name, value in sorted(env.items())],
    }
    spec = {**config["pod_spec_config"], "restart_policy": "Never", "containers": [container]}
    meta = dict(config.get("pod_template_spec_metadata", {}))
    meta["labels"] = {"app.kubernetes.io/name": "llm-assets-trainer", **meta.get("labels", {})}
    return K8sTrainerLaunch(namespace=settings.namespace, base_pod_meta=meta, base_pod_spec=spec)


# ---------------------------------------------------------------- SageMaker


class SageMakerTrainingSettings(BaseModel):
    """A SageMaker training job for the trainer: instances, spot, VPC and KMS; inputs and outputs come per run."""

    role_arn: str = Field(description="Execution role SageMaker assumes (S3, KMS, ECR, CloudWatch).")
    image_uri: str = Field(min_length=1, description="Trainer image in ECR; it must have llm_assets installed.")
    instance_type: str = Field(default="ml.g5.2xlarge", pattern=r"^ml\.[a-z0-9\-]+\.[a-z0-9]+$")
    instance_count: int = Field(default=1, ge=1, le=100)
    volume_size_gb: int = Field(default=100, ge=1, le=16_384)
    kms_key_id: str = Field(min_length=1, description="KMS key for model artifacts written to S3.")
    volume_kms_key_id: str | None = Field(default=None, description="KMS key for the ML volume (default: kms_key_id).")
    max_run_s: int = Field(default=86_400, ge=1, le=SAGEMAKER_MAX_RUN_S)
    use_spot: bool = Field(default=False, description="Managed spot training; needs max_wait_s >= max_run_s.")
    max_wait_s: int | None = Field(default=None, ge=1, le=2 * SAGEMAKER_MAX_RUN_S)
    subnets: list[str] = Field(default_factory=list, description="Private subnet ids; empty: no VPC.")
    security_group_ids: list[str] = Field(default_factory=list)
    enable_network_isolation: bool = Field(
        default=False, description="Must stay off: the trainer reaches S3 itself for Pipes messages and checkpoints."
    )
    inter_container_encryption: bool = Field(default=True, description="Encrypt traffic between training nodes.")
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> SageMakerTrainingSettings:
        check_sagemaker_settings(self)
        return self


def check_sagemaker_settings(settings: SageMakerTrainingSettings) -> None:
    """Raises LaunchSpecError for settings SageMaker would refuse or that would break the Pipes transport."""
    if not _ROLE_ARN.match(settings.role_arn):
        raise LaunchSpecError(
            f"role_arn {settings.role_arn!r} is not an IAM role ARN (arn:aws:iam::123456789012:role/x)"
        )
    if not settings.kms_key_id.strip():
        raise LaunchSpecError("kms_key_id is empty; training artifacts are always written with a KMS key")
    if settings.use_spot and settings.max_wait_s is None:
        raise LaunchSpecError("use_spot needs max_wait_s (>= max_run_s): how long to wait for spot capacity in total")
    if settings.use_spot and settings.max_wait_s is not None and settings.max_wait_s < settings.max_run_s:
        raise LaunchSpecError(
            f"use_spot needs max_wait_s >= max_run_s ({settings.max_wait_s} < {settings.max_run_s}); raise max_wait_s"
        )
    if not settings.use_spot and settings.max_wait_s is not None:
        raise LaunchSpecError("max_wait_s only applies to spot training; set use_spot or drop max_wait_s")
    if settings.security_group_ids and not settings.subnets:
        raise LaunchSpecError("security_group_ids are set but subnets is empty; give at least one private subnet id")
    if settings.subnets and not settings.security_group_ids:
        raise LaunchSpecError("subnets are set but security_group_ids is empty; give at least one security group id")
    if len(settings.subnets) > 16 or len(settings.security_group_ids) > 5:
        raise LaunchSpecError("SageMaker takes at most 16 subnets and 5 security groups; trim the VPC config")
    if bad := [s for s in settings.subnets if not s.startswith("subnet-")]:
        raise LaunchSpecError(f"subnets {bad} are not subnet ids (subnet-...)")
    if bad := [g for g in settings.security_group_ids if not g.startswith("sg-")]:
        raise LaunchSpecError(f"security_group_ids {bad} are not security group ids (sg-...)")
    if settings.enable_network_isolation:
        raise LaunchSpecError(
            "enable_network_isolation blocks the trainer's own S3 access (Pipes context, messages); turn it off "
            "and keep the job in private subnets instead"
        )


def check_job_name(job_name: str) -> str:
    """SageMaker's rule for training job names (also a valid Kubernetes label value)."""
    if not _JOB_NAME.match(job_name):
        raise LaunchSpecError(
            f"job name {job_name!r}: use 1-63 letters, digits and '-', starting with a letter or digit"
        )
    return job_name


def check_channel_names(names: Sequence[str]) -> None:
    """Channel names become SM_CHANNEL_<NAME> environment variables, so they must be identifier-safe."""
    if not names:
        raise LaunchSpecError("no input channels; give at least the model and data folders")
    if bad := [n for n in names if not _CHANNEL_NAME.match(n)]:
        raise LaunchSpecError(f"channel names {bad}: use letters, digits and '_' (they become SM_CHANNEL_<NAME>)")


def channel_env_var(name: str) -> str:
    return f"SM_CHANNEL_{name.upper()}"


def sagemaker_container_env(channel_names: Sequence[str]) -> dict[str, str]:
    """The SM_* variables the container gets; the trainer spec refers to them rather than to /opt/ml paths."""
    env = {
        "SM_MODEL_DIR": SAGEMAKER_MODEL_DIR,
        "SM_CHECKPOINT_DIR": SAGEMAKER_CHECKPOINT_DIR,
        "SM_OUTPUT_DATA_DIR": SAGEMAKER_OUTPUT_DATA_DIR,
        "SM_CHANNELS": json.dumps(sorted(channel_names)),
    }
    env.update({channel_env_var(name): f"{SAGEMAKER_INPUT_DIR}/{name}" for name in channel_names})
    return env


def sagemaker_trainer_spec(spec: Mapping[str, Any], channel_names: Sequence[str]) -> dict[str, Any]:
    """The trainer spec as the container sees it: paths are SM_* variables the trainer expands."""
    return {
        **spec,
        "channels": {name: f"${channel_env_var(name)}" for name in channel_names},
        "output_dir": "$SM_MODEL_DIR",
        "checkpoint_dir": "$SM_CHECKPOINT_DIR",
    }


def sagemaker_training_request(
    settings: SageMakerTrainingSettings,
    *,
    job_name: str,
    command: Sequence[str],
    input_channels: Mapping[str, str],
    output_s3_uri: str,
    checkpoint_s3_uri: str,
    environment: Mapping[str, str],
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The `CreateTrainingJob` request: the trainer command as entrypoint, S3 channels, KMS, spot, VPC, SM_* env.

    `environment` carries the Dagster Pipes bootstrap variables; SageMaker limits it to 100 entries of 512
    characters, which is why the Pipes context itself travels through S3.
    """
    check_job_name(job_name)
    check_channel_names(list(input_channels))
    if not command:
        raise LaunchSpecError("trainer command is empty; give e.g. python -m llm_assets.training.trainer --pipes")
    for uri in (output_s3_uri, checkpoint_s3_uri, *input_channels.values()):
        if not uri.startswith("s3://"):
            raise LaunchSpecError(f"{uri!r} is not an s3:// URI; SageMaker reads and writes S3 only")
    env = {**sagemaker_container_env(list(input_channels)), **environment}
    if len(env) > SAGEMAKER_MAX_ENV:
        raise LaunchSpecError(f"{len(env)} environment variables; SageMaker takes at most {SAGEMAKER_MAX_ENV}")
    if long := sorted(k for k, v in env.items() if len(v) > SAGEMAKER_MAX_ENV_VALUE):
        raise LaunchSpecError(f"environment {long}: values over {SAGEMAKER_MAX_ENV_VALUE} characters; pass them via S3")
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": settings.max_run_s}
    if settings.use_spot and settings.max_wait_s is not None:
        stopping["MaxWaitTimeInSeconds"] = settings.max_wait_s
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {
            "TrainingImage": settings.image_uri,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": list(command),
        },
        "RoleArn": settings.role_arn,
        "InputDataConfig": [
            {
                "ChannelName": name,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }
            for name, uri in input_channels.items()
        ],
        "OutputDataConfig": {"S3OutputPath": output_s3_uri, "KmsKeyId": settings.kms_key_id},
        "ResourceConfig": {
            "InstanceType": settings.instance_type,
            "InstanceCount": settings.instance_count,
            "VolumeSizeInGB": settings.volume_size_gb,
            "VolumeKmsKeyId": settings.volume_kms_key_id or settings.kms_key_id,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": settings.use_spot,
        "CheckpointConfig": {"S3Uri": checkpoint_s3_uri, "LocalPath": SAGEMAKER_CHECKPOINT_DIR},
        "EnableNetworkIsolation": settings.enable_network_isolation,
        "EnableInterContainerTrafficEncryption": settings.inter_container_encryption,
        "Environment": env,
        "Tags": [{"Key": k, "Value": v} for k, v in sorted({**settings.tags, **(tags or {})}.items())],
    }
    if settings.subnets:
        request["VpcConfig"] = {
            "Subnets": list(settings.subnets),
            "SecurityGroupIds": list(settings.security_group_ids),
        }
    return request


# ---------------------------------------------------------------- trainer side


def open_trainer_pipes(*, message_interval_s: float = 10.0) -> PipesContext:
    """Opens Dagster Pipes in the trainer with the transport its launcher chose.

    A SageMaker launch injects the context and reads messages through S3 (the bootstrap params carry a
    `bucket`); a Kubernetes pod or a subprocess uses dagster-pipes' defaults (environment, pod logs/file).
    Bare `open_dagster_pipes()` only knows the defaults, so a trainer behind SageMaker must open Pipes here.
    """
    from dagster_pipes import (
        PipesContextLoader,
        PipesDefaultContextLoader,
        PipesDefaultMessageWriter,
        PipesEnvVarParamsLoader,
        PipesMessageWriter,
        PipesS3ContextLoader,
        PipesS3MessageWriter,
        open_dagster_pipes,
    )

    params = PipesEnvVarParamsLoader()
    if not params.is_dagster_pipes_process():
        return open_dagster_pipes(params_loader=params)
    context_via_s3 = "bucket" in params.load_context_params()
    messages_via_s3 = "bucket" in params.load_messages_params()
    s3_client: Any = None
    if context_via_s3 or messages_via_s3:
        import boto3

        s3_client = boto3.client("s3")  # region, endpoint and credentials come from the container's environment
    loader: PipesContextLoader = PipesS3ContextLoader(s3_client) if context_via_s3 else PipesDefaultContextLoader()
    writer: PipesMessageWriter = (
        PipesS3MessageWriter(s3_client, interval=message_interval_s) if messages_via_s3 else PipesDefaultMessageWriter()
    )
    return open_dagster_pipes(context_loader=loader, message_writer=writer, params_loader=params)
