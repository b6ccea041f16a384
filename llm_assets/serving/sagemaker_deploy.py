"""A vLLM endpoint on SageMaker real-time inference that scales to zero instances.

SageMaker scales an endpoint to zero only when it hosts inference components and its variant has managed instance
scaling with `MinInstanceCount: 0`. So: a SageMaker model (image + S3 model prefix, in the VPC), an endpoint config
without a model (role, KMS, managed instance scaling, least-outstanding-requests routing), the endpoint, one base
inference component and one adapter component per LoRA adapter (`BaseInferenceComponentName`: it shares the base's
accelerators). The base component's copy count is the scalable target (min 0): a target-tracking policy scales it
with load and to zero when idle, and a step policy fired by a `NoCapacityInvocationFailures` alarm brings the first
copy back (the request that triggers it fails; provisioning takes minutes).

The image must speak SageMaker's container contract (`/ping`, `/invocations` on 8080), e.g. an LMI (DJL) vLLM image;
its settings go in `environment`, which SageMaker stores in plain text, so secret-looking keys are refused.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any, Literal

import pydantic
from pydantic import Field

from llm_assets.compliance.residency import note_remote_compute

VARIANT_NAME = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:inference-component:DesiredCopyCount"
# build_requests cannot know the step policy's ARN; deploy() puts the real one where this stands.
STEP_POLICY_ARN = "<PolicyARN returned by the step-scaling put_scaling_policy>"

_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
_SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD")
# Instance families with NVMe instance storage, which SageMaker encrypts in hardware and for which it refuses a
# KmsKeyId (CreateEndpointConfig fails). The `...d` families (m5d, c6id, p4d, ...) are caught by the pattern.
_LOCAL_STORAGE_FAMILY = re.compile(r"^(g4dn|g5|g6|g6e|gr6|p5|p5e|p5en|p6-.*|trn1|trn1n|trn2|[a-z]+\d+[a-z]*d)$")


class SageMakerDeployError(RuntimeError):
    """A SageMaker, Application Auto Scaling or CloudWatch call failed; the message is one line saying what to do."""


class SageMakerServingConfig(pydantic.BaseModel):
    """One scale-to-zero SageMaker endpoint. Invalid values fail here, before any AWS call."""

    model_config = pydantic.ConfigDict(extra="forbid")

    endpoint_name: str = Field(description="<= 50 of A-Z a-z 0-9 '-' (derived names add a suffix).")
    role_arn: str = Field(description="Execution role: reads the model prefix, pulls the image, uses the KMS key.")
    image_uri: str = Field(description="ECR image serving SageMaker's /ping and /invocations with vLLM.")
    model_data_uri: str = Field(description="s3:// prefix of the merged model or the base model (uncompressed).")
    adapters: dict[str, str] = Field(default_factory=dict, description="Adapter name -> s3:// artifact URL.")
    instance_type: str = "ml.g5.2xlarge"
    min_instances: int = Field(default=0, ge=0)
    max_instances: int = Field(default=2, ge=1)
    copies_max: int = Field(default=2, ge=1, description="Most copies of the base component.")
    accelerators_per_copy: int = Field(default=1, ge=0)
    cpu_cores_per_copy: float = Field(default=2.0, gt=0)
    memory_mb_per_copy: int = Field(default=16_384, ge=128)
    scaling_metric: Literal["InvocationsPerCopy", "ConcurrentRequestsPerCopyHighResolution"] = "InvocationsPerCopy"
    target_value: float = Field(default=4.0, gt=0, description="Target of the scaling metric per copy.")
    scale_in_cooldown_s: int = Field(default=900, ge=0)
    startup_timeout_s: int = Field(default=1800, ge=60, le=3600)
    kms_key_id: str | None = Field(default=None, description="Endpoint volume key; refused for local-NVMe types.")
    subnets: list[str] = Field(default_factory=list)
    security_group_ids: list[str] = Field(default_factory=list)
    network_isolation: bool = Field(default=True, description="No outbound network from the container.")
    region: str | None = None
    environment: dict[str, str] = Field(default_factory=dict, description="Container settings; no secrets.")
    tags: dict[str, str] = Field(default_factory=lambda: {"managed-by": "llm-assets"})

    @pydantic.field_validator("endpoint_name")
    @classmethod
    def _check_endpoint_name(cls, value: str) -> str:
        if len(value) > 50 or not _NAME.match(value):
            raise ValueError(f"endpoint_name {value!r}: use <= 50 of A-Z a-z 0-9 '-', not starting or ending in '-'")
        return value

    @pydantic.field_validator("role_arn")
    @classmethod
    def _check_role(cls, value: str) -> str:
        if not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$", value):
            raise ValueError(f"role_arn {value!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
        return value

    @pydantic.field_validator("model_data_uri")
    @classmethod
    def _check_model_uri(cls, value: str) -> str:
        if not value.startswith("s3://") or len(value) <= len("s3://"):
            raise ValueError(f"model_data_uri {value!r} must be an s3:// prefix")
        return value.rstrip("/") + "/"

    @pydantic.field_validator("adapters")
    @classmethod
    def _check_adapters(cls, value: dict[str, str]) -> dict[str, str]:
        for adapter, uri in value.items():
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]*$", adapter):
                raise ValueError(f"adapter name {adapter!r}: use A-Z a-z 0-9 '_' '-'")
            if not uri.startswith("s3://"):
                raise ValueError(f"adapter {adapter}: {uri!r} must be an s3:// URL")
        return value

    @pydantic.field_validator("environment")
    @classmethod
    def _check_environment(cls, value: dict[str, str]) -> dict[str, str]:
        secret = sorted(k for k in value if any(word in k.upper() for word in _SECRET_WORDS))
        if secret:
            raise ValueError(
                f"environment {', '.join(secret)} looks like a secret; SageMaker shows model environment in plain "
                "text (DescribeModel): have the container read it from Secrets Manager with the execution role"
            )
        return value

    @pydantic.model_validator(mode="after")
    def _check_consistency(self) -> SageMakerServingConfig:
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances {self.min_instances} > max_instances {self.max_instances}")
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ValueError("a VPC needs both subnets and security_group_ids (or neither)")
        family = self.instance_type.removeprefix("ml.").split(".")[0]
        if self.kms_key_id and _LOCAL_STORAGE_FAMILY.match(family):
            raise ValueError(
                f"{self.instance_type} has NVMe instance storage, which SageMaker encrypts in hardware and for which "
                "CreateEndpointConfig refuses KmsKeyId: unset kms_key_id or pick an EBS-backed instance type"
            )
        too_long = [n for n in component_names(self).values() if len(n) > 63]
        if too_long:
            raise ValueError(f"inference component names over 63 characters: {too_long}; shorten endpoint_name")
        return self


def component_names(config: SageMakerServingConfig) -> dict[str, str]:
    """Inference component name per role: 'base' and each adapter name."""
    names = {"base": f"{config.endpoint_name}-base"}
    names |= {a: f"{config.endpoint_name}-{a.replace('_', '-')}" for a in sorted(config.adapters)}
    return names


def _digest(config: SageMakerServingConfig) -> str:
    """Model and endpoint-config names carry a digest of the config: both are immutable in SageMaker."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:8]


def build_requests(config: SageMakerServingConfig) -> dict[str, list[dict[str, Any]]]:
    """The boto3 keyword arguments of every call `deploy` makes, keyed by "service.method", in call order.

    The CloudWatch alarms name the step policy by `STEP_POLICY_ARN`; deploy() substitutes the real ARN.
    """
    suffix = _digest(config)
    model_name = f"{config.endpoint_name}-{suffix}"
    components = component_names(config)
    base = components["base"]
    tags = [{"Key": k, "Value": v} for k, v in sorted(config.tags.items())]

    model: dict[str, Any] = {
        "ModelName": model_name,
        "ExecutionRoleArn": config.role_arn,
        "PrimaryContainer": {
            "Image": config.image_uri,
            "ModelDataSource": {
                "S3DataSource": {
                    "S3Uri": config.model_data_uri,
                    "S3DataType": "S3Prefix",
                    "CompressionType": "None",
                }
            },
            "Environment": dict(config.environment),
        },
        "EnableNetworkIsolation": config.network_isolation,
        "Tags": tags,
    }
    if config.subnets:
        model["VpcConfig"] = {"Subnets": list(config.subnets), "SecurityGroupIds": list(config.security_group_ids)}

    endpoint_config: dict[str, Any] = {
        "EndpointConfigName": f"{config.endpoint_name}-{suffix}",
        "ExecutionRoleArn": config.role_arn,
        "ProductionVariants": [
            {
                "VariantName": VARIANT_NAME,
                "InstanceType": config.instance_type,
                "InitialInstanceCount": 1,
                "ManagedInstanceScaling": {
                    "Status": "ENABLED",
                    "MinInstanceCount": config.min_instances,
                    "MaxInstanceCount": config.max_instances,
                },
                "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"},
                "ModelDataDownloadTimeoutInSeconds": config.startup_timeout_s,
                "ContainerStartupHealthCheckTimeoutInSeconds": config.startup_timeout_s,
            }
        ],
        "Tags": tags,
    }
    if config.kms_key_id:
        endpoint_config["KmsKeyId"] = config.kms_key_id

    compute: dict[str, Any] = {
        "NumberOfCpuCoresRequired": config.cpu_cores_per_copy,
        "MinMemoryRequiredInMb": config.memory_mb_per_copy,
    }
    if config.accelerators_per_copy:
        compute["NumberOfAcceleratorDevicesRequired"] = config.accelerators_per_copy
    inference_components: list[dict[str, Any]] = [
        {
            "InferenceComponentName": base,
            "EndpointName": config.endpoint_name,
            "VariantName": VARIANT_NAME,
            "Specification": {
                "ModelName": model_name,
                "ComputeResourceRequirements": compute,
                "StartupParameters": {
                    "ModelDataDownloadTimeoutInSeconds": config.startup_timeout_s,
                    "ContainerStartupHealthCheckTimeoutInSeconds": config.startup_timeout_s,
                },
            },
            "RuntimeConfig": {"CopyCount": 1},
            "Tags": tags,
        }
    ]
    inference_components += [
        {
            "InferenceComponentName": components[adapter],
            "EndpointName": config.endpoint_name,
            "Specification": {
                "BaseInferenceComponentName": base,
                "Container": {"ArtifactUrl": config.adapters[adapter]},
            },
            "Tags": tags,
        }
        for adapter in sorted(config.adapters)
    ]

    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": f"inference-component/{base}",
        "ScalableDimension": SCALABLE_DIMENSION,
    }
    policies = [
        target
        | {
            "PolicyName": f"{base}-target-tracking",
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": f"SageMakerInferenceComponent{config.scaling_metric}"
                },
                "TargetValue": config.target_value,
                "ScaleInCooldown": config.scale_in_cooldown_s,
                "ScaleOutCooldown": 60,
            },
        },
        target
        | {
            "PolicyName": f"{base}-scale-from-zero",
            "PolicyType": "StepScaling",
            "StepScalingPolicyConfiguration": {
                "AdjustmentType": "ChangeInCapacity",
                "MetricAggregationType": "Maximum",
                "Cooldown": 60,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
            },
        },
    ]
    alarms = [
        {
            "AlarmName": f"{name}-no-capacity",
            "AlarmDescription": f"Requests to {name} found no copy of {base}: scale it out from zero.",
            "AlarmActions": [STEP_POLICY_ARN],
            "MetricName": "NoCapacityInvocationFailures",
            "Namespace": "AWS/SageMaker",
            "Statistic": "Maximum",
            "Dimensions": [{"Name": "InferenceComponentName", "Value": name}],
            "Period": 30,
            "EvaluationPeriods": 1,
            "DatapointsToAlarm": 1,
            "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "missing",
        }
        for name in components.values()
    ]
    return {
        "sagemaker.create_model": [model],
        "sagemaker.create_endpoint_config": [endpoint_config],
        "sagemaker.create_endpoint": [
            {
                "EndpointName": config.endpoint_name,
                "EndpointConfigName": endpoint_config["EndpointConfigName"],
                "Tags": tags,
            }
        ],
        "sagemaker.create_inference_component": inference_components,
        "application-autoscaling.register_scalable_target": [
            target | {"MinCapacity": 0, "MaxCapacity": config.copies_max}
        ],
        "application-autoscaling.put_scaling_policy": policies,
        "cloudwatch.put_metric_alarm": alarms,
    }


def deploy(
    config: SageMakerServingConfig,
    session: Any = None,
    *,
    wait: bool = False,
    poll_s: float = 30.0,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Make the calls of `build_requests` in order; names and ARNs of what was created.

    SageMaker refuses components on an endpoint that is not InService and adapters on a base that is not, so this
    always waits for the endpoint and the base component (typically 10-20 minutes); `wait` also waits for every
    adapter component. Existing resources are not updated: a name clash fails with the call named.
    """
    import boto3

    session = session or boto3.session.Session(region_name=config.region)
    note_remote_compute("sagemaker_endpoint", config.region, endpoint=config.endpoint_name)
    requests = build_requests(config)
    sagemaker = session.client("sagemaker")
    autoscaling = session.client("application-autoscaling")
    cloudwatch = session.client("cloudwatch")
    names = component_names(config)

    model_arn = _call(sagemaker, "create_model", requests["sagemaker.create_model"][0])["ModelArn"]
    config_arn = _call(sagemaker, "create_endpoint_config", requests["sagemaker.create_endpoint_config"][0])[
        "EndpointConfigArn"
    ]
    endpoint_arn = _call(sagemaker, "create_endpoint", requests["sagemaker.create_endpoint"][0])["EndpointArn"]
    _wait_for(
        lambda: _call(sagemaker, "describe_endpoint", {"EndpointName": config.endpoint_name}),
        "EndpointStatus",
        f"endpoint {config.endpoint_name}",
        poll_s,
        timeout_s,
    )
    components: dict[str, str] = {}
    for kwargs in requests["sagemaker.create_inference_component"]:
        name = kwargs["InferenceComponentName"]
        components[name] = _call(sagemaker, "create_inference_component", kwargs)["InferenceComponentArn"]
        if name == names["base"] or wait:
            _wait_for(
                lambda name=name: _call(sagemaker, "describe_inference_component", {"InferenceComponentName": name}),
                "InferenceComponentStatus",
                f"inference component {name}",
                poll_s,
                timeout_s,
            )
    for kwargs in requests["application-autoscaling.register_scalable_target"]:
        _call(autoscaling, "register_scalable_target", kwargs)
    policies = [
        _call(autoscaling, "put_scaling_policy", kwargs)["PolicyARN"]
        for kwargs in requests["application-autoscaling.put_scaling_policy"]
    ]
    step_policy_arn = policies[-1]
    alarms = []
    for kwargs in requests["cloudwatch.put_metric_alarm"]:
        actions = [step_policy_arn if a == STEP_POLICY_ARN else a for a in kwargs["AlarmActions"]]
        _call(cloudwatch, "put_metric_alarm", kwargs | {"AlarmActions": actions})
        alarms.append(kwargs["AlarmName"])
    return {
        "endpoint_name": config.endpoint_name,
        "endpoint_arn": endpoint_arn,
        "endpoint_config_arn": config_arn,
        "model_arn": model_arn,
        "inference_components": components,
        "scaling_policies": policies,
        "alarms": alarms,
    }


_HINTS = {
    "AccessDenied": "grant the caller's IAM identity this action (and iam:PassRole on role_arn)",
    "AccessDeniedException": "grant the caller's IAM identity this action (and iam:PassRole on role_arn)",
    "ResourceLimitExceeded": "request a SageMaker quota increase for this instance type's endpoint usage",
    "ThrottlingException": "retry in a minute",
    "ValidationException": "fix the request (see build_requests) and retry",
    "ValidationError": "fix the request (see build_requests) and retry",
}


def _call(client: Any, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """One boto3 call; a botocore error becomes a one-line SageMakerDeployError naming the call and the fix."""
    from botocore.exceptions import BotoCoreError, ClientError

    service = client.meta.service_model.service_name
    try:
        result: dict[str, Any] = getattr(client, method)(**kwargs)
        return result
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Unknown"), error.get("Message", "")
        hint = _HINTS.get(code, "see the message and retry")
        if "already exist" in message.lower():
            hint = "it exists already: delete it (or choose another endpoint_name) and deploy again"
        text = " ".join(f"{service}.{method} failed: {code}: {message}; {hint}".split())
        raise SageMakerDeployError(text) from exc
    except BotoCoreError as exc:
        text = " ".join(f"{service}.{method} failed: {exc}; check AWS credentials, region and network".split())
        raise SageMakerDeployError(text) from exc


def _wait_for(describe: Any, status_key: str, what: str, poll_s: float, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        response = describe()
        status = response.get(status_key)
        if status == "InService":
            return
        if status == "Failed":
            reason = response.get("FailureReason", "no reason given")
            raise SageMakerDeployError(f"{what} failed: {reason}; see its CloudWatch logs (/aws/sagemaker/Endpoints)")
        if time.monotonic() > deadline:
            raise SageMakerDeployError(f"{what} still {status} after {timeout_s:.0f} s; check it in the console")
        time.sleep(poll_s)
