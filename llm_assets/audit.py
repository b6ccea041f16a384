"""Append-only, hash-chained audit log kept in the lake as JSON lines.

Each record carries `seq` (0-based, contiguous), `prev_hash` (the previous record's hash, 64 zeros for the
first) and `hash`: the sha256 of the record's canonical JSON without `hash`. Editing, deleting, inserting
or reordering a record breaks the chain. A head file holds the newest `{"seq", "hash"}`, so removing
records from the end is caught too. The head is written after the log line and never moves backwards; it
may lag the log by one record if a writer died in between, which `verify` accepts.

Appends are serialized through `LakeStorage.append_next_line`, so concurrent writers (processes, or
machines on S3) keep one valid chain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from llm_assets.lake.storage import LakeError, LakeKeyNotFound, LakeStorage

AUDIT_LOG_KEY = "audit/audit_log.jsonl"
AUDIT_HEAD_KEY = "audit/audit_head.json"

_GENESIS_HASH = "0" * 64
_CHAIN_FIELDS = ("seq", "prev_hash", "hash")


@dataclass(frozen=True)
class AuditVerification:
    """Outcome of `AuditLog.verify`. `records` counts the records verified before the first problem."""

    ok: bool
    records: int
    first_bad_line: int | None
    first_bad_seq: int | None
    reason: str


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()


def _parse_record(raw: str) -> tuple[dict[str, Any] | None, str]:
    """The record, or None and what is wrong with the line."""
    try:
        record = json.loads(raw)
    except ValueError as e:
        return None, f"not valid JSON ({' '.join(str(e).split())})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return None, "missing or invalid 'seq'"
    for name in ("prev_hash", "hash"):
        if not isinstance(record.get(name), str):
            return None, f"missing or invalid {name!r}"
    return record, ""


def _parse_head(raw: bytes) -> tuple[int, str] | None:
    try:
        head = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(head, dict):
        return None
    seq, digest = head.get("seq"), head.get("hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(digest, str):
        return None
    return seq, digest


class AuditLog:
    """The lake's audit trail: who did what to which asset, in an order nobody can quietly rewrite."""

    def __init__(self, storage: LakeStorage, key: str = AUDIT_LOG_KEY) -> None:
        self._storage = storage
        self.key = key
        # A log at a custom key gets its own head next to it, so two logs never share one.
        self.head_key = AUDIT_HEAD_KEY if key == AUDIT_LOG_KEY else f"{key}.head.json"

    def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Add one event (any JSON object) and return the stored record with its chain fields."""
        if not isinstance(event, dict):
            raise TypeError(f"audit event must be a dict, got {type(event).__name__}")
        clash = sorted(set(event) & set(_CHAIN_FIELDS))
        if clash:
            raise ValueError(f"audit event may not set {clash}; AuditLog assigns them")
        body = dict(event)
        body.setdefault("ts", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        try:
            _canonical(body)
        except (TypeError, ValueError) as e:
            raise ValueError(f"audit event is not JSON-serializable ({e}); pass plain JSON values") from e

        def make_line(last_line: str | None) -> str:
            seq, prev_hash = self._next_position(last_line)
            record = {**body, "seq": seq, "prev_hash": prev_hash}
            record["hash"] = _record_hash(record)
            return _canonical(record)

        record: dict[str, Any] = json.loads(self._storage.append_next_line(self.key, make_line))
        self._advance_head(record["seq"], record["hash"])
        return record

    def _next_position(self, last_line: str | None) -> tuple[int, str]:
        if last_line is None or not last_line.strip():
            return 0, _GENESIS_HASH
        record, problem = _parse_record(last_line)
        if record is None:
            raise LakeError(
                f"{self._storage.uri(self.key)}: the last line is {problem}; refusing to extend a damaged "
                "chain — run verify and restore the log from a backup"
            )
        return record["seq"] + 1, record["hash"]

    def _advance_head(self, seq: int, digest: str) -> None:
        new = _canonical({"seq": seq, "hash": digest}).encode("utf-8")

        def update(current: bytes | None) -> bytes | None:
            if current is not None:
                head = _parse_head(current)
                if head is None:
                    raise LakeError(
                        f"{self._storage.uri(self.head_key)}: not a valid audit head; run verify and restore "
                        "the audit folder from a backup"
                    )
                if head[0] >= seq:  # a concurrent writer already moved it past us
                    return None
            return new

        self._storage.update_bytes(self.head_key, update)

    def _lines(self) -> list[str]:
        try:
            data = self._storage.read_bytes(self.key)
        except LakeKeyNotFound:
            return []
        lines = data.decode("utf-8", errors="replace").split("\n")
        if lines[-1] == "":
            lines.pop()
        return lines

    def records(self) -> list[dict[str, Any]]:
        """Every record in order; raises LakeError on a line that is not a record (see `verify`)."""
        records = []
        for n, raw in enumerate(self._lines(), start=1):
            record, problem = _parse_record(raw)
            if record is None:
                raise LakeError(f"{self._storage.uri(self.key)} line {n}: {problem}; run verify")
            records.append(record)
        return records

    def verify(self) -> AuditVerification:
        """Check every record's hash, the seq and prev_hash links, and the head against the log's end."""
        prev_hash = _GENESIS_HASH
        hashes: list[str] = []

        def bad(line: int | None, seq: int | None, reason: str) -> AuditVerification:
            return AuditVerification(False, len(hashes), line, seq, reason)

        for n, raw in enumerate(self._lines(), start=1):
            expected = n - 1
            record, problem = _parse_record(raw)
            if record is None:
                return bad(n, None, f"line {n}: {problem} — the log was damaged or edited")
            seq = record["seq"]
            where = f"line {n} (seq {seq})"
            if _record_hash(record) != record["hash"]:
                return bad(n, seq, f"{where}: hash mismatch — record was edited after it was written")
            if seq > expected:
                return bad(n, seq, f"{where}: expected seq {expected} — records before it were deleted or moved")
            if seq < expected:
                return bad(n, seq, f"{where}: expected seq {expected} — records were reordered or duplicated")
            if record["prev_hash"] != prev_hash:
                return bad(
                    n,
                    seq,
                    f"{where}: prev_hash does not match line {n - 1} — a record was replaced or inserted",
                )
            prev_hash = record["hash"]
            hashes.append(prev_hash)

        try:
            head_raw: bytes | None = self._storage.read_bytes(self.head_key)
        except LakeKeyNotFound:
            head_raw = None
        count = len(hashes)
        if head_raw is None:
            if count:
                return bad(None, None, f"head {self.head_key} is missing while the log has {count} records")
            return AuditVerification(True, 0, None, None, "audit log is empty")
        head = _parse_head(head_raw)
        if head is None:
            return bad(None, None, f"head {self.head_key} is not a valid {{seq, hash}} object — it was edited")
        head_seq, head_hash = head
        if head_seq >= count:
            return bad(
                count + 1,
                count,
                f"head says the log reaches seq {head_seq} but it has {count} records — records were removed "
                "from the end",
            )
        if hashes[head_seq] != head_hash:
            return bad(
                head_seq + 1,
                head_seq,
                f"line {head_seq + 1} (seq {head_seq}): hash differs from the head — the log was rewritten",
            )
        return AuditVerification(True, count, None, None, f"{count} records, chain intact to the head (seq {head_seq})")
