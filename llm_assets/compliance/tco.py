"""Total cost of ownership: serving our own model versus paying an API, per month and per million tokens.

Every figure that shapes the answer is an input with a stated source (the dated default price sheet, the
measured load test, or the user), and the report lists them all, so a reviewer can check each number and
replace the ones that do not fit their case. Pure: no Dagster; the lake is read only through `LakeStorage`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llm_assets.lake import LakeError, LakeStorage

HOURS_PER_MONTH = 730.0  # 8,760 h / 12: the hours cloud providers bill in an average month
DAYS_PER_MONTH = 365.0 / 12
SECONDS_PER_DAY = 86_400.0
PRICE_SHEET_RESOURCE = "price_sheet.yaml"
LOADTEST_PREFIX = "serving/loadtests"
MAX_BREAKPOINTS = 200_000


class TcoError(ValueError):
    """An input the user can fix; the message is one line naming the file and field."""


def one_line(exc: Exception) -> str:
    """An input error as one line: pydantic's messages span lines, keep the field and what is wrong with it."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) >= 3 and "validation error" in lines[0]:
        return f"{lines[1]}: {lines[2].split(' [type=')[0]}"
    return lines[0] if lines else repr(exc)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Assumption(Strict):
    """One input figure as the report lists it: what, how much, and where it comes from."""

    name: str
    value: Any
    source: str


class Traffic(Strict):
    """Traffic of the average day of the year; seasonality scales it per month, the peak hour within a day."""

    input_tokens_per_day: float = Field(default=30_000_000, ge=0)
    output_tokens_per_day: float = Field(default=10_000_000, ge=0)
    monthly_multipliers: tuple[float, ...] = Field(
        default=(1.0,) * 12, description="Twelve factors, January first, that average 1.0."
    )
    peak_hour_factor: float = Field(
        default=2.5, ge=1, description="Busiest hour's token rate / the day's average hourly rate."
    )
    source: str = "user input"

    @field_validator("monthly_multipliers")
    @classmethod
    def _twelve_averaging_one(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) != 12:
            raise ValueError(f"give 12 monthly multipliers, got {len(value)}")
        if any(m <= 0 for m in value):
            raise ValueError("monthly multipliers must be positive")
        mean = sum(value) / 12
        if abs(mean - 1) > 0.01:
            raise ValueError(f"monthly multipliers must average 1.0 (they scale the average day), got {mean:.3f}")
        return value

    @model_validator(mode="after")
    def _some_traffic(self) -> Traffic:
        if self.tokens_per_day <= 0:
            raise ValueError("traffic is zero: give input or output tokens per day")
        return self

    @property
    def tokens_per_day(self) -> float:
        return self.input_tokens_per_day + self.output_tokens_per_day

    @property
    def output_share(self) -> float:
        return self.output_tokens_per_day / self.tokens_per_day

    @property
    def mean_multiplier(self) -> float:
        return sum(self.monthly_multipliers) / 12

    def scaled(self, tokens_per_day: float) -> Traffic:
        """The same mix and seasonality at another daily volume."""
        output = tokens_per_day * self.output_share
        return self.model_copy(
            update={"input_tokens_per_day": tokens_per_day - output, "output_tokens_per_day": output}
        )


class ApiOption(Strict):
    """A hosted model API priced per million tokens."""

    name: str
    usd_per_1m_input: float = Field(ge=0)
    usd_per_1m_output: float = Field(ge=0)
    source: str
    date: str
    note: str = ""

    def usd_per_token(self, traffic: Traffic) -> float:
        """Blended price of one token at the traffic's input/output mix."""
        share = traffic.output_share
        return ((1 - share) * self.usd_per_1m_input + share * self.usd_per_1m_output) / 1e6


class SelfHostedOption(Strict):
    """A fleet of identical instances serving our model, sized for the busiest hour of each month."""

    name: str
    instance_type: str
    gpus: int = Field(ge=0)
    on_demand_usd_per_hour: float = Field(ge=0)
    spot_usd_per_hour: float | None = Field(default=None, ge=0)
    output_tokens_per_s: float = Field(gt=0, description="Per instance, at the latency SLO.")
    spot_share: float = Field(default=0.0, ge=0, le=1, description="Share of instance hours bought as spot.")
    min_instances: int = Field(default=2, ge=1, description="Floor for availability (one may fail).")
    utilisation: float = Field(default=0.7, gt=0, le=1, description="Share of the SLO throughput planned for.")
    power_kw: float = Field(default=0.0, ge=0, description="At the wall incl. cooling; 0 where the price has it.")
    source: str
    date: str
    note: str = ""
    throughput_source: str
    sources: dict[str, str] = Field(default_factory=dict, description="Where spot_share etc. come from.")

    @model_validator(mode="after")
    def _spot_priced(self) -> SelfHostedOption:
        if self.spot_share > 0 and self.spot_usd_per_hour is None:
            raise ValueError(f"{self.name}: spot_share {self.spot_share} needs spot_usd_per_hour")
        return self

    def instance_usd_per_hour(self, usd_per_kwh: float) -> float:
        """One instance-hour: the on-demand/spot blend plus its power."""
        spot = self.spot_usd_per_hour or 0.0
        return (
            (1 - self.spot_share) * self.on_demand_usd_per_hour + self.spot_share * spot + self.power_kw * usd_per_kwh
        )

    def instances_needed(self, traffic: Traffic, multiplier: float) -> int:
        """ceil(peak-hour output tokens/s / (throughput x utilisation)), at least `min_instances`."""
        peak_tokens_per_s = traffic.output_tokens_per_day * multiplier * traffic.peak_hour_factor / SECONDS_PER_DAY
        return max(self.min_instances, math.ceil(peak_tokens_per_s / (self.output_tokens_per_s * self.utilisation)))


class FixedCosts(Strict):
    """Monthly costs of running our own model that do not scale with traffic."""

    training_runs_per_month: float = Field(default=1.0, ge=0)
    training_cost_per_run_usd: float = Field(default=50.0, ge=0)
    staff_cost_per_month_usd: float = Field(default=8_000.0, ge=0)
    operations_share: float = Field(default=0.25, ge=0, description="Share of one person's month spent on ops.")
    power_usd_per_kwh: float = Field(default=0.20, ge=0)
    sources: dict[str, str] = Field(default_factory=dict)

    @property
    def monthly_usd(self) -> float:
        return self.training_runs_per_month * self.training_cost_per_run_usd + (
            self.staff_cost_per_month_usd * self.operations_share
        )


class TcoInputs(Strict):
    traffic: Traffic
    p99_latency_s: float = Field(default=5.0, gt=0, description="Latency SLO the throughput figures hold at.")
    apis: tuple[ApiOption, ...]
    self_hosted: tuple[SelfHostedOption, ...]
    fixed: FixedCosts = FixedCosts()
    price_sheet: str = "none"
    extra_assumptions: tuple[Assumption, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> TcoInputs:
        names = [o.name for o in self.apis] + [o.name for o in self.self_hosted]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"option names repeat: {', '.join(repeated)}")
        if not self.apis and not self.self_hosted:
            raise ValueError("no option to price: give at least one API or instance")
        return self


class OptionCost(Strict):
    name: str
    kind: Literal["api", "self_hosted"]
    monthly_usd_average: float
    monthly_usd_peak: float
    monthly_usd: tuple[float, ...]
    usd_per_1m_tokens: float
    instances_by_month: tuple[int, ...] = ()
    breakdown_average_month: dict[str, float]


class Breakeven(Strict):
    """Where self-hosting `self_hosted` becomes cheaper than `api` (average month, same traffic mix)."""

    self_hosted: str
    api: str
    tokens_per_day: int | None = Field(description="Smallest whole daily volume at which self-hosting is cheaper.")
    always_cheaper_from_tokens_per_day: int | None = Field(description="From here on self-hosting stays cheaper.")
    cheaper_at_current_traffic: str
    note: str


class TcoReport(Strict):
    currency: Literal["USD"] = "USD"
    price_sheet: str
    tokens_per_day: float
    tokens_per_month: float
    p99_latency_s: float
    options: tuple[OptionCost, ...]
    breakevens: tuple[Breakeven, ...]
    cheapest: str
    assumptions: tuple[Assumption, ...]
    method: str


METHOD = (
    "API month = tokens/day x multiplier x 365/12 x blended price. Self-hosted month = instances x 730 h x "
    "(on-demand/spot blend + kW x price/kWh) + training runs x cost + staff cost x operations share, with "
    "instances = max(min, ceil(peak-hour output tokens/s / (tokens/s per instance x utilisation))) per month. "
    "Averages are over the 12 months; breakeven compares average months at the same input/output mix. Throughput "
    "counts output tokens at the load test's prompt mix, so input tokens cost what they cost in that mix."
)


def self_hosted_month_usd(option: SelfHostedOption, fixed: FixedCosts, traffic: Traffic, multiplier: float) -> float:
    instances = option.instances_needed(traffic, multiplier)
    return instances * HOURS_PER_MONTH * option.instance_usd_per_hour(fixed.power_usd_per_kwh) + fixed.monthly_usd


def api_month_usd(option: ApiOption, traffic: Traffic, multiplier: float) -> float:
    return traffic.tokens_per_day * multiplier * DAYS_PER_MONTH * option.usd_per_token(traffic)


def self_hosted_average_usd(option: SelfHostedOption, fixed: FixedCosts, traffic: Traffic) -> float:
    months = [self_hosted_month_usd(option, fixed, traffic, m) for m in traffic.monthly_multipliers]
    return sum(months) / 12


def api_average_usd(option: ApiOption, traffic: Traffic) -> float:
    return api_month_usd(option, traffic, traffic.mean_multiplier)


def self_hosting_cheaper(option: SelfHostedOption, api: ApiOption, fixed: FixedCosts, traffic: Traffic) -> bool:
    """Strictly cheaper in the average month; a difference within float rounding (1e-12 relative) is a tie."""
    self_usd = self_hosted_average_usd(option, fixed, traffic)
    api_usd = api_average_usd(api, traffic)
    return self_usd < api_usd - 1e-12 * max(1.0, api_usd)


def _self_hosted_cost(option: SelfHostedOption, fixed: FixedCosts, traffic: Traffic) -> OptionCost:
    months = tuple(self_hosted_month_usd(option, fixed, traffic, m) for m in traffic.monthly_multipliers)
    instances = tuple(option.instances_needed(traffic, m) for m in traffic.monthly_multipliers)
    average = sum(months) / 12
    hourly = option.instance_usd_per_hour(fixed.power_usd_per_kwh)
    mean_instances = sum(instances) / 12
    power = mean_instances * HOURS_PER_MONTH * option.power_kw * fixed.power_usd_per_kwh
    return OptionCost(
        name=option.name,
        kind="self_hosted",
        monthly_usd_average=average,
        monthly_usd_peak=max(months),
        monthly_usd=months,
        usd_per_1m_tokens=average / (traffic.tokens_per_day * traffic.mean_multiplier * DAYS_PER_MONTH / 1e6),
        instances_by_month=instances,
        breakdown_average_month={
            "instances": mean_instances * HOURS_PER_MONTH * hourly - power,
            "power": power,
            "training": fixed.training_runs_per_month * fixed.training_cost_per_run_usd,
            "operations": fixed.staff_cost_per_month_usd * fixed.operations_share,
        },
    )


def _api_cost(option: ApiOption, traffic: Traffic) -> OptionCost:
    months = tuple(api_month_usd(option, traffic, m) for m in traffic.monthly_multipliers)
    tokens_month = traffic.mean_multiplier * DAYS_PER_MONTH
    return OptionCost(
        name=option.name,
        kind="api",
        monthly_usd_average=sum(months) / 12,
        monthly_usd_peak=max(months),
        monthly_usd=months,
        usd_per_1m_tokens=option.usd_per_token(traffic) * 1e6,
        breakdown_average_month={
            "input tokens": traffic.input_tokens_per_day * tokens_month * option.usd_per_1m_input / 1e6,
            "output tokens": traffic.output_tokens_per_day * tokens_month * option.usd_per_1m_output / 1e6,
        },
    )


def _smallest_integer_where(predicate: Callable[[int], bool], guess: float) -> int:
    """The whole volume v near `guess` with predicate(v) and not predicate(v - 1). The float solution is off only
    by rounding at a boundary, so a short galloping search brackets the flip and bisection pins it down."""
    high, step = max(1, math.floor(guess) + 1), 1
    while not predicate(high):
        high, step = high + step, step * 2
        if step > 2**80:
            raise TcoError(f"breakeven did not settle near {guess:,.0f} tokens/day; report this with the inputs")
    low, step = high - 1, 1
    while low > 0 and predicate(low):
        low, step = max(0, low - step), step * 2
    while high - low > 1:  # predicate(high) holds, predicate(low) does not (volume 0 is never cheaper)
        middle = (low + high) // 2
        if predicate(middle):
            high = middle
        else:
            low = middle
    return high


def breakeven(option: SelfHostedOption, api: ApiOption, fixed: FixedCosts, traffic: Traffic) -> Breakeven:
    """Solve exactly where self-hosting's average month drops below the API's, as a function of daily volume V.

    The API costs a*V (linear). Self-hosting costs F + c * mean_i n_i(V) with n_i(V) = max(min, ceil(g_i*V)):
    a step function, constant on the intervals between the breakpoints V = j/g_i. On an interval (lo, hi] with
    constant cost S, self-hosting is cheaper exactly for V > S/a, so the first interval with S/a < hi gives the
    breakeven S/a (a true crossing: the cost only steps up, so it cannot start below the line). Steps can make
    the API cheaper again just above; the last interval with S/a > lo gives the volume from which self-hosting
    stays cheaper. The intervals are walked in order up to V* = (F + c*min)/(a - c*mean_i g_i), beyond which
    ceil(x) <= x + min proves self-hosting cheaper. If a <= c*mean_i g_i (the API costs no more per token than
    a fully used fleet) self-hosting is never cheaper. Whole-token answers are checked by direct evaluation.
    """
    unit = traffic.scaled(1.0)
    a = api_average_usd(api, unit)
    c = HOURS_PER_MONTH * option.instance_usd_per_hour(fixed.power_usd_per_kwh)
    # instances per token/day of total traffic, per month
    g = [
        unit.output_tokens_per_day
        * m
        * traffic.peak_hour_factor
        / SECONDS_PER_DAY
        / (option.output_tokens_per_s * option.utilisation)
        for m in traffic.monthly_multipliers
    ]
    current_self = self_hosted_average_usd(option, fixed, traffic)
    current_api = api_average_usd(api, traffic)
    cheaper_now = option.name if self_hosting_cheaper(option, api, fixed, traffic) else api.name

    def self_cheaper(volume: float) -> bool:
        if volume <= 0:
            return False
        return self_hosting_cheaper(option, api, fixed, traffic.scaled(volume))

    slope = c * sum(g) / 12
    if a <= slope:
        return Breakeven(
            self_hosted=option.name,
            api=api.name,
            tokens_per_day=None,
            always_cheaper_from_tokens_per_day=None,
            cheaper_at_current_traffic=cheaper_now,
            note=f"never: {api.name} costs ${a / DAYS_PER_MONTH * 1e6:.4f} per 1M tokens, at or below the "
            f"{option.instance_type} fleet's marginal cost at its utilisation target "
            f"(${slope / DAYS_PER_MONTH * 1e6:.4f} per 1M tokens)",
        )
    fixed_usd = fixed.monthly_usd
    bound = (fixed_usd + c * option.min_instances) / (a - slope)
    first: float | None = None
    last_not_cheaper = 0.0
    lo = 0.0
    for hi in [*_breakpoints(g, option.min_instances, bound), math.inf]:
        if lo >= bound and first is not None:
            break
        if hi <= lo:
            continue
        probe = lo + 1.0 if hi == math.inf else (lo + hi) / 2
        level = fixed_usd + c * sum(max(option.min_instances, math.ceil(gi * probe)) for gi in g) / 12
        equal_at = level / a
        if first is None and equal_at < hi:
            first = max(lo, equal_at)
        if equal_at > lo:
            last_not_cheaper = min(hi, equal_at)
        lo = hi
    assert first is not None  # the walk reaches past `bound`, where self-hosting is cheaper
    tokens = _smallest_integer_where(self_cheaper, first)
    stays = _smallest_integer_where(self_cheaper, last_not_cheaper)
    return Breakeven(
        self_hosted=option.name,
        api=api.name,
        tokens_per_day=tokens,
        always_cheaper_from_tokens_per_day=max(tokens, stays),
        cheaper_at_current_traffic=cheaper_now,
        note=f"self-hosting costs {_usd(current_self)} vs {_usd(current_api)} per average month at "
        f"{traffic.tokens_per_day:,.0f} tokens/day",
    )


def _breakpoints(g: Sequence[float], min_instances: int, bound: float) -> list[float]:
    """Volumes where some month's instance count steps up, up to just past `bound`."""
    points: set[float] = set()
    for gi in g:
        if gi <= 0:
            continue
        last = math.floor(gi * bound) + 1
        if len(points) + max(0, last - min_instances) > MAX_BREAKPOINTS:
            raise TcoError(
                f"breakeven needs over {MAX_BREAKPOINTS:,} fleet sizes: the API is barely dearer per token than "
                "self-hosting at full use; compare cost per 1M tokens instead"
            )
        points.update(j / gi for j in range(min_instances, last + 1))
    return sorted(points)


def compute_tco(inputs: TcoInputs) -> TcoReport:
    """Monthly cost of every option at the given traffic, breakeven of every self-hosted option vs every API."""
    traffic, fixed = inputs.traffic, inputs.fixed
    options = [_api_cost(o, traffic) for o in inputs.apis] + [
        _self_hosted_cost(o, fixed, traffic) for o in inputs.self_hosted
    ]
    breakevens = tuple(breakeven(s, a, fixed, traffic) for s in inputs.self_hosted for a in inputs.apis)
    return TcoReport(
        price_sheet=inputs.price_sheet,
        tokens_per_day=traffic.tokens_per_day,
        tokens_per_month=traffic.tokens_per_day * traffic.mean_multiplier * DAYS_PER_MONTH,
        p99_latency_s=inputs.p99_latency_s,
        options=tuple(options),
        breakevens=breakevens,
        cheapest=min(options, key=lambda o: o.monthly_usd_average).name,
        assumptions=tuple(assumptions_of(inputs)),
        method=METHOD,
    )


def assumptions_of(inputs: TcoInputs) -> list[Assumption]:
    """Every input figure with its source, in the order the report lists them."""
    t, f = inputs.traffic, inputs.fixed
    out = [
        Assumption(name=f"traffic.{field}", value=getattr(t, field), source=t.source)
        for field in ("input_tokens_per_day", "output_tokens_per_day", "monthly_multipliers", "peak_hour_factor")
    ]
    out.append(Assumption(name="slo.p99_latency_s", value=inputs.p99_latency_s, source=t.source))
    out += [
        Assumption(name="calendar.hours_per_month", value=HOURS_PER_MONTH, source="8,760 h / 12 (cloud billing)"),
        Assumption(name="calendar.days_per_month", value=round(DAYS_PER_MONTH, 4), source="365 / 12"),
    ]
    for api in inputs.apis:
        where = f"{api.source} ({api.date}{'; ' + api.note if api.note else ''})"
        out.append(Assumption(name=f"api.{api.name}.usd_per_1m_input", value=api.usd_per_1m_input, source=where))
        out.append(Assumption(name=f"api.{api.name}.usd_per_1m_output", value=api.usd_per_1m_output, source=where))
    for option in inputs.self_hosted:
        price = f"{option.source} ({option.date}{'; ' + option.note if option.note else ''})"
        prefix = f"self_hosted.{option.name}"
        out += [
            Assumption(name=f"{prefix}.instance_type", value=option.instance_type, source=option.source),
            Assumption(name=f"{prefix}.gpus", value=option.gpus, source=option.source),
            Assumption(name=f"{prefix}.on_demand_usd_per_hour", value=option.on_demand_usd_per_hour, source=price),
            Assumption(name=f"{prefix}.spot_usd_per_hour", value=option.spot_usd_per_hour, source=price),
            Assumption(
                name=f"{prefix}.output_tokens_per_s", value=option.output_tokens_per_s, source=option.throughput_source
            ),
        ]
        for field in ("spot_share", "min_instances", "utilisation", "power_kw"):
            source = option.sources.get(field, option.source)
            out.append(Assumption(name=f"{prefix}.{field}", value=getattr(option, field), source=source))
    for field in (
        "training_runs_per_month",
        "training_cost_per_run_usd",
        "staff_cost_per_month_usd",
        "operations_share",
        "power_usd_per_kwh",
    ):
        out.append(Assumption(name=f"fixed.{field}", value=getattr(f, field), source=f.sources.get(field, "default")))
    return out + list(inputs.extra_assumptions)


# --- the price sheet -------------------------------------------------------------------------------------------


class Sourced(Strict):
    value: float
    source: str = Field(min_length=1)
    date: str = Field(min_length=1)
    note: str = ""


class SheetApi(Strict):
    name: str
    provider: str
    usd_per_1m_input: float = Field(ge=0)
    usd_per_1m_output: float = Field(ge=0)
    source: str = Field(min_length=1)
    date: str = Field(min_length=1)
    note: str = ""


class SheetInstance(Strict):
    name: str
    instance_type: str
    region: str
    gpus: int = Field(ge=0)
    gpu: str
    on_demand_usd_per_hour: float = Field(ge=0)
    spot_usd_per_hour: float | None = Field(default=None, ge=0)
    output_tokens_per_s: float = Field(gt=0)
    throughput_source: str = Field(min_length=1)
    power_kw: float = Field(default=0.0, ge=0)
    source: str = Field(min_length=1)
    date: str = Field(min_length=1)
    note: str = ""


SELF_HOSTING_FIELDS = (
    "spot_share",
    "min_instances",
    "utilisation",
    "training_runs_per_month",
    "training_cost_per_run_usd",
    "staff_cost_per_month_usd",
    "operations_share",
    "power_usd_per_kwh",
)


class PriceSheet(Strict):
    """The dated figures the TCO starts from; a user's own sheet has the same shape."""

    as_of: str = Field(min_length=1)
    currency: Literal["USD"]
    note: str
    deployment_instance: str = Field(description="Instance (sheet name) the production endpoint runs on.")
    apis: tuple[SheetApi, ...] = Field(min_length=1)
    instances: tuple[SheetInstance, ...] = Field(min_length=1)
    self_hosting: dict[str, Sourced]

    @model_validator(mode="after")
    def _complete(self) -> PriceSheet:
        missing = [f for f in SELF_HOSTING_FIELDS if f not in self.self_hosting]
        if missing:
            raise ValueError(f"self_hosting lacks {', '.join(missing)}")
        unknown = sorted(set(self.self_hosting) - set(SELF_HOSTING_FIELDS))
        if unknown:
            raise ValueError(f"self_hosting has unknown entries {', '.join(unknown)}")
        if self.deployment_instance not in {i.name for i in self.instances}:
            raise ValueError(f"deployment_instance {self.deployment_instance!r} is not one of the instances")
        return self

    def instance(self, name: str) -> SheetInstance:
        for entry in self.instances:
            if entry.name == name:
                return entry
        raise TcoError(f"instance {name!r} is not in the price sheet ({', '.join(i.name for i in self.instances)})")


def _where(loc: Sequence[int | str], data: Any) -> str:
    """A validation location as people read it: `instances[1] (aws-g5.2xlarge).on_demand_usd_per_hour`."""
    text, node = "", data
    for item in loc:
        if isinstance(item, int):
            node = node[item] if isinstance(node, list) and item < len(node) else None
            name = node.get("name") if isinstance(node, dict) else None
            text += f"[{item}]" + (f" ({name})" if name else "")
        else:
            node = node.get(item) if isinstance(node, dict) else None
            text += f".{item}" if text else str(item)
    return text or "(top level)"


def load_price_sheet(path: Path | None = None) -> tuple[PriceSheet, str]:
    """(sheet, where it came from). Without `path`, the default sheet shipped with the package."""
    if path is None:
        label = f"llm_assets/compliance/{PRICE_SHEET_RESOURCE}"
        text = resources.files("llm_assets.compliance").joinpath(PRICE_SHEET_RESOURCE).read_text(encoding="utf-8")
    else:
        label = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise TcoError(f"{label}: no such price sheet; pass an existing YAML file") from exc
        except OSError as exc:
            raise TcoError(f"{label}: cannot read the price sheet ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TcoError(f"{label}: not valid YAML ({line}{problem})") from exc
    if not isinstance(data, dict):
        raise TcoError(f"{label}: a price sheet is a YAML mapping with as_of, currency, apis, instances, ...")
    try:
        return PriceSheet.model_validate(data), label
    except ValidationError as exc:
        error = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise TcoError(f"{label}: {_where(error['loc'], data)}: {error['msg']}{more}") from exc


# --- measured throughput ---------------------------------------------------------------------------------------


class MeasuredThroughput(Strict):
    """Output tokens/s of the deployed endpoint from its latest load test that met the latency target."""

    endpoint: str
    key: str
    date: str
    output_tokens_per_s: float
    p99_e2e_s: float | None
    slo_p99_latency_s: float

    @property
    def source(self) -> str:
        p99 = "n/a" if self.p99_e2e_s is None else f"{self.p99_e2e_s:.2f} s"
        return (
            f"measured by loadtest_report {self.key} on {self.date} (p99 e2e {p99} within its SLO "
            f"{self.slo_p99_latency_s:g} s); holds for the priced instance if the endpoint ran on one"
        )


def read_measured_throughput(
    storage: LakeStorage, endpoint: str, p99_latency_s: float
) -> tuple[MeasuredThroughput | None, str]:
    """(measurement, why) from the endpoint's current load-test report in the lake; None with the reason when
    there is none, it failed its SLO, its SLO is looser than `p99_latency_s`, or it measured no throughput."""
    pointer = f"{LOADTEST_PREFIX}/{endpoint}/current.json"
    try:
        if not storage.exists(pointer):
            return None, f"no load-test report for endpoint {endpoint} in the lake"
        key = json.loads(storage.read_bytes(pointer))["key"]
        report = json.loads(storage.read_bytes(key))
    except (LakeError, KeyError, TypeError, json.JSONDecodeError) as exc:
        return None, f"load-test report of endpoint {endpoint} unreadable ({str(exc).splitlines()[0]})"
    host = urlsplit(str(report.get("target", ""))).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        return None, (
            f"loadtest_report {key} measured a local endpoint ({host}), not the priced instance, so the sheet's "
            "estimate is used"
        )
    health = report.get("health") or {}
    if not health.get("passed"):
        reasons = "; ".join(health.get("reasons") or ["no verdict"])
        return None, f"loadtest_report {key} failed its SLO ({reasons}), so its throughput is not used"
    slo = float((report.get("slo") or {}).get("p99_latency_s", math.inf))
    if slo > p99_latency_s:
        return None, f"loadtest_report {key} held p99 <= {slo:g} s, looser than the target {p99_latency_s:g} s"
    overall = report.get("overall") or {}
    rate = overall.get("output_tokens_per_s")
    if not rate or rate <= 0:
        return None, f"loadtest_report {key} measured no output tokens/s"
    measured = MeasuredThroughput(
        endpoint=endpoint,
        key=key,
        date=str(report.get("started_at", "unknown date")),
        output_tokens_per_s=float(rate),
        p99_e2e_s=(overall.get("e2e_s") or {}).get("p99"),
        slo_p99_latency_s=slo,
    )
    return measured, measured.source


# --- inputs from the sheet -------------------------------------------------------------------------------------


def _sourced_text(entry: Sourced) -> str:
    return f"{entry.source} ({entry.date}{'; ' + entry.note if entry.note else ''})"


def build_inputs(
    sheet: PriceSheet,
    traffic: Traffic,
    *,
    sheet_label: str = "default price sheet",
    p99_latency_s: float = 5.0,
    endpoint: str | None = None,
    endpoint_instance: str | None = None,
    measured: MeasuredThroughput | None = None,
    measured_note: str = "",
) -> TcoInputs:
    """TCO inputs from a price sheet. With `endpoint`, the instance it runs on is the option named after it, with
    the measured throughput when there is one (else the sheet's estimate, with `measured_note` saying why)."""
    defaults = sheet.self_hosting
    policy = {f: _sourced_text(defaults[f]) for f in ("spot_share", "min_instances", "utilisation")}
    deployed = endpoint_instance or sheet.deployment_instance
    if endpoint is not None:
        sheet.instance(deployed)
    options = []
    for entry in sheet.instances:
        name, tokens_per_s, throughput_source = entry.name, entry.output_tokens_per_s, entry.throughput_source
        if endpoint is not None and entry.name == deployed:
            name = f"{endpoint} on {entry.instance_type}"
            if measured is not None:
                tokens_per_s, throughput_source = measured.output_tokens_per_s, measured.source
            elif measured_note:
                throughput_source = f"{entry.throughput_source}; {measured_note}"
        options.append(
            SelfHostedOption(
                name=name,
                instance_type=entry.instance_type,
                gpus=entry.gpus,
                on_demand_usd_per_hour=entry.on_demand_usd_per_hour,
                spot_usd_per_hour=entry.spot_usd_per_hour,
                output_tokens_per_s=tokens_per_s,
                spot_share=defaults["spot_share"].value if entry.spot_usd_per_hour is not None else 0.0,
                min_instances=int(defaults["min_instances"].value),
                utilisation=defaults["utilisation"].value,
                power_kw=entry.power_kw,
                source=f"{entry.source} ({entry.region})",
                date=entry.date,
                note=entry.note,
                throughput_source=throughput_source,
                sources=policy
                if entry.spot_usd_per_hour is not None
                else policy | {"spot_share": "no spot price for this instance: all hours on demand"},
            )
        )
    fixed = FixedCosts(
        **{
            f: defaults[f].value
            for f in (
                "training_runs_per_month",
                "training_cost_per_run_usd",
                "staff_cost_per_month_usd",
                "operations_share",
                "power_usd_per_kwh",
            )
        },
        sources={f: _sourced_text(defaults[f]) for f in SELF_HOSTING_FIELDS},
    )
    apis = tuple(
        ApiOption(
            name=a.name,
            usd_per_1m_input=a.usd_per_1m_input,
            usd_per_1m_output=a.usd_per_1m_output,
            source=a.source,
            date=a.date,
            note=a.note,
        )
        for a in sheet.apis
    )
    extra = (Assumption(name="price_sheet.as_of", value=sheet.as_of, source=f"{sheet_label}: {sheet.note}"),)
    try:
        return TcoInputs(
            traffic=traffic,
            p99_latency_s=p99_latency_s,
            apis=apis,
            self_hosted=tuple(options),
            fixed=fixed,
            price_sheet=f"{sheet_label} (as of {sheet.as_of})",
            extra_assumptions=extra,
        )
    except ValidationError as exc:
        raise TcoError(f"{sheet_label}: {exc.errors()[0]['msg']}") from exc


# --- presentation ----------------------------------------------------------------------------------------------


def cost_curves(inputs: TcoInputs, report: TcoReport, points: int = 300) -> dict[str, list[tuple[float, float]]]:
    """Average-month cost of each option on a log grid of daily volumes (x in millions of tokens/day), from a
    twentieth of today's traffic to past the furthest breakeven."""
    today = inputs.traffic.tokens_per_day
    reach = [b.always_cheaper_from_tokens_per_day for b in report.breakevens if b.always_cheaper_from_tokens_per_day]
    low, high = today / 20, max([20 * today, *(2 * r for r in reach)])
    volumes = [low * (high / low) ** (i / (points - 1)) for i in range(points)]
    curves: dict[str, list[tuple[float, float]]] = {}
    for api in inputs.apis:
        curves[api.name] = [(v / 1e6, api_average_usd(api, inputs.traffic.scaled(v))) for v in volumes]
    for option in inputs.self_hosted:
        curves[option.name] = [
            (v / 1e6, self_hosted_average_usd(option, inputs.fixed, inputs.traffic.scaled(v))) for v in volumes
        ]
    return curves


def cost_plot(inputs: TcoInputs, report: TcoReport) -> str:
    """Markdown with an inline PNG: average monthly cost against daily volume (log-log), one line per option
    (APIs solid, self-hosting dashed), today's volume marked."""
    import matplotlib.pyplot as plt

    from llm_assets.plots import _markdown_png

    title = "Average monthly cost vs daily volume"
    fig, ax = plt.subplots(figsize=(7, 4))
    kinds = {o.name: o.kind for o in report.options}
    for name, points in cost_curves(inputs, report).items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, linestyle="-" if kinds[name] == "api" else "--", label=name)
    ax.axvline(report.tokens_per_day / 1e6, color="grey", linewidth=1, linestyle=":", label="today")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("million tokens per day (today's input/output mix)")
    ax.set_ylabel("USD per average month")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return _markdown_png(fig, title)


def _usd(value: float) -> str:
    return f"${value:,.0f}" if value >= 100 else f"${value:,.2f}"


def _tokens(value: int | None) -> str:
    return "never" if value is None else f"{value:,}"


def render_markdown(report: TcoReport, plot: str | None = None) -> str:
    """The report as Markdown: costs, breakevens, the plot (when given) and every assumption with its source."""
    lines = [
        "# Total cost of ownership",
        "",
        f"Traffic {report.tokens_per_day:,.0f} tokens/day ({report.tokens_per_month:,.0f} per average month), "
        f"p99 latency target {report.p99_latency_s:g} s; prices from {report.price_sheet}, in {report.currency}. "
        f"Cheapest today: **{report.cheapest}**.",
        "",
        "| option | kind | instances (peak month) | average month | peak month | per 1M tokens |",
        "|---|---|---|---|---|---|",
    ]
    for o in report.options:
        instances = str(max(o.instances_by_month)) if o.instances_by_month else "-"
        lines.append(
            f"| {o.name} | {o.kind} | {instances} | {_usd(o.monthly_usd_average)} | {_usd(o.monthly_usd_peak)} | "
            f"${o.usd_per_1m_tokens:,.3f} |"
        )
    lines += [
        "",
        "## Breakeven (average month)",
        "",
        "| self-hosted | vs API | cheaper from tokens/day | stays cheaper from | cheaper today | note |",
        "|---|---|---|---|---|---|",
    ]
    for b in report.breakevens:
        lines.append(
            f"| {b.self_hosted} | {b.api} | {_tokens(b.tokens_per_day)} | "
            f"{_tokens(b.always_cheaper_from_tokens_per_day)} | {b.cheaper_at_current_traffic} | {b.note} |"
        )
    if plot:
        lines += ["", plot]
    lines += [
        "",
        "## Method",
        "",
        report.method,
        "",
        "## Assumptions",
        "",
        "| name | value | source |",
        "|---|---|---|",
    ]
    for a in report.assumptions:
        value = json.dumps(a.value) if isinstance(a.value, list | tuple) else a.value
        lines.append(f"| {a.name} | {value} | {a.source} |")
    return "\n".join(lines) + "\n"


def monthly_costs(report: TcoReport) -> Mapping[str, dict[str, float]]:
    """{option: {average, peak}} rounded to cents, for metadata."""
    return {
        o.name: {"average": round(o.monthly_usd_average, 2), "peak": round(o.monthly_usd_peak, 2)}
        for o in report.options
    }
