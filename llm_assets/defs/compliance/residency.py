"""`residency_compliant`: one blocking check per asset, evaluating its attestation against the residency policy.

Every asset body records an attestation (`record_materialization`: storage, compute, contacted hosts) in its
materialisation metadata. This check reads the attestations of the asset's materialisations in the current
run and fails with ERROR when any leaves the policy's area, so Dagster does not build anything downstream
in that run. The verdict, with the policy's name, version and hash, goes to the audit trail.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg

from llm_assets.audit import AuditLog
from llm_assets.compliance.residency import ResidencyError, verdict
from llm_assets.defs.audit_trail import AUDIT_VERSION_METADATA_KEY, RESIDENCY_METADATA_KEY, run_identity
from llm_assets.resources.lake import LakeResource
from llm_assets.resources.residency import ResidencyResource

RESIDENCY_CHECK = "residency_compliant"


def attestations_in_run(
    instance: dg.DagsterInstance, run_id: str, asset_key: dg.AssetKey
) -> list[tuple[str | None, str | None, dict[str, Any] | None]]:
    """(partition, data version, attestation or None) of every materialisation of `asset_key` in the run."""
    found: list[tuple[str | None, str | None, dict[str, Any] | None]] = []
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in records:
        mat = record.asset_materialization
        if mat is None or mat.asset_key != asset_key:
            continue
        value = mat.metadata.get(RESIDENCY_METADATA_KEY)
        facts = value.value if isinstance(value, dg.JsonMetadataValue) else None
        # The version the audit record names (some assets tag Dagster's data version with more, e.g. a status).
        audited = mat.metadata.get(AUDIT_VERSION_METADATA_KEY)
        version = str(audited.value) if audited is not None else (mat.tags or {}).get("dagster/data_version")
        found.append((mat.partition, version, facts))  # type: ignore[arg-type]
    return found


def _residency_check(asset_key: dg.AssetKey) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset_key,
        name=RESIDENCY_CHECK,
        blocking=True,
        description="Where this materialisation stored data, computed and connected is inside the residency "
        "policy ($LLM_ASSETS_RESIDENCY_POLICY, default 'local'); on failure nothing downstream is built.",
    )
    def _check(
        context: dg.AssetCheckExecutionContext, residency: ResidencyResource, lake: LakeResource
    ) -> dg.AssetCheckResult:
        try:
            policy = residency.load()
        except ResidencyError as exc:
            raise dg.Failure(str(exc)) from None
        seen = attestations_in_run(context.instance, context.run.run_id, asset_key)
        problems: list[str] = []
        evaluated: list[dict[str, Any]] = []
        for partition, data_version, facts in seen:
            where = f"partition {partition}" if partition else "the materialisation"
            if facts is None:
                problems.append(f"{where} recorded no residency attestation")
                continue
            result = verdict(facts, policy)
            problems.extend(f"{where}: {v}" for v in result["violations"])
            evaluated.append({"partition": partition, "data_version": data_version, "compliant": result["compliant"]})
        if not seen:
            problems.append("no materialisation of this asset in this run to attest")
        passed = not problems
        storage = lake.storage()
        AuditLog(storage).append(
            {
                "event": "check",
                "asset_key": asset_key.to_user_string(),
                "partition": seen[0][0] if len(seen) == 1 else None,
                "check": RESIDENCY_CHECK,
                "passed": passed,
                "run_id": context.run.run_id,
                "data_version": seen[0][1] if len(seen) == 1 else None,
                "figures": {"policy": policy.summary(), "violations": problems, "materialisations": evaluated},
                "who": run_identity(context),  # type: ignore[arg-type]
            }
        )
        if not passed:
            context.log.error(f"{asset_key.to_user_string()} residency: " + "; ".join(problems))
        return dg.AssetCheckResult(
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "policy": f"{policy.name} v{policy.version}",
                "policy_sha256": policy.digest(),
                "violations": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
                "materialisations_checked": len(evaluated),
            },
        )

    return _check


def residency_checks(asset_keys: Iterable[dg.AssetKey]) -> Sequence[dg.AssetChecksDefinition]:
    """A `residency_compliant` check for each asset the code location materialises."""
    return [_residency_check(key) for key in sorted(asset_keys, key=lambda k: k.to_user_string())]
