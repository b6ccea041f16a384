"""PII scanner benchmark: our validated detectors against the usual "blog regexes", in one run.

Builds >= 20 MB of real text (Greek laws, UDHR translations, /usr/share/doc and man pages on this machine),
injects checksum-valid PII of every structured type with recorded ground-truth spans plus look-alike numbers
that must survive (Luhn-invalid cards, mod-97-invalid IBANs, bad AFM/AMKA checksums, invalid SSN areas, octet
256, versions, dates, law references, ISBNs, amounts, budget codes, bare 9/11-digit numbers), then reports per
scanner: throughput (MB/s of UTF-8, one core), recall per type, look-alike survival, and detections on the
original, uninjected corpus. Finally person/location precision and recall of the name dictionaries on
presidio-research's synthetic set (and of Presidio itself when it is installed).

    python benchmarks/bench_pii.py [--mb 24] [--seed 7] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import random
import re
import string
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from faker.providers.address.en_US import Provider as UsAddressProvider

from llm_assets.curation.pii import PII_KINDS, scan_text, scan_texts
from llm_assets.curation.pii.detectors import IBAN_LENGTHS, STRUCTURED_KINDS
from llm_assets.curation.pii.names import NerBackend, dictionaries, presidio_backend

Span = tuple[str, int, int]

# ------------------------------------------------------------------------------------------------ corpus


def iter_corpus(data: Path) -> Iterator[tuple[str, str]]:
    for path in sorted((data / "greek_laws").glob("n*.txt")):
        yield "greek_laws", path.read_text(encoding="utf-8")
    for path in sorted((data / "udhr" / "udhr2").glob("*.txt")):
        yield "udhr", path.read_text(encoding="utf-8", errors="replace")
    docs = sorted(
        p for p in Path("/usr/share/doc").rglob("*") if p.is_file() and p.suffix in ("", ".txt", ".gz", ".md")
    )
    mans = sorted(Path("/usr/share/man").rglob("*.gz"))
    for doc, man in zip(docs, mans, strict=False):  # interleaved, so both sources are in any corpus size
        yield "usr_share_doc", _read_text(doc)
        yield "man", _read_text(man)


def _read_text(path: Path) -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError):
        return ""
    if b"\x00" in raw[:4096]:
        return ""
    return raw.decode("utf-8", errors="replace")


def build_corpus(data: Path, target_mb: float) -> tuple[list[str], list[str], Counter[str]]:
    """~64 KB documents of real prose and their source names, until `target_mb` of UTF-8."""
    docs: list[str] = []
    sources: list[str] = []
    sizes: Counter[str] = Counter()
    total = 0
    for source, text in iter_corpus(data):
        letters = sum(ch.isalpha() for ch in text[:20_000])
        if letters < 0.5 * min(len(text), 20_000):
            continue  # tables of numbers are not prose
        if text.count("Tj\n") + text.count("TJm") > 10:
            continue  # PDF content streams shipped under /usr/share/doc
        # long files become ~64 KB documents, as a shard of real records would hold
        for i in range(0, len(text), 64_000):
            chunk = text[i : i + 64_000]
            docs.append(chunk)
            sources.append(source)
            size = len(chunk.encode("utf-8"))
            sizes[source] += size
            total += size
        if total >= target_mb * 1e6:
            break
    return docs, sources, sizes


# ------------------------------------------------------------------------------------------------ generators


def luhn_complete(payload: str) -> str:
    for check in string.digits:
        digits = payload + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def afm(rng: random.Random) -> str:
    body = str(rng.randint(10_000_000, 99_999_999))
    return body + str(sum(int(d) << (8 - i) for i, d in enumerate(body)) % 11 % 10)


def amka(rng: random.Random) -> str:
    return luhn_complete(
        f"{rng.randint(1, 28):02d}{rng.randint(1, 12):02d}{rng.randint(0, 99):02d}{rng.randint(0, 9999):04d}"
    )


def card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("37", 15), ("6011", 16)])
    digits = luhn_complete(prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1)))
    style = rng.random()
    if length == 15:
        return f"{digits[:4]} {digits[4:10]} {digits[10:]}" if style < 0.5 else digits
    if style < 0.4:
        return " ".join(digits[i : i + 4] for i in range(0, 16, 4))
    if style < 0.7:
        return "-".join(digits[i : i + 4] for i in range(0, 16, 4))
    return digits


def iban(rng: random.Random) -> str:
    country = rng.choice(["GR", "GR", "DE", "FR", "IT", "ES", "NL", "GB", "CY", "BG"])
    length = IBAN_LENGTHS[country]
    alnum = country in ("GB", "NL")
    bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) if alnum else ""
    bban += "".join(rng.choice(string.digits) for _ in range(length - 4 - len(bban)))
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    value = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(value[i : i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.5 else value


def phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            f"+30 69{rng.randint(0, 9)} {d(3)} {d(4)}",
            f"+30 210 {d(7)}",
            f"+30 2310 {d(6)}",
            f"+306{rng.choice('9')}{d(8)}",
            f"69{rng.randint(3, 9)} {d(3)} {d(4)}",
            f"+44 20 {d(4)} {d(4)}",
            f"+44 7700 {d(6)}",
            f"+49 30 {d(8)}",
            f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
            f"({rng.randint(201, 989)}) {rng.randint(201, 989)}-{d(4)}",
            f"{rng.randint(201, 989)}-{rng.randint(201, 989)}-{d(4)}",
            f"+1 {rng.randint(201, 989)} {rng.randint(201, 989)} {d(4)}",
        ]
    )


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    sep = rng.choice("- ")
    return f"{area:03d}{sep}{rng.randint(1, 99):02d}{sep}{rng.randint(1, 9999):04d}"


def email(rng: random.Random) -> str:
    user = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
    domain = rng.choice(["example.gr", "mail.example.com", "gov.gr"])
    return f"{user}.{rng.choice(['k', 'papadopoulou', 'smith'])}@{domain}"


def ip(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return ":".join(f"{rng.randint(0, 0xFFFF):x}" for _ in range(8))
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


# Each positive: (kind, generator, context phrases; "{}" is the value). Context is what real text carries.
POSITIVES: dict[str, tuple[Callable[[random.Random], str], list[str]]] = {
    "email": (email, ["{}", "email: {}", "στείλτε στο {}"]),
    "phone": (phone, ["τηλ. {}", "Tel: {}", "κινητό {}", "{}", "call me at {}"]),
    "credit_card": (card, ["{}", "κάρτα {}", "card number {}"]),
    "iban": (iban, ["IBAN {}", "{}", "λογαριασμός {}"]),
    "us_ssn": (ssn, ["SSN {}", "{}"]),
    "ip_address": (ip, ["{}", "from IP {}"]),
    "gr_afm": (afm, ["ΑΦΜ {}", "Α.Φ.Μ.: {}", "VAT EL{}", "tax id {}"]),
    "gr_amka": (amka, ["ΑΜΚΑ {}", "Α.Μ.Κ.Α. {}", "AMKA: {}"]),
}


def _bump_last(value: str) -> str:
    digits = [i for i, ch in enumerate(value) if ch.isdigit()]
    i = digits[-1]
    return value[:i] + str((int(value[i]) + 1) % 10) + value[i + 1 :]


# Look-alikes: (label, generator) — none of them may be flagged.
LOOK_ALIKES: dict[str, Callable[[random.Random], str]] = {
    "card_luhn_invalid": lambda r: "κάρτα " + _bump_last(card(r)),
    "iban_mod97_invalid": lambda r: "IBAN " + _bump_last(iban(r)),
    "afm_bad_checksum": lambda r: "ΑΦΜ " + _bump_last(afm(r)),
    "amka_bad_checksum": lambda r: "ΑΜΚΑ " + _bump_last(amka(r)),
    "ssn_invalid_area": lambda r: f"{r.choice(['000', '666', f'9{r.randint(10, 99)}'])}-{r.randint(10, 99)}-4321",
    "ipv4_octet_256": lambda r: f"{r.randint(1, 254)}.{r.randint(0, 255)}.256.{r.randint(1, 254)}",
    "version_string": lambda r: f"version {r.randint(1, 9)}.{r.randint(0, 30)}.{r.randint(0, 30)}.{r.randint(0, 99)}",
    "date": lambda r: r.choice([f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/20{r.randint(10, 29)}",
                                f"20{r.randint(10, 29)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
                                f"{r.randint(1, 28)}.{r.randint(1, 12)}.20{r.randint(10, 29)}"]),
    "law_reference": lambda r: r.choice([f"ν. {r.randint(1000, 5200)}/{r.randint(1950, 2024)}",
                                         f"π.δ. {r.randint(1, 200)}/{r.randint(1990, 2024)}",
                                         f"ΦΕΚ Α' {r.randint(1, 300)}/{r.randint(1990, 2024)}"]),
    "isbn": lambda r: f"ISBN 978-{r.randint(0, 9)}-{r.randint(10, 99)}-{r.randint(100000, 999999)}-{r.randint(0, 9)}",
    "amount": lambda r: r.choice([f"€{r.randint(1, 999)}.{r.randint(100, 999)},{r.randint(10, 99)}",
                                  f"{r.randint(1, 999)}.{r.randint(100, 999)}.{r.randint(100, 999)} ευρώ"]),
    "budget_code": lambda r: f"ΑΛΕ {r.choice('12')}{r.randint(100000000, 999999999)}",
    "bare_9_digits_valid_afm": lambda r: f"αριθμός {afm(r)}",
    "bare_11_digits_valid_amka": lambda r: f"κωδικός {amka(r)}",
    "order_number_16_digits": lambda r: "παραγγελία " + _bump_last(luhn_complete(f"4{r.randint(10**13, 10**14 - 1)}")),
}  # fmt: skip


def inject(docs: list[str], rng: random.Random, per_doc: float) -> tuple[list[str], list[list[Span]], list[list[Span]]]:
    """Insert PII and look-alikes at word boundaries; returns texts, truth spans, look-alike spans (value only)."""
    out, truths, alikes = [], [], []
    kinds = list(POSITIVES)
    labels = list(LOOK_ALIKES)
    for doc in docs:
        n = max(1, int(len(doc) / 10_000 * per_doc))
        cuts = sorted({m.start() for m in re.finditer(r"(?<=[^\W\d_][.;,:!?]) | (?=[^\W\d_])", doc)} or {len(doc)})
        chosen = sorted(rng.sample(cuts, min(len(cuts), 2 * n)))
        pieces, truth, alike, pos, length = [], [], [], 0, 0
        for i, cut in enumerate(chosen):
            pieces.append(doc[pos:cut])
            length += cut - pos
            if i % 2 == 0:
                kind = rng.choice(kinds)
                generator, phrases = POSITIVES[kind]
                value = generator(rng)
                phrase = rng.choice(phrases)
                inserted = " " + phrase.format(value) + " "
                target = "EL" + value if "EL{}" in phrase else value  # the VAT prefix belongs to the value
                offset = inserted.index(target)
                truth.append((kind, length + offset, length + offset + len(target)))
            else:
                label = rng.choice(labels)
                inserted = " " + LOOK_ALIKES[label](rng) + " "
                alike.append((label, length + 1, length + len(inserted) - 1))
            pieces.append(inserted)
            length += len(inserted)
            pos = cut
        pieces.append(doc[pos:])
        out.append("".join(pieces))
        truths.append(truth)
        alikes.append(alike)
    return out, truths, alikes


# ------------------------------------------------------------------------------------------------ scanners

BLOG_REGEXES: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}"),
    "phone": re.compile(r"(?:\+?\d{1,3}[-.\s]?)?\(?\d{3}\)?[-.\s]?\d{3}[-.\s]?\d{4}"),
    "credit_card": re.compile(r"\b(?:\d[ -]*?){13,16}\b"),
    "iban": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
    "us_ssn": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "ip_address": re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}"),
    "gr_afm": re.compile(r"\b\d{9}\b"),
    "gr_amka": re.compile(r"\b\d{11}\b"),
}


def scan_ours(text: str) -> list[Span]:
    return [(h.kind, h.start, h.end) for h in scan_text(text, STRUCTURED_KINDS)]


def scan_blog(text: str) -> list[Span]:
    return [(kind, m.start(), m.end()) for kind, rx in BLOG_REGEXES.items() for m in rx.finditer(text)]


def _overlaps(spans: list[Span], kind: str | None, start: int, end: int) -> bool:
    return any((kind is None or k == kind) and s < end and e > start for k, s, e in spans)


@dataclass
class Result:
    mb_s: float
    found: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    survived: Counter[str] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)

    def recall(self, kind: str) -> float:
        return self.found[kind] / max(self.total[kind], 1)

    def survival(self, label: str | None = None) -> float:
        if label is None:
            return sum(self.survived.values()) / max(sum(self.seen.values()), 1)
        return self.survived[label] / max(self.seen[label], 1)


def evaluate(
    scan: Callable[[str], list[Span]], texts: list[str], truths: list[list[Span]], alikes: list[list[Span]]
) -> Result:
    size = sum(len(t.encode("utf-8")) for t in texts)
    started = time.perf_counter()
    results = [scan(t) for t in texts]
    result = Result(mb_s=size / 1e6 / (time.perf_counter() - started))
    for spans, truth, alike in zip(results, truths, alikes, strict=True):
        for kind, start, end in truth:
            result.total[kind] += 1
            result.found[kind] += _overlaps(spans, kind, start, end)
        for label, start, end in alike:
            result.seen[label] += 1
            result.survived[label] += not _overlaps(spans, None, start, end)
    return result


def _throughput(texts: list[str], scan: Callable[[str], object]) -> float:
    started = time.perf_counter()
    for text in texts:
        scan(text)
    return sum(len(t.encode("utf-8")) for t in texts) / 1e6 / (time.perf_counter() - started)


def count_detections(scan: Callable[[str], list[Span]], texts: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(kind for kind, _, _ in scan(text))
    return counts


# ------------------------------------------------------------------------------------------------ names


def presidio_structured() -> tuple[NerBackend | None, str]:
    """Presidio with an installed spaCy model, else with a blank pipeline (its pattern recognizers still run)."""
    backend = presidio_backend()
    if backend is not None:
        return backend, "presidio (spaCy en_core_web_lg)"
    try:
        import spacy
    except ImportError:
        return None, "presidio_analyzer/spaCy not importable"
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)  # it tries the network for the suffix list
    path = tempfile.mkdtemp(prefix="blank_en_")
    spacy.blank("en").to_disk(path)
    backend = presidio_backend("en", path, min_score=0.0)
    return backend, "presidio pattern recognizers (blank spaCy pipeline, no NER)"


def presidio_compare(
    backend: NerBackend, label: str, data: Path, texts: list[str], truths: list[list[Span]], alikes: list[list[Span]]
) -> None:
    def scan(text: str) -> list[Span]:
        return [(k, s, e) for k, s, e, _, _ in backend.analyze(text, frozenset(STRUCTURED_KINDS))]

    print(f"\n{label} on the first {sum(len(t.encode()) for t in texts) / 1e6:.1f} MB of the injected corpus")
    results = {name: evaluate(fn, texts, truths, alikes) for name, fn in (("ours", scan_ours), ("presidio", scan))}
    print(f"{'':36s}{'ours':>12s}{'presidio':>12s}")
    print(f"{'throughput MB/s':36s}{results['ours'].mb_s:12.1f}{results['presidio'].mb_s:12.2f}")
    for kind in STRUCTURED_KINDS:
        print(f"   recall {kind:26s}{results['ours'].recall(kind):12.3f}{results['presidio'].recall(kind):12.3f}")
    print(f"   {'look-alike survival':33s}{results['ours'].survival():12.3f}{results['presidio'].survival():12.3f}")
    path = data / "pii_presidio_synth" / "synth_dataset_v2.json"
    if path.is_file():
        records = json.loads(path.read_text(encoding="utf-8"))
        labels = {"CREDIT_CARD": "credit_card", "EMAIL_ADDRESS": "email", "IBAN_CODE": "iban", "US_SSN": "us_ssn",
                  "IP_ADDRESS": "ip_address", "PHONE_NUMBER": "phone"}  # fmt: skip
        gold = [[(labels[s["entity_type"]], s["start_position"], s["end_position"]) for s in r["spans"]
                 if s["entity_type"] in labels] for r in records]  # fmt: skip
        synth = {name: evaluate(fn, [r["full_text"] for r in records], gold, [[] for _ in records])
                 for name, fn in (("ours", scan_ours), ("presidio", scan))}  # fmt: skip
        print("recall on presidio-research synth_dataset_v2 (structured types)")
        for kind in labels.values():
            print(f"   {kind:33s}{synth['ours'].recall(kind):12.3f}{synth['presidio'].recall(kind):12.3f}")


def names_eval(data: Path) -> None:
    path = data / "pii_presidio_synth" / "synth_dataset_v2.json"
    if not path.is_file():
        print(f"\nnames: {path} not found, skipped")
        return
    records = json.loads(path.read_text(encoding="utf-8"))
    countries = {c.lower() for c in UsAddressProvider.countries}
    scanners: list[tuple[str, Callable[[str], list[Span]]]] = [
        ("dictionaries", lambda t: [(h.kind, h.start, h.end) for h in scan_text(t, ["person", "location"])])
    ]
    backend = presidio_backend()
    if backend is None:
        print("\nPresidio names: presidio_analyzer with a spaCy NER model is not installed here, not compared")
    else:
        scanners.append(
            (
                "presidio",
                lambda t: [(k, s, e) for k, s, e, _, _ in backend.analyze(t, frozenset({"person", "location"}))],
            )
        )
    subsets: dict[str, Callable[[dict[str, object]], bool]] = {
        "PERSON (all labels)": lambda s: s["entity_type"] == "PERSON",
        "PERSON (>= 2 capitalised words)": lambda s: s["entity_type"] == "PERSON"
        and len(str(s["entity_value"]).split()) >= 2 and str(s["entity_value"])[0].isupper(),
        "GPE (all labels)": lambda s: s["entity_type"] == "GPE",
        "GPE (not a country)": lambda s: s["entity_type"] == "GPE" and str(s["entity_value"]).lower() not in countries,
        "STREET_ADDRESS": lambda s: s["entity_type"] == "STREET_ADDRESS",
    }  # fmt: skip
    kind_of = {"PERSON": "person", "GPE": "location", "STREET_ADDRESS": "location"}
    print(f"{'names on presidio synth':34s}" + "".join(f"{n:>28s}" for n, _ in scanners))
    for name, scan in scanners:
        results = [scan(r["full_text"]) for r in records]
        scanner_rows = []
        for label, keep in subsets.items():
            found = total = 0
            for record, spans in zip(records, results, strict=True):
                for s in record["spans"]:
                    if keep(s):
                        total += 1
                        found += _overlaps(spans, kind_of[s["entity_type"]], s["start_position"], s["end_position"])
            scanner_rows.append((label, found, total))
        for kind, labels in (("person", {"PERSON"}), ("location", {"GPE", "STREET_ADDRESS"})):
            predicted = correct = 0
            for record, spans in zip(records, results, strict=True):
                gold = [(s["start_position"], s["end_position"]) for s in record["spans"] if s["entity_type"] in labels]
                for k, start, end in spans:
                    if k == kind:
                        predicted += 1
                        correct += any(a < end and b > start for a, b in gold)
            scanner_rows.append((f"{kind} precision", correct, predicted))
        print(f"-- {name}")
        for label, hit, total in scanner_rows:
            print(f"   {label:32s} {hit:5d}/{total:<5d} = {hit / max(total, 1):.3f}")


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=24.0, help="corpus size to build, MB of UTF-8")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--per-10k", type=float, default=1.0, help="PII insertions per 10k characters")
    parser.add_argument("--presidio-mb", type=float, default=3.0, help="corpus share scanned by Presidio, if present")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    docs, sources, sizes = build_corpus(args.data, args.mb)
    print(f"corpus: {len(docs)} documents, " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))
    started = time.perf_counter()
    dictionaries()  # built once per process, not part of the timed scans
    print(f"name dictionaries built in {time.perf_counter() - started:.2f} s")

    clean = {name: count_detections(scan, docs) for name, scan in (("ours", scan_ours), ("blog regex", scan_blog))}
    texts, truths, alikes = inject(docs, rng, args.per_10k)
    size = sum(len(t.encode("utf-8")) for t in texts)
    print(f"injected: {sum(map(len, truths))} PII values, {sum(map(len, alikes))} look-alikes; {size / 1e6:.1f} MB")
    ours = evaluate(scan_ours, texts, truths, alikes)
    blog = evaluate(scan_blog, texts, truths, alikes)
    # The scrub stage's path: a batch's numeric and IBAN candidates found in one compiled pass, then the same
    # per-text classification; it must detect exactly what the per-text scan detects.
    batch = 1_000
    scan_texts(texts[:1], STRUCTURED_KINDS)  # loads the compiled scan (numba's cache): start-up, not throughput
    started = time.perf_counter()
    batched = [hits for i in range(0, len(texts), batch) for hits in scan_texts(texts[i : i + batch], STRUCTURED_KINDS)]
    batch_mb_s = size / 1e6 / (time.perf_counter() - started)
    if [[(h.kind, h.start, h.end) for h in hits] for hits in batched] != [scan_ours(t) for t in texts]:
        raise SystemExit("scan_texts and scan_text disagree: the compiled prescan is wrong")
    names_mb_s = _throughput(texts, lambda t: scan_text(t, ["person", "location"]))
    all_mb_s = _throughput(texts, lambda t: scan_text(t, PII_KINDS))
    started = time.perf_counter()
    all_batched = [hits for i in range(0, len(texts), batch) for hits in scan_texts(texts[i : i + batch], PII_KINDS)]
    all_batch_mb_s = size / 1e6 / (time.perf_counter() - started)
    if len(all_batched) != len(texts):
        raise SystemExit("scan_texts lost texts")

    print(f"\n{'':36s}{'ours':>12s}{'blog regex':>12s}{'ratio':>8s}")
    print(f"{'throughput MB/s, structured kinds':36s}{ours.mb_s:12.1f}{blog.mb_s:12.1f}{ours.mb_s / blog.mb_s:8.2f}")
    print(f"{'  the same, batches (scrub path)':36s}{batch_mb_s:12.1f}{'':12s}{batch_mb_s / blog.mb_s:8.2f}")
    print(f"{'throughput MB/s, person+location':36s}{names_mb_s:12.1f}")
    print(f"{'throughput MB/s, all ten kinds':36s}{all_mb_s:12.1f}")
    print(f"{'  the same, batches (scrub path)':36s}{all_batch_mb_s:12.1f}")
    for source in sizes:
        part = [t for t, s in zip(texts, sources, strict=True) if s == source]
        a, b = _throughput(part, scan_ours), _throughput(part, scan_blog)
        print(f"{'   structured, ' + source:36s}{a:12.1f}{b:12.1f}{a / b:8.2f}")
    print("recall per type")
    for kind in STRUCTURED_KINDS:
        a, b = ours.recall(kind), blog.recall(kind)
        print(f"   {kind:33s}{a:12.3f}{b:12.3f}{a / b if b else float('inf'):8.2f}   n={ours.total[kind]}")
    print("look-alike survival (share not flagged)")
    for label in LOOK_ALIKES:
        print(f"   {label:33s}{ours.survival(label):12.3f}{blog.survival(label):12.3f}{'':8s}   n={ours.seen[label]}")
    a, b = ours.survival(), blog.survival()
    print(f"   {'ALL look-alikes':33s}{a:12.3f}{b:12.3f}{a / max(b, 1e-9):8.2f}   n={sum(ours.seen.values())}")
    print("detections on the original corpus (before injection; real e-mails/IPs in man pages are true hits)")
    for kind in STRUCTURED_KINDS:
        print(f"   {kind:33s}{clean['ours'][kind]:12d}{clean['blog regex'][kind]:12d}")
    backend, label = presidio_structured()
    if backend is None:
        print(f"\nPresidio: {label}; not compared")
    else:
        subset, size = 0, 0
        while subset < len(texts) and size < args.presidio_mb * 1e6:
            size += len(texts[subset].encode("utf-8"))
            subset += 1
        presidio_compare(backend, label, args.data, texts[:subset], truths[:subset], alikes[:subset])
    names_eval(args.data)


if __name__ == "__main__":
    main()
