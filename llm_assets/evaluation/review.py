"""Human review of the pilot eval set: one label per (reviewer, item), four criteria, stored in the lake.

Labels live at `evaluation/qa/reviews/<version16>/<reviewer>.jsonl`, one JSON object per line, so the pilot
asset, the review sensor and `eval_qa_validated` all read the same files. A later label for an item replaces
the reviewer's earlier one; acceptance is computed over the latest label per (reviewer, item).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from llm_assets.lake import LakeKeyNotFound, LakeStorage

PILOT_CURRENT = "evaluation/qa/pilot/current.json"
REVIEW_PREFIX = "evaluation/qa/reviews"
CRITERIA = ("correct", "grounded", "clear", "safe")
REVIEWER_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MAX_COMMENT_CHARS = 2000
NO_PILOT = "no pilot eval set; run `llm-assets demo` first"


class ReviewError(ValueError):
    """A review request or stored label the platform must refuse; the message is one line saying what to fix."""


@dataclass(frozen=True)
class Label:
    """One reviewer's judgement of one item on every criterion."""

    item_id: str
    reviewer: str
    correct: bool
    grounded: bool
    clear: bool
    safe: bool
    comment: str
    labelled_at: str

    @property
    def accepted(self) -> bool:
        return all(getattr(self, name) for name in CRITERIA)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class Acceptance:
    """Acceptance per criterion over the latest label per (reviewer, item)."""

    labels: int
    items_reviewed: int
    reviewers: list[str]
    accepted: dict[str, int]
    rates: dict[str, float]
    all_criteria: int
    all_criteria_rate: float
    accepted_items: list[str] = field(default_factory=list)

    def passes(self, min_acceptance: float) -> bool:
        """True only with labels and every criterion at or above `min_acceptance`."""
        return self.labels > 0 and all(rate >= min_acceptance for rate in self.rates.values())

    def failing(self, min_acceptance: float) -> list[str]:
        return [name for name, rate in self.rates.items() if rate < min_acceptance]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def check_reviewer(reviewer: object) -> str:
    if not isinstance(reviewer, str) or not REVIEWER_PATTERN.match(reviewer):
        raise ReviewError(
            f"invalid reviewer name {_one_line(reviewer)[:80]!r}: use 1-64 lowercase letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return reviewer


def labels_prefix(version: str) -> str:
    return f"{REVIEW_PREFIX}/{version[:16]}/"


def load_pilot(storage: LakeStorage) -> tuple[str, list[dict[str, Any]]]:
    """The current pilot version and its items, in file order; ReviewError when no pilot set was built."""
    try:
        current = json.loads(storage.read_bytes(PILOT_CURRENT))
        version, prefix = current["version"], current["prefix"]
        raw = storage.read_bytes(f"{prefix}/items.jsonl")
    except LakeKeyNotFound as exc:
        raise ReviewError(NO_PILOT) from exc
    except (ValueError, KeyError, TypeError) as exc:
        where = storage.uri(PILOT_CURRENT)
        raise ReviewError(f"{where}: not a valid pointer ({_one_line(exc)}); rebuild eval_qa_pilot") from exc
    items = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except ValueError as exc:
                raise ReviewError(f"{prefix}/items.jsonl line {number}: not valid JSON ({_one_line(exc)})") from exc
    return version, items


def parse_labels(key: str, data: bytes) -> list[Label]:
    """The labels of one reviewer file; a line that is not a complete label is an error naming key and line."""
    labels = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            label = Label(**{name: row[name] for name in Label.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as exc:
            raise ReviewError(f"{key} line {number}: not a complete review label ({_one_line(exc)})") from exc
        if not all(isinstance(getattr(label, name), bool) for name in CRITERIA):
            raise ReviewError(f"{key} line {number}: criteria {', '.join(CRITERIA)} must be true or false")
        labels.append(label)
    return labels


def read_labels(storage: LakeStorage, version: str) -> list[Label]:
    """Every stored label for the pilot `version`, all reviewers."""
    return [
        label
        for info in storage.list_objects(labels_prefix(version))
        if info.key.endswith(".jsonl")
        for label in parse_labels(info.key, storage.read_bytes(info.key))
    ]


def latest_labels(labels: Iterable[Label]) -> list[Label]:
    """The newest label per (reviewer, item); later entries win ties, so file order breaks equal timestamps."""
    latest: dict[tuple[str, str], Label] = {}
    for label in labels:
        key = (label.reviewer, label.item_id)
        if key not in latest or label.labelled_at >= latest[key].labelled_at:
            latest[key] = label
    return [latest[key] for key in sorted(latest)]


def acceptance(labels: Iterable[Label]) -> Acceptance:
    """Per-criterion acceptance rates and counts. An item is accepted when every reviewer's latest label for it
    accepts it on all four criteria."""
    latest = latest_labels(labels)
    total = len(latest)
    accepted = {name: sum(bool(getattr(label, name)) for label in latest) for name in CRITERIA}
    all_criteria = sum(label.accepted for label in latest)
    by_item: dict[str, bool] = {}
    for label in latest:
        by_item[label.item_id] = by_item.get(label.item_id, True) and label.accepted
    return Acceptance(
        labels=total,
        items_reviewed=len(by_item),
        reviewers=sorted({label.reviewer for label in latest}),
        accepted=accepted,
        rates={name: count / total if total else 0.0 for name, count in accepted.items()},
        all_criteria=all_criteria,
        all_criteria_rate=all_criteria / total if total else 0.0,
        accepted_items=sorted(item_id for item_id, ok in by_item.items() if ok),
    )


class ReviewStore:
    """The review queue of the current pilot set for any number of reviewers, backed by the lake."""

    def __init__(self, storage: LakeStorage) -> None:
        self.storage = storage
        self.version, self.items = load_pilot(storage)
        self._by_id = {item["id"]: item for item in self.items}

    def _key(self, reviewer: str) -> str:
        return f"{labels_prefix(self.version)}{check_reviewer(reviewer)}.jsonl"

    def labels(self, reviewer: str | None = None) -> list[Label]:
        """The latest labels of one reviewer, or of every reviewer when `reviewer` is None."""
        if reviewer is None:
            return latest_labels(read_labels(self.storage, self.version))
        key = self._key(reviewer)
        try:
            data = self.storage.read_bytes(key)
        except LakeKeyNotFound:
            return []
        return latest_labels(parse_labels(key, data))

    def next_item(self, reviewer: str, after: str | None = None) -> dict[str, Any] | None:
        """The first item this reviewer has not labelled, starting after item `after` (a skip) and wrapping
        around; None when every item is labelled."""
        done = {label.item_id for label in self.labels(reviewer)}
        start = 0
        if after is not None:
            ids = [item["id"] for item in self.items]
            start = ids.index(after) + 1 if after in self._by_id else 0
        for item in self.items[start:] + self.items[:start]:
            if item["id"] not in done:
                return item
        return None

    def record(
        self,
        reviewer: str,
        item_id: str,
        correct: bool,
        grounded: bool,
        clear: bool,
        safe: bool,
        comment: str = "",
    ) -> Label:
        """Validate and store one label, replacing this reviewer's earlier label for the item."""
        key = self._key(reviewer)
        if not isinstance(item_id, str) or item_id not in self._by_id:
            raise ReviewError(
                f"unknown item id {_one_line(item_id)[:80]!r} in pilot {self.version[:16]}; fetch the next item"
            )
        values = {"correct": correct, "grounded": grounded, "clear": clear, "safe": safe}
        not_bool = [name for name, value in values.items() if not isinstance(value, bool)]
        if not_bool:
            raise ReviewError(f"{', '.join(not_bool)}: must be true or false")
        if not isinstance(comment, str):
            raise ReviewError("comment: must be text")
        if len(comment) > MAX_COMMENT_CHARS:
            raise ReviewError(f"comment: {len(comment)} characters; keep it under {MAX_COMMENT_CHARS}")
        label = Label(
            item_id=item_id,
            reviewer=reviewer,
            correct=correct,
            grounded=grounded,
            clear=clear,
            safe=safe,
            comment=comment.strip(),
            labelled_at=datetime.now(UTC).isoformat(timespec="microseconds"),
        )

        def replace(current: bytes | None) -> bytes:
            kept = [old for old in parse_labels(key, current or b"") if old.item_id != item_id]
            return "".join(f"{old.to_json()}\n" for old in [*kept, label]).encode("utf-8")

        self.storage.update_bytes(key, replace)
        return label

    def progress(self, reviewer: str) -> dict[str, Any]:
        done = {label.item_id for label in self.labels(reviewer)} & set(self._by_id)
        return {
            "reviewer": reviewer,
            "version": self.version,
            "labelled": len(done),
            "total": len(self.items),
            "remaining": len(self.items) - len(done),
        }


def summary(version: str, result: Acceptance, min_acceptance: float) -> dict[str, Any]:
    """The JSON summary `eval_qa_validated` writes and `llm-assets review status` prints."""
    return {
        "version": version,
        "status": status_line(result, min_acceptance),
        "min_acceptance": min_acceptance,
        "passed": result.passes(min_acceptance),
        **{k: v for k, v in asdict(result).items() if k != "accepted_items"},
        "accepted_item_count": len(result.accepted_items),
    }


def status_line(result: Acceptance, min_acceptance: float) -> str:
    if not result.labels:
        return "awaiting review: no labels"
    failing = result.failing(min_acceptance)
    counted = f"{result.labels} label{'' if result.labels == 1 else 's'}"
    if failing:
        return f"below {min_acceptance:.0%} on {', '.join(failing)} ({counted})"
    return f"accepted on every criterion ({counted})"


def rates_table(rates: Mapping[str, float], accepted: Mapping[str, int], total: int) -> list[str]:
    return [f"{name:<9} {rates[name]:6.1%}  ({accepted[name]}/{total})" for name in CRITERIA]
