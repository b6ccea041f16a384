"""Exact, near (MinHash LSH) and paragraph-level deduplication that says which copy was kept and why.

Two passes over the shards, so no text is held in memory between them:

1. `DedupIndex.add_batch` per shard stores, per document, only its id, length, partition, keep-rule key,
   a SHA-256 of the normalised text, a MinHash signature and 8-byte hashes of its paragraphs.
2. `DedupIndex.resolve` sorts every document by one total order (the keep rule, then the id) and decides:
   exact groups keep their first member; near duplicates are clustered greedily in that order (a document
   joins the first kept document it is verified against, so every dropped document names a kept one it is
   at least `threshold` similar to, never a chain); paragraphs are owned by the first kept document that
   has them. The result, a `DedupPlan`, depends only on the documents and the config, never on partition
   order, batch boundaries or worker count.
3. `apply_plan` per shard rejects what the plan drops and removes owned-elsewhere paragraphs (one event per
   paragraph, naming the kept doc that owns it). A doc left without any paragraph of its own is rejected,
   unless it is the kept copy of a duplicate cluster: it then stays whole, so every reject names a survivor.

Incremental: `freeze()` serialises the survivors (Arrow IPC, deterministic bytes); `from_frozen()` plus new
batches and `resolve(incremental=True)` never drops a frozen doc, and a new doc duplicating one is dropped in
its favour whatever the keep rule. Stored hashes depend only on `DedupConfig.signature_params()` (which
includes this Python's Unicode version), and a frozen index refuses a config that would hash differently.

Near-duplicate similarity is the MinHash estimate (128 permutations: about +-0.035 at J = 0.8); candidate
pairs whose estimate lies within `exact_band` of the threshold are settled on exact shingle sets when the
extra read pass (`verification_ids` / `add_shingle_sets`) is run, so no pair is merged below the threshold
on chance. `stats` and the cluster table say which similarities are exact.

Normalisation (internal): lowercase (`str.lower`), every run of punctuation, symbols, separators and control
characters except "_" becomes one space, trimmed: words are what regex `\\w+` finds, plus combining marks.
It runs on the UTF-8 bytes of the Arrow column, not on a Python string per document. The exact key is the
SHA-256 of the normalised text as UTF-8, so
`hashlib.sha256(normalize([t])[0].encode()).digest() == exact_keys([t])[0]`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, TypeAlias

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm_assets.curation.stage import StageOutput, empty_rejects, reject_rows

STAGE = "dedup"
FORMAT_VERSION = 1
NORMALISATION_VERSION = 2
PARAGRAPH_HASH = "fnv1a64-splitmix"  # indexes frozen before (blake2b, 8 bytes) are refused, not silently mixed

KeepRule = Literal["longest", "oldest", "highest_quality", "first_id"]

# Paragraphs are separated by one or more blank lines (lines holding only ASCII blanks). ASCII classes only,
# so the split is the same everywhere it is computed.
PARAGRAPH_SEPARATOR = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")

_U64 = np.uint64
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
_POLY_BASE = 0x9E3779B97F4A7C15  # odd, so invertible mod 2**64


_SHINGLE_BLOCK = 1 << 18  # shingles per MinHash block: the working set stays in cache
_DOC_BLOCK_BYTES = 1 << 20  # text bytes analysed at once: bounds memory, and temporaries stay in cache


class DedupConfig(BaseModel):
    """How documents are compared and which copy survives. Fails at construction on inconsistent values."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = True
    near: bool = True
    ngram: Literal["word", "char"] = "word"
    ngram_size: int = Field(default=5, ge=1, le=32)
    num_perm: int = Field(default=128, ge=2, le=1024)
    threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    bands: int | None = Field(default=None, ge=1, description="LSH bands; derived from threshold when unset")
    rows: int | None = Field(default=None, ge=1, description="LSH rows per band; bands * rows == num_perm")
    verify_candidates: bool = True
    exact_band: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="candidate pairs whose estimate is this close to the threshold are decided on exact shingle "
        "sets when an extra pass supplied them (DedupIndex.verification_ids / add_shingle_sets)",
    )
    keep_rule: KeepRule = "longest"
    paragraph_level: bool = True
    paragraph_min_words: int = Field(
        default=5, ge=1, description="shorter paragraphs (headings like 'Article 2') are never removed"
    )
    seed: int = Field(default=1, ge=0, lt=2**32)
    max_bucket_pairs: int = Field(
        default=64, ge=2, description="in an LSH bucket larger than this, only its first members are compared"
    )

    @model_validator(mode="after")
    def _derive_bands(self) -> DedupConfig:
        if self.bands is None and self.rows is None:
            # With verification the S-curve's false positives are removed afterwards; misses are final.
            weight = 0.8 if self.verify_candidates else 0.5
            self.bands, self.rows = optimal_bands(self.threshold, self.num_perm, false_negative_weight=weight)
        elif self.bands is None or self.rows is None or self.bands * self.rows != self.num_perm:
            raise ValueError(
                f"bands={self.bands} x rows={self.rows} must equal num_perm={self.num_perm}; "
                "set both or neither (then they are derived from threshold)"
            )
        return self

    def signature_params(self) -> dict[str, Any]:
        """What the stored hashes depend on: a frozen index only accepts new documents hashed the same way."""
        keys = ("near", "paragraph_level", "ngram", "ngram_size", "num_perm", "seed", "paragraph_min_words")
        # Lowercasing and the separator classes follow this Python's Unicode database; "normalisation" 2
        # keeps "_" inside words (as regex \w does).
        return {
            **{k: getattr(self, k) for k in keys},
            "unicode": unicodedata.unidata_version,
            "normalisation": NORMALISATION_VERSION,
            "paragraph_hash": PARAGRAPH_HASH,
        }


def optimal_bands(threshold: float, num_perm: int, *, false_negative_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands * rows == num_perm minimising the weighted false-positive plus false-negative
    area of the LSH S-curve around `threshold` (datasketch's `_optimal_param`, restricted to exact
    factorisations). For 0.8 and 128: (8, 16) at equal weights, (16, 8) when misses weigh 0.8."""
    grid = np.linspace(0.0, 1.0, 2001)
    best: tuple[float, int, int] | None = None
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        prob = 1.0 - (1.0 - grid**rows) ** bands
        below, above = grid <= threshold, grid >= threshold
        false_pos = np.trapezoid(prob[below], grid[below])
        false_neg = np.trapezoid(1.0 - prob[above], grid[above])
        error = float((1.0 - false_negative_weight) * false_pos + false_negative_weight * false_neg)
        if best is None or error < best[0]:
            best = (error, bands, rows)
    assert best is not None
    return best[1], best[2]


# ---------------------------------------------------------------------------------------------------------------
# Normalisation and hashing, vectorised over a batch


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise (uint64 arithmetic wraps)."""
    z = z ^ (z >> _U64(30))
    z *= _MIX1
    z ^= z >> _U64(27)
    z *= _MIX2
    z ^= z >> _U64(31)
    return z


def _splitmix64(seed: int, count: int) -> np.ndarray:
    """`count` pseudo-random 64-bit words from `seed`: defined here, so stored hashes never depend on the
    random-number streams of a numpy version."""
    state = (np.arange(1, count + 1, dtype=np.uint64) * _U64(0x9E3779B97F4A7C15)) + _U64(seed)
    return _mix64(state)


_NGRAM_MULTIPLIERS = _splitmix64(0x5EED, 32) | _U64(1)
_powers_cache: dict[str, np.ndarray] = {}
_HASH_SPAN = 1 << 20  # bytes hashed per prefix sum, so the power tables stay at about this size


def _extend_powers(table: np.ndarray | None, base: int, size: int) -> np.ndarray:
    """base**k mod 2**64 for k < size, extending `table` (cumprod wraps exactly, so values never depend on size)."""
    start = 0 if table is None else table.size
    part = np.full(size - start, base, dtype=np.uint64)
    part[0] = 1 if table is None else table[-1] * _U64(base)
    part = np.cumprod(part, dtype=np.uint64)
    return part if table is None else np.concatenate((table, part))


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """base**k and base**-k mod 2**64 for k < n (cached per process)."""
    fwd = _powers_cache.get("fwd")
    if fwd is None or fwd.size < n:
        size = max(n, _HASH_SPAN, 0 if fwd is None else 2 * fwd.size)
        _powers_cache["fwd"] = _extend_powers(fwd, _POLY_BASE, size)
        _powers_cache["inv"] = _extend_powers(_powers_cache.get("inv"), pow(_POLY_BASE, -1, 2**64), size)
    return _powers_cache["fwd"][:n], _powers_cache["inv"][:n]


@dataclass
class _Normalised:
    """Normalised UTF-8 of a batch: doc i is buf[starts[i]:starts[i] + lengths[i]]; docs are space-separated."""

    buf: np.ndarray  # uint8
    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64

    def text(self, i: int) -> str:
        return bytes(self.buf[self.starts[i] : self.starts[i] + self.lengths[i]]).decode("utf-8", "surrogatepass")


_Texts: TypeAlias = Sequence[str | None] | pa.Array  # a batch of documents: Python strings or an Arrow string array


def _count_true(mask: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Number of True in mask[starts[i]:ends[i]]: a loop for few long segments, positions for many short."""
    if starts.size * 2048 < mask.size:
        return np.fromiter(
            (np.count_nonzero(mask[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)),
            dtype=np.int64,
            count=starts.size,
        )
    positions = np.flatnonzero(mask)
    return np.searchsorted(positions, ends) - np.searchsorted(positions, starts)


def _ascii_map() -> np.ndarray:
    """Two bytes (one uint16, little-endian) -> two bytes, each: ASCII letters lowercased, [0-9a-z_] and bytes
    of multi-byte characters kept, the rest a space. Pairs halve the lookups; the table stays in cache."""
    single = np.full(256, 0x20, dtype=np.uint16)
    for byte in range(256):
        char = chr(byte)
        if byte >= 0x80 or char.isdigit() or char == "_" or "a" <= char.lower() <= "z":
            single[byte] = ord(char.lower()) if byte < 0x80 else byte
    pairs = np.arange(1 << 16, dtype=np.uint32)
    return (single[pairs & 0xFF] | (single[pairs >> 8] << 8)).astype("<u2")


_ASCII_MAP = _ascii_map()
_ASCII_SINGLE = (_ASCII_MAP[:256] & 0xFF).astype(np.uint8)  # pairs (0, b) -> b's mapping in the low byte
_SIGMA, _FINAL_SIGMA, _MEDIAL_SIGMA = 0x3A3, 0x3C2, 0x3C3
_OTHER, _CASED, _IGNORABLE = 0, 1, 2  # a character's part in the final-sigma rule


class _CodePoints:
    """What normalisation needs to know per code point, learnt from `unicodedata` and `str.lower` (the basic
    multilingual plane at construction, other planes the first time one of their code points is seen):
    `lower` is the lowercase code point when lowercasing keeps it one character of the same UTF-8 length
    (capital sigma: medial sigma, corrected by `_sigma_forms`); `separator` whether that lowercase character
    separates words (categories P*, S*, Z*, Cc, Cf, Cs, except "_", which is a word character as in `\\w`);
    `special` whether a doc holding it must be lowercased by `str.lower` (a mapping to several characters
    or another UTF-8 length); `sigma` its part in the final-sigma rule, probed through `str.lower` itself."""

    LIMIT = 0x110000

    def __init__(self) -> None:
        self.known = np.zeros(self.LIMIT, dtype=bool)
        self.separator = np.zeros(self.LIMIT, dtype=bool)
        self.special = np.zeros(self.LIMIT, dtype=bool)
        self.sigma = np.zeros(self.LIMIT, dtype=np.uint8)
        self.lower = np.arange(self.LIMIT, dtype=np.uint32)
        # The same in one lookup for the compiled loop: lower | KNOWN | SEPARATOR | SPECIAL (bits 21-23).
        self.packed = np.zeros(self.LIMIT, dtype=np.uint32)
        # The whole basic multilingual plane up front (~60 ms once per process; every single byte value is in
        # it, as the sigma look-around needs): learning scripts as they turn up stopped and restarted the
        # compiled loop once per new script, which cost more than this on a multilingual corpus.
        self.learn(np.arange(0x10000, dtype=np.uint32))

    KNOWN, SEPARATOR, SPECIAL = 1 << 21, 1 << 22, 1 << 23

    def learn(self, cps: np.ndarray) -> None:
        unseen = np.unique(cps[~self.known[cps]])
        for cp in unseen.tolist():
            char = chr(cp)
            low = char.lower() if cp != _SIGMA else chr(_MEDIAL_SIGMA)
            width = len(char.encode("utf-8", "surrogatepass"))
            if len(low) == 1 and len(low.encode("utf-8", "surrogatepass")) == width:
                self.lower[cp] = ord(low)
                category = unicodedata.category(low)
                self.separator[cp] = (category[0] in "PSZ" or category in ("Cc", "Cf", "Cs")) and low != "_"
            else:
                self.special[cp] = True
            if (char + "\u03a3").lower()[-1] == "\u03c2":  # cased, and not skipped as case-ignorable
                self.sigma[cp] = _CASED
            elif ("\u0391" + char + "\u03a3").lower()[-1] == "\u03c2":
                self.sigma[cp] = _IGNORABLE
            self.known[cp] = True
        self.packed[unseen] = (
            self.lower[unseen]
            | self.KNOWN
            | np.where(self.separator[unseen], self.SEPARATOR, 0).astype(np.uint32)
            | np.where(self.special[unseen], self.SPECIAL, 0).astype(np.uint32)
        )


@lru_cache(maxsize=1)
def _code_points() -> _CodePoints:
    return _CodePoints()


def _decode_leads(raw: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions, code points (uint32) and UTF-8 lengths (uint8) of the multi-byte characters in raw[:size]
    (raw is padded with 3 zero bytes). Malformed sequences are skipped: their bytes are kept as they are."""
    lead = np.flatnonzero(raw[:size] >= 0xC0)
    b0, b1 = raw[lead], raw[lead + 1]
    width = (b0 >= 0xE0).view(np.uint8) + (b0 >= 0xF0).view(np.uint8) + np.uint8(2)
    valid = (b1 & np.uint8(0xC0)) == 0x80
    cps = ((b0 & np.uint8(0x1F)).astype(np.uint32) << 6) | (b1 & np.uint8(0x3F))
    longer = np.flatnonzero(width > 2)
    if longer.size:
        at, w = lead[longer], width[longer]
        c0, c1 = b0[longer].astype(np.uint32), cps[longer] & 0x3F
        b2, b3 = raw[at + 2], raw[at + 3]
        four = w == 4
        valid[longer] &= ((b2 & np.uint8(0xC0)) == 0x80) & (~four | ((b3 & np.uint8(0xC0)) == 0x80)) & (c0 < 0xF8)
        three = ((c0 & 0x0F) << 12) | (c1 << 6) | (b2 & np.uint8(0x3F))
        wide = ((c0 & 0x07) << 18) | ((three & 0xFFF) << 6) | (b3 & np.uint8(0x3F))
        cps[longer] = np.where(four, np.minimum(wide, 0x10FFFF), three)
    if not valid.all():
        lead, cps, width = lead[valid], cps[valid], width[valid]
    return lead, cps, width


def _encode_into(out: np.ndarray, at: np.ndarray, cps: np.ndarray, width: np.ndarray) -> None:
    """Write the UTF-8 of `cps` (of byte lengths `width`) at positions `at`."""
    for size, mark in ((2, 0xC0), (3, 0xE0), (4, 0xF0)):
        sel = width == size
        pos, cp = at[sel], cps[sel]
        out[pos] = (mark | (cp >> (6 * (size - 1)))).astype(np.uint8)
        for k in range(1, size):
            out[pos + k] = (0x80 | ((cp >> (6 * (size - 1 - k))) & 0x3F)).astype(np.uint8)


def _joined(pieces: Sequence[bytes | memoryview]) -> tuple[np.ndarray, np.ndarray]:
    """Docs joined with a "\\n" after each (so each non-empty doc's output ends with exactly one space),
    padded with 3 or 4 zero bytes; and where each doc starts."""
    lengths = np.fromiter((len(p) + 1 for p in pieces), dtype=np.int64, count=len(pieces))
    starts = np.zeros(len(pieces), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    joined = b"\n".join([*pieces, b"\0\0\0"])
    # An even length, so that the bytes can be read as uint16 pairs.
    raw = np.frombuffer(joined if len(joined) % 2 == 0 else joined + b"\0", dtype=np.uint8)
    return raw, starts


def _arrow_pieces(texts: pa.Array) -> list[bytes | memoryview]:
    """Zero-copy views of each string of a (large_)string array; null is empty."""
    texts = pc.fill_null(texts, "") if texts.null_count else texts
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        texts = texts.cast(pa.large_string())
    width = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    offsets = np.frombuffer(texts.buffers()[1], dtype=width)[texts.offset : texts.offset + len(texts) + 1]
    data = texts.buffers()[2]
    view = memoryview(data) if data is not None else memoryview(b"")
    bounds = offsets.tolist()
    return [view[a:b] for a, b in itertools.pairwise(bounds)]


def _sigma_forms(raw: np.ndarray, lead: np.ndarray, cps: np.ndarray, width: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The form `str.lower` gives each capital sigma (rows `at` of `lead`): final (U+03C2) when a cased letter
    precedes it and none follows, case-ignorable characters (". ' :" and marks) skipped, else medial (U+03C3);
    0 where four or more case-ignorable characters in a row would need a longer look (-> `str.lower`)."""
    table = _code_points()

    def char_at(pos: np.ndarray, forward: bool) -> tuple[np.ndarray, np.ndarray]:
        """The character starting at `pos` (forward) or ending just before it: (code point, its start/end)."""
        k = np.searchsorted(lead, pos) - (0 if forward else 1)
        k_ok = np.clip(k, 0, max(lead.size - 1, 0))
        if forward:
            multi = (k < lead.size) & (lead[k_ok] == pos)
            return np.where(multi, cps[k_ok], raw[pos]), pos + np.where(multi, width[k_ok], 1)
        multi = (k >= 0) & (lead[k_ok] + width[k_ok] == pos)
        start = np.where(multi, lead[k_ok], pos - 1)
        return np.where(multi, cps[k_ok], raw[np.maximum(pos - 1, 0)]), start

    def side(pos: np.ndarray, forward: bool) -> np.ndarray:
        """_CASED / _OTHER for the first character that is not case-ignorable; _IGNORABLE if not found."""
        found = np.full(pos.size, _IGNORABLE, dtype=np.uint8)
        for _ in range(4):
            todo = np.flatnonzero(found == _IGNORABLE)
            if not todo.size:
                break
            cp, nxt = char_at(pos[todo], forward)
            cp = cp.astype(np.uint32)
            table.learn(cp)
            kind = np.where(pos[todo] > 0, table.sigma[cp], _OTHER) if not forward else table.sigma[cp]
            found[todo] = kind
            pos[todo] = nxt
        return found

    # Docs are joined with "\n" (not cased, not ignorable), so a doc's neighbours are never looked into.
    prev = side(lead[at].copy(), forward=False)
    nxt = side(lead[at] + 2, forward=True)
    form = np.zeros(at.size, dtype=np.uint32)
    form[(prev == _CASED) & (nxt == _OTHER)] = _FINAL_SIGMA
    form[(prev == _OTHER) | (nxt == _CASED)] = _MEDIAL_SIGMA
    return form


def _utf8_pieces(texts: _Texts) -> list[bytes | memoryview]:
    """The UTF-8 of each doc (views into an Arrow array's buffer, or encoded strings); null is empty."""
    if isinstance(texts, pa.Array):
        return _arrow_pieces(texts)
    return [t.encode("utf-8", "surrogatepass") if t else b"" for t in texts]


def _normalise(texts: _Texts) -> _Normalised:
    """Lowercase (as `str.lower`); each run of punctuation/symbol/separator/control characters becomes one
    space; trimmed. Works on the UTF-8 bytes; only docs with a character whose lowercase has another UTF-8
    length (such as U+0130) go through `str.lower` first."""
    pieces = _utf8_pieces(texts)
    raw, raw_starts = _joined(pieces)
    return _normalise_joined(raw, raw_starts, _joined_size(raw_starts, pieces))


def _joined_size(raw_starts: np.ndarray, pieces: Sequence[bytes | memoryview]) -> int:
    """Bytes of `_joined(pieces)` before its padding."""
    return int(raw_starts[-1]) + len(pieces[-1]) + 1 if len(pieces) else 0


def _normalise_joined(raw: np.ndarray, raw_starts: np.ndarray, size: int) -> _Normalised:
    """`_normalise` of the pieces raw[raw_starts[i]:raw_starts[i + 1]] (the last ends at `size`), each ending
    in ASCII whitespace that the normalisation turns into the trailing space its length leaves out."""
    norm, special = _normalise_raw(raw, raw_starts, size)
    if not special.size:
        return norm
    # Lowercased text holds no such character (lowercasing is idempotent), so one more pass settles them.
    # Each piece ends in ASCII whitespace, so no slice cuts a character and its trailing blanks normalise away.
    piece_ends = np.append(raw_starts[1:], size)
    lowered = [
        raw[raw_starts[i] : piece_ends[i]].tobytes().decode("utf-8", "surrogateescape").lower()
        for i in special.tolist()
    ]
    fixed, _ = _normalise_pieces([t.encode("utf-8", "surrogateescape") for t in lowered])
    # Splice the fixed segments in: the runs of pieces between two special ones are copied whole, so the
    # cost follows the number of special pieces, not of pieces (a batch's paragraphs can number 100,000s).
    sizes = np.diff(np.append(norm.starts, norm.buf.size))
    fixed_sizes = np.diff(np.append(fixed.starts, fixed.buf.size))
    parts: list[np.ndarray] = []
    previous_end = 0
    for k, piece in enumerate(special.tolist()):
        parts.append(norm.buf[previous_end : norm.starts[piece]])
        parts.append(fixed.buf[fixed.starts[k] : fixed.starts[k] + fixed_sizes[k]])
        previous_end = int(norm.starts[piece] + sizes[piece])
    parts.append(norm.buf[previous_end:])
    sizes = sizes.copy()
    sizes[special] = fixed_sizes
    starts = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    return _Normalised(np.concatenate(parts), starts, np.maximum(sizes - 1, 0))


@lru_cache(maxsize=1)
def _compiled_kernels() -> Any:
    """The numba loops (imported on first use: numba's import and the cached machine code cost ~0.3 s), or
    None where numba is missing or cannot keep its cache (`NUMBA_CACHE_DIR` fixes a read-only install); the
    numpy passes then give the same bytes, slower."""
    try:
        from llm_assets.curation import _utf8_kernels
    except (ImportError, RuntimeError):  # pragma: no cover - numba is a dependency
        return None
    return _utf8_kernels


def _normalise_pieces(pieces: Sequence[bytes | memoryview]) -> tuple[_Normalised, np.ndarray]:
    """`_normalise` of UTF-8 docs, and the docs whose result is wrong until they are lowercased by `str.lower`."""
    raw, raw_starts = _joined(pieces)
    return _normalise_raw(raw, raw_starts, _joined_size(raw_starts, pieces))


def _normalise_raw(raw: np.ndarray, raw_starts: np.ndarray, size: int) -> tuple[_Normalised, np.ndarray]:
    """`_normalise_pieces` of pieces already joined (see `_normalise_joined`)."""
    table = _code_points()
    kernels = _compiled_kernels()
    if kernels is not None and raw_starts.size:
        while True:
            buf, starts, lengths, flags, unknown = kernels.normalise_bytes(
                raw, raw_starts, size, _ASCII_SINGLE, table.packed, table.sigma
            )
            if unknown < 0:
                return _Normalised(buf, starts, lengths), np.flatnonzero(flags)
            # Only code points beyond the basic multilingual plane (emoji, historic scripts, CJK extensions)
            # get here: learnt by whole 128-code-point blocks, so a corpus stops the loop about once per block.
            blocks = np.unique(kernels.unknown_code_points(raw, size, table.known) >> 7)
            table.learn((blocks[:, None] * 128 + np.arange(128, dtype=np.uint32)).ravel())
    return _normalise_pieces_numpy(raw, raw_starts, size)


def _normalise_pieces_numpy(raw: np.ndarray, raw_starts: np.ndarray, size: int) -> tuple[_Normalised, np.ndarray]:
    """The same in numpy passes: the reference for the compiled loop, and the path where numba is missing."""
    table = _code_points()
    lead, cps, width = _decode_leads(raw, size)
    table.learn(cps)
    lower = table.lower[cps]
    special_at = np.flatnonzero(table.special[cps])
    sigma = np.flatnonzero(cps == _SIGMA)
    if sigma.size:
        lower[sigma] = forms = _sigma_forms(raw, lead, cps, width, sigma)
        special_at = np.concatenate((special_at, sigma[forms == 0]))
    special = np.unique(np.searchsorted(raw_starts, lead[special_at], side="right") - 1)
    out = _ASCII_MAP[raw.view("<u2")].view(np.uint8)[:size]
    changed = np.flatnonzero(lower != cps)
    _encode_into(out, lead[changed], lower[changed], width[changed])
    hits = np.flatnonzero(table.separator[cps])
    for k in range(4):
        out[lead[hits[width[hits] > k]] + k] = 0x20
    sep = out == 0x20
    drop = np.empty_like(sep)
    np.logical_and(sep[1:], sep[:-1], out=drop[1:])
    drop[raw_starts] = sep[raw_starts]
    counts = np.diff(np.append(raw_starts, size)) - _count_true(drop, raw_starts, np.append(raw_starts[1:], size))
    starts = np.zeros(counts.size, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return _Normalised(out[~drop], starts, np.maximum(counts - 1, 0)), special


def _blocks(texts: _Texts) -> Iterator[_Texts]:
    """Consecutive slices of about _DOC_BLOCK_BYTES of text (at least one doc each), so memory stays bounded."""
    if isinstance(texts, pa.Array):
        sizes = np.asarray(pc.fill_null(pc.binary_length(texts), 0).to_numpy(), dtype=np.int64)
    else:
        sizes = np.fromiter((len(t) if t else 0 for t in texts), dtype=np.int64, count=len(texts))
    ends = np.cumsum(sizes)
    cuts = np.flatnonzero(np.diff(ends // _DOC_BLOCK_BYTES, prepend=0) > 0) + 1
    bounds = [0, *cuts[cuts < len(texts)].tolist(), len(texts)]
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo or len(bounds) == 2:
            yield texts.slice(lo, hi - lo) if isinstance(texts, pa.Array) else texts[lo:hi]


def normalize(texts: Sequence[str]) -> list[str]:
    """The normalised form that exact keys and shingles are computed from (for explaining a decision)."""
    out: list[str] = []
    for block in _blocks(texts):
        norm = _normalise(block)
        out += [norm.text(i) for i in range(len(block))]
    return out


def _word_counts(norm: _Normalised) -> np.ndarray:
    kernels = _compiled_kernels()
    if kernels is not None:
        return kernels.word_counts(norm.buf, norm.starts, norm.lengths)
    spaces = _count_true(norm.buf == 0x20, norm.starts, norm.starts + norm.lengths)
    return np.where(norm.lengths > 0, spaces + 1, 0)


def _exact_keys(norm: _Normalised) -> list[bytes]:
    view = norm.buf.data
    return [
        hashlib.sha256(view[s : s + n]).digest()
        for s, n in zip(norm.starts.tolist(), norm.lengths.tolist(), strict=True)
    ]


def exact_keys(texts: Sequence[str]) -> list[bytes]:
    """SHA-256 of each normalised text (32 bytes each)."""
    return [key for block in _blocks(texts) for key in _exact_keys(_normalise(block))]


def _segment_hashes(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Well-mixed 64-bit hash of each byte segment buf[starts[i]:ends[i]] (sorted, non-overlapping): a
    polynomial hash from prefix sums over spans of about _HASH_SPAN bytes, then mixed."""
    out = np.empty(starts.size, dtype=np.uint64)
    lo = 0
    while lo < starts.size:
        origin = int(starts[lo])
        hi = max(lo + 1, int(np.searchsorted(ends, origin + _HASH_SPAN, side="right")))
        stop = int(ends[hi - 1])
        fwd, inv = _powers(stop - origin)
        prefix = np.zeros(stop - origin + 1, dtype=np.uint64)
        np.cumsum((buf[origin:stop].astype(np.uint64) + _U64(1)) * fwd, out=prefix[1:])
        rel_start, rel_end = starts[lo:hi] - origin, ends[lo:hi] - origin
        out[lo:hi] = (prefix[rel_end] - prefix[rel_start]) * inv[rel_start]
        lo = hi
    return _mix64(out)


def _unit_hashes(norm: _Normalised, ngram: str) -> tuple[np.ndarray, np.ndarray]:
    """Hash of every unit (word or character) and the number of units per doc."""
    buf = norm.buf
    if buf.size == 0:
        return np.zeros(0, np.uint64), np.zeros(norm.starts.size, np.int64)
    kernels = _compiled_kernels()
    if ngram == "word" and kernels is not None:
        return kernels.word_hashes(buf, norm.starts, norm.lengths, _U64(_POLY_BASE))
    return _unit_hashes_numpy(norm, ngram)


def _unit_hashes_numpy(norm: _Normalised, ngram: str) -> tuple[np.ndarray, np.ndarray]:
    buf = norm.buf
    if ngram == "word":
        space = buf == 0x20
        body = ~space
        starts = np.flatnonzero(body & np.concatenate(([True], space[:-1])))
        ends = np.flatnonzero(body & np.concatenate((space[1:], [True]))) + 1
    else:
        lead_or_ascii = (buf & 0xC0) != 0x80
        starts = np.flatnonzero(lead_or_ascii)
        ends = np.concatenate((starts[1:], [buf.size]))
        # The space between docs is not part of either doc.
        inside = np.searchsorted(norm.starts, starts, side="right") - 1
        in_doc = starts < norm.starts[inside] + norm.lengths[inside]
        starts, ends = starts[in_doc], ends[in_doc]
    offsets = np.searchsorted(starts, np.append(norm.starts, buf.size + 1))
    return _segment_hashes(buf, starts, ends), np.diff(offsets)


def _shingles(units: np.ndarray, per_doc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hash of every n-gram of consecutive units within a doc (a doc shorter than n is one shingle)."""
    kernels = _compiled_kernels()
    if kernels is not None:
        return kernels.shingle_sums(units, per_doc.astype(np.int64), n, _NGRAM_MULTIPLIERS)
    return _shingles_numpy(units, per_doc, n)


def _shingles_numpy(units: np.ndarray, per_doc: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    windows = np.where(per_doc >= n, per_doc - n + 1, np.minimum(per_doc, 1))
    unit_off = np.zeros(per_doc.size, np.int64)
    np.cumsum(per_doc[:-1], out=unit_off[1:])
    total = int(windows.sum())
    win_off = np.zeros(per_doc.size, np.int64)
    np.cumsum(windows[:-1], out=win_off[1:])
    first = np.repeat(unit_off - win_off, windows) + np.arange(total, dtype=np.int64)
    width = np.repeat(np.minimum(per_doc, n), windows)
    padded = np.concatenate((units, np.zeros(n, np.uint64)))
    acc = np.zeros(total, np.uint64)
    for k in range(n):
        acc += np.where(width > k, padded[first + k] * _NGRAM_MULTIPLIERS[k], _U64(0))
    return _mix64(acc), windows


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    words = _splitmix64(seed, num_perm)
    mult = (words >> _U64(32)).astype(np.uint32) | np.uint32(1)
    add = (words & _U64(0xFFFFFFFF)).astype(np.uint32)
    return mult, add


def _minhash(shingles: np.ndarray, windows: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """[docs, num_perm] uint32 minima of (a*x + b) mod 2**32 per doc; a doc without shingles is all 0xFFFFFFFF."""
    kernels = _compiled_kernels()
    if kernels is not None:
        mult, add = _permutations(num_perm, seed)
        return kernels.minhash(shingles, windows.astype(np.int64), mult, add)
    return _minhash_numpy(shingles, windows, num_perm, seed)


def _minhash_numpy(shingles: np.ndarray, windows: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    mult, add = _permutations(num_perm, seed)
    sig_t = np.full((num_perm, windows.size), np.iinfo(np.uint32).max, dtype=np.uint32)
    has = np.flatnonzero(windows > 0)
    if has.size == 0:
        return np.ascontiguousarray(sig_t.T)
    ends = np.cumsum(windows[has])
    begins = ends - windows[has]
    buf = np.empty(min(_SHINGLE_BLOCK, shingles.size), dtype=np.uint32)
    for lo in range(0, shingles.size, _SHINGLE_BLOCK):
        hi = min(lo + _SHINGLE_BLOCK, shingles.size)
        first = int(np.searchsorted(ends, lo, side="right"))
        last = int(np.searchsorted(begins, hi, side="left"))
        seg = np.maximum(begins[first:last], lo) - lo
        rows = has[first:last]
        block = shingles[lo:hi]
        out = buf[: hi - lo]
        for p in range(num_perm):
            np.multiply(block, mult[p], out=out)
            out += add[p]
            part = np.minimum.reduceat(out, seg)
            sig_t[p, rows] = np.minimum(sig_t[p, rows], part)
    return np.ascontiguousarray(sig_t.T)


@dataclass
class _Analysis:
    """What the index keeps per document of one batch (no text)."""

    exact: np.ndarray  # [n, 32] uint8
    signatures: np.ndarray  # [n, num_perm] uint32
    shingles: np.ndarray  # [n] int64, 0 = no near-dedup possible
    para_offsets: np.ndarray  # [n + 1] int64 into the two arrays below
    para_index: np.ndarray  # uint32: position of the paragraph in PARAGRAPH_SEPARATOR.split(text)
    para_hash: np.ndarray  # uint64: paragraph_hash of the normalised paragraph
    words: np.ndarray  # [n] int64 normalised word count


def _analyse_block(texts: _Texts, params: dict[str, Any]) -> _Analysis:
    n = len(texts)
    if params["paragraph_level"]:
        norm, para_offsets, para_index, para_hash = _paragraphs(texts, params["paragraph_min_words"])
    else:
        norm = _normalise(texts)
        para_offsets, para_index, para_hash = np.zeros(n + 1, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.uint64)
    exact = np.frombuffer(b"".join(_exact_keys(norm)), dtype=np.uint8).reshape(n, 32)
    if params["near"]:
        units, per_doc = _unit_hashes(norm, params["ngram"])
        shingles, windows = _shingles(units, per_doc, params["ngram_size"])
        signatures = _minhash((shingles >> _U64(32)).astype(np.uint32), windows, params["num_perm"], params["seed"])
    else:
        windows = np.zeros(n, dtype=np.int64)
        signatures = np.full((n, params["num_perm"]), np.iinfo(np.uint32).max, dtype=np.uint32)
    words = _word_counts(norm)
    return _Analysis(exact, signatures, windows.astype(np.int64), para_offsets, para_index, para_hash, words)


def _paragraphs(texts: _Texts, min_words: int) -> tuple[_Normalised, np.ndarray, np.ndarray, np.ndarray]:
    """Normalise the paragraphs of every doc once; the docs' own normalised text is read off the same
    buffer (normalising a doc equals joining its normalised non-empty paragraphs with one space).

    Works on the joined UTF-8 of the docs: paragraph i is raw[starts[i]:starts[i + 1]], its text followed by
    the separator (or the doc's "\n" terminator), which normalises to the trailing space, so the pieces of
    `PARAGRAPH_SEPARATOR.split(text)` are normalised without splitting any string."""
    pieces = _utf8_pieces(texts)
    raw, doc_starts = _joined(pieces)
    size = _joined_size(doc_starts, pieces)
    kernels = _compiled_kernels()
    find = kernels.paragraph_starts if kernels is not None else _paragraph_starts_python
    starts, counts = find(raw, doc_starts, size)
    firsts = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(counts, out=firsts[1:])
    owner = np.repeat(np.arange(len(pieces)), counts)
    position = np.arange(starts.size, dtype=np.int64) - np.repeat(firsts[:-1], counts)
    norm = _normalise_joined(raw, starts, size)
    doc_starts = np.append(norm.starts, norm.buf.size)[firsts]
    docs = _Normalised(norm.buf, doc_starts[:-1], np.maximum(np.diff(doc_starts) - 1, 0))
    # One-paragraph docs are left to document-level dedup.
    keep = np.flatnonzero((_word_counts(norm) >= min_words) & (counts[owner] >= 2))
    if kernels is not None:
        hashes = kernels.segment_fnv(norm.buf, norm.starts[keep], norm.lengths[keep])
    else:
        view = norm.buf.data
        hashes = np.fromiter(
            (
                paragraph_hash(bytes(view[s : s + n]))
                for s, n in zip(norm.starts[keep].tolist(), norm.lengths[keep].tolist(), strict=True)
            ),
            dtype=np.uint64,
            count=keep.size,
        )
    offsets = np.searchsorted(owner[keep], np.arange(len(pieces) + 1), side="left").astype(np.int64)
    return docs, offsets, position[keep].astype(np.uint32), hashes


_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def paragraph_hash(normalised: bytes) -> int:
    """What a paragraph is known by: 64-bit FNV-1a of its normalised UTF-8, mixed by splitmix64's finaliser.
    (Not a cryptographic hash, like the 8 bytes of blake2b it replaced: at 64 bits, two different paragraphs
    collide with probability ~2^-64 a pair either way; nothing here defends against crafted collisions.)"""
    h = _FNV_OFFSET
    for byte in normalised:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return int(_mix64(np.array([h], dtype=np.uint64))[0])


_PARAGRAPH_SEPARATOR_BYTES = re.compile(PARAGRAPH_SEPARATOR.pattern.encode("ascii"))


def _paragraph_starts_python(raw: np.ndarray, doc_starts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each paragraph of each "\n"-terminated doc of raw[:size] starts, and paragraphs per doc: the
    pieces `PARAGRAPH_SEPARATOR.split` gives. The reference for the compiled `paragraph_starts`."""
    data = raw.tobytes()
    ends = np.append(doc_starts[1:], size)[: doc_starts.size] - 1  # each doc's "\n" terminator is not part of it
    starts: list[int] = []
    counts: list[int] = []
    for begin, end in zip(doc_starts.tolist(), ends.tolist(), strict=True):
        starts.append(begin)
        found = [m.end() for m in _PARAGRAPH_SEPARATOR_BYTES.finditer(data, begin, end)]
        starts += found
        counts.append(len(found) + 1)
    return np.asarray(starts, dtype=np.int64), np.asarray(counts, dtype=np.int64)


def _analyse(texts: _Texts, params: dict[str, Any]) -> _Analysis:
    return _concat_analyses([_analyse_block(block, params) for block in _blocks(texts)])


def _concat_analyses(parts: Sequence[_Analysis]) -> _Analysis:
    if len(parts) == 1:
        return parts[0]
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for part in parts:
        offsets.append(part.para_offsets[1:] + base)
        base += int(part.para_offsets[-1])
    return _Analysis(
        exact=np.concatenate([p.exact for p in parts]),
        signatures=np.concatenate([p.signatures for p in parts]),
        shingles=np.concatenate([p.shingles for p in parts]),
        para_offsets=np.concatenate(offsets),
        para_index=np.concatenate([p.para_index for p in parts]),
        para_hash=np.concatenate([p.para_hash for p in parts]),
        words=np.concatenate([p.words for p in parts]),
    )


def _analyse_parallel(
    texts: pa.Array, params: dict[str, Any], pool: concurrent.futures.Executor | None, workers: int
) -> _Analysis:
    if pool is None or workers <= 1 or len(texts) < 2:
        return _analyse(texts, params)
    pieces = max(workers * 4, 1)
    step = math.ceil(len(texts) / pieces)
    # concat_arrays copies each slice, so only its own bytes are pickled to the worker.
    chunks = [pa.concat_arrays([texts.slice(i, step)]) for i in range(0, len(texts), step)]
    return _concat_analyses(list(pool.map(_analyse, chunks, [params] * len(chunks))))


def _shingle_sets(texts: _Texts, params: dict[str, Any]) -> list[np.ndarray]:
    """Each doc's distinct shingle hashes, sorted (uint64): what exact Jaccard is computed on."""
    sets: list[np.ndarray] = []
    for block in _blocks(texts):
        units, per_doc = _unit_hashes(_normalise(block), params["ngram"])
        shingles, windows = _shingles(units, per_doc, params["ngram_size"])
        ends = np.cumsum(windows)
        for start, end in zip((ends - windows).tolist(), ends.tolist(), strict=True):
            doc = np.sort(shingles[start:end])  # sort and mask: ~4x np.unique's cost on arrays this small
            sets.append(doc[np.concatenate(([True], doc[1:] != doc[:-1]))] if doc.size else doc)
    return sets


def _map_blocks(
    fn: Callable[[_Texts, dict[str, Any]], list[np.ndarray]],
    texts: pa.Array,
    params: dict[str, Any],
    pool: concurrent.futures.Executor | None,
    workers: int,
) -> list[np.ndarray]:
    """fn over slices of `texts`, in the pool when there is one; results in input order."""
    if pool is None or workers <= 1 or len(texts) < 2:
        return fn(texts, params)
    step = math.ceil(len(texts) / workers)
    chunks = [pa.concat_arrays([texts.slice(i, step)]) for i in range(0, len(texts), step)]
    return [item for part in pool.map(fn, chunks, [params] * len(chunks)) for item in part]


def _shared_count(a: np.ndarray, b: np.ndarray) -> int:
    """How many values two sorted arrays of distinct values share (binary search of the smaller in the larger:
    no concatenation and re-sort as in np.intersect1d)."""
    if a.size > b.size:
        a, b = b, a
    if not a.size:
        return 0
    at = np.minimum(np.searchsorted(b, a), b.size - 1)
    return int(np.count_nonzero(b[at] == a))


def _spawn_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def compute_signatures(texts: Sequence[str], config: DedupConfig, *, workers: int = 1) -> np.ndarray:
    """MinHash signatures, [len(texts), num_perm] uint32; identical for any `workers` (spawned processes)."""
    params = {**config.signature_params(), "near": True, "paragraph_level": False}
    if workers <= 1:
        return _analyse(texts, params).signatures
    with _spawn_pool(workers) as pool:
        return _analyse_parallel(pa.array(texts, pa.large_string()), params, pool, workers).signatures


# ---------------------------------------------------------------------------------------------------------------
# Index and plan


CLUSTER_SCHEMA = pa.schema(
    [
        pa.field("cluster_id", pa.string(), nullable=False),
        pa.field("member_id", pa.string(), nullable=False),
        pa.field("kept_id", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),  # "kept" | "exact" | "near"
        pa.field("keep_rule", pa.string(), nullable=False),  # the config's rule, or "frozen" (incremental)
        pa.field("similarity", pa.float64(), nullable=False),  # Jaccard to the kept member
        pa.field("similarity_exact", pa.bool_(), nullable=False),  # exact on shingle sets, else the estimate
        pa.field("partition", pa.string(), nullable=False),
    ]
)


@dataclass
class DedupPlan:
    """The decisions of one `resolve()`, applied shard by shard with `apply_plan`.

    `drop_ids[id] = (rule, kept_id, similarity)` with rule "exact", "near" or "paragraph" (every paragraph
    of the doc is owned by earlier kept docs; kept_id names the owner of its first paragraph).
    `paragraph_drops[id] = ((position, owner_id), ...)`: paragraphs (positions in
    `PARAGRAPH_SEPARATOR.split(text)`) to remove from a kept doc, each with the kept doc that owns it.
    """

    config: DedupConfig
    clusters: pa.Table  # CLUSTER_SCHEMA
    drop_ids: dict[str, tuple[str, str, float]]
    paragraph_drops: dict[str, tuple[tuple[int, str], ...]]
    exact_similarity: frozenset[str]  # near drops whose similarity is exact (shingle sets), not the estimate
    stats: dict[str, Any] = field(default_factory=dict)


class DedupIndex:
    """Streaming index over shards: per document it keeps ~`4 * num_perm + 100` bytes plus 12 per paragraph.

    Use as a context manager when `workers > 1` (it owns a process pool).
    """

    def __init__(self, config: DedupConfig, *, workers: int = 1) -> None:
        self.config = config
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._ids: list[pa.Array] = []
        self._partitions: list[pa.Array] = []
        self._lengths: list[np.ndarray] = []
        self._quality: list[np.ndarray] = []
        self._timestamps: list[np.ndarray] = []
        self._frozen: list[np.ndarray] = []
        self._analyses: list[_Analysis] = []
        # Exact verification of borderline pairs: each doc's partners, the shingle sets of docs read whose
        # partners are not all read yet, and the exact Jaccard of every settled pair.
        self._partners: dict[str, list[str]] = {}
        self._shingle_sets: dict[str, np.ndarray] = {}
        self._exact_jaccard: dict[tuple[str, str], float] = {}

    def __enter__(self) -> DedupIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __len__(self) -> int:
        return sum(len(a) for a in self._ids)

    def add_batch(
        self,
        table: pa.Table,
        *,
        partition: str,
        quality: pa.Array | pa.ChunkedArray | None = None,
        timestamp: pa.Array | pa.ChunkedArray | None = None,
    ) -> None:
        """Index one batch (needs `id` and `text` columns). `quality` (higher is better) is required by
        keep_rule="highest_quality"; `timestamp` orders keep_rule="oldest" (without it, the partition key)."""
        for name in ("id", "text"):
            if name not in table.column_names:
                raise ValueError(f"dedup: partition {partition!r} batch has no {name!r} column")
        n = table.num_rows
        if self.config.keep_rule == "highest_quality" and quality is None:
            raise ValueError(f"dedup: keep_rule='highest_quality' needs quality=... (partition {partition!r})")
        for label, arr in (("quality", quality), ("timestamp", timestamp)):
            if arr is not None and len(arr) != n:
                raise ValueError(f"dedup: partition {partition!r}: {label} has {len(arr)} values for {n} rows")
        texts = table.column("text").combine_chunks()
        if self.workers > 1 and self._pool is None:
            self._pool = _spawn_pool(self.workers)
        analysis = _analyse_parallel(texts, self.config.signature_params(), self._pool, self.workers)
        self._ids.append(table.column("id").combine_chunks().cast(pa.string()))
        self._partitions.append(pa.array([partition] * n, type=pa.string()))
        self._lengths.append(pc.utf8_length(pc.fill_null(table.column("text"), "")).to_numpy().astype(np.int64))
        self._quality.append(_float_or_nan(quality, n))
        self._timestamps.append(_timestamp_or_max(timestamp, n))
        self._frozen.append(np.zeros(n, dtype=bool))
        self._analyses.append(analysis)

    # -- resolve --------------------------------------------------------------------------------------------

    def _gather(self) -> tuple[pl.DataFrame, _Analysis]:
        ids = pa.chunked_array(self._ids, type=pa.string())
        frame = pl.DataFrame(
            {
                "id": pl.Series(ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())),
                "partition": pl.Series(pa.chunked_array(self._partitions, type=pa.string()).combine_chunks()),
                "length": np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64),
                "quality": np.concatenate(self._quality) if self._quality else np.zeros(0),
                "timestamp": np.concatenate(self._timestamps) if self._timestamps else np.zeros(0, np.int64),
                "frozen": np.concatenate(self._frozen) if self._frozen else np.zeros(0, bool),
            }
        )
        if not self._analyses:
            return frame, _analyse([], self.config.signature_params())
        dupes = frame.filter(pl.col("id").is_duplicated())["id"].unique().sort()
        if len(dupes):
            raise ValueError(f"dedup: ids must be unique; {len(dupes)} repeat, e.g. {dupes[:3].to_list()}")
        return frame, _concat_analyses(self._analyses)

    def _order(self, frame: pl.DataFrame, incremental: bool) -> np.ndarray:
        """Row indices in the one total order every decision follows: frozen first (incremental), keep rule, id."""
        keys: list[pl.Expr] = []
        descending: list[bool] = []
        if incremental:
            keys.append(~pl.col("frozen"))
            descending.append(False)
        rule = self.config.keep_rule
        if rule == "longest":
            keys.append(pl.col("length"))
            descending.append(True)
        elif rule == "oldest":
            keys += [pl.col("timestamp"), pl.col("partition")]
            descending += [False, False]
        elif rule == "highest_quality":
            keys.append(pl.col("quality").fill_nan(-math.inf))
            descending.append(True)
        keys.append(pl.col("id"))
        descending.append(False)
        ordered = frame.with_row_index("row").sort(keys, descending=descending, maintain_order=True)
        return ordered["row"].to_numpy().astype(np.int64)

    def resolve(self, *, incremental: bool = False) -> DedupPlan:
        """Decide every drop. `incremental=True` never drops a frozen document (see `freeze`): a new document
        that duplicates one is dropped in its favour whatever the keep rule."""
        cfg = self.config
        frame, analysis = self._gather()
        n = frame.height
        order = self._order(frame, incremental)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n, dtype=np.int64)
        frozen = frame["frozen"].to_numpy() if incremental else np.zeros(n, dtype=bool)

        # target[i]: row i is dropped in favour of row target[i] (-1: kept); rule and similarity alongside.
        target = np.full(n, -1, dtype=np.int64)
        rule = np.zeros(n, dtype=np.int8)  # 1 exact, 2 near
        similarity = np.ones(n, dtype=np.float64)

        representative = np.arange(n, dtype=np.int64)
        if cfg.exact and n:
            representative = _exact_representatives(analysis.exact, rank)
            dup = (representative != np.arange(n)) & ~frozen
            target[dup] = representative[dup]
            rule[dup] = 1

        stats: dict[str, Any] = {"documents": n, "bands": cfg.bands, "rows": cfg.rows}
        ids = frame["id"].to_list()
        exact_sim = np.zeros(n, dtype=bool)
        if cfg.near and n:
            candidates = np.flatnonzero((representative == np.arange(n)) & (analysis.shingles > 0))
            left, right, sims, near_stats = _near_pairs(candidates, analysis.signatures, rank, cfg)
            stats.update(near_stats)
            exact_pair = np.zeros(left.size, dtype=bool)
            for k in np.flatnonzero(np.abs(sims - cfg.threshold) <= cfg.exact_band).tolist():
                exact = self._exact_jaccard.get(_pair_key(ids[left[k]], ids[right[k]]))
                if exact is not None:
                    sims[k] = exact
                    exact_pair[k] = True
            stats["exact_checked_pairs"] = int(exact_pair.sum())
            stats["verification_sets_held"] = len(self._shingle_sets)
            if cfg.verify_candidates:
                ok = sims >= cfg.threshold
                left, right, sims, exact_pair = left[ok], right[ok], sims[ok], exact_pair[ok]
            stats["verified_pairs"] = int(left.size)
            assigned, pair_of = _greedy_assign(left, right, rank, frozen, n)
            near = assigned >= 0
            target[near] = assigned[near]
            rule[near] = 2
            similarity[near] = sims[pair_of[near]]
            exact_sim[near] = exact_pair[pair_of[near]]
            # Exact copies of a near-dropped representative follow it to the same kept document.
            follows = (rule == 1) & (target >= 0) & (assigned[np.maximum(representative, 0)] >= 0)
            target[follows] = assigned[representative[follows]]
            rule[follows] = 2
            similarity[follows] = similarity[representative[follows]]
            exact_sim[follows] = exact_sim[representative[follows]]

        partitions = frame["partition"].to_list()
        drop_ids: dict[str, tuple[str, str, float]] = {}
        rule_names = {1: "exact", 2: "near"}
        for i in np.flatnonzero(target >= 0).tolist():
            drop_ids[ids[i]] = (rule_names[int(rule[i])], ids[int(target[i])], float(similarity[i]))

        paragraph_drops: dict[str, tuple[tuple[int, str], ...]] = {}
        if cfg.paragraph_level and n:
            keepers = np.zeros(n, dtype=bool)
            keepers[target[target >= 0]] = True
            paragraph_drops, emptied, kept_whole = _paragraph_decisions(
                analysis, rank, target < 0, frozen, keepers, ids
            )
            for doc, first_owner in emptied.items():
                drop_ids[doc] = ("paragraph", first_owner, 1.0)
            stats["paragraphs_removed"] = sum(len(v) for v in paragraph_drops.values())
            stats["paragraph_emptied"] = len(emptied)
            stats["paragraph_emptied_kept_whole"] = kept_whole

        stats["exact_dropped"] = sum(1 for v in drop_ids.values() if v[0] == "exact")
        stats["near_dropped"] = sum(1 for v in drop_ids.values() if v[0] == "near")
        clusters = _cluster_table(target, rule, similarity, exact_sim, rank, frozen, ids, partitions, cfg.keep_rule)
        stats["clusters"] = int(pc.count_distinct(clusters.column("cluster_id")).as_py()) if clusters.num_rows else 0
        exact_ids = frozenset(ids[i] for i in np.flatnonzero(exact_sim & (rule == 2)).tolist())
        return DedupPlan(cfg, clusters, drop_ids, paragraph_drops, exact_ids, stats)

    # -- optional exact verification -------------------------------------------------------------------

    def verification_ids(self, *, incremental: bool = False) -> frozenset[str]:
        """Ids of the docs in LSH candidate pairs whose estimate lies within `exact_band` of the threshold.
        Feeding their shards to `add_shingle_sets` (an extra read pass) lets `resolve` decide those pairs on
        exact Jaccard; without it they are decided on the estimate."""
        cfg = self.config
        frame, analysis = self._gather()
        n = frame.height
        if not (cfg.near and n and cfg.exact_band > 0):
            return frozenset()
        rank = np.empty(n, dtype=np.int64)
        rank[self._order(frame, incremental)] = np.arange(n, dtype=np.int64)
        representative = _exact_representatives(analysis.exact, rank) if cfg.exact else np.arange(n)
        candidates = np.flatnonzero((representative == np.arange(n)) & (analysis.shingles > 0))
        left, right, sims, _ = _near_pairs(candidates, analysis.signatures, rank, cfg)
        close = np.flatnonzero(np.abs(sims - cfg.threshold) <= cfg.exact_band)
        ids = frame["id"].to_list()
        self._partners, self._shingle_sets, self._exact_jaccard = {}, {}, {}
        for a, b in zip(left[close].tolist(), right[close].tolist(), strict=True):
            self._partners.setdefault(ids[a], []).append(ids[b])
            self._partners.setdefault(ids[b], []).append(ids[a])
        return frozenset(self._partners)

    def add_shingle_sets(self, table: pa.Table) -> int:
        """Read the exact shingle sets of this batch's docs that `verification_ids` named, settle every pair
        whose two docs have now been read (exact Jaccard), and let go of the sets no pending pair needs: memory
        holds 8 bytes per distinct shingle of only the docs still waiting for a partner in a later batch.
        Returns how many docs of this batch were read."""
        ids = table.column("id").to_pylist()
        rows = [i for i, doc_id in enumerate(ids) if doc_id in self._partners]
        if not rows:
            return 0
        texts = table.column("text").take(pa.array(rows, pa.int64())).combine_chunks()
        params = {"ngram": self.config.ngram, "ngram_size": self.config.ngram_size}
        # The pool's workers have the compiled kernels loaded (add_batch used them); this process may not.
        for row, shingle_set in zip(
            rows, _map_blocks(_shingle_sets, texts, params, self._pool, self.workers), strict=True
        ):
            self._shingle_sets[ids[row]] = shingle_set
        for doc in (ids[row] for row in rows):
            mine = self._shingle_sets[doc]
            for partner in self._partners[doc]:
                theirs = self._shingle_sets.get(partner)
                key = _pair_key(doc, partner)
                if theirs is not None and key not in self._exact_jaccard:
                    shared = _shared_count(mine, theirs)
                    self._exact_jaccard[key] = shared / (mine.size + theirs.size - shared)
        for doc in (ids[row] for row in rows):
            for member in (doc, *self._partners[doc]):
                settled = all(_pair_key(member, p) in self._exact_jaccard for p in self._partners[member])
                if settled:
                    self._shingle_sets.pop(member, None)
        return len(rows)

    # -- incremental ---------------------------------------------------------------------------------------

    def freeze(self, plan: DedupPlan | None = None) -> bytes:
        """Arrow IPC bytes of the documents that survive `plan` (default: `resolve()`, incremental when this
        index holds frozen documents): the published corpus that later sources are deduplicated against."""
        if plan is None:
            plan = self.resolve(incremental=any(f.any() for f in self._frozen))
        frame, analysis = self._gather()
        dropped = set(plan.drop_ids)
        ids = frame["id"].to_list()
        keep = np.array([i not in dropped for i in ids], dtype=bool)
        rows = np.flatnonzero(keep)
        rows = rows[np.argsort(np.asarray(ids, dtype=object)[rows], kind="stable")] if rows.size else rows
        num_perm = self.config.num_perm
        para_lists = [
            analysis.para_hash[analysis.para_offsets[r] : analysis.para_offsets[r + 1]].tolist() for r in rows
        ]
        table = pa.table(
            {
                "id": pa.array([ids[r] for r in rows], pa.string()),
                "partition": pa.array(frame["partition"].to_numpy()[rows].tolist(), pa.string()),
                "length": pa.array(frame["length"].to_numpy()[rows], pa.int64()),
                "quality": pa.array(frame["quality"].to_numpy()[rows], pa.float64()),
                "timestamp": pa.array(frame["timestamp"].to_numpy()[rows], pa.int64()),
                "exact": pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(32), rows.size, [None, pa.py_buffer(analysis.exact[rows].tobytes())]
                ),
                "shingles": pa.array(analysis.shingles[rows], pa.int64()),
                "words": pa.array(analysis.words[rows], pa.int64()),
                "signature": pa.FixedSizeListArray.from_arrays(
                    pa.array(analysis.signatures[rows].reshape(-1), pa.uint32()), num_perm
                ),
                "paragraphs": pa.array(para_lists, pa.list_(pa.uint64())),
            }
        )
        meta = {"format_version": FORMAT_VERSION, "signature_params": self.config.signature_params()}
        table = table.replace_schema_metadata({"llm_assets.dedup": json.dumps(meta, sort_keys=True)})
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue()

    @classmethod
    def from_frozen(cls, data: bytes, config: DedupConfig, *, workers: int = 1) -> DedupIndex:
        """An index holding a frozen corpus; add new sources with `add_batch`, then `resolve(incremental=True)`."""
        table = pa.ipc.open_stream(io.BytesIO(data)).read_all()
        raw = (table.schema.metadata or {}).get(b"llm_assets.dedup")
        if raw is None:
            raise ValueError("dedup: not a frozen DedupIndex (no llm_assets.dedup schema metadata)")
        meta = json.loads(raw)
        if meta["format_version"] != FORMAT_VERSION:
            raise ValueError(f"dedup: frozen index format {meta['format_version']}, this code reads {FORMAT_VERSION}")
        if meta["signature_params"] != config.signature_params():
            raise ValueError(
                f"dedup: frozen index was hashed with {meta['signature_params']}, config has "
                f"{config.signature_params()}; hash new sources with the same settings, or run one full "
                "(non-incremental) dedup to rebuild the frozen index with this code's settings"
            )
        index = cls(config, workers=workers)
        n = table.num_rows
        paragraphs = table.column("paragraphs").combine_chunks()
        para_offsets = np.asarray(paragraphs.offsets.to_numpy(), dtype=np.int64)
        para_hash = paragraphs.values.to_numpy(zero_copy_only=False).astype(np.uint64)
        exact_buf = table.column("exact").combine_chunks().buffers()[1]
        signature = table.column("signature").combine_chunks().values.to_numpy(zero_copy_only=False)
        index._analyses.append(
            _Analysis(
                exact=np.frombuffer(exact_buf, dtype=np.uint8)[: n * 32].reshape(n, 32).copy(),
                signatures=np.asarray(signature, dtype=np.uint32).reshape(n, config.num_perm).copy(),
                shingles=table.column("shingles").to_numpy().astype(np.int64),
                para_offsets=para_offsets - para_offsets[0],
                para_index=np.zeros(para_hash.size, dtype=np.uint32),
                para_hash=para_hash,
                words=table.column("words").to_numpy().astype(np.int64),
            )
        )
        index._ids.append(table.column("id").combine_chunks())
        index._partitions.append(table.column("partition").combine_chunks())
        index._lengths.append(table.column("length").to_numpy().astype(np.int64))
        index._quality.append(table.column("quality").to_numpy().astype(np.float64))
        index._timestamps.append(table.column("timestamp").to_numpy().astype(np.int64))
        index._frozen.append(np.ones(n, dtype=bool))
        return index


def _float_or_nan(values: pa.Array | pa.ChunkedArray | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    return np.asarray(pc.fill_null(pc.cast(values, pa.float64()), math.nan).to_numpy(), dtype=np.float64)


def _timestamp_or_max(values: pa.Array | pa.ChunkedArray | None, n: int) -> np.ndarray:
    """Microseconds since the epoch; missing sorts last."""
    top = np.iinfo(np.int64).max
    if values is None:
        return np.full(n, top, dtype=np.int64)
    micro = pc.cast(pc.cast(values, pa.timestamp("us")), pa.int64())
    return np.asarray(pc.fill_null(micro, top).to_numpy(), dtype=np.int64)


def _exact_representatives(exact: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each row, the row of the same exact key that comes first in the total order."""
    words = exact.view(np.uint64)  # [n, 4]
    order = np.lexsort((rank, words[:, 3], words[:, 2], words[:, 1], words[:, 0]))
    keys = words[order]
    new_group = np.ones(order.size, dtype=bool)
    new_group[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    group_first = order[np.flatnonzero(new_group)]
    group_of = np.cumsum(new_group) - 1
    representative = np.empty_like(order)
    representative[order] = group_first[group_of]
    return representative


def _band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[n, bands] uint64 hash of each band of each signature."""
    n = signatures.shape[0]
    keys = np.zeros((n, bands), dtype=np.uint64)
    sig = signatures.astype(np.uint64).reshape(n, bands, rows)
    for r in range(rows):
        keys = _mix64(keys ^ (sig[:, :, r] + _U64(r * 0x9E3779B9)))
    return keys


def _head_pairs(size: int, heads: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) within a bucket of `size` members where i is one of the first `heads`: all pairs
    for a small bucket, O(heads * size) for a large one (never the full triangle)."""
    heads = min(size, heads)
    counts = size - 1 - np.arange(heads)
    first = np.repeat(np.arange(heads), counts)
    offsets = np.cumsum(counts) - counts
    second = np.arange(first.size) - np.repeat(offsets, counts) + first + 1
    return first, second


def _near_pairs(
    candidates: np.ndarray, signatures: np.ndarray, rank: np.ndarray, cfg: DedupConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """LSH candidate pairs (earlier, later in rank order) with their estimated Jaccard, not yet verified."""
    assert cfg.bands is not None and cfg.rows is not None
    empty = np.zeros(0, np.int64)
    if candidates.size < 2:
        return empty, empty, np.zeros(0), {"candidate_pairs": 0}
    rows_by_rank = candidates[np.argsort(rank[candidates], kind="stable")]
    keys = _band_keys(signatures[rows_by_rank], cfg.bands, cfg.rows)
    pair_chunks: list[np.ndarray] = []
    m = rows_by_rank.size
    for band in range(cfg.bands):
        order = np.argsort(keys[:, band], kind="stable")  # positions stay in rank order within a bucket
        sorted_keys = keys[order, band]
        boundary = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1], [True])))
        sizes = np.diff(boundary)
        for size in np.unique(sizes[sizes >= 2]).tolist():
            starts = boundary[:-1][sizes == size]
            members = order[starts[:, None] + np.arange(size)]  # [groups, size] positions in rank order
            a, b = _head_pairs(size, cfg.max_bucket_pairs)
            pair_chunks.append((members[:, a].astype(np.int64) * m + members[:, b]).ravel())
    if not pair_chunks:
        return empty, empty, np.zeros(0), {"candidate_pairs": 0}
    codes = np.unique(np.concatenate(pair_chunks))
    first, second = codes // m, codes % m
    left, right = rows_by_rank[first], rows_by_rank[second]
    sims = np.empty(codes.size, dtype=np.float64)
    step = max(1, (1 << 22) // signatures.shape[1])
    for lo in range(0, codes.size, step):
        hi = lo + step
        equal = signatures[left[lo:hi]] == signatures[right[lo:hi]]
        sims[lo:hi] = equal.sum(axis=1) / signatures.shape[1]
    return left, right, sims, {"candidate_pairs": int(codes.size)}


def _greedy_assign(
    left: np.ndarray, right: np.ndarray, rank: np.ndarray, frozen: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Walk verified pairs in (rank of earlier, rank of later) order: a document not yet assigned keeps
    itself and claims every unassigned, non-frozen later neighbour. No chains: each dropped document is
    verified against the document it names. Returns the kept row and the deciding pair per row (-1: none)."""
    assigned = np.full(n, -1, dtype=np.int64)
    pair_of = np.full(n, -1, dtype=np.int64)
    if left.size == 0:
        return assigned, pair_of
    order = np.lexsort((rank[right], rank[left]))
    is_frozen = frozen.tolist()
    target = [-1] * n
    deciding = [-1] * n
    for k, a, b in zip(order.tolist(), left[order].tolist(), right[order].tolist(), strict=True):
        if target[a] < 0 and target[b] < 0 and not is_frozen[b]:
            target[b] = a
            deciding[b] = k
    assigned[:] = target
    pair_of[:] = deciding
    return assigned, pair_of


def _paragraph_decisions(
    analysis: _Analysis,
    rank: np.ndarray,
    alive: np.ndarray,
    frozen: np.ndarray,
    protected: np.ndarray,
    ids: list[str],
) -> tuple[dict[str, tuple[tuple[int, str], ...]], dict[str, str], int]:
    """A paragraph belongs to the first surviving doc (in rank order) that has it; later docs lose it.
    Returns the removals per doc, the docs left with no paragraph of their own (-> owner of the first), and
    how many `protected` docs (kept copies of a duplicate cluster) were left whole instead of emptied, so
    that every dropped copy still names a surviving document."""
    counts = np.diff(analysis.para_offsets)
    doc_of = np.repeat(np.arange(counts.size), counts)
    rows = np.flatnonzero(alive[doc_of])
    if rows.size == 0:
        return {}, {}, 0
    docs, hashes, positions = doc_of[rows], analysis.para_hash[rows], analysis.para_index[rows]
    order = np.lexsort((positions, rank[docs], hashes))
    first = np.ones(order.size, dtype=bool)
    first[1:] = hashes[order][1:] != hashes[order][:-1]
    owner = np.empty_like(docs)
    owner[order] = docs[order][np.flatnonzero(first)][np.cumsum(first) - 1]
    lose = np.flatnonzero((docs != owner) & ~frozen[docs])
    if lose.size == 0:
        return {}, {}, 0
    lose = lose[np.lexsort((positions[lose], docs[lose]))]
    removals: dict[str, tuple[tuple[int, str], ...]] = {}
    emptied: dict[str, str] = {}
    kept_whole = 0
    bounds = np.flatnonzero(np.concatenate(([True], docs[lose][1:] != docs[lose][:-1], [True])))
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        doc = int(docs[lose[lo]])
        taken = tuple((int(p), ids[int(o)]) for p, o in zip(positions[lose[lo:hi]], owner[lose[lo:hi]], strict=True))
        if hi - lo < counts[doc]:
            removals[ids[doc]] = taken
        elif protected[doc]:
            kept_whole += 1
        else:
            emptied[ids[doc]] = taken[0][1]
    return removals, emptied, kept_whole


def _pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _cluster_id(kept_id: str) -> str:
    return hashlib.sha256(kept_id.encode("utf-8")).hexdigest()[:16]


def _cluster_table(
    target: np.ndarray,
    rule: np.ndarray,
    similarity: np.ndarray,
    exact_sim: np.ndarray,
    rank: np.ndarray,
    frozen: np.ndarray,
    ids: list[str],
    partitions: list[str],
    keep_rule: str,
) -> pa.Table:
    dropped = np.flatnonzero(target >= 0)
    if dropped.size == 0:
        return CLUSTER_SCHEMA.empty_table()
    keepers = np.unique(target[dropped])
    members = np.concatenate((keepers, dropped))
    kept = np.concatenate((keepers, target[dropped]))
    # Rows sorted by the kept doc's rank, the kept doc first, then members in rank order.
    order = np.lexsort((rank[members], members != kept, rank[kept]))
    members, kept = members[order], kept[order]
    names = {0: "kept", 1: "exact", 2: "near"}
    rules = [names[int(rule[m])] if m != k else "kept" for m, k in zip(members.tolist(), kept.tolist(), strict=True)]
    kept_ids = [ids[k] for k in kept.tolist()]
    return pa.table(
        {
            "cluster_id": [_cluster_id(k) for k in kept_ids],
            "member_id": [ids[m] for m in members.tolist()],
            "kept_id": kept_ids,
            "rule": rules,
            "keep_rule": ["frozen" if frozen[k] else keep_rule for k in kept.tolist()],
            "similarity": [1.0 if m == k else float(similarity[m]) for m, k in zip(members, kept, strict=True)],
            "similarity_exact": [
                bool(m == k or rule[m] == 1 or exact_sim[m]) for m, k in zip(members, kept, strict=True)
            ],
            "partition": [partitions[m] for m in members.tolist()],
        },
        schema=CLUSTER_SCHEMA,
    )


# ---------------------------------------------------------------------------------------------------------------
# Second pass


PARAGRAPH_EVENT_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("paragraph", pa.int32(), nullable=False),  # position in PARAGRAPH_SEPARATOR.split(text)
        pa.field("kept_id", pa.string(), nullable=False),  # the kept doc that owns the paragraph
    ]
)


def _remove_paragraphs(text: str, positions: set[int]) -> str:
    parts = PARAGRAPH_SEPARATOR.split(text)
    separators = PARAGRAPH_SEPARATOR.findall(text)
    out: list[str] = []
    for i, part in enumerate(parts):
        if i in positions:
            continue
        if out:
            out.append(separators[i - 1])
        out.append(part)
    return "".join(out)


def apply_plan(table: pa.Table, plan: DedupPlan) -> StageOutput:
    """Apply `plan` to one shard: reject dropped documents (stage "dedup", rule exact_duplicate /
    near_duplicate / paragraph_duplicate, reason naming the kept id, score = similarity) and remove the
    paragraphs that earlier kept documents own (one event each). Keeps every input column;
    kept + rejected == input rows. Stateless, so shards can be applied in any order or in parallel."""
    cfg = plan.config
    ids = table.column("id").to_pylist()
    reject_at: list[int] = []
    rules: list[str] = []
    reasons: list[str] = []
    scores: list[float | None] = []
    counts = {"exact_duplicate": 0, "near_duplicate": 0, "paragraph_duplicate": 0}
    for i, doc_id in enumerate(ids):
        decision = plan.drop_ids.get(doc_id)
        if decision is None:
            continue
        kind, kept_id, sim = decision
        name = f"{kind}_duplicate"
        counts[name] += 1
        reject_at.append(i)
        rules.append(name)
        scores.append(sim)
        if kind == "exact":
            reasons.append(f"exact duplicate (normalised text) of {kept_id}; kept by keep_rule={cfg.keep_rule}")
        elif kind == "near":
            how = "exact" if doc_id in plan.exact_similarity else "estimated"
            reasons.append(
                f"near duplicate of {kept_id} ({how} Jaccard {sim:.3f} >= {cfg.threshold} on "
                f"{cfg.ngram} {cfg.ngram_size}-grams); kept by keep_rule={cfg.keep_rule}"
            )
        else:
            reasons.append(f"every paragraph already appears in earlier kept documents (first in {kept_id})")
    rejected = set(reject_at)
    kept = table.take(pa.array([i for i in range(len(ids)) if i not in rejected], type=pa.int64()))
    events: dict[str, list[Any]] = {name: [] for name in PARAGRAPH_EVENT_SCHEMA.names}
    modified = 0
    if plan.paragraph_drops and kept.num_rows:
        texts = kept.column("text").to_pylist()
        for j, doc_id in enumerate(kept.column("id").to_pylist()):
            removals = plan.paragraph_drops.get(doc_id)
            if not removals:
                continue
            texts[j] = _remove_paragraphs(texts[j], {position for position, _ in removals})
            modified += 1
            for position, owner in removals:
                events["record_id"].append(doc_id)
                events["paragraph"].append(position)
                events["kept_id"].append(owner)
        events["stage"] = [STAGE] * len(events["record_id"])
        events["rule"] = ["paragraph_duplicate"] * len(events["record_id"])
        index = kept.schema.get_field_index("text")
        text_field = kept.schema.field(index)
        kept = kept.set_column(index, text_field, pa.array(texts, type=text_field.type))
    rejects = (
        reject_rows(
            table,
            reject_at,
            stage=STAGE,
            rules=rules,
            reasons=reasons,
            scores=scores,
            thresholds=[cfg.threshold] * len(reject_at),
        )
        if reject_at
        else empty_rejects()
    )
    stats = {
        "rows_in": table.num_rows,
        "kept": kept.num_rows,
        **counts,
        "paragraphs_removed": len(events["record_id"]),
        "documents_modified": modified,
    }
    return StageOutput(kept=kept, rejects=rejects, stats=stats, events=pa.table(events, schema=PARAGRAPH_EVENT_SCHEMA))


__all__ = [
    "CLUSTER_SCHEMA",
    "PARAGRAPH_EVENT_SCHEMA",
    "PARAGRAPH_SEPARATOR",
    "DedupConfig",
    "DedupIndex",
    "DedupPlan",
    "apply_plan",
    "compute_signatures",
    "exact_keys",
    "normalize",
    "optimal_bands",
]
