"""sagemaker_deploy: request shapes for a scale-to-zero endpoint, and deploy() against moto plus botocore Stubber.

moto 5.2.5 covers only part of this flow: it implements create_model and CloudWatch put_metric_alarm, but has no
inference components at all, its create_endpoint_config needs a ModelName on each variant (an endpoint built for
inference components has none) and rejects ml.g5 instance types, and its Application Auto Scaling rejects the
`sagemaker:inference-component:DesiredCopyCount` dimension. Those calls go through botocore's Stubber, which still
checks every request against the real service model.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import boto3
import pydantic
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from llm_assets.serving.sagemaker_deploy import (
    STEP_POLICY_ARN,
    SageMakerDeployError,
    SageMakerServingConfig,
    build_requests,
    deploy,
)

REGION = "us-east-1"
ACCOUNT = "123456789012"
NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
SAGEMAKER_STUBBED = {
    "create_endpoint_config",
    "create_endpoint",
    "describe_endpoint",
    "create_inference_component",
    "describe_inference_component",
}


def _config(**overrides: Any) -> SageMakerServingConfig:
    values: dict[str, Any] = {
        "endpoint_name": "llm-assets",
        "role_arn": f"arn:aws:iam::{ACCOUNT}:role/sagemaker-serving",
        "image_uri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/vllm-sagemaker:0.11.0",
        "model_data_uri": "s3://lake/models/cpt/abc",
        "adapters": {"banking77_intents": "s3://lake/adapters/b77.tar.gz"},
        "subnets": ["subnet-1", "subnet-2"],
        "security_group_ids": ["sg-1"],
        "region": REGION,
        "environment": {"OPTION_MAX_MODEL_LEN": "4096"},
    }
    return SageMakerServingConfig(**(values | overrides))


def test_build_requests_shape() -> None:
    config = _config(instance_type="ml.p3.2xlarge", kms_key_id="alias/serving")
    requests = build_requests(config)
    assert list(requests) == [
        "sagemaker.create_model",
        "sagemaker.create_endpoint_config",
        "sagemaker.create_endpoint",
        "sagemaker.create_inference_component",
        "application-autoscaling.register_scalable_target",
        "application-autoscaling.put_scaling_policy",
        "cloudwatch.put_metric_alarm",
    ]
    (model,) = requests["sagemaker.create_model"]
    assert model["ExecutionRoleArn"] == config.role_arn
    assert model["VpcConfig"] == {"Subnets": ["subnet-1", "subnet-2"], "SecurityGroupIds": ["sg-1"]}
    assert model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"] == "s3://lake/models/cpt/abc/"
    (endpoint_config,) = requests["sagemaker.create_endpoint_config"]
    assert endpoint_config["KmsKeyId"] == "alias/serving"
    assert endpoint_config["ExecutionRoleArn"] == config.role_arn
    assert "DataCaptureConfig" not in endpoint_config
    (variant,) = endpoint_config["ProductionVariants"]
    assert "ModelName" not in variant, "an endpoint for inference components names no model"
    assert variant["ManagedInstanceScaling"] == {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 2}
    assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    base, adapter = requests["sagemaker.create_inference_component"]
    assert base["Specification"]["ModelName"] == model["ModelName"]
    assert base["Specification"]["ComputeResourceRequirements"]["NumberOfAcceleratorDevicesRequired"] == 1
    assert adapter["InferenceComponentName"] == "llm-assets-banking77-intents"
    assert adapter["Specification"] == {
        "BaseInferenceComponentName": "llm-assets-base",
        "Container": {"ArtifactUrl": "s3://lake/adapters/b77.tar.gz"},
    }
    (target,) = requests["application-autoscaling.register_scalable_target"]
    assert target == {
        "ServiceNamespace": "sagemaker",
        "ResourceId": "inference-component/llm-assets-base",
        "ScalableDimension": "sagemaker:inference-component:DesiredCopyCount",
        "MinCapacity": 0,
        "MaxCapacity": 2,
    }
    assert [p["PolicyType"] for p in requests["application-autoscaling.put_scaling_policy"]] == [
        "TargetTrackingScaling",
        "StepScaling",
    ]
    alarms = requests["cloudwatch.put_metric_alarm"]
    assert {a["MetricName"] for a in alarms} == {"NoCapacityInvocationFailures"}
    assert all(a["AlarmActions"] == [STEP_POLICY_ARN] for a in alarms)


def test_build_requests_are_valid_boto3_parameters() -> None:
    """Every request passes botocore's own parameter validation for its operation."""
    from botocore.validate import validate_parameters

    session = boto3.session.Session(region_name=REGION)
    for call, requests in build_requests(_config()).items():
        service, method = call.split(".")
        client = session.client(service)
        operation = client.meta.method_to_api_mapping[method]
        shape = client.meta.service_model.operation_model(operation).input_shape
        for kwargs in requests:
            validate_parameters(kwargs, shape)


@pytest.mark.parametrize("key", ["HF_TOKEN", "aws_secret_access_key", "DB_PASSWORD", "OPENAI_API_KEY"])
def test_secret_looking_environment_is_refused(key: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=f"environment {key} looks like a secret"):
        _config(environment={key: "x"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kms_key_id": "alias/k"}, "NVMe instance storage"),
        ({"security_group_ids": []}, "both subnets and security_group_ids"),
        ({"min_instances": 3}, "min_instances 3 > max_instances 2"),
        ({"role_arn": "sagemaker-role"}, "not an IAM role ARN"),
        ({"endpoint_name": "llm_assets"}, "endpoint_name"),
        ({"model_data_uri": "/lake/model"}, "s3:// prefix"),
    ],
)
def test_config_fails_fast(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        _config(**overrides)


class _Split:
    """One SageMaker client: the calls moto implements go to moto, the rest to a Stubber-backed client."""

    def __init__(self, real: Any, stubbed: Any, operations: set[str]) -> None:
        self._real, self._stubbed, self._operations = real, stubbed, operations
        self.meta = real.meta

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stubbed if name in self._operations else self._real, name)


class _Session:
    def __init__(self, clients: dict[str, Any]) -> None:
        self._clients = clients

    def client(self, service: str, **kwargs: Any) -> Any:
        return self._clients[service]


def _queue_sagemaker(stub: Stubber, config: SageMakerServingConfig, *, endpoint_polls: int = 1) -> None:
    requests = build_requests(config)
    (endpoint_config,) = requests["sagemaker.create_endpoint_config"]
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
    stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{arn}:endpoint-config/{endpoint_config['EndpointConfigName']}"},
        endpoint_config,
    )
    stub.add_response(
        "create_endpoint", {"EndpointArn": f"{arn}:endpoint/llm-assets"}, requests["sagemaker.create_endpoint"][0]
    )
    for status in ["Creating"] * (endpoint_polls - 1) + ["InService"]:
        stub.add_response(
            "describe_endpoint",
            {
                "EndpointName": "llm-assets",
                "EndpointArn": f"{arn}:endpoint/llm-assets",
                "EndpointStatus": status,
                "CreationTime": NOW,
                "LastModifiedTime": NOW,
            },
            {"EndpointName": "llm-assets"},
        )
    for kwargs in requests["sagemaker.create_inference_component"]:
        name = kwargs["InferenceComponentName"]
        stub.add_response(
            "create_inference_component", {"InferenceComponentArn": f"{arn}:inference-component/{name}"}, kwargs
        )
        if name.endswith("-base"):
            stub.add_response(
                "describe_inference_component",
                {
                    "InferenceComponentName": name,
                    "InferenceComponentArn": f"{arn}:inference-component/{name}",
                    "EndpointName": "llm-assets",
                    "EndpointArn": f"{arn}:endpoint/llm-assets",
                    "InferenceComponentStatus": "InService",
                    "CreationTime": NOW,
                    "LastModifiedTime": NOW,
                },
                {"InferenceComponentName": name},
            )


def _queue_autoscaling(stub: Stubber, config: SageMakerServingConfig) -> list[str]:
    requests = build_requests(config)
    (target,) = requests["application-autoscaling.register_scalable_target"]
    stub.add_response("register_scalable_target", {}, target)
    arns = []
    for policy in requests["application-autoscaling.put_scaling_policy"]:
        arn = f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:scalingPolicy:1:resource/{policy['PolicyName']}"
        stub.add_response("put_scaling_policy", {"PolicyARN": arn}, policy)
        arns.append(arn)
    return arns


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield boto3.session.Session(region_name=REGION)


def test_deploy_against_moto_and_stubber(aws: Any) -> None:
    config = _config()
    sagemaker = aws.client("sagemaker")
    stubbed_sagemaker = aws.client("sagemaker")
    autoscaling = aws.client("application-autoscaling")
    cloudwatch = aws.client("cloudwatch")
    with Stubber(stubbed_sagemaker) as sm_stub, Stubber(autoscaling) as aas_stub:
        _queue_sagemaker(sm_stub, config, endpoint_polls=2)
        policy_arns = _queue_autoscaling(aas_stub, config)
        session = _Session(
            {
                "sagemaker": _Split(sagemaker, stubbed_sagemaker, SAGEMAKER_STUBBED),
                "application-autoscaling": autoscaling,
                "cloudwatch": cloudwatch,
            }
        )
        result = deploy(config, session, poll_s=0)
        sm_stub.assert_no_pending_responses()
        aas_stub.assert_no_pending_responses()

    model = sagemaker.describe_model(ModelName=build_requests(config)["sagemaker.create_model"][0]["ModelName"])
    assert model["ExecutionRoleArn"] == config.role_arn
    assert model["VpcConfig"]["Subnets"] == ["subnet-1", "subnet-2"]
    alarms = cloudwatch.describe_alarms()["MetricAlarms"]
    assert sorted(a["AlarmName"] for a in alarms) == [
        "llm-assets-banking77-intents-no-capacity",
        "llm-assets-base-no-capacity",
    ]
    assert all(a["AlarmActions"] == [policy_arns[1]] for a in alarms), "alarms fire the step (scale-from-zero) policy"
    assert result["endpoint_name"] == "llm-assets"
    assert result["model_arn"] == model["ModelArn"]
    assert list(result["inference_components"]) == ["llm-assets-base", "llm-assets-banking77-intents"]
    assert result["scaling_policies"] == policy_arns


def test_deploy_errors_are_one_line_naming_the_call(aws: Any) -> None:
    config = _config()
    sagemaker = aws.client("sagemaker")
    with Stubber(sagemaker) as stub:
        stub.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:us-east-1:1:model/m"})
        stub.add_client_error(
            "create_endpoint_config",
            service_error_code="ResourceLimitExceeded",
            service_message="The account-level service limit 'ml.g5.2xlarge for endpoint usage' is 0 Instances,\n",
        )
        session = _Session({"sagemaker": sagemaker, "application-autoscaling": None, "cloudwatch": None})
        with pytest.raises(SageMakerDeployError) as caught:
            deploy(config, session)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("sagemaker.create_endpoint_config failed: ResourceLimitExceeded:")
    assert "quota increase" in message


def test_failed_endpoint_stops_the_deploy(aws: Any) -> None:
    config = _config(adapters={})
    sagemaker = aws.client("sagemaker")
    with Stubber(sagemaker) as stub:
        stub.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:us-east-1:1:model/m"})
        stub.add_response("create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:1:ec/c"})
        stub.add_response("create_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/e"})
        stub.add_response(
            "describe_endpoint",
            {
                "EndpointName": "llm-assets",
                "EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/e",
                "EndpointStatus": "Failed",
                "FailureReason": "The primary container did not pass the ping health check.",
                "CreationTime": NOW,
                "LastModifiedTime": NOW,
            },
        )
        session = _Session({"sagemaker": sagemaker, "application-autoscaling": None, "cloudwatch": None})
        with pytest.raises(SageMakerDeployError, match="endpoint llm-assets failed: The primary container"):
            deploy(config, session, poll_s=0)
