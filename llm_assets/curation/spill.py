"""A local copy of shards a pass has read, for the passes after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc


class ShardSpill:
    """The shards a first pass read from the lake (checked against their manifest), kept as uncompressed Arrow
    IPC files in a local scratch folder, so later passes read them back at memory speed (memory-mapped)
    instead of decoding the Parquet again: ~0.1 s per 190 MB instead of ~0.7 s. Needs scratch space for the
    uncompressed shards of the pass; memory stays one shard."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: dict[str, list[Path]] = {}
        self._count = 0

    def add(self, source: str, table: pa.Table) -> None:
        path = self.folder / f"{self._count:08d}.arrow"
        self._count += 1
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        self._files.setdefault(source, []).append(path)

    def tables(self, source: str) -> Iterator[pa.Table]:
        """The source's shards, in the order they were added."""
        for path in self._files.get(source, []):
            with pa.memory_map(str(path)) as mapped:
                table = pa.ipc.open_file(mapped).read_all()
            yield table
            del table
