"""Reviewers' and citizens' corrections as training data: SFT pairs and DPO preference pairs.

A feedback line (JSONL dropped in `feedback/inbox/`, or posted to the gateway's `POST /v1/feedback`, which
writes it there through `FeedbackInbox`) says: for this `prompt` the model (`model`) answered
`response`, and the right answer is `correction`. It becomes an SFT pair (prompt -> correction) and a
preference pair (chosen = correction, rejected = response), after a PII scrub with the curation detectors
and deduplication against the task's training prompts and against earlier feedback. Every line ends up
kept or rejected with its file, line and reason; rejects carry no text.
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from llm_assets.curation.pii.policy import PiiPolicy, load_policy
from llm_assets.curation.pii.scrub import redact_text, scan_text
from llm_assets.lake.storage import LakeStorage

FEEDBACK_INBOX = "feedback/inbox"
FEEDBACK_SFT_KEY = "feedback/sft/feedback_examples.jsonl"
FEEDBACK_ID_PREFIX = "feedback-"  # SFT rows built from feedback carry ids like feedback-<id>
FEEDBACK_FIELDS = ("model", "prompt", "response", "correction")
OPTIONAL_FIELDS = ("reviewer", "sample_id", "comment")
MAX_FIELD_CHARS = 32_000


class FeedbackInvalid(ValueError):
    """A submission that cannot become a feedback record; the message says which field and why."""


def problem_of(row: Any) -> str | None:
    """Why `row` is not a feedback record (None when it is one)."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    missing = [k for k in FEEDBACK_FIELDS if not isinstance(row.get(k), str) or not row[k].strip()]
    if missing:
        return f"missing or empty {', '.join(missing)} (send {', '.join(FEEDBACK_FIELDS)} as strings)"
    long = [k for k in FEEDBACK_FIELDS if len(row[k]) > MAX_FIELD_CHARS]
    if long:
        return f"{', '.join(long)} longer than {MAX_FIELD_CHARS} characters"
    return None


class FeedbackInbox:
    """The feedback endpoint's writer: one submission, PII-redacted, becomes one inbox object (atomic).

    Raw corrections are not kept anywhere: the text is redacted with the policy before it is stored, and
    `feedback_examples` scrubs again with its own policy when it builds training examples.
    """

    def __init__(
        self,
        storage: LakeStorage,
        *,
        policy: str = "eu-gdpr",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.storage = storage
        self.policy = load_policy(policy)
        self._clock = clock

    def submit(self, row: Mapping[str, Any]) -> dict[str, str]:
        """Stores one submission; returns its id and lake key. Raises FeedbackInvalid on a bad one."""
        problem = problem_of(dict(row) if isinstance(row, Mapping) else row)
        if problem is not None:
            raise FeedbackInvalid(problem)
        now = self._clock()
        feedback_id = uuid.uuid4().hex
        record: dict[str, Any] = {"id": feedback_id, "received": now.isoformat(), "model": row["model"]}
        for key in ("prompt", "response", "correction"):
            record[key] = redact_text(row[key], scan_text(row[key], self.policy), self.policy)
        for key in OPTIONAL_FIELDS:
            if isinstance(row.get(key), str) and row[key].strip():
                value = row[key][:MAX_FIELD_CHARS]
                record[key] = redact_text(value, scan_text(value, self.policy), self.policy)
        record["pii_policy"] = f"{self.policy.name}@{self.policy.version}"
        key = f"{FEEDBACK_INBOX}/{now.date().isoformat()}/{int(time.time() * 1000)}-{feedback_id[:12]}.jsonl"
        self.storage.write_bytes(key, (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
        return {"id": feedback_id, "key": key}


def normalise(text: str) -> str:
    """The form duplicates are judged on: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass
class FeedbackBatch:
    """`lines == len(sft) + len(rejects)`; `preferences` pairs one-to-one with `sft`."""

    sft: list[dict[str, Any]] = field(default_factory=list)
    preferences: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    lines: int = 0
    redactions: int = 0


def build_examples(
    files: Iterable[tuple[str, bytes]], policy: PiiPolicy, training_prompts: dict[str, set[str]]
) -> FeedbackBatch:
    """SFT and preference examples from feedback files `(name, bytes)`; `training_prompts[model]` holds the
    normalised prompts the task already trains on (a correction for one of them is a reject: fix the data)."""
    batch = FeedbackBatch()
    seen: set[str] = set()
    for name, data in files:
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            batch.lines += 1
            row, problem = _parse(raw)
            if row is None:
                batch.rejects.append(_reject(name, number, *problem))
                continue
            clean = {}
            for key in ("prompt", "response", "correction"):
                hits = scan_text(row[key], policy)
                batch.redactions += len(hits)
                clean[key] = redact_text(row[key], hits, policy)
            prompt_key = normalise(clean["prompt"])
            if normalise(clean["correction"]) == normalise(clean["response"]):
                batch.rejects.append(_reject(name, number, "no_change", "the correction equals the response"))
                continue
            if prompt_key in training_prompts.get(row["model"], set()):
                batch.rejects.append(
                    _reject(name, number, "in_training", "prompt already in the task's training set; fix it there")
                )
                continue
            key = hashlib.sha256(f"{row['model']}\n{prompt_key}\n{normalise(clean['correction'])}".encode()).hexdigest()
            if key in seen:
                batch.rejects.append(_reject(name, number, "duplicate", "same prompt and correction given before"))
                continue
            seen.add(key)
            example_id = key[:16]
            source = f"{name}:{number}"
            batch.sft.append(
                {"id": example_id, "task": row["model"], "prompt": clean["prompt"], "completion": clean["correction"],
                 "source": source}
            )  # fmt: skip
            batch.preferences.append(
                {"id": example_id, "task": row["model"], "prompt": clean["prompt"], "chosen": clean["correction"],
                 "rejected": clean["response"], "source": source}
            )  # fmt: skip
    return batch


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, tuple[str, str]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, ("utf8", f"not UTF-8 at byte {e.start}")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return None, ("json", f"not JSON ({e.msg} at column {e.colno})")
    if not isinstance(row, dict):
        return None, ("json", f"a JSON {type(row).__name__}, not an object")
    problem = problem_of(row)
    if problem is not None:
        return None, ("schema", problem)
    return row, ("", "")


def _reject(name: str, number: int, rule: str, reason: str) -> dict[str, Any]:
    return {"file": name, "line": number, "rule": rule, "reason": reason}
