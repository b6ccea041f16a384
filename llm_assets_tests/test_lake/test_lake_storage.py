import os
import subprocess
import sys

import pytest

from llm_assets.lake import LakeError, LakeKeyNotFound, LocalLakeStorage


def test_root_is_created_on_first_write(tmp_path):
    storage = LocalLakeStorage(tmp_path / "lake")
    assert not (tmp_path / "lake").exists()
    storage.write_bytes("a/b.txt", b"hello")
    assert (tmp_path / "lake" / "a" / "b.txt").read_bytes() == b"hello"


def test_roundtrip_overwrite_exists_delete(storage):
    assert not storage.exists("x/y.bin")
    storage.write_bytes("x/y.bin", b"one")
    assert storage.exists("x/y.bin")
    assert storage.read_bytes("x/y.bin") == b"one"
    storage.write_bytes("x/y.bin", b"two")
    assert storage.read_bytes("x/y.bin") == b"two"
    storage.delete("x/y.bin")
    assert not storage.exists("x/y.bin")
    storage.delete("x/y.bin")  # absent: no error


def test_missing_key_names_the_uri(storage):
    with pytest.raises(LakeKeyNotFound) as err:
        storage.read_bytes("nope/missing.json")
    message = str(err.value)
    assert message.startswith(f"lake key not found: {storage.uri('nope/missing.json')} (")
    assert "\n" not in message


def test_list_objects_is_recursive_sorted_and_hides_internal_files(storage):
    for key in ["d/b/2.txt", "d/a.txt", "d/b/1.txt", "other/z.txt", "dz.txt"]:
        storage.write_bytes(key, key.encode())
    storage.append_line("d/log.jsonl", "{}")  # leaves a .lock- file next to it
    (storage.root / "d" / ".tmp-half-written").write_bytes(b"partial")

    assert [o.key for o in storage.list_objects("d/")] == ["d/a.txt", "d/b/1.txt", "d/b/2.txt", "d/log.jsonl"]
    assert [o.key for o in storage.list_objects("d")] == [
        "d/a.txt",
        "d/b/1.txt",
        "d/b/2.txt",
        "d/log.jsonl",
        "dz.txt",
    ]
    assert [o.key for o in storage.list_objects("d/b/1")] == ["d/b/1.txt"]
    assert len(storage.list_objects("")) == 6
    assert storage.list_objects("missing/") == []
    assert storage.list_objects("d/a.txt")[0].size == len(b"d/a.txt")


def test_version_changes_when_content_changes(storage):
    storage.write_bytes("v.txt", b"a")
    first = storage.list_objects("v.txt")[0].version
    storage.write_bytes("v.txt", b"b")
    second = storage.list_objects("v.txt")[0].version
    storage.append_line("v.txt", "c")
    third = storage.list_objects("v.txt")[0].version
    assert len({first, second, third}) == 3


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "a/../b", "..", "a//b", "./a", "a/", "a\\b", "x/.tmp-1", "x/.lock-log.jsonl"]
)
def test_invalid_keys_are_rejected(storage, key):
    with pytest.raises(LakeError) as err:
        storage.write_bytes(key, b"x")
    assert "invalid lake key" in str(err.value)
    assert "\n" not in str(err.value)


def test_append_line_and_append_next_line(storage):
    storage.append_line("log/a.jsonl", "first")
    storage.append_line("log/a.jsonl", "second")
    assert storage.read_bytes("log/a.jsonl") == b"first\nsecond\n"

    seen = []

    def next_line(last):
        seen.append(last)
        return f"after {last}"

    assert storage.append_next_line("log/a.jsonl", next_line) == "after second"
    assert storage.append_next_line("log/new.jsonl", next_line) == "after None"
    assert seen == ["second", None]
    assert storage.read_bytes("log/a.jsonl").decode().splitlines() == ["first", "second", "after second"]
    with pytest.raises(LakeError, match="line break"):
        storage.append_line("log/a.jsonl", "two\nlines")


def test_append_next_line_reads_a_last_line_longer_than_one_chunk(storage):
    long_line = "x" * 200_000
    storage.append_line("big.txt", "short")
    storage.append_line("big.txt", long_line)
    assert storage.append_next_line("big.txt", lambda last: str(len(last or ""))) == "200000"


def test_update_bytes_none_leaves_object_unchanged(storage):
    assert storage.update_bytes("c.txt", lambda cur: None) is None
    assert not storage.exists("c.txt")
    assert storage.update_bytes("c.txt", lambda cur: b"1") == b"1"
    assert storage.update_bytes("c.txt", lambda cur: None) is None
    assert storage.read_bytes("c.txt") == b"1"


_INCREMENT = """
import sys
from llm_assets.lake import LocalLakeStorage
storage = LocalLakeStorage(sys.argv[1])
for _ in range(50):
    storage.update_bytes("counter.txt", lambda cur: str(int(cur or b"0") + 1).encode())
"""


def test_update_bytes_is_one_step_across_processes(storage):
    children = [subprocess.Popen([sys.executable, "-c", _INCREMENT, str(storage.root)]) for _ in range(2)]
    assert [c.wait(timeout=60) for c in children] == [0, 0]
    assert storage.read_bytes("counter.txt") == b"100"


def test_uri_and_location(storage):
    assert storage.uri("a/b.txt") == (storage.root / "a" / "b.txt").as_uri()
    assert storage.describe_location() == {"backend": "local", "root": str(storage.root)}
    assert os.path.isabs(storage.describe_location()["root"])
