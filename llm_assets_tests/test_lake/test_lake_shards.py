import itertools
import json
import re
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_assets.lake import (
    DatasetManifest,
    LakeError,
    LocalLakeStorage,
    ShardWriter,
    iter_shards,
    manifest_key,
    read_dataset,
    read_manifest,
    write_table,
)

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("score", pa.float64()),
    ]
)


def make_table(n, start=0):
    return pa.table(
        {
            "id": list(range(start, start + n)),
            "text": [f"doc {i}" for i in range(start, start + n)],
            "score": [i / 10 for i in range(start, start + n)],
        },
        schema=SCHEMA,
    )


def test_write_splits_into_shards_and_reads_back(storage):
    table = make_table(25)
    manifest = write_table(storage, "docs", "2024-01-01", table, max_rows_per_shard=10, extra={"source": "t"})

    assert [s.rows for s in manifest.shards] == [10, 10, 5]
    assert manifest.rows == 25
    for n, shard in enumerate(manifest.shards):
        assert re.fullmatch(rf"datasets/docs/2024-01-01/\d{{8}}T\d+Z-[0-9a-f]{{8}}/part-{n:05d}\.parquet", shard.path)
        assert shard.bytes == len(storage.read_bytes(shard.path))
    assert manifest_key("docs", "2024-01-01") == "datasets/docs/2024-01-01/_manifest.json"
    assert read_manifest(storage, "docs", "2024-01-01") == manifest
    assert read_dataset(storage, manifest).equals(table)
    assert [t.num_rows for t in iter_shards(storage, manifest)] == [10, 10, 5]
    assert manifest.extra == {"source": "t"}
    assert manifest.schema == {"id": "int64", "text": "string", "score": "double"}


def test_unpartitioned_dataset_uses_all_folder(storage):
    manifest = write_table(storage, "docs", None, make_table(3))
    assert manifest_key("docs", None) == "datasets/docs/__all__/_manifest.json"
    assert manifest.shards[0].path.startswith("datasets/docs/__all__/")
    assert read_manifest(storage, "docs", None) == manifest
    assert read_manifest(storage, "docs", "other") is None


def test_buffer_never_holds_a_full_shard(storage):
    with ShardWriter(storage, "docs", None, SCHEMA, max_rows_per_shard=10) as writer:
        written = 0
        for i in range(10):
            writer.write(make_table(7, start=written))
            written += 7
            assert len(writer.shards) == written // 10, f"after write {i}"
            assert writer.buffered_rows == written % 10
        writer.write(make_table(35, start=written))  # one big write is split as it comes in
        written += 35
        assert len(writer.shards) == written // 10
        assert writer.buffered_rows == written % 10
        manifest = writer.commit()
    assert manifest.rows == written == 105
    assert [s.rows for s in manifest.shards] == [10] * 10 + [5]
    assert read_dataset(storage, manifest)["id"].to_pylist() == list(range(105))


def test_empty_dataset_still_gets_a_manifest_with_its_schema(storage):
    with ShardWriter(storage, "empty", "p", SCHEMA) as writer:
        manifest = writer.commit()
    assert manifest.rows == 0
    assert manifest.shards == ()
    assert read_manifest(storage, "empty", "p") == manifest
    table = read_dataset(storage, manifest)
    assert table.num_rows == 0
    assert table.schema.equals(SCHEMA)

    assert write_table(storage, "empty2", None, SCHEMA.empty_table()).rows == 0


def test_identical_content_gives_identical_bytes_and_data_version(storage):
    first = write_table(storage, "docs", None, make_table(25), max_rows_per_shard=10)
    rechunked = pa.concat_tables([make_table(3), make_table(22, start=3)])
    second = write_table(storage, "docs", None, rechunked, max_rows_per_shard=10)

    assert [s.path for s in first.shards] != [s.path for s in second.shards]
    for a, b in zip(first.shards, second.shards, strict=True):
        assert storage.read_bytes(a.path) == storage.read_bytes(b.path)
        assert a.sha256 == b.sha256
    assert first.data_version == second.data_version

    changed = make_table(25).set_column(1, "text", pa.array(["edited"] + [f"doc {i}" for i in range(1, 25)]))
    assert write_table(storage, "docs", None, changed, max_rows_per_shard=10).data_version != first.data_version


def test_text_is_plain_encoded_and_other_columns_keep_their_dictionary(storage):
    """Long distinct strings outgrow a dictionary page at once, so `text` is written plain; everything else,
    nested leaves included, keeps dictionary encoding."""
    table = pa.table(
        {
            "id": [f"doc-{i}" for i in range(300)],
            "text": [f"a document of its own, number {i} " * 20 for i in range(300)],
            "source": ["laws"] * 300,
            "tags": [["a", "b"]] * 300,
            "meta": [{"kind": "law"}] * 300,
        }
    )
    manifest = write_table(storage, "docs", None, table)
    data = storage.read_bytes(manifest.shards[0].path)
    metadata = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0)
    encodings = {
        metadata.column(i).path_in_schema: set(metadata.column(i).encodings) for i in range(metadata.num_columns)
    }
    assert "RLE_DICTIONARY" not in encodings["text"]
    for path in ("id", "source", "tags.list.element", "meta.kind"):
        assert "RLE_DICTIONARY" in encodings[path], path
    assert read_dataset(storage, manifest).equals(table)


def test_empty_datasets_with_different_schemas_have_different_versions(storage):
    other = pa.schema([pa.field("id", pa.int64())])
    assert (
        write_table(storage, "a", None, SCHEMA.empty_table()).data_version
        != write_table(storage, "b", None, other.empty_table()).data_version
    )


def test_corrupted_shard_is_named(storage):
    manifest = write_table(storage, "docs", None, make_table(25), max_rows_per_shard=10)
    victim = manifest.shards[1].path
    data = bytearray(storage.read_bytes(victim))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(victim, bytes(data))

    with pytest.raises(LakeError) as err:
        read_dataset(storage, manifest)
    assert victim in str(err.value)
    assert "sha256" in str(err.value)


def test_exception_in_block_deletes_shards_and_keeps_old_manifest(storage):
    old = write_table(storage, "docs", None, make_table(5))
    with pytest.raises(RuntimeError), ShardWriter(storage, "docs", None, SCHEMA, max_rows_per_shard=10) as w:
        w.write(make_table(25))
        assert len(w.shards) == 2
        raise RuntimeError("stage failed")
    assert read_manifest(storage, "docs", None) == old
    assert [o.key for o in storage.list_objects("datasets/docs/")] == [
        *(s.path for s in old.shards),
        manifest_key("docs", None),
    ]
    assert read_dataset(storage, old).equals(make_table(5))


def test_leaving_without_commit_is_an_error_and_cleans_up(storage):
    with (
        pytest.raises(LakeError, match="without commit"),
        ShardWriter(storage, "docs", None, SCHEMA, max_rows_per_shard=2) as w,
    ):
        w.write(make_table(5))
    assert storage.list_objects("datasets/docs/") == []


def test_writer_is_single_use(storage):
    with ShardWriter(storage, "docs", None, SCHEMA) as w:
        w.write(make_table(1))
        w.commit()
        with pytest.raises(LakeError, match="committed"):
            w.write(make_table(1))


def test_rows_and_batches_are_cast_to_the_schema(storage):
    with ShardWriter(storage, "docs", None, SCHEMA) as w:
        w.write([{"id": 1, "text": "a"}, {"id": 2, "score": 0.5}])
        w.write(pa.record_batch({"score": pa.array([1.0]), "id": pa.array([3], pa.int32()), "text": ["c"]}))
        manifest = w.commit()
    table = read_dataset(storage, manifest)
    assert table.schema.equals(SCHEMA)
    assert table.to_pylist() == [
        {"id": 1, "text": "a", "score": None},
        {"id": 2, "text": None, "score": 0.5},
        {"id": 3, "text": "c", "score": 1.0},
    ]


@pytest.mark.parametrize(
    ("data", "column"),
    [
        ([{"id": "not a number"}], "id"),
        ([{"id": 1, "extra": 2}], "extra"),
        ([{"text": "no id"}], "id"),
        (pa.table({"id": [1], "text": ["a"]}), "score"),
        (pa.table({"id": [1], "text": ["a"], "score": [1.0], "surprise": [1]}), "surprise"),
        (pa.table({"id": ["x"], "text": ["a"], "score": [1.0]}), "id"),
    ],
)
def test_bad_data_names_dataset_and_column(storage, data, column):
    with pytest.raises(LakeError) as err, ShardWriter(storage, "docs", "p1", SCHEMA) as w:
        w.write(data)
    message = str(err.value)
    assert message.startswith("dataset docs partition p1: ")
    assert repr(column) in message
    assert "\n" not in message


@pytest.mark.parametrize("partition", ["a/b", "..", "x..y", "__all__", ""])
def test_bad_partition_keys_are_rejected(storage, partition):
    with pytest.raises(LakeError, match="invalid partition"):
        write_table(storage, "docs", partition, make_table(1))


def test_broken_manifest_is_reported_with_its_key(storage):
    storage.write_bytes(manifest_key("docs", None), b"{not json")
    with pytest.raises(LakeError) as err:
        read_manifest(storage, "docs", None)
    assert storage.uri(manifest_key("docs", None)) in str(err.value)


def test_manifest_json_roundtrip_and_metadata(storage):
    manifest = write_table(storage, "docs", "p", make_table(3), extra={"note": "é", "n": [1, 2]})
    assert DatasetManifest.from_json(manifest.to_json()) == manifest
    assert json.loads(manifest.to_json())["format"] == 1
    meta = manifest.to_metadata()
    assert meta["rows"] == 3
    assert meta["shards"] == 1
    assert meta["data_version"] == manifest.data_version
    assert meta["schema"] == manifest.schema
    assert meta["partition"] == "p"


rows_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.integers(min_value=-(2**63), max_value=2**63 - 1),
            "text": st.none() | st.text(max_size=20),
            "score": st.none() | st.floats(allow_nan=False),
        }
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, max_rows=st.integers(1, 25), cuts=st.lists(st.integers(0, 60), max_size=5))
def test_written_rows_read_back_unchanged(rows, max_rows, cuts):
    bounds = sorted({0, len(rows), *(c for c in cuts if c < len(rows))})
    with tempfile.TemporaryDirectory() as root:
        storage = LocalLakeStorage(root)
        with ShardWriter(storage, "prop", None, SCHEMA, max_rows_per_shard=max_rows) as writer:
            for lo, hi in itertools.pairwise(bounds):
                writer.write(rows[lo:hi])
            manifest = writer.commit()
        assert manifest.rows == len(rows) == sum(s.rows for s in manifest.shards)
        assert len(manifest.shards) == -(-len(rows) // max_rows)
        assert read_dataset(storage, manifest).to_pylist() == rows


def test_shards_are_also_cut_by_bytes(storage) -> None:  # type: ignore[no-untyped-def]
    """Long documents must not make one shard as big as the corpus: the working set of a stage is a shard."""
    import pyarrow as pa

    from llm_assets.lake import ShardWriter, read_dataset

    schema = pa.schema([("text", pa.string())])
    with ShardWriter(storage, "long_docs", None, schema, max_rows_per_shard=1_000, max_bytes_per_shard=50_000) as w:
        for i in range(20):
            w.write(pa.table({"text": [f"{i}" * 10_000]}, schema=schema))
            assert w.buffered_rows * 10_000 < 50_000 + 10_000
        manifest = w.commit()
    assert len(manifest.shards) >= 4
    assert read_dataset(storage, manifest).num_rows == 20
