"""Parquet shard datasets in the lake, committed by writing their manifest last.

A dataset partition lives under `datasets/{dataset}/{partition or '__all__'}/`. Each write puts its
shards in a fresh `{write_id}/` folder and then replaces `_manifest.json`, so readers of the previous
manifest keep valid shards and a writer that dies before its manifest leaves the old version in force.

`data_version` is content-addressed: the sha256 of the shard sha256s, the row count and the Arrow schema
(see `_data_version`). Shard bytes are deterministic for a given pyarrow version, so writing the same rows,
in the same order, with the same schema and `max_rows_per_shard` gives the same `data_version`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llm_assets.lake.storage import LakeError, LakeKeyNotFound, LakeStorage

log = logging.getLogger(__name__)

_ALL_PARTITIONS = "__all__"
_MANIFEST_FORMAT = 1
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError)


@dataclass(frozen=True)
class ShardInfo:
    """One Parquet file of a dataset; `path` is its lake key, `sha256` the hash of its bytes."""

    path: str
    rows: int
    sha256: str
    bytes: int


@dataclass(frozen=True)
class DatasetManifest:
    """What a committed dataset partition holds. `schema_ipc` is the Arrow schema (base64 IPC), so an
    empty dataset still reads back with the right columns; `schema` is the readable form of it."""

    dataset: str
    partition: str | None
    shards: tuple[ShardInfo, ...]
    schema: dict[str, str]
    rows: int
    data_version: str
    created_at: str
    extra: dict[str, Any]
    schema_ipc: str = field(repr=False)

    def arrow_schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(self.schema_ipc)))

    def to_json(self) -> str:
        body = {"format": _MANIFEST_FORMAT, **asdict(self)}
        return json.dumps(body, indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DatasetManifest:
        """Parse a manifest; raises ValueError (or KeyError/TypeError) when it is not one."""
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        fmt = body.pop("format", None)
        if fmt != _MANIFEST_FORMAT:
            raise ValueError(f"unsupported manifest format {fmt!r}, expected {_MANIFEST_FORMAT}")
        shards = tuple(ShardInfo(**s) for s in body.pop("shards"))
        return cls(shards=shards, **body)

    def to_metadata(self) -> dict[str, Any]:
        """Flat figures for run metadata: rows, shards, bytes, data_version, schema."""
        meta: dict[str, Any] = {
            "dataset": self.dataset,
            "rows": self.rows,
            "shards": len(self.shards),
            "bytes": sum(s.bytes for s in self.shards),
            "data_version": self.data_version,
            "created_at": self.created_at,
            "schema": dict(self.schema),
        }
        if self.partition is not None:
            meta["partition"] = self.partition
        return meta


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or ".." in value:
        raise LakeError(f"invalid {kind} {value!r}: it must be non-empty and contain no '/', '\\' or '..'")
    if kind == "partition" and value == _ALL_PARTITIONS:
        raise LakeError(f"invalid partition {value!r}: it is reserved for unpartitioned datasets; use None")


def _dataset_prefix(dataset: str, partition: str | None) -> str:
    _check_name("dataset", dataset)
    if partition is not None:
        _check_name("partition", partition)
    return f"datasets/{dataset}/{partition if partition is not None else _ALL_PARTITIONS}"


# Shards are cut at this many bytes of Arrow data as well as at max_rows_per_shard, so long documents
# cannot make one shard (and every stage's working set, which is one shard) as big as the corpus.
DEFAULT_MAX_BYTES_PER_SHARD = 32 * 2**20


def manifest_key(dataset: str, partition: str | None) -> str:
    return f"{_dataset_prefix(dataset, partition)}/_manifest.json"


# Long, mostly distinct strings: Parquet's writer would build a dictionary for them, outgrow its 1 MB
# dictionary page within a few hundred documents and fall back to plain pages, paying for both (~20 % of
# writing and reading a shard, for no smaller file). Nor do they get min/max statistics.
PLAIN_ENCODED_COLUMNS = frozenset({"text"})


@functools.lru_cache(maxsize=128)
def dictionary_columns(schema: pa.Schema) -> tuple[str, ...]:
    """Parquet column paths (leaves: "meta.key", "tags.list.element") to dictionary-encode: every one but
    those under PLAIN_ENCODED_COLUMNS. Read off the Parquet schema pyarrow derives, so nested types map as
    the writer maps them."""
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    parquet_schema = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    return tuple(
        path
        for path in (parquet_schema.column(i).path for i in range(len(parquet_schema)))
        if path.split(".", 1)[0] not in PLAIN_ENCODED_COLUMNS
    )


# zstd level 1, not 3: writing a shard ~2x faster (130 -> 250 MB/s of text on real shards) for files ~15 %
# larger, still smaller than the snappy most curation tools write. Decompression speed does not depend on level.
COMPRESSION_LEVEL = 1


def _parquet_bytes(table: pa.Table) -> bytes:
    """Serialize with fixed options and one contiguous chunk per column: page boundaries depend on how
    the input is chunked, so without `combine_chunks` equal tables could give different bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(
        table.combine_chunks(),
        sink,
        row_group_size=max(table.num_rows, 1),
        compression="zstd",
        compression_level=COMPRESSION_LEVEL,
        use_dictionary=list(dictionary_columns(table.schema)),
        # min/max of each document's text prune nothing and cost ~10 % of writing a shard
        write_statistics=list(dictionary_columns(table.schema)),
        version="2.6",
        data_page_version="1.0",
    )
    return bytes(sink.getvalue().to_pybytes())


def _schema_ipc(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def _data_version(shard_sha256s: list[str], rows: int, schema_ipc: str) -> str:
    """sha256 over the shard hashes, `rows=<n>` and `schema=<base64 IPC schema>`, one per line.

    Independent of write_id, created_at and `extra`, so re-writing identical content is a no-op version.
    """
    text = "\n".join([*shard_sha256s, f"rows={rows}", f"schema={schema_ipc}"])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ShardWriter:
    """Stream rows into a dataset partition, at most `max_rows_per_shard` rows buffered at a time.

    Use as a context manager and call `commit()`: leaving the block without it (by an exception or
    otherwise) deletes the shards written so far and leaves the previous manifest in force.
    """

    def __init__(
        self,
        storage: LakeStorage,
        dataset: str,
        partition: str | None,
        schema: pa.Schema,
        *,
        max_rows_per_shard: int = 50_000,
        max_bytes_per_shard: int = DEFAULT_MAX_BYTES_PER_SHARD,
        write_id: str | None = None,
    ) -> None:
        if max_bytes_per_shard < 1:
            raise ValueError(f"dataset {dataset}: max_bytes_per_shard must be at least 1, got {max_bytes_per_shard}")
        if max_rows_per_shard < 1:
            raise ValueError(f"dataset {dataset}: max_rows_per_shard must be at least 1, got {max_rows_per_shard}")
        write_id = write_id or f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}"
        _check_name("write_id", write_id)
        self._storage = storage
        self._dataset = dataset
        self._partition = partition
        self._schema = schema
        self._max_rows = max_rows_per_shard
        self._max_bytes = max_bytes_per_shard
        self._buffered_bytes = 0
        self._prefix = f"{_dataset_prefix(dataset, partition)}/{write_id}"
        self._buffer: list[pa.Table] = []
        self._buffered_rows = 0
        self._shards: list[ShardInfo] = []
        self._state = "open"

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        """Shards written so far."""
        return tuple(self._shards)

    @property
    def buffered_rows(self) -> int:
        """Rows held in memory, waiting to fill a shard; always below `max_rows_per_shard` between writes."""
        return self._buffered_rows

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._state != "open":
            return
        self.abort()
        if exc_type is None:
            raise LakeError(
                f"dataset {self._dataset}: ShardWriter closed without commit(); its shards were deleted and "
                "the previous manifest is still in force — call commit() inside the with-block"
            )

    def _where(self) -> str:
        part = f" partition {self._partition}" if self._partition is not None else ""
        return f"dataset {self._dataset}{part}"

    def _check_open(self) -> None:
        if self._state != "open":
            raise LakeError(f"{self._where()}: this ShardWriter is {self._state}; start a new one")

    def write(self, data: pa.Table | pa.RecordBatch | list[dict[str, Any]]) -> None:
        """Add rows, cast to the writer's schema; full shards are written out before this returns."""
        self._check_open()
        table = self._conform(data)
        if table.num_rows == 0:
            return
        self._buffer.append(table)
        self._buffered_rows += table.num_rows
        self._buffered_bytes += table.nbytes
        while self._buffered_rows >= self._max_rows or (
            self._buffered_rows and self._buffered_bytes >= self._max_bytes
        ):
            pending = pa.concat_tables(self._buffer)
            take = min(self._max_rows, pending.num_rows)
            self._flush(pending.slice(0, take))
            rest = pending.slice(take)
            self._buffer = [rest] if rest.num_rows else []
            self._buffered_rows = rest.num_rows
            self._buffered_bytes = rest.nbytes if rest.num_rows else 0

    def commit(self, extra: dict[str, Any] | None = None) -> DatasetManifest:
        """Write the remaining rows and then the manifest, which makes this write the dataset's version."""
        self._check_open()
        if self._buffered_rows:
            self._flush(pa.concat_tables(self._buffer))
            self._buffer, self._buffered_rows, self._buffered_bytes = [], 0, 0
        rows = sum(s.rows for s in self._shards)
        schema_ipc = _schema_ipc(self._schema)
        manifest = DatasetManifest(
            dataset=self._dataset,
            partition=self._partition,
            shards=tuple(self._shards),
            schema={f.name: str(f.type) for f in self._schema},
            rows=rows,
            data_version=_data_version([s.sha256 for s in self._shards], rows, schema_ipc),
            created_at=_utc_now(),
            extra=dict(extra or {}),
            schema_ipc=schema_ipc,
        )
        try:
            text = manifest.to_json()
        except (TypeError, ValueError) as e:
            raise LakeError(f"{self._where()}: commit extra is not JSON-serializable ({e})") from e
        self._storage.write_bytes(manifest_key(self._dataset, self._partition), text.encode("utf-8"))
        self._state = "committed"
        log.info("%s: committed %d rows in %d shards", self._where(), rows, len(self._shards))
        return manifest

    def abort(self) -> None:
        """Delete the shards written so far; the previous manifest stays in force."""
        self._check_open()
        self._state = "aborted"
        self._buffer, self._buffered_rows, self._buffered_bytes = [], 0, 0
        for shard in self._shards:
            try:
                self._storage.delete(shard.path)
            except LakeError as e:
                log.warning("%s: could not delete aborted shard %s: %s", self._where(), shard.path, e)

    def _flush(self, table: pa.Table) -> None:
        data = _parquet_bytes(table)
        key = f"{self._prefix}/part-{len(self._shards):05d}.parquet"
        self._storage.write_bytes(key, data)
        self._shards.append(ShardInfo(key, table.num_rows, hashlib.sha256(data).hexdigest(), len(data)))
        total = sum(s.rows for s in self._shards)
        log.info("%s: wrote %s (%d rows, %d so far)", self._where(), key, table.num_rows, total)

    def _conform(self, data: pa.Table | pa.RecordBatch | list[dict[str, Any]]) -> pa.Table:
        if isinstance(data, list):
            return self._from_rows(data)
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if not isinstance(data, pa.Table):
            raise TypeError(f"{self._where()}: write() takes a pyarrow Table, RecordBatch or list of dicts")
        names = set(self._schema.names)
        unexpected = [n for n in data.column_names if n not in names]
        if unexpected:
            raise LakeError(f"{self._where()}: column {unexpected[0]!r} is not in the dataset schema")
        missing = [n for n in self._schema.names if n not in data.column_names]
        if missing:
            raise LakeError(f"{self._where()}: column {missing[0]!r} is missing from the written table")
        arrays = []
        for fld in self._schema:
            column = data.column(fld.name)
            if column.type != fld.type:
                try:
                    column = column.cast(fld.type)
                except _ARROW_ERRORS as e:
                    raise self._column_error(fld, f"got {column.type}", e) from e
            arrays.append(self._check_nulls(fld, column))
        return pa.Table.from_arrays(arrays, schema=self._schema)

    def _from_rows(self, rows: list[dict[str, Any]]) -> pa.Table:
        names = set(self._schema.names)
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise LakeError(f"{self._where()}: row {i} is a {type(row).__name__}, not a dict")
            unexpected = [k for k in row if k not in names]
            if unexpected:
                raise LakeError(f"{self._where()}: row {i} has column {unexpected[0]!r}, not in the schema")
        arrays = []
        for fld in self._schema:
            try:
                array = pa.array([row.get(fld.name) for row in rows], type=fld.type)
            except _ARROW_ERRORS as e:
                raise self._column_error(fld, "a value does not fit", e) from e
            arrays.append(self._check_nulls(fld, array))
        return pa.Table.from_arrays(arrays, schema=self._schema)

    def _column_error(self, fld: pa.Field, what: str, e: Exception) -> LakeError:
        detail = " ".join(str(e).split())
        return LakeError(f"{self._where()}: column {fld.name!r} cannot be stored as {fld.type} ({what}: {detail})")

    def _check_nulls(self, fld: pa.Field, values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        if not fld.nullable and values.null_count:
            raise LakeError(
                f"{self._where()}: column {fld.name!r} is not nullable but has {values.null_count} null values"
            )
        return values


def write_table(
    storage: LakeStorage,
    dataset: str,
    partition: str | None,
    table: pa.Table,
    *,
    max_rows_per_shard: int = 50_000,
    extra: dict[str, Any] | None = None,
) -> DatasetManifest:
    """Write a whole table as the dataset partition's new version."""
    with ShardWriter(storage, dataset, partition, table.schema, max_rows_per_shard=max_rows_per_shard) as w:
        w.write(table)
        return w.commit(extra)


def read_manifest(storage: LakeStorage, dataset: str, partition: str | None) -> DatasetManifest | None:
    """The committed manifest, or None when the partition was never written."""
    key = manifest_key(dataset, partition)
    try:
        text = storage.read_bytes(key).decode("utf-8")
    except LakeKeyNotFound:
        return None
    try:
        return DatasetManifest.from_json(text)
    except (ValueError, KeyError, TypeError) as e:
        raise LakeError(
            f"{storage.uri(key)}: not a valid dataset manifest ({' '.join(str(e).split())}); restore it or "
            "rematerialize the dataset"
        ) from e


def read_shard_bytes(
    storage: LakeStorage, manifest: DatasetManifest, shard: ShardInfo, *, verify: bool = True
) -> bytes:
    """The Parquet file of one shard of `manifest`, checked against the manifest's sha256."""
    data = storage.read_bytes(shard.path)
    if verify:
        actual = hashlib.sha256(data).hexdigest()
        if actual != shard.sha256:
            raise LakeError(
                f"shard {storage.uri(shard.path)} of dataset {manifest.dataset}: "
                f"sha256 {actual[:12]}… does not match the manifest's {shard.sha256[:12]}…; "
                "it changed after commit — rematerialize the dataset"
            )
    return data


def iter_shards(
    storage: LakeStorage,
    manifest: DatasetManifest,
    *,
    verify: bool = True,
    columns: Sequence[str] | None = None,
) -> Iterator[pa.Table]:
    """Yield the dataset one shard at a time, checking each against the manifest's sha256 and row count.
    `columns` reads only those (a pass that needs `id` and `text` skips decoding the rest)."""
    for shard in manifest.shards:
        data = read_shard_bytes(storage, manifest, shard, verify=verify)
        table = pq.read_table(pa.BufferReader(data), columns=None if columns is None else list(columns))
        if table.num_rows != shard.rows:
            raise LakeError(
                f"shard {storage.uri(shard.path)} of dataset {manifest.dataset}: {table.num_rows} rows, the "
                f"manifest says {shard.rows}; rematerialize the dataset"
            )
        del data
        yield table
        del table
        # No release_unused() here: forcing Arrow's allocator to hand back every freed page after each shard
        # made the next shard fault the same pages in again (~40 % of the chain's page faults, ~8 % of its
        # time); its own delayed purge returns what stays unused, and long runs release between stages.


def read_dataset(storage: LakeStorage, manifest: DatasetManifest, *, verify: bool = True) -> pa.Table:
    """The whole dataset as one table (with the manifest's schema even when it has no rows)."""
    tables = list(iter_shards(storage, manifest, verify=verify))
    if not tables:
        return manifest.arrow_schema().empty_table()
    return pa.concat_tables(tables)
