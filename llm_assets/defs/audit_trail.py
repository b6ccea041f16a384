"""Writes one audit record per materialisation and per check, from inside the asset or check body.

The record says what was built (asset, partition, versions, counts), from what (input data versions),
how (code version, config hash) and by whom (run id, run tags, OS user), so compliance staff can trace
any version without asking an engineer.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import dagster as dg

from llm_assets.audit import AuditLog
from llm_assets.compliance.residency import attestation
from llm_assets.lake import LakeStorage

RESIDENCY_METADATA_KEY = "residency/attestation"
AUDIT_VERSION_METADATA_KEY = "audit/output_data_version"


def config_hash(*parts: Any) -> str:
    """A stable hash of the configuration that shaped a result (asset config, resource location)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_identity(context: dg.AssetExecutionContext) -> dict[str, Any]:
    """Who launched the run: Dagster's user tag when there is one, else the OS user, plus the run tags."""
    tags = dict(context.run.tags)
    user = tags.get("dagster/user") or tags.get("user") or getpass.getuser()
    return {"user": user, "run_tags": {k: v for k, v in tags.items() if not k.startswith(".dagster")}}


def record_materialization(
    context: dg.AssetExecutionContext,
    storage: LakeStorage,
    *,
    code_version: str,
    input_data_versions: Mapping[str, str],
    output_data_version: str,
    counts: Mapping[str, int],
    config: Any,
) -> dict[str, Any]:
    """Appends the materialisation's audit record, with its residency attestation (where it stored, where it
    computed, which hosts it contacted), which also goes into the asset's metadata for the residency check."""
    facts = attestation(storage.describe_location())
    context.add_asset_metadata(
        {RESIDENCY_METADATA_KEY: dg.MetadataValue.json(facts), AUDIT_VERSION_METADATA_KEY: output_data_version},
        partition_key=context.partition_key if context.has_partition_key else None,
    )
    return AuditLog(storage).append(
        {
            "event": "materialization",
            "asset_key": context.asset_key.to_user_string(),
            "partition": context.partition_key if context.has_partition_key else None,
            "run_id": context.run.run_id,
            "code_version": code_version,
            "input_data_versions": dict(input_data_versions),
            "output_data_version": output_data_version,
            "counts": dict(counts),
            "config_hash": config_hash(config, storage.describe_location()),
            "storage": storage.describe_location(),
            "residency": facts,
            "who": run_identity(context),
        }
    )


def record_check(
    context: dg.AssetExecutionContext,
    storage: LakeStorage,
    *,
    check_name: str,
    passed: bool,
    data_version: str,
    figures: Mapping[str, Any],
) -> dict[str, Any]:
    return AuditLog(storage).append(
        {
            "event": "check",
            "asset_key": context.asset_key.to_user_string(),
            "partition": context.partition_key if context.has_partition_key else None,
            "check": check_name,
            "passed": passed,
            "run_id": context.run.run_id,
            "data_version": data_version,
            "figures": dict(figures),
            "who": run_identity(context),
        }
    )
