"""TrainingCompute backends: k8s specs validated offline, SageMaker against moto with a simulated container.

No Kubernetes API server can run here, so the pod body goes through dagster-k8s's own builders
(`build_pod_body`, `construct_dagster_k8s_job`) and `kubernetes-validate --strict`. moto stores a training
job but runs nothing and reports it Completed at once, so botocore event hooks on the resource's SageMaker
client play the missing part: CreateTrainingJob starts `sagemaker_container_sim.py` as a subprocess with
the job's request, and DescribeTrainingJob reports that process's state (InProgress, Completed, Failed with
the container's failure file as FailureReason). Everything else, S3, Pipes and the request, is real.
"""

import json
import os
import socket
import subprocess
import sys
import types
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import dagster_k8s
import kubernetes
import kubernetes_validate
import pytest
from botocore.validate import ParamValidator
from dagster_k8s.job import DagsterK8sJobConfig, get_user_defined_k8s_config
from dagster_k8s.pipes import build_pod_body
from moto.server import ThreadedMotoServer
from pydantic import ValidationError

from llm_assets.resources.training_compute import (
    K8sBackendConfig,
    S3StagingConfig,
    SageMakerBackendConfig,
    TrainingCompute,
    TrainingComputeError,
)
from llm_assets.training.launch_specs import (
    TAG_DAGSTER_K8S_CONFIG,
    TAG_GPU,
    TAG_NODE_SELECTOR,
    TAG_TOLERATIONS,
    K8sTrainerSettings,
    LaunchSpecError,
    SageMakerTrainingSettings,
    apply_op_tags,
    dagster_k8s_config,
    k8s_trainer_launch,
    sagemaker_trainer_spec,
    sagemaker_training_request,
)

SIM = Path(__file__).with_name("sagemaker_container_sim.py")
K8S_VERSION = "1.33.0"
ROLE = "arn:aws:iam::123456789012:role/llm-trainer"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PIPES_ENV = {"DAGSTER_PIPES_CONTEXT": "eJzLSM3JyQcABiwCFQ==", "DAGSTER_PIPES_MESSAGES": "eJzLSM3JyQcABiwCFQ=="}


def _validate_k8s(model: Any, kind: str, api_version: str) -> dict[str, Any]:
    """A kubernetes client model as the API server would receive it, checked strictly against the schema."""
    body = kubernetes.client.ApiClient().sanitize_for_serialization(model)
    body.update(apiVersion=api_version, kind=kind)
    kubernetes_validate.validate(body, K8S_VERSION, strict=True)
    return body


def _pod(launch, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The pod PipesK8sClient.run would create from a launch spec (same builder, same arguments)."""
    pod = build_pod_body(
        pod_name="dagster-run-train-0123456789",
        image=None,
        command=None,
        env_vars=env or PIPES_ENV,
        base_pod_meta=launch.base_pod_meta,
        base_pod_spec=launch.base_pod_spec,
    )
    return _validate_k8s(pod, "Pod", "v1")


# ---------------------------------------------------------------- Kubernetes specs, offline


@pytest.fixture
def k8s_settings() -> K8sTrainerSettings:
    return K8sTrainerSettings(
        image="registry.example/llm-assets-trainer:1",
        namespace="training",
        service_account_name="trainer",
        gpus=1,
        node_selector={"pool": "gpu"},
        tolerations=[GPU_TOLERATION],
    )


def test_pod_body_from_settings_and_op_tags_is_valid(k8s_settings: K8sTrainerSettings) -> None:
    tags = {
        TAG_GPU: "4",
        TAG_NODE_SELECTOR: json.dumps({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
        TAG_TOLERATIONS: json.dumps([{"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]),
    }
    launch = k8s_trainer_launch(
        k8s_settings,
        command=["python", "-m", "llm_assets.training.trainer", "--pipes"],
        env={"AWS_REGION": "eu"},
        tags=tags,
    )
    body = _pod(launch)
    spec = body["spec"]
    container = spec["containers"][0]
    assert launch.namespace == "training"
    assert container["name"] == "trainer" and container["image"] == k8s_settings.image
    assert container["command"] == ["python", "-m", "llm_assets.training.trainer", "--pipes"]
    assert container["resources"]["limits"] == {"memory": "32Gi", "nvidia.com/gpu": "4"}
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "32Gi"}
    assert spec["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"] == [
        GPU_TOLERATION,
        {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    ]
    assert spec["serviceAccountName"] == "trainer" and spec["restartPolicy"] == "Never"
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == {"AWS_REGION": "eu", **PIPES_ENV}


def test_dagster_k8s_config_tag_is_deep_merged(k8s_settings: K8sTrainerSettings) -> None:
    raw = {
        "container_config": {"resources": {"limits": {"cpu": "16"}}, "securityContext": {"runAsNonRoot": True}},
        "pod_spec_config": {"priorityClassName": "training", "tolerations": [GPU_TOLERATION]},
        "pod_template_spec_metadata": {"annotations": {"cost-center": "llm"}},
    }
    launch = k8s_trainer_launch(k8s_settings, command=["train"], env={}, tags={TAG_DAGSTER_K8S_CONFIG: json.dumps(raw)})
    body = _pod(launch)
    container = body["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"memory": "32Gi", "nvidia.com/gpu": "1", "cpu": "16"}
    assert container["securityContext"] == {"runAsNonRoot": True}
    assert body["spec"]["priorityClassName"] == "training"
    assert body["spec"]["tolerations"] == [
        GPU_TOLERATION
    ]  # the tag's copy of an existing toleration is not added twice
    assert body["metadata"]["annotations"] == {"cost-center": "llm"}


def test_settings_as_dagster_k8s_tag_build_a_valid_job(k8s_settings: K8sTrainerSettings) -> None:
    """The same settings as `dagster-k8s/config` op tags, through dagster-k8s's job builder (run launcher path)."""
    tags = {TAG_DAGSTER_K8S_CONFIG: json.dumps(dagster_k8s_config(k8s_settings))}
    job = dagster_k8s.construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="registry.example/dagster:1", dagster_home="/opt/dagster/home"),
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-train",
        user_defined_k8s_config=get_user_defined_k8s_config(tags),
    )
    body = _validate_k8s(job, "Job", "batch/v1")
    pod = body["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == k8s_settings.image
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"] == [GPU_TOLERATION]


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({TAG_GPU: "two"}, "llm_assets/gpu: 'two' is not a whole number"),
        ({TAG_GPU: "-1"}, "use 0 or more"),
        ({TAG_NODE_SELECTOR: "{pool: gpu}"}, "llm_assets/node_selector: not valid JSON"),
        ({TAG_NODE_SELECTOR: '["gpu"]'}, "give a JSON object of strings"),
        ({TAG_TOLERATIONS: '{"key": "x"}'}, "give a JSON list of toleration objects"),
        ({TAG_TOLERATIONS: '[{"key": "x", "operator": "Maybe"}]'}, "operator 'Maybe' must be Equal or Exists"),
        ({TAG_TOLERATIONS: '[{"operator": "Exists", "value": "x"}]'}, "Exists must not set a value"),
        ({TAG_TOLERATIONS: '[{"key": "x", "effect": "NoSchedule", "tolerationSeconds": 5}]'}, "effect NoExecute"),
    ],
)
def test_bad_op_tags_fail_in_one_line(k8s_settings: K8sTrainerSettings, tags: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchSpecError, match=message.replace("(", r"\(")) as caught:
        apply_op_tags(k8s_settings, tags)
    assert "\n" not in str(caught.value)


def test_bad_k8s_settings_name_the_field() -> None:
    with pytest.raises(ValidationError, match="not a Kubernetes quantity"):
        K8sTrainerSettings(image="x", memory="32 GB")
    with pytest.raises(ValidationError, match="not a DNS label"):
        K8sTrainerSettings(image="x", namespace="Training")


# ---------------------------------------------------------------- SageMaker request, offline


def _sagemaker_settings(**overrides: Any) -> dict[str, Any]:
    return {
        "role_arn": ROLE,
        "image_uri": "123456789012.dkr.ecr.eu-central-1.amazonaws.com/llm-assets-trainer:1",
        "kms_key_id": "arn:aws:kms:eu-central-1:123456789012:key/out",
        "volume_kms_key_id": "arn:aws:kms:eu-central-1:123456789012:key/vol",
        "use_spot": True,
        "max_run_s": 3600,
        "max_wait_s": 7200,
        "subnets": ["subnet-0a1b2c"],
        "security_group_ids": ["sg-0a1b2c"],
        "tags": {"project": "llm"},
        **overrides,
    }


def test_sagemaker_request_matches_the_api_model() -> None:
    settings = SageMakerTrainingSettings(**_sagemaker_settings())
    request = sagemaker_training_request(
        settings,
        job_name="sft-0123abcd",
        command=["python", "-m", "llm_assets.training.trainer", "--pipes"],
        input_channels={
            "model": "s3://b/jobs/sft-0123abcd/input/model/",
            "data": "s3://b/jobs/sft-0123abcd/input/data/",
        },
        output_s3_uri="s3://b/jobs",
        checkpoint_s3_uri="s3://b/jobs/sft-0123abcd/checkpoints/",
        environment=PIPES_ENV,
    )
    shape = boto3.client("sagemaker", region_name="us-east-1").meta.service_model.operation_model("CreateTrainingJob")
    report = ParamValidator().validate(request, shape.input_shape)
    assert not report.has_errors(), report.generate_report()
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert request["OutputDataConfig"]["KmsKeyId"].endswith("key/out")
    assert request["ResourceConfig"]["VolumeKmsKeyId"].endswith("key/vol")
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert request["VpcConfig"] == {"Subnets": ["subnet-0a1b2c"], "SecurityGroupIds": ["sg-0a1b2c"]}
    assert request["EnableInterContainerTrafficEncryption"] is True and request["EnableNetworkIsolation"] is False
    env = request["Environment"]
    assert env["SM_CHANNEL_DATA"] == "/opt/ml/input/data/data" and env["SM_MODEL_DIR"] == "/opt/ml/model"
    assert PIPES_ENV.items() <= env.items()
    spec = sagemaker_trainer_spec({"config": {"mode": "sft"}}, ["model", "data"])
    assert spec["channels"] == {"model": "$SM_CHANNEL_MODEL", "data": "$SM_CHANNEL_DATA"}
    assert spec["output_dir"] == "$SM_MODEL_DIR" and spec["checkpoint_dir"] == "$SM_CHECKPOINT_DIR"


def test_on_demand_request_has_no_max_wait_or_vpc() -> None:
    settings = SageMakerTrainingSettings(
        **_sagemaker_settings(use_spot=False, max_wait_s=None, subnets=[], security_group_ids=[])
    )
    request = sagemaker_training_request(
        settings,
        job_name="sft-1",
        command=["train"],
        input_channels={"data": "s3://b/in/"},
        output_s3_uri="s3://b/out",
        checkpoint_s3_uri="s3://b/ckpt/",
        environment={},
    )
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}
    assert "VpcConfig" not in request and request["EnableManagedSpotTraining"] is False
    assert request["ResourceConfig"]["VolumeKmsKeyId"].endswith("key/vol")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_wait_s": None}, "use_spot needs max_wait_s"),
        ({"max_wait_s": 600}, r"max_wait_s >= max_run_s \(600 < 3600\)"),
        ({"use_spot": False}, "max_wait_s only applies to spot training"),
        ({"kms_key_id": " "}, "kms_key_id is empty"),
        ({"subnets": []}, "give at least one private subnet id"),
        ({"security_group_ids": []}, "give at least one security group id"),
        ({"subnets": ["vpc-1"]}, "are not subnet ids"),
        ({"enable_network_isolation": True}, "enable_network_isolation blocks"),
        ({"role_arn": "trainer"}, "is not an IAM role ARN"),
    ],
)
def test_bad_sagemaker_settings_fail_fast(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SageMakerTrainingSettings(**_sagemaker_settings(**overrides))


def test_missing_kms_key_is_refused() -> None:
    settings = _sagemaker_settings()
    del settings["kms_key_id"]
    with pytest.raises(ValidationError, match="kms_key_id"):
        SageMakerTrainingSettings(**settings)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"job_name": "sft_run"}, "job name 'sft_run'"),
        ({"input_channels": {"train-set": "s3://b/in/"}}, "channel names"),
        ({"input_channels": {"data": "/local/data"}}, "is not an s3:// URI"),
        ({"environment": {"BIG": "x" * 600}}, "values over 512 characters"),
        ({"command": []}, "trainer command is empty"),
    ],
)
def test_bad_request_inputs_fail_in_one_line(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "job_name": "sft-1",
        "command": ["train"],
        "input_channels": {"data": "s3://b/in/"},
        "output_s3_uri": "s3://b/out",
        "checkpoint_s3_uri": "s3://b/ckpt/",
        "environment": {},
        **kwargs,
    }
    with pytest.raises(LaunchSpecError, match=message) as caught:
        sagemaker_training_request(SageMakerTrainingSettings(**_sagemaker_settings()), **args)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- the resource


@pytest.fixture
def channels(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "channels" / "model"
    data = tmp_path / "channels" / "data"
    (model / "sub").mkdir(parents=True)
    data.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "tokenizer.json").write_text("{}")
    (data / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    return {"model": model, "data": data}


def _training_asset(compute_kwargs: dict[str, Any], *, op_tags: dict[str, Any] | None = None) -> dg.AssetsDefinition:
    @dg.asset(op_tags=op_tags)
    def lora_adapter(context: dg.AssetExecutionContext, compute: TrainingCompute) -> dg.MaterializeResult:
        result = compute.run(context, **compute_kwargs)
        return dg.MaterializeResult(metadata={"result": dg.MetadataValue.json(result)})

    return lora_adapter


def _result(run: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return run.asset_materializations_for_node("lora_adapter")[0].metadata["result"].value


def test_in_process_calls_run_training_with_local_paths(
    channels: dict[str, Path], tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def run_training(spec: dict[str, Any], *, log: Any = None) -> dict[str, Any]:
        calls.append(spec)
        log("stand-in run_training: step 1/1")
        return {"global_step": 1}

    monkeypatch.setitem(sys.modules, "llm_assets.training.trainer", types.SimpleNamespace(run_training=run_training))
    output = tmp_path / "adapter"
    asset = _training_asset(
        {"job_name": "sft-local", "spec": {"config": {"mode": "sft"}}, "channels": channels, "output_dir": output}
    )
    run = dg.materialize([asset], resources={"compute": TrainingCompute()}, instance=instance)
    assert _result(run) == {"global_step": 1}
    assert calls == [
        {
            "config": {"mode": "sft"},
            "channels": {"model": str(channels["model"]), "data": str(channels["data"])},
            "output_dir": str(output),
            "checkpoint_dir": str(tmp_path / "adapter.checkpoints"),
        }
    ]
    messages = [entry.user_message for entry in instance.all_logs(run.run_id)]
    assert "stand-in run_training: step 1/1" in messages


def test_spec_with_paths_or_missing_channel_is_refused(
    channels: dict[str, Path], tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = _training_asset(
        {"job_name": "sft-x", "spec": {"output_dir": "/tmp/x"}, "channels": channels, "output_dir": tmp_path / "o"}
    )
    with pytest.raises(TrainingComputeError, match=r"spec sets \['output_dir'\]; pass channels= and output_dir="):
        dg.materialize([asset], resources={"compute": TrainingCompute()}, instance=instance)
    asset = _training_asset(
        {"job_name": "sft-x", "spec": {}, "channels": {"data": tmp_path / "nope"}, "output_dir": tmp_path / "o"}
    )
    with pytest.raises(TrainingComputeError, match="channel folder\\(s\\) missing: data="):
        dg.materialize([asset], resources={"compute": TrainingCompute()}, instance=instance)


# ---------------------------------------------------------------- against a moto server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A moto server and a KMS key on it; credentials are fake and only valid for this module."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path_factory.mktemp("aws") / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path_factory.mktemp("aws") / "credentials"),
        }.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        key_id = boto3.client("kms", endpoint_url=endpoint).create_key()["KeyMetadata"]["KeyId"]
        try:
            yield endpoint, key_id
        finally:
            server.stop()


@pytest.fixture
def staging(moto_endpoint: tuple[str, str]) -> S3StagingConfig:
    endpoint, key_id = moto_endpoint
    bucket = f"train-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return S3StagingConfig(bucket=bucket, prefix="jobs", kms_key_id=key_id, region="us-east-1", endpoint_url=endpoint)


_CONTAINERS: dict[str, subprocess.Popen[str]] = {}


def _start_container(root: Path, endpoint: str, params: dict[str, Any], **_: Any) -> None:
    """CreateTrainingJob: what SageMaker would do next, start the container (here a subprocess)."""
    job_root = root / params["TrainingJobName"]
    job_root.mkdir(parents=True)
    (job_root / "request.json").write_text(json.dumps(params))
    _CONTAINERS[params["TrainingJobName"]] = subprocess.Popen(
        [sys.executable, str(SIM), "container", "--request", str(job_root / "request.json"), "--root", str(job_root)],
        env={**os.environ, "AWS_ENDPOINT_URL": endpoint},
        text=True,
    )


def _container_status(root: Path, parsed: dict[str, Any], **_: Any) -> None:
    """DescribeTrainingJob: moto says Completed at once; report the container process's real state instead."""
    process = _CONTAINERS.get(parsed.get("TrainingJobName", ""))
    if process is None:
        return
    code = process.poll()
    if code is None:
        parsed.update(TrainingJobStatus="InProgress", SecondaryStatus="Training")
    elif code == 0:
        parsed.update(TrainingJobStatus="Completed", SecondaryStatus="Completed")
    else:
        failure = root / parsed["TrainingJobName"] / "opt" / "ml" / "output" / "failure"
        reason = failure.read_text() if failure.exists() else f"exit code {code}"
        parsed.update(TrainingJobStatus="Failed", SecondaryStatus="Failed", FailureReason=f"AlgorithmError: {reason}")


class SimulatedSageMakerCompute(TrainingCompute):
    """The production resource; only its SageMaker client gets the hooks that stand in for SageMaker's hosts."""

    sim_root: str

    def boto3_client(self, service: str) -> Any:
        client = super().boto3_client(service)
        if service == "sagemaker":
            root = Path(self.sim_root)
            endpoint = self._staging().endpoint_url or ""
            events = client.meta.events
            events.register(
                "provide-client-params.sagemaker.CreateTrainingJob", partial(_start_container, root, endpoint)
            )
            events.register("after-call.sagemaker.DescribeTrainingJob", partial(_container_status, root))
        return client


def _simulated_compute(staging: S3StagingConfig, root: Path, command: list[str]) -> SimulatedSageMakerCompute:
    return SimulatedSageMakerCompute(
        backend="sagemaker",
        command=command,
        staging=staging,
        sagemaker=SageMakerBackendConfig(
            **_sagemaker_settings(kms_key_id=staging.kms_key_id, volume_kms_key_id=None),
            poll_interval_s=0.2,
            pipes_interval_s=0.5,
            timeout_s=120,
        ),
        sim_root=str(root),
    )


@pytest.fixture
def simulated_compute(staging: S3StagingConfig, tmp_path: Path) -> Iterator[SimulatedSageMakerCompute]:
    yield _simulated_compute(staging, tmp_path / "sagemaker", ["python", str(SIM), "stand-in-trainer"])
    for process in _CONTAINERS.values():
        if process.poll() is None:
            process.kill()
    _CONTAINERS.clear()


def test_sagemaker_job_runs_the_trainer_through_pipes(
    simulated_compute: SimulatedSageMakerCompute,
    staging: S3StagingConfig,
    channels: dict[str, Path],
    tmp_path: Path,
    instance: dg.DagsterInstance,
) -> None:
    job = f"sft-{uuid.uuid4().hex[:8]}"
    output = tmp_path / "adapter"
    asset = _training_asset(
        {"job_name": job, "spec": {"config": {"rank": 8}}, "channels": channels, "output_dir": output}
    )
    run = dg.materialize([asset], resources={"compute": simulated_compute}, instance=instance)

    result = _result(run)
    assert result["config"] == {"rank": 8}
    assert result["channel_files"] == {"model": ["config.json", "tokenizer.json"], "data": ["train.jsonl"]}
    assert result["output_dir"].endswith("opt/ml/model")  # the container saw SM_MODEL_DIR, relocated
    assert json.loads((output / "adapter_config.json").read_text()) == {"rank": 8}

    request = json.loads((tmp_path / "sagemaker" / job / "request.json").read_text())
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES", "SM_CHANNEL_MODEL"} <= set(request["Environment"])
    assert request["EnableManagedSpotTraining"] is True and request["VpcConfig"]["Subnets"] == ["subnet-0a1b2c"]
    assert request["OutputDataConfig"] == {
        "S3OutputPath": f"s3://{staging.bucket}/jobs",
        "KmsKeyId": staging.kms_key_id,
    }
    assert {"Key": "dagster/run_id", "Value": run.run_id} in request["Tags"]

    s3 = boto3.client("s3", endpoint_url=staging.endpoint_url)
    staged = s3.head_object(Bucket=staging.bucket, Key=f"jobs/{job}/input/model/sub/tokenizer.json")
    assert staged["ServerSideEncryption"] == "aws:kms"
    model = s3.head_object(Bucket=staging.bucket, Key=f"jobs/{job}/output/model.tar.gz")
    assert model["ServerSideEncryption"] == "aws:kms"
    s3.head_object(Bucket=staging.bucket, Key=f"jobs/{job}/checkpoints/step-1.txt")
    assert not s3.list_objects_v2(Bucket=staging.bucket, Prefix=f"jobs/{job}/pipes/").get("KeyCount")

    messages = [entry.user_message for entry in instance.all_logs(run.run_id)]
    assert any(m.startswith("stand-in trainer: channels") for m in messages)  # the trainer's Pipes log, forwarded
    assert any(f"SageMaker training job {job}: InProgress / Training" in m for m in messages)
    assert any(f"SageMaker training job {job}: Completed / Completed" in m for m in messages)


def test_sagemaker_job_failure_is_one_line(
    simulated_compute: SimulatedSageMakerCompute,
    channels: dict[str, Path],
    tmp_path: Path,
    instance: dg.DagsterInstance,
) -> None:
    job = f"sft-{uuid.uuid4().hex[:8]}"
    asset = _training_asset(
        {
            "job_name": job,
            "spec": {"config": {"fail": "loss diverged at step 3"}},
            "channels": channels,
            "output_dir": tmp_path / "adapter",
        }
    )
    with pytest.raises(dg.Failure) as caught:
        dg.materialize([asset], resources={"compute": simulated_compute}, instance=instance)
    message = caught.value.description or ""
    assert "\n" not in message
    assert message.startswith(
        f"SageMaker training job {job} Failed: AlgorithmError: RuntimeError: loss diverged at step 3"
    )
    assert not (tmp_path / "adapter" / "adapter_config.json").exists()


def test_sagemaker_without_settings_is_refused(
    staging: S3StagingConfig, channels: dict[str, Path], tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = _training_asset({"job_name": "sft-1", "spec": {}, "channels": channels, "output_dir": tmp_path / "o"})
    with pytest.raises(TrainingComputeError, match="backend 'sagemaker' needs the sagemaker settings"):
        dg.materialize(
            [asset], resources={"compute": TrainingCompute(backend="sagemaker", staging=staging)}, instance=instance
        )
    with pytest.raises(TrainingComputeError, match="backend 'k8s' needs staging"):
        dg.materialize(
            [asset],
            resources={"compute": TrainingCompute(backend="k8s", k8s=K8sBackendConfig(image="x"))},
            instance=instance,
        )
    with pytest.raises(ValidationError, match="use_spot needs max_wait_s"):
        SageMakerBackendConfig(**_sagemaker_settings(kms_key_id="k", max_wait_s=None))


def test_k8s_backend_stages_channels_and_launches_a_valid_pod(
    staging: S3StagingConfig,
    channels: dict[str, Path],
    tmp_path: Path,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PipesK8sClient.run cannot reach a cluster here: the stand-in builds and validates its pod, plays the trainer."""
    launched: dict[str, Any] = {}

    def run(self: dagster_k8s.PipesK8sClient, *, context: Any, extras: dict[str, Any], **kwargs: Any) -> Any:
        launched.update(extras=extras, kwargs=kwargs, pod=_pod(types.SimpleNamespace(**kwargs)))
        s3 = boto3.client("s3", endpoint_url=staging.endpoint_url)
        bucket, _, key = extras["spec"]["output_dir"].removeprefix("s3://").partition("/")
        s3.put_object(Bucket=bucket, Key=f"{key}adapter_config.json", Body=b"{}")
        return types.SimpleNamespace(get_custom_messages=lambda: [{"global_step": 3}])

    monkeypatch.setattr(dagster_k8s.PipesK8sClient, "run", run)
    compute = TrainingCompute(
        backend="k8s",
        staging=staging,
        k8s=K8sBackendConfig(image="registry.example/trainer:1", namespace="training", tolerations=[GPU_TOLERATION]),
    )
    output = tmp_path / "adapter"
    asset = _training_asset(
        {"job_name": "sft-k8s", "spec": {"config": {}}, "channels": channels, "output_dir": output},
        op_tags={TAG_GPU: "2", TAG_NODE_SELECTOR: {"pool": "h100"}},
    )
    run_result = dg.materialize([asset], resources={"compute": compute}, instance=instance)

    assert _result(run_result) == {"global_step": 3}
    assert (output / "adapter_config.json").read_text() == "{}"
    spec = launched["extras"]["spec"]
    assert spec["channels"] == {
        "model": f"s3://{staging.bucket}/jobs/sft-k8s/input/model/",
        "data": f"s3://{staging.bucket}/jobs/sft-k8s/input/data/",
    }
    assert spec["checkpoint_mirror"] == f"s3://{staging.bucket}/jobs/sft-k8s/checkpoints/"
    assert launched["kwargs"]["namespace"] == "training"
    pod = launched["pod"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"pool": "h100"} and pod["tolerations"] == [GPU_TOLERATION]
    env = {item["name"]: item["value"] for item in pod["containers"][0]["env"]}
    assert env["AWS_ENDPOINT_URL"] == staging.endpoint_url and env["AWS_REGION"] == "us-east-1"


# ---------------------------------------------------------------- the real trainer in the simulated container

TRAINER = Path(__file__).parents[2] / "llm_assets" / "training" / "trainer.py"


@pytest.mark.skipif(
    not TRAINER.is_file() or "open_trainer_pipes" not in TRAINER.read_text(encoding="utf-8"),
    reason="trainer --pipes opens bare open_dagster_pipes(), which cannot read the S3 context a SageMaker launch "
    "injects; it must open Pipes with launch_specs.open_trainer_pipes()",
)
def test_sagemaker_job_runs_the_real_trainer(
    simulated_compute: SimulatedSageMakerCompute, staging: S3StagingConfig, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    from llm_assets.training.base_model import TinyLlamaConfig, bootstrap_tiny_llama
    from llm_assets.training.tokenizer import TokenizerConfig, save_pretrained, train_bpe_tokenizer

    rows = [{"prompt": f"Q{i}: what is {i} plus one?", "completion": f" {i + 1}"} for i in range(40)]
    save_pretrained(
        train_bpe_tokenizer([r["prompt"] + r["completion"] for r in rows] * 5, TokenizerConfig(vocab_size=300)),
        tmp_path / "tokenizer",
    )
    bootstrap_tiny_llama(tmp_path / "tokenizer", TinyLlamaConfig(), tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:32]))
    (data / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows[32:]))
    config = {"max_steps": 2, "batch_size": 8, "max_length": 32, "padding_free": False, "probe_generations": 0}
    trainer = ["python", "-m", "llm_assets.training.trainer", "--pipes"]
    compute = _simulated_compute(staging, tmp_path / "sagemaker", trainer)
    output = tmp_path / "adapter"
    asset = _training_asset(
        {
            "job_name": f"sft-{uuid.uuid4().hex[:8]}",
            "spec": {"config": config},
            "channels": {"model": tmp_path / "model", "data": data},
            "output_dir": output,
        }
    )
    result = _result(dg.materialize([asset], resources={"compute": compute}, instance=instance))
    assert result["global_step"] == 2
    assert (output / "adapter_model.safetensors").is_file() and (output / "adapter_config.json").is_file()
