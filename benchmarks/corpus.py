"""Deterministic real-text corpus for the benchmarks, plus duplicate injection with recorded ground truth.

Sources (read-only; nothing is downloaded):
  * ../shared/data: greek_laws (laws cut at blank lines into ~8 KB docs), udhr2 (one translation per doc),
    banking77 (40 queries per doc), langid_tatoeba (50 sentences per doc).
  * this machine: /usr/share/man/**/*.gz (roff, unzipped, markup stripped) and /usr/share/doc/** (plain
    files and unzipped .gz: changelogs, READMEs, copyright notices, the latter full of natural duplicates).
The docs are drawn round-robin by bytes from the sources (so any size is a mix), cut to at most 256 KB at
paragraph breaks, and shuffled with `seed`. The same arguments give the same docs on the same machine.

    from benchmarks.corpus import build_corpus, inject_duplicates
    docs = build_corpus(100, seed=1)                      # [{"id", "text", "source"}], ~100 MB of UTF-8
    docs, truth = inject_duplicates(docs, seed=1)         # + exact and near copies, truth with Jaccard
"""

from __future__ import annotations

import csv
import gzip
import os
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
MAX_DOC_BYTES = 256 * 1024
PARAGRAPH_BREAK = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")
WORD = re.compile(r"\w+")

Doc = dict[str, str]


def _chunks(text: str, limit: int) -> Iterator[str]:
    """Consecutive paragraphs joined up to `limit` bytes; a longer paragraph is cut at line breaks."""
    parts: list[str] = []
    size = 0
    for paragraph in PARAGRAPH_BREAK.split(text):
        pieces = [paragraph]
        if len(paragraph.encode("utf-8")) > limit:
            lines = paragraph.split("\n")
            step = max(1, len(lines) * limit // len(paragraph.encode("utf-8")))
            pieces = ["\n".join(lines[i : i + step]) for i in range(0, len(lines), step)]
        for piece in pieces:
            if parts and size + len(piece) > limit:
                yield "\n\n".join(parts)
                parts, size = [], 0
            parts.append(piece)
            size += len(piece.encode("utf-8")) + 2
    if parts:
        yield "\n\n".join(parts)


def _lines_grouped(path: Path, per_doc: int) -> Iterator[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    for i in range(0, len(lines), per_doc):
        yield "\n".join(lines[i : i + per_doc])


def greek_laws(data: Path) -> Iterator[tuple[str, str]]:
    for path in sorted((data / "greek_laws").rglob("*.txt")):
        if path.name in {"contents.txt"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for k, chunk in enumerate(_chunks(text, 8 * 1024)):
            yield f"greek_laws/{path.stem}/{k}", chunk


def udhr(data: Path) -> Iterator[tuple[str, str]]:
    for path in sorted((data / "udhr" / "udhr2").glob("*.txt")):
        yield f"udhr/{path.stem}", path.read_text(encoding="utf-8", errors="replace")


def banking77(data: Path) -> Iterator[tuple[str, str]]:
    for path in sorted((data / "banking77").rglob("*.csv")):
        with path.open(encoding="utf-8", newline="") as handle:
            queries = [row["text"] for row in csv.DictReader(handle) if row.get("text")]
        for i in range(0, len(queries), 40):
            yield f"banking77/{path.stem}/{i // 40}", "\n".join(queries[i : i + 40])


def tatoeba(data: Path) -> Iterator[tuple[str, str]]:
    for path in sorted((data / "langid_tatoeba").rglob("tatoeba.*")):
        for k, doc in enumerate(_lines_grouped(path, 50)):
            yield f"tatoeba/{path.name}/{k}", doc


_ROFF_COMMENT = re.compile(r'^\.\s*\\".*$|^\'\\".*$', re.MULTILINE)
_ROFF_LAYOUT = re.compile(
    r"^[.'][ \t]*(?:RS|RE|PD|sp|in|ti|br|ne|nf|fi|ad|na|hy|nh|ft|ps|vs|ll|ta|bp|ce|so|de|ds|nr|ie|el|if|TH)\b.*$\n?",
    re.MULTILINE,
)
_ROFF_REQUEST = re.compile(r"^[.'][ \t]*[A-Za-z]{1,3}\b[ \t]*", re.MULTILINE)
_ROFF_FONT = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)")
_ROFF_CHAR = re.compile(r"\\(?:\(..|\[[^\]]*\]|[-&e|^0 ])")


def roff_to_text(roff: str) -> str:
    """Man-page source to readable text: comments dropped, request names removed, escapes simplified."""
    text = _ROFF_COMMENT.sub("", roff)
    text = _ROFF_LAYOUT.sub("", text)
    text = _ROFF_REQUEST.sub("", text)
    text = _ROFF_FONT.sub("", text)
    text = _ROFF_CHAR.sub(lambda m: "-" if m.group(0) == r"\-" else " ", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _files(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if not path.is_symlink() and path.is_file():
                yield path


def _read_text(path: Path) -> str | None:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError):
        return None
    if b"\0" in raw[:4096]:
        return None
    return raw.decode("utf-8", errors="replace")


def man_pages(root: Path = Path("/usr/share/man")) -> Iterator[tuple[str, str]]:
    for path in _files(root):
        if path.suffix != ".gz":
            continue
        text = _read_text(path)
        if text:
            for k, chunk in enumerate(_chunks(roff_to_text(text), MAX_DOC_BYTES)):
                yield f"man/{path.relative_to(root)}/{k}", chunk


def usr_share_doc(root: Path = Path("/usr/share/doc")) -> Iterator[tuple[str, str]]:
    for path in _files(root):
        text = _read_text(path)
        if text and text.strip():
            for k, chunk in enumerate(_chunks(text, MAX_DOC_BYTES)):
                yield f"doc/{path.relative_to(root)}/{k}", chunk


def build_corpus(target_mb: float, seed: int, data: Path = DATA) -> list[Doc]:
    """About `target_mb` MB (UTF-8) of real documents, mixed by bytes across sources, shuffled by `seed`.
    Stops short (with what exists) when this machine has less text than asked for."""
    sources: dict[str, Iterator[tuple[str, str]]] = {
        "greek_laws": greek_laws(data),
        "udhr": udhr(data),
        "banking77": banking77(data),
        "tatoeba": tatoeba(data),
        "man": man_pages(),
        "doc": usr_share_doc(),
    }
    taken = dict.fromkeys(sources, 0)
    target = int(target_mb * 1_000_000)
    docs: list[Doc] = []
    total = 0
    while total < target and sources:
        name = min(sources, key=lambda s: (taken[s], s))
        item = next(sources[name], None)
        if item is None:
            del sources[name]
            continue
        doc_id, text = item
        size = len(text.encode("utf-8"))
        docs.append({"id": doc_id, "text": text, "source": name})
        taken[name] += size
        total += size
    random.Random(seed).shuffle(docs)
    return docs


def corpus_bytes(docs: Sequence[Doc]) -> int:
    return sum(len(d["text"].encode("utf-8")) for d in docs)


# ---------------------------------------------------------------------------------------------------------------
# Ground truth


def shingles(text: str, n: int = 5) -> set[str]:
    """Tool-neutral word n-grams: lowercase `\\w+` runs (a doc shorter than n is one shingle)."""
    words = WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str, n: int = 5) -> float:
    x, y = shingles(a, n), shingles(b, n)
    return len(x & y) / len(x | y) if x or y else 1.0


_TOKEN = re.compile(r"(\s+)")


def edit_words(text: str, rate: float, rng: random.Random, vocabulary: Sequence[str]) -> str:
    """Replace, delete or insert about `rate` of the words (whitespace kept, so the layout survives)."""
    parts = _TOKEN.split(text)
    word_slots = [i for i in range(0, len(parts), 2) if parts[i]]
    edits = max(1, round(rate * len(word_slots)))
    for slot in rng.sample(word_slots, min(edits, len(word_slots))):
        action = rng.random()
        if action < 0.6:
            parts[slot] = rng.choice(vocabulary)
        elif action < 0.8:
            parts[slot] = ""
        else:
            parts[slot] = f"{parts[slot]} {rng.choice(vocabulary)}"
    return "".join(parts)


NEAR_EDIT_RATES = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08)


def inject_duplicates(
    docs: Sequence[Doc],
    *,
    seed: int,
    exact_fraction: float = 0.02,
    near_fraction: float = 0.05,
    edit_rates: Sequence[float] = NEAR_EDIT_RATES,
    min_words: int = 60,
) -> tuple[list[Doc], list[dict[str, Any]]]:
    """Add exact copies and word-edited copies of randomly chosen docs (ids `<orig>#exact` / `<orig>#near<k>`),
    shuffle, and return the docs with the ground truth: one record per injected pair with the edit rate and
    the true word-5-gram Jaccard (`jaccard`)."""
    rng = random.Random(seed)
    eligible = [d for d in docs if len(WORD.findall(d["text"])) >= min_words]
    picks = rng.sample(eligible, min(len(eligible), round((exact_fraction + near_fraction) * len(docs))))
    exact_count = round(len(picks) * exact_fraction / (exact_fraction + near_fraction))
    vocabulary = sorted({w for d in rng.sample(eligible, min(200, len(eligible))) for w in WORD.findall(d["text"])})
    out = list(docs)
    truth: list[dict[str, Any]] = []
    for k, original in enumerate(picks):
        if k < exact_count:
            copy = {"id": f"{original['id']}#exact", "text": original["text"], "source": original["source"]}
            truth.append({"original": original["id"], "duplicate": copy["id"], "kind": "exact", "rate": 0.0})
            truth[-1]["jaccard"] = 1.0
        else:
            rate = edit_rates[k % len(edit_rates)]
            text = edit_words(original["text"], rate, rng, vocabulary)
            copy = {"id": f"{original['id']}#near{k}", "text": text, "source": original["source"]}
            truth.append(
                {
                    "original": original["id"],
                    "duplicate": copy["id"],
                    "kind": "near",
                    "rate": rate,
                    "jaccard": jaccard(original["text"], text),
                }
            )
        out.append(copy)
    rng.shuffle(out)
    return out, truth
