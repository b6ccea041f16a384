"""SFT data: deterministic task construction, both JSONL forms, the figures of the data gate."""

from __future__ import annotations

import json

import pytest

from llm_assets.training.sft_data import (
    choose_intents,
    feedback_sft_examples,
    intent_examples,
    manifest,
    qa_examples,
    quality_figures,
    to_jsonl,
)


def banking(i: int, category: str, split: str = "train") -> dict[str, object]:
    meta = {"category": category, "split": split}
    return {
        "id": f"b{i}",
        "text": f"message number {i} about {category}",
        "metadata": json.dumps(meta),
        "split": "train",
    }


RECORDS = [
    banking(i, c, "test" if i % 5 == 0 else "train")
    for i, c in enumerate(["card_arrival"] * 6 + ["top_up"] * 4 + ["refund"] * 2)
]


def test_intents_are_chosen_by_frequency_then_name_and_splits_follow_upstream() -> None:
    assert choose_intents(RECORDS, 2) == ["card_arrival", "top_up"]
    assert choose_intents(list(reversed(RECORDS)), 2) == ["card_arrival", "top_up"]
    examples = intent_examples(RECORDS, ["card_arrival", "top_up"])
    assert len(examples) == 10
    assert {e.split for e in examples if e.source_id == "b0"} == {"test"}
    assert all("Intent:" in e.prompt and e.completion.strip() in {"card_arrival", "top_up"} for e in examples)
    assert intent_examples(RECORDS, ["card_arrival", "top_up"]) == examples  # ids and order are stable


def test_qa_examples_and_both_jsonl_forms() -> None:
    meta = {"question": "What is the supreme law of the land?", "answers": ["the Constitution", "Constitution"]}
    examples = qa_examples([{"id": "c1", "text": "", "metadata": json.dumps(meta), "split": "dev"}])
    assert examples[0].completion == " the Constitution" and examples[0].split == "train"
    pc = json.loads(to_jsonl(examples, "prompt_completion"))
    assert pc["prompt"].endswith("Answer:") and pc["completion"] == " the Constitution"
    chat = json.loads(to_jsonl(examples, "messages"))
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
    assert chat["messages"][1]["content"] == "the Constitution"
    with pytest.raises(ValueError, match="unknown SFT form"):
        to_jsonl(examples, "alpaca")


def test_quality_figures_find_duplicates_and_pii() -> None:
    examples = intent_examples([*RECORDS, RECORDS[1]], ["card_arrival"])
    figures = quality_figures(examples)
    assert figures["duplicate_prompt_ratio"] == pytest.approx(1 / 7)
    leaky = banking(99, "card_arrival")
    leaky["text"] = "my card 4111 1111 1111 1111 never arrived, mail me at jo@example.org"
    assert set(quality_figures(intent_examples([leaky], ["card_arrival"]))["pii_left"]) >= {"credit_card", "email"}


def test_manifest_version_depends_on_content_only() -> None:
    examples = intent_examples(RECORDS, ["card_arrival"])
    one = manifest("t", examples, description="d", source_versions={"s": "1"}, code_version="c", created_at="x")
    two = manifest("t", examples, description="d", source_versions={"s": "1"}, code_version="c", created_at="y")
    assert one["version"] == two["version"] and one["examples"] == len(examples)
    assert (
        manifest("t", examples[1:], description="d", source_versions={}, code_version="c", created_at="x")["version"]
        != one["version"]
    )


def test_feedback_corrections_join_the_train_split_but_never_a_test_prompt() -> None:
    examples = intent_examples(RECORDS, ["card_arrival", "top_up"])
    test_prompt = next(e.prompt for e in examples if e.split == "test")
    rows = [
        {"id": "f1", "task": "banking77_intents", "prompt": "Where is my new card?", "completion": "card_arrival",
         "source": "feedback/inbox/a.jsonl:1"},
        {"id": "f2", "task": "banking77_intents", "prompt": f"  {test_prompt} ", "completion": "top_up"},
        {"id": "f3", "task": "uscis_civics", "prompt": "Who wrote it?", "completion": "Jefferson"},
        {"id": "f4", "task": "banking77_intents", "prompt": "where is my NEW card?", "completion": "card_arrival"},
    ]  # fmt: skip
    added = feedback_sft_examples(rows, "banking77_intents", examples)
    assert [(e.id, e.split, e.completion) for e in added] == [("feedback-f1", "train", " card_arrival")]
    assert added[0].source_id == "feedback:feedback/inbox/a.jsonl:1"
