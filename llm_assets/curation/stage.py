"""What every curation stage returns, and the helpers to build reject rows consistently."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from llm_assets.schemas import REJECT_SCHEMA

EXCERPT_CHARS = 200


@dataclass
class StageOutput:
    """One batch through one stage. `kept.num_rows + rejects.num_rows == input rows`, always."""

    kept: pa.Table
    rejects: pa.Table  # REJECT_SCHEMA
    stats: dict[str, Any] = field(default_factory=dict)
    events: pa.Table | None = None  # optional per-hit/per-change log (e.g. PII hits), never raw PII


def reject_rows(
    table: pa.Table,
    indices: Sequence[int],
    *,
    stage: str,
    rules: Sequence[str],
    reasons: Sequence[str],
    scores: Sequence[float | None] | None = None,
    thresholds: Sequence[float | None] | None = None,
    excerpts: Sequence[str | None] | None = None,
) -> pa.Table:
    """Reject rows `indices` of a RECORD_SCHEMA-like table, one rule/reason (and score/threshold) each.

    The excerpt is the start of the record's text unless `excerpts` is given: a stage that must not copy
    the text (PII) passes redacted excerpts or None.
    """
    n = len(indices)
    taken = table.take(pa.array(indices, type=pa.int64())) if n else table.slice(0, 0)
    texts = list(excerpts) if excerpts is not None else taken.column("text").to_pylist()
    columns = {
        "record_id": taken.column("id").to_pylist(),
        "source": taken.column("source").to_pylist(),
        "file": taken.column("file").to_pylist() if "file" in taken.column_names else [None] * n,
        "locator": taken.column("locator").to_pylist() if "locator" in taken.column_names else [None] * n,
        "stage": [stage] * n,
        "rule": list(rules),
        "reason": list(reasons),
        "score": list(scores) if scores is not None else [None] * n,
        "threshold": list(thresholds) if thresholds is not None else [None] * n,
        "excerpt": [t[:EXCERPT_CHARS] if t else t for t in texts],
    }
    return pa.table(columns, schema=REJECT_SCHEMA)


def empty_rejects() -> pa.Table:
    return REJECT_SCHEMA.empty_table()
