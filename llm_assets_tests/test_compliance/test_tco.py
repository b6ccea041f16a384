"""TCO: the cost model against hand-computed cases, the price sheet, measured throughput, the asset and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_assets.audit import AuditLog
from llm_assets.compliance.tco import (
    SELF_HOSTING_FIELDS,
    ApiOption,
    FixedCosts,
    SelfHostedOption,
    TcoError,
    TcoInputs,
    Traffic,
    api_average_usd,
    breakeven,
    build_inputs,
    compute_tco,
    load_price_sheet,
    read_measured_throughput,
    render_markdown,
    self_hosted_average_usd,
    self_hosting_cheaper,
)
from llm_assets.compliance.tco_cli import tco
from llm_assets.defs.compliance.tco import TcoConfig, tco_report
from llm_assets.lake import LocalLakeStorage

NO_FIXED = FixedCosts(training_runs_per_month=0, staff_cost_per_month_usd=0, operations_share=0)


def output_only(tokens_per_day: float, multipliers: tuple[float, ...] = (1.0,) * 12) -> Traffic:
    return Traffic(
        input_tokens_per_day=0,
        output_tokens_per_day=tokens_per_day,
        monthly_multipliers=multipliers,
        peak_hour_factor=1,
    )


def api(usd_per_1m_output: float, usd_per_1m_input: float = 0.0) -> ApiOption:
    return ApiOption(
        name="api", usd_per_1m_input=usd_per_1m_input, usd_per_1m_output=usd_per_1m_output, source="test", date="t"
    )


def fleet(**overrides: float | int | None) -> SelfHostedOption:
    # 1,000 output tokens/s x 0.5 utilisation = 500 tokens/s = 43,200,000 tokens/day per instance, at $1/h
    values: dict = {
        "name": "fleet",
        "instance_type": "test.1gpu",
        "gpus": 1,
        "on_demand_usd_per_hour": 1.0,
        "output_tokens_per_s": 1000.0,
        "utilisation": 0.5,
        "min_instances": 1,
        "source": "test",
        "date": "t",
        "throughput_source": "test",
    }
    return SelfHostedOption(**(values | overrides))


def self_cheaper(option: SelfHostedOption, api_option: ApiOption, fixed: FixedCosts, tokens: float) -> bool:
    return self_hosting_cheaper(option, api_option, fixed, output_only(tokens))


def test_hand_computed_monthly_costs_and_cost_per_million() -> None:
    # 50M output tokens/day at $2 per 1M: 50 x $2 = $100/day; x 365/12 days = $3,041.67 per month.
    # Fleet: 50,000,000 / 86,400 s = 578.7 tokens/s at the peak hour (factor 1) / 500 per instance = 1.157 -> 2
    # instances; 2 x 730 h x $1/h = $1,460 per month, no fixed costs.
    inputs = TcoInputs(traffic=output_only(50_000_000), apis=(api(2.0),), self_hosted=(fleet(),), fixed=NO_FIXED)
    report = compute_tco(inputs)
    costs = {o.name: o for o in report.options}
    assert costs["api"].monthly_usd_average == pytest.approx(3041.6667, abs=0.01)
    assert costs["api"].usd_per_1m_tokens == pytest.approx(2.0)
    assert costs["fleet"].instances_by_month == (2,) * 12
    assert costs["fleet"].monthly_usd_average == pytest.approx(1460.0)
    # $1,460 / (50M x 365/12 / 1M = 1,520.83M tokens) = $0.96 per 1M tokens
    assert costs["fleet"].usd_per_1m_tokens == pytest.approx(0.96)
    assert report.cheapest == "fleet"
    assert report.tokens_per_month == pytest.approx(50_000_000 * 365 / 12)


def test_blended_api_price_with_input_and_output() -> None:
    # 30M input at $0.15 + 10M output at $0.60 = $4.50 + $6.00 = $10.50/day; x 365/12 = $319.375 per month;
    # per 1M tokens: $10.50 / 40M = $0.2625
    traffic = Traffic(input_tokens_per_day=30e6, output_tokens_per_day=10e6)
    option = api(0.60, usd_per_1m_input=0.15)
    assert api_average_usd(option, traffic) == pytest.approx(319.375)
    assert option.usd_per_token(traffic) * 1e6 == pytest.approx(0.2625)


def test_breakeven_at_the_hand_computed_crossing() -> None:
    # API at $2 per 1M: a = 2e-6 x 365/12 = $6.0833e-5 per (token/day) per month. One instance (up to 43.2M/day)
    # costs 730 h x $1 = $730, so they cross at 730 / 6.0833e-5 = 8,760 / 0.00073 = 12,000,000 tokens/day.
    be = breakeven(fleet(), api(2.0), NO_FIXED, output_only(50_000_000))
    assert be.tokens_per_day == 12_000_001
    assert be.always_cheaper_from_tokens_per_day == 12_000_001
    assert not self_cheaper(fleet(), api(2.0), NO_FIXED, 11_999_999)  # API cheaper one token/day below
    assert self_cheaper(fleet(), api(2.0), NO_FIXED, 12_000_001)  # self-hosting cheaper one above
    assert be.cheaper_at_current_traffic == "fleet"


def test_breakeven_with_a_ceil_step_that_makes_the_api_cheaper_again() -> None:
    # API at $1 per 1M: a = $3.041667e-5. One instance ($730) crosses at 730 / a = 24,000,000 tokens/day.
    # Above 43,200,000 a second instance is needed ($1,460), crossing again at 1,460 / a = 48,000,000: between
    # the two the API is cheaper again. Three instances ($2,190) cross at 72,000,000 < 86,400,000 (the step), and
    # every later step too, so self-hosting stays cheaper from 48,000,001.
    be = breakeven(fleet(), api(1.0), NO_FIXED, output_only(10_000_000))
    assert be.tokens_per_day == 24_000_001
    assert be.always_cheaper_from_tokens_per_day == 48_000_001
    assert self_cheaper(fleet(), api(1.0), NO_FIXED, 43_200_000)
    assert not self_cheaper(fleet(), api(1.0), NO_FIXED, 43_200_001)
    assert not self_cheaper(fleet(), api(1.0), NO_FIXED, 47_999_999)
    assert self_cheaper(fleet(), api(1.0), NO_FIXED, 48_000_001)
    assert be.cheaper_at_current_traffic == "api"


def test_no_breakeven_when_the_api_is_cheaper_per_token_than_a_full_fleet() -> None:
    # A full instance costs $730 for 43.2M tokens/day x 365/12 = 1,314M tokens: $0.5556 per 1M; an API at $0.50
    # per 1M is cheaper at any volume.
    be = breakeven(fleet(), api(0.5), NO_FIXED, output_only(10_000_000))
    assert be.tokens_per_day is None and be.always_cheaper_from_tokens_per_day is None
    assert be.note.startswith("never")


def test_instances_step_with_ceil_and_respect_the_minimum() -> None:
    # 43,200,000 tokens/day = 500 tokens/s exactly one instance's planned throughput; one token more needs two
    option = fleet()
    assert option.instances_needed(output_only(43_200_000), 1.0) == 1
    assert option.instances_needed(output_only(43_200_001), 1.0) == 2
    assert fleet(min_instances=3).instances_needed(output_only(43_200_001), 1.0) == 3
    # peak hour factor 2 doubles the tokens/s to provision for: 43.2M/day then needs 2
    busy = output_only(43_200_000).model_copy(update={"peak_hour_factor": 2.0})
    assert option.instances_needed(busy, 1.0) == 2


def test_seasonality_sets_the_peak_month() -> None:
    # Jan-Jun at 0.5 (25M/day -> 1 instance, $730), Jul-Dec at 1.5 (75M/day -> 2 instances, $1,460):
    # average month (6 x 730 + 6 x 1,460) / 12 = $1,095, peak month $1,460.
    # API at $2 per 1M: average 50M x 2e-6 x 365/12 = $3,041.67, peak 75M x 2e-6 x 365/12 = $4,562.50.
    traffic = output_only(50_000_000, (0.5,) * 6 + (1.5,) * 6)
    report = compute_tco(TcoInputs(traffic=traffic, apis=(api(2.0),), self_hosted=(fleet(),), fixed=NO_FIXED))
    costs = {o.name: o for o in report.options}
    assert costs["fleet"].instances_by_month == (1,) * 6 + (2,) * 6
    assert costs["fleet"].monthly_usd_average == pytest.approx(1095.0)
    assert costs["fleet"].monthly_usd_peak == pytest.approx(1460.0)
    assert costs["api"].monthly_usd_average == pytest.approx(3041.6667, abs=0.01)
    assert costs["api"].monthly_usd_peak == pytest.approx(4562.5)


def test_spot_share_power_training_and_operations() -> None:
    # Hour: half on demand at $1.00, half spot at $0.40 = $0.70, plus 0.5 kW x $0.20/kWh = $0.10 -> $0.80/h;
    # 2 instances (the minimum) x 730 h x $0.80 = $1,168. Fixed: 2 runs x $50 + $8,000 x 0.25 = $2,100.
    # Month: $3,268.
    option = fleet(spot_usd_per_hour=0.40, spot_share=0.5, power_kw=0.5, min_instances=2)
    fixed = FixedCosts(training_runs_per_month=2, training_cost_per_run_usd=50, staff_cost_per_month_usd=8000,
                       operations_share=0.25, power_usd_per_kwh=0.20)  # fmt: skip
    report = compute_tco(
        TcoInputs(traffic=output_only(1_000_000), apis=(api(2.0),), self_hosted=(option,), fixed=fixed)
    )
    cost = next(o for o in report.options if o.name == "fleet")
    assert cost.monthly_usd_average == pytest.approx(3268.0)
    assert cost.breakdown_average_month == pytest.approx(
        {"instances": 1022.0, "power": 146.0, "training": 100.0, "operations": 2000.0}
    )


def test_spot_share_without_a_spot_price_fails_fast() -> None:
    with pytest.raises(ValueError, match="needs spot_usd_per_hour"):
        fleet(spot_share=0.3)


def test_monthly_multipliers_must_average_one() -> None:
    with pytest.raises(ValueError, match=r"average 1\.0"):
        output_only(1e6, (2.0,) * 12)


@settings(max_examples=60, deadline=None)
@given(
    price=st.floats(0.05, 20),
    volume=st.floats(1e5, 5e9),
    factor=st.floats(1.0, 5.0),
    tokens_per_s=st.floats(100, 30_000),
    min_instances=st.integers(1, 4),
)
def test_api_cost_is_linear_and_self_hosting_monotone(
    price: float, volume: float, factor: float, tokens_per_s: float, min_instances: int
) -> None:
    traffic = output_only(volume)
    option = fleet(output_tokens_per_s=tokens_per_s, min_instances=min_instances)
    assert api_average_usd(api(price), traffic.scaled(volume * factor)) == pytest.approx(
        factor * api_average_usd(api(price), traffic)
    )
    assert self_hosted_average_usd(option, NO_FIXED, traffic.scaled(volume * factor)) >= self_hosted_average_usd(
        option, NO_FIXED, traffic
    )
    be = breakeven(option, api(price), NO_FIXED, traffic)
    if be.tokens_per_day is not None:  # the answer flips exactly at the reported whole volume
        assert self_cheaper(option, api(price), NO_FIXED, be.tokens_per_day)
        assert not self_cheaper(option, api(price), NO_FIXED, be.tokens_per_day - 1)


# --- price sheet ------------------------------------------------------------------------------------------------


def test_default_price_sheet_is_dated_and_sourced() -> None:
    sheet, label = load_price_sheet()
    assert sheet.as_of == "2026-11" and "override" in sheet.note
    assert label.endswith("price_sheet.yaml")
    for entry in [*sheet.apis, *sheet.instances]:
        assert entry.source.strip() and entry.date == "2026-11", entry.name
    for name in SELF_HOSTING_FIELDS:
        assert sheet.self_hosting[name].source.strip() and sheet.self_hosting[name].date == "2026-11", name
    for instance in sheet.instances:
        if instance.name.startswith("aws-"):
            assert instance.source.startswith("https://") and "approximate" in instance.note
            assert "planning estimate, not measured here" in instance.throughput_source
    assert {i.instance_type for i in sheet.instances} >= {"g5.2xlarge", "g6e.xlarge", "p4d.24xlarge"}


def test_every_assumption_is_listed_with_a_source() -> None:
    sheet, label = load_price_sheet()
    inputs = build_inputs(sheet, Traffic(), sheet_label=label)
    names = {a.name: a for a in compute_tco(inputs).assumptions}
    assert names["self_hosted.aws-g5.2xlarge.on_demand_usd_per_hour"].value == 1.45
    assert names["fixed.power_usd_per_kwh"].source.startswith("https://")
    assert all(a.source for a in names.values())


def _sheet_data() -> dict:
    sheet, _ = load_price_sheet()
    return sheet.model_dump(mode="json")


def test_malformed_price_sheet_names_file_and_field(tmp_path: Path) -> None:
    data = _sheet_data()
    del data["instances"][0]["on_demand_usd_per_hour"]
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TcoError) as info:
        load_price_sheet(path)
    assert str(info.value) == f"{path}: instances[0] (aws-g5.2xlarge).on_demand_usd_per_hour: Field required"
    path.write_text("apis: [\n")
    with pytest.raises(TcoError, match=r"prices.yaml: not valid YAML \(line"):
        load_price_sheet(path)
    with pytest.raises(TcoError, match="no such price sheet"):
        load_price_sheet(tmp_path / "missing.yaml")


# --- measured throughput -----------------------------------------------------------------------------------------


def write_loadtest(
    storage: LocalLakeStorage, *, passed: bool = True, slo_p99: float = 5.0, target: str = "https://llm.example.gov/v1"
) -> str:
    key = "serving/loadtests/llm-assets/0123456789abcdef.json"
    report = {
        "schema": "loadtest-report-v1",
        "target": target,
        "started_at": "2026-11-20T10:00:00+00:00",
        "slo": {"p99_latency_s": slo_p99, "max_error_rate": 0.01, "ttft_p99_s": None},
        "overall": {"output_tokens_per_s": 2500.0, "e2e_s": {"p99": 1.25}, "requests": 96, "failed": 0},
        "health": {"passed": passed, "reasons": ["ok"] if passed else ["model m: p99 e2e 7.00 s > SLO 5.00 s"]},
    }
    storage.write_bytes(key, json.dumps(report).encode())
    storage.write_bytes("serving/loadtests/llm-assets/current.json", json.dumps({"key": key}).encode())
    return key


def test_measured_throughput_replaces_the_estimate(storage: LocalLakeStorage) -> None:
    key = write_loadtest(storage)
    measured, why = read_measured_throughput(storage, "llm-assets", 5.0)
    assert measured is not None and measured.output_tokens_per_s == 2500.0
    assert why.startswith(f"measured by loadtest_report {key} on 2026-11-20T10:00:00+00:00")
    sheet, _ = load_price_sheet()
    inputs = build_inputs(sheet, Traffic(), endpoint="llm-assets", measured=measured, measured_note=why)
    deployed = next(o for o in inputs.self_hosted if o.name == "llm-assets on g5.2xlarge")
    assert deployed.output_tokens_per_s == 2500.0
    assumption = next(
        a
        for a in compute_tco(inputs).assumptions
        if a.name == "self_hosted.llm-assets on g5.2xlarge.output_tokens_per_s"
    )
    assert assumption.value == 2500.0 and f"measured by loadtest_report {key}" in assumption.source
    assert "aws-g5.2xlarge" not in {o.name for o in inputs.self_hosted}  # renamed, not duplicated


def test_a_load_test_of_a_local_endpoint_does_not_price_a_cloud_instance(storage: LocalLakeStorage) -> None:
    write_loadtest(storage, target="http://127.0.0.1:8000/v1")
    measured, why = read_measured_throughput(storage, "llm-assets", 5.0)
    assert measured is None and "measured a local endpoint (127.0.0.1)" in why


def test_failed_slo_report_is_ignored(storage: LocalLakeStorage) -> None:
    write_loadtest(storage, passed=False)
    measured, why = read_measured_throughput(storage, "llm-assets", 5.0)
    assert measured is None and "failed its SLO" in why
    sheet, _ = load_price_sheet()
    inputs = build_inputs(sheet, Traffic(), endpoint="llm-assets", measured=None, measured_note=why)
    deployed = next(o for o in inputs.self_hosted if o.name == "llm-assets on g5.2xlarge")
    assert deployed.output_tokens_per_s == 1000.0
    assert "planning estimate" in deployed.throughput_source and "failed its SLO" in deployed.throughput_source


def test_report_with_a_looser_slo_or_none_is_not_used(storage: LocalLakeStorage) -> None:
    assert read_measured_throughput(storage, "llm-assets", 5.0)[0] is None
    write_loadtest(storage, slo_p99=10.0)
    measured, why = read_measured_throughput(storage, "llm-assets", 5.0)
    assert measured is None and "looser than the target 5 s" in why


# --- the asset and the CLI ---------------------------------------------------------------------------------------


def test_tco_report_materializes(lake, storage: LocalLakeStorage, instance: dg.DagsterInstance) -> None:
    key = write_loadtest(storage)
    result = dg.materialize(
        [tco_report],
        resources={"lake": lake},
        instance=instance,
        run_config=dg.RunConfig({"tco_report": TcoConfig(output_tokens_per_day=20_000_000)}),
    )
    assert result.success
    materialization = result.asset_materializations_for_node("tco_report")[0]
    metadata = materialization.metadata
    keys = sorted(o.key for o in storage.list_objects("compliance/tco/"))
    folder = f"compliance/tco/{materialization.tags['dagster/data_version'][:16]}"
    assert keys == [f"{folder}/report.json", f"{folder}/report.md"]
    assert metadata["report"].value == storage.uri(f"{folder}/report.json")
    report = json.loads(storage.read_bytes(f"{folder}/report.json"))
    markdown = storage.read_bytes(f"{folder}/report.md").decode()
    assert report["tokens_per_day"] == 50_000_000
    assert "llm-assets on g5.2xlarge" in metadata["monthly_cost_usd"].value
    assert "data:image/png;base64," in markdown and "data:image/png;base64," in metadata["cost_plot"].value
    assert "## Assumptions" in markdown and f"measured by loadtest_report {key}" in markdown
    records = [r for r in AuditLog(storage).records() if r["asset_key"] == "tco_report"]
    assert records and records[-1]["input_data_versions"] == {"loadtest_report": key}


def test_cli_prints_json_that_parses() -> None:
    result = CliRunner().invoke(tco, ["--no-lake", "--format", "json", "--output-tokens-per-day", "5000000"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tokens_per_day"] == 35_000_000
    assert {o["kind"] for o in report["options"]} == {"api", "self_hosted"}


def test_cli_reads_the_lake_and_writes_markdown_with_the_plot(
    tmp_path: Path, lake_root: Path, storage: LocalLakeStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_loadtest(storage)
    monkeypatch.setenv("LLM_ASSETS_LAKE", "local")
    monkeypatch.setenv("LLM_ASSETS_LAKE_ROOT", str(lake_root))
    out = tmp_path / "tco.md"
    result = CliRunner().invoke(tco, ["--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "measured by loadtest_report" in text and "data:image/png;base64," in text


def test_cli_bad_price_sheet_is_one_line(tmp_path: Path) -> None:
    data = _sheet_data()
    data["apis"][1]["usd_per_1m_output"] = "cheap"
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(tco, ["--no-lake", "--price-sheet", str(path)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert f"{path}: apis[1] (openai-gpt-4.1).usd_per_1m_output" in result.output


def test_markdown_lists_costs_breakeven_and_assumptions() -> None:
    sheet, label = load_price_sheet()
    text = render_markdown(compute_tco(build_inputs(sheet, Traffic(), sheet_label=label)))
    assert "| option | kind |" in text and "## Breakeven" in text and "price_sheet.as_of" in text
