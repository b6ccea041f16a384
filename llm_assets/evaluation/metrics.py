"""Business-task metrics computed offline: label accuracy, ROUGE-1/L, BLEU and chrF, per language.

`evaluate.load(...)` fetches metric scripts from a hub and fails offline, so these call `rouge-score` and
`sacrebleu` directly. Every score is in [0, 1] (sacrebleu's 0-100 scale is divided by 100) so that reports
and gates compare like with like.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from statistics import fmean
from typing import Any

Metric = Callable[[Sequence[str], Sequence[str]], float | dict[str, float]]

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+")


class MetricError(ValueError):
    """Inputs a metric cannot score; the message says what is wrong with them."""


def normalise_label(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, surrounding punctuation dropped: `" Positive."` == `"positive"`."""
    folded = _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return folded.strip(string.punctuation + "«»“”‘’·;¿¡ ")


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise MetricError(f"{len(predictions)} predictions but {len(references)} references; pass one of each per item")
    if not predictions:
        raise MetricError("no predictions to score; an empty eval set has no score")


def exact_match_accuracy(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    normalise: Callable[[str], str] | None = normalise_label,
) -> float:
    """Share of predictions equal to their label after `normalise` (None compares the raw strings)."""
    _check_pairs(predictions, references)
    norm = normalise or (lambda text: text)
    return sum(norm(p) == norm(r) for p, r in zip(predictions, references, strict=True)) / len(predictions)


class UnicodeTokenizer:
    """Word tokens in any script (NFKC, case-folded).

    rouge-score's default tokenizer keeps only [a-z0-9], so Greek or Cyrillic text scores zero against itself.
    """

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1 and ROUGE-L F-measures over the items, with Unicode-aware tokenisation."""
    from rouge_score.rouge_scorer import RougeScorer

    _check_pairs(predictions, references)
    scorer = RougeScorer(["rouge1", "rougeL"], tokenizer=UnicodeTokenizer())
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references, strict=True)]
    return {name: fmean(float(s[name].fmeasure) for s in scores) for name in ("rouge1", "rougeL")}


def bleu_chrf(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu 13a tokenisation) and chrF, both scaled to [0, 1]."""
    from sacrebleu import corpus_bleu, corpus_chrf

    _check_pairs(predictions, references)
    refs = [list(references)]
    bleu = float(corpus_bleu(list(predictions), refs).score)
    chrf = float(corpus_chrf(list(predictions), refs).score)
    return {"bleu": min(bleu / 100.0, 1.0), "chrf": min(chrf / 100.0, 1.0)}  # float noise can exceed 100


def per_language(
    rows: Iterable[Mapping[str, Any]],
    metric: Metric,
    *,
    prediction_key: str = "prediction",
    reference_key: str = "answer",
) -> dict[str, dict[str, float]]:
    """Scores `metric` separately for each `lang`, so a regression in one language is not averaged away.

    Each row needs `lang`, a prediction and a reference. A metric returning a float is stored under its
    function name; every language also gets `n`, the number of items scored.
    """
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for number, row in enumerate(rows):
        missing = [key for key in ("lang", prediction_key, reference_key) if key not in row]
        if missing:
            raise MetricError(f"row {number} (id={row.get('id', '?')}): missing {', '.join(missing)}")
        preds, refs = groups.setdefault(str(row["lang"]), ([], []))
        preds.append(str(row[prediction_key]))
        refs.append(str(row[reference_key]))
    if not groups:
        raise MetricError("no rows to score; an empty eval set has no score")
    name = getattr(metric, "__name__", "score")
    result: dict[str, dict[str, float]] = {}
    for lang, (preds, refs) in sorted(groups.items()):
        value = metric(preds, refs)
        scores = dict(value) if isinstance(value, dict) else {name: float(value)}
        result[lang] = {**scores, "n": float(len(preds))}
    return result
