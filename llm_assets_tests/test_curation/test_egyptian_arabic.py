"""Egyptian Arabic and Modern Standard Arabic are told apart by function words only Egyptian uses (or only the
standard uses); Levantine text, which shares some Egyptian words, is left as fastText read it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llm_assets.curation import egyptian_arabic
from llm_assets.curation.langid import identify_languages, langid_labels, langid_refiner

EGYPTIAN = "أنا عايز أروح البيت دلوقتي. الكتاب ده بتاعي. إنت فين؟ إزاي عملت كده؟ مفيش حاجه النهارده."
STANDARD = "أريد أن أذهب إلى البيت الآن. هذا الكتاب لي. أين أنت؟ لماذا فعلت ذلك؟ ليس لدي شيء اليوم."
LEVANTINE = "شو بدك؟ بدي روح عالبيت هلق. مش عارف ليش هيك صار، بس كمان مين قلك؟"


def test_each_variety_is_recognised_from_its_markers() -> None:
    for label in ("ar", "arz"):
        assert egyptian_arabic.choose(EGYPTIAN, label) == "arz"
        assert egyptian_arabic.choose(STANDARD, label) == "ar"
        # Levantine's `مش`, `مين`, `كمان` are not Egyptian markers: fastText's answer stands.
        assert egyptian_arabic.choose(LEVANTINE, label) == label


def test_diacritics_and_hamzated_alefs_do_not_hide_a_marker() -> None:
    assert egyptian_arabic._normalise("إزَّاي أَيْن") == "ازاي اين"
    assert egyptian_arabic.choose("إزَّاي؟", "ar") == "arz"
    assert egyptian_arabic.choose("أَيْنَ؟", "arz") == "ar"


@given(st.text(alphabet=st.sampled_from(" ادهيزفنكلتبمحشعؤأإآَُِّ"), max_size=200))
def test_the_answer_is_always_a_member_of_the_group(text: str) -> None:
    for label in ("ar", "arz"):
        assert egyptian_arabic.choose(text, label) in {"ar", "arz"}


def test_marker_lists_are_disjoint_normalised_and_the_labels_are_the_models() -> None:
    assert not egyptian_arabic.EGYPTIAN_WORDS & egyptian_arabic.STANDARD_WORDS
    for word in egyptian_arabic.EGYPTIAN_WORDS | egyptian_arabic.STANDARD_WORDS:
        assert egyptian_arabic._normalise(word) == word
    assert langid_labels() >= egyptian_arabic.GROUP
    assert egyptian_arabic.MARKERS_VERSION in langid_refiner()


def test_identify_languages_applies_the_markers_only_when_refining() -> None:
    texts = [EGYPTIAN, STANDARD]
    assert set(identify_languages(texts, refine_close_languages=False)[0]) <= egyptian_arabic.GROUP
    languages, scores = identify_languages(texts)
    assert languages == ["arz", "ar"]
    assert all(0.5 < score <= 1.0 for score in scores)
