"""Where the trainer runs: in this process (default), in a Kubernetes pod, or as a SageMaker training job.

The trainer is the same file everywhere: `run_training(spec)` in process, `python -m llm_assets.training.trainer
--pipes` in an image. Only the launcher differs. The remote backends stage the input channels in S3 (SSE-KMS),
hand the trainer its spec as Dagster Pipes extras and get its result back as a Pipes custom message; its log
lines show up in the run's logs. AWS credentials come from the environment (or the pod's/job's role), never
from config; `staging.endpoint_url` points at an S3-compatible endpoint (a local moto server in the tests).

S3 layout per job, under `s3://{staging.bucket}/{staging.prefix}/{job_name}/`:
  `input/{channel}/...`  the staged channel folders
  `output/model.tar.gz`  SageMaker's packed model dir; `output/model/...` the k8s trainer's output folder
  `checkpoints/...`      checkpoints (SageMaker syncs /opt/ml/checkpoints; the k8s trainer mirrors them)
  `pipes/...`            the Pipes context for SageMaker (deleted when the session closes)
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import time
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from llm_assets.compliance.residency import note_egress, note_remote_compute
from llm_assets.training.launch_specs import (
    K8sTrainerSettings,
    SageMakerTrainingSettings,
    check_channel_names,
    check_job_name,
    k8s_trainer_launch,
    sagemaker_trainer_spec,
    sagemaker_training_request,
)

DEFAULT_COMMAND = ("python", "-m", "llm_assets.training.trainer", "--pipes")
_PATH_KEYS = ("channels", "output_dir", "checkpoint_dir", "checkpoint_mirror")
_TERMINAL = ("Completed", "Failed", "Stopped")


class TrainingComputeError(Exception):
    """The resource is configured or called in a way it must refuse; the message names the field and the fix."""


class S3StagingConfig(dg.Config):
    """Where the remote backends stage channels, outputs and checkpoints; every object is SSE-KMS encrypted."""

    bucket: str = Field(description="Bucket for staged inputs, outputs, checkpoints and Pipes messages.")
    prefix: str = Field(default="training-jobs", description="Key prefix; each job gets {prefix}/{job_name}/.")
    kms_key_id: str = Field(description="KMS key (id, ARN or alias) for every staged object.")
    region: str | None = Field(default=None, description="AWS region; default: from the environment.")
    endpoint_url: str | None = Field(default=None, description="S3/SageMaker endpoint (a local moto server in tests).")


class K8sBackendConfig(dg.Config, K8sTrainerSettings):
    """The trainer pod (see `launch_specs` for the op tags that override it per asset) and how to reach the cluster."""

    load_incluster_config: bool | None = Field(
        default=None, description="True when Dagster itself runs in the cluster."
    )
    kubeconfig_file: str | None = None
    kube_context: str | None = None
    pod_wait_timeout_s: float = Field(default=24 * 3600, gt=0)
    poll_interval_s: float = Field(default=10, gt=0)


class SageMakerBackendConfig(dg.Config, SageMakerTrainingSettings):
    """The SageMaker training job and how closely Dagster watches it."""

    poll_interval_s: float = Field(default=30, gt=0, description="Seconds between DescribeTrainingJob calls.")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Stop the job after this long; default: max_wait_s or max_run_s + 1 h."
    )
    pipes_interval_s: float = Field(default=10, gt=0, description="Seconds between reads of the trainer's messages.")


class TrainingCompute(dg.ConfigurableResource):
    """Runs the trainer on the configured backend and returns the result dict the trainer reported."""

    backend: Literal["in_process", "k8s", "sagemaker"] = "in_process"
    command: list[str] = Field(
        default_factory=lambda: list(DEFAULT_COMMAND),
        description="Trainer command inside the image (k8s, SageMaker); the in-process backend calls run_training.",
    )
    staging: S3StagingConfig | None = None
    k8s: K8sBackendConfig | None = None
    sagemaker: SageMakerBackendConfig | None = None

    def run(
        self,
        context: dg.AssetExecutionContext,
        *,
        job_name: str,
        spec: Mapping[str, Any],
        channels: Mapping[str, Path],
        output_dir: Path,
        checkpoint_dir: Path | None = None,
        checkpoint_mirror: str | None = None,
    ) -> dict[str, Any]:
        """Trains with `spec` (the trainer spec without paths) on `channels`; the model lands in `output_dir`.

        `job_name` names the pod/job and its S3 folder; SageMaker needs it unique per account (add the run id).
        `checkpoint_dir` is used in process only (default: `<output_dir>.checkpoints`); remote backends keep
        checkpoints under the job's S3 folder. The trainer's Pipes log lines land in the run's logs; the caller
        turns the returned dict into its own MaterializeResult.
        """
        check_job_name(job_name)
        check_channel_names(list(channels))
        if clash := [key for key in _PATH_KEYS if key in spec]:
            raise TrainingComputeError(
                f"spec sets {clash}; pass channels= and output_dir= instead, the backend fills them"
            )
        if missing := [f"{name}={path}" for name, path in channels.items() if not Path(path).exists()]:
            raise TrainingComputeError(f"channel folder(s) missing: {', '.join(missing)}; materialize them first")
        output_dir.mkdir(parents=True, exist_ok=True)
        if self.backend == "in_process":
            return self._run_in_process(context, spec, channels, output_dir, checkpoint_dir, checkpoint_mirror)
        staging = self._staging()
        region = staging.region or os.environ.get("AWS_REGION", "")
        note_remote_compute(self.backend, region, job=job_name)
        note_egress(staging.endpoint_url or f"https://s3.{region}.amazonaws.com", "training_staging")
        if self.backend == "k8s":
            return self._run_k8s(context, job_name, spec, channels, output_dir)
        return self._run_sagemaker(context, job_name, spec, channels, output_dir)

    # ------------------------------------------------------------ shared

    def boto3_client(self, service: str) -> Any:
        """A boto3 client for the staging region/endpoint; credentials come from the environment."""
        import boto3
        from botocore.config import Config

        staging = self._staging()
        return boto3.session.Session().client(
            service,
            region_name=staging.region,
            endpoint_url=staging.endpoint_url,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )

    def _staging(self) -> S3StagingConfig:
        if self.staging is None:
            raise TrainingComputeError(f"backend {self.backend!r} needs staging (bucket, kms_key_id) for S3 transfers")
        return self.staging

    def _job_root(self, job_name: str) -> str:
        prefix = self._staging().prefix.strip("/")
        return f"{prefix}/{job_name}" if prefix else job_name

    def _uri(self, key: str) -> str:
        return f"s3://{self._staging().bucket}/{key}"

    def _stage_channels(
        self, context: dg.AssetExecutionContext, s3: Any, job_name: str, channels: Mapping[str, Path]
    ) -> dict[str, str]:
        """Uploads each channel folder (or file) to `{job}/input/{channel}/`; returns the channel S3 URIs."""
        staging = self._staging()
        uris: dict[str, str] = {}
        for name, path in channels.items():
            root = Path(path)
            prefix = f"{self._job_root(job_name)}/input/{name}/"
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            size = 0
            for file in files:
                key = prefix + (file.name if root.is_file() else file.relative_to(root).as_posix())
                s3.upload_file(
                    str(file),
                    staging.bucket,
                    key,
                    ExtraArgs={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": staging.kms_key_id},
                )
                size += file.stat().st_size
            context.log.info(f"staged channel {name}: {len(files)} files, {size / 1e6:.1f} MB -> {self._uri(prefix)}")
            uris[name] = self._uri(prefix)
        return uris

    def _download_prefix(self, s3: Any, prefix: str, dest: Path) -> int:
        count = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self._staging().bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                target = dest / item["Key"][len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(self._staging().bucket, item["Key"], str(target))
                count += 1
        return count

    @staticmethod
    def _reported_result(messages: Any, where: str) -> dict[str, Any]:
        results = [m for m in messages if isinstance(m, dict)]
        if not results:
            raise dg.Failure(
                description=f"{where}: the trainer reported no result over Pipes; it must call "
                "pipes.report_custom_message(result) before exiting"
            )
        return results[-1]

    # ------------------------------------------------------------ in process

    def _run_in_process(
        self,
        context: dg.AssetExecutionContext,
        spec: Mapping[str, Any],
        channels: Mapping[str, Path],
        output_dir: Path,
        checkpoint_dir: Path | None,
        checkpoint_mirror: str | None = None,
    ) -> dict[str, Any]:
        from llm_assets.training.trainer import run_training

        local_spec = {
            **spec,
            "channels": {name: str(path) for name, path in channels.items()},
            "output_dir": str(output_dir),
            "checkpoint_dir": str(checkpoint_dir or output_dir.with_name(f"{output_dir.name}.checkpoints")),
        }
        if checkpoint_mirror:
            local_spec["checkpoint_mirror"] = checkpoint_mirror
        return run_training(local_spec, log=context.log.info)

    # ------------------------------------------------------------ Kubernetes

    def k8s_env(self) -> dict[str, str]:
        """Environment for the trainer pod: where S3 is; credentials come from the pod's service account."""
        staging = self._staging()
        env = {"PYTHONUNBUFFERED": "1"}
        if staging.region:
            env["AWS_REGION"] = staging.region
        if staging.endpoint_url:
            env["AWS_ENDPOINT_URL"] = staging.endpoint_url
        return env

    def _run_k8s(
        self,
        context: dg.AssetExecutionContext,
        job_name: str,
        spec: Mapping[str, Any],
        channels: Mapping[str, Path],
        output_dir: Path,
    ) -> dict[str, Any]:
        from dagster_k8s import PipesK8sClient

        if self.k8s is None:
            raise TrainingComputeError("backend 'k8s' needs the k8s settings (at least image)")
        s3 = self.boto3_client("s3")
        root = self._job_root(job_name)
        remote_spec = {
            **spec,
            "channels": self._stage_channels(context, s3, job_name, channels),
            "output_dir": self._uri(f"{root}/output/model/"),
            "checkpoint_mirror": self._uri(f"{root}/checkpoints/"),
        }
        launch = k8s_trainer_launch(
            self.k8s, command=self.command, env=self.k8s_env(), tags=context.op_execution_context.op.tags
        )
        client = PipesK8sClient(
            load_incluster_config=self.k8s.load_incluster_config,
            kubeconfig_file=self.k8s.kubeconfig_file,
            kube_context=self.k8s.kube_context,
            poll_interval=self.k8s.poll_interval_s,
        )
        try:
            invocation = client.run(
                context=context,
                extras={"spec": remote_spec},
                pod_wait_timeout=self.k8s.pod_wait_timeout_s,
                **launch.pipes_kwargs(),
            )
        except dg.Failure:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise dg.Failure(description=f"k8s trainer pod for {job_name} failed: {first}") from exc
        files = self._download_prefix(s3, f"{root}/output/model/", output_dir)
        context.log.info(f"downloaded {files} output files from {self._uri(f'{root}/output/model/')}")
        return self._reported_result(invocation.get_custom_messages(), f"k8s job {job_name}")

    # ------------------------------------------------------------ SageMaker

    def _run_sagemaker(
        self,
        context: dg.AssetExecutionContext,
        job_name: str,
        spec: Mapping[str, Any],
        channels: Mapping[str, Path],
        output_dir: Path,
    ) -> dict[str, Any]:
        from dagster_aws.pipes import PipesS3ContextInjector, PipesS3MessageReader

        settings = self.sagemaker
        if settings is None:
            raise TrainingComputeError("backend 'sagemaker' needs the sagemaker settings (role_arn, image_uri, ...)")
        staging = self._staging()
        s3 = self.boto3_client("s3")
        sagemaker = self.boto3_client("sagemaker")
        root = self._job_root(job_name)
        input_uris = self._stage_channels(context, s3, job_name, channels)
        prefix = staging.prefix.strip("/")
        output_path = self._uri(prefix) if prefix else f"s3://{staging.bucket}"
        with dg.open_pipes_session(
            context=context,
            context_injector=PipesS3ContextInjector(bucket=staging.bucket, client=s3, key_prefix=f"{root}/pipes/"),
            message_reader=PipesS3MessageReader(bucket=staging.bucket, client=s3, interval=settings.pipes_interval_s),
            extras={"spec": sagemaker_trainer_spec(spec, list(channels))},
        ) as session:
            request = sagemaker_training_request(
                settings,
                job_name=job_name,
                command=self.command,
                input_channels=input_uris,
                output_s3_uri=output_path,
                checkpoint_s3_uri=self._uri(f"{root}/checkpoints/"),
                environment=session.get_bootstrap_env_vars(),
                tags={"dagster/run_id": context.run.run_id},
            )
            sagemaker.create_training_job(**request)
            context.log.info(
                f"SageMaker training job {job_name} created: {settings.instance_count} x {settings.instance_type}"
                f"{', spot' if settings.use_spot else ''}, max run {settings.max_run_s}s"
            )
            job = self._wait_for_training_job(context, sagemaker, job_name, settings)
        status = job["TrainingJobStatus"]
        if status != "Completed":
            reason = " ".join(str(job.get("FailureReason") or "no FailureReason given").split())[:500]
            raise dg.Failure(
                description=f"SageMaker training job {job_name} {status}: {reason} "
                f"(logs: CloudWatch /aws/sagemaker/TrainingJobs/{job_name})",
                metadata={"training_job_arn": job.get("TrainingJobArn", "")},
            )
        artifact = (
            job.get("ModelArtifacts", {}).get("S3ModelArtifacts") or f"{output_path}/{job_name}/output/model.tar.gz"
        )
        self._extract_model(s3, artifact, output_dir)
        billable = job.get("BillableTimeInSeconds")
        context.log.info(
            f"SageMaker training job {job_name} completed; model extracted to {output_dir}"
            + (f"; billable {billable}s" if billable is not None else "")
        )
        return self._reported_result(session.get_custom_messages(), f"SageMaker job {job_name}")

    def _wait_for_training_job(
        self, context: dg.AssetExecutionContext, sagemaker: Any, job_name: str, settings: SageMakerBackendConfig
    ) -> dict[str, Any]:
        """Polls until the job ends; a timeout or an interrupted run stops the job so it stops billing."""
        timeout = settings.timeout_s or float((settings.max_wait_s or settings.max_run_s) + 3600)
        started = time.monotonic()
        last: tuple[str, str] | None = None
        try:
            while True:
                job: dict[str, Any] = sagemaker.describe_training_job(TrainingJobName=job_name)
                state = (job["TrainingJobStatus"], job.get("SecondaryStatus", ""))
                elapsed = time.monotonic() - started
                if state != last:
                    context.log.info(f"SageMaker training job {job_name}: {state[0]} / {state[1]} after {elapsed:.0f}s")
                    last = state
                if state[0] in _TERMINAL:
                    return job
                if elapsed > timeout:
                    raise dg.Failure(
                        description=f"SageMaker training job {job_name} still {state[0]} after {timeout:.0f}s; "
                        "stopped it. Raise sagemaker.timeout_s or max_run_s"
                    )
                time.sleep(settings.poll_interval_s)
        except BaseException:
            context.log.warning(f"stopping SageMaker training job {job_name}")
            with suppress(Exception):
                sagemaker.stop_training_job(TrainingJobName=job_name)
            raise

    def _extract_model(self, s3: Any, artifact_uri: str, output_dir: Path) -> None:
        bucket, _, key = artifact_uri.removeprefix("s3://").partition("/")
        with tempfile.TemporaryDirectory(prefix="llm-assets-model-") as scratch:
            archive = os.path.join(scratch, "model.tar.gz")
            try:
                s3.download_file(bucket, key, archive)
            except Exception as exc:
                raise dg.Failure(description=f"{artifact_uri}: cannot download the model archive ({exc})") from exc
            with tarfile.open(archive) as tar:
                tar.extractall(output_dir, filter="data")
