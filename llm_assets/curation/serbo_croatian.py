"""Choosing between Serbian, Croatian and Bosnian, which fastText's lite model confuses, from the features their
standards are defined by: the reflex of Common Slavic *jat (ekavian `mleko`, `gde` is Serbian only; Croatian and
Bosnian are ijekavian: `mlijeko`, `gdje`), the script (Croatian is never written in Cyrillic), and a short list of
words where the standards differ (Croatian `tko`, `tjedan`, `kruh`, `tisuća`, `vlak` against Serbian and Bosnian
`ko`, `sedmica`, `hljeb`, `hiljada`, `voz`).

This is the evidence discriminating-similar-languages systems use for this group (ekavian/ijekavian reflexes
and lexical lists), without a model: a few word lookups per document, run only on documents fastText already
placed in the group. Where the markers are silent or tied, fastText's own answer stands.

The lists are common words whose form differs by standard, taken from grammars and dictionaries of the
standards (not from any evaluation set). Cyrillic is transliterated first, so Serbian written in either script
is read the same way.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

GROUP = frozenset({"hr", "sr", "bs", "sh"})  # fastText's labels for the group ("sh": Serbo-Croatian)
MARKERS_VERSION = "serbo-croatian markers v1"  # recorded with the refiner; bump when a list or rule changes

# Ekavian (Serbian) form -> ijekavian (Croatian, Bosnian; also Montenegrin and western Serbian usage) form.
_JAT_PAIRS = {
    "bela": "bijela",
    "belo": "bijelo",
    "beli": "bijeli",
    "cena": "cijena",
    "cene": "cijene",
    "cenu": "cijenu",
    "ceo": "cijeli",
    "cela": "cijela",
    "celo": "cijelo",
    "celu": "cijelu",
    "celog": "cijelog",
    "cvet": "cvijet",
    "cveće": "cvijeće",
    "čovek": "čovjek",
    "čoveka": "čovjeka",
    "čoveku": "čovjeku",
    "dete": "dijete",
    "deca": "djeca",
    "dece": "djece",
    "deci": "djeci",
    "decu": "djecu",
    "devojka": "djevojka",
    "devojke": "djevojke",
    "devojku": "djevojku",
    "devojci": "djevojci",
    "dečak": "dječak",
    "gde": "gdje",
    "ovde": "ovdje",
    "onde": "ondje",
    "negde": "negdje",
    "nigde": "nigdje",
    "svugde": "svugdje",
    "hteo": "htio",
    "htela": "htjela",
    "hteli": "htjeli",
    "hteti": "htjeti",
    "lep": "lijep",
    "lepa": "lijepa",
    "lepo": "lijepo",
    "lepe": "lijepe",
    "lepu": "lijepu",
    "lepi": "lijepi",
    "leto": "ljeto",
    "leva": "lijeva",
    "levo": "lijevo",
    "lek": "lijek",
    "mesec": "mjesec",
    "meseca": "mjeseca",
    "meseci": "mjeseci",
    "mesto": "mjesto",
    "mesta": "mjesta",
    "mestu": "mjestu",
    "mleko": "mlijeko",
    "mleka": "mlijeka",
    "nedelja": "nedjelja",
    "nedelje": "nedjelje",
    "nedelju": "nedjelju",
    "odeća": "odjeća",
    "pesma": "pjesma",
    "pesme": "pjesme",
    "pesmu": "pjesmu",
    "pevati": "pjevati",
    "peva": "pjeva",
    "posle": "poslije",
    "pre": "prije",
    "primer": "primjer",
    "razumem": "razumijem",
    "razumeš": "razumiješ",
    "razume": "razumije",
    "razumeti": "razumjeti",
    "reč": "riječ",
    "reči": "riječi",
    "reka": "rijeka",
    "reke": "rijeke",
    "reku": "rijeku",
    "sedi": "sjedi",
    "sedim": "sjedim",
    "sesti": "sjesti",
    "seo": "sjeo",
    "sme": "smije",
    "smem": "smijem",
    "smeš": "smiješ",
    "sneg": "snijeg",
    "sreda": "srijeda",
    "telo": "tijelo",
    "uvek": "uvijek",
    "vera": "vjera",
    "verovati": "vjerovati",
    "verujem": "vjerujem",
    "veruje": "vjeruje",
    "verovatno": "vjerojatno",
    "vest": "vijest",
    "vesti": "vijesti",
    "vetar": "vjetar",
    "videti": "vidjeti",
    "videla": "vidjela",
    "videli": "vidjeli",
    "voleo": "volio",
    "volela": "voljela",
    "voleli": "voljeli",
    "voleti": "voljeti",
    "vreme": "vrijeme",
    "želeo": "želio",
    "želela": "željela",
    "želeti": "željeti",
    "živeo": "živio",
    "živela": "živjela",
    "živeti": "živjeti",
    "zvezda": "zvijezda",
}
EKAVIAN = frozenset(_JAT_PAIRS)
IJEKAVIAN = frozenset(_JAT_PAIRS.values()) | {"vjerovatno"}  # Bosnian's form of the Croatian `vjerojatno`

# Words of the Croatian standard whose Serbian and Bosnian counterparts differ (right column below).
CROATIAN_WORDS = frozenset(
    {
        "tko", "netko", "nitko", "svatko", "itko", "tisuća", "tisuću", "tisuće", "kruh", "tjedan", "tjedna",
        "tjedno", "kava", "kavu", "vlak", "vlaku", "zrakoplov", "glazba", "glazbu", "povijest", "kazalište",
        "sveučilište", "tvrtka", "tvrtku", "tvrtke", "točno", "točan", "otok", "otoku", "obitelj",
        "obitelji", "znanost", "uvjet", "uvjeti", "nogomet", "rajčica", "juha",
        "kolodvor", "siječanj", "veljača", "ožujak", "travanj", "svibanj", "lipanj", "srpanj", "kolovoz",
        "rujan", "listopad", "studeni", "prosinac", "vjerojatno", "kruha",     }
)  # fmt: skip
# Words of the Serbian and Bosnian standards for the same things (and `šta`, `da li`, which Croatian avoids).
EASTERN_WORDS = frozenset(
    {
        "ko", "neko", "niko", "svako", "iko", "šta", "hiljada", "hiljadu", "hiljade", "hleb", "hljeb", "sedmica",
        "sedmicu", "kafa", "kafu", "kahva", "kahvu", "voz", "vozu", "muzika", "muziku", "istorija",
        "historija", "pozorište", "univerzitet", "firma", "firmu", "opština", "tačno", "tačan", "ostrvo", "ostrvu",
        "porodica", "porodicu", "porodice", "juče", "takođe", "napolju", "nauka", "uslov", "uslovi", "fudbal",
        "paradajz", "supa", "opšti", "januar", "februar", "mart", "april", "maj", "jun", "jul", "avgust",
        "august", "septembar", "oktobar", "novembar", "decembar", "srećan", "srećna", "srećno", "vazduh",
        "vazduha", "juni", "juli",
    }
)  # fmt: skip
# Bosnian-only forms: the kept /h/ of Ottoman and older words, `historija` beside Serbian `istorija`.
BOSNIAN_WORDS = frozenset({"historija", "kahva", "kahvu", "lahko", "mehko", "sahat", "hljeb"})

_CYRILLIC = dict(
    zip(
        "абвгдђежзијклљмнњопрстћуфхцчџш",
        ["a", "b", "v", "g", "d", "đ", "e", "ž", "z", "i", "j", "k", "l", "lj", "m", "n", "nj", "o", "p", "r", "s",
         "t", "ć", "u", "f", "h", "c", "č", "dž", "š"],
        strict=True,
    )
)  # fmt: skip
_TRANSLITERATE = str.maketrans(_CYRILLIC)
_WORD = re.compile(r"[^\W\d_]+")
_CYRILLIC_LETTER = re.compile(r"[\u0400-\u04ff]")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().translate(_TRANSLITERATE))


def _count(words: Iterable[str], vocabulary: frozenset[str]) -> int:
    return sum(word in vocabulary for word in words)


def choose(text: str, fasttext_label: str) -> str:
    """`sr`, `hr` or `bs` for a text fastText placed in the group (`fasttext_label`), from the markers above.

    Mostly Cyrillic text is Serbian. Otherwise more ekavian than ijekavian forms make it Serbian; more
    ijekavian forms make it Croatian or Bosnian by the lexical markers (Bosnian's own /h/ forms, or
    Serbian/Bosnian words outnumbering Croatian ones); when these are silent, fastText's answer if it is
    ijekavian (hr, bs), else Croatian. With no jat evidence the lexical markers alone decide, and with none
    at all fastText's answer stands.
    """
    letters = sum(ch.isalpha() for ch in text)
    if letters and len(_CYRILLIC_LETTER.findall(text)) * 2 > letters:
        return "sr"
    words = _words(text)
    ekavian, ijekavian = _count(words, EKAVIAN), _count(words, IJEKAVIAN)
    croatian, eastern = _count(words, CROATIAN_WORDS), _count(words, EASTERN_WORDS)
    eastern += sum(first == "da" and second == "li" for first, second in itertools.pairwise(words))
    if ekavian > ijekavian:
        return "sr"
    if ijekavian > ekavian:
        if _count(words, BOSNIAN_WORDS) or eastern > croatian:
            return "bs"
        if croatian > eastern:
            return "hr"
        return fasttext_label if fasttext_label in {"hr", "bs"} else "hr"
    if croatian > eastern:
        return "hr"
    if eastern > croatian:
        return fasttext_label if fasttext_label in {"sr", "bs"} else "sr"
    return fasttext_label
