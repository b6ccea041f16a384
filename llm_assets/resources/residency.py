"""The residency policy as a Dagster resource: the blocking `residency_compliant` checks evaluate each
materialisation's attestation against it."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from llm_assets.compliance.residency import ResidencyPolicy, load_policy


class ResidencyResource(dg.ConfigurableResource):
    """Which policy applies: a bundled one (`local`, the embedded default; `eu-sovereign`) or a YAML file.

    The definitions take it from `$LLM_ASSETS_RESIDENCY_POLICY`; the policy's name, version and hash are
    recorded with every check, so a report shows which rules a model was built under.
    """

    policy: str = Field(default="local", description="Bundled policy name or path to a policy YAML file.")

    def load(self) -> ResidencyPolicy:
        return load_policy(self.policy)
