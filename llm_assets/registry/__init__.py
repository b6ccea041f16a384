"""The model registry: versions, approvals, deployments and rollbacks as an append-only log in the lake."""

from llm_assets.registry.store import (
    APPROVED,
    CANDIDATE,
    DEPLOYED,
    RETIRED,
    ModelRegistry,
    RegistryEntry,
    RegistryError,
    export_mlflow,
)

__all__ = [
    "APPROVED",
    "CANDIDATE",
    "DEPLOYED",
    "RETIRED",
    "ModelRegistry",
    "RegistryEntry",
    "RegistryError",
    "export_mlflow",
]
