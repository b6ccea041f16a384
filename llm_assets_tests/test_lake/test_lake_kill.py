"""A writer killed with SIGKILL mid-write must leave the lake as it was: old object, old manifest."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from llm_assets.lake import LocalLakeStorage, read_dataset, read_manifest, write_table

BLOB_SIZE = 16 * 1024 * 1024

_BLOB_WRITER = f"""
import sys
from llm_assets.lake import LocalLakeStorage
storage = LocalLakeStorage(sys.argv[1])
for i in range(100_000):
    storage.write_bytes("blobs/big.bin", bytes([97 + i % 20]) * {BLOB_SIZE})
"""

_SHARD_WRITER = """
import sys
import pyarrow as pa
from llm_assets.lake import LocalLakeStorage, ShardWriter
storage = LocalLakeStorage(sys.argv[1])
schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
with ShardWriter(storage, "docs", "p1", schema, max_rows_per_shard=5_000, write_id="killed") as writer:
    start = 0
    while True:  # never commits: only SIGKILL ends it
        ids = range(start, start + 5_000)
        writer.write(pa.table({"id": ids, "text": ["x" * 200] * 5_000}, schema=schema))
        start += 5_000
"""


def _run_until(script, root, ready, timeout=60.0):
    """Start `script`, wait until `ready()` holds, then SIGKILL it mid-flight."""
    child = subprocess.Popen([sys.executable, "-c", script, str(root)])
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert child.poll() is None, "writer exited before it could be killed"
            assert time.monotonic() < deadline, "writer never started writing"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL


def _temp_files(folder: Path):
    return list(folder.glob(".tmp-*")) if folder.is_dir() else []


def test_killed_write_bytes_leaves_old_or_new_never_partial(tmp_path):
    storage = LocalLakeStorage(tmp_path)
    storage.write_bytes("blobs/big.bin", b"o" * BLOB_SIZE)

    _run_until(_BLOB_WRITER, tmp_path, lambda: bool(_temp_files(tmp_path / "blobs")))

    data = storage.read_bytes("blobs/big.bin")
    assert len(data) == BLOB_SIZE
    assert data == data[:1] * BLOB_SIZE
    assert [o.key for o in storage.list_objects("")] == ["blobs/big.bin"]


def test_killed_shard_writer_leaves_previous_manifest_and_rows(tmp_path):
    storage = LocalLakeStorage(tmp_path)
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    old_table = pa.table({"id": range(2_500), "text": [f"old {i}" for i in range(2_500)]}, schema=schema)
    old = write_table(storage, "docs", "p1", old_table, max_rows_per_shard=1_000)
    killed_dir = tmp_path / "datasets" / "docs" / "p1" / "killed"

    def two_shards_and_more_in_flight():
        return len(storage.list_objects("datasets/docs/p1/killed/")) >= 2 and bool(_temp_files(killed_dir))

    _run_until(_SHARD_WRITER, tmp_path, two_shards_and_more_in_flight)

    assert read_manifest(storage, "docs", "p1") == old
    assert read_dataset(storage, old).equals(old_table)  # verifies every referenced shard's sha256
    orphans = storage.list_objects("datasets/docs/p1/killed/")
    assert len(orphans) >= 2
    for obj in orphans:  # shards of the dead writer are whole files too, just unreferenced
        assert pq.read_table(pa.BufferReader(storage.read_bytes(obj.key))).num_rows == 5_000
