"""The reference character model separates fluent text from garbage, serialises exactly, and trims per language."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llm_assets.curation.perplexity import (
    CharNgramLM,
    PerplexityConfig,
    _character_tables,
    _compiled_kernels,
    _prepared_windows,
    _prepared_windows_python,
    percentile_bounds,
    score_batch,
    trim_batch,
)
from llm_assets.ingestion import DESCRIPTOR_FILENAME, iter_source_files, parse_descriptor
from llm_assets.paths import sample_corpus_dir
from llm_assets.schemas import REJECT_SCHEMA


def _sample_records(name: str) -> list[dict]:
    folder = sample_corpus_dir() / name
    descriptor = parse_descriptor((folder / DESCRIPTOR_FILENAME).read_bytes(), name)
    files = [(p.relative_to(folder).as_posix(), p.read_bytes) for p in sorted(folder.rglob("*")) if p.is_file()]
    return [record for outcome in iter_source_files(files, descriptor) for record in outcome.records]


@pytest.fixture(scope="module")
def laws() -> list[str]:
    return [record["text"] for record in _sample_records("greek_laws")]


@pytest.fixture(scope="module")
def greek_model(laws: list[str]) -> CharNgramLM:
    return CharNgramLM.train(laws[:4], order=5, language="el", corpus="sample greek_laws n5082-n5107")


@pytest.fixture(scope="module")
def udhr() -> dict[str, str]:
    return {record["language_hint"]: record["text"] for record in _sample_records("udhr")}


def test_in_language_text_scores_lower_than_shuffled_garbage_or_another_language(
    greek_model: CharNgramLM, laws: list[str], udhr: dict[str, str]
) -> None:
    held_out = laws[4][:20_000]
    rng = random.Random(0)
    chars_shuffled = "".join(rng.sample(held_out, len(held_out)))
    words = held_out.split()
    words_shuffled = " ".join(rng.sample(words, len(words)))
    garbage = "".join(chr(rng.randrange(0x21, 0x2FF)) for _ in range(5_000))
    fluent, *others = greek_model.perplexities(
        [held_out, words_shuffled, chars_shuffled, garbage, udhr["el"], udhr["en"], udhr["fi"]]
    )
    word_salad, char_salad, noise, greek_udhr, english, finnish = others
    assert fluent < greek_udhr < word_salad < char_salad < noise
    assert fluent < 10 < 50 < min(english, finnish)
    assert greek_udhr < english


def test_probabilities_sum_to_one(greek_model: CharNgramLM) -> None:
    for context in ("", "του νόμ", "zzq", "άρθρο 0"):
        base = greek_model.perplexity(context) ** -len(context) if context else 1.0
        total = sum(
            greek_model.perplexity(context + ch) ** -(len(context) + 1) / base
            for ch in [*greek_model.vocabulary, "\u2603"]  # every character id, plus one out-of-vocabulary
        )
        assert total == pytest.approx(1.0, abs=1e-9)


def test_serialisation_roundtrip_is_exact(greek_model: CharNgramLM, laws: list[str], udhr: dict[str, str]) -> None:
    data = greek_model.to_bytes()
    restored = CharNgramLM.from_bytes(data)
    texts = [laws[4][:5000], udhr["el"], udhr["en"], "", "x"]
    assert np.array_equal(restored.perplexities(texts), greek_model.perplexities(texts), equal_nan=True)
    assert restored.sha256 == greek_model.sha256 == __import__("hashlib").sha256(data).hexdigest()
    assert restored.to_bytes() == data
    assert restored.metadata() == greek_model.metadata()


def test_training_is_deterministic(laws: list[str], greek_model: CharNgramLM) -> None:
    again = CharNgramLM.train(laws[:4], order=5, language="el", corpus="sample greek_laws n5082-n5107")
    assert again.to_bytes() == greek_model.to_bytes()


def test_damaged_bytes_are_refused(greek_model: CharNgramLM) -> None:
    data = greek_model.to_bytes()
    with pytest.raises(ValueError, match="magic"):
        CharNgramLM.from_bytes(b"PICKLE" + data)
    with pytest.raises(ValueError, match="trailing bytes"):
        CharNgramLM.from_bytes(data + b"\x00" * 8)


def test_metadata_describes_the_model(greek_model: CharNgramLM, laws: list[str]) -> None:
    meta = greek_model.metadata()
    assert meta["order"] == 5 and meta["language"] == "el"
    assert meta["training_corpus"] == "sample greek_laws n5082-n5107"
    assert 0 < meta["training_chars"] <= sum(len(text) for text in laws[:4])
    assert 60 < meta["vocabulary_size"] < 200
    assert meta["sha256"] == greek_model.sha256 and len(meta["ngrams_per_order"]) == 5


def test_long_documents_are_scored_on_bounded_windows(greek_model: CharNgramLM, laws: list[str]) -> None:
    long = laws[4]
    assert len(long) > 100_000
    windowed = greek_model.perplexity(long, max_chars_scored=20_000)
    full = greek_model.perplexity(long, max_chars_scored=10**9)
    assert windowed == pytest.approx(full, rel=0.15)
    assert math.isnan(greek_model.perplexity(""))


def test_vocabulary_cap_maps_rare_characters_to_oov() -> None:
    model = CharNgramLM.train(["aaaa bbbb cc d"], order=3, language="xx", max_vocabulary=2)
    assert model.vocabulary == "ab"
    assert math.isfinite(model.perplexity("dddd zzz"))


def _with_lang(texts: list[str], languages: list[str]) -> pa.Table:
    n = len(texts)
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "text": texts,
            "source": ["test"] * n,
            "file": ["f"] * n,
            "locator": [str(i) for i in range(n)],
            "lang": languages,
        }
    )


def test_score_batch_adds_perplexity_per_language(greek_model: CharNgramLM, udhr: dict[str, str]) -> None:
    table = _with_lang([udhr["el"], udhr["en"], udhr["el"][:300]], ["el", "en", "el"])
    scored = score_batch(table, {"el": greek_model})
    assert scored.column_names == [*table.column_names, "perplexity"]
    assert scored.schema.field("perplexity").type == pa.float64()
    values = scored.column("perplexity").to_pylist()
    assert values[1] is None  # no English model
    assert values[0] == pytest.approx(greek_model.perplexity(udhr["el"]))
    assert score_batch(scored, {}).column("perplexity").null_count == 3  # rescoring replaces the column


def test_percentile_bounds_per_language() -> None:
    perplexities = {"el": np.arange(1.0, 101.0), "en": np.array([5.0, 6.0, np.nan]), "de": np.arange(1.0, 41.0)}
    config = PerplexityConfig(per_language={"de": {"lower_percentile": 10.0}})  # type: ignore[dict-item]
    bounds = percentile_bounds(perplexities, config)
    assert set(bounds) == {"el", "de"}  # 'en' has too few documents
    assert bounds["el"] == (-math.inf, pytest.approx(np.percentile(np.arange(1.0, 101.0), 99)))
    assert bounds["de"][0] == pytest.approx(np.percentile(np.arange(1.0, 41.0), 10))


def test_trim_batch_rejects_tails_with_score_and_threshold() -> None:
    languages = ["el"] * 100 + ["en"] * 5 + ["fr"]
    values = [*np.arange(1.0, 101.0), 1.0, 2.0, 3.0, 1000.0, 2000.0, None]
    table = _with_lang(["t"] * len(languages), languages).append_column("perplexity", pa.array(values, pa.float64()))
    bounds = percentile_bounds(
        {"el": np.arange(1.0, 101.0), "en": np.array([1.0, 2.0, 3.0, 1000.0, 2000.0])},
        PerplexityConfig(lower_percentile=2.0),
    )
    out = trim_batch(table, bounds)
    assert out.kept.num_rows + out.rejects.num_rows == table.num_rows
    assert out.rejects.schema == REJECT_SCHEMA
    rejects = out.rejects.to_pylist()
    assert [(r["record_id"], r["rule"], r["score"]) for r in rejects] == [
        ("r0", "perplexity_too_low", 1.0),
        ("r1", "perplexity_too_low", 2.0),
        ("r99", "perplexity_too_high", 100.0),
    ]
    assert rejects[0]["threshold"] == pytest.approx(np.percentile(np.arange(1.0, 101.0), 2))
    assert rejects[2]["threshold"] == pytest.approx(np.percentile(np.arange(1.0, 101.0), 99))
    assert out.stats["languages_not_trimmed"] == {"en": 5}
    assert out.stats["docs_without_perplexity"] == 1
    assert out.kept.column_names == table.column_names
    assert Counter(out.kept.column("lang").to_pylist()) == {"el": 97, "en": 5, "fr": 1}


def test_config_fails_fast() -> None:
    with pytest.raises(ValueError, match="must be below"):
        PerplexityConfig(lower_percentile=50, upper_percentile=40)
    with pytest.raises(ValueError, match="per_language"):
        PerplexityConfig(per_language={"el": {"upper_percentile": 0.0}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="order"):
        CharNgramLM.train(["abc"], order=0)


texts_strategy = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.text(st.sampled_from(list("αβγ δε ЖЗ 中文 😀👍🏽 ab\n")), max_size=150),
    st.sampled_from(["", "Ο νόμος ισχύει από τη δημοσίευσή του.", "x" * 30_000]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(texts_strategy, st.sampled_from(["el", "en", "und"])), max_size=12))
@example([("\x00", "el"), ("\x00\x00 ", "el"), ("", "el")])
def test_every_input_row_is_kept_or_rejected(greek_model: CharNgramLM, rows: list[tuple[str, str]]) -> None:
    table = _with_lang([text for text, _ in rows], [lang for _, lang in rows])
    scored = score_batch(table, {"el": greek_model})
    values = scored.column("perplexity").to_pylist()
    # The model does not see NUL (PREPROCESSING), so a text of NULs alone has nothing to score, like an empty one.
    unscored = [lang != "el" or not text.replace("\x00", "") for text, lang in rows]
    assert [v is None for v in values] == unscored
    assert all(v is None or (math.isfinite(v) and v >= 1.0) for v in values)
    finite = np.array([v for v, (_, lang) in zip(values, rows, strict=True) if v is not None and lang == "el"])
    bounds = percentile_bounds({"el": finite}, PerplexityConfig(min_docs_for_percentiles=1, lower_percentile=10))
    out = trim_batch(scored, bounds)
    assert out.kept.num_rows + out.rejects.num_rows == table.num_rows
    ids = out.kept.column("id").to_pylist() + out.rejects.column("record_id").to_pylist()
    assert Counter(ids) == Counter(table.column("id").to_pylist())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts_strategy, min_size=1, max_size=8), st.integers(min_value=1, max_value=6))
def test_compiled_scoring_equals_the_numpy_reference(laws: list[str], texts: list[str], order: int) -> None:
    # The numba loop replaces the numpy passes in every run: same back-off, same additions, same bits. An
    # order-1 model and models whose higher orders are empty take the edge paths of both.
    model = CharNgramLM.train([laws[0][:3_000], *texts[:2]], order=order, language="el")
    ids = model._encode("".join("\x00" * (order - 1) + text for text in texts))
    positions = np.flatnonzero(ids != 0)
    compiled = model._log_probs(ids, positions)
    assert _compiled_kernels() is not None, "numba is a dependency: the compiled scoring must load"
    np.testing.assert_array_equal(compiled, model._log_probs_numpy(ids, positions))


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(0, 40), max_size=300), weights=st.booleans())
def test_compiled_counting_gives_numpys_answers(values: list[int], weights: bool) -> None:
    """The training's counting sort and hashed sums equal np.argsort(kind="stable") and np.unique."""
    from llm_assets.curation import _ngram_kernels

    home = np.array(values, dtype=np.int64)
    assert np.array_equal(_ngram_kernels.stable_order(home, 41), np.argsort(home, kind="stable"))
    keys = (home.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    w = np.arange(1, len(keys) + 1, dtype=np.int64) if weights else np.empty(0, dtype=np.int64)
    distinct, sums = _ngram_kernels.count_keys(keys, w)
    order = np.argsort(distinct)
    expected_keys, inverse = np.unique(keys, return_inverse=True)
    expected = np.bincount(inverse, weights=w if weights else None, minlength=len(expected_keys)).astype(np.int64)
    assert np.array_equal(distinct[order], expected_keys)
    assert np.array_equal(sums[order], expected)


# What makes `_prepare` hard to compile: capital sigma (final or not, by the cased and case-ignorable characters
# around it), the one character that lowercases to two, digits of other scripts, every kind of whitespace, NUL.
_PREPARE_ALPHABET = [
    *"aAΣσςΑΌγ İı'.:- 09٣४𝟙",
    *"\u0345\u0307\u00ad\u2019\t\n\x0b\x1c\x85\u2028\u3000\x00\U0001d400\U00010400",
]
_prepare_texts = st.one_of(st.text(st.sampled_from(_PREPARE_ALPHABET), max_size=14), st.text(max_size=14))


def _assert_same_windows(windows: list[tuple[str, str]], pad: int) -> None:
    compiled = _prepared_windows(windows, pad)
    reference = _prepared_windows_python(windows, pad)
    for got, expected in zip(compiled, reference, strict=True):
        np.testing.assert_array_equal(got, expected)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_prepare_texts, _prepare_texts), max_size=6), st.integers(min_value=0, max_value=5))
@example([("", "ΟΔΟΣ Α΄"), ("A", "Σ\u0345b")], 4)
@example([("ab  ", "  İΣ 1\x00 ")], 2)
def test_compiled_preparation_equals_prepare(windows: list[tuple[str, str]], pad: int) -> None:
    # The scored code points (context tail, NUL padding, prepared window) are what `_prepare` gives, piece by piece.
    assert _compiled_kernels() is not None, "numba is a dependency: the compiled preparation must load"
    _assert_same_windows([(context[-pad:] if pad else "", window) for context, window in windows], pad)


def test_compiled_preparation_agrees_on_every_code_point() -> None:
    # Each code point alone and on both sides of a capital sigma: its lowercase, digit and space flags, and how it
    # bears on final sigma, come from tables read off this Python's str methods; none may be wrong.
    lower, props = _character_tables()
    assert lower.size == props.size == 0x110000
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    _assert_same_windows([("", f"{c}\u03a3 A{c}\u03a3 \u03a3{c}") for c in chars], 0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    windows=st.lists(st.tuples(st.integers(0, 4), _prepare_texts, _prepare_texts), max_size=8),
    order=st.integers(min_value=1, max_value=6),
)
def test_per_document_sums_are_the_per_position_values_added_in_order(
    laws: list[str], windows: list[tuple[int, str, str]], order: int
) -> None:
    """The fused loop's per-document sums are bit for bit np.bincount over the per-position log-probabilities
    (so the same perplexities), windows of one document apart or together, empty ones included."""
    from llm_assets.curation import _ngram_kernels
    from llm_assets.curation.perplexity import _positions

    model = CharNgramLM.train([laws[0][:2_000], *(text for _, _, text in windows[:2])], order=order, language="el")
    pad = order - 1
    owners = np.array(sorted(owner for owner, _, _ in windows), dtype=np.int64)
    prepared, starts, lengths = _prepared_windows([(c[-pad:] if pad else "", t) for _, c, t in windows], pad)
    ids = model._encode_code_points(prepared)
    flat = (*model._flat_tables, model._log_uniform)
    sums = _ngram_kernels.window_log_prob_sums(ids, starts, lengths, owners, 5, model.bits, order, *flat)
    values = model._log_probs(ids, _positions(starts, lengths))
    expected = np.bincount(np.repeat(owners, lengths), weights=values, minlength=5)
    np.testing.assert_array_equal(sums, expected)
    np.testing.assert_array_equal(values, model._log_probs_numpy(ids, _positions(starts, lengths)))


@settings(max_examples=100, deadline=None)
@given(points=st.lists(st.integers(0, 0x10FFFF), max_size=30))
def test_compiled_lookup_gives_numpys_indexing(points: list[int]) -> None:
    """The table look-up is numpy's indexing, or nothing when a code point is beyond the table."""
    from llm_assets.curation import _ngram_kernels

    table = np.arange(0x10000, dtype=np.uint32)[::-1].copy()
    codepoints = np.array(points, dtype=np.uint32)
    ids = _ngram_kernels.table_ids(codepoints, table)
    if all(point < table.size for point in points):
        np.testing.assert_array_equal(ids, table[codepoints].astype(np.uint64))
    else:
        assert ids.size == 0
