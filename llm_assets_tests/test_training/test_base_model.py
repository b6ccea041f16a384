"""Base models: a deterministic tiny Llama bootstrap, offline validation of staged models, lake round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_assets.lake import LocalLakeStorage
from llm_assets.training.base_model import (
    ModelError,
    TinyLlamaConfig,
    bootstrap_tiny_llama,
    download_prefix,
    upload_folder,
    validate_model_dir,
)
from llm_assets.training.tokenizer import TokenizerConfig, save_pretrained, train_bpe_tokenizer

TEXTS = ["Η επιτροπή ενέκρινε τον προϋπολογισμό.", "The committee approved the budget."] * 100


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    save_pretrained(train_bpe_tokenizer(TEXTS, TokenizerConfig(vocab_size=400)), folder)
    return folder


def test_bootstrap_is_deterministic_and_loads(tokenizer_dir: Path, tmp_path: Path) -> None:
    first = bootstrap_tiny_llama(tokenizer_dir, TinyLlamaConfig(), tmp_path / "a")
    second = bootstrap_tiny_llama(tokenizer_dir, TinyLlamaConfig(), tmp_path / "b")
    assert first.version == second.version
    assert first.architecture == "LlamaForCausalLM" and first.parameters > 10_000
    assert bootstrap_tiny_llama(tokenizer_dir, TinyLlamaConfig(seed=1), tmp_path / "c").version != first.version

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "a"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "a"))
    inputs = tokenizer("The committee", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_lake_round_trip_keeps_hashes(tokenizer_dir: Path, tmp_path: Path) -> None:
    card = bootstrap_tiny_llama(tokenizer_dir, TinyLlamaConfig(), tmp_path / "model")
    storage = LocalLakeStorage(tmp_path / "lake")
    upload_folder(storage, tmp_path / "model", "models/staged/tiny")
    restored = validate_model_dir(download_prefix(storage, "models/staged/tiny", tmp_path / "restored"))
    assert restored.files == card.files


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("config.json", "config.json is missing"),
        ("tokenizer.json", "no tokenizer"),
        ("model.safetensors", "no *.safetensors"),
        ("corrupt", "unreadable safetensors"),
    ],
)
def test_broken_models_get_one_line_errors(tokenizer_dir: Path, tmp_path: Path, damage: str, message: str) -> None:
    folder = tmp_path / "model"
    bootstrap_tiny_llama(tokenizer_dir, TinyLlamaConfig(), folder)
    if damage == "corrupt":
        (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    else:
        (folder / damage).unlink()
    with pytest.raises(ModelError) as error:
        validate_model_dir(folder)
    assert message in str(error.value) and str(folder) in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_lake_prefix_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="nothing stored there"):
        download_prefix(LocalLakeStorage(tmp_path / "lake"), "models/none", tmp_path / "x")
