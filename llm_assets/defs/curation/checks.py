"""Check results shared by the curation assets: counts reconcile, removal-rate guardrail."""

import dagster as dg

from llm_assets.curation.pipeline import StageRun, input_manifest, rejects_dataset
from llm_assets.defs.audit_trail import record_check
from llm_assets.lake import LakeStorage, read_manifest


def counts_reconcile(
    context: dg.AssetExecutionContext, storage: LakeStorage, run: StageRun, input_dataset: str
) -> dg.AssetCheckResult:
    """Re-reads input, kept and reject manifests from the lake: in == kept + rejected for every source."""
    problems = []
    figures: dict[str, int] = {"in": 0, "kept": 0, "rejected": 0}
    for source in sorted(run.manifests):
        rows_in = input_manifest(storage, input_dataset, source).rows
        kept_manifest = read_manifest(storage, run.dataset, source)
        reject_manifest = read_manifest(storage, rejects_dataset(run.dataset), source)
        kept = kept_manifest.rows if kept_manifest else -1
        rejected = reject_manifest.rows if reject_manifest else -1
        figures["in"] += rows_in
        figures["kept"] += kept
        figures["rejected"] += rejected
        if kept < 0 or rejected < 0 or rows_in != kept + rejected:
            problems.append(f"{source}: {rows_in} in != {kept} kept + {rejected} rejected")
    passed = not problems
    record_check(
        context, storage, check_name="counts_reconcile", passed=passed, data_version=run.data_version, figures=figures
    )
    return dg.AssetCheckResult(
        check_name="counts_reconcile",
        passed=passed,
        metadata={**{k: dg.MetadataValue.int(v) for k, v in figures.items()}, "problems": "; ".join(problems)},
    )


def removal_guardrail(
    context: dg.AssetExecutionContext,
    storage: LakeStorage,
    run: StageRun,
    min_removal_fraction: float,
    max_removal_fraction: float,
) -> dg.AssetCheckResult:
    """Fails when a stage removes more (or less) than its configured band, per source and overall."""
    fractions = {source: run.removal_fraction(source) for source in sorted(run.rows_in)}
    outside = {
        s: f for s, f in fractions.items() if run.rows_in[s] and not min_removal_fraction <= f <= max_removal_fraction
    }
    passed = not outside
    figures = {
        "removed_fraction": round(run.removal_fraction(), 6),
        "band": [min_removal_fraction, max_removal_fraction],
        "per_source": {s: round(f, 6) for s, f in fractions.items()},
    }
    record_check(
        context, storage, check_name="removal_guardrail", passed=passed, data_version=run.data_version, figures=figures
    )
    return dg.AssetCheckResult(
        check_name="removal_guardrail",
        passed=passed,
        metadata={
            "removed_fraction": dg.MetadataValue.float(figures["removed_fraction"]),  # type: ignore[arg-type]
            "band": f"{min_removal_fraction:.2%} .. {max_removal_fraction:.2%}",
            "per_source": dg.MetadataValue.json(figures["per_source"]),
        },
        description=None
        if passed
        else "removal outside band: " + ", ".join(f"{s} {f:.1%}" for s, f in outside.items()),
    )


def check_specs(asset: str, *extra: dg.AssetCheckSpec) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "counts_reconcile",
            asset=asset,
            blocking=True,
            description="in == kept + rejected for every source, re-read from the lake manifests.",
        ),
        dg.AssetCheckSpec(
            "removal_guardrail",
            asset=asset,
            blocking=True,
            description="The stage removed a share of records inside its configured band.",
        ),
        *extra,
    ]
