"""Person names and locations from dictionaries built from Faker's per-locale providers, plus an optional
NER backend hook (Presidio) that is used only when it is installed.

Dictionary rules keep precision reasonable without a model: a person is a capitalised first name followed by a
capitalised last name (optionally a middle initial or a second first name), or a title ("Dr.", "Mrs", "κ.")
followed by capitalised words; a single first name never counts, and a pair of two common words ("May King")
does not either. A location is a city/region from the EU locales' address providers (single words of 4+ letters
that are not common words, or exact multi-word names) or a street: "24 Clarke Avenue", "Via Roma 131",
"Friedhofstrasse 33", "Λεωφόρος Συγγρού 12". Look-ups are accent- and case-insensitive, so all-caps signatures
("ΓΕΩΡΓΙΟΣ ΦΛΩΡΙΔΗΣ") match too. Dictionaries load on first use and are cached for the process.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llm_assets.curation.pii.detectors import Detection

PERSON_LOCALES: tuple[str, ...] = (
    "el_GR", "en_US", "en_GB", "en_IE", "de_DE", "de_AT", "de_CH", "fr_FR", "fr_BE", "it_IT", "es_ES", "pt_PT",
    "nl_NL", "nl_BE", "pl_PL", "cs_CZ", "sk_SK", "sl_SI", "hr_HR", "hu_HU", "ro_RO", "bg_BG", "da_DK", "sv_SE",
    "fi_FI", "et_EE", "lv_LV", "lt_LT", "no_NO", "is_IS", "ga_IE",
)  # fmt: skip
ADDRESS_LOCALES: tuple[str, ...] = PERSON_LOCALES

_CITY_ATTRS = ("cities", "city_names", "real_city_names", "regions", "states", "counties", "departments", "provinces")
_STREET_ATTRS = ("streets", "street_names", "street_titles")


def _words(spaced: str) -> frozenset[str]:
    return frozenset(spaced.split())


TITLES: frozenset[str] = _words(
    "Mr Mrs Ms Miss Mx Dr Prof Sir Dame Lady Lord Herr Frau Mme Mlle Monsieur Madame Signor Signora Sig Sr Sra "
    "Srta Señor Señora Doña Dott Dott.ssa Ing Κος Κα Κυρία Κύριος Δρ Καθ"
)
# Capitalised words that are also given names, surnames or places; a pair of two of them is not a name.
COMMON_WORDS: frozenset[str] = _words(
    "may june april august will grace hope faith joy mark bill rose art guy frank earl dean chase page major long "
    "young king white brown green black street hall wood house price church post case ford rich little summer "
    "winter dawn sky river north south west east new general field park lane bank court march sunday christian "
    "justice law love star day well wells best gay cook baker miller carter hunter fisher rice lake hill cross "
    "golden sterling "
    "olive ruby pearl amber crystal iris lily daisy holly ivy autumn harmony melody destiny trinity victory "
    "ελπίδα νίκη ειρήνη δόξα χαρά αγάπη σοφία ελευθερία αρετή"
)
STREET_TYPES: frozenset[str] = _words(
    "street st road rd avenue ave lane ln drive dr boulevard blvd way court ct place pl square sq terrace close "
    "crescent parkway pkwy highway hwy alley row gardens grove walk mews circle cir"
)
STREET_PREFIXES: frozenset[str] = _words(
    "rue avenue boulevard chemin allée impasse quai via viale piazza piazzale corso vicolo largo strada calle "
    "avenida avda plaza paseo camino rua travessa praça praca alameda οδός οδος λεωφόρος λεωφορος πλατεία "
    "πλατεια πάροδος ulica ulice"
)
STREET_SUFFIXES: tuple[str, ...] = (
    "straße", "strasse", "str.", "weg", "gasse", "platz", "allee", "damm", "laan", "straat", "gracht", "plein",
    "vej", "gade", "gatan", "vägen", "tie", "katu", "kuja", "polku", "utca", "ulica", "cesta", "iela", "gatvė",
    "tänav", "vegur", "stræde",
)  # fmt: skip
_PARTICLES = _words("de del della delle degli dei di da das dos do du des la le les von van der den του της των")


def _upper_class() -> str:
    ranges = [(0x41, 0x5A), (0xC0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x1E00, 0x1EFF), (0x1F08, 0x1FFF)]
    chars = "".join(chr(c) for lo, hi in ranges for c in range(lo, hi + 1) if chr(c).isupper() or chr(c).istitle())
    return re.escape(chars)


_UPPER = _upper_class()
# a capitalised word not preceded by a letter (so not the "P" of "iPhone"); the look-behind comes after the first
# character so the engine can still skip ahead to upper-case letters in C
_CAP_WORD = re.compile(rf"[{_UPPER}](?<![^\W\d_'][{_UPPER}])[^\W\d_]*(?:['’\-][^\W\d_]+)*")
_GREEK_TITLE = re.compile(rf"κ(?:α\.?|\.(?:κ\.)?)[ \t]+(?=[{_UPPER}])")
_NEXT_WORD = re.compile(r"[ \t]+([^\W\d_][\w'’.\-]*)")
_HOUSE_NUMBER_AFTER = re.compile(r",?[ \t]+[0-9]{1,5}[A-Za-z]?\b")
_HOUSE_NUMBER_BEFORE = re.compile(r"\b[0-9]{1,5}[A-Za-z]?[ \t]+$")
_UNIT_AFTER = re.compile(r",?[ \t]+(?:Apt\.?|Apartment|Suite|Unit|Flat|Διαμ\.?)[ \t]*[0-9]{1,5}[A-Za-z]?\b")


@dataclass(frozen=True)
class NameDictionaries:
    first: frozenset[str]
    first_exact: frozenset[str]  # case-folded with accents: "τίμων" is a name, "τιμών" (of prices) is not
    last: frozenset[str]
    places: frozenset[str]  # single-word places
    multi_places: dict[str, tuple[tuple[str, ...], ...]]  # first word -> word tuples, longest first
    streets: frozenset[str]
    street_words: frozenset[str]  # "Street", "Avenue", ... and Faker's street suffixes ("Creek", "Pass", ...)
    street_prefixes: frozenset[str]  # "Via", "Rue", "Λεωφόρος", ... as keys
    street_suffixes: tuple[str, ...]  # "strasse", "laan", "katu", ... as keys
    particles: frozenset[str]  # "de", "του", ... as keys
    common: frozenset[str]
    # what lets `detect_names` pass over most capitalised words with one or two set lookups:
    title_keys: frozenset[str]  # TITLES as keys
    location_keys: frozenset[str]  # every key a location rule starts from, bar the suffixes
    suffix_tails: frozenset[str]  # the last two characters of each street suffix


@functools.lru_cache(maxsize=262_144)
def normalize_key(word: str) -> str:
    """Case- and accent-insensitive key: 'ΦΛΩΡΙΔΗΣ', 'Φλωρίδης' and 'φλωριδης' are one key."""
    if word.isascii():
        return word.lower()
    folded = unicodedata.normalize("NFD", word.casefold().replace("’", "'"))
    return "".join(ch for ch in folded if not unicodedata.combining(ch))


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        value = list(value)
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, str)]
    return []


def _provider(kind: str, locale: str) -> type | None:
    try:
        provider: type = importlib.import_module(f"faker.providers.{kind}.{locale}").Provider
        return provider
    except (ImportError, AttributeError):
        return None


@functools.cache
def dictionaries() -> NameDictionaries:
    """Build (once per process) the name and place dictionaries from Faker's providers."""
    first: set[str] = set()
    first_exact: set[str] = set()
    last: set[str] = set()
    for locale in PERSON_LOCALES:
        provider = _provider("person", locale)
        if provider is None:
            continue
        for attr in dir(provider):
            target = first if attr.startswith("first_names") else last if "last_names" in attr else None
            if target is None:
                continue
            names = [n for n in _strings(getattr(provider, attr)) if " " not in n.strip()]
            target.update(normalize_key(n) for n in names)
            if target is first:
                first_exact.update(n.casefold() for n in names)
    places: set[str] = set()
    multi: dict[str, set[tuple[str, ...]]] = {}
    streets: set[str] = set()
    street_words: set[str] = set(STREET_TYPES)
    for locale in ADDRESS_LOCALES:
        provider = _provider("address", locale)
        if provider is None:
            continue
        for attr in _CITY_ATTRS:
            for place in _strings(getattr(provider, attr, ())):
                words = tuple(normalize_key(w) for w in place.replace(",", " ").split())
                if len(words) == 1:
                    places.add(words[0])
                elif 1 < len(words) <= 5:
                    multi.setdefault(words[0], set()).add(words)
        if locale.startswith("en_"):
            street_words.update(normalize_key(w) for w in _strings(getattr(provider, "street_suffixes", ())))
        for attr in _STREET_ATTRS:
            streets.update(normalize_key(s) for s in _strings(getattr(provider, attr, ())) if " " not in s.strip())
    common = set(COMMON_WORDS) | _stopwords()
    first = {n for n in first if len(n) > 1}
    last = {n for n in last if len(n) > 1}
    places = {p for p in places if len(p) >= 4 and p not in common and p not in first and p not in last}
    street_names = frozenset(s for s in streets if len(s) >= 4 and s not in common)
    street_prefixes = frozenset(normalize_key(w) for w in STREET_PREFIXES)
    street_suffixes = tuple(normalize_key(w) for w in STREET_SUFFIXES)
    return NameDictionaries(
        first=frozenset(first),
        first_exact=frozenset(first_exact),
        last=frozenset(last),
        places=frozenset(places),
        multi_places={k: tuple(sorted(v, key=len, reverse=True)) for k, v in multi.items()},
        streets=street_names,
        street_words=frozenset(street_words),
        street_prefixes=street_prefixes,
        street_suffixes=street_suffixes,
        particles=frozenset(normalize_key(w) for w in _PARTICLES),
        common=frozenset(normalize_key(w) for w in common),
        title_keys=frozenset(normalize_key(w) for w in TITLES),
        location_keys=frozenset(street_words) | street_prefixes | street_names | set(multi) | places,
        suffix_tails=frozenset(suffix[-2:] for suffix in street_suffixes),
    )


def _stopwords() -> set[str]:
    try:
        import stopwordsiso
    except ImportError:
        return set()
    words: set[str] = set()
    for lang in ("en", "de", "fr", "it", "es", "pt", "nl", "el", "pl", "sv", "da", "fi", "cs", "ro", "hu"):
        if stopwordsiso.has_lang(lang):
            words.update(normalize_key(w) for w in stopwordsiso.stopwords(lang))
    return words


def detect_names(text: str, kinds: Collection[str] = ("person", "location")) -> list[Detection]:
    """Person and location detections (possibly overlapping each other) for the requested kinds."""
    want_person, want_location = "person" in kinds, "location" in kinds
    if not (want_person or want_location):
        return []
    d = dictionaries()
    norm = normalize_key
    tokens = [(m.start(), m.end(), norm(m.group())) for m in _CAP_WORD.finditer(text)]
    words = _DocumentWords(text)
    found: list[Detection] = []
    if want_person:
        _persons(text, tokens, d, words, found)
    if want_location:
        _locations(text, tokens, d, words, found)
    return found


class _DocumentWords:
    """The whitespace-separated words of one document, indexed on first use: is a word also used in lower case?"""

    def __init__(self, text: str) -> None:
        self.text = text
        self._words: set[str] | None = None

    def used_lowercase(self, word: str) -> bool:
        if self._words is None:
            self._words = set(self.text.split())
        lower = word.lower()
        return any(lower + tail in self._words for tail in ("", ",", ".", ";", ":", ")"))


def _adjacent(text: str, end: int, next_start: int) -> bool:
    gap = next_start - end
    return 0 < gap <= 2 and text[end:next_start] in (" ", "  ", "\t", ". ")


def _persons(
    text: str, tokens: list[tuple[int, int, str]], d: NameDictionaries, words: _DocumentWords, found: list[Detection]
) -> None:
    n = len(tokens)
    i = 0
    first, title_keys = d.first, d.title_keys
    while i < n:
        start, end, key = tokens[i]
        if key not in first and key not in title_keys:  # neither rule below can start here
            i += 1
            continue
        raw = text[start:end]
        if raw in TITLES and i + 1 < n:
            j = i + 1
            gap_ok = _adjacent(text, end + (1 if text[end : end + 1] == "." else 0), tokens[j][0])
            if gap_ok and tokens[j][2] not in d.common:
                last_j = j
                while last_j + 1 < n and last_j - j < 2 and _adjacent(text, tokens[last_j][1], tokens[last_j + 1][0]):
                    last_j += 1
                found.append(("person", tokens[j][0], tokens[last_j][1], "name_title", 0.85))
                i = last_j + 1
                continue
        if key in d.first and i + 1 < n and _adjacent(text, end, tokens[i + 1][0]):
            j = i + 1
            # optional middle initial ("Valentine S. Yermakov") or second given name ("Mary Ann Smith")
            middle_end = tokens[j][1]
            if (
                (middle_end - tokens[j][0] == 1 or tokens[j][2] in d.first)
                and j + 1 < n
                and tokens[j + 1][2] in d.last
                and _adjacent(text, middle_end + (text[middle_end : middle_end + 1] == "."), tokens[j + 1][0])
            ):
                j += 1
            surname = tokens[j][2]
            if surname in d.last and not (key in d.common and surname in d.common):
                while (
                    j + 1 < n
                    and j - i < 3
                    and tokens[j + 1][2] in d.last
                    and _adjacent(text, tokens[j][1], tokens[j + 1][0])
                ):
                    j += 1
                found.append(("person", start, tokens[j][1], "name_dictionary", 0.7))
                i = j + 1
                continue
            # a known given name before an unknown capitalised word ("Nicole Mahler"), unless either word is a
            # common word here ("Δήμος Θεσσαλονίκης": the document also writes "δήμος") or it is a street name
            if (
                key not in d.common
                and text[start:end].casefold() in d.first_exact
                and len(surname) >= 3
                and surname not in d.common
                and surname not in d.first
                and surname not in d.places
                and surname not in d.street_words
                and not text[tokens[j][0] : tokens[j][1]].isupper()
                and _HOUSE_NUMBER_AFTER.match(text, tokens[j][1]) is None
                and not words.used_lowercase(text[start:end])
            ):
                while (
                    j + 1 < n
                    and j - i < 3
                    and tokens[j + 1][2] in d.last
                    and _adjacent(text, tokens[j][1], tokens[j + 1][0])
                ):
                    j += 1
                found.append(("person", start, tokens[j][1], "name_given_capitalised", 0.55))
                i = j + 1
                continue
        i += 1
    for m in _GREEK_TITLE.finditer(text):
        if m.start() and text[m.start() - 1].isalpha():
            continue
        word = _CAP_WORD.match(text, m.end())
        if word is not None and normalize_key(word.group()) not in d.common:
            found.append(("person", word.start(), word.end(), "name_title", 0.8))


def _locations(
    text: str, tokens: list[tuple[int, int, str]], d: NameDictionaries, words: _DocumentWords, found: list[Detection]
) -> None:
    location_keys, suffix_tails, suffixes = d.location_keys, d.suffix_tails, d.street_suffixes
    for i, (start, end, key) in enumerate(tokens):
        if key not in location_keys and not (key[-2:] in suffix_tails and key.endswith(suffixes)):
            continue  # no location rule starts from this word
        if key in d.street_words:
            hit = _street_by_type(text, tokens, i)
            if hit is not None:
                found.append(hit)
                continue
        if key in d.street_prefixes:
            hit = _street_by_prefix(text, start, end, d)
            if hit is not None:
                found.append(hit)
                continue
        if key.endswith(d.street_suffixes) or key in d.streets:
            number = _HOUSE_NUMBER_AFTER.match(text, end)
            if number is not None:
                found.append(("location", start, _with_unit(text, number.end()), "street_pattern", 0.75))
                continue
        candidates = d.multi_places.get(key)
        if candidates is not None:
            hit_end = _multi_word_place(text, end, candidates)
            if hit_end is not None:
                found.append(("location", start, hit_end, "place_dictionary", 0.7))
                continue
        if key in d.places:
            # a place name that the document also uses as a lower-case word is a common noun here
            if words.used_lowercase(text[start:end]):
                continue
            found.append(("location", start, end, "place_dictionary", 0.6))


def _street_by_type(text: str, tokens: list[tuple[int, int, str]], i: int) -> Detection | None:
    """'24 Clarke Avenue', '2450 Crown St', '52 Huntly Street': number + 1-3 capitalised words + street type."""
    j = i
    while j > 0 and i - j < 3 and _adjacent(text, tokens[j - 1][1], tokens[j][0]) and text[tokens[j - 1][1]] != ".":
        j -= 1
    if j == i:
        return None
    start = tokens[j][0]
    number = _HOUSE_NUMBER_BEFORE.search(text, max(0, start - 8), start)
    if number is None:
        return None
    end = tokens[i][1]
    if text[end : end + 1] == "." and tokens[i][2] not in ("street", "road", "avenue", "lane", "drive"):
        end += 1
    return ("location", number.start(), _with_unit(text, end), "street_pattern", 0.8)


def _street_by_prefix(text: str, start: int, end: int, d: NameDictionaries) -> Detection | None:
    """'Via Roma 131', 'Rue de Tanger', 'Λεωφόρος Συγγρού 12': street word + name words (+ number)."""
    pos, capitals, words = end, 0, 0
    while words < 4:
        m = _NEXT_WORD.match(text, pos)
        if m is None:
            break
        word = m.group(1)
        if word[0].isupper():
            capitals += 1
        elif normalize_key(word) not in d.particles:
            break
        pos, words = m.end(), words + 1
    if capitals == 0:
        return None
    number = _HOUSE_NUMBER_AFTER.match(text, pos)
    if number is not None:
        pos = number.end()
    return ("location", start, _with_unit(text, pos), "street_pattern", 0.75)


def _with_unit(text: str, end: int) -> int:
    unit = _UNIT_AFTER.match(text, end)
    return unit.end() if unit is not None else end


def _multi_word_place(text: str, end: int, candidates: tuple[tuple[str, ...], ...]) -> int | None:
    words: list[tuple[str, int]] = []
    pos = end
    for _ in range(len(candidates[0]) - 1):
        m = _NEXT_WORD.match(text, pos)
        if m is None:
            break
        words.append((normalize_key(m.group(1).rstrip(".")), m.end() - (1 if m.group(1).endswith(".") else 0)))
        pos = m.end()
    for candidate in candidates:
        tail = candidate[1:]
        if len(tail) <= len(words) and all(words[k][0] == tail[k] for k in range(len(tail))):
            return words[len(tail) - 1][1]
    return None


class NerBackend(Protocol):
    """A model-based detector (e.g. Presidio + spaCy) whose detections are merged with the dictionary ones."""

    name: str

    def analyze(self, text: str, kinds: frozenset[str]) -> list[Detection]: ...


_PRESIDIO_ENTITIES = {
    "person": "PERSON",
    "location": "LOCATION",
    "email": "EMAIL_ADDRESS",
    "phone": "PHONE_NUMBER",
    "credit_card": "CREDIT_CARD",
    "iban": "IBAN_CODE",
    "us_ssn": "US_SSN",
    "ip_address": "IP_ADDRESS",
}
_FROM_PRESIDIO = {entity: kind for kind, entity in _PRESIDIO_ENTITIES.items()} | {"GPE": "location"}


class PresidioBackend:
    """Presidio AnalyzerEngine over a spaCy model; built only by `presidio_backend()`."""

    def __init__(self, engine: Any, language: str, min_score: float) -> None:
        self.engine = engine
        self.language = language
        self.min_score = min_score
        self.name = f"presidio:{language}"

    def analyze(self, text: str, kinds: frozenset[str]) -> list[Detection]:
        entities = [_PRESIDIO_ENTITIES[k] for k in sorted(kinds) if k in _PRESIDIO_ENTITIES]
        if not entities or not text:
            return []
        results = self.engine.analyze(text=text, language=self.language, entities=entities)
        out: list[Detection] = []
        for r in results:
            kind = _FROM_PRESIDIO.get(r.entity_type)
            if kind is None or kind not in kinds or r.score < self.min_score:
                continue
            recognizer = (r.recognition_metadata or {}).get("recognizer_name", "presidio")
            out.append((kind, int(r.start), int(r.end), f"presidio:{recognizer}", float(r.score)))
        return out


def presidio_backend(
    language: str = "en", spacy_model: str = "en_core_web_lg", min_score: float = 0.5
) -> NerBackend | None:
    """A Presidio-backed NER detector, or None when presidio_analyzer or the spaCy model is not installed.

    Never required: the dictionary detectors work without it. Installing `presidio-analyzer` and a spaCy model
    (a package such as `en_core_web_lg`, or a pipeline directory) turns it on; nothing is downloaded.
    """
    try:
        import spacy
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider
    except ImportError:
        return None
    if not (spacy.util.is_package(spacy_model) or Path(spacy_model).is_dir()):
        return None
    configuration = {"nlp_engine_name": "spacy", "models": [{"lang_code": language, "model_name": spacy_model}]}
    try:
        nlp_engine = NlpEngineProvider(nlp_configuration=configuration).create_engine()
        engine = AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=[language])
    except (OSError, ValueError) as exc:
        logging.getLogger(__name__).warning("presidio backend unavailable: %s", exc)
        return None
    return PresidioBackend(engine, language, min_score)
