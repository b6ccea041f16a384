"""Prompt drift between production samples and the training/eval distribution.

Four views, each a number a person can read and a threshold can gate: language mix (total variation
distance between language shares), length (relative change of the median in characters), vocabulary
(Jensen-Shannon divergence, base 2, between word distributions) and a two-sample test on text vectors
(maximum mean discrepancy with an RBF kernel, p-value by permutation with a fixed seed) on sentence
embeddings (`embed`, e.g. all-MiniLM-L6-v2 from `embeddings.py`) or, without one, on L2-normalised hashed
character-trigram vectors. Everything is deterministic for the same inputs. Cost is linear in the
number of texts except the MMD, which works on at most `max_mmd_texts` per side (a seeded sample).
"""

from __future__ import annotations

import math
import random
import re
import statistics
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
HASHED_VECTORS = "hashed-char-trigrams-512"
Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class DriftThresholds:
    """When a view counts as drifted; `drifted` is True when any view is past its threshold."""

    language_tvd: float = 0.2
    length_relative_change: float = 0.5
    vocabulary_js: float = 0.35
    mmd_p_value: float = 0.01


@dataclass
class DriftResult:
    n_reference: int
    n_current: int
    language_reference: dict[str, float]
    language_current: dict[str, float]
    language_tvd: float
    median_chars_reference: float
    median_chars_current: float
    length_relative_change: float
    vocabulary_js: float
    mmd: float
    mmd_p_value: float
    thresholds: DriftThresholds
    reasons: list[str] = field(default_factory=list)
    embedding: str = HASHED_VECTORS

    @property
    def drifted(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "language_reference": self.language_reference,
            "language_current": self.language_current,
            "language_tvd": self.language_tvd,
            "median_chars_reference": self.median_chars_reference,
            "median_chars_current": self.median_chars_current,
            "length_relative_change": self.length_relative_change,
            "vocabulary_js": self.vocabulary_js,
            "mmd": self.mmd,
            "mmd_p_value": self.mmd_p_value,
            "embedding": self.embedding,
            "thresholds": self.thresholds.__dict__,
            "drifted": self.drifted,
            "reasons": self.reasons,
        }


def shares(labels: Sequence[str]) -> dict[str, float]:
    counts = Counter(labels)
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())} if total else {}


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def jensen_shannon(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """JS divergence in bits (0 = same distribution, 1 = disjoint support)."""
    keys = set(p) | set(q)
    total = 0.0
    for k in keys:
        a, b = p.get(k, 0.0), q.get(k, 0.0)
        m = (a + b) / 2
        if a > 0:
            total += 0.5 * a * math.log2(a / m)
        if b > 0:
            total += 0.5 * b * math.log2(b / m)
    return max(0.0, min(1.0, total))


def word_distribution(texts: Sequence[str]) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(words(text))
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def hashed_ngram_vectors(texts: Sequence[str], *, dims: int = 512, n: int = 3) -> np.ndarray:
    """L2-normalised counts of hashed character n-grams (crc32, stable across runs and machines)."""
    matrix = np.zeros((len(texts), dims), dtype=np.float64)
    for row, text in enumerate(texts):
        tokens = words(text)
        if not tokens:
            continue  # a zero vector: nothing to compare
        padded = f" {' '.join(tokens)} "
        for i in range(max(1, len(padded) - n + 1)):
            matrix[row, zlib.crc32(padded[i : i + n].encode("utf-8")) % dims] += 1.0
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, *, permutations: int = 200, seed: int = 0
) -> tuple[float, float]:
    """(MMD² biased estimate with an RBF kernel at the median-distance bandwidth, permutation p-value)."""
    if len(x) < 2 or len(y) < 2:
        return 0.0, 1.0
    pooled = np.vstack([x, y])
    sq = np.sum(pooled**2, axis=1)
    distances = np.maximum(sq[:, None] + sq[None, :] - 2 * pooled @ pooled.T, 0.0)
    upper = distances[np.triu_indices(len(pooled), k=1)]
    bandwidth = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    kernel = np.exp(-distances / bandwidth)
    n = len(x)

    def statistic(order: np.ndarray) -> float:
        a, b = order[:n], order[n:]
        return float(kernel[np.ix_(a, a)].mean() + kernel[np.ix_(b, b)].mean() - 2 * kernel[np.ix_(a, b)].mean())

    identity = np.arange(len(pooled))
    observed = statistic(identity)
    rng = np.random.default_rng(seed)
    at_least = sum(statistic(rng.permutation(identity)) >= observed for _ in range(permutations))
    return observed, (at_least + 1) / (permutations + 1)


def compare(
    reference: Sequence[str],
    current: Sequence[str],
    *,
    languages: Callable[[Sequence[str]], Sequence[str]],
    thresholds: DriftThresholds | None = None,
    max_mmd_texts: int = 300,
    permutations: int = 200,
    seed: int = 0,
    embed: Embed | None = None,
    embedding: str | None = None,
) -> DriftResult:
    """Drift of `current` prompts against `reference` prompts; `languages` labels each text (e.g. the
    curation stage's language identifier); `embed` maps texts to vectors for the MMD test (named
    `embedding` in the result), hashed character trigrams when None."""
    if not reference or not current:
        raise ValueError(
            f"drift needs texts on both sides (reference {len(reference)}, current {len(current)}); "
            "materialise the reference set and production_samples for the period first"
        )
    thresholds = thresholds or DriftThresholds()
    lang_ref, lang_cur = shares(list(languages(reference))), shares(list(languages(current)))
    tvd = total_variation(lang_ref, lang_cur)
    med_ref = statistics.median(len(t) for t in reference)
    med_cur = statistics.median(len(t) for t in current)
    length_change = abs(med_cur - med_ref) / med_ref if med_ref else float(med_cur > 0)
    js = jensen_shannon(word_distribution(reference), word_distribution(current))
    sampler = random.Random(seed)
    ref_sample = sampler.sample(list(reference), min(max_mmd_texts, len(reference)))
    cur_sample = sampler.sample(list(current), min(max_mmd_texts, len(current)))
    vectors = embed or hashed_ngram_vectors
    mmd, p_value = mmd_permutation_test(
        np.asarray(vectors(ref_sample), dtype=np.float64),
        np.asarray(vectors(cur_sample), dtype=np.float64),
        permutations=permutations,
        seed=seed,
    )
    reasons = []
    if tvd > thresholds.language_tvd:
        reasons.append(f"language mix moved by {tvd:.2f} (total variation) > {thresholds.language_tvd}")
    if length_change > thresholds.length_relative_change:
        reasons.append(
            f"median prompt length {med_ref:.0f} -> {med_cur:.0f} chars "
            f"({length_change:.0%} > {thresholds.length_relative_change:.0%})"
        )
    if js > thresholds.vocabulary_js:
        reasons.append(f"vocabulary Jensen-Shannon {js:.2f} > {thresholds.vocabulary_js}")
    if p_value < thresholds.mmd_p_value:
        what = "embeddings" if embed is not None else "character trigrams"
        reasons.append(f"prompt {what} differ (MMD p = {p_value:.3f} < {thresholds.mmd_p_value})")
    return DriftResult(
        len(reference),
        len(current),
        lang_ref,
        lang_cur,
        tvd,
        float(med_ref),
        float(med_cur),
        length_change,
        js,
        mmd,
        p_value,
        thresholds,
        reasons,
        embedding or (HASHED_VECTORS if embed is None else str(getattr(embed, "name", "custom"))),
    )
