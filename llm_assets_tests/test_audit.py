import itertools
import json
import subprocess
import sys

import pytest

from llm_assets.audit import AUDIT_HEAD_KEY, AUDIT_LOG_KEY, AuditLog, _canonical, _record_hash
from llm_assets.lake import LakeError


@pytest.fixture
def log(storage):
    audit = AuditLog(storage)
    for i in range(10):
        audit.append({"action": "materialize", "asset": f"asset_{i}", "n": i})
    return audit


def lines(storage):
    return storage.read_bytes(AUDIT_LOG_KEY).decode().splitlines()


def rewrite(storage, new_lines):
    storage.write_bytes(AUDIT_LOG_KEY, "".join(line + "\n" for line in new_lines).encode())


def test_appended_records_form_a_chain(storage, log):
    records = log.records()
    assert [r["seq"] for r in records] == list(range(10))
    assert records[0]["prev_hash"] == "0" * 64
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(records))
    assert all(r["ts"].endswith("Z") for r in records)
    assert json.loads(storage.read_bytes(AUDIT_HEAD_KEY)) == {"seq": 9, "hash": records[-1]["hash"]}
    result = log.verify()
    assert (result.ok, result.records, result.first_bad_line) == (True, 10, None)


def test_append_returns_the_stored_record_and_keeps_given_ts(storage):
    record = AuditLog(storage).append({"action": "x", "ts": "2024-01-01T00:00:00Z", "detail": {"é": [1, 2]}})
    assert record == AuditLog(storage).records()[0]
    assert record["ts"] == "2024-01-01T00:00:00Z"


@pytest.mark.parametrize("event", [{"seq": 3}, {"hash": "x"}, {"prev_hash": "x"}, {"bad": {1, 2}}, {"f": float("nan")}])
def test_invalid_events_are_refused(storage, event):
    with pytest.raises(ValueError):
        AuditLog(storage).append(event)
    assert not storage.exists(AUDIT_LOG_KEY)


def test_empty_log_verifies(storage):
    result = AuditLog(storage).verify()
    assert result.ok
    assert result.records == 0


def test_edited_record_is_named(storage, log):
    content = lines(storage)
    record = json.loads(content[6])
    record["asset"] = "something_else"
    content[6] = json.dumps(record)
    rewrite(storage, content)

    result = log.verify()
    assert not result.ok
    assert (result.first_bad_line, result.first_bad_seq, result.records) == (7, 6, 6)
    assert result.reason == "line 7 (seq 6): hash mismatch — record was edited after it was written"


def test_edited_record_with_recomputed_hash_breaks_the_next_link(storage, log):
    records = log.records()
    forged = {k: v for k, v in records[3].items() if k != "hash"}
    forged["asset"] = "forged"
    forged["hash"] = _record_hash(forged)
    content = lines(storage)
    content[3] = _canonical(forged)
    rewrite(storage, content)

    result = log.verify()
    assert not result.ok
    assert result.first_bad_line == 5
    assert "prev_hash" in result.reason


def test_deleted_middle_record_is_found(storage, log):
    content = lines(storage)
    del content[4]
    rewrite(storage, content)
    result = log.verify()
    assert not result.ok
    assert result.first_bad_line == 5
    assert "expected seq 4" in result.reason


def test_swapped_records_are_found(storage, log):
    content = lines(storage)
    content[2], content[3] = content[3], content[2]
    rewrite(storage, content)
    result = log.verify()
    assert not result.ok
    assert result.first_bad_line == 3


def test_removed_last_record_is_caught_by_the_head(storage, log):
    rewrite(storage, lines(storage)[:-1])
    result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == 9
    assert "removed from the end" in result.reason


def test_deleted_log_with_head_left_is_caught(storage, log):
    storage.delete(AUDIT_LOG_KEY)
    assert not log.verify().ok


def test_head_one_record_behind_is_accepted(storage, log):
    """A writer that died between the log line and the head update leaves the head one behind."""
    records = log.records()
    storage.write_bytes(AUDIT_HEAD_KEY, json.dumps({"seq": 8, "hash": records[8]["hash"]}).encode())
    assert log.verify().ok
    log.append({"action": "next"})
    assert json.loads(storage.read_bytes(AUDIT_HEAD_KEY))["seq"] == 10


def test_garbage_line_is_named_and_not_extended(storage, log):
    storage.append_line(AUDIT_LOG_KEY, "this is {not json")
    result = log.verify()
    assert not result.ok
    assert result.first_bad_line == 11
    assert result.reason.startswith("line 11: not valid JSON")
    with pytest.raises(LakeError, match="refusing to extend"):
        log.append({"action": "after damage"})
    with pytest.raises(LakeError, match="line 11"):
        log.records()


def test_log_at_a_custom_key_has_its_own_head(storage):
    audit = AuditLog(storage, key="audit/other.jsonl")
    audit.append({"action": "x"})
    assert audit.head_key == "audit/other.jsonl.head.json"
    assert storage.exists("audit/other.jsonl.head.json")
    assert not storage.exists(AUDIT_HEAD_KEY)
    assert audit.verify().ok


_APPENDER = """
import sys
from llm_assets.audit import AuditLog
from llm_assets.lake import LocalLakeStorage
log = AuditLog(LocalLakeStorage(sys.argv[1]))
for i in range(50):
    log.append({"writer": sys.argv[2], "i": i})
"""


def test_concurrent_appends_from_two_processes_keep_the_chain(storage):
    children = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(storage.root), name]) for name in ("a", "b")]
    assert [c.wait(timeout=60) for c in children] == [0, 0]
    log = AuditLog(storage)
    result = log.verify()
    assert result.ok, result.reason
    assert result.records == 100
    records = log.records()
    for name in ("a", "b"):
        assert [r["i"] for r in records if r["writer"] == name] == list(range(50))
    assert json.loads(storage.read_bytes(AUDIT_HEAD_KEY))["seq"] == 99
