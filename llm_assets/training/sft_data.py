"""Instruction data for LoRA SFT, built from curated records: prompt/completion and chat `messages` forms.

Each task turns curated records into examples with a locked prompt template (versioned, so a changed
wording is a new data version), keeps the record id for lineage, and reports the figures the data
quality gate needs: example count, duplicate-prompt ratio, structured PII left.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from llm_assets.curation.pii.scrub import rescan_clean

TEMPLATE_VERSION = "v1"
INTENT_TEMPLATE = (
    "Classify the customer message into exactly one of these intents: {intents}.\nMessage: {text}\nIntent:"
)
QA_TEMPLATE = "Answer the civics question briefly.\nQuestion: {question}\nAnswer:"


@dataclass(frozen=True)
class SftExample:
    id: str
    prompt: str
    completion: str
    split: str  # train | test
    source_id: str  # the curated record it was built from
    lang: str = "und"  # the record's language, so eval reports can score per language

    def messages(self) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": self.completion.strip()},
        ]


def _example_id(task: str, source_id: str) -> str:
    return hashlib.sha256(f"{task}\x00{source_id}\x00{TEMPLATE_VERSION}".encode()).hexdigest()[:32]


def choose_intents(records: Iterable[Mapping[str, Any]], count: int) -> list[str]:
    """The `count` most frequent intents (ties by name), so the demo subset is deterministic."""
    frequency = Counter(json.loads(r["metadata"]).get("category") for r in records)
    frequency.pop(None, None)
    ranked = sorted(frequency.items(), key=lambda kv: (-kv[1], kv[0]))
    return sorted(name for name, _ in ranked[:count])


def intent_examples(records: Iterable[Mapping[str, Any]], intents: Sequence[str]) -> list[SftExample]:
    """Banking77-style records (metadata: category, split) → classification examples for `intents`.

    The upstream split decides train/test, so test rows stay held out from every training run.
    """
    allowed = set(intents)
    listing = ", ".join(sorted(allowed))
    examples = []
    for record in records:
        meta = json.loads(record["metadata"])
        category = meta.get("category")
        if category not in allowed:
            continue
        split = "test" if meta.get("split") == "test" else "train"
        examples.append(
            SftExample(
                id=_example_id("intents", record["id"]),
                prompt=INTENT_TEMPLATE.format(intents=listing, text=record["text"].strip()),
                completion=f" {category}",
                split=split,
                source_id=record["id"],
                lang=record.get("lang") or "und",
            )
        )
    return examples


def qa_examples(records: Iterable[Mapping[str, Any]]) -> list[SftExample]:
    """Civics Q&A records (metadata: question, answers) → question answering with the first answer."""
    examples = []
    for record in records:
        meta = json.loads(record["metadata"])
        question, answers = meta.get("question"), meta.get("answers") or []
        if not question or not answers:
            continue
        examples.append(
            SftExample(
                id=_example_id("civics", record["id"]),
                prompt=QA_TEMPLATE.format(question=question.strip()),
                completion=f" {answers[0].strip()}",
                split="test" if record.get("split") == "test" else "train",
                source_id=record["id"],
                lang=record.get("lang") or "und",
            )
        )
    return examples


def feedback_sft_examples(
    rows: Iterable[Mapping[str, Any]], task: str, existing: Sequence[SftExample]
) -> list[SftExample]:
    """Accepted feedback corrections of `task` (feedback_examples rows) as train examples.

    A correction whose prompt is already an example (train or test) is left out: it must not duplicate a
    training row or leak a held-out test prompt into training.
    """
    taken = {" ".join(e.prompt.split()).casefold() for e in existing}
    examples = []
    for row in rows:
        if row.get("task") != task:
            continue
        key = " ".join(str(row["prompt"]).split()).casefold()
        if key in taken:
            continue
        taken.add(key)
        completion = str(row["completion"])
        examples.append(
            SftExample(
                id=f"feedback-{row['id']}",
                prompt=str(row["prompt"]),
                completion=completion if completion[:1].isspace() else f" {completion.strip()}",
                split="train",
                source_id=f"feedback:{row.get('source', row['id'])}",
                lang=str(row.get("lang") or "und"),
            )
        )
    return examples


def quality_figures(examples: Sequence[SftExample]) -> dict[str, Any]:
    """What the blocking data gate decides on: counts, duplicate prompts, structured PII left."""
    prompts = Counter(e.prompt for e in examples)
    duplicates = sum(n - 1 for n in prompts.values() if n > 1)
    pii = rescan_clean([e.prompt + "\n" + e.completion for e in examples])
    return {
        "examples": len(examples),
        "train": sum(e.split == "train" for e in examples),
        "test": sum(e.split == "test" for e in examples),
        "duplicate_prompt_ratio": duplicates / len(examples) if examples else 0.0,
        "pii_left": {k: v for k, v in pii.items() if v},
    }


def to_jsonl(examples: Iterable[SftExample], form: str) -> bytes:
    """`prompt_completion` (TRL's prompt/completion form) or `messages` (chat form), one JSON per line."""
    lines = []
    for example in examples:
        if form == "prompt_completion":
            row: dict[str, Any] = {"prompt": example.prompt, "completion": example.completion}
        elif form == "messages":
            row = {"messages": example.messages()}
        else:
            raise ValueError(f"unknown SFT form {form!r}; use 'prompt_completion' or 'messages'")
        row["id"] = example.id
        row["lang"] = example.lang
        lines.append(json.dumps(row, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def manifest(
    task: str,
    examples: Sequence[SftExample],
    *,
    description: str,
    source_versions: Mapping[str, str],
    code_version: str,
    created_at: str,
) -> dict[str, Any]:
    """The data manifest that travels with the set: version, date, counts, description, lineage."""
    content = "\n".join(json.dumps(asdict(e), sort_keys=True, ensure_ascii=False) for e in examples)
    return {
        "task": task,
        "version": hashlib.sha256(content.encode()).hexdigest(),
        "created_at": created_at,
        "examples": len(examples),
        "splits": dict(Counter(e.split for e in examples)),
        "description": description,
        "template_version": TEMPLATE_VERSION,
        "source_data_versions": dict(source_versions),
        "pipeline_code_version": code_version,
    }
