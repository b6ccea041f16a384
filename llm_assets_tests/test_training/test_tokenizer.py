"""The bootstrap tokenizer: trains offline, round-trips every script, reports fertility, loads in transformers."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from llm_assets.training.tokenizer import TokenizerConfig, fertility, save_pretrained, train_bpe_tokenizer

GREEK = "Η επιτροπή ενέκρινε τον ετήσιο προϋπολογισμό μετά από μακρά συζήτηση για τις συγκοινωνίες."
ENGLISH = "The committee approved the annual budget after a long debate about public transport."
BULGARIAN = "Комисията одобри годишния бюджет след дълъг дебат за обществения транспорт."


def test_round_trip_and_fertility(tmp_path: Path) -> None:
    texts = [GREEK, ENGLISH] * 200
    tokenizer = train_bpe_tokenizer(texts, TokenizerConfig(vocab_size=500))
    for text in (GREEK, ENGLISH, BULGARIAN, "emoji 🙂 and symbols ∑ ≠ ∞"):
        assert tokenizer.decode(tokenizer.encode(text).ids) == text  # byte-level: nothing is unknown
    per_language = fertility(tokenizer, {"el": [GREEK], "en": [ENGLISH], "bg": [BULGARIAN]})
    assert per_language["el"] < 2.0 and per_language["en"] < 2.0
    assert per_language["bg"] > per_language["el"]  # an unseen script costs more tokens per word

    sha256 = save_pretrained(tokenizer, tmp_path)
    assert len(sha256) == 64
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded.eos_token == "<|eos|>" and loaded.pad_token == "<|pad|>"
    assert loaded.decode(loaded(GREEK)["input_ids"]) == GREEK


def test_training_text_is_capped() -> None:
    small = train_bpe_tokenizer([ENGLISH * 100] * 100, TokenizerConfig(vocab_size=400, max_training_chars=2_000))
    large = train_bpe_tokenizer([ENGLISH * 100] * 100, TokenizerConfig(vocab_size=400))
    assert small.get_vocab_size() <= large.get_vocab_size()
