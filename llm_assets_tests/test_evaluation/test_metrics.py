"""Business-task metrics: exact values on small cases, Greek text scored, per-language grouping."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from llm_assets.evaluation.metrics import (
    MetricError,
    UnicodeTokenizer,
    bleu_chrf,
    exact_match_accuracy,
    normalise_label,
    per_language,
    rouge,
)

GREEK_REF = "Η επιτροπή ενέκρινε τον προϋπολογισμό."


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(" Positive.", "positive"), ("NEGATIVE", "negative"), ("«Ουδέτερο»", "ουδέτερο"), ("a  b", "a b")],
)
def test_normalise_label(raw: str, expected: str) -> None:
    assert normalise_label(raw) == expected


def test_exact_match_normalises_by_default() -> None:
    preds = ["Positive.", "negative", "neutral", "ΘΕΤΙΚΟ"]
    refs = ["positive", "negative", "positive", "θετικό"]
    assert exact_match_accuracy(preds, refs) == 0.5  # ΘΕΤΙΚΟ lacks the accent: not the same label
    assert exact_match_accuracy(preds, refs, normalise=None) == 0.25


def test_rouge_exact_values() -> None:
    assert rouge(["the cat sat"], ["the cat sat"]) == {"rouge1": 1.0, "rougeL": 1.0}
    # 3 of 3 predicted tokens match 3 of 6 reference tokens: P=1, R=0.5, F=2/3
    assert rouge(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx({"rouge1": 2 / 3, "rougeL": 2 / 3})
    assert rouge(["dog"], ["cat"]) == {"rouge1": 0.0, "rougeL": 0.0}
    # means over items
    assert rouge(["a b", "x"], ["a b", "y"]) == {"rouge1": 0.5, "rougeL": 0.5}


def test_rouge_scores_greek_partial_match() -> None:
    scores = rouge(["Η επιτροπή ενέκρινε"], [GREEK_REF])
    # 3 of 3 predicted words in a 5-word reference: F = 2 * 1 * 0.6 / 1.6 = 0.75
    assert scores == pytest.approx({"rouge1": 0.75, "rougeL": 0.75})
    assert UnicodeTokenizer().tokenize(GREEK_REF) == ["η", "επιτροπή", "ενέκρινε", "τον", "προϋπολογισμό"]


def test_rouge_order_matters_for_rouge_l_only() -> None:
    scores = rouge(["c b a"], ["a b c"])
    assert scores["rouge1"] == 1.0
    assert scores["rougeL"] == pytest.approx(1 / 3)


def test_bleu_chrf_identical_and_disjoint() -> None:
    same = bleu_chrf(["the committee approved the budget today"], ["the committee approved the budget today"])
    assert same == pytest.approx({"bleu": 1.0, "chrf": 1.0})
    assert 0.0 <= same["bleu"] <= 1.0
    assert bleu_chrf(["xyz"], ["abc"]) == {"bleu": 0.0, "chrf": 0.0}


def test_bleu_chrf_greek_partial() -> None:
    scores = bleu_chrf([GREEK_REF.removesuffix(".")], [GREEK_REF])
    assert 0.5 < scores["bleu"] < 1.0
    assert 0.5 < scores["chrf"] < 1.0


@pytest.mark.parametrize("metric", [rouge, bleu_chrf, exact_match_accuracy])
def test_mismatched_or_empty_inputs_are_one_line_errors(metric: Callable[[list[str], list[str]], object]) -> None:
    with pytest.raises(MetricError, match="2 predictions but 1 references"):
        metric(["a", "b"], ["a"])
    with pytest.raises(MetricError, match="empty eval set"):
        metric([], [])


def test_per_language_groups_by_lang() -> None:
    rows = [
        {"id": "1", "lang": "en", "prediction": "positive", "answer": "positive"},
        {"id": "2", "lang": "en", "prediction": "negative", "answer": "positive"},
        {"id": "3", "lang": "el", "prediction": "θετικό", "answer": "Θετικό"},
    ]
    assert per_language(rows, exact_match_accuracy) == {
        "el": {"exact_match_accuracy": 1.0, "n": 1.0},
        "en": {"exact_match_accuracy": 0.5, "n": 2.0},
    }
    by_lang = per_language(rows, rouge)
    assert by_lang["en"] == {"rouge1": 0.5, "rougeL": 0.5, "n": 2.0}


def test_per_language_names_the_bad_row() -> None:
    with pytest.raises(MetricError, match=r"row 1 \(id=b\): missing lang"):
        per_language(
            [{"id": "a", "lang": "en", "prediction": "x", "answer": "x"}, {"id": "b", "prediction": "x"}], rouge
        )
    with pytest.raises(MetricError, match="no rows"):
        per_language([], rouge)
