"""Builds the one Definitions object of the code location by merging the stages' definitions.

The lake backend is chosen here from the environment (`LLM_ASSETS_LAKE=s3` plus `LLM_ASSETS_S3_*`);
with nothing set, the embedded default is a local folder lake.
"""

from __future__ import annotations

import os

import dagster as dg

from llm_assets.defs.curation.definitions import curation_definitions
from llm_assets.defs.ingestion.definitions import ingestion_definitions
from llm_assets.defs.training.definitions import training_definitions
from llm_assets.resources.lake import LakeResource, LocalLakeResource, S3LakeResource


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


def build_definitions() -> dg.Definitions:
    stages = dg.Definitions.merge(ingestion_definitions(), curation_definitions(), training_definitions())
    return dg.Definitions.merge(stages, dg.Definitions(resources={"lake": lake_resource_from_env()}))


defs = build_definitions()
