"""Production samples: the gateway's sampled request/response pairs, one day at a time, scrubbed again and
committed as a Parquet dataset partition; and the 30-day retention that deletes them.

The gateway already redacts with the curation detectors before it writes a line; this stage scans again
(so a policy change or a gateway bug cannot leak into monitoring), keeps `rows_in == kept + rejected` with
a reject row (no text) for every line it cannot use, and never stores a raw value anywhere. Retention
deletes whole days — the raw sample files and the committed partition — and says what it deleted.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pyarrow as pa

from llm_assets.audit import AuditLog
from llm_assets.curation.pii.policy import PiiPolicy
from llm_assets.curation.pii.scrub import redact_text, scan_text
from llm_assets.lake.storage import LakeStorage
from llm_assets.schemas import REJECT_SCHEMA

RAW_SAMPLES_PREFIX = "serving/samples"  # written by the gateway: <model>/<YYYY-MM-DD>/<ms>-<id>.jsonl
PRODUCTION_SAMPLES_DATASET = "production_samples"
PRODUCTION_SAMPLES_REJECTS = "production_samples_rejects"
STAGE = "production_samples"
REQUIRED_TEXT_FIELDS = ("ts", "model", "prompt", "response")

PRODUCTION_SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # <raw object key>:<line number>
        pa.field("ts", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("route", pa.string()),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("pii_policy", pa.string(), nullable=False),  # the policy of this stage's re-scan
        pa.field("gateway_pii_policy", pa.string()),
        pa.field("residual_pii", pa.int64(), nullable=False),  # hits the re-scan still found (then redacted)
        pa.field("expires", pa.string(), nullable=False),
        pa.field("e2e_s", pa.float64()),
        pa.field("output_tokens", pa.int64()),
    ]
)


@dataclass
class DaySamples:
    """One day's samples: `lines == kept.num_rows + rejects.num_rows`, always."""

    day: date
    kept: pa.Table
    rejects: pa.Table
    objects: list[str] = field(default_factory=list)
    lines: int = 0
    residual_by_kind: Counter[str] = field(default_factory=Counter)

    def stats(self) -> dict[str, Any]:
        per_model = Counter(self.kept.column("model").to_pylist()) if self.kept.num_rows else Counter()
        return {
            "day": self.day.isoformat(),
            "objects": len(self.objects),
            "lines": self.lines,
            "kept": self.kept.num_rows,
            "rejected": self.rejects.num_rows,
            "per_model": dict(sorted(per_model.items())),
            "residual_pii_by_kind": dict(sorted(self.residual_by_kind.items())),
        }


def raw_sample_keys(storage: LakeStorage, day: date) -> list[str]:
    """The gateway's sample files of `day`, over every model, in key order (deterministic)."""
    wanted = day.isoformat()
    keys = []
    for info in storage.list_objects(f"{RAW_SAMPLES_PREFIX}/"):
        parts = info.key[len(RAW_SAMPLES_PREFIX) + 1 :].split("/")
        if len(parts) == 3 and parts[1] == wanted and parts[2].endswith(".jsonl"):
            keys.append(info.key)
    return sorted(keys)


def raw_sample_days(storage: LakeStorage) -> list[date]:
    """Every day that has gateway sample files (for retention and backfills)."""
    days = set()
    for info in storage.list_objects(f"{RAW_SAMPLES_PREFIX}/"):
        parts = info.key[len(RAW_SAMPLES_PREFIX) + 1 :].split("/")
        if len(parts) == 3:
            day = _parse_day(parts[1])
            if day is not None:
                days.add(day)
    return sorted(days)


def _parse_day(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def collect_day(
    storage: LakeStorage, day: date, policy: PiiPolicy, *, retention_days: int = 30, keys: Iterable[str] | None = None
) -> DaySamples:
    """Read, validate and re-scrub the gateway's samples of `day`; unusable lines become reject rows."""
    keys = list(keys) if keys is not None else raw_sample_keys(storage, day)
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    residual: Counter[str] = Counter()
    lines = 0
    expires = (day + timedelta(days=retention_days)).isoformat()
    policy_label = f"{policy.name}@{policy.version}"
    for key in keys:
        model = key[len(RAW_SAMPLES_PREFIX) + 1 :].split("/")[0]
        for number, raw in enumerate(storage.read_bytes(key).split(b"\n"), start=1):
            if not raw.strip():
                continue
            lines += 1
            locator = f"{key}:{number}"
            record, problem = _parse_line(raw)
            if record is None:
                rejects.append(_reject(locator, model, key, number, *problem))
                continue
            hits_total = 0
            texts = {}
            for name in ("prompt", "response"):
                hits = scan_text(record[name], policy)
                hits_total += len(hits)
                residual.update(hit.kind for hit in hits)
                texts[name] = redact_text(record[name], hits, policy)
            rows.append(
                {
                    "id": locator,
                    "ts": record["ts"],
                    "model": record["model"],
                    "route": record.get("route") if isinstance(record.get("route"), str) else None,
                    "prompt": texts["prompt"],
                    "response": texts["response"],
                    "pii_policy": policy_label,
                    "gateway_pii_policy": record.get("pii_policy")
                    if isinstance(record.get("pii_policy"), str)
                    else None,
                    "residual_pii": hits_total,
                    "expires": expires,
                    "e2e_s": _number(record.get("e2e_s"), float),
                    "output_tokens": _number(record.get("output_tokens"), int),
                }
            )
    kept = pa.Table.from_pylist(rows, schema=PRODUCTION_SAMPLE_SCHEMA)
    reject_table = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
    return DaySamples(day, kept, reject_table, keys, lines, residual)


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, tuple[str, str]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, ("utf8", f"not UTF-8 at byte {e.start}")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return None, ("json", f"not JSON ({e.msg} at column {e.colno})")
    if not isinstance(record, dict):
        return None, ("json", f"a JSON {type(record).__name__}, not an object")
    for name in REQUIRED_TEXT_FIELDS:
        if not isinstance(record.get(name), str):
            return None, ("schema", f"field {name!r} missing or not a string")
    return record, ("", "")


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return kind(value)


def _reject(locator: str, model: str, key: str, number: int, rule: str, reason: str) -> dict[str, Any]:
    # No excerpt: an unparsed line may hold unredacted text.
    return {
        "record_id": locator,
        "source": model,
        "file": key,
        "locator": f"line {number}",
        "stage": STAGE,
        "rule": rule,
        "reason": reason,
        "score": None,
        "threshold": None,
        "excerpt": None,
    }


def expired_days(days: Iterable[date], today: date, retention_days: int) -> list[date]:
    """Days whose data is older than `retention_days` on `today` (a day of exactly that age is kept)."""
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1, got {retention_days}")
    cutoff = today - timedelta(days=retention_days)
    return sorted(d for d in days if d < cutoff)


def delete_day(storage: LakeStorage, day: date, dataset_prefixes: Iterable[str]) -> list[str]:
    """Delete one day: the gateway's raw sample files and every committed partition under `dataset_prefixes`
    (manifest first, so a half-finished deletion never leaves a partition that looks complete)."""
    deleted = []
    for key in raw_sample_keys(storage, day):
        storage.delete(key)
        deleted.append(key)
    for prefix in dataset_prefixes:
        objects = sorted(
            (info.key for info in storage.list_objects(f"{prefix}/{day.isoformat()}/")), key=_manifest_first
        )
        for key in objects:
            storage.delete(key)
            deleted.append(key)
    return deleted


def _manifest_first(key: str) -> tuple[int, str]:
    return (0 if key.endswith("_manifest.json") else 1, key)


SAMPLE_DATASET_PREFIXES = (f"datasets/{PRODUCTION_SAMPLES_DATASET}", f"datasets/{PRODUCTION_SAMPLES_REJECTS}")


def enforce_retention(
    storage: LakeStorage, today: date, *, retention_days: int = 30, who: str = "sample_retention"
) -> list[dict[str, Any]]:
    """Delete every sample day older than `retention_days` and append one audit record per deleted day
    (the day, the object count and the keys' digest — never content). Returns the audit records."""
    days = set(raw_sample_days(storage))
    for prefix in SAMPLE_DATASET_PREFIXES:
        for info in storage.list_objects(f"{prefix}/"):
            day = _parse_day(info.key[len(prefix) + 1 :].split("/")[0])
            if day is not None:
                days.add(day)
    audit = AuditLog(storage)
    records = []
    for day in expired_days(days, today, retention_days):
        deleted = delete_day(storage, day, SAMPLE_DATASET_PREFIXES)
        digest = hashlib.sha256("\n".join(deleted).encode("utf-8")).hexdigest()
        records.append(
            audit.append(
                {
                    "event": "retention_delete",
                    "who": who,
                    "what": "production samples",
                    "day": day.isoformat(),
                    "retention_days": retention_days,
                    "as_of": today.isoformat(),
                    "objects_deleted": len(deleted),
                    "keys_sha256": digest,
                }
            )
        )
    return records
