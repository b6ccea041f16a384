"""Business-task evaluation of a model (plus an optional adapter) on a task's held-out prompt/completion rows.

Greedy completions from the model itself, scored per language: label accuracy for classification tasks,
ROUGE-1/L, BLEU and chrF for generative ones. The report carries what is needed to reproduce it: model and
adapter folder versions, decoding settings, the rows' hash and the library versions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from llm_assets.evaluation.lm_eval_tasks import folder_version
from llm_assets.evaluation.metrics import bleu_chrf, exact_match_accuracy, per_language, rouge

TaskKind = Literal["label", "text"]


class TaskEvalError(ValueError):
    """A model or data set that cannot be evaluated; the message names the file and the fix."""


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def rows_version(rows: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 over the rows' ids, prompts and references, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row.get("id"), row["prompt"], row["completion"]], ensure_ascii=False).encode())
    return digest.hexdigest()


def load_model(model_dir: Path, adapter_dir: Path | None = None) -> tuple[Any, Any]:
    """A local model folder (and PEFT adapter) in fp32 for deterministic greedy decoding; nothing is downloaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise TaskEvalError(f"{model_dir}: no config.json; stage the model folder before evaluating")
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        raise TaskEvalError(f"{adapter_dir}: no adapter_config.json; save the adapter with save_pretrained")
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir or model_dir), local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer


def score(rows: Sequence[Mapping[str, Any]], predictions: Sequence[str], kind: TaskKind) -> dict[str, Any]:
    """Per-language and overall scores of `predictions` against the rows' completions."""
    if len(rows) != len(predictions):
        raise TaskEvalError(f"{len(predictions)} predictions for {len(rows)} rows")
    scored = [
        {"lang": row.get("lang") or "und", "prediction": p, "answer": row["completion"]}
        for row, p in zip(rows, predictions, strict=True)
    ]
    references = [row["completion"] for row in rows]
    if kind == "label":
        # ROUGE-1 too: the registry compares every task with the deployed model on it.
        overall: dict[str, float] = {
            "exact_match": exact_match_accuracy(predictions, references),
            "rouge1": rouge(predictions, references)["rouge1"],
        }
        by_lang = per_language(
            scored, lambda p, r: {"exact_match": exact_match_accuracy(p, r), "rouge1": rouge(p, r)["rouge1"]}
        )
    else:
        overall = {**rouge(predictions, references), **bleu_chrf(predictions, references)}
        by_lang = per_language(scored, lambda p, r: {**rouge(p, r), **bleu_chrf(p, r)})
    return {"overall": overall, "per_language": by_lang, "n": len(rows)}


def evaluate_task(
    model_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    kind: TaskKind,
    *,
    adapter_dir: Path | None = None,
    max_new_tokens: int = 32,
    samples: int = 5,
) -> dict[str, Any]:
    """Greedy completions for every row, scored; with a manifest and a few samples for people to read."""
    from llm_assets.training.trainer import greedy_generate

    if not rows:
        raise TaskEvalError("no rows to evaluate; the task's test split is empty")
    for number, row in enumerate(rows):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
            raise TaskEvalError(f"row {number} (id={row.get('id', '?')}): needs string prompt and completion")
    model, tokenizer = load_model(model_dir, adapter_dir)
    outputs = greedy_generate(model, tokenizer, [row["prompt"] for row in rows], max_new_tokens)
    predictions = [o["text"] for o in outputs]
    result = score(rows, predictions, kind)
    result["predictions"] = predictions
    result["stopped_share"] = sum(bool(o["stopped"]) for o in outputs) / len(outputs)
    result["samples"] = [
        {"id": row.get("id"), "prompt": row["prompt"][-200:], "reference": row["completion"], "prediction": p}
        for row, p in list(zip(rows, predictions, strict=True))[:samples]
    ]
    result["manifest"] = {
        "kind": kind,
        "decoding": {"strategy": "greedy", "max_new_tokens": max_new_tokens, "dtype": "float32"},
        "rows_version": rows_version(rows),
        "model_version": folder_version(model_dir),
        "adapter_version": folder_version(adapter_dir) if adapter_dir is not None else None,
        "backend": "transformers",
        "backend_version": {
            name: _package_version(name) for name in ("transformers", "torch", "peft", "rouge-score", "sacrebleu")
        },
    }
    return result
