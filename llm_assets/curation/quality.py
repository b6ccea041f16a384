"""Language identification and heuristic quality filters (Gopher/C4-style), with per-language thresholds.

Every rejected record says which rule removed it, the value measured and the bound it broke, so a threshold
can be tuned from the reject table alone. Features are computed in one compiled pass over each batch's UTF-8
(`_quality_kernels`), which tests hold equal to their definition in polars (`_measure_piece_polars`).
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import stopwordsiso
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from llm_assets.curation._hash_index import HashIndex
from llm_assets.curation.langid import (
    LANGID_MODEL,
    LANGUAGE_SAMPLE_CHARS,
    _predict,
    identify_languages,
    langid_model_sha256,
    langid_refiner,
)
from llm_assets.curation.stage import StageOutput, reject_rows

STAGE = "quality"
RULES = (
    "language_not_allowed",
    "low_language_confidence",
    "too_short",
    "too_long",
    "low_stopword_ratio",
    "high_symbol_ratio",
    "repeated_lines",
    "repeated_ngrams",
    "blocklist",
)
_HINT_CANDIDATES = 3
_WORD_RE = r"\w+"
_SYMBOL_RE = r"[\p{S}\p{Extended_Pictographic}]"
_MIX_WORD = 0x9E3779B97F4A7C15
_MIX_DOC = 0x632BE59BD9B4E019
_PACK = 1 << 32  # a 2-gram's span (characters) is below this; its count times this still fits an Int64

# ISO 639-3 (and a few ISO 639-3 individual languages of macrolanguages) to the label the fastText
# lid.176 model uses, which is ISO 639-1 where one exists. Used for language hints and for benchmarks.
ISO639_3_TO_LID = {
    "afr": "af", "amh": "am", "ara": "ar", "arb": "ar", "arz": "arz", "ast": "ast", "aze": "az", "azj": "az",
    "bel": "be", "ben": "bn", "bos": "bs", "bre": "br", "bul": "bg", "cat": "ca", "cbk": "cbk", "ceb": "ceb",
    "ces": "cs", "cmn": "zh", "zho": "zh", "cor": "kw", "cym": "cy", "dan": "da", "deu": "de", "dsb": "dsb",
    "ell": "el", "eng": "en", "epo": "eo", "est": "et", "ekk": "et", "eus": "eu", "fao": "fo", "fas": "fa",
    "pes": "fa", "fin": "fi", "fra": "fr", "fry": "fy", "gla": "gd", "gle": "ga", "glg": "gl", "gsw": "als",
    "heb": "he", "hin": "hi", "hrv": "hr", "hsb": "hsb", "hun": "hu", "hye": "hy", "ido": "io", "ile": "ie",
    "ina": "ia", "ind": "id", "isl": "is", "ita": "it", "jav": "jv", "jpn": "ja", "kat": "ka", "kaz": "kk",
    "khm": "km", "kor": "ko", "kur": "ku", "lat": "la", "lav": "lv", "lvs": "lv", "lit": "lt", "ltz": "lb",
    "mal": "ml", "mar": "mr", "mhr": "mhr", "mkd": "mk", "mlt": "mt", "mon": "mn", "msa": "ms", "zsm": "ms",
    "nds": "nds", "nld": "nl", "nno": "nn", "nob": "no", "nor": "no", "oci": "oc", "pam": "pam", "pms": "pms",
    "pol": "pl", "por": "pt", "ron": "ro", "rus": "ru", "slk": "sk", "slv": "sl", "spa": "es", "sqi": "sq",
    "als": "sq", "srp": "sr", "swe": "sv", "swa": "sw", "swh": "sw", "tam": "ta", "tat": "tt", "tel": "te",
    "tgl": "tl", "tha": "th", "tuk": "tk", "tur": "tr", "uig": "ug", "ukr": "uk", "urd": "ur", "uzb": "uz",
    "uzn": "uz", "vie": "vi", "war": "war", "wuu": "wuu", "yid": "yi", "yue": "yue",
    # codes a source may declare that the detector spells differently: Bokmål's ISO 639-1 code, Malay, Filipino
    "nb": "no", "zlm": "ms", "fil": "tl",
}  # fmt: skip


class LanguageThresholds(BaseModel):
    """Bounds for one language. A ratio bound of 0 (minimum) or 1 (maximum) switches its rule off.

    The stopword and n-gram ratios only mean something over enough words, so they apply to documents of at
    least `min_words_for_ratios` words: a 5-word support query has no stopword ratio worth judging.
    `max_top_ngram_fraction` is Gopher's: characters covered by the most frequent repeated word 2-gram over
    the document's characters.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_chars: int = Field(default=10, ge=0)
    max_chars: int = Field(default=10_000_000, ge=1)
    min_stopword_ratio: float = Field(default=0.05, ge=0.0, le=1.0)
    max_symbol_ratio: float = Field(default=0.25, ge=0.0, le=1.0)
    max_duplicate_line_fraction: float = Field(default=0.3, ge=0.0, le=1.0)
    max_top_ngram_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    min_language_score: float = Field(default=0.4, ge=0.0, le=1.0)
    min_words_for_ratios: int = Field(default=50, ge=1)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> LanguageThresholds:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        return self


# Scripts written without spaces: `\w+` gives whole clauses, so word ratios say nothing there.
_NO_SPACES = LanguageThresholds(min_stopword_ratio=0.0, max_top_ngram_fraction=1.0)


class QualityConfig(BaseModel):
    """Which languages to keep and how strict to be. `per_language[x]` overrides only the fields it sets.

    The default `per_language` switches the word-ratio rules off for zh, ja and th (no spaces between
    words); a `per_language` you pass replaces it, so keep those entries if you need them.
    Below `short_text_chars` characters language ID is a guess, so there the record's `language_hint`
    wins when it is among the detector's top 3 candidates, and `min_language_score` is not applied.
    The blocklist (`blocklist_words` plus one word per line of `blocklist_path`, '#' comments allowed) is
    a hook for a safety/toxicity word list: a document is rejected when it has more than
    `max_blocklist_hits` blocklisted words or, when set, when they are more than `max_blocklist_fraction`
    of its words. Words match case-insensitively, one `\\w+` token at a time (no phrases).
    `refine_close_languages` lets lingua decide Norwegian/Nynorsk/Danish and Malay/Indonesian, and the
    standards' markers Serbian/Croatian/Bosnian and Egyptian/standard Arabic, which the fastText lite
    model confuses (see `langid`); switch it off only to trade that accuracy for speed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_languages: list[str] | None = None
    default: LanguageThresholds = LanguageThresholds()
    per_language: dict[str, LanguageThresholds] = Field(
        default_factory=lambda: {"zh": _NO_SPACES, "ja": _NO_SPACES, "th": _NO_SPACES}
    )
    short_text_chars: int = Field(default=100, ge=0)
    blocklist_words: list[str] = Field(default_factory=list)
    blocklist_path: str | None = None
    max_blocklist_hits: int = Field(default=0, ge=0)
    max_blocklist_fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    refine_close_languages: bool = True

    @field_validator("allowed_languages")
    @classmethod
    def _detector_codes(cls, value: list[str] | None) -> list[str] | None:
        """Accept ISO 639-3 too ('ell' -> 'el'), as source descriptors do."""
        if value is not None and not value:
            raise ValueError("allowed_languages is empty, which would reject every document; use null for any")
        return None if value is None else [_normalise_hint(code) or code for code in value]

    @field_validator("per_language")
    @classmethod
    def _detector_keys(cls, value: dict[str, LanguageThresholds]) -> dict[str, LanguageThresholds]:
        """Per-language overrides may be keyed by ISO 639-3 too ('ell', 'nob'), like `allowed_languages`."""
        keyed: dict[str, LanguageThresholds] = {}
        for code, thresholds in value.items():
            language = _normalise_hint(code) or code
            if language in keyed:
                raise ValueError(f"per_language has two entries for '{language}' ('{code}' and another); keep one")
            keyed[language] = thresholds
        return keyed

    @field_serializer("per_language")
    def _partial_overrides(self, value: dict[str, LanguageThresholds]) -> dict[str, dict[str, Any]]:
        """Dump only the fields each override sets, so a dump/validate round trip keeps them partial."""
        return {language: override.model_dump(exclude_unset=True) for language, override in value.items()}

    @field_validator("blocklist_path")
    @classmethod
    def _path_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"blocklist_path {value!r} is not a file; give a UTF-8 text file with one word per line")
        return value

    def thresholds_for(self, language: str) -> LanguageThresholds:
        """`default`, with the fields that `per_language[language]` sets replaced."""
        override = self.per_language.get(language)
        if override is None:
            return self.default
        return self.default.model_copy(update={name: getattr(override, name) for name in override.model_fields_set})

    def blocklist(self) -> frozenset[str]:
        words = [word.strip().lower() for word in self.blocklist_words]
        if self.blocklist_path is not None:
            lines = Path(self.blocklist_path).read_text(encoding="utf-8").splitlines()
            words += [line.strip().lower() for line in lines if not line.lstrip().startswith("#")]
        return frozenset(word for word in words if word)


def _normalise_hint(hint: str | None) -> str | None:
    if not hint:
        return None
    hint = hint.strip().lower()
    return ISO639_3_TO_LID.get(hint, hint)


def _assign_languages(
    texts: list[str], hints: list[str | None], config: QualityConfig
) -> tuple[list[str], list[float], int]:
    """Detected language per text; for short texts the declared hint when the detector ranks it top 3."""
    languages, scores = identify_languages(texts, refine_close_languages=config.refine_close_languages)
    # Only a short text whose hint lost the top spot needs the (twice as costly) top-3 prediction.
    contested = [
        (i, hint)
        for i, (text, hint) in enumerate(zip(texts, map(_normalise_hint, hints), strict=True))
        if hint and hint != languages[i] and len(text) < config.short_text_chars
    ]
    top = _predict([texts[i] for i, _ in contested], _HINT_CANDIDATES, LANGUAGE_SAMPLE_CHARS)
    hints_used = 0
    for (i, hint), candidates in zip(contested, top, strict=True):
        hinted = dict(candidates).get(hint)
        if hinted is not None:
            languages[i], scores[i] = hint, hinted
            hints_used += 1
    return languages, scores, hints_used


def _stopword_table(languages: frozenset[str]) -> pl.DataFrame:
    """(lang, word) rows of every language's list; built per language and cached, since each ~1 MB piece of a
    multilingual shard has its own set of languages."""
    schema = {"lang": pl.String, "word": pl.String}
    return (
        pl.concat([_language_stopwords(lang) for lang in sorted(languages)])
        if languages
        else pl.DataFrame(schema=schema)
    )


@functools.cache
def _language_stopwords(lang: str) -> pl.DataFrame:
    words = sorted(stopwordsiso.stopwords(lang))
    return pl.DataFrame({"lang": [lang] * len(words), "word": words}, schema={"lang": pl.String, "word": pl.String})


KERNEL_DOC_BYTES = 1 << 20  # longer docs are measured in polars: the compiled pass's tables (48-96 bytes per byte
# of the longest doc) would outgrow polars' per-word frames (~30x)
MEASURE_BATCH_CHARS = 1 << 20  # per-word frames take ~30x the text: measuring in ~1 MB pieces bounds that


def measure(texts: list[str], languages: list[str], blocklist: frozenset[str] = frozenset()) -> pl.DataFrame:
    """The quality features of each text, one row per text in input order.

    Columns: doc (the text's position), chars, nonspace_chars, symbols, words, stopwords (null where the
    language has no list), lines, duplicate_lines, top_ngram_chars (characters covered by the most frequent
    word 2-gram when it occurs at least twice, else 0), blocklist_hits.
    Every feature is per text, so texts are measured in pieces of about MEASURE_BATCH_CHARS characters: the
    same rows, with memory bounded by the piece rather than the shard.
    """
    bounds = [0]
    size = 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= MEASURE_BATCH_CHARS and i + 1 < len(texts):
            bounds.append(i + 1)
            size = 0
    bounds.append(len(texts))
    if len(bounds) == 2:
        return _measure_piece(texts, languages, blocklist)
    pieces = [
        _measure_piece(texts[lo:hi], languages[lo:hi], blocklist).with_columns(pl.col("doc") + lo)
        for lo, hi in itertools.pairwise(bounds)
    ]
    return pl.concat(pieces, how="vertical_relaxed")


@functools.cache
def _quality_kernels() -> Any:
    """The numba pass (imported on first use), or None where numba cannot load: polars then measures alone."""
    try:
        from llm_assets.curation import _quality_kernels
    except (ImportError, RuntimeError):  # pragma: no cover - numba is a dependency
        return None
    return _quality_kernels


@functools.cache
def _char_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per code point, read off polars itself so the compiled pass agrees with `_measure_piece_polars`:
    kind (word / whitespace / symbol bits), lowercase, the second code point of a two-character lowercase
    (U+0130 only), and the final-sigma classes of the basic multilingual plane (~0.3 s once per process)."""
    from llm_assets.curation._codepoints import code_point_series
    from llm_assets.curation._quality_kernels import SPACE, SYMBOL, WORD
    from llm_assets.curation.dedup import _code_points

    points, chars = code_point_series()
    lowered = chars.str.to_lowercase()
    kind = np.zeros(0x110000, dtype=np.uint8)
    kind[points] = (
        lowered.str.contains(rf"^{_WORD_RE}$").to_numpy().astype(np.uint8) * WORD
        | chars.str.contains(r"^\s$").to_numpy().astype(np.uint8) * SPACE
        | chars.str.contains(f"^{_SYMBOL_RE}$").to_numpy().astype(np.uint8) * SYMBOL
    )
    lower = np.arange(0x110000, dtype=np.int64)
    extra = np.zeros(0x110000, dtype=np.int64)
    changed = np.flatnonzero((lowered != chars).to_numpy())
    for k, text in zip(changed.tolist(), lowered.gather(changed).to_list(), strict=True):
        lower[points[k]] = ord(text[0])
        if len(text) > 1:
            if len(text) > 2:  # pragma: no cover - no such lowercase in Unicode
                raise RuntimeError(f"lowercase of U+{points[k]:04X} has {len(text)} characters")
            extra[points[k]] = ord(text[1])
    # Supplementary planes count as neither cased nor case-ignorable next to a capital sigma (deterministic;
    # the dedup table learns those planes only as it meets them).
    sigma = _code_points().sigma[:0x10000].copy()
    return kind, lower, extra, sigma


def _joined_utf8(texts: Sequence[str] | Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, int]:
    from llm_assets.curation.dedup import _joined, _joined_size

    pieces = [t.encode("utf-8", "surrogatepass") if isinstance(t, str) else t for t in texts]
    raw, starts = _joined(pieces)
    return raw, starts, _joined_size(starts, pieces)


_NO_TABLE = np.zeros(0, dtype=np.uint64)


def _word_hashes(words: Iterable[str]) -> np.ndarray:
    """Sorted hashes, as the compiled pass computes them, of the list words a lowercased text word can equal:
    those `str.to_lowercase` leaves as they are and that are one run of word characters."""
    candidates = sorted(set(words))
    if candidates:
        series = pl.Series(candidates, dtype=pl.String)
        candidates = series.filter(series.str.to_lowercase() == series).to_list()
    if not candidates:
        return _NO_TABLE
    per_doc, first_hash, first_chars = _quality_kernels().measure_bytes(
        *_joined_utf8(candidates), *_char_tables(), np.full(len(candidates), -1, dtype=np.int64), *_word_lists([]), -1
    )
    whole = (per_doc[:, 3] == 1) & (first_chars == per_doc[:, 0])  # one word, and it is the whole entry
    return np.unique(first_hash[whole])


@functools.cache
def _stopword_index(lang: str) -> HashIndex:
    return HashIndex(_word_hashes(stopwordsiso.stopwords(lang)))


@functools.lru_cache(maxsize=4)
def _blocklist_index(blocklist: frozenset[str]) -> HashIndex:
    return HashIndex(_word_hashes(blocklist))


def _word_lists(indexes: Sequence[HashIndex]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The word lists laid end to end for the compiled pass: slots, slot offsets, keys, key offsets, shifts."""
    slot_at = np.zeros(len(indexes) + 1, dtype=np.int64)
    np.cumsum([index.slots.size for index in indexes], out=slot_at[1:])
    key_at = np.zeros(len(indexes) + 1, dtype=np.int64)
    np.cumsum([index.keys.size for index in indexes], out=key_at[1:])
    return (
        np.concatenate([index.slots for index in indexes]) if indexes else np.zeros(0, dtype=np.int32),
        slot_at,
        np.concatenate([index.keys for index in indexes]) if indexes else _NO_TABLE,
        key_at,
        np.array([index.shift for index in indexes], dtype=np.uint64),
    )


def _top_ngrams(hashed: pl.DataFrame) -> pl.DataFrame:
    """Per doc, top_ngram_chars from its words in order (columns doc, h: a hash of the word, length)."""
    return (
        hashed.select(
            "doc",
            key=(pl.col("h") * _MIX_WORD) ^ pl.col("h").shift(-1) ^ (pl.col("doc").cast(pl.UInt64) * _MIX_DOC),
            same_doc=pl.col("doc") == pl.col("doc").shift(-1),
            span=pl.col("length") + pl.col("length").shift(-1) + 1,
        )
        .filter(pl.col("same_doc"))  # first: a pair across two docs must not make a single pair look repeated
        .filter(pl.col("key").is_duplicated())
        .group_by("key")
        .agg(doc=pl.col("doc").first(), count=pl.len().cast(pl.Int64), span=pl.col("span").first().cast(pl.Int64))
        # the 2-gram with the highest (count, span) per document: both packed in one integer to take a max
        .group_by("doc")
        .agg(best=(pl.col("count") * _PACK + pl.col("span")).max())
        .select("doc", top_ngram_chars=(pl.col("best") // _PACK) * (pl.col("best") % _PACK))
    )


def _measure_piece(texts: list[str], languages: list[str], blocklist: frozenset[str]) -> pl.DataFrame:
    """The features of one piece in one compiled pass over its UTF-8 (`_measure_piece_polars` defines them)."""
    kernels = _quality_kernels()
    if kernels is None:  # pragma: no cover - numba is a dependency
        return _measure_piece_polars(texts, languages, blocklist)
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    long_docs = [i for i, data in enumerate(encoded) if len(data) > KERNEL_DOC_BYTES]
    if long_docs:
        short = [i for i in range(len(texts)) if len(encoded[i]) <= KERNEL_DOC_BYTES]
        parts = [
            _measure_piece_polars(
                [texts[i] for i in long_docs], [languages[i] for i in long_docs], blocklist
            ).with_columns(doc=pl.Series(long_docs, dtype=pl.Int64)),
        ]
        if short:
            parts.append(
                _measure_piece([texts[i] for i in short], [languages[i] for i in short], blocklist).with_columns(
                    doc=pl.Series(short, dtype=pl.Int64)
                )
            )
        return pl.concat(parts).sort("doc")
    with_lists = sorted({lang for lang in languages if stopwordsiso.has_lang(lang)})
    code = {lang: k for k, lang in enumerate(with_lists)}
    indexes = [_stopword_index(lang) for lang in with_lists]
    if blocklist:
        indexes.append(_blocklist_index(blocklist))
    doc_lang = np.fromiter((code.get(lang, -1) for lang in languages), dtype=np.int64, count=len(languages))
    per_doc, _, _ = kernels.measure_bytes(
        *_joined_utf8(encoded),
        *_char_tables(),
        doc_lang,
        *_word_lists(indexes),
        len(with_lists) if blocklist else -1,
    )
    columns = dict(zip(kernels.FEATURES, per_doc.T, strict=True))
    return pl.DataFrame(
        {
            "doc": np.arange(len(texts), dtype=np.int64),
            "chars": columns["chars"],
            "nonspace_chars": columns["chars"] - columns["spaces"],
            "symbols": columns["symbols"],
            "words": columns["words"],
            "stopwords": pl.Series(columns["stopwords"]).set(pl.Series(doc_lang < 0), None),
            "top_ngram_chars": columns["top_ngram_chars"],
            "lines": columns["lines"],
            "duplicate_lines": columns["duplicate_lines"],
            "blocklist_hits": columns["blocklist_hits"],
        }
    )


def _measure_piece_polars(texts: list[str], languages: list[str], blocklist: frozenset[str]) -> pl.DataFrame:
    """The definition of every feature in polars string operations: the reference the compiled pass is
    tested against, and the path where numba cannot load."""
    n = len(texts)
    docs = pl.DataFrame(
        {"doc": np.arange(n, dtype=np.int64), "text": texts, "lang": languages},
        schema={"doc": pl.Int64, "text": pl.String, "lang": pl.String},
    )
    base = docs.select(
        "doc",
        "lang",
        chars=pl.col("text").str.len_chars().cast(pl.Int64),
        nonspace_chars=(pl.col("text").str.len_chars() - pl.col("text").str.count_matches(r"\s")).cast(pl.Int64),
        symbols=pl.col("text").str.count_matches(_SYMBOL_RE).cast(pl.Int64),
    )
    word_lists = docs.select("doc", "lang", word=pl.col("text").str.to_lowercase().str.extract_all(_WORD_RE))
    words = word_lists.explode("word").drop_nulls("word")
    word_counts = word_lists.select("doc", words=pl.col("word").list.len().cast(pl.Int64))

    with_lists = frozenset(lang for lang in set(languages) if stopwordsiso.has_lang(lang))
    stopword_table = _stopword_table(with_lists)
    stop_counts = (
        # the cheap test on the word alone first: most words are no stopword in any language of the batch
        words.filter(pl.col("word").is_in(stopword_table.get_column("word").unique().implode()))
        .join(stopword_table, on=["lang", "word"], how="semi")
        .group_by("doc")
        .agg(stopwords=pl.len().cast(pl.Int64))
    )

    # Word 2-grams keyed by one 64-bit hash of (document, word, next word): grouping one integer column is
    # what keeps this fast. Any collision in a batch of a million pairs has probability ~3e-8 and would
    # only merge two counts.
    top_ngram = _top_ngrams(words.select("doc", h=pl.col("word").hash(), length=pl.col("word").str.len_chars()))

    lines = (
        docs.select("doc", line=pl.col("text").str.split("\n"))
        .explode("line")
        .with_columns(pl.col("line").str.strip_chars())
        .filter(pl.col("line").str.len_chars() > 0)
        .group_by("doc", "line")
        .agg(count=pl.len().cast(pl.Int64))
        .group_by("doc")
        .agg(lines=pl.col("count").sum(), duplicate_lines=(pl.col("count") - 1).sum())
    )

    blocked = (
        words.filter(pl.col("word").is_in(sorted(blocklist))).group_by("doc").agg(blocklist_hits=pl.len())
        if blocklist
        else pl.DataFrame(schema={"doc": pl.Int64, "blocklist_hits": pl.UInt32})
    )

    out = base
    for part in (word_counts, stop_counts, top_ngram, lines, blocked):
        out = out.join(part, on="doc", how="left")
    zero = ["words", "top_ngram_chars", "lines", "duplicate_lines", "blocklist_hits"]
    out = out.with_columns(
        pl.col(zero).fill_null(0).cast(pl.Int64),
        stopwords=pl.when(pl.col("lang").is_in(sorted(with_lists)))
        .then(pl.col("stopwords").fill_null(0))
        .cast(pl.Int64),
    )
    return out.sort("doc").drop("lang")


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _failures(
    row: dict[str, Any], language: str, score: float, config: QualityConfig, check_blocklist: bool
) -> list[tuple[str, float, float | None, str]]:
    """Every rule the document breaks, in RULES order, as (rule, measured, bound, reason)."""
    th = config.thresholds_for(language)
    chars, words = row["chars"], row["words"]
    failures: list[tuple[str, float, float | None, str]] = []
    if config.allowed_languages is not None and language not in config.allowed_languages:
        allowed = ", ".join(config.allowed_languages)
        failures.append(
            ("language_not_allowed", score, None, f"language '{language}' (p={score:.2f}) is not one of {allowed}")
        )
    if chars >= config.short_text_chars and score < th.min_language_score:
        failures.append(
            (
                "low_language_confidence",
                score,
                th.min_language_score,
                f"language '{language}' identified with p={score:.3f} < {th.min_language_score}",
            )
        )
    if chars < th.min_chars:
        failures.append(("too_short", chars, th.min_chars, f"{chars} characters < {th.min_chars}"))
    if chars > th.max_chars:
        failures.append(("too_long", chars, th.max_chars, f"{chars} characters > {th.max_chars}"))
    if row["stopwords"] is not None and words >= th.min_words_for_ratios:
        ratio = _ratio(row["stopwords"], words)
        if ratio < th.min_stopword_ratio:
            failures.append(
                (
                    "low_stopword_ratio",
                    ratio,
                    th.min_stopword_ratio,
                    f"{row['stopwords']} of {words} words are '{language}' stopwords ({ratio:.3f} < "
                    f"{th.min_stopword_ratio})",
                )
            )
    symbol_ratio = _ratio(row["symbols"], row["nonspace_chars"])
    if symbol_ratio > th.max_symbol_ratio:
        failures.append(
            (
                "high_symbol_ratio",
                symbol_ratio,
                th.max_symbol_ratio,
                f"{row['symbols']} symbol/emoji characters of {row['nonspace_chars']} ({symbol_ratio:.3f} > "
                f"{th.max_symbol_ratio})",
            )
        )
    duplicate = _ratio(row["duplicate_lines"], row["lines"])
    if duplicate > th.max_duplicate_line_fraction:
        failures.append(
            (
                "repeated_lines",
                duplicate,
                th.max_duplicate_line_fraction,
                f"{row['duplicate_lines']} of {row['lines']} lines repeat an earlier line ({duplicate:.3f} > "
                f"{th.max_duplicate_line_fraction})",
            )
        )
    top = _ratio(row["top_ngram_chars"], chars)
    if words >= th.min_words_for_ratios and top > th.max_top_ngram_fraction:
        failures.append(
            (
                "repeated_ngrams",
                top,
                th.max_top_ngram_fraction,
                f"the most frequent word 2-gram covers {top:.3f} of the characters (> {th.max_top_ngram_fraction})",
            )
        )
    if check_blocklist:
        hits = row["blocklist_hits"]
        fraction = _ratio(hits, words)
        if hits > config.max_blocklist_hits:
            failures.append(
                (
                    "blocklist",
                    hits,
                    config.max_blocklist_hits,
                    f"{hits} blocklisted words > {config.max_blocklist_hits}",
                )
            )
        elif config.max_blocklist_fraction is not None and fraction > config.max_blocklist_fraction:
            failures.append(
                (
                    "blocklist",
                    fraction,
                    config.max_blocklist_fraction,
                    f"blocklisted words are {fraction:.3f} of the words (> {config.max_blocklist_fraction})",
                )
            )
    return failures


def quality_filter_batch(table: pa.Table, config: QualityConfig) -> StageOutput:
    """Identify languages, measure, and keep the documents that break no rule; adds `lang`, `lang_score`.

    A document breaking several rules is rejected once, under the first in RULES order; `rule_hits` in
    the stats counts every rule broken, so the effect of loosening one rule can be read off.
    """
    texts = [text or "" for text in table.column("text").to_pylist()]
    hints = table.column("language_hint").to_pylist() if "language_hint" in table.column_names else [None] * len(texts)
    languages, scores, hints_used = _assign_languages(texts, hints, config)
    blocklist = config.blocklist()
    features = measure(texts, languages, blocklist).to_dicts()

    kept_idx: list[int] = []
    rejected: list[tuple[int, str, float, float | None, str]] = []
    rule_hits: Counter[str] = Counter()
    for i, (row, language, score) in enumerate(zip(features, languages, scores, strict=True)):
        failures = _failures(row, language, score, config, bool(blocklist))
        rule_hits.update(rule for rule, *_ in failures)
        if failures:
            rejected.append((i, *failures[0]))
        else:
            kept_idx.append(i)

    kept = table.take(pa.array(kept_idx, type=pa.int64()))
    for name, values, dtype in (
        ("lang", [languages[i] for i in kept_idx], pa.string()),
        ("lang_score", [scores[i] for i in kept_idx], pa.float64()),
    ):
        column = pa.array(values, type=dtype)
        if name in kept.column_names:
            kept = kept.set_column(kept.schema.get_field_index(name), name, column)
        else:
            kept = kept.append_column(name, column)
    rejects = reject_rows(
        table,
        [r[0] for r in rejected],
        stage=STAGE,
        rules=[r[1] for r in rejected],
        reasons=[r[4] for r in rejected],
        scores=[float(r[2]) for r in rejected],
        thresholds=[None if r[3] is None else float(r[3]) for r in rejected],
    )
    stats = {
        "docs_in": table.num_rows,
        "docs_kept": kept.num_rows,
        "docs_rejected": rejects.num_rows,
        "rejected_by_rule": dict(sorted(Counter(r[1] for r in rejected).items())),
        "rule_hits": dict(sorted(rule_hits.items())),
        "kept_by_language": dict(sorted(Counter(languages[i] for i in kept_idx).items())),
        "language_hints_used": hints_used,
        "chars_in": sum(len(text) for text in texts),
        "langid_model": LANGID_MODEL,
        "langid_model_sha256": langid_model_sha256(),
        "langid_refiner": langid_refiner() if config.refine_close_languages else "off",
    }
    return StageOutput(kept=kept, rejects=rejects, stats=stats)
