"""Drift views: a shifted language mix is drift, a fresh sample of the same distribution is not."""

import json
import random
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_assets.curation.quality import identify_languages
from llm_assets.monitoring.drift import (
    compare,
    hashed_ngram_vectors,
    jensen_shannon,
    mmd_permutation_test,
    total_variation,
)
from llm_assets.monitoring.embeddings import PACKAGED_MODEL, EmbeddingModelMissing, SentenceEmbedder


def _languages(texts: Sequence[str]) -> list[str]:
    return identify_languages(texts)[0]


def _banking_prompts() -> list[str]:
    path = files("llm_assets") / "sample_corpus" / "banking77" / "banking77.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


GREEK = [
    "Πώς μπορώ να ανοίξω λογαριασμό στην τράπεζα;",
    "Έχασα την κάρτα μου, τι πρέπει να κάνω;",
    "Ποια είναι η ισοτιμία του ευρώ σήμερα;",
    "Πότε θα φτάσει η νέα μου κάρτα;",
    "Θέλω να αλλάξω τη διεύθυνσή μου.",
    "Γιατί χρεώθηκα προμήθεια για τη μεταφορά;",
]


def test_same_distribution_is_not_drift() -> None:
    prompts = _banking_prompts()
    rng = random.Random(1)
    rng.shuffle(prompts)
    result = compare(prompts[:300], prompts[300:600], languages=_languages)
    assert not result.drifted, result.reasons
    assert result.mmd_p_value > 0.01 and result.language_tvd < 0.1 and result.vocabulary_js < 0.35


def test_another_language_mix_is_drift() -> None:
    prompts = _banking_prompts()
    shifted = prompts[300:400] + GREEK * 20
    result = compare(prompts[:300], shifted, languages=_languages)
    assert result.drifted
    assert result.language_current.get("el", 0) > 0.4 and result.language_tvd > 0.2
    assert any("language mix" in reason for reason in result.reasons)
    assert result.mmd_p_value < 0.01


def test_empty_side_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="production_samples"):
        compare(["a"], [], languages=_languages)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdef"), st.floats(0.01, 1.0), min_size=1))
def test_divergences_are_bounded_and_zero_on_identity(weights: dict[str, float]) -> None:
    total = sum(weights.values())
    p = {k: v / total for k, v in weights.items()}
    assert jensen_shannon(p, p) == pytest.approx(0.0, abs=1e-12)
    assert total_variation(p, p) == pytest.approx(0.0, abs=1e-12)
    assert jensen_shannon(p, {"z": 1.0}) == pytest.approx(1.0)
    assert total_variation(p, {"z": 1.0}) == pytest.approx(1.0)


def test_mmd_is_deterministic_and_vectors_are_unit_length() -> None:
    vectors = hashed_ngram_vectors(["hello world", "", "γεια σου κόσμε"])
    assert np.allclose(np.linalg.norm(vectors[[0, 2]], axis=1), 1.0) and not vectors[1].any()
    x = hashed_ngram_vectors([f"card {i} lost" for i in range(20)])
    y = hashed_ngram_vectors([f"κάρτα {i} χάθηκε" for i in range(20)])
    first, second = mmd_permutation_test(x, y, seed=3), mmd_permutation_test(x, y, seed=3)
    assert first == second and first[1] < 0.01


def _civics_questions() -> list[str]:
    path = files("llm_assets") / "sample_corpus" / "uscis_civics" / "uscis_civics.jsonl"
    return [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_sentence_embeddings_see_a_topic_shift_in_the_same_language() -> None:
    """The packaged all-MiniLM-L6-v2 (no hub): same-topic samples agree, a topic shift is found by the MMD."""
    embed = SentenceEmbedder(PACKAGED_MODEL)
    prompts = _banking_prompts()
    random.Random(2).shuffle(prompts)
    same = compare(prompts[:150], prompts[150:250], languages=_languages, embed=embed, embedding="minilm")
    assert same.mmd_p_value > 0.01 and same.embedding == "minilm", same.reasons
    # Civics questions are English too, of similar length: the language view cannot see this shift.
    shifted = compare(prompts[:150], _civics_questions()[:60], languages=_languages, embed=embed)
    assert shifted.mmd_p_value < 0.01 and shifted.language_tvd < 0.2
    assert any("embeddings differ" in reason for reason in shifted.reasons)
    vectors = embed(["I lost my card", "Who wrote the Constitution?"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_missing_embedding_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelMissing, match=r"not a sentence-transformers folder .*all-MiniLM-L6-v2"):
        SentenceEmbedder(str(tmp_path / "nowhere"))
