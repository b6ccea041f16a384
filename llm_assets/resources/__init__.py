"""One ConfigurableResource per external system; each has a local implementation for the embedded default."""

from llm_assets.resources.endpoint import EndpointError, InferenceEndpoint
from llm_assets.resources.lake import LakeResource, LocalLakeResource, S3LakeResource
from llm_assets.resources.residency import ResidencyResource
from llm_assets.resources.training_compute import TrainingCompute

__all__ = [
    "EndpointError",
    "InferenceEndpoint",
    "LakeResource",
    "LocalLakeResource",
    "ResidencyResource",
    "S3LakeResource",
    "TrainingCompute",
]
