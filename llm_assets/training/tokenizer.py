"""A byte-level BPE tokenizer trained on the curated corpus, and its fertility per language.

Tokenizers built for Latin scripts split other scripts into many pieces; fertility (tokens per word)
per language shows whether ours serves Greek as well as English before anything is trained on it.
The result is saved as a transformers `PreTrainedTokenizerFast` folder, loadable offline.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>")
_WORD = re.compile(r"\w+", re.UNICODE)


class TokenizerConfig(BaseModel):
    vocab_size: int = Field(default=8_000, ge=300, le=256_000)
    min_frequency: int = Field(default=2, ge=1)
    max_training_chars: int = Field(default=50_000_000, gt=0, description="Cap on text fed to the trainer.")


def train_bpe_tokenizer(texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    """Byte-level BPE (every byte is in the alphabet, so no input is ever unknown)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_capped(texts, config.max_training_chars), trainer=trainer)
    return tokenizer


def _capped(texts: Iterable[str], limit: int) -> Iterator[str]:
    used = 0
    for text in texts:
        if used >= limit:
            return
        piece = text[: limit - used]
        used += len(piece)
        yield piece


def fertility(tokenizer: Tokenizer, texts_by_language: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Tokens per word (words: Unicode \\w+ runs) for each language; lower is better, ~1.2-1.6 is typical."""
    result = {}
    for language, texts in sorted(texts_by_language.items()):
        words = sum(len(_WORD.findall(text)) for text in texts)
        if not words:
            continue
        tokens = sum(len(encoding.ids) for encoding in tokenizer.encode_batch(list(texts)))
        result[language] = tokens / words
    return result


def save_pretrained(tokenizer: Tokenizer, folder: Path) -> str:
    """Writes a transformers tokenizer folder; returns the sha256 of its tokenizer.json (its identity)."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        unk_token="<|unk|>",
    )
    fast.save_pretrained(str(folder))
    return hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
