"""Choosing between Egyptian Arabic and Modern Standard Arabic, which fastText's lite model reads as one, from the
function words that mark each: Egyptian demonstratives (`ده`, `دي`, `دول`), question words (`ازاي`, `فين`, `ايه`),
`عايز`, `كده`, `دلوقتي`, `النهارده`, `بتاع`, `مفيش` against the standard's `هذا`, `الذي`, `لماذا`, `سوف`, `ليس`.

Only Egyptian forms that other spoken varieties do not share are counted (not `مش`, `اللي`, `مين`, `كمان`, which
Levantine Arabic uses too), so a Levantine or Gulf text is not read as Egyptian; the lists come from grammars of
the varieties, not from any evaluation set. A few word lookups per document, run only on documents fastText
labelled `ar` or `arz`; where the markers are silent or tied, its answer stands.
"""

from __future__ import annotations

import re

GROUP = frozenset({"ar", "arz"})
MARKERS_VERSION = "egyptian-arabic markers v1"  # recorded with the refiner; bump when a list or rule changes

# Written as after `_normalise`: hamzated alefs as bare alef, no diacritics.
EGYPTIAN_WORDS = frozenset(
    {
        "ده", "دي", "دول", "ازاي", "فين", "ايه", "عايز", "عايزه", "عايزة", "عايزين", "عاوز", "عاوزه", "عاوزة",
        "عاوزين", "كده", "كدا", "دلوقتي", "دلوقت", "النهارده", "النهاردة", "امبارح", "بتاع", "بتاعي", "بتاعك",
        "بتاعه", "بتاعها", "بتاعة", "بتاعت", "اوي", "خالص", "مفيش", "مافيش", "برضه", "برضو", "ازيك", "ازيكم",
        "علشان", "حاجه",
    }
)  # fmt: skip
STANDARD_WORDS = frozenset(
    {
        "هذا", "هذه", "ذلك", "تلك", "هؤلاء", "هاولاء", "الذي", "التي", "الذين", "ليس", "ليست", "لست", "لسنا",
        "لماذا", "ماذا", "كيف", "اين", "سوف", "لن", "لم", "نحن", "اريد", "تريد", "يريد", "الان", "لقد",
        "عندما", "ايضا", "حيث", "كذلك", "لدي", "لديك", "لديه",
    }
)  # fmt: skip
_DIACRITICS = re.compile("[\u064b-\u0652\u0670\u0640]")  # harakat, superscript alef, tatweel
_ALEFS = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا"})
_WORD = re.compile(r"[\u0621-\u064a]+")


def _normalise(text: str) -> str:
    return _DIACRITICS.sub("", text).translate(_ALEFS)


def choose(text: str, fasttext_label: str) -> str:
    """`arz` when Egyptian markers outnumber the standard's, `ar` when the standard's outnumber them, else
    fastText's answer."""
    words = _WORD.findall(_normalise(text))
    egyptian = sum(word in EGYPTIAN_WORDS for word in words)
    standard = sum(word in STANDARD_WORDS for word in words)
    if egyptian > standard:
        return "arz"
    if standard > egyptian:
        return "ar"
    return fasttext_label
