"""Language ID runs fastText lid.176 through fasttext-new: same answers as the C++ bindings, batch or not;
lingua decides between the close languages the lite model confuses."""

from __future__ import annotations

import fasttext
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lingua import Language

from llm_assets.curation.langid import (
    CLOSE_LANGUAGE_GROUPS,
    _model_path,
    _predict,
    identify_languages,
    langid_labels,
    langid_model_sha256,
    langid_refiner,
)
from llm_assets.curation.quality import QualityConfig, quality_filter_batch

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


WORDS = ["le", "rapport", "explique", "der", "Bericht", "νόμος", "закон", "portale", "ridotto", "Tom", "2024"]
SPACES = [" ", "  ", "\n", "\r\n", "\t", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u00a0", "\u2003", "\u202f", "\u3000"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(SPACES)), min_size=1, max_size=12))
def test_the_model_reads_the_words_str_split_finds(pieces: list[tuple[str, str]]) -> None:
    """White space is folded in polars, not by " ".join(text.split()): the model must see the same words."""
    reference = fasttext.load_model(str(_model_path()))
    text = "".join(word + space for word, space in pieces)
    (ours,) = _predict([text], 3, 2048)
    if not any(ch.isalpha() for ch in text):
        assert ours == []  # no letter, no language: 'und'
        return
    labels, probs = reference.predict(" ".join(text.split()), k=3)
    assert [label for label, _ in ours] == [label.removeprefix("__label__") for label in labels]
    assert [p for _, p in ours] == pytest.approx([min(float(p), 1.0) for p in probs], abs=1e-6)


# Everyday sentences the lite model alone reads as the neighbouring language (checked in the test).
NORWEGIAN = (
    "Jeg vet ikke hva han vil. Hun sa at vi skulle møtes i morgen. Kan du hjelpe meg med leksene? "
    "Vi bor i et lite hus ved sjøen."
)
MALAY = (
    "Saya tidak tahu apa yang dia mahu. Dia kata kita akan berjumpa esok. Boleh awak tolong saya buat kerja "
    "sekolah? Kami tinggal di sebuah rumah kecil tepi pantai."
)
CLOSE_NEIGHBOURS = {
    "da": "Jeg ved ikke, hvad han vil. Hun sagde, at vi skulle mødes i morgen. Kan du hjælpe mig med lektierne?",
    "nn": "Eg veit ikkje kva han vil. Ho sa at vi skulle møtast i morgon. Kan du hjelpe meg med leksene?",
    "id": "Saya tidak tahu apa yang dia inginkan. Dia bilang kita akan bertemu besok. Bisakah kamu membantu saya?",
}


def test_close_languages_the_lite_model_confuses_are_decided_by_lingua() -> None:
    assert identify_languages([NORWEGIAN, MALAY], refine_close_languages=False)[0] == ["da", "id"]
    languages, scores = identify_languages([NORWEGIAN, MALAY])
    assert languages == ["no", "ms"]
    assert all(0.5 < score <= 1.0 for score in scores)
    # The neighbours keep their own label, and languages outside the groups are untouched.
    assert identify_languages(list(CLOSE_NEIGHBOURS.values()))[0] == list(CLOSE_NEIGHBOURS)
    assert identify_languages(TEXTS) == identify_languages(TEXTS, refine_close_languages=False)


def test_refined_scores_are_the_same_in_every_call() -> None:
    """lingua's confidence varies in its last bits from call to call; the score must not, or the quality
    shards of one input would hash differently from run to run."""
    texts = [MALAY, NORWEGIAN, CLOSE_NEIGHBOURS["id"], MALAY + " " + CLOSE_NEIGHBOURS["id"]] * 4
    runs = {tuple(identify_languages(texts)[1]) for _ in range(8)}
    assert len(runs) == 1


def test_every_close_language_group_maps_to_the_models_labels_and_lingua_languages() -> None:
    for group in CLOSE_LANGUAGE_GROUPS:
        assert set(group) <= langid_labels()
        assert all(hasattr(Language, name) for name in group.values())
    assert langid_refiner().startswith("lingua-language-detector 2.")


def test_quality_stage_records_the_refiner_and_can_switch_it_off() -> None:
    table = pa.table({"id": ["n", "m"], "text": [NORWEGIAN, MALAY], "source": ["s", "s"]})
    refined = quality_filter_batch(table, QualityConfig())
    plain = quality_filter_batch(table, QualityConfig(refine_close_languages=False))
    assert refined.kept.column("lang").to_pylist() == ["no", "ms"]
    assert plain.kept.column("lang").to_pylist() == ["da", "id"]
    assert refined.stats["langid_refiner"] == langid_refiner()
    assert plain.stats["langid_refiner"] == "off"
