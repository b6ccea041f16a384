"""The lake as a Dagster resource: a local folder by default, S3 with SSE-KMS in production.

Assets depend on `LakeResource` and never on a concrete backend, so the same code runs on a laptop and
in a cluster; `definitions.py` picks the implementation from configuration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import dagster as dg
from pydantic import Field

from llm_assets.lake import LakeStorage, LocalLakeStorage, S3LakeStorage
from llm_assets.paths import local_lake_root


class LakeResource(dg.ConfigurableResource, ABC):
    """Where every shard, manifest, landing file and the audit trail live."""

    @abstractmethod
    def storage(self) -> LakeStorage:
        """The pure storage object that the lake, ingestion and audit modules work with."""


class LocalLakeResource(LakeResource):
    """A lake in a local folder (default: `.lake/` in the project home)."""

    root: str = Field(default_factory=lambda: str(local_lake_root()), description="Folder of the lake.")

    def storage(self) -> LakeStorage:
        return LocalLakeStorage(self.root)


class S3LakeResource(LakeResource):
    """A lake under an S3 prefix; every object is written with SSE-KMS under `kms_key_id`."""

    bucket: str = Field(description="Bucket that holds the lake.")
    prefix: str = Field(default="", description="Key prefix of the lake inside the bucket.")
    kms_key_id: str = Field(description="KMS key id/ARN; required, the lake never stores unencrypted data.")
    region: str | None = Field(default=None, description="AWS region of the bucket.")
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (tests, on-premise).")

    def storage(self) -> LakeStorage:
        return S3LakeStorage(
            self.bucket,
            kms_key_id=self.kms_key_id,
            prefix=self.prefix,
            region=self.region,
            endpoint_url=self.endpoint_url,
        )
