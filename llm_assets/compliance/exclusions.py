"""The erasure exclusion list: document ids that must never be ingested again.

`compliance/exclusions.jsonl` in the lake holds one JSON object per line (doc_id, reason, requested_by, at).
Ingestion honours it: a record whose id is listed becomes a `raw_corpus_rejects` row with rule
`erasure_request` (no excerpt), so input units still reconcile as kept + rejected. Curation and everything
after it only read what ingestion kept, so excluding there is enough for the whole graph once it is rebuilt.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from llm_assets.lake import LakeKeyNotFound, LakeStorage

EXCLUSIONS_KEY = "compliance/exclusions.jsonl"
ERASURE_RULE = "erasure_request"


def _parse(content: bytes | None) -> list[dict[str, Any]]:
    if not content:
        return []
    entries = []
    for number, line in enumerate(content.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{EXCLUSIONS_KEY} line {number}: not valid JSON ({exc.msg}); fix the line") from exc
        if not isinstance(entry, dict) or not isinstance(entry.get("doc_id"), str):
            raise ValueError(f"{EXCLUSIONS_KEY} line {number}: not an object with a doc_id; fix the line")
        entries.append(entry)
    return entries


def read_exclusions(storage: LakeStorage) -> list[dict[str, Any]]:
    """Every exclusion, oldest first."""
    try:
        return _parse(storage.read_bytes(EXCLUSIONS_KEY))
    except LakeKeyNotFound:
        return []


def excluded_ids(storage: LakeStorage) -> set[str]:
    return {entry["doc_id"] for entry in read_exclusions(storage)}


def add_exclusion(
    storage: LakeStorage, doc_id: str, reason: str, by: str, *, at: str | None = None
) -> tuple[dict[str, Any], bool]:
    """Add `doc_id` to the list in one read-modify-write; returns (its entry, whether it was added now).

    An id already listed keeps its first entry, so repeating a request changes nothing.
    """
    for value, what in ((doc_id, "doc_id"), (reason, "reason"), (by, "requested_by")):
        if not value or not value.strip():
            raise ValueError(f"exclusion: {what} must not be empty")
    entry = {
        "doc_id": doc_id,
        "reason": reason,
        "requested_by": by,
        "at": at or datetime.now(UTC).isoformat(timespec="seconds"),
    }
    outcome: list[tuple[dict[str, Any], bool]] = []

    def update(current: bytes | None) -> bytes | None:
        existing = next((e for e in _parse(current) if e["doc_id"] == doc_id), None)
        if existing is not None:
            outcome[:] = [(existing, False)]
            return None
        outcome[:] = [(entry, True)]
        line = json.dumps(entry, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n"
        body = current or b""
        if body and not body.endswith(b"\n"):
            body += b"\n"
        return body + line

    storage.update_bytes(EXCLUSIONS_KEY, update)
    return outcome[0]


def withhold_excluded(
    records: Iterable[Mapping[str, Any]], excluded: set[str], *, stage: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records to keep, REJECT_SCHEMA rows for the excluded ones); the rejects carry no excerpt of the text."""
    kept: list[dict[str, Any]] = []
    withheld: list[dict[str, Any]] = []
    for record in records:
        if record["id"] not in excluded:
            kept.append(dict(record))
            continue
        withheld.append(
            {
                "record_id": record["id"],
                "source": record["source"],
                "file": record.get("file"),
                "locator": record.get("locator"),
                "stage": stage,
                "rule": ERASURE_RULE,
                "reason": f"{record.get('file')} {record.get('locator')}: withheld by an erasure request "
                f"({EXCLUSIONS_KEY}); remove it from the landing folder as well",
                "score": None,
                "threshold": None,
                "excerpt": None,
            }
        )
    return kept, withheld
