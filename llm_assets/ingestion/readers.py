"""Turn landed files into RECORD_SCHEMA rows, and everything that cannot be used into REJECT_SCHEMA rows.

Bad data never raises: each unusable line, row or file becomes a reject that names the file, where in it,
the rule and what to do, so a source owner can fix the landing folder and nothing disappears silently.
Every input unit (JSONL line that is not blank, Parquet row, whole text/HTML/PDF file, or a file rejected
as a whole) ends up as exactly one record or one reject: `FileOutcome.units == kept + rejected`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llm_assets.ingestion.descriptor import DESCRIPTOR_FILENAME, IngestError, SourceDescriptor

PLAIN_SUFFIXES = (".jsonl", ".parquet", ".txt", ".md", ".html", ".htm", ".pdf")
# Line- and text-based formats may come compressed, as public corpora ship them (.jsonl.gz, .jsonl.zst).
COMPRESSIBLE_SUFFIXES = (".jsonl", ".txt", ".md", ".html", ".htm")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
SUPPORTED_SUFFIXES = PLAIN_SUFFIXES + tuple(s + c for s in COMPRESSIBLE_SUFFIXES for c in COMPRESSIONS)
_SUPPORTED_TEXT = (
    f"{', '.join(PLAIN_SUFFIXES)}, or {', '.join(COMPRESSIBLE_SUFFIXES)} compressed as "
    f"{' or '.join(f'{c} ({name})' for c, name in COMPRESSIONS.items())}"
)
DEFAULT_MAX_FILE_BYTES = 256 * 2**20
STAGE = "ingest"
EXCERPT_CHARS = 200
_BOM = b"\xef\xbb\xbf"

# A landed file: its path relative to the source folder, a loader, and optionally its size in bytes,
# so a file over the limit is rejected without reading it.
SourceFile = tuple[str, Callable[[], bytes]] | tuple[str, Callable[[], bytes], int | None]


@dataclass
class FileOutcome:
    """What one file produced; `file` is its path relative to the source folder."""

    records: list[dict[str, Any]]
    rejects: list[dict[str, Any]]
    units: int
    file: str


def record_id(source: str, relpath: str, locator: str) -> str:
    """Stable id: the same line of the same file of the same source always gets the same id."""
    return hashlib.sha256(f"{source}\x00{relpath}\x00{locator}".encode()).hexdigest()[:32]


def _suffix(relpath: str) -> str | None:
    name = relpath.lower()
    matches = [suffix for suffix in SUPPORTED_SUFFIXES if name.endswith(suffix)]
    return max(matches, key=len) if matches else None


def _excerpt(raw: str | bytes) -> str:
    if isinstance(raw, bytes):
        raw = raw[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    return raw[:EXCERPT_CHARS]


def _to_json(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


class _FileReader:
    """Collects the records and rejects of one file, filling the provenance columns the same way."""

    def __init__(self, relpath: str, descriptor: SourceDescriptor) -> None:
        self.relpath = relpath
        self.descriptor = descriptor
        self.records: list[dict[str, Any]] = []
        self.rejects: list[dict[str, Any]] = []
        self.units = 0

    def keep(self, text: str, locator: str, metadata: dict[str, Any], language: str | None = None) -> None:
        source = self.descriptor.name
        self.records.append(
            {
                "id": record_id(source, self.relpath, locator),
                "text": text,
                "source": source,
                "source_uri": self.descriptor.source_uri,
                "file": self.relpath,
                "locator": locator,
                "licence": self.descriptor.licence,
                "jurisdiction": self.descriptor.jurisdiction,
                "language_hint": language or self.descriptor.language,
                "metadata": _to_json(metadata),
            }
        )

    def reject(self, locator: str, rule: str, problem: str, raw: str | bytes | None = None) -> None:
        """`problem` is one line that says what is wrong and what to do; the file and place are prepended."""
        where = self.relpath if locator == "file" else f"{self.relpath} {locator}"
        self.rejects.append(
            {
                "record_id": record_id(self.descriptor.name, self.relpath, locator),
                "source": self.descriptor.name,
                "file": self.relpath,
                "locator": locator,
                "stage": STAGE,
                "rule": rule,
                "reason": f"{where}: {problem}",
                "score": None,
                "threshold": None,
                "excerpt": None if raw is None else _excerpt(raw),
            }
        )

    def reject_file(self, rule: str, problem: str, raw: str | bytes | None = None) -> FileOutcome:
        self.units += 1
        self.reject("file", rule, problem, raw)
        return self.outcome()

    def keep_fields(self, fields: dict[str, Any], locator: str, raw: str) -> None:
        """A JSONL object or Parquet row: the text field becomes the text, the rest becomes metadata."""
        text_field = self.descriptor.text_field
        value = fields.get(text_field)
        fix = f"fill '{text_field}' or remove the record (or set text_field in {DESCRIPTOR_FILENAME})"
        if text_field not in fields:
            present = ", ".join(list(fields)[:10]) or "none"
            self.reject(locator, "missing_text", f"no '{text_field}' field (fields: {present}) — {fix}", raw)
        elif value is None:
            self.reject(locator, "missing_text", f"'{text_field}' is null — {fix}", raw)
        elif not isinstance(value, str):
            kind = type(value).__name__
            self.reject(locator, "missing_text", f"'{text_field}' is {kind}, not text — {fix}", raw)
        elif not value.strip():
            self.reject(locator, "missing_text", f"'{text_field}' is empty — {fix}", raw)
        else:
            metadata = {key: item for key, item in fields.items() if key != text_field}
            id_field = self.descriptor.id_field
            if id_field is not None and fields.get(id_field) is not None:
                metadata["source_record_id"] = str(fields[id_field])
            self.keep(value, locator, metadata, _language_of(fields))

    def outcome(self) -> FileOutcome:
        return FileOutcome(records=self.records, rejects=self.rejects, units=self.units, file=self.relpath)


def _language_of(fields: dict[str, Any]) -> str | None:
    for key in ("language", "lang"):
        value = fields.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _precheck(reader: _FileReader, size: int, max_file_bytes: int) -> FileOutcome | None:
    """File-level refusals decided from the name and size alone, before anything is parsed."""
    if max_file_bytes <= 0:
        raise IngestError(f"max_file_bytes must be positive, got {max_file_bytes}")
    if _suffix(reader.relpath) is None:
        return reader.reject_file(
            "unsupported_type",
            f"unsupported file type — convert it to one of {_SUPPORTED_TEXT} or remove it",
        )
    if size > max_file_bytes:
        return reader.reject_file(
            "file_too_large",
            f"{size} bytes is over the {max_file_bytes}-byte limit — split the file or raise max_file_bytes",
        )
    return None


def read_source_file(
    relpath: str, data: bytes, descriptor: SourceDescriptor, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> FileOutcome:
    """Read one landed file (path relative to the source folder); the format follows from the suffix."""
    reader = _FileReader(relpath, descriptor)
    refused = _precheck(reader, len(data), max_file_bytes)
    if refused is not None:
        return refused
    suffix = _suffix(relpath) or ""
    compression = next((name for ending, name in COMPRESSIONS.items() if suffix.endswith(ending)), None)
    if compression is not None:
        suffix = suffix.rsplit(".", 1)[0]
        try:
            data = _decompress(data, compression, max_file_bytes + 1)
        except (OSError, EOFError, zlib.error) as exc:
            return reader.reject_file("corrupt_file", f"not a readable {compression} file ({exc}) — re-compress it")
        if len(data) > max_file_bytes:
            return reader.reject_file(
                "file_too_large",
                f"decompresses to over the {max_file_bytes}-byte limit — split the file",
            )
    if not data or data.isspace():
        return reader.reject_file("empty_file", "the file is empty — remove it or land its content")
    if suffix == ".jsonl":
        _read_jsonl(reader, data)
        if reader.units == 0:  # only a byte-order mark and blank lines
            return reader.reject_file("empty_file", "no lines with content — remove it or land its content")
        return reader.outcome()
    if suffix == ".parquet":
        return _read_parquet(reader, data)
    if suffix == ".pdf":
        return _read_pdf(reader, data)
    return _read_text(reader, data, html=suffix in (".html", ".htm"))


def _decompress(data: bytes, compression: str, limit: int) -> bytes:
    """At most `limit` bytes of the decompressed file (one more than allowed tells the caller it is too big)."""
    if compression == "gzip":
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as unzipped:
            return unzipped.read(limit)
    with pa.input_stream(pa.BufferReader(data), compression=compression) as stream:
        return bytes(stream.read(limit))


def _read_jsonl(reader: _FileReader, data: bytes) -> None:
    start = 0
    lineno = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end == -1 else end
        line, line_start = data[start:end], start
        start = end + 1
        lineno += 1
        if lineno == 1 and line.startswith(_BOM):
            line, line_start = line[len(_BOM) :], line_start + len(_BOM)
        if not line.strip():
            continue
        reader.units += 1
        locator = f"line {lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            reader.reject(
                locator,
                "bad_utf8",
                f"not valid UTF-8 at byte {line_start + exc.start} of the file "
                f"(byte {exc.start} of the line) — re-encode the file as UTF-8 or remove the line",
                line,
            )
            continue
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as exc:
            reader.reject(
                locator,
                "malformed_json",
                f"not valid JSON ({exc.msg} at column {exc.colno}) — fix or remove the line",
                text,
            )
            continue
        if not isinstance(fields, dict):
            reader.reject(
                locator,
                "not_object",
                f"a JSON {type(fields).__name__}, not an object — write one {{...}} object per line",
                text,
            )
            continue
        reader.keep_fields(fields, locator, text)


def _read_parquet(reader: _FileReader, data: bytes) -> FileOutcome:
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        return reader.reject_file("corrupt_file", f"not a readable Parquet file ({exc}) — re-export it")
    text_field = reader.descriptor.text_field
    if text_field not in table.column_names:
        columns = ", ".join(table.column_names[:10]) or "none"
        return reader.reject_file(
            "missing_text",
            f"no column '{text_field}' (columns: {columns}) — add it or set text_field in {DESCRIPTOR_FILENAME}",
        )
    kind = table.schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        return reader.reject_file(
            "missing_text", f"column '{text_field}' is {kind}, not text — store the text as a string column"
        )
    if table.num_rows == 0:
        return reader.reject_file("empty_file", "the file has no rows — remove it or land its content")
    row_number = 0
    for batch in table.to_batches():
        for fields in batch.to_pylist():
            row_number += 1
            reader.units += 1
            reader.keep_fields(fields, f"row {row_number}", _to_json(fields))
    return reader.outcome()


def _decode_whole(reader: _FileReader, data: bytes) -> str | FileOutcome:
    body = data.removeprefix(_BOM)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return reader.reject_file(
            "bad_utf8",
            f"not valid UTF-8 at byte {len(data) - len(body) + exc.start} — re-encode the file as UTF-8",
            data,
        )


def _read_text(reader: _FileReader, data: bytes, *, html: bool) -> FileOutcome:
    decoded = _decode_whole(reader, data)
    if isinstance(decoded, FileOutcome):
        return decoded
    if not decoded.strip():
        return reader.reject_file("empty_file", "only whitespace — remove the file or land its content")
    if not html:
        reader.units += 1
        reader.keep(decoded, "file", {})
        return reader.outcome()
    import trafilatura  # imported here: JSONL, Parquet and text sources never need it (~0.15 s)

    # Precision over recall: boilerplate (menus, footers, cookie banners) is worse for training than a
    # sentence lost at the edge of the main text.
    document = trafilatura.bare_extraction(decoded, favor_precision=True, include_comments=False, with_metadata=True)
    text = getattr(document, "text", None) or ""
    if not text.strip():
        return reader.reject_file(
            "no_text",
            "no main text found in the HTML (only navigation or boilerplate?) — land the article text",
            decoded,
        )
    reader.units += 1
    title = getattr(document, "title", None)
    reader.keep(text, "file", {"title": title} if title else {})
    return reader.outcome()


def _read_pdf(reader: _FileReader, data: bytes) -> FileOutcome:
    import pypdf  # imported here, as trafilatura above

    try:
        pdf = pypdf.PdfReader(io.BytesIO(data))
        if pdf.is_encrypted and pdf.decrypt("") == pypdf.PasswordType.NOT_DECRYPTED:
            return reader.reject_file("encrypted", "the PDF is password-protected — land an unlocked copy")
        pages = [page.extract_text() or "" for page in pdf.pages]
        title = pdf.metadata.title if pdf.metadata else None
    # pypdf signals damaged input with many exception types (PdfReadError, KeyError, ValueError, ...);
    # any of them means the same thing here: this file cannot be read.
    except Exception as exc:
        return reader.reject_file("corrupt_file", f"not a readable PDF ({exc}) — re-export it")
    text = "\n\n".join(pages)
    if not text.strip():
        return reader.reject_file(
            "no_text",
            f"no extractable text in {len(pages)} page(s) (scanned images?) — run OCR and land the text",
        )
    reader.units += 1
    metadata: dict[str, Any] = {"pages": len(pages)}
    if title:
        metadata["title"] = title
    reader.keep(text, f"pages 1-{len(pages)}", metadata)
    return reader.outcome()


def iter_source_files(
    files: Iterable[SourceFile],
    descriptor: SourceDescriptor,
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Iterator[FileOutcome]:
    """Read a source's files one at a time, loading each only when reached, so memory holds one file.

    The descriptor file itself is skipped; a file whose size is given and is over the limit, or whose
    type is unsupported, is rejected without being loaded.
    """
    for relpath, load, *size in files:
        if relpath == DESCRIPTOR_FILENAME:
            continue
        known_size = size[0] if size else None
        refused = _precheck(_FileReader(relpath, descriptor), known_size or 0, max_file_bytes)
        if refused is not None:
            yield refused
            continue
        yield read_source_file(relpath, load(), descriptor, max_file_bytes=max_file_bytes)


def summarize(outcomes: Iterable[FileOutcome]) -> dict[str, Any]:
    """Counts for asset metadata: files, units, kept, rejected, and rejects per rule."""
    files = units = kept = 0
    by_rule: Counter[str] = Counter()
    for outcome in outcomes:
        files += 1
        units += outcome.units
        kept += len(outcome.records)
        by_rule.update(reject["rule"] for reject in outcome.rejects)
    return {
        "files": files,
        "units": units,
        "kept": kept,
        "rejected": sum(by_rule.values()),
        "rejects_by_rule": dict(sorted(by_rule.items())),
    }
