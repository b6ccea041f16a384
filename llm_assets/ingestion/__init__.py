"""Landing files to records: source descriptors and format readers (pure, no Dagster)."""

from llm_assets.ingestion.descriptor import (
    DESCRIPTOR_FILENAME,
    IngestError,
    SourceDescriptor,
    parse_descriptor,
)
from llm_assets.ingestion.readers import (
    PLAIN_SUFFIXES,
    SUPPORTED_SUFFIXES,
    FileOutcome,
    SourceFile,
    iter_source_files,
    read_source_file,
    record_id,
    summarize,
)

__all__ = [
    "DESCRIPTOR_FILENAME",
    "PLAIN_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "FileOutcome",
    "IngestError",
    "SourceDescriptor",
    "SourceFile",
    "iter_source_files",
    "parse_descriptor",
    "read_source_file",
    "record_id",
    "summarize",
]
