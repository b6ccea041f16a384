"""`llm-assets tco`: the TCO report from the command line, the same figures as the `tco_report` asset."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import click

from llm_assets.compliance.tco import (
    TcoError,
    Traffic,
    build_inputs,
    compute_tco,
    cost_plot,
    load_price_sheet,
    one_line,
    read_measured_throughput,
    render_markdown,
)
from llm_assets.lake import LakeStorage

_DEFAULT = Traffic()


class TcoUsageError(click.ClickException):
    """A problem with the inputs, printed as one line."""

    def format_message(self) -> str:
        return self.message


def _multipliers(text: str | None) -> tuple[float, ...]:
    if text is None:
        return _DEFAULT.monthly_multipliers
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise TcoUsageError(f"--monthly-multipliers: {text!r} is not 12 comma-separated numbers") from exc


def _lake_storage() -> LakeStorage:
    """The lake the main CLI is configured for (LLM_ASSETS_LAKE...). Imported by name at call time: the main CLI
    imports this module to register the command, and this module must not pull the whole platform in with it."""
    try:
        storage: LakeStorage = importlib.import_module("llm_assets.cli")._lake_storage()
    except (ImportError, AttributeError):
        storage = importlib.import_module("llm_assets.definitions").lake_resource_from_env().storage()
    return storage


@click.command("tco")
@click.option("--input-tokens-per-day", type=float, default=_DEFAULT.input_tokens_per_day, show_default=True)
@click.option("--output-tokens-per-day", type=float, default=_DEFAULT.output_tokens_per_day, show_default=True)
@click.option("--monthly-multipliers", help="12 comma-separated seasonality factors, January first, averaging 1.0.")
@click.option(
    "--peak-hour-factor",
    type=float,
    default=_DEFAULT.peak_hour_factor,
    show_default=True,
    help="Busiest hour's token rate / the day's average hourly rate.",
)
@click.option("--p99-latency-s", type=float, default=5.0, show_default=True, help="Latency SLO.")
@click.option(
    "--price-sheet",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Your own price sheet (YAML, same shape as the default llm_assets/compliance/price_sheet.yaml).",
)
@click.option(
    "--lake/--no-lake",
    default=True,
    show_default=True,
    help="Use the deployed endpoint's measured throughput from the configured lake.",
)
@click.option("--endpoint", default="llm-assets", show_default=True, help="Deployed endpoint's name.")
@click.option("--endpoint-instance", help="Price-sheet instance the endpoint runs on (default: the sheet's).")
@click.option("--format", "fmt", type=click.Choice(["json", "md"]), default="md", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the report here (Markdown embeds the plot) instead of printing it.",
)
def tco(
    input_tokens_per_day: float,
    output_tokens_per_day: float,
    monthly_multipliers: str | None,
    peak_hour_factor: float,
    p99_latency_s: float,
    price_sheet: Path | None,
    lake: bool,
    endpoint: str,
    endpoint_instance: str | None,
    fmt: str,
    out: Path | None,
) -> None:
    """Monthly cost of serving our model vs hosted APIs, breakeven volumes and every assumption."""
    try:
        traffic = Traffic(
            input_tokens_per_day=input_tokens_per_day,
            output_tokens_per_day=output_tokens_per_day,
            monthly_multipliers=_multipliers(monthly_multipliers),
            peak_hour_factor=peak_hour_factor,
            source="command line",
        )
        sheet, label = load_price_sheet(price_sheet)
        measured, why = None, "not read (--no-lake)"
        if lake:
            measured, why = read_measured_throughput(_lake_storage(), endpoint, p99_latency_s)
        inputs = build_inputs(
            sheet,
            traffic,
            sheet_label=label,
            p99_latency_s=p99_latency_s,
            endpoint=endpoint,
            endpoint_instance=endpoint_instance,
            measured=measured,
            measured_note=why,
        )
        report = compute_tco(inputs)
    except (TcoError, ValueError) as exc:
        raise TcoUsageError(one_line(exc)) from exc
    if fmt == "json":
        text = json.dumps(report.model_dump(mode="json"), indent=2) + "\n"
    else:
        text = render_markdown(report, cost_plot(inputs, report) if out else None)
    if out is None:
        click.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out} (cheapest at {traffic.tokens_per_day:,.0f} tokens/day: {report.cheapest})")
