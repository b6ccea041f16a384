"""Builds the one Definitions object of the code location by merging the stages' definitions.

The lake backend is chosen here from the environment (`LLM_ASSETS_LAKE=s3` plus `LLM_ASSETS_S3_*`);
with nothing set, the embedded default is a local folder lake.
"""

from __future__ import annotations

import os

import dagster as dg

from llm_assets.defs.compliance.lineage import compliance_lineage_definitions
from llm_assets.defs.compliance.residency import residency_checks
from llm_assets.defs.compliance.tco import tco_definitions
from llm_assets.defs.curation.definitions import curation_definitions
from llm_assets.defs.evaluation.definitions import evaluation_definitions
from llm_assets.defs.ingestion.definitions import ingestion_definitions
from llm_assets.defs.monitoring.drift import monitoring_definitions
from llm_assets.defs.registry.assets import registry_definitions
from llm_assets.defs.serving.assets import serving_definitions
from llm_assets.defs.training.definitions import training_definitions
from llm_assets.resources.alerts import AlertsResource
from llm_assets.resources.endpoint import InferenceEndpoint
from llm_assets.resources.lake import LakeResource, LocalLakeResource, S3LakeResource
from llm_assets.resources.residency import ResidencyResource
from llm_assets.resources.training_compute import (
    K8sBackendConfig,
    S3StagingConfig,
    SageMakerBackendConfig,
    TrainingCompute,
)


def lake_resource_from_env() -> LakeResource:
    backend = os.environ.get("LLM_ASSETS_LAKE", "local").lower()
    if backend == "local":
        root = os.environ.get("LLM_ASSETS_LAKE_ROOT")
        return LocalLakeResource(root=root) if root else LocalLakeResource()
    if backend == "s3":
        return S3LakeResource(
            bucket=dg.EnvVar("LLM_ASSETS_S3_BUCKET"),
            prefix=os.environ.get("LLM_ASSETS_S3_PREFIX", ""),
            kms_key_id=dg.EnvVar("LLM_ASSETS_S3_KMS_KEY_ID"),
            region=os.environ.get("AWS_REGION"),
            endpoint_url=os.environ.get("LLM_ASSETS_S3_ENDPOINT_URL"),
        )
    raise ValueError(f"LLM_ASSETS_LAKE={backend!r} is not a lake backend; use 'local' or 's3'")


def _csv(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def training_compute_from_env() -> TrainingCompute:
    """In process by default; `LLM_ASSETS_TRAINING_BACKEND=k8s|sagemaker` plus `LLM_ASSETS_TRAINER_*` for the rest.

    Remote backends stage channels in `LLM_ASSETS_TRAINING_BUCKET` under SSE-KMS; credentials come from the
    environment (instance role, IRSA), never from here. deploy/README.md lists every variable.
    """
    backend = os.environ.get("LLM_ASSETS_TRAINING_BACKEND", "in_process").lower()
    if backend == "in_process":
        return TrainingCompute()
    if backend not in ("k8s", "sagemaker"):
        raise ValueError(f"LLM_ASSETS_TRAINING_BACKEND={backend!r}: use in_process, k8s or sagemaker")
    env = os.environ
    staging = S3StagingConfig(
        bucket=env["LLM_ASSETS_TRAINING_BUCKET"],
        prefix=env.get("LLM_ASSETS_TRAINING_PREFIX", "training-jobs"),
        kms_key_id=env["LLM_ASSETS_TRAINING_KMS_KEY_ID"],
        region=env.get("AWS_REGION"),
    )
    if backend == "k8s":
        return TrainingCompute(
            backend="k8s",
            staging=staging,
            k8s=K8sBackendConfig(
                image=env["LLM_ASSETS_TRAINER_IMAGE"],
                namespace=env.get("LLM_ASSETS_TRAINER_NAMESPACE", "default"),
                service_account_name=env.get("LLM_ASSETS_TRAINER_SERVICE_ACCOUNT"),
                gpus=int(env.get("LLM_ASSETS_TRAINER_GPUS", "1")),
            ),
        )
    return TrainingCompute(
        backend="sagemaker",
        staging=staging,
        sagemaker=SageMakerBackendConfig(
            role_arn=env["LLM_ASSETS_SAGEMAKER_ROLE_ARN"],
            image_uri=env["LLM_ASSETS_TRAINER_IMAGE"],
            instance_type=env.get("LLM_ASSETS_SAGEMAKER_INSTANCE_TYPE", "ml.g5.2xlarge"),
            kms_key_id=env["LLM_ASSETS_TRAINING_KMS_KEY_ID"],
            use_spot=env.get("LLM_ASSETS_SAGEMAKER_SPOT", "true").lower() == "true",
            max_run_s=int(env.get("LLM_ASSETS_SAGEMAKER_MAX_RUN_S", "86400")),
            max_wait_s=int(env.get("LLM_ASSETS_SAGEMAKER_MAX_WAIT_S", "172800")),
            subnets=_csv("LLM_ASSETS_SAGEMAKER_SUBNETS"),
            security_group_ids=_csv("LLM_ASSETS_SAGEMAKER_SECURITY_GROUPS"),
        ),
    )


def inference_endpoint_from_env() -> InferenceEndpoint:
    """The OpenAI-compatible server assets call (LLM eval-item generation, endpoint evals): vLLM or the reference
    server. `LLM_ASSETS_ENDPOINT_URL` (default http://127.0.0.1:8000/v1), `LLM_ASSETS_ENDPOINT_MODEL` (the served
    model name) and `LLM_ASSETS_ENDPOINT_API_KEY_ENV` (the NAME of the variable holding a key, for remote servers).
    Nothing contacts it unless an asset is configured to.
    """
    env = os.environ
    return InferenceEndpoint(
        base_url=env.get("LLM_ASSETS_ENDPOINT_URL", "http://127.0.0.1:8000/v1"),
        model=env.get("LLM_ASSETS_ENDPOINT_MODEL", "llm-assets"),
        api_key_env=env.get("LLM_ASSETS_ENDPOINT_API_KEY_ENV") or None,
    )


def executor_from_env() -> dg.ExecutorDefinition | None:
    """`LLM_ASSETS_EXECUTOR=k8s`: every step in its own Kubernetes Job (dagster-k8s; per-step GPU config in
    deploy/k8s/executor.yaml). Unset or `default`: Dagster's default (steps as processes of the run)."""
    name = os.environ.get("LLM_ASSETS_EXECUTOR", "default").lower()
    if name == "default":
        return None
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"LLM_ASSETS_EXECUTOR={name!r} is not an executor; use 'default' or 'k8s'")


def build_definitions() -> dg.Definitions:
    stages = dg.Definitions.merge(
        ingestion_definitions(),
        curation_definitions(),
        training_definitions(),
        evaluation_definitions(),
        registry_definitions(),
        serving_definitions(),
        monitoring_definitions(),
        compliance_lineage_definitions(),
        tco_definitions(),
    )
    materialised = {
        key
        for item in stages.assets or []
        if isinstance(item, dg.AssetsDefinition) and item.is_materializable
        for key in item.keys
    }
    return dg.Definitions.merge(
        stages,
        dg.Definitions(
            asset_checks=residency_checks(materialised),
            resources={
                "lake": lake_resource_from_env(),
                "training_compute": training_compute_from_env(),
                "inference_endpoint": inference_endpoint_from_env(),
                # A bundled policy name (local, eu-sovereign) or a policy YAML file.
                "residency": ResidencyResource(policy=os.environ.get("LLM_ASSETS_RESIDENCY_POLICY", "local")),
                # LLM_ASSETS_ALERTS=webhook posts to the URL in $LLM_ASSETS_ALERT_WEBHOOK_URL; default: the log.
                "alerts": AlertsResource(
                    backend="webhook" if os.environ.get("LLM_ASSETS_ALERTS") == "webhook" else "log"
                ),
            },
            executor=executor_from_env(),
        ),
    )


defs = build_definitions()
