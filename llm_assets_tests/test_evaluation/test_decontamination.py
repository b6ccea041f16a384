from __future__ import annotations

import pytest

from llm_assets.evaluation.decontamination import NgramIndex, Overlap, decontaminate, normalise_tokens

TRAIN = [
    (
        "sft-1",
        "Answer the civics question briefly. Question: What is the supreme law of the land? Answer: the Constitution",
    ),
    ("cur-7", "Everyone has the right to life, liberty and security of person, and no one shall be held in slavery."),
    ("cur-9", "Ο Διοικητής επιλέγεται και διορίζεται με Πράξη του Υπουργικού Συμβουλίου, η οποία εκδίδεται μετά από."),
    ("cur-11", "Short line\nThe capital city"),
]


@pytest.fixture(scope="module")
def index() -> NgramIndex:
    return NgramIndex.build(iter(TRAIN))


def test_verbatim_overlap_names_ngram_and_doc(index: NgramIndex) -> None:
    overlaps = index.find_overlaps([("q1", "Everyone has the right to life, liberty and security of person.")])
    assert overlaps == [Overlap("q1", "cur-7", "everyone has the right to life liberty and", 4)]


def test_case_and_punctuation_changes_still_match(index: NgramIndex) -> None:
    (overlap,) = index.find_overlaps([("q2", "EVERYONE — has the RIGHT to life; LIBERTY and security of person!!")])
    assert overlap.doc_id == "cur-7" and overlap.count == 4


def test_greek_overlap_ignores_accents_and_case(index: NgramIndex) -> None:
    (overlap,) = index.find_overlaps(
        [("el", "Ο ΔΙΟΙΚΗΤΗΣ ΕΠΙΛΕΓΕΤΑΙ ΚΑΙ ΔΙΟΡΙΖΕΤΑΙ ΜΕ ΠΡΑΞΗ ΤΟΥ ΥΠΟΥΡΓΙΚΟΥ ΣΥΜΒΟΥΛΙΟΥ")]
    )
    assert overlap.doc_id == "cur-9"
    assert overlap.ngram.startswith("ο διοικητησ επιλεγεται")


def test_no_false_positives_on_unrelated_text(index: NgramIndex) -> None:
    unrelated = [
        ("u1", "The river flows past the old mill towards the sea every spring and autumn without fail."),
        ("u2", "Η θητεία του Διοικητή είναι πενταετής και μπορεί να ανανεώνεται μία μόνο φορά σε κάθε περίπτωση."),
        ("u3", "Everyone has the right to a nationality and to change it freely."),
    ]
    assert index.find_overlaps(unrelated) == []


def test_short_items_fall_back_to_exact_whole_text(index: NgramIndex) -> None:
    assert [o.doc_id for o in index.find_overlaps([("s1", "the capital CITY.")])] == ["cur-11"]
    assert index.find_overlaps([("s2", "the capital")]) == []
    assert index.find_overlaps([("s3", "")]) == []


def test_decontaminate_splits_clean_from_contaminated(index: NgramIndex) -> None:
    items = [
        ("a", "What is the supreme law of the land? Answer: the Constitution"),
        ("b", "Name one branch or part of the government of the United States today."),
    ]
    clean, contaminated, overlaps = decontaminate(items, index)
    assert clean == [items[1]] and contaminated == [items[0]]
    assert [(o.item_id, o.doc_id) for o in overlaps] == [("a", "sft-1")]


def test_index_memory_grows_with_distinct_ngrams() -> None:
    index = NgramIndex.build([("a", "one two three four five six seven eight nine")] * 3, n=8)
    assert len(index) == 2 and index.doc_ids == ["a", "a", "a"]
    with pytest.raises(ValueError, match="at least 1"):
        NgramIndex(n=0)


def test_normalise_tokens() -> None:
    assert normalise_tokens("Άρθρο_5: ΝΌΜΟΣ, it's") == ["αρθρο", "5", "νομοσ", "it", "s"]
