"""Language ID runs fastText lid.176 through fasttext-new: same answers as the C++ bindings, batch or not."""

from __future__ import annotations

import fasttext
import pytest

from llm_assets.curation.langid import (
    _model_path,
    _predict,
    identify_languages,
    langid_labels,
    langid_model_sha256,
)

TEXTS = [
    "Ο παρών νόμος έχει ως σκοπό την αναμόρφωση του εθνικού συστήματος επαγγελματικής εκπαίδευσης.",
    "How do I top up my card?",
    "",
    "Der Bericht erklärt, wie das neue Portal die Wartezeiten verkürzt hat.",
    "12345 !!! 2024-01-01",
    "Настоящият закон урежда обществените отношения, свързани с образованието.",
    "THE MINISTRY PUBLISHES ITS ANNUAL REPORT ON DIGITAL SERVICES",
    "Le rapport\nexplique\tcomment le nouveau portail a réduit les délais d'attente.",
    "La relazione spiega come il nuovo portale abbia ridotto i tempi di attesa.",
]


def test_batch_gives_the_same_answer_as_one_text_at_a_time() -> None:
    batch = identify_languages(TEXTS)
    single = [identify_languages([text]) for text in TEXTS]
    assert batch == ([s[0][0] for s in single], [s[1][0] for s in single])
    assert batch[0] == ["el", "en", "und", "de", "und", "bg", "en", "fr", "it"]


def test_matches_the_fasttext_cpp_bindings() -> None:
    """fasttext-new is a reimplementation: its top-3 labels and probabilities must be the C++ library's."""
    reference = fasttext.load_model(str(_model_path()))
    ours = _predict(TEXTS, 3, 2048)
    for text, candidates in zip(TEXTS, ours, strict=True):
        if not candidates:
            continue
        line = " ".join(text.split())
        line = line.lower() if line.isupper() else line
        labels, probs = reference.predict(line, k=3)
        assert [label for label, _ in candidates] == [label.removeprefix("__label__") for label in labels]
        assert [p for _, p in candidates] == pytest.approx([min(float(p), 1.0) for p in probs], abs=1e-6)


def test_labels_are_the_models_iso_639_1_codes() -> None:
    labels = langid_labels()
    assert len(labels) == 176
    assert {"el", "en", "bg", "de", "fr", "yue"} <= labels
    assert len(langid_model_sha256()) == 64


def test_whitespace_and_newlines_are_folded_into_one_line() -> None:
    assert identify_languages(["Le rapport\r\nexplique\u00a0comment\n\nle portail"]) == identify_languages(
        ["Le rapport explique comment le portail"]
    )
