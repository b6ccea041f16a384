"""Rebuild llm_assets/sample_corpus/ from the shared data sets, byte for byte the same every run.

    python scripts/build_sample_corpus.py [DATA_DIR] [--out DIR]

DATA_DIR defaults to ../shared/data beside the checkout. Each source folder is deleted and rewritten;
the corpus README.md is kept (it is written by hand and quotes the counts this script prints).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = REPO / "llm_assets" / "sample_corpus"

# Five 2024 laws on public-sector topics, ~1.2 MB together.
GREEK_LAWS = ("n5082", "n5086", "n5099", "n5107", "n5113")

# The 24 official EU languages: UDHR file (ISO 639-3 + variant) -> ISO 639-1 code.
UDHR_FILES = {
    "bul.txt": "bg",
    "ces.txt": "cs",
    "dan.txt": "da",
    "deu.txt": "de",
    "ell_monotonic.txt": "el",
    "eng.txt": "en",
    "est.txt": "et",
    "fin.txt": "fi",
    "fra.txt": "fr",
    "gle.txt": "ga",
    "hrv.txt": "hr",
    "hun.txt": "hu",
    "ita.txt": "it",
    "lav.txt": "lv",
    "lit.txt": "lt",
    "mlt.txt": "mt",
    "nld.txt": "nl",
    "pol.txt": "pl",
    "por_PT.txt": "pt",
    "ron.txt": "ro",
    "slk.txt": "sk",
    "slv.txt": "sl",
    "spa.txt": "es",
    "swe.txt": "sv",
}

BANKING77_SAMPLE = {"train": 3000, "test": 1000}

DESCRIPTORS: dict[str, dict[str, Any]] = {
    "greek_laws": {
        "title": "Greek laws of 2024 (Government Gazette, ΦΕΚ Α')",
        "licence": "MIT",
        "jurisdiction": "GR",
        "source_uri": "https://github.com/kafidas/just-text/tree/e45dc9e2/2024",
        "language": "el",
        "description": "Official texts of five 2024 Greek laws, one law per file, as published in ΦΕΚ Α'. "
        "Repository licence MIT; official legislative texts are outside copyright (Law 2121/1993 art. 2(5)).",
    },
    "udhr": {
        "title": "Universal Declaration of Human Rights in the 24 official EU languages",
        "licence": "public-domain",
        "jurisdiction": "INT",
        "source_uri": "https://github.com/nltk/nltk_data/blob/5db857e6f7df11eabb5e5665836db9ec8df07e28/"
        "packages/corpora/udhr2.zip",
        "description": "One record per language (field 'language', ISO 639-1); 'udhr_file' names the "
        "udhr2 file it was copied from. Translations of one document: a cross-lingual near-duplicate set.",
    },
    "banking77": {
        "title": "Banking77 intent classification (stratified subset)",
        "licence": "CC-BY-4.0",
        "jurisdiction": "INT",
        "source_uri": "https://github.com/PolyAI-LDN/task-specific-datasets/tree/"
        "57ec275d8078af65b7731c2a98be812d844a6d6b/banking_data",
        "language": "en",
        "description": "Customer-support queries labelled with one of 77 intents ('category'); 'split' is "
        "the upstream split and 'upstream_row' the 1-based data row in that split's CSV. "
        "Casanueva et al. 2020, PolyAI, CC BY 4.0.",
    },
    "uscis_civics": {
        "title": "USCIS civics test: the 100 questions",
        "licence": "public-domain",
        "jurisdiction": "US",
        "source_uri": "https://github.com/bobo333/uscis-quiz/tree/ad45681168ba03d4533b407207b3442d65f85f96",
        "language": "en",
        "description": "Question with its first accepted answer as text; 'answers' keeps all accepted "
        "answers. A work of the US federal government (USCIS), not subject to copyright.",
        "id_field": "id",
    },
}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _write_descriptor(folder: Path) -> None:
    descriptor = {"name": folder.name, **DESCRIPTORS[folder.name]}
    text = yaml.safe_dump(descriptor, sort_keys=False, allow_unicode=True, width=1000)
    (folder / "source.yaml").write_text(text, encoding="utf-8")


def build_greek_laws(data: Path, folder: Path) -> None:
    """Laws copied unchanged (CRLF/CR line ends included): the reader must cope with real files."""
    for law in GREEK_LAWS:
        shutil.copyfile(data / "greek_laws" / f"{law}.txt", folder / f"{law}.txt")


def build_udhr(data: Path, folder: Path) -> None:
    """One JSONL line per language, because a descriptor carries one language and this source has 24."""
    rows = [
        {
            "text": (data / "udhr" / "udhr2" / name).read_text(encoding="utf-8"),
            "language": language,
            "udhr_file": name,
        }
        for name, language in UDHR_FILES.items()
    ]
    _write_jsonl(folder / "udhr.jsonl", rows)


def _hash_order(row: dict[str, Any]) -> bytes:
    return hashlib.sha256(f"{row['split']}\x00{row['upstream_row']}".encode()).digest()


def _stratified(rows: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """`size` rows with each category in its upstream proportion (largest remainder), chosen by hash.

    Hash order rather than a seeded RNG keeps the choice stable across Python versions.
    """
    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row)
    exact = {category: size * len(members) / len(rows) for category, members in by_category.items()}
    quota = {category: int(share) for category, share in exact.items()}
    by_remainder = sorted(exact, key=lambda category: (-(exact[category] - quota[category]), category))
    for category in by_remainder[: size - sum(quota.values())]:
        quota[category] += 1
    chosen = []
    for category, members in by_category.items():
        chosen.extend(sorted(members, key=_hash_order)[: quota[category]])
    return sorted(chosen, key=lambda row: row["upstream_row"])


def build_banking77(data: Path, folder: Path) -> None:
    rows: list[dict[str, Any]] = []
    for split, size in BANKING77_SAMPLE.items():
        with (data / "banking77" / "banking_data" / f"{split}.csv").open(encoding="utf-8", newline="") as f:
            upstream = [
                {"text": line["text"], "category": line["category"], "split": split, "upstream_row": number}
                for number, line in enumerate(csv.DictReader(f), start=1)
            ]
        rows.extend(_stratified(upstream, size))
    _write_jsonl(folder / "banking77.jsonl", rows)


def build_uscis_civics(data: Path, folder: Path) -> None:
    rows = []
    with (data / "uscis_civics" / "uscis_civics_100.jsonl").open(encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            text = f"Question: {item['question']}\nAnswer: {item['answers'][0]}"
            rows.append({"text": text, **item})
    _write_jsonl(folder / "uscis_civics.jsonl", rows)


BUILDERS = {
    "greek_laws": build_greek_laws,
    "udhr": build_udhr,
    "banking77": build_banking77,
    "uscis_civics": build_uscis_civics,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the sample corpus folder")
    args = parser.parse_args()
    total = 0
    for name, build in BUILDERS.items():
        folder = args.out / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        build(args.data, folder)
        _write_descriptor(folder)
        files = sorted(path for path in folder.iterdir() if path.name != "source.yaml")
        size = sum(path.stat().st_size for path in files)
        total += size
        print(f"{name}: {len(files)} file(s), {size:,} bytes")
    print(f"total: {total:,} bytes")


if __name__ == "__main__":
    main()
