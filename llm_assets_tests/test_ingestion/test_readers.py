import gzip
import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pypdf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_assets.ingestion import (
    PLAIN_SUFFIXES,
    SUPPORTED_SUFFIXES,
    FileOutcome,
    IngestError,
    SourceDescriptor,
    iter_source_files,
    read_source_file,
    record_id,
    summarize,
)
from llm_assets.schemas import RECORD_SCHEMA, REJECT_SCHEMA

DESCRIPTOR = SourceDescriptor(
    name="demo",
    licence="CC-BY-4.0",
    jurisdiction="GR",
    source_uri="https://example.org/demo",
    language="el",
)


def _read(relpath: str, data: bytes, descriptor: SourceDescriptor = DESCRIPTOR, **kwargs) -> FileOutcome:
    outcome = read_source_file(relpath, data, descriptor, **kwargs)
    assert outcome.file == relpath
    assert outcome.units == len(outcome.records) + len(outcome.rejects)
    # Every row must fit the shared schemas as-is.
    pa.Table.from_pylist(outcome.records, schema=RECORD_SCHEMA)
    pa.Table.from_pylist(outcome.rejects, schema=REJECT_SCHEMA)
    return outcome


def _only_reject(outcome: FileOutcome) -> dict:
    assert outcome.records == []
    assert len(outcome.rejects) == 1
    reject = outcome.rejects[0]
    assert reject["stage"] == "ingest"
    assert reject["file"] == outcome.file
    assert reject["reason"].startswith(outcome.file)
    assert reject["record_id"] == record_id("demo", outcome.file, reject["locator"])
    return reject


def _jsonl(*lines: bytes | str | dict) -> bytes:
    encoded = [
        line if isinstance(line, bytes) else (json.dumps(line) if isinstance(line, dict) else line).encode()
        for line in lines
    ]
    return b"\n".join(encoded) + b"\n"


def make_pdf(pages: list[str | None]) -> bytes:
    """A minimal valid PDF with one Helvetica text line per page (None: a page with only a rectangle)."""
    kids = " ".join(f"{4 + 2 * index} 0 R" for index in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for index, text in enumerate(pages):
        if text is None:
            content = b"0 0 100 100 re f"
        else:
            escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            content = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * index} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    pdf = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    pdf += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    pdf += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref_at)
    return bytes(pdf)


# --- JSONL -------------------------------------------------------------------------------------------


def test_jsonl_keeps_good_lines_and_rejects_each_bad_one():
    data = _jsonl(
        {"text": "Καλημέρα", "id": 7, "topic": "greeting"},
        "",
        '{"text": "broken",',
        "[1, 2]",
        {"body": "no text field"},
        {"text": "   "},
        {"text": 42},
        b'{"text": "caf\xe9"}',
        "   ",
        {"text": "last good line", "lang": "en"},
    )
    outcome = _read("raw/a.jsonl", data)
    assert [(r["locator"], r["text"]) for r in outcome.records] == [
        ("line 1", "Καλημέρα"),
        ("line 10", "last good line"),
    ]
    assert outcome.units == 8  # two blank lines are not units
    by_locator = {reject["locator"]: reject for reject in outcome.rejects}
    assert {locator: reject["rule"] for locator, reject in by_locator.items()} == {
        "line 3": "malformed_json",
        "line 4": "not_object",
        "line 5": "missing_text",
        "line 6": "missing_text",
        "line 7": "missing_text",
        "line 8": "bad_utf8",
    }
    malformed = by_locator["line 3"]
    assert malformed["reason"].startswith("raw/a.jsonl line 3: not valid JSON (")
    assert malformed["reason"].endswith("fix or remove the line")
    assert malformed["excerpt"] == '{"text": "broken",'
    assert "not an object" in by_locator["line 4"]["reason"]
    assert "no 'text' field (fields: body)" in by_locator["line 5"]["reason"]
    assert "'text' is empty" in by_locator["line 6"]["reason"]
    assert "'text' is int, not text" in by_locator["line 7"]["reason"]
    bad = by_locator["line 8"]
    line_8_offset = data.index(b'{"text": "caf\xe9"}')
    assert f"not valid UTF-8 at byte {line_8_offset + 13} of the file (byte 13 of the line)" in bad["reason"]
    assert bad["excerpt"] == '{"text": "caf\ufffd"}'
    for reject in outcome.rejects:
        assert reject["file"] == "raw/a.jsonl"
        assert reject["source"] == "demo"
        assert reject["record_id"] == record_id("demo", "raw/a.jsonl", reject["locator"])
        assert " — " in reject["reason"]


def test_jsonl_record_columns_and_metadata():
    data = _jsonl({"text": "hello", "id": 7, "lang": "en", "nested": {"a": [1, 2]}})
    descriptor = DESCRIPTOR.model_copy(update={"id_field": "id"})
    (record,) = _read("a.jsonl", data, descriptor).records
    assert record == {
        "id": record_id("demo", "a.jsonl", "line 1"),
        "text": "hello",
        "source": "demo",
        "source_uri": "https://example.org/demo",
        "file": "a.jsonl",
        "locator": "line 1",
        "licence": "CC-BY-4.0",
        "jurisdiction": "GR",
        "language_hint": "en",
        "metadata": record["metadata"],
    }
    assert json.loads(record["metadata"]) == {
        "id": 7,
        "lang": "en",
        "nested": {"a": [1, 2]},
        "source_record_id": "7",
    }


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"text": "x", "language": "fr"}, "fr"),
        ({"text": "x", "lang": "de"}, "de"),
        ({"text": "x", "language": "", "lang": "it"}, "it"),
        ({"text": "x"}, "el"),
        ({"text": "x", "language": 3}, "el"),
    ],
)
def test_language_hint_prefers_the_records_own(fields, expected):
    (record,) = _read("a.jsonl", _jsonl(fields)).records
    assert record["language_hint"] == expected


def test_language_hint_is_null_without_any_hint():
    descriptor = DESCRIPTOR.model_copy(update={"language": None})
    (record,) = _read("a.jsonl", _jsonl({"text": "x"}), descriptor).records
    assert record["language_hint"] is None


def test_jsonl_custom_text_field():
    descriptor = DESCRIPTOR.model_copy(update={"text_field": "body"})
    outcome = _read("a.jsonl", _jsonl({"body": "b", "text": "kept as metadata"}, {"text": "t"}), descriptor)
    assert [r["text"] for r in outcome.records] == ["b"]
    assert json.loads(outcome.records[0]["metadata"]) == {"text": "kept as metadata"}
    assert "no 'body' field" in outcome.rejects[0]["reason"]
    assert "set text_field in source.yaml" in outcome.rejects[0]["reason"]


def test_jsonl_with_bom_and_crlf():
    data = b"\xef\xbb\xbf" + b'{"text": "one"}\r\n{"text": "two"}\r\n'
    assert [r["text"] for r in _read("a.jsonl", data).records] == ["one", "two"]


def test_jsonl_without_final_newline():
    assert [r["locator"] for r in _read("a.jsonl", b'{"text": "a"}\n\n{"text": "b"}').records] == [
        "line 1",
        "line 3",
    ]


def test_jsonl_gz():
    data = gzip.compress(_jsonl({"text": "a"}, "nope", {"text": "b"}))
    outcome = _read("part-0.jsonl.gz", data)
    assert [r["text"] for r in outcome.records] == ["a", "b"]
    assert [(r["locator"], r["rule"]) for r in outcome.rejects] == [("line 2", "malformed_json")]


@pytest.mark.parametrize(
    "data",
    [b"this is not gzip at all", gzip.compress(_jsonl({"text": "a" * 5000}))[:40]],
    ids=["not-gzip", "truncated"],
)
def test_corrupt_gzip(data):
    reject = _only_reject(_read("a.jsonl.gz", data))
    assert (reject["rule"], reject["locator"]) == ("corrupt_file", "file")
    assert "not a readable gzip file" in reject["reason"]


def test_gzip_that_expands_past_the_limit():
    data = gzip.compress(_jsonl({"text": "a" * 10_000}))
    reject = _only_reject(_read("a.jsonl.gz", data, max_file_bytes=1000))
    assert reject["rule"] == "file_too_large"


# --- whole-file rejects -----------------------------------------------------------------------------


@pytest.mark.parametrize("relpath", ["a.jsonl", "a.txt", "a.md", "a.html", "a.pdf", "a.parquet"])
@pytest.mark.parametrize("data", [b"", b"  \n\t\r\n"])
def test_empty_file(relpath, data):
    reject = _only_reject(_read(relpath, data))
    assert (reject["rule"], reject["locator"]) == ("empty_file", "file")
    assert "empty" in reject["reason"]


def test_empty_gzip():
    assert _only_reject(_read("a.jsonl.gz", gzip.compress(b"\n\n")))["rule"] == "empty_file"


@pytest.mark.parametrize("relpath", ["a.jsonl", "a.txt"])
def test_byte_order_mark_alone_is_empty(relpath):
    assert _only_reject(_read(relpath, b"\xef\xbb\xbf\n\n"))["rule"] == "empty_file"


def test_text_with_only_unicode_whitespace_is_empty():
    assert _only_reject(_read("a.txt", "\u00a0\u2003\n".encode()))["rule"] == "empty_file"


def test_file_too_large():
    reject = _only_reject(_read("big.txt", b"x" * 101, max_file_bytes=100))
    assert reject["rule"] == "file_too_large"
    assert reject["reason"] == (
        "big.txt: 101 bytes is over the 100-byte limit — split the file or raise max_file_bytes"
    )
    assert reject["excerpt"] is None


@pytest.mark.parametrize(
    "relpath", ["data.csv", "archive.zip", "notes.gz", "README", "x.jsonl.bz2", "a.parquet.gz", "a.pdf.zst"]
)
def test_unsupported_type(relpath):
    reject = _only_reject(_read(relpath, b"a,b\n1,2\n"))
    assert reject["rule"] == "unsupported_type"
    for suffix in (*PLAIN_SUFFIXES, ".gz", ".zst"):
        assert suffix in reject["reason"]


def _zstd(data: bytes) -> bytes:
    return pa.Codec("zstd").compress(data, asbytes=True)


@pytest.mark.parametrize("compress", [gzip.compress, _zstd], ids=["gz", "zst"])
def test_compressed_jsonl_text_markdown_and_html(compress):
    assert set(SUPPORTED_SUFFIXES) >= {".jsonl.zst", ".txt.gz", ".md.zst", ".html.gz", ".htm.zst"}
    ext = ".gz" if compress is gzip.compress else ".zst"
    outcome = _read(f"part.jsonl{ext}", compress(_jsonl({"text": "a"}, "nope")))
    assert [r["text"] for r in outcome.records] == ["a"]
    assert [(r["locator"], r["rule"]) for r in outcome.rejects] == [("line 2", "malformed_json")]
    (record,) = _read(f"notes.txt{ext}", compress("Άρθρο 1\n".encode())).records
    assert record["text"] == "Άρθρο 1\n" and record["file"] == f"notes.txt{ext}"
    assert len(_read(f"README.md{ext}", compress(b"# Title\n\nBody text.\n")).records) == 1
    assert _only_reject(_read(f"a.txt{ext}", compress(b"  \n")))["rule"] == "empty_file"
    reject = _only_reject(_read(f"a.txt{ext}", compress(b"x" * 5000), max_file_bytes=1000))
    assert reject["rule"] == "file_too_large" and "decompresses to over" in reject["reason"]


def test_corrupt_zstd():
    for data in (b"this is not zstd", _zstd(b"a" * 5000)[:8]):
        reject = _only_reject(_read("a.jsonl.zst", data))
        assert (reject["rule"], reject["locator"]) == ("corrupt_file", "file")
        assert "not a readable zstd file" in reject["reason"]


def test_suffix_is_case_insensitive():
    assert len(_read("NOTES.TXT", b"hello").records) == 1


def test_invalid_limit_is_a_config_error():
    with pytest.raises(IngestError, match="max_file_bytes must be positive"):
        read_source_file("a.txt", b"x", DESCRIPTOR, max_file_bytes=0)


# --- text and Markdown ------------------------------------------------------------------------------


@pytest.mark.parametrize("relpath", ["law/n5083.txt", "notes.md"])
def test_text_file_is_one_record(relpath):
    text = "Άρθρο 1\nΣκοπός του παρόντος νόμου.\n"
    (record,) = _read(relpath, b"\xef\xbb\xbf" + text.encode()).records
    assert (record["text"], record["locator"], record["file"]) == (text, "file", relpath)
    assert record["language_hint"] == "el"
    assert json.loads(record["metadata"]) == {}


def test_text_file_with_bad_utf8_is_rejected_whole():
    data = "Άρθρο 1\n".encode() + b"caf\xe9\n"
    reject = _only_reject(_read("law.txt", data))
    assert reject["rule"] == "bad_utf8"
    assert reject["reason"] == "law.txt: not valid UTF-8 at byte 16 — re-encode the file as UTF-8"
    assert reject["excerpt"] == "Άρθρο 1\ncaf\ufffd\n"


def test_bad_utf8_offset_counts_the_bom():
    reject = _only_reject(_read("law.txt", b"\xef\xbb\xbfab\xff"))
    assert "not valid UTF-8 at byte 5 " in reject["reason"]


# --- HTML -------------------------------------------------------------------------------------------

ARTICLE = [
    "The municipal council approved the annual budget after a long public consultation with residents.",
    "Spending on public libraries will rise by twelve percent, while road maintenance funding stays flat.",
    "Residents can read the full budget document at the town hall or request a printed copy by post.",
]
PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Budget 2024 explained</title></head>
<body>
  <nav><ul><li><a href="/">Home</a></li><li><a href="/services">Council services menu</a></li></ul></nav>
  <main><article>
    <h1>Budget 2024 explained</h1>
    {"".join(f"<p>{paragraph}</p>" for paragraph in ARTICLE)}
  </article></main>
  <footer><p>Copyright 2024 Example Town. Cookie policy and privacy statement.</p></footer>
</body></html>"""


@pytest.mark.parametrize("relpath", ["news/budget.html", "budget.htm"])
def test_html_keeps_the_article_and_drops_boilerplate(relpath):
    (record,) = _read(relpath, PAGE.encode()).records
    for paragraph in ARTICLE:
        assert paragraph in record["text"]
    for boilerplate in ("Council services menu", "Cookie policy", "<p>"):
        assert boilerplate not in record["text"]
    assert record["locator"] == "file"
    assert json.loads(record["metadata"]) == {"title": "Budget 2024 explained"}


def test_html_without_main_text():
    page = (
        b'<html><head><title>Menu</title></head><body><nav><ul><li><a href="/">Home</a></li>'
        b'<li><a href="/a">About us</a></li></ul></nav><footer>Copyright 2024</footer></body></html>'
    )
    reject = _only_reject(_read("menu.html", page))
    assert reject["rule"] == "no_text"
    assert "land the article text" in reject["reason"]
    assert reject["excerpt"].startswith("<html>")


def test_html_with_bad_utf8():
    assert _only_reject(_read("a.html", PAGE.encode() + b"\xff"))["rule"] == "bad_utf8"


# --- PDF --------------------------------------------------------------------------------------------


def test_pdf_helper_makes_a_pdf_pypdf_reads():
    reader = pypdf.PdfReader(io.BytesIO(make_pdf(["Hello PDF (one)"])))
    assert reader.pages[0].extract_text() == "Hello PDF (one)"


def test_pdf_pages_are_joined():
    pages = ["First page of the circular.", "Second page, with the annex.", "Third page."]
    (record,) = _read("circular.pdf", make_pdf(pages)).records
    assert record["text"] == "\n\n".join(pages)
    assert record["locator"] == "pages 1-3"
    assert json.loads(record["metadata"]) == {"pages": 3}


def test_pdf_without_text_needs_ocr():
    reject = _only_reject(_read("scan.pdf", make_pdf([None, None])))
    assert reject["rule"] == "no_text"
    assert "no extractable text in 2 page(s)" in reject["reason"]
    assert "OCR" in reject["reason"]


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.4\nthis is not really a pdf\n", make_pdf(["Some text here"])[:60], b"\x00\x01garbage"],
    ids=["garbage-after-header", "truncated", "binary"],
)
def test_corrupt_pdf(data):
    reject = _only_reject(_read("broken.pdf", data))
    assert reject["rule"] == "corrupt_file"
    assert reject["reason"].startswith("broken.pdf: not a readable PDF (")


def test_password_protected_pdf():
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(make_pdf(["secret text"]))))
    writer.encrypt(user_password="secret", algorithm="AES-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    reject = _only_reject(_read("locked.pdf", buffer.getvalue()))
    assert reject["rule"] == "encrypted"


# --- Parquet ----------------------------------------------------------------------------------------


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def test_parquet_rows_with_extra_columns_in_metadata():
    table = pa.table(
        {
            "text": ["first", None, "third", ""],
            "category": ["a", "b", "c", "d"],
            "score": [1.5, 2.0, 3.25, 4.0],
            "lang": ["en", None, None, None],
        }
    )
    outcome = _read("part-0.parquet", _parquet(table))
    assert outcome.units == 4
    assert [(r["locator"], r["text"], r["language_hint"]) for r in outcome.records] == [
        ("row 1", "first", "en"),
        ("row 3", "third", "el"),
    ]
    assert json.loads(outcome.records[0]["metadata"]) == {"category": "a", "score": 1.5, "lang": "en"}
    assert [(r["locator"], r["rule"]) for r in outcome.rejects] == [
        ("row 2", "missing_text"),
        ("row 4", "missing_text"),
    ]
    assert "'text' is null" in outcome.rejects[0]["reason"]
    assert json.loads(outcome.rejects[0]["excerpt"])["category"] == "b"


def test_parquet_without_text_column():
    reject = _only_reject(_read("a.parquet", _parquet(pa.table({"body": ["x"], "n": [1]}))))
    assert (reject["rule"], reject["locator"]) == ("missing_text", "file")
    assert "no column 'text' (columns: body, n)" in reject["reason"]


def test_parquet_with_non_text_column():
    reject = _only_reject(_read("a.parquet", _parquet(pa.table({"text": [1, 2]}))))
    assert reject["rule"] == "missing_text"
    assert "column 'text' is int64, not text" in reject["reason"]


def test_parquet_with_large_string_column():
    table = pa.table({"text": pa.array(["x"], type=pa.large_string())})
    assert len(_read("a.parquet", _parquet(table)).records) == 1


def test_parquet_without_rows():
    table = pa.table({"text": pa.array([], type=pa.string())})
    assert _only_reject(_read("a.parquet", _parquet(table)))["rule"] == "empty_file"


@pytest.mark.parametrize(
    "data",
    [b"PAR1 not really parquet PAR1", _parquet(pa.table({"text": ["x" * 100]}))[:-30]],
    ids=["garbage", "truncated"],
)
def test_corrupt_parquet(data):
    reject = _only_reject(_read("a.parquet", data))
    assert reject["rule"] == "corrupt_file"
    assert "not a readable Parquet file" in reject["reason"]


# --- iterating over a source -------------------------------------------------------------------------


def test_iter_source_files_loads_lazily_and_skips_the_descriptor():
    loaded: list[str] = []

    def loader(relpath: str, data: bytes):
        def load() -> bytes:
            loaded.append(relpath)
            return data

        return load

    def never_load() -> bytes:
        raise AssertionError("a file rejected on size or type must not be read")

    files = [
        ("source.yaml", never_load),
        ("a.txt", loader("a.txt", b"alpha")),
        ("huge.jsonl", never_load, 10_000),
        ("sheet.xlsx", never_load, 10),
        ("b.jsonl", loader("b.jsonl", _jsonl({"text": "beta"})), 16),
    ]
    outcomes = iter_source_files(files, DESCRIPTOR, max_file_bytes=1000)
    assert loaded == []
    first = next(outcomes)
    assert (first.file, loaded) == ("a.txt", ["a.txt"])
    rest = list(outcomes)
    assert [o.file for o in rest] == ["huge.jsonl", "sheet.xlsx", "b.jsonl"]
    assert [o.rejects[0]["rule"] for o in rest[:2]] == ["file_too_large", "unsupported_type"]
    assert loaded == ["a.txt", "b.jsonl"]


def test_summarize():
    outcomes = [
        _read("a.jsonl", _jsonl({"text": "a"}, "bad", "[1]", {"text": "b"})),
        _read("b.txt", b""),
        _read("c.txt", b"c"),
    ]
    assert summarize(outcomes) == {
        "files": 3,
        "units": 6,
        "kept": 3,
        "rejected": 3,
        "rejects_by_rule": {"empty_file": 1, "malformed_json": 1, "not_object": 1},
    }


def test_record_id_is_stable_and_separates_its_parts():
    expected = hashlib.sha256(b"demo\x00a.jsonl\x00line 1").hexdigest()[:32]
    assert record_id("demo", "a.jsonl", "line 1") == expected
    assert record_id("ab", "c", "d") != record_id("a", "bc", "d")


# --- property: every non-blank line is one unit, every good line is kept --------------------------------

_GOOD_TEXT = st.text(min_size=1, max_size=30).filter(lambda text: text.strip() != "")
_LINE = st.one_of(
    _GOOD_TEXT.map(lambda text: ("good", json.dumps({"text": text}, ensure_ascii=False).encode())),
    st.sampled_from([b"", b"   ", b"\t", b"\r"]).map(lambda raw: ("blank", raw)),
    st.sampled_from(
        [b"{not json", b"[1, 2]", b'"just a string"', b'{"txt": "x"}', b'{"text": ""}', b'{"text": null}']
    ).map(lambda raw: ("bad", raw)),
    st.sampled_from([b'{"text": "\xff"}', b"\xc3\x28", b'{"text": "ok\xe2\x82"}']).map(lambda raw: ("bad", raw)),
)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_LINE, max_size=40), trailing_newline=st.booleans())
def test_jsonl_units_invariant(lines, trailing_newline):
    data = b"\n".join(raw for _, raw in lines) + (b"\n" if trailing_newline else b"")
    outcome = read_source_file("p.jsonl", data, DESCRIPTOR)
    if all(kind == "blank" for kind, _ in lines):
        assert [r["rule"] for r in outcome.rejects] == ["empty_file"]
        assert (outcome.units, outcome.records) == (1, [])
        return
    expected_good = [
        (f"line {number}", json.loads(raw)["text"])
        for number, (kind, raw) in enumerate(lines, start=1)
        if kind == "good"
    ]
    assert outcome.units == len(outcome.records) + len(outcome.rejects)
    assert outcome.units == sum(kind != "blank" for kind, _ in lines)
    assert [(r["locator"], r["text"]) for r in outcome.records] == expected_good
    ids = [r["id"] for r in outcome.records] + [r["record_id"] for r in outcome.rejects]
    assert len(set(ids)) == len(ids)
    assert read_source_file("p.jsonl", data, DESCRIPTOR) == outcome
