from __future__ import annotations

import dataclasses
import json
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_assets.evaluation.extractive import (
    BLANK,
    N_CHOICES,
    EvalItem,
    decontamination_text,
    dedupe,
    from_jsonl,
    generate_items,
    pilot_batch,
    split_sentences,
    stratum_counts,
    to_jsonl,
    validate_item,
)

CORPUS = Path(__file__).parents[2] / "llm_assets" / "sample_corpus"


@cache
def _records() -> tuple[dict[str, Any], ...]:
    """Real English and Greek text: the first 8,000 characters of each Greek law and the en/el UDHR."""
    rows = [
        {"id": path.stem, "text": path.read_text(encoding="utf-8")[:8000], "lang": "el", "domain": "legal"}
        for path in sorted((CORPUS / "greek_laws").glob("*.txt"))
    ]
    for line in (CORPUS / "udhr" / "udhr.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["language"] in ("en", "el"):
            rows.append(
                {"id": f"udhr-{row['language']}", "text": row["text"], "lang": row["language"], "domain": "rights"}
            )
    return tuple(rows)


@cache
def _items() -> tuple[EvalItem, ...]:
    return tuple(generate_items(_records(), per_record=6, seed=7))


def _texts() -> dict[str, str]:
    return {r["id"]: r["text"] for r in _records()}


def test_every_item_is_grounded_in_english_and_greek() -> None:
    items, texts = _items(), _texts()
    assert {i.lang for i in items} == {"en", "el"}
    assert {i.kind for i in items} == {"cloze", "multiple_choice"}
    for item in items:
        text = texts[item.source_id]
        assert text[item.span[0] : item.span[1]] == item.answer
        assert item.question.replace(BLANK, item.answer, 1) == text[item.sentence_span[0] : item.sentence_span[1]]
        assert validate_item(item, text) == []
        assert (item.generator, item.template_version, item.seed) == ("extractive", "v1", 7)


def test_distractors_are_valid() -> None:
    texts = _texts()
    choice_items = [i for i in _items() if i.kind == "multiple_choice"]
    assert choice_items
    for item in choice_items:
        assert len(item.choices) == N_CHOICES and item.answer_index is not None
        assert item.choices[item.answer_index] == item.answer
        assert len({c.casefold() for c in item.choices}) == N_CHOICES
        sentence = texts[item.source_id][item.sentence_span[0] : item.sentence_span[1]].casefold()
        distractors = [c for k, c in enumerate(item.choices) if k != item.answer_index]
        assert all(d.casefold() not in sentence for d in distractors)
        assert all(d.isdigit() == item.answer.isdigit() for d in distractors)
        source_words = {w.casefold() for r in _records() if r["lang"] == item.lang for w in r["text"].split()}
        assert all(any(d.casefold() in w for w in source_words) for d in distractors)


def test_cloze_items_have_no_choices() -> None:
    cloze = [i for i in _items() if i.kind == "cloze"]
    assert cloze and all(i.choices == [] and i.answer_index is None and BLANK in i.question for i in cloze)


def test_generation_is_deterministic_for_a_seed() -> None:
    again = generate_items(_records(), per_record=6, seed=7)
    assert again == list(_items())
    other = generate_items(_records(), per_record=6, seed=8)
    assert [i.id for i in other] != [i.id for i in _items()]


def test_unknown_kind_fails_fast() -> None:
    with pytest.raises(ValueError, match="unknown item kinds"):
        generate_items(_records(), kinds=["essay"])


@pytest.mark.parametrize(
    ("text", "lang", "sentences"),
    [
        ("Τι ισχύει; Ο ν. 4270/2014 ισχύει. Ναι· όχι.", "el", ["Τι ισχύει;", "Ο ν. 4270/2014 ισχύει.", "Ναι·", "όχι."]),
        ("See p. 3 here. Then stop; go on!\nNew line", "en", ["See p. 3 here.", "Then stop; go on!", "New line"]),
        ("Άρθρο 5\nΌργανα διοίκησης", "el", ["Άρθρο 5", "Όργανα διοίκησης"]),
    ],
)
def test_split_sentences(text: str, lang: str, sentences: list[str]) -> None:
    assert [text[a:b] for a, b in split_sentences(text, lang)] == sentences


def test_validate_item_names_broken_grounding_and_pii() -> None:
    item = next(i for i in _items() if i.kind == "multiple_choice")
    text = _texts()[item.source_id]
    shifted = dataclasses.replace(item, span=(item.span[0] + 1, item.span[1] + 1))
    assert any("is not source_text" in p for p in validate_item(shifted, text))
    assert any("PII" in p for p in validate_item(dataclasses.replace(item, answer="jane@example.com"), text))
    assert validate_item(item, text) == []
    wrong = dataclasses.replace(item, answer_index=((item.answer_index or 0) + 1) % N_CHOICES)
    assert validate_item(wrong, text)


def test_dedupe_drops_repeated_questions() -> None:
    items = list(_items())
    assert dedupe(items + items) == dedupe(items)
    assert len(dedupe(items)) <= len(items)


def test_pilot_batch_is_stratified_and_proportional() -> None:
    items = list(_items())
    strata = stratum_counts(items)
    size = len(items) // 2
    pilot = pilot_batch(items, size, seed=3)
    assert len(pilot) == size and len({i.id for i in pilot}) == size
    counts = stratum_counts(pilot)
    assert set(counts) == set(strata)
    for key, n in strata.items():
        assert abs(counts[key] - size * n / len(items)) <= 1.5
    assert pilot_batch(items, size, seed=3) == pilot


def test_pilot_batch_covers_every_stratum_when_it_can() -> None:
    items = list(_items())
    strata = stratum_counts(items)
    pilot = pilot_batch(items, len(strata), seed=1)
    assert Counter(stratum_counts(pilot).values()) == Counter({1: len(strata)})
    assert len(pilot_batch(items, 1, seed=1)) == 1
    assert pilot_batch(items, len(items) + 5) == sorted(items, key=lambda i: i.id)


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    assert to_jsonl(_items(), path) == len(_items())
    assert from_jsonl(path) == list(_items())
    path.write_text('{"id": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        from_jsonl(path)


def test_decontamination_text_restores_the_sentence() -> None:
    item = next(i for i in _items() if i.kind == "cloze")
    text = _texts()[item.source_id]
    assert decontamination_text(item) == text[item.sentence_span[0] : item.sentence_span[1]]


_VOCABULARY = (
    "apple river Athens 1948 νόμος Βουλή άρθρο declaration freedom 2020 συμβούλιο κυβερνοασφάλεια "
    "ministry Ελλάδα justice 42 υπουργός protection education εκπαίδευση"
)
_WORDS = st.sampled_from(_VOCABULARY.split(" "))
_SENTENCES = st.lists(_WORDS, min_size=6, max_size=14).map(lambda ws: " ".join(ws) + ".")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=st.lists(st.lists(_SENTENCES, min_size=1, max_size=4).map(" ".join), min_size=1, max_size=5),
    lang=st.sampled_from(["en", "el"]),
    seed=st.integers(0, 1000),
)
def test_generated_items_are_always_grounded_and_valid(docs: list[str], lang: str, seed: int) -> None:
    records = [{"id": f"d{k}", "text": t, "lang": lang, "domain": "x"} for k, t in enumerate(docs)]
    texts = {r["id"]: r["text"] for r in records}
    for item in generate_items(records, per_record=3, seed=seed):
        assert validate_item(item, texts[item.source_id]) == []
        assert texts[item.source_id][item.span[0] : item.span[1]] == item.answer


@settings(max_examples=60, deadline=None)
@given(
    strata=st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(["en", "el"]), st.integers(0, 2)), min_size=1),
    size=st.integers(1, 60),
    seed=st.integers(0, 100),
)
def test_pilot_allocation_properties(strata: list[tuple[str, str, int]], size: int, seed: int) -> None:
    base = _items()[0]
    levels = ("easy", "medium", "hard")
    items = [
        dataclasses.replace(base, id=f"i{k}", domain=d, lang=lang, difficulty=levels[level])
        for k, (d, lang, level) in enumerate(strata)
    ]
    pilot = pilot_batch(items, size, seed=seed)
    assert len(pilot) == min(size, len(items)) and len({i.id for i in pilot}) == len(pilot)
    if size >= len(stratum_counts(items)):
        assert set(stratum_counts(pilot)) == set(stratum_counts(items))
