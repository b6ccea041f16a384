"""Held-out hygiene: find eval items whose word n-grams also occur in training text, and list the overlaps.

Texts are normalised before n-gramming (NFKD, combining marks dropped, casefold, Unicode-aware word tokens), so a
copy that only changes case, accents or punctuation still matches; Greek all-caps headings match their accented
lower-case form. n defaults to 8, shorter than GPT-3's 13-gram practice, because our items are single sentences:
at 13 most items would be too short to test at all. Items with fewer than n words fall back to an exact
normalised match of the whole item against whole training documents and their lines.

The index keeps one 64-bit blake2b hash per distinct n-gram, mapped to the first training document that had it,
so memory grows with distinct n-grams rather than with corpus text; an overlap names that first document.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_N = 8
_WORD = re.compile(r"[^\W_]+")


def normalise_tokens(text: str) -> list[str]:
    """Word tokens for matching: accents and case folded away, punctuation and underscores dropped."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _WORD.findall(stripped.casefold())


def _hash(tokens: Sequence[str]) -> int:
    return int.from_bytes(hashlib.blake2b(" ".join(tokens).encode(), digest_size=8).digest(), "big")


def _ngrams(tokens: Sequence[str], n: int) -> Iterable[tuple[int, str]]:
    for i in range(len(tokens) - n + 1):
        gram = tokens[i : i + n]
        yield _hash(gram), " ".join(gram)


@dataclass(frozen=True)
class Overlap:
    """One eval item sharing text with one training document: an example n-gram and how many the item shares."""

    item_id: str
    doc_id: str | None
    ngram: str
    count: int


@dataclass
class NgramIndex:
    """Hashes of every word n-gram in the training texts (and of short whole texts), built in one streaming pass."""

    n: int = DEFAULT_N
    doc_ids: list[str] = field(default_factory=list)
    _ngrams: dict[int, int] = field(default_factory=dict)
    _wholes: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n-gram size must be at least 1, got {self.n}")

    @classmethod
    def build(cls, docs: Iterable[tuple[str, str]], n: int = DEFAULT_N) -> NgramIndex:
        """Index (doc_id, text) pairs, e.g. SFT prompts+completions and curated train-split records."""
        index = cls(n=n)
        for doc_id, text in docs:
            index.add(doc_id, text)
        return index

    def add(self, doc_id: str, text: str) -> None:
        doc = len(self.doc_ids)
        self.doc_ids.append(doc_id)
        for line in [text, *text.splitlines()]:
            tokens = normalise_tokens(line)
            if tokens:
                self._wholes.setdefault(_hash(tokens), doc)
        for digest, _ in _ngrams(normalise_tokens(text), self.n):
            self._ngrams.setdefault(digest, doc)

    def __len__(self) -> int:
        """Distinct n-grams indexed, the figure memory grows with."""
        return len(self._ngrams)

    def overlaps_for(self, item_id: str, text: str) -> list[Overlap]:
        """Overlaps of one item, one per training document, biggest first."""
        tokens = normalise_tokens(text)
        if len(tokens) < self.n:
            doc = self._wholes.get(_hash(tokens)) if tokens else None
            return [] if doc is None else [Overlap(item_id, self.doc_ids[doc], " ".join(tokens), 1)]
        shared: Counter[int] = Counter()
        example: dict[int, str] = {}
        for digest, gram in _ngrams(tokens, self.n):
            doc = self._ngrams.get(digest)
            if doc is not None:
                shared[doc] += 1
                example.setdefault(doc, gram)
        ranked = sorted(shared.items(), key=lambda kv: (-kv[1], self.doc_ids[kv[0]]))
        return [Overlap(item_id, self.doc_ids[doc], example[doc], count) for doc, count in ranked]

    def find_overlaps(self, items: Iterable[tuple[str, str]]) -> list[Overlap]:
        """Every overlap of (item_id, text) pairs against the index, in item order."""
        return [overlap for item_id, text in items for overlap in self.overlaps_for(item_id, text)]


def decontaminate(
    items: Iterable[tuple[str, str]], index: NgramIndex
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[Overlap]]:
    """Split (item_id, text) pairs into clean and contaminated, with the overlaps that condemned each.

    For an extractive item pass the question with its blank filled (the source sentence) plus its choices, so
    n-grams spanning the blank count too.
    """
    clean: list[tuple[str, str]] = []
    contaminated: list[tuple[str, str]] = []
    overlaps: list[Overlap] = []
    for item_id, text in items:
        found = index.overlaps_for(item_id, text)
        (contaminated if found else clean).append((item_id, text))
        overlaps.extend(found)
    return clean, contaminated, overlaps
