"""DPO: preference data validation, intent stand-in pairs, and a tiny LoRA run that must raise preference accuracy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llm_assets.training.base_model import TinyLlamaConfig, bootstrap_tiny_llama
from llm_assets.training.dpo import (
    INTENT_PAIR_SOURCE,
    DpoConfig,
    PreferenceError,
    PreferencePair,
    intent_preference_pairs,
    preference_accuracy,
    preference_improved,
    read_preference_pairs,
    resolve_precision,
    run_dpo,
)
from llm_assets.training.sft_data import SftExample, intent_examples
from llm_assets.training.tokenizer import TokenizerConfig, save_pretrained, train_bpe_tokenizer

INTENTS = ["card_arrival", "cash_withdrawal", "exchange_rate", "top_up"]
MESSAGES = {
    "card_arrival": ["where is my new card", "my card has not arrived yet"],
    "exchange_rate": ["what exchange rate do you use", "is the currency rate fair"],
    "cash_withdrawal": ["the machine kept my money", "I could not take out money"],
    "top_up": ["how do I add money", "my top up failed"],
}


def banking_records() -> list[dict[str, Any]]:
    records = []
    for intent, texts in MESSAGES.items():
        for number in range(6):
            split = "test" if number == 5 else "train"
            records.append(
                {
                    "id": f"{intent}-{number}",
                    "text": f"{texts[number % 2]} please, ref {number}",
                    "metadata": json.dumps({"category": intent, "split": split}),
                }
            )
    return records


def line(**fields: Any) -> str:
    return json.dumps(fields)


GOOD = {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"}


def test_reads_pairs_with_defaults_for_id_and_source() -> None:
    data = "\n".join([line(**GOOD), "", line(**GOOD, id="p2", source="thumbs")]).encode()
    first, second = read_preference_pairs(data, "feedback/a.jsonl")
    assert first.source == "feedback/a.jsonl" and len(first.id) == 32
    assert second == PreferencePair(id="p2", prompt="Q: 2+2?", chosen=" 4", rejected=" 5", source="thumbs")
    assert read_preference_pairs(b"", "empty.jsonl") == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "x", "chosen": "a",', "feedback.jsonl line 2: not valid JSON"),
        ('["prompt", "chosen"]', "feedback.jsonl line 2: a JSON object is needed, got list"),
        ('{"prompt": "x", "chosen": "a"}', "feedback.jsonl line 2: missing or empty rejected"),
        ('{"prompt": "x", "chosen": 3, "rejected": " "}', "feedback.jsonl line 2: missing or empty chosen, rejected"),
        ('{"prompt": "x", "chosen": "same ", "rejected": "same"}', "line 2: chosen and rejected are the same"),
        ('{"prompt": "x", "chosen": "a", "rejected": "b", "id": "p1"}', "line 2: id 'p1' repeats line 1"),
    ],
)
def test_malformed_lines_get_one_line_errors_naming_file_and_line(content: str, message: str) -> None:
    data = (line(**GOOD, id="p1") + "\n" + content + "\n").encode()
    with pytest.raises(PreferenceError) as error:
        read_preference_pairs(data, "feedback.jsonl")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_non_utf8_is_named() -> None:
    with pytest.raises(PreferenceError, match=r"^x\.jsonl: not UTF-8"):
        read_preference_pairs(b"\xff\xfe{}", "x.jsonl")


def test_intent_pairs_are_deterministic_train_only_and_always_wrong() -> None:
    examples = intent_examples(banking_records(), INTENTS)
    pairs = intent_preference_pairs(examples, seed=3)
    assert pairs == intent_preference_pairs(list(reversed(examples)), seed=3)[::-1]
    assert len(pairs) == sum(e.split == "train" for e in examples) == 20
    assert {p.source for p in pairs} == {INTENT_PAIR_SOURCE}
    for pair in pairs:
        assert pair.chosen.strip() in INTENTS and pair.rejected.strip() in INTENTS
        assert pair.chosen != pair.rejected and pair.rejected.startswith(" ")
    rejected_by_seed = {seed: [p.rejected for p in intent_preference_pairs(examples, seed=seed)] for seed in range(3)}
    assert len({tuple(r) for r in rejected_by_seed.values()}) > 1
    assert len({p.rejected for p in pairs}) > 1


def test_intent_pairs_need_two_labels() -> None:
    one = [SftExample(id="e", prompt="p", completion=" top_up", split="train", source_id="r")]
    with pytest.raises(PreferenceError, match="two or more intents"):
        intent_preference_pairs(one)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 0}, "greater than 0"),
        ({"lora_dropout": 0.1}, "no effect while disable_dropout"),
        ({"target_modules": ["q_proj", "lm_head"]}, "must not include lm_head"),
        ({"precision": "fp16"}, "'auto', 'bf16' or 'fp32'"),
    ],
)
def test_config_fails_fast(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DpoConfig(**kwargs)
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"


def test_auto_precision_is_fp32_on_cpus() -> None:
    """Precision "auto" means bf16 only on a CUDA GPU: a CPU with AMX/AVX-512 BF16 would otherwise train the same run to
    different numbers (and gate results) than one without."""
    import torch

    from llm_assets.training.config import TrainingConfig
    from llm_assets.training.trainer import use_bf16

    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert resolve_precision("auto") == ("bf16" if gpu_bf16 else "fp32")
    assert use_bf16(TrainingConfig(precision="auto")) is gpu_bf16
    assert use_bf16(TrainingConfig(precision="bf16")) is True


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """A model this small trains fastest on one thread, and stays fast when other processes share the CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[PreferencePair]]:
    root = tmp_path_factory.mktemp("dpo")
    pairs = intent_preference_pairs(intent_examples(banking_records(), INTENTS))
    texts = [p.prompt + p.chosen for p in pairs] * 5
    save_pretrained(train_bpe_tokenizer(texts, TokenizerConfig(vocab_size=400)), root / "tokenizer")
    small = TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    bootstrap_tiny_llama(root / "tokenizer", small, root / "base")
    return root / "base", pairs


FAST = DpoConfig(max_steps=40, learning_rate=1e-2, batch_size=8, precision="fp32")


def test_dpo_trains_an_adapter_that_prefers_the_chosen_answers(
    tiny_model: tuple[Path, list[PreferencePair]], tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, pairs = tiny_model
    messages: list[str] = []
    metrics = run_dpo(base, pairs, tmp_path / "adapter", FAST, log=messages.append)

    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    assert metrics["steps"] == 40 and len(metrics["loss_history"]) == 40
    assert metrics["preference_accuracy_after"] >= metrics["preference_accuracy_before"] + 0.2
    assert metrics["logprob_margin_after"] > metrics["logprob_margin_before"]
    assert metrics["rewards/margins"] > 0 and 0 <= metrics["rewards/accuracies"] <= 1
    assert 0 < metrics["trainable_share"] < 0.2 and metrics["started_from"] == "base"
    assert any(m.startswith("step 40/40 loss") for m in messages)
    json.dumps(metrics)

    # The saved adapter alone reproduces the trained policy.
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(tmp_path / "adapter"))
    accuracy, _ = preference_accuracy(reloaded, AutoTokenizer.from_pretrained(str(base)), pairs, max_length=512)
    assert accuracy == pytest.approx(metrics["preference_accuracy_after"])


def test_dpo_continues_an_sft_adapter_against_a_frozen_copy_of_it(
    tiny_model: tuple[Path, list[PreferencePair]], tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, pairs = tiny_model
    sft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    sft.save_pretrained(str(tmp_path / "sft"))

    metrics = run_dpo(base, pairs, tmp_path / "dpo", FAST, adapter_dir=tmp_path / "sft")

    saved = json.loads((tmp_path / "dpo" / "adapter_config.json").read_text())
    assert saved["r"] == 4 and sorted(saved["target_modules"]) == ["q_proj", "v_proj"]
    assert not (tmp_path / "dpo" / "ref").exists()  # only the trained adapter, not TRL's reference copy
    assert metrics["started_from"] == "adapter" and metrics["steps"] == 40
    assert metrics["logprob_margin_after"] > metrics["logprob_margin_before"]


def test_no_pairs_is_an_error(tiny_model: tuple[Path, list[PreferencePair]], tmp_path: Path) -> None:
    with pytest.raises(PreferenceError, match="no preference pairs"):
        run_dpo(tiny_model[0], [], tmp_path / "x", FAST)


@pytest.mark.parametrize(
    ("before", "after", "margin_before", "margin_after", "min_gain", "passed"),
    [
        (0.50, 0.75, 1.0, 0.5, 0.0, True),  # more pairs won
        (0.96, 0.96, 2.6, 29.0, 0.0, True),  # as many won, a wider margin
        (1.00, 1.00, 2.6, 29.0, 0.0, True),  # all won already
        (0.90, 1.00, 2.6, 1.0, 0.5, True),  # all won now
        (0.96, 0.96, 2.6, 2.6, 0.0, False),  # nothing moved
        (0.96, 0.90, 2.6, 29.0, 0.0, False),  # fewer won, whatever the margin
        (0.50, 0.60, 1.0, 3.0, 0.2, False),  # short of the required gain
        (0.50, 0.75, 1.0, 3.0, 0.25, True),  # the required gain, with a wider margin
        (0.50, 0.75, 3.0, 1.0, 0.25, False),  # the required gain, but not more of it, and a narrower margin
    ],
)
def test_preference_gate(
    before: float, after: float, margin_before: float, margin_after: float, min_gain: float, passed: bool
) -> None:
    result = {
        "preference_accuracy_before": before,
        "preference_accuracy_after": after,
        "logprob_margin_before": margin_before,
        "logprob_margin_after": margin_after,
    }
    assert preference_improved(result, min_gain) is passed
