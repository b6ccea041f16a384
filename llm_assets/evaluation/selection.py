"""Model selection from measured evidence: baseline b, rate of adaptation ra, projected cost to the KPI.

The seeds' order: score each candidate base before adaptation (b), adapt it briefly while scoring its
checkpoints (ra: the slope of the held-out score against training tokens), project what reaching the KPI
costs, pick the smallest candidate that gets there within budget, and recommend a route by the decision
matrix, stating the evidence for every row of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


class SelectionError(ValueError):
    """Evidence that cannot support a selection; the message names what is missing."""


@dataclass(frozen=True)
class RateFit:
    """Least-squares line score = intercept + ra * (training tokens / 1e6) over the rising part of a curve."""

    ra_per_million_tokens: float
    intercept: float
    r2: float
    points_used: int
    tokens_per_second: float

    @property
    def ra_per_hour(self) -> float:
        """The same slope per hour of training on the hardware the curve was measured on."""
        return self.ra_per_million_tokens * self.tokens_per_second * 3600 / 1e6


@dataclass(frozen=True)
class Projection:
    """What reaching the KPI takes: observed on the curve, extrapolated along ra, or out of reach."""

    reaches_kpi: bool
    observed: bool
    tokens: float | None
    hours: float | None
    cost: float | None
    note: str


def _points(curve: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if len(curve) < 2:
        raise SelectionError(
            f"an adaptation curve needs at least 2 points (before and during training), got {len(curve)}"
        )
    for point in curve:
        missing = {"score", "tokens", "train_seconds"} - set(point)
        if missing:
            raise SelectionError(f"curve point {dict(point)}: missing {sorted(missing)}")
    return sorted(curve, key=lambda p: p["tokens"])


def fit_rate(curve: Sequence[Mapping[str, Any]]) -> RateFit:
    """ra from the curve's points up to its first maximum.

    Points after the peak (plateau, overfitting) say nothing about how fast the model learns and would drag
    the slope towards zero; the fit reports how many points it used and its R^2.
    """
    points = _points(curve)
    scores = [float(p["score"]) for p in points]
    used = points[: max(scores.index(max(scores)), 1) + 1]
    x = np.array([float(p["tokens"]) for p in used]) / 1e6
    y = np.array([float(p["score"]) for p in used])
    last = points[-1]
    speed = float(last["tokens"]) / float(last["train_seconds"]) if last["train_seconds"] else 0.0
    if np.ptp(x) == 0:
        return RateFit(0.0, float(y.mean()), 0.0, len(used), speed)
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(((y - (intercept + slope * x)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return RateFit(float(slope), float(intercept), r2, len(used), speed)


def project(
    curve: Sequence[Mapping[str, Any]],
    fit: RateFit,
    kpi: float,
    hourly_cost: float,
    *,
    max_extrapolation: float = 2.0,
) -> Projection:
    """Tokens, hours and cost to reach `kpi`: the first curve point at or above it, else the fitted line.

    Learning curves flatten, so a straight line is optimistic: extrapolation further than `max_extrapolation`
    times the measured tokens is not trusted, and the candidate is reported as not reaching the KPI, with the
    figure in the note.
    """
    if not 0 < kpi <= 1:
        raise SelectionError(f"kpi {kpi}: a score target must be in (0, 1]")
    points = _points(curve)
    for point in points:
        if float(point["score"]) >= kpi:
            hours = float(point["train_seconds"]) / 3600
            return Projection(True, True, float(point["tokens"]), hours, hours * hourly_cost, "reached on the curve")
    if fit.ra_per_million_tokens <= 0 or fit.tokens_per_second <= 0:
        return Projection(False, False, None, None, None, "the score did not rise: no projection")
    tokens = max((kpi - fit.intercept) / fit.ra_per_million_tokens * 1e6, float(points[-1]["tokens"]))
    hours = tokens / fit.tokens_per_second / 3600
    measured = float(points[-1]["tokens"])
    if tokens > max_extrapolation * measured:
        return Projection(
            False,
            False,
            tokens,
            hours,
            hours * hourly_cost,
            f"needs {tokens / measured:.0f}x the measured tokens; "
            f"beyond the {max_extrapolation:g}x extrapolation limit",
        )
    return Projection(True, False, tokens, hours, hours * hourly_cost, "extrapolated along ra")


@dataclass(frozen=True)
class Candidate:
    """One candidate base with its evidence: benchmark baseline, adaptation curve and what the KPI costs."""

    name: str
    parameters: int | None
    benchmark: float | None
    chance: float
    curve: list[dict[str, Any]]
    fit: RateFit
    projection: Projection
    benchmark_items: int | None = None

    def near_chance(self, margin: float) -> bool:
        """The benchmark baseline is not clearly above chance: within `margin`, or within two standard errors
        of a chance-level score on this many items (a random model scores 30% on 100 four-way items often)."""
        if self.benchmark is None:
            return True
        noise = 2 * math.sqrt(self.chance * (1 - self.chance) / self.benchmark_items) if self.benchmark_items else 0.0
        return self.benchmark <= self.chance + max(margin, noise)

    @property
    def b(self) -> float:
        """Baseline b on the KPI task: the curve's score before any training."""
        return float(_points(self.curve)[0]["score"])

    @property
    def best(self) -> float:
        return max(float(p["score"]) for p in self.curve)


def candidate(
    name: str,
    curve: Sequence[Mapping[str, Any]],
    *,
    kpi: float,
    hourly_cost: float,
    parameters: int | None = None,
    benchmark: float | None = None,
    chance: float = 0.25,
    benchmark_items: int | None = None,
    max_extrapolation: float = 2.0,
) -> Candidate:
    fit = fit_rate(curve)
    projection = project(curve, fit, kpi, hourly_cost, max_extrapolation=max_extrapolation)
    return Candidate(name, parameters, benchmark, chance, [dict(p) for p in curve], fit, projection, benchmark_items)


@dataclass(frozen=True)
class Selection:
    chosen: str | None
    why: str
    within_budget: list[str]


def select(candidates: Sequence[Candidate], *, budget: float) -> Selection:
    """The smallest candidate (by parameters, then cost) that reaches the KPI within budget."""
    if not candidates:
        raise SelectionError("no candidates: materialize adaptation_curve for at least one candidate")
    fits = [
        c
        for c in candidates
        if c.projection.reaches_kpi and c.projection.cost is not None and c.projection.cost <= budget
    ]
    if not fits:
        return Selection(None, f"no candidate reaches the KPI within the budget of {budget:g}", [])
    fits.sort(key=lambda c: (c.parameters if c.parameters is not None else float("inf"), c.projection.cost or 0.0))
    chosen = fits[0]
    how = "measured" if chosen.projection.observed else "projected"
    return Selection(
        chosen.name,
        f"smallest of {len(fits)} candidate(s) reaching the KPI within budget ({how} cost "
        f"{chosen.projection.cost:.4g} <= {budget:g})",
        [c.name for c in fits],
    )


@dataclass(frozen=True)
class MatrixRow:
    route: str
    holds: bool
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Route:
    route: str
    reason: str
    rows: list[MatrixRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FINE_TUNE = "fine-tune (LoRA SFT on the labelled task data)"
CONTINUED_PRETRAINING = "continued pre-training on the unlabelled in-domain corpus, then fine-tune"
FROM_SCRATCH = "pre-train from scratch"
COLLECT_DATA = "collect labelled task data first"


def recommend_route(
    candidates: Sequence[Candidate],
    *,
    kpi: float,
    budget: float,
    labelled_examples: int,
    unlabelled_chars: int,
    min_labelled_examples: int = 100,
    min_unlabelled_chars: int = 500_000,
    coverage_margin: float = 0.05,
    prompting_share: float = 0.8,
) -> Route:
    """The seeds' decision matrix, each row evaluated on the evidence; the first row that holds wins.

    - fine-tune when a base reaches ~80% of the target before adaptation and labelled data exists;
    - continued pre-training when language/domain coverage is poor (no benchmark baseline clearly above
      chance) but a large unlabelled in-domain corpus exists and some base is usable (it learns the task:
      positive ra);
    - from scratch only when no base is usable, and only with a large corpus.
    """
    if not candidates:
        raise SelectionError("no candidates: materialize adaptation_curve for at least one candidate")
    best_b = max(c.b for c in candidates)
    labelled = labelled_examples >= min_labelled_examples
    corpus = unlabelled_chars >= min_unlabelled_chars
    benchmarks = {c.name: c.benchmark for c in candidates}
    poor = all(c.near_chance(coverage_margin) for c in candidates)
    usable = [
        c.name
        for c in candidates
        if c.fit.ra_per_million_tokens > 0
        or (c.projection.reaches_kpi and c.projection.cost is not None and c.projection.cost <= budget)
    ]
    rows = [
        MatrixRow(
            FINE_TUNE,
            best_b >= prompting_share * kpi and labelled,
            {
                "best_b": best_b,
                "needed_b": prompting_share * kpi,
                "labelled_examples": labelled_examples,
                "min_labelled_examples": min_labelled_examples,
            },
        ),
        MatrixRow(
            CONTINUED_PRETRAINING,
            poor and corpus and bool(usable),
            {
                "benchmark_baselines": benchmarks,
                "near_chance": {c.name: c.near_chance(coverage_margin) for c in candidates},
                "coverage_poor": poor,
                "unlabelled_chars": unlabelled_chars,
                "min_unlabelled_chars": min_unlabelled_chars,
                "usable_bases": usable,
            },
        ),
        MatrixRow(
            FROM_SCRATCH,
            not usable and corpus,
            {"usable_bases": usable, "unlabelled_chars": unlabelled_chars},
        ),
    ]
    for row in rows:
        if row.holds:
            return Route(row.route, _reason(row), rows)
    fallback = FINE_TUNE if labelled else COLLECT_DATA
    return Route(
        fallback, "no row of the matrix holds; " + ("labelled data exists" if labelled else "too few labels"), rows
    )


def _reason(row: MatrixRow) -> str:
    e = row.evidence
    if row.route == FINE_TUNE:
        return (
            f"a base scores {e['best_b']:.3f} >= {e['needed_b']:.3f} before adaptation and "
            f"{e['labelled_examples']} labelled examples exist"
        )
    if row.route == CONTINUED_PRETRAINING:
        return (
            f"every benchmark baseline is within the margin of chance (coverage poor), {e['unlabelled_chars']:,} "
            f"unlabelled characters exist and {', '.join(e['usable_bases'])} learn(s) the task"
        )
    return f"no base learns the task and {e['unlabelled_chars']:,} unlabelled characters exist"


def selection_table(candidates: Sequence[Candidate], chosen: str | None, kpi: float) -> str:
    """b, ra and projected cost side by side, as a Markdown table."""
    lines = [
        "| candidate | parameters | benchmark b | b on KPI task | best | ra / 1M tokens (R^2, points) "
        f"| to KPI {kpi:g} | projected cost |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for c in sorted(candidates, key=lambda c: c.parameters or 0):
        p = c.projection
        reach = ("measured" if p.observed else "projected") if p.reaches_kpi else f"no: {p.note}"
        cost = f"{p.cost:.4g}" if p.cost is not None else "-"
        mark = " **(chosen)**" if c.name == chosen else ""
        bench = f"{c.benchmark:.3f}" if c.benchmark is not None else "-"
        size = f"{c.parameters:,}" if c.parameters else "-"
        lines.append(
            f"| {c.name}{mark} | {size} | {bench} | {c.b:.3f} | {c.best:.3f} | "
            f"{c.fit.ra_per_million_tokens:.4g} ({c.fit.r2:.2f}, {c.fit.points_used}) | {reach} | {cost} |"
        )
    return "\n".join(lines)
