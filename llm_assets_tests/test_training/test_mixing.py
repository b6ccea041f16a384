"""Data mixing: shares met within one document, seeded and order-free selection, reports that add up, UDHR pairs."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from llm_assets.training.mixing import (
    MixedText,
    MixtureConfig,
    MixtureError,
    MixtureReport,
    grouped,
    mix,
    parallel_texts,
    udhr_articles,
)

UDHR = Path(__file__).resolve().parents[2] / "llm_assets" / "sample_corpus" / "udhr" / "udhr.jsonl"
GROUPS = ("el", "en", "legal", "parallel")


def corpus(sizes: dict[str, list[int]]) -> list[tuple[str, str]]:
    """Unique texts per group, of the given lengths or of their unique prefix where that is longer."""
    items = []
    for group, lengths in sizes.items():
        for i, length in enumerate(lengths):
            prefix = f"{group}:{i}:"
            items.append((group, (prefix + "x" * length)[: max(length, len(prefix))]))
    return items


def units(item: MixedText | tuple[str, str], unit: str) -> int:
    return 1 if unit == "docs" else len(item[1])


def check_report_adds_up(selected: list[MixedText], report: MixtureReport, unit: str) -> None:
    by_group = Counter(item.group for item in selected)
    assert report.total_docs == len(selected) == sum(g.docs_taken for g in report.groups.values())
    assert report.total_chars == sum(len(item.text) for item in selected)
    assert report.total_units == sum(units(item, unit) for item in selected)
    for group, figures in report.groups.items():
        assert figures.docs_taken == by_group.get(group, 0)
        assert figures.chars_taken == sum(len(i.text) for i in selected if i.group == group)
        assert figures.unique_docs_taken <= min(figures.docs_taken, figures.available_docs)
    if selected:
        assert sum(g.realised_share for g in report.groups.values()) == pytest.approx(1.0)
    json.loads(report.to_json())


sizes_strategy = st.dictionaries(
    st.sampled_from(GROUPS), st.lists(st.integers(8, 60), min_size=1, max_size=40), min_size=1, max_size=4
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=sizes_strategy,
    raw_weights=st.lists(st.integers(0, 5), min_size=4, max_size=4),
    budget=st.integers(1, 3000),
    unit=st.sampled_from(["chars", "docs"]),
    upsample=st.booleans(),
    policy=st.sampled_from(["shrink", "redistribute"]),
    seed=st.integers(0, 3),
)
def test_invariants_hold_for_any_data(
    sizes: dict[str, list[int]],
    raw_weights: list[int],
    budget: int,
    unit: str,
    upsample: bool,
    policy: str,
    seed: int,
) -> None:
    weights = {g: float(w) for g, w in zip(sizes, raw_weights, strict=False)}
    if not any(weights.values()):
        weights[next(iter(weights))] = 1.0
    config = MixtureConfig(
        weights=weights, budget=budget, unit=unit, allow_upsampling=upsample, on_shortfall=policy, seed=seed
    )
    items = corpus(sizes)
    selected, report = mix(iter(items), config)

    # Deterministic for a seed, and independent of input order.
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    assert mix(shuffled, config) == (selected, report)
    # Nothing from a zero-weight group; no group beyond its epoch cap.
    assert not {i.group for i in selected} & {g for g, w in weights.items() if w == 0}
    for figures in report.groups.values():
        assert figures.epochs <= (config.max_epochs if upsample else 1.0) + 1e-9
    check_report_adds_up(selected, report, unit)
    largest = max(units(item, unit) for item in items)
    assert report.total_units <= budget + len(weights) * largest


@settings(max_examples=60, deadline=None)
@given(
    weights=st.fixed_dictionaries({g: st.integers(1, 5) for g in GROUPS}),
    budget=st.integers(2_000, 6_000),
    seed=st.integers(0, 10),
)
def test_shares_are_met_within_one_document_when_data_suffices(weights: dict[str, int], budget: int, seed: int) -> None:
    sizes = {g: [10 + (i * 7) % 41 for i in range(400)] for g in GROUPS}  # ~12k chars per group, docs <= 50
    config = MixtureConfig(weights={g: float(w) for g, w in weights.items()}, budget=budget, seed=seed)
    selected, report = mix(corpus(sizes), config)
    tolerance = len(GROUPS) * 50 / budget
    for group, figures in report.groups.items():
        assert abs(figures.realised_share - figures.target_share) <= tolerance, group
    assert report.budget_met and budget <= report.total_units < budget + len(GROUPS) * 50
    assert all(f.epochs <= 1 for f in report.groups.values())
    check_report_adds_up(selected, report, "chars")


def test_a_short_group_shrinks_the_total_by_default_so_shares_hold() -> None:
    items = corpus({"el": [100] * 50, "en": [100] * 5})  # en has 500 chars, its share asks for 1000
    selected, report = mix(items, MixtureConfig(weights={"el": 0.5, "en": 0.5}, budget=2000))
    assert report.groups["en"].chars_taken == 500 and report.groups["el"].chars_taken == 500
    assert not report.budget_met and report.scale == pytest.approx(0.5)
    check_report_adds_up(selected, report, "chars")


def test_redistribute_fills_the_budget_from_other_groups() -> None:
    items = corpus({"el": [100] * 50, "en": [100] * 5})
    config = MixtureConfig(weights={"el": 0.5, "en": 0.5}, budget=2000, on_shortfall="redistribute")
    _, report = mix(items, config)
    assert report.groups["en"].chars_taken == 500 and report.groups["el"].chars_taken == 1500
    assert report.budget_met and report.groups["en"].realised_share == pytest.approx(0.25)


def test_upsampling_repeats_a_small_group_up_to_max_epochs() -> None:
    items = corpus({"el": [100] * 100, "parallel": [100] * 3})
    config = MixtureConfig(
        weights={"el": 0.6, "parallel": 0.4}, budget=2000, allow_upsampling=True, max_epochs=2, seed=1
    )
    selected, report = mix(items, config)
    parallel = report.groups["parallel"]
    assert parallel.epochs == 2 and parallel.docs_taken == 6 and parallel.unique_docs_taken == 3
    assert {item.repeat for item in selected if item.group == "parallel"} == {0, 1}
    assert parallel.realised_share == pytest.approx(0.4) and report.total_chars == 1500  # shrunk to fit 2 epochs
    check_report_adds_up(selected, report, "chars")


def test_output_is_shuffled_across_groups() -> None:
    selected, _ = mix(corpus({"el": [20] * 50, "en": [20] * 50}), MixtureConfig(weights={"el": 1, "en": 1}, budget=800))
    groups = [item.group for item in selected]
    assert groups != sorted(groups) and groups != sorted(groups, reverse=True)


def test_docs_unit_counts_documents() -> None:
    _, report = mix(
        corpus({"el": [10, 500] * 20, "en": [10] * 40}),
        MixtureConfig(weights={"el": 3, "en": 1}, budget=20, unit="docs"),
    )
    assert report.groups["el"].docs_taken == 15 and report.groups["en"].docs_taken == 5


def test_groups_without_weight_are_skipped_and_reported() -> None:
    selected, report = mix(corpus({"el": [20] * 10, "fr": [20] * 4}), MixtureConfig(weights={"el": 1}, budget=100))
    assert {item.group for item in selected} == {"el"} and report.ignored_groups == {"fr": 4}


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"el": -1.0, "en": 1.0}, "weights must be finite and >= 0; got {'el': -1.0}"),
        ({"el": 0.0, "en": 0.0}, "all weights are 0 (el, en)"),
        ({}, "weights is empty"),
        ({" ": 1.0}, "a group name is empty"),
    ],
)
def test_bad_weights_fail_fast_with_one_line(weights: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        MixtureConfig(weights=weights, budget=10)
    text = error.value.errors()[0]["msg"]
    assert message in text and "\n" not in text


def test_a_weighted_group_absent_from_the_data_is_named_with_the_groups_present() -> None:
    config = MixtureConfig(weights={"el": 0.6, "en": 0.3, "parallel": 0.1}, budget=100)
    with pytest.raises(MixtureError) as error:
        mix(corpus({"el": [20], "en": [20], "legal": [20]}), config)
    assert str(error.value).startswith("no data for weighted group(s) parallel; groups present: el, en, legal")
    assert "\n" not in str(error.value)


def curated(record_id: str, text: str, **columns: Any) -> dict[str, Any]:
    meta = columns.pop("meta", {})
    return {"id": record_id, "text": text, "metadata": json.dumps(meta), **columns}


def test_grouped_reads_a_column_or_a_metadata_field() -> None:
    records = [curated("a", "one", lang="el", domain="legal"), curated("b", "two", lang="en", meta={"topic": "x"})]
    assert list(grouped(records, "lang")) == [("el", "one"), ("en", "two")]
    with pytest.raises(MixtureError, match="record b: no 'domain' column or metadata field"):
        list(grouped(records, "domain"))
    assert list(grouped(records[1:], "topic")) == [("x", "two")]


def udhr_records() -> list[dict[str, Any]]:
    """The bundled UDHR as ingestion leaves it: language in metadata (and language_hint)."""
    records = []
    for line in UDHR.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        text = row.pop("text")
        records.append(curated(f"udhr-{row['language']}", text, language_hint=row["language"], meta=row))
    return records


def test_every_udhr_translation_splits_into_thirty_articles() -> None:
    for record in udhr_records():
        articles = udhr_articles(record["text"])
        assert sorted(articles) == list(range(1, 31)), record["id"]
        assert all(body and "\n\n" not in body for body in articles.values())


def test_parallel_texts_pair_articles_across_languages() -> None:
    texts = parallel_texts(udhr_records(), ("en", "el"))
    assert len(texts) == 30
    assert texts[0].startswith("en: All human beings are born free and equal in dignity and rights.")
    assert "\nel: 'Ολοι οι άνθρωποι γεννιούνται ελεύθεροι" in texts[0]
    assert texts[29].startswith("en: Nothing in this Declaration") and "\nel: Καμιά διάταξη" in texts[29]
    french = parallel_texts(udhr_records(), ("fr", "en"), template="[{code}] {text}")
    assert french[0].startswith("[fr] Tous les êtres humains naissent libres")  # "Article premier"
    items = [("parallel", text) for text in texts] + [("el", "Ελληνικό κείμενο " * 20)] * 3
    selected, _ = mix(items, MixtureConfig(weights={"parallel": 1, "el": 1}, budget=2000))
    assert {item.group for item in selected} == {"parallel", "el"}


def test_parallel_texts_name_missing_languages() -> None:
    with pytest.raises(MixtureError, match=r"no UDHR articles for xx \(languages with records: .*el.*en"):
        parallel_texts(udhr_records(), ("en", "xx"))
    with pytest.raises(MixtureError, match="two or more distinct languages"):
        parallel_texts(udhr_records(), ("en", "en"))
