"""TCO wiring: `tco_report` prices serving our model against hosted APIs from the price sheet and the latest
load test of the deployed endpoint, and writes the report (JSON and Markdown with its plot) to the lake."""

import hashlib
import json
from pathlib import Path

import dagster as dg
from pydantic import Field

from llm_assets.compliance.tco import (
    TcoError,
    Traffic,
    build_inputs,
    compute_tco,
    cost_plot,
    load_price_sheet,
    monthly_costs,
    one_line,
    read_measured_throughput,
    render_markdown,
)
from llm_assets.defs.audit_trail import record_materialization
from llm_assets.defs.curation.assets import code_version_of
from llm_assets.resources.lake import LakeResource

TCO_PREFIX = "compliance/tco"
_DEFAULT = Traffic()


class TcoConfig(dg.Config):
    """Traffic to price and where the prices come from (default: the dated sheet shipped with the package)."""

    input_tokens_per_day: float = Field(default=_DEFAULT.input_tokens_per_day, ge=0)
    output_tokens_per_day: float = Field(default=_DEFAULT.output_tokens_per_day, ge=0)
    monthly_multipliers: list[float] = Field(
        default_factory=lambda: list(_DEFAULT.monthly_multipliers),
        description="Twelve seasonality factors, January first, averaging 1.0.",
    )
    peak_hour_factor: float = Field(
        default=_DEFAULT.peak_hour_factor, ge=1, description="Busiest hour's rate / average hourly rate."
    )
    p99_latency_s: float = Field(default=5.0, gt=0, description="Latency SLO the throughput must hold at.")
    price_sheet: str | None = Field(default=None, description="Path of your own price sheet (same YAML shape).")
    endpoint: str = Field(default="llm-assets", description="Deployed endpoint whose load test gives throughput.")
    endpoint_instance: str | None = Field(
        default=None, description="Price-sheet instance the endpoint runs on (default: the sheet's)."
    )


@dg.asset(
    deps=["loadtest_report"],
    group_name="compliance",
    code_version="tco_report-v1",
    kinds={"json"},
)
def tco_report(context: dg.AssetExecutionContext, config: TcoConfig, lake: LakeResource) -> dg.MaterializeResult:
    """Monthly cost of serving ourselves vs each API, breakeven volumes and cost per 1M tokens, every assumption
    with its source."""
    storage = lake.storage()
    try:
        traffic = Traffic(
            input_tokens_per_day=config.input_tokens_per_day,
            output_tokens_per_day=config.output_tokens_per_day,
            monthly_multipliers=tuple(config.monthly_multipliers),
            peak_hour_factor=config.peak_hour_factor,
            source="tco_report config",
        )
        sheet, label = load_price_sheet(Path(config.price_sheet) if config.price_sheet else None)
        measured, why = read_measured_throughput(storage, config.endpoint, config.p99_latency_s)
        context.log.info(f"throughput of {config.endpoint}: {why}")
        inputs = build_inputs(
            sheet,
            traffic,
            sheet_label=label,
            p99_latency_s=config.p99_latency_s,
            endpoint=config.endpoint,
            endpoint_instance=config.endpoint_instance,
            measured=measured,
            measured_note=why,
        )
        report = compute_tco(inputs)
    except (TcoError, ValueError) as exc:
        raise dg.Failure(one_line(exc)) from exc
    payload = json.dumps(report.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    version = hashlib.sha256(payload).hexdigest()
    plot = cost_plot(inputs, report)
    prefix = f"{TCO_PREFIX}/{version[:16]}"
    storage.write_bytes(f"{prefix}/report.json", payload)
    storage.write_bytes(f"{prefix}/report.md", render_markdown(report, plot).encode())
    record_materialization(
        context,
        storage,
        code_version=code_version_of(context),
        input_data_versions={"loadtest_report": measured.key} if measured else {},
        output_data_version=version,
        counts={"options": len(report.options), "breakevens": len(report.breakevens)},
        config=config.model_dump(),
    )
    breakevens = {f"{b.self_hosted} vs {b.api}": b.tokens_per_day for b in report.breakevens}
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "report": storage.uri(f"{prefix}/report.json"),
            "report_md": storage.uri(f"{prefix}/report.md"),
            "monthly_cost_usd": dg.MetadataValue.json(dict(monthly_costs(report))),
            "breakeven_tokens_per_day": dg.MetadataValue.json(breakevens),
            "cheapest": report.cheapest,
            "throughput_source": why,
            "cost_plot": dg.MetadataValue.md(plot),
        },
    )


def tco_definitions() -> dg.Definitions:
    return dg.Definitions(assets=[tco_report])
