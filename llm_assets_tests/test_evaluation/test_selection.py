"""Rate of adaptation, projected cost, selection and the decision matrix, on hand-made curves."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_assets.evaluation.selection import (
    COLLECT_DATA,
    CONTINUED_PRETRAINING,
    FINE_TUNE,
    FROM_SCRATCH,
    SelectionError,
    candidate,
    fit_rate,
    project,
    recommend_route,
    select,
    selection_table,
)


def _curve(scores: list[float], tokens_per_point: int = 100_000, seconds_per_point: float = 36.0) -> list[dict]:
    return [
        {"step": i * 10, "score": s, "tokens": i * tokens_per_point, "train_seconds": i * seconds_per_point}
        for i, s in enumerate(scores)
    ]


def test_ra_is_the_slope_of_the_rising_part_per_million_tokens() -> None:
    # +0.1 per 100k tokens = 1.0 per 1M tokens, then a plateau and a dip that must not flatten the slope.
    fit = fit_rate(_curve([0.0, 0.1, 0.2, 0.3, 0.3, 0.28]))
    assert fit.ra_per_million_tokens == pytest.approx(1.0)
    assert fit.r2 == pytest.approx(1.0) and fit.points_used == 4
    assert fit.tokens_per_second == pytest.approx(500_000 / 180)
    assert fit.ra_per_hour == pytest.approx(1.0 * (500_000 / 180) * 3600 / 1e6)


def test_noisy_curve_reports_a_partial_fit() -> None:
    fit = fit_rate(_curve([0.0, 0.2, 0.1, 0.35, 0.3, 0.4]))
    assert 0 < fit.r2 < 1 and fit.points_used == 6 and fit.ra_per_million_tokens > 0


def test_projection_observed_extrapolated_and_out_of_reach() -> None:
    curve = _curve([0.0, 0.1, 0.2, 0.3])
    fit = fit_rate(curve)
    seen = project(curve, fit, kpi=0.2, hourly_cost=2.0)
    assert seen.observed and seen.reaches_kpi and seen.tokens == 200_000
    assert seen.hours == pytest.approx(72 / 3600) and seen.cost == pytest.approx(72 / 3600 * 2.0)
    ahead = project(curve, fit, kpi=0.5, hourly_cost=2.0)
    assert ahead.reaches_kpi and not ahead.observed and ahead.tokens == pytest.approx(500_000)
    assert ahead.hours == pytest.approx(500_000 / fit.tokens_per_second / 3600)
    far = project(curve, fit, kpi=1.0, hourly_cost=2.0, max_extrapolation=2.0)
    assert not far.reaches_kpi and "extrapolation limit" in far.note
    flat = _curve([0.1, 0.1, 0.1])
    assert not project(flat, fit_rate(flat), kpi=0.5, hourly_cost=1.0).reaches_kpi


def test_bad_evidence_is_a_clear_error() -> None:
    with pytest.raises(SelectionError, match="at least 2 points"):
        fit_rate(_curve([0.1]))
    with pytest.raises(SelectionError, match="missing"):
        fit_rate([{"score": 0.1, "tokens": 0}, {"score": 0.2, "tokens": 10}])
    with pytest.raises(SelectionError, match="kpi"):
        project(_curve([0.0, 0.1]), fit_rate(_curve([0.0, 0.1])), kpi=1.5, hourly_cost=1.0)
    with pytest.raises(SelectionError, match="no candidates"):
        select([], budget=1.0)


def _candidates(kpi: float = 0.5) -> list:
    small = candidate("small", _curve([0.0, 0.1, 0.2, 0.3]), kpi=kpi, hourly_cost=1.0, parameters=1_000, benchmark=0.26)
    big = candidate(
        "big", _curve([0.0, 0.3, 0.55, 0.6], seconds_per_point=360), kpi=kpi, hourly_cost=1.0, parameters=9_000
    )
    return [small, big]


def test_selection_picks_the_smallest_candidate_within_budget() -> None:
    small, big = _candidates()
    assert select([small, big], budget=10.0).chosen == "small"  # projected, cheap
    assert select([small, big], budget=0.0).chosen is None
    # The smaller candidate barely learns (beyond the extrapolation limit): the larger, measured one is chosen.
    tight = candidate(
        "small", _curve([0.0, 0.001, 0.002, 0.003]), kpi=0.5, hourly_cost=1.0, parameters=1_000, benchmark=0.26
    )
    picked = select([tight, big], budget=1.0)
    assert picked.chosen == "big" and "measured" in picked.why
    table = selection_table([tight, big], picked.chosen, 0.5)
    assert "big **(chosen)**" in table and table.count("\n") == 3


def test_decision_matrix_rows() -> None:
    small, big = _candidates()
    common = {"kpi": 0.5, "budget": 10.0, "labelled_examples": 500}
    # Poor coverage (benchmark at chance), a large corpus and bases that learn: continued pre-training.
    route = recommend_route([small, big], unlabelled_chars=5_000_000, **common)
    assert route.route == CONTINUED_PRETRAINING and "coverage poor" in route.reason
    assert [row.holds for row in route.rows] == [False, True, False]
    # A base already near the target before adaptation, with labels: fine-tune.
    strong = candidate("strong", _curve([0.45, 0.5, 0.6]), kpi=0.5, hourly_cost=1.0, parameters=5, benchmark=0.7)
    assert recommend_route([strong], unlabelled_chars=5_000_000, **common).route == FINE_TUNE
    # Nothing learns and a large corpus exists: from scratch.
    dead = candidate("dead", _curve([0.0, 0.0, 0.0]), kpi=0.5, hourly_cost=1.0, parameters=5, benchmark=0.25)
    assert recommend_route([dead], unlabelled_chars=5_000_000, **common).route == FROM_SCRATCH
    # Nothing holds and too few labels: collect data.
    few = recommend_route([dead], kpi=0.5, budget=1.0, labelled_examples=3, unlabelled_chars=10)
    assert few.route == COLLECT_DATA


@given(
    st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), min_size=2, max_size=12),
    st.floats(min_value=0.05, max_value=1),
)
def test_projection_invariants(scores: list[float], kpi: float) -> None:
    curve = _curve(scores)
    fit = fit_rate(curve)
    assert math.isfinite(fit.ra_per_million_tokens) and fit.r2 <= 1.0 + 1e-9
    result = project(curve, fit, kpi=kpi, hourly_cost=1.0)
    if any(s >= kpi for s in scores):
        assert result.observed and result.reaches_kpi
    if result.reaches_kpi and not result.observed:
        assert result.tokens is not None and result.tokens >= curve[-1]["tokens"]


def test_coverage_is_poor_unless_the_baseline_is_clearly_above_chance() -> None:
    def with_benchmark(score: float, items: int | None) -> bool:
        found = candidate("c", _curve([0.0, 0.1]), kpi=0.5, hourly_cost=1.0, benchmark=score, benchmark_items=items)
        return found.near_chance(0.05)

    assert with_benchmark(0.305, 105)  # 2 standard errors of a chance score on 105 items is 0.085
    assert not with_benchmark(0.305, None)  # no item count: only the fixed margin
    assert not with_benchmark(0.45, 105)
    assert with_benchmark(0.29, 10_000)
