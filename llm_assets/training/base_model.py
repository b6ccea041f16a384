"""Base models: bootstrap a tiny Llama from config for the embedded default, or validate a staged one.

Nothing is downloaded: a production base model (an open-weight Llama/Mistral/Qwen checkpoint) is staged
by the operator in a local folder or in the lake, validated here (config, tokenizer, safetensors) and
recorded by the SHA-256 of every file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from llm_assets.lake import LakeStorage

REQUIRED_CONFIG = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class ModelError(Exception):
    """A base model that cannot be used; the message names the folder and what to do."""


class TinyLlamaConfig(BaseModel):
    """A Llama-architecture model small enough to train on a CPU in minutes."""

    hidden_size: int = Field(default=64, ge=16)
    intermediate_size: int = Field(default=172, ge=16)
    num_hidden_layers: int = Field(default=2, ge=1)
    # 2 heads of 32 dimensions: vLLM's CPU attention serves head sizes 32, 64, 80, ... (not 16).
    num_attention_heads: int = Field(default=2, ge=1)
    num_key_value_heads: int = Field(default=1, ge=1)
    max_position_embeddings: int = Field(default=512, ge=32)
    seed: int = 0


@dataclass(frozen=True)
class ModelCard:
    """What identifies a base model: its files' hashes, architecture and size."""

    files: dict[str, str]  # relative path -> sha256
    architecture: str
    parameters: int
    vocab_size: int

    @property
    def version(self) -> str:
        text = "\n".join(f"{name}\t{digest}" for name, digest in sorted(self.files.items()))
        return hashlib.sha256(text.encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_model_dir(folder: Path) -> ModelCard:
    """Checks a Hugging Face model folder offline: config, a tokenizer, safetensors weights that load."""
    from safetensors import safe_open

    if not folder.is_dir():
        raise ModelError(f"{folder}: not a folder; stage the model's files (config.json, tokenizer, *.safetensors)")
    if not (folder / REQUIRED_CONFIG).is_file():
        raise ModelError(f"{folder}: {REQUIRED_CONFIG} is missing; copy the model's config.json next to its weights")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"{folder}: no tokenizer ({' or '.join(TOKENIZER_FILES)}); stage the model's tokenizer files")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        extra = " (found .bin weights: convert them to safetensors)" if any(folder.glob("*.bin")) else ""
        raise ModelError(f"{folder}: no *.safetensors weights{extra}")
    try:
        config = json.loads((folder / REQUIRED_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder / REQUIRED_CONFIG}: not valid JSON ({exc}); restage the file") from exc
    parameters = 0
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as tensors:
                for name in tensors.keys():  # noqa: SIM118 - safe_open has no __iter__
                    shape = tensors.get_slice(name).get_shape()
                    count = 1
                    for dim in shape:
                        count *= dim
                    parameters += count
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ModelError(f"{path}: unreadable safetensors ({exc}); restage the file") from exc
    files = {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    return ModelCard(files, str(architectures[0]), parameters, int(config.get("vocab_size", 0)))


def bootstrap_tiny_llama(tokenizer_dir: Path, config: TinyLlamaConfig, out_dir: Path) -> ModelCard:
    """A randomly initialised Llama sized to the tokenizer, saved with safetensors beside the tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(model_config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return validate_model_dir(out_dir)


def upload_folder(storage: LakeStorage, folder: Path, prefix: str) -> list[str]:
    """Copies every file of `folder` under `prefix` in the lake (atomic per file); returns the keys."""
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        storage.write_bytes(key, path.read_bytes())
        keys.append(key)
    return keys


def download_prefix(storage: LakeStorage, prefix: str, dest: Path) -> Path:
    """Copies the lake objects under `prefix` into `dest` (local path or S3 lake alike)."""
    objects = storage.list_objects(prefix.rstrip("/") + "/")
    if not objects:
        raise ModelError(f"{storage.uri(prefix)}: nothing stored there; stage the model's files under that prefix")
    for info in objects:
        target = dest / info.key[len(prefix.rstrip("/")) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(info.key))
    return dest
