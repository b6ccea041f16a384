"""`llm-assets lineage ASSET`: the upstream chain of one asset version, for compliance staff.

It only reads (the audit trail, manifests, source descriptors, the registry's event logs) and never opens
the Dagster instance, so it runs with read-only lake credentials and no database access.
"""

from __future__ import annotations

from pathlib import Path

import click

from llm_assets.compliance.lineage import (
    LineageError,
    build_lineage,
    to_html,
    to_json,
    to_markdown,
    validate_lineage,
)
from llm_assets.lake import LakeStorage

RENDERERS = {"json": to_json, "md": to_markdown, "html": to_html}


def _configured_lake() -> LakeStorage:
    from llm_assets.definitions import lake_resource_from_env

    return lake_resource_from_env().storage()


@click.command("lineage")
@click.argument("asset")
@click.option("--partition", help="Partition of a partitioned asset (source, task, candidate or day).")
@click.option("--version", help="Data version or a prefix of it; default: the newest recorded version.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(RENDERERS)),
    default="md",
    show_default=True,
    help="json: the document (validated against its schema); md or html: the readable report.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this local file instead of standard output (never into the lake).",
)
def lineage(asset: str, partition: str | None, version: str | None, fmt: str, out: Path | None) -> None:
    """Which data, which policy, who approved and where it ran, for one version of ASSET.

    Follows the audit trail from ASSET back to the raw sources and names every version on the way, with
    code versions, runs, counts and checks; source licences and jurisdictions; the PII policy and its hit
    and reject counts; curation retention; the SFT data manifest; eval figures and gates; and for a model,
    its approvals, deployments and serving periods. What the record lacks is listed as a gap.

    Read-only: it reads the configured lake (LLM_ASSETS_LAKE and friends, as every command) and writes
    nothing there, and it never opens the Dagster instance, so credentials that may only read the lake
    (s3:GetObject, s3:ListBucket, kms:Decrypt) are enough. Check the trail itself with
    `llm-assets audit verify`, equally read-only.
    """
    from llm_assets.audit import AuditLog
    from llm_assets.ingestion.descriptor import IngestError
    from llm_assets.lake import LakeError
    from llm_assets.registry import ModelRegistry, RegistryError

    try:
        storage = _configured_lake()
        doc = build_lineage(
            asset, partition, version, audit=AuditLog(storage), storage=storage, registry=ModelRegistry(storage)
        )
        validate_lineage(doc)
    except (LineageError, LakeError, IngestError, RegistryError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise click.ClickException(message) from exc
    text = RENDERERS[fmt](doc)
    if out is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out} ({fmt}, {len(doc['nodes'])} versions in the chain, {len(doc['gaps'])} gaps)")
