"""Score gates of the eval report: business score vs threshold and base, ROUGE-1 vs the deployed model."""

from __future__ import annotations

import pytest

from llm_assets.evaluation.gates import business_score, rouge_vs_deployed


def _scores(**overall: float) -> dict:
    return {"overall": overall}


@pytest.mark.parametrize(
    ("score", "base", "threshold", "passed"),
    [(0.66, 0.0, 0.5, True), (0.45, 0.0, 0.5, False), (0.6, 0.6, 0.5, False), (0.6, 0.7, 0.0, False)],
)
def test_business_score_needs_the_threshold_and_the_base(
    score: float, base: float, threshold: float, passed: bool
) -> None:
    result = business_score(_scores(exact_match=score), _scores(exact_match=base), "exact_match", threshold)
    assert result.passed is passed
    assert result.figures["delta_vs_base"] == pytest.approx(score - base)


def test_rouge_vs_deployed_allows_five_percent() -> None:
    deployed = {"overall": {"rouge1": 0.40}, "version": "v1"}
    assert rouge_vs_deployed(_scores(rouge1=0.381), deployed, 0.05).passed  # -4.75 %
    regressed = rouge_vs_deployed(_scores(rouge1=0.37), deployed, 0.05)  # -7.5 %
    assert not regressed.passed and regressed.figures["relative_change"] == pytest.approx(-0.075)
    assert regressed.figures["deployed_version"] == "v1"
    nothing = rouge_vs_deployed(_scores(rouge1=0.1), None, 0.05)
    assert nothing.passed and nothing.figures["note"] == "no other version deployed"
