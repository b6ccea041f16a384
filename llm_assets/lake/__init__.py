"""The lake: atomic byte storage (local folder or SSE-KMS S3) and Parquet shard datasets on top of it."""

from llm_assets.lake.shards import (
    DatasetManifest,
    ShardInfo,
    ShardWriter,
    iter_shards,
    manifest_key,
    read_dataset,
    read_manifest,
    write_table,
)
from llm_assets.lake.storage import (
    LakeConfigError,
    LakeError,
    LakeKeyNotFound,
    LakeStorage,
    LocalLakeStorage,
    ObjectInfo,
    S3LakeStorage,
)

__all__ = [
    "DatasetManifest",
    "LakeConfigError",
    "LakeError",
    "LakeKeyNotFound",
    "LakeStorage",
    "LocalLakeStorage",
    "ObjectInfo",
    "S3LakeStorage",
    "ShardInfo",
    "ShardWriter",
    "iter_shards",
    "manifest_key",
    "read_dataset",
    "read_manifest",
    "write_table",
]
