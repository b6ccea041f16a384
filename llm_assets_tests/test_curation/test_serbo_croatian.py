"""Serbian, Croatian and Bosnian are told apart by the jat reflex, the script and the standards' own words; where
these say nothing, fastText's answer stands."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llm_assets.curation import serbo_croatian
from llm_assets.curation.langid import identify_languages, langid_labels, langid_refiner

SERBIAN = "Gde je moje dete? Uvek kasni posle škole, a danas je vreme lepo i svi su napolju."
CROATIAN = "Tko zna gdje je dijete? Uvijek kasni poslije škole. Sljedeći tjedan idemo vlakom na otok."
BOSNIAN = "Šta radiš danas? Gdje je dijete? Uvijek kasni. Popili smo kahvu i pričali o historiji grada."
SERBIAN_CYRILLIC = "Где је моје дете? Увек касни после школе, а данас је време лепо."


def test_each_standard_is_recognised_from_its_markers() -> None:
    for label in ("hr", "sr", "bs", "sh"):
        assert serbo_croatian.choose(SERBIAN, label) == "sr"
        assert serbo_croatian.choose(CROATIAN, label) == "hr"
        assert serbo_croatian.choose(BOSNIAN, label) == "bs"
        assert serbo_croatian.choose(SERBIAN_CYRILLIC, label) == "sr"


def test_cyrillic_is_read_as_its_latin_transliteration() -> None:
    assert serbo_croatian._words("Љубав, њега и џем: лепо") == ["ljubav", "njega", "i", "džem", "lepo"]
    # An ijekavian Serbian text in Cyrillic still counts its jat forms; mostly Cyrillic text is Serbian.
    assert serbo_croatian.choose("Гдје је дијете?", "bs") == "sr"


def test_without_evidence_fasttexts_answer_stands() -> None:
    for label in ("hr", "sr", "bs", "sh"):
        assert serbo_croatian.choose("Ovo je knjiga. Ona radi sama.", label) == label


def test_ijekavian_without_lexical_markers_is_croatian_or_fasttexts_ijekavian_choice() -> None:
    text = "Vrijeme je lijepo, a dijete se igra."
    assert serbo_croatian.choose(text, "sr") == "hr"
    assert serbo_croatian.choose(text, "bs") == "bs"
    assert serbo_croatian.choose(text + " Da li znaš šta se desilo?", "hr") == "bs"


@given(st.text(alphabet=st.sampled_from("abcčćdđegijklmnoprsštuvzž ijeгдједeтe?"), max_size=200))
def test_the_answer_is_always_a_member_of_the_group(text: str) -> None:
    for label in ("hr", "sr", "bs", "sh"):
        assert serbo_croatian.choose(text, label) in {"hr", "sr", "bs", label}


def test_marker_lists_do_not_contradict_each_other() -> None:
    assert not serbo_croatian.EKAVIAN & serbo_croatian.IJEKAVIAN
    assert not serbo_croatian.CROATIAN_WORDS & serbo_croatian.EASTERN_WORDS
    assert serbo_croatian.BOSNIAN_WORDS.isdisjoint(serbo_croatian.CROATIAN_WORDS)
    assert langid_labels() >= serbo_croatian.GROUP
    assert serbo_croatian.MARKERS_VERSION in langid_refiner()


def test_identify_languages_applies_the_markers_only_when_refining() -> None:
    texts = [SERBIAN, CROATIAN, BOSNIAN, SERBIAN_CYRILLIC]
    plain = identify_languages(texts, refine_close_languages=False)[0]
    assert set(plain) <= serbo_croatian.GROUP
    languages, scores = identify_languages(texts)
    assert languages == ["sr", "hr", "bs", "sr"]
    assert all(0.5 < score <= 1.0 for score in scores)
