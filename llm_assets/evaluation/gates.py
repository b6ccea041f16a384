"""The eval report's score gates: pure decisions on already-computed task scores (the probes are in probes.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_assets.evaluation.probes import ProbeResult


def business_score(adapted: Mapping[str, Any], base: Mapping[str, Any], metric: str, threshold: float) -> ProbeResult:
    """The task score reaches `threshold` and beats the model without the adapter."""
    score, before = float(adapted["overall"][metric]), float(base["overall"][metric])
    return ProbeResult(
        "business_score",
        score >= threshold and score > before,
        {"metric": metric, "score": score, "base": before, "threshold": threshold, "delta_vs_base": score - before},
    )


def rouge_vs_deployed(
    adapted: Mapping[str, Any], deployed: Mapping[str, Any] | None, max_relative_drop: float
) -> ProbeResult:
    """ROUGE-1 at most `max_relative_drop` below the deployed model's (the seeds' 5 % rule); passes when nothing
    else is deployed, and says so."""
    if deployed is None:
        return ProbeResult("rouge_vs_deployed", True, {"deployed": None, "note": "no other version deployed"})
    mine, theirs = float(adapted["overall"]["rouge1"]), float(deployed["overall"]["rouge1"])
    return ProbeResult(
        "rouge_vs_deployed",
        mine >= theirs * (1 - max_relative_drop),
        {
            "rouge1": mine,
            "deployed_rouge1": theirs,
            "relative_change": (mine - theirs) / theirs if theirs else None,
            "deployed_version": deployed.get("version"),
            "max_relative_drop": max_relative_drop,
        },
    )
