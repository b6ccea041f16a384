"""Normalisation repairs and canonicalises text without losing records or real content."""

from __future__ import annotations

import random
from collections import Counter

import ftfy
import numpy as np
import pyarrow as pa
import pytest
from ftfy.badness import is_bad
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llm_assets.curation.normalize import (
    _FTFY_CONFIG,
    NormalizeConfig,
    _fix_text,
    boilerplate_lines,
    count_lines,
    mojibake_candidates,
    normalize_batch,
    normalize_text,
)
from llm_assets.ingestion import DESCRIPTOR_FILENAME, iter_source_files, parse_descriptor
from llm_assets.paths import sample_corpus_dir
from llm_assets.schemas import RECORD_SCHEMA, REJECT_SCHEMA

DEFAULT = NormalizeConfig()


def _table(texts: list[str]) -> pa.Table:
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
            "language_hint": [None] * n,
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


@pytest.mark.parametrize(
    ("broken", "fixed"),
    [
        ("CafÃ© â€œquotedâ€\x9d", 'Café "quoted"'),  # UTF-8 read as Windows-1252
        ("Καλημέρα κόσμε".encode().decode("latin-1"), "Καλημέρα κόσμε"),  # UTF-8 read as Latin-1
        ("Ð—Ð´Ñ€Ð°Ð²ÐµÐ¹", "Здравей"),
        ("smart \x93quotes\x94 from cp1252", 'smart "quotes" from cp1252'),  # C1 controls
    ],
)
def test_repairs_mojibake(broken: str, fixed: str) -> None:
    text, changes = normalize_text(broken, DEFAULT)
    assert text == fixed
    assert changes["mojibake_fixed"] == 1


def test_clean_non_ascii_text_is_not_touched_by_mojibake_repair() -> None:
    for text in ("Ο επί της Δικαιοσύνης Υπουργός", "Ewe: ƒãa be, ablɔɖevinyenye", "Zürich, São Paulo, Łódź"):
        _, changes = normalize_text(text, DEFAULT)
        assert changes["mojibake_fixed"] == 0


def test_mojibake_prefilter_flags_exactly_what_ftfy_flags() -> None:
    """The polars translation of ftfy's detector must not miss anything ftfy would fix."""
    lines = [line for text in _sample_source("udhr").column("text").to_pylist() for line in text.splitlines()]
    rng = random.Random(7)
    encodings = ["latin-1", "windows-1252", "windows-1250", "windows-1251", "windows-1253", "mac_roman"]
    lines += [line.encode().decode(rng.choice(encodings), errors="replace") for line in rng.sample(lines, 600)]
    lines += ["\x85 C1", "ªº", "a\u00a0b", "×²", "x\x1cÃ ", "naïve café résumé"]
    assert mojibake_candidates(lines) == [is_bad(line) for line in lines]


_MOJIBAKE_PIECES = [
    "CafÃ© â€œquotedâ€\x9d",
    "Ð—Ð´Ñ€Ð°Ð²ÐµÐ¹",
    "smart \x93quotes\x94",
    "plain ASCII &amp; <b>tags</b> \x1b[31m",
    "Καλημέρα",
    "\ud800 lone surrogate",
    "Ã\xa0 byte A0",
    "\r",
    "",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(_MOJIBAKE_PIECES) | st.text(max_size=12), max_size=12), st.sampled_from(["\n", "", " "])
)
@example(["CafÃ© â€œ", "plain", "Ð—Ð´Ñ€"], "\n")
def test_line_wise_mojibake_repair_equals_ftfy(pieces: list[str], joiner: str) -> None:
    """Only the lines with a non-ASCII character go to ftfy: the text comes out as ftfy makes it."""
    text = joiner.join(pieces)
    assert _fix_text(text) == ftfy.fix_text(text, _FTFY_CONFIG)


def test_line_wise_mojibake_repair_cuts_long_lines_as_ftfy() -> None:
    long_line = "x" * (_FTFY_CONFIG.max_decode_length - 3) + "CafÃ© â€œquotedâ€\x9d" * 3
    text = f"ascii line\n{long_line}\nÐ—Ð´Ñ€Ð°Ð²ÐµÐ¹"
    assert _fix_text(text) == ftfy.fix_text(text, _FTFY_CONFIG)


def test_control_and_invisible_characters_removed_but_joiners_kept() -> None:
    text, changes = normalize_text("a\x00b\x07c\u200bd\ufeffe\u00adf\u202eg \U0001f469\u200d\U0001f4bb", DEFAULT)
    assert text == "abcdefg \U0001f469\u200d\U0001f4bb"
    assert changes["control_chars_removed"] == 6


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ﬁnance ＡＢＣ ①", "finance ABC 1"),
        ("Τι ώρα είναι\u037e", "Τι ώρα είναι;"),  # Greek question mark stays a ';'
        ("don\u00b4t", "don't"),  # not NFKC's space + combining acute
        ("ΚΕΦΑΛΑΙΟ Α\u0384", "ΚΕΦΑΛΑΙΟ Α'"),
        ("e\u0301", "é"),
    ],
)
def test_unicode_nfkc(raw: str, expected: str) -> None:
    assert normalize_text(raw, DEFAULT)[0] == expected


def test_punctuation_standardised_and_guillemets_kept() -> None:
    text, changes = normalize_text(
        "\u201cQuote\u201d \u2018single\u2019 \u201eGerman\u201c 1\u20135 \u2014 wait\u2026 «Ναι»", DEFAULT
    )
    assert text == '"Quote" \'single\' "German" 1-5 - wait... «Ναι»'
    assert changes["punctuation_standardised"] == 8


def test_punctuation_step_reads_only_non_ascii_texts() -> None:
    """Every character the step replaces is non-ASCII, which is why ASCII texts skip it; a batch mixing
    both counts and replaces the same as one text at a time."""
    from llm_assets.curation import normalize

    assert not any(key.isascii() for key in normalize._PUNCTUATION)
    texts = ["plain -- ascii...", "1\u20135 \u2014 wait\u2026", "x\x07y", "\u201cq\u201d\u00a0z"]
    changes = dict.fromkeys(normalize.CHANGE_KINDS, 0)
    batch = normalize._prepare(texts, DEFAULT, changes)
    singles = [normalize_text(text, DEFAULT) for text in texts]
    assert batch == [text for text, _ in singles]
    for kind in ("punctuation_standardised", "control_chars_removed"):
        assert changes[kind] == sum(single[kind] for _, single in singles) > 0


def test_whitespace_standardised() -> None:
    text, changes = normalize_text("  line one  \r\nline\ttwo\u00a0x\r\rthree\n\n\n\n\nfour \u2028five  ", DEFAULT)
    assert text == "line one\nline two x\n\nthree\n\nfour\nfive"
    assert changes["whitespace_standardised"] == 1


def test_every_step_can_be_switched_off() -> None:
    config = NormalizeConfig(
        unicode_form=None,
        fix_mojibake=False,
        remove_control_chars=False,
        standardise_whitespace=False,
        standardise_punctuation=False,
    )
    raw = "CafÃ©  \u201cx\u201d\x00 ﬁ\r\n"
    assert normalize_text(raw, config) == (raw, dict.fromkeys(normalize_text(raw, config)[1], 0))


def test_config_fails_fast() -> None:
    with pytest.raises(ValueError, match="boilerplate_min_doc_fraction"):
        NormalizeConfig(boilerplate_min_doc_fraction=0)
    with pytest.raises(ValueError, match="unicode_form"):
        NormalizeConfig(unicode_form="NFX")  # type: ignore[arg-type]


FOOTER = "Published by the Ministry of Digital Governance"


def _docs_with_footer(n_docs: int, with_footer: int) -> list[str]:
    return [
        f"Article 3\nBody of document number {i} with its own words.\n" + (FOOTER if i < with_footer else "")
        for i in range(n_docs)
    ]


@pytest.mark.parametrize(
    ("n_docs", "with_footer", "removed"),
    [
        (5, 3, True),  # 3 docs >= min_docs 3 and 3/5 >= 0.5
        (5, 2, False),  # below min_docs
        (10, 4, False),  # 4/10 below the 0.5 fraction
        (10, 10, True),
    ],
)
def test_boilerplate_removed_only_when_repeated_across_enough_docs(
    n_docs: int, with_footer: int, removed: bool
) -> None:
    docs = _docs_with_footer(n_docs, with_footer)
    boilerplate = boilerplate_lines(count_lines(docs, DEFAULT), n_docs, DEFAULT)
    out = normalize_batch(_table(docs), DEFAULT, boilerplate)
    texts = out.kept.column("text").to_pylist()
    assert any(FOOTER in text for text in texts) is not removed
    assert all(text.startswith("Article 3\nBody of document") for text in texts)  # short heading kept
    assert out.stats["boilerplate_lines_removed"] == (with_footer if removed else 0)


def test_line_counts_accumulate_across_shards() -> None:
    docs = _docs_with_footer(8, 6)
    counts = count_lines(docs[:3], DEFAULT)
    counts = count_lines(iter(docs[3:]), DEFAULT, counts)
    assert counts == count_lines(docs, DEFAULT)
    assert counts.max_count() == 6


def test_greek_law_boilerplate_removed_but_article_headings_kept() -> None:
    laws = _sample_source("greek_laws")
    texts = laws.column("text").to_pylist()
    boilerplate = boilerplate_lines(count_lines(texts, DEFAULT), len(texts), DEFAULT)
    out = normalize_batch(laws, DEFAULT, boilerplate)
    assert out.kept.num_rows == 5
    for text in out.kept.column("text").to_pylist():
        assert "Εκδίδομε τον ακόλουθο νόμο που ψήφισε η Βουλή:" not in text
        assert "\nΆρθρο 1\n" in text and "\nΣκοπός\n" in text
        assert "\r" not in text
    assert out.stats["chars_out"] < out.stats["chars_in"]


def test_empty_documents_rejected_with_score_and_threshold() -> None:
    table = _table(["keep me", "", " \n\t\u200b ", "\x00\x01", "ok"])
    out = normalize_batch(table, NormalizeConfig(min_chars_after=2), frozenset())
    assert out.kept.column("id").to_pylist() == ["r0", "r4"]
    assert out.rejects.schema == REJECT_SCHEMA
    assert out.rejects.column("record_id").to_pylist() == ["r1", "r2", "r3"]
    assert set(out.rejects.column("stage").to_pylist()) == {"normalize"}
    assert set(out.rejects.column("rule").to_pylist()) == {"empty_after_normalization"}
    assert out.rejects.column("score").to_pylist() == [0.0, 0.0, 0.0]
    assert out.rejects.column("threshold").to_pylist() == [2.0, 2.0, 2.0]


def test_kept_rows_keep_columns_in_order_with_extra_columns() -> None:
    table = _table(["A\u00a0b", "x"]).append_column("extra", pa.array([1, 2]))
    out = normalize_batch(table, DEFAULT, frozenset())
    assert out.kept.column_names == table.column_names
    assert out.kept.schema == table.schema
    assert out.kept.column("text").to_pylist() == ["A b", "x"]
    assert out.stats["docs_changed"] == 1


texts_strategy = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=120).map(lambda b: b.decode("latin-1")),
    st.text(st.sampled_from(list("αβγ ЖЗ 中文 😀👍🏽\u200d \n\r\t\x00\u00a0\u2028—…“”'")), max_size=80),
    st.sampled_from(["", " ", "\n\n", "CafÃ©", "Ð—Ð´Ñ€Ð°Ð²ÐµÐ¹", "Same line across docs here"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts_strategy, max_size=12), st.integers(1, 5))
def test_every_input_row_is_kept_or_rejected(texts: list[str], min_chars: int) -> None:
    config = NormalizeConfig(min_chars_after=min_chars, boilerplate_min_docs=2)
    boilerplate = boilerplate_lines(count_lines(texts, config), len(texts), config)
    table = _table(texts)
    out = normalize_batch(table, config, boilerplate)
    assert out.kept.num_rows + out.rejects.num_rows == table.num_rows
    assert out.kept.schema == table.schema
    kept_ids = out.kept.column("id").to_pylist()
    rejected_ids = out.rejects.column("record_id").to_pylist()
    assert Counter(kept_ids + rejected_ids) == Counter(table.column("id").to_pylist())
    assert all(len(text) >= min_chars for text in out.kept.column("text").to_pylist())
    single = [normalize_text(text, config, boilerplate)[0] for text in texts]
    assert out.kept.column("text").to_pylist() == [t for t in single if len(t) >= min_chars]


@settings(max_examples=60, deadline=None)
@given(texts_strategy)
def test_normalisation_is_idempotent(text: str) -> None:
    once = normalize_text(text, DEFAULT)[0]
    assert normalize_text(once, DEFAULT)[0] == once


# Everything the character steps treat specially: each line break (and "\r\n"), controls that are also line
# breaks (\x0b, \x85), other controls and invisible characters, joiners that stay, every kind of white space,
# the punctuation replaced (one of them by three characters) and kept, plus letters to separate them.
STEP_ALPHABET = [*"\r\n\x0b\x0c\x85\u2028\u2029\x00\x07\x1c\x7f\u00ad\u200b\ufeff\u202e\u200d\u200c"]
STEP_ALPHABET += [*" \t\u00a0\u3000\u2003\u2018\u201d\u2014\u2026\u2212«»", "a", "Ω", "😀", "\r\n", "  "]


ONE_WHITESPACE_CHANGE = ["a\n b", "a \nb", "a  b", "a\tb", " a", "a ", "a\n\n\nb", "\na", "a\n", "a\x07 \nb"]
NO_WHITESPACE_CHANGE = ["a b", "a\n\nb", "a\nb", "a\r\nb", "a\x85b", "a\x07b"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(texts=ONE_WHITESPACE_CHANGE + NO_WHITESPACE_CHANGE, switches=(True, True, True))
@given(
    texts=st.lists(st.lists(st.sampled_from(STEP_ALPHABET), max_size=24).map("".join) | st.text(max_size=30)),
    switches=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_compiled_steps_give_the_polars_text_and_counts(texts: list[str], switches: tuple[bool, bool, bool]) -> None:
    """Line breaks, controls, punctuation and whitespace in one compiled pass equal the polars passes that
    define them, text and change counts, with any of the steps switched off."""
    import polars as pl

    from llm_assets.curation import normalize

    whitespace, controls, punctuation = switches
    config = NormalizeConfig(
        fix_mojibake=False,
        unicode_form=None,
        standardise_whitespace=whitespace,
        remove_control_chars=controls,
        standardise_punctuation=punctuation,
    )
    expected_changes = dict.fromkeys(normalize.CHANGE_KINDS, 0)
    non_ascii = [i for i, text in enumerate(texts) if not text.isascii()]
    expected = normalize._standardise_polars(pl.Series(texts, dtype=pl.String), config, expected_changes, non_ascii)
    changes = dict.fromkeys(normalize.CHANGE_KINDS, 0)
    assert normalize._prepare_once(normalize._large_strings(texts), config, changes).to_pylist() == expected.to_list()
    assert changes == expected_changes
    for text in texts:  # per document too: a batch's sums could hide two opposite mistakes
        one: dict[str, int] = dict.fromkeys(normalize.CHANGE_KINDS, 0)
        reference: dict[str, int] = dict.fromkeys(normalize.CHANGE_KINDS, 0)
        normalize._standardise_polars(pl.Series([text], dtype=pl.String), config, reference, [0])
        normalize._prepare_once(normalize._large_strings([text]), config, one)
        assert one == reference, text


LINE_ALPHABET = ["\n", " ", "\t", "\u00a0", "\u3000", "\x1c", "\r", "word", "Λέξη", "x", "😀", "a b c d"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.lists(st.sampled_from(LINE_ALPHABET), max_size=30).map("".join) | st.text(max_size=40)),
    max_chars=st.integers(min_value=1, max_value=30),
    min_words=st.integers(min_value=1, max_value=4),
)
def test_compiled_candidate_lines_are_the_polars_lines(texts: list[str], max_chars: int, min_words: int) -> None:
    """The same (doc, position) lines as the polars definition, and two lines share a key exactly when their
    polars keys (hashes of the stripped text) are equal."""
    from llm_assets.curation import normalize

    config = NormalizeConfig(boilerplate_max_line_chars=max_chars, boilerplate_min_line_words=min_words)
    expected = normalize._candidate_lines_polars(texts, config)
    actual = normalize._candidate_lines(texts, config)
    assert actual.select("doc", "position").rows() == expected.select("doc", "position").rows()
    pairs = set(zip(expected["key"].to_list(), actual["key"].to_list(), strict=True))
    assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})


# Characters that interact under normalisation: precomposed and combining accents (reordered by class),
# Hangul syllables and jamo (composed algorithmically), Indic vowel signs that compose (U+0B47 + U+0B3E),
# a composition exclusion (U+0958), a singleton (U+212B), compatibility forms (ligature, fullwidth, superscript,
# the spacing accents _PRE_NFKC handles), CJK, emoji and a variation selector; plus plain letters.
UNICODE_ALPHABET = list(
    "aeoAΩωάέ\u0301\u0308\u0345\u0323\u0313가각\u1100\u1161\u11a8\u0b47\u0b3e\u0b4b\u0958\u212b\ufb01\uff21²"
    "\u00b4\u0384\u00c5\u0041\u030a\u4e2d\U0001f600\ufe0f\u0627\u064e\u0651\u0915\u093f\u094d "
)


@settings(max_examples=400, deadline=None)
@given(
    texts=st.lists(st.text(alphabet=st.sampled_from(UNICODE_ALPHABET), max_size=8), min_size=1, max_size=12),
    form=st.sampled_from(["NFKC", "NFC", "NFD", "NFKD"]),
)
@example(texts=["\u0627\u0651\u064e", "a\u0301\u0323", "\u1100\u1161", "\u0b47\u0b3e", "\ufb01"], form="NFC")
@example(texts=["\u0627\u0651\u064e", "\u0958", "\u212b", "x\u00b4", "\uff21"], form="NFKC")
def test_texts_the_quick_check_passes_are_already_normalised(texts: list[str], form: str) -> None:
    """Normalisation skips the texts `_unstable_rows` leaves out: each must already be in the form (polars
    decides), so skipping them changes no output."""
    import numpy as np
    import polars as pl

    from llm_assets.curation import normalize

    array = normalize._large_strings(texts)
    rows = np.arange(len(texts), dtype=np.int64)
    unstable = set(normalize._unstable_rows(array, rows, form).tolist())
    normalised = pl.Series(texts, dtype=pl.String).str.normalize(form).to_list()
    for row, (text, target) in enumerate(zip(texts, normalised, strict=True)):
        if row not in unstable:
            assert text == target, (form, text)


# Characters substituted in place (NBSP, the ellipsis, fullwidth and compatibility forms, one that becomes a
# phrase), stable ones (precomposed Greek, a Hangul syllable), and what must go to polars: marks, composition
# seconds, Hangul jamo, the spacing accents.
SUBSTITUTION_ALPHABET = list(
    "\u00a0\u2026\uff0c\u00b5\u00bd\ufdfa\u2460\u1d43\u00c5\u03ac\uac00a \u00b4\u0384\u0301\u0345\u0b47\u0b3e\u1161"
)


@settings(max_examples=400, deadline=None)
@given(
    texts=st.lists(st.text(alphabet=st.sampled_from(SUBSTITUTION_ALPHABET), max_size=8), min_size=1, max_size=10),
    form=st.sampled_from(["NFKC", "NFC", "NFD", "NFKD"]),
    punctuation=st.booleans(),
)
@example(
    texts=["a\u00a0\u0301", "\u00b5\u0301", "\u2026", "x\u00b4y", "\u0b47\u00a0\u0b3e", "\u03ac\u0345"],
    form="NFKC",
    punctuation=True,
)
def test_in_place_substitution_gives_polars_normal_form(texts: list[str], form: str, punctuation: bool) -> None:
    """Texts whose unstable characters are all substituted in place, in one compiled pass, come out as polars'
    normaliser makes them, with the same count of changed texts."""
    from llm_assets.curation import normalize

    config = NormalizeConfig(
        fix_mojibake=False,
        unicode_form=form,  # type: ignore[arg-type]
        standardise_whitespace=False,
        remove_control_chars=False,
        standardise_punctuation=punctuation,
    )
    ours = dict.fromkeys(normalize.CHANGE_KINDS, 0)
    got = normalize._prepare_once(normalize._large_strings(texts), config, ours).to_pylist()
    polars_only = dict.fromkeys(normalize.CHANGE_KINDS, 0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(normalize, "_substitute_in_place", lambda texts, rows, config, changes: (texts, rows))
        expected = normalize._prepare_once(normalize._large_strings(texts), config, polars_only).to_pylist()
    assert got == expected
    assert ours == polars_only


def test_every_character_a_form_changes_is_flagged() -> None:
    """The whole table: a character that its own normal form changes is always flagged, in every form."""
    import numpy as np

    from llm_assets.curation import normalize
    from llm_assets.curation._codepoints import code_point_series

    points, chars = code_point_series()
    for form in ("NFKC", "NFC", "NFD", "NFKD"):
        changed = (chars.str.normalize(form) != chars).to_numpy()
        assert normalize._unstable_code_points(form)[points[changed]].all(), form
        assert not normalize._unstable_code_points(form)[np.arange(0x80)].any()


# Lines with the characters that matter: newlines (runs of them), Python white space at the ends, others.
LINE_PIECES = ["\n", "\n\n\n", " ", "\t", "\u3000", "\x1c", "\u00a0", "a", "Ω", "line", "", "\r"]


@settings(max_examples=300, deadline=None)
@example(texts=["", "\n\n", "a\nb\nc"], seed=1)
@example(texts=["x\n\n\n\ny\n \n", "\u3000only\u3000"], seed=2)
@given(
    texts=st.lists(st.lists(st.sampled_from(LINE_PIECES), max_size=25).map("".join), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_boilerplate_removal_in_polars_equals_the_python_definition(texts: list[str], seed: int) -> None:
    """`_remove_lines` (polars passes) gives `_remove_lines_python`'s texts, with and without white-space
    standardisation, for every choice of documents and line positions."""
    import polars as pl

    from llm_assets.curation.normalize import _remove_lines, _remove_lines_python

    rng = random.Random(seed)
    drops = {
        doc: sorted(rng.sample(range(text.count("\n") + 1), rng.randint(1, text.count("\n") + 1)))
        for doc, text in enumerate(texts)
        if rng.random() < 0.7
    }
    if not drops:
        return
    pairs = pl.DataFrame(
        {"doc": [d for d, ps in drops.items() for _ in ps], "position": [p for ps in drops.values() for p in ps]},
        schema={"doc": pl.Int64, "position": pl.Int64},
    ).sample(fraction=1.0, shuffle=True, seed=seed)
    array = pa.array(texts, pa.large_string())
    for standardise in (True, False):
        docs, out = _remove_lines(array, pairs, standardise)
        assert docs.tolist() == sorted(drops)
        expected = _remove_lines_python(
            [texts[d] for d in sorted(drops)], [drops[d] for d in sorted(drops)], standardise
        )
        assert out.to_pylist() == expected


@settings(max_examples=200, deadline=None)
@given(
    shards=st.lists(
        st.lists(st.lists(st.integers(0, 40), max_size=12), max_size=8),  # documents of line keys, per shard
        max_size=5,
    ),
    compiled=st.booleans(),
)
def test_line_counts_count_each_key_once_per_document(shards: list[list[list[int]]], compiled: bool) -> None:
    """The compiled table (grown from 1,024 slots as keys arrive) and the sorted-array fallback both count, per
    key, the documents holding it, across calls; a key repeated in one document counts once."""
    from llm_assets.curation import normalize

    with pytest.MonkeyPatch.context() as patch:
        if not compiled:
            patch.setattr(normalize, "_normalize_kernels", lambda: None)
        expected: Counter[int] = Counter()
        counts = normalize.LineCounts()
        spread = 2**61 + 12_345  # many distinct 64-bit keys, so the table grows past its first size
        for shard in shards:
            docs = [d for d, keys in enumerate(shard) for _ in keys]
            keys = [k * spread % 2**64 for keys in shard for k in keys]
            for doc_keys in shard:
                expected.update({k * spread % 2**64 for k in doc_keys})
            counts.add(np.array(keys, dtype=np.uint64), np.array(docs, dtype=np.int64))
        counts.add(np.arange(3000, dtype=np.uint64) + 2**40)  # one document each
        expected.update(int(k) + 2**40 for k in range(3000))
        assert len(counts) == len(expected)
        assert counts.max_count() == max(expected.values())
        for floor in (1, 2, 3):
            assert counts.at_least(floor) == frozenset(k for k, n in expected.items() if n >= floor)
