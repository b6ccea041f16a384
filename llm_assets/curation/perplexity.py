"""Perplexity under a per-language reference model, and trimming of each language's perplexity tails.

KenLM cannot be installed here, so the reference model is our own: a character n-gram model with
interpolated Witten-Bell smoothing, counted with numpy and scored in a vectorised pass over all documents of
a batch. Trimming is per language and uses percentiles of the whole partition: the asset scores every shard
first (8 bytes per document), calls `percentile_bounds` once, then `trim_batch` per shard.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm_assets.curation._hash_index import HashIndex
from llm_assets.curation.stage import StageOutput, reject_rows

STAGE = "perplexity"
FORMAT = "llm_assets.char_ngram_lm/1"
_MAGIC = b"LLMCNGLM"
_BOS = 0  # padding before a document's first character; never predicted
_OOV = 1  # any character outside the vocabulary
_FIRST_CHAR_ID = 2
_WINDOW_CHARS = 1000
_CHARS_PER_PASS = 1 << 20
_DIGITS = re.compile(r"\d")
_ASCII_DIGITS = str.maketrans("123456789", "000000000")
PREPROCESSING = "lowercase; every Unicode digit -> '0'; whitespace runs -> one space; NUL removed"


def _prepare(text: str) -> str:
    """What the model sees: case, digit values and layout carry little about fluency and inflate the vocab."""
    text = text.lower().replace("\x00", "")
    text = text.translate(_ASCII_DIGITS) if text.isascii() else _DIGITS.sub("0", text)
    # whitespace runs -> one space (str.split and the regex \s agree on what whitespace is), ~2x faster than re
    words = text.split()
    if not words:
        return " " if text else ""
    return (" " if text[0].isspace() else "") + " ".join(words) + (" " if text[-1].isspace() else "")


@functools.cache
def _character_tables() -> tuple[np.ndarray, np.ndarray]:
    """What the compiled `_prepare` looks up, per code point: its `str.lower()` and the flags of
    `_ngram_kernels` (CASE_IGNORABLE, CASED, DECIMAL, SPACE). Read off this Python's own `str.lower`, `str.split`
    and `re` (~0.1 s), so both versions of `_prepare` agree on whatever Unicode version it has.

    Case-ignorable and cased are what CPython's final-sigma rule tests; they are not exposed, so they are read
    off how `lower()` treats a capital sigma next to each code point (with "A", cased, and NUL, neither):
    "A c Σ" gives final sigma iff c is case-ignorable or cased, "A Σ c" iff case-ignorable or not cased, so
    both iff case-ignorable; "NUL c Σ" iff cased and not case-ignorable."""
    from llm_assets.curation import _ngram_kernels as k

    sigma, dotted_i, final = 0x3A3, 0x130, 0x3C2
    points = np.arange(0x110000, dtype=np.uint32)
    odd = np.r_[0xD800:0xE000, sigma, dotted_i]  # surrogates (not in valid text) and the two context-bound cases
    points[odd] = 0x41  # "A": cased, no digit, no space; their entries are set below
    text = points.tobytes().decode("utf-32-le")
    lower = np.frombuffer(text.lower().encode("utf-32-le"), dtype=np.uint32).copy()
    props = np.zeros(points.size, dtype=np.uint8)
    for flag, pattern in ((k.DECIMAL, _DIGITS), (k.SPACE, re.compile(r"\s"))):  # \s: str.isspace, as str.split
        props[[m.start() for m in pattern.finditer(text)]] |= flag
    lower[odd] = points[odd] = np.arange(0x110000, dtype=np.uint32)[odd]
    lower[sigma], lower[dotted_i] = 0x3C3, 0x69  # the compiled loop decides these two itself

    # Planes 0-2 and 14 (tags, variation selectors); the others hold CJK ideographs, private use and unassigned
    # code points, none cased or case-ignorable (the tests check every code point).
    probed = np.r_[0:0x30000, 0xE0000:0xE1000]
    probed_points = points[probed]
    probed_points[odd] = 0x20  # every odd code point is in plane 0

    def probe(first: int, second: int, third: int, at: int) -> np.ndarray:
        """Where lowercasing the 4-character groups (first, second, third, NUL) leaves final sigma at `at`;
        -1 stands for the code point itself."""
        groups = np.zeros((probed.size, 4), dtype=np.uint32)
        for column, value in enumerate((first, second, third)):
            groups[:, column] = probed_points if value < 0 else value
        groups[odd, :] = 0x20
        lowered = np.frombuffer(groups.tobytes().decode("utf-32-le").lower().encode("utf-32-le"), dtype=np.uint32)
        found = np.zeros(points.size, dtype=np.bool_)
        found[probed] = lowered.reshape(-1, 4)[:, at] == final
        for point in (sigma, dotted_i):  # "İ" lowercases to two characters: sigma's index is counted from the end
            chars = "".join(chr(point if v < 0 else v) for v in (first, second, third))
            found[point] = ord(chars.lower()[at if at < 2 else -1]) == final
        return found

    ignorable_or_cased = probe(0x41, -1, sigma, 2)
    ignorable_or_uncased = probe(0x41, sigma, -1, 1)
    cased = probe(0, -1, sigma, 2)
    props[ignorable_or_cased & ignorable_or_uncased] |= k.CASE_IGNORABLE
    props[cased] |= k.CASED
    return lower, props


def _prepared_windows(windows: Sequence[tuple[str, str]], pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the model scores for (context, window) pairs: per pair, the last `pad` characters of the prepared
    context (NUL-padded on the left), then the prepared window; as code points end to end, with where each
    prepared window starts and its length. The compiled loop, or `_prepare` per piece."""
    kernels = _compiled_kernels()
    if kernels is None:
        return _prepared_windows_python(windows, pad)
    parts = [piece for pair in windows for piece in pair]
    bounds = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)), out=bounds[1:])
    cps = np.frombuffer("".join(parts).encode("utf-32-le"), dtype=np.uint32)
    lower, props = _character_tables()
    return kernels.prepare_windows(cps, bounds[0:-1:2], bounds[1::2], bounds[1::2], bounds[2::2], pad, lower, props)


def _prepared_windows_python(windows: Sequence[tuple[str, str]], pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_prepared_windows` by `_prepare`: the definition the compiled loop is tested against."""
    pieces: list[str] = []
    lengths: list[int] = []
    for context, window in windows:
        context = _prepare(context)[-pad:] if pad else ""
        window = _prepare(window)
        pieces.append("\x00" * (pad - len(context)) + context + window)
        lengths.append(len(window))
    out = np.frombuffer("".join(pieces).encode("utf-32-le"), dtype=np.uint32)
    window_lengths = np.array(lengths, dtype=np.int64)
    starts = np.cumsum(pad + window_lengths) - window_lengths
    return out, starts, window_lengths


def _positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Every index of the ranges starts[w] .. starts[w] + lengths[w] - 1, in order."""
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def _top_keys(ids: np.ndarray, order: int, bits: int) -> np.ndarray:
    """keys[i] packs ids[i-order+1 .. i] (the n-gram ending at i), the predicted id in the lowest bits; the
    k-gram key of i is its lowest k * bits bits."""
    keys = ids.astype(np.uint64)
    for back in range(1, min(order, len(ids))):
        keys[back:] |= ids[:-back].astype(np.uint64) << np.uint64(bits * back)
    return keys


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values in a sorted array."""
    if not len(sorted_keys):
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))


def _count_ngrams(top: np.ndarray, order: int, bits: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Sorted distinct keys and counts of every order from the keys of the highest one (`top`).

    The k-gram key of a position is its (k+1)-gram key with the oldest id masked off, so each lower order
    is counted from the distinct keys of the order above: one sort of all positions, then ever smaller ones.
    """
    kernels = _compiled_kernels()
    if kernels is not None:  # the same arrays: sum in one hashed pass, then sort only the distinct keys
        keys, counts = _sorted_sums(kernels, top, np.empty(0, dtype=np.int64))
        all_keys, all_counts = [keys], [counts]
        for k in range(order - 1, 0, -1):
            keys, counts = _sorted_sums(kernels, keys & np.uint64((1 << (bits * k)) - 1), counts)
            all_keys.append(keys)
            all_counts.append(counts)
        return all_keys[::-1], all_counts[::-1]
    keys, counts = np.unique(top, return_counts=True)  # pragma: no cover - numba is a dependency
    counts = counts.astype(np.int64)
    all_keys, all_counts = [keys], [counts]
    for k in range(order - 1, 0, -1):
        masked = keys & np.uint64((1 << (bits * k)) - 1)
        by_key = np.argsort(masked, kind="stable")
        masked = masked[by_key]
        starts = _run_starts(masked)
        keys = masked[starts]
        counts = np.add.reduceat(counts[by_key], starts) if len(starts) else np.empty(0, dtype=np.int64)
        all_keys.append(keys)
        all_counts.append(counts)
    return all_keys[::-1], all_counts[::-1]


def _sorted_sums(kernels: Any, keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distinct, sums = kernels.count_keys(keys, weights)
    by_key = np.argsort(distinct)
    return distinct[by_key], sums[by_key]


class CharNgramLM:
    """Character n-gram model with interpolated Witten-Bell smoothing; `perplexity` is per character.

    Only the counts are stored (integers, so the bytes and the sha256 are the same on every machine);
    probabilities are derived on load. Build one with `CharNgramLM.train`.
    """

    def __init__(
        self,
        *,
        order: int,
        language: str,
        vocabulary: str,
        ngram_keys: Sequence[np.ndarray],
        ngram_counts: Sequence[np.ndarray],
        training_chars: int,
        corpus: str,
    ) -> None:
        if order < 1 or len(ngram_keys) != order or len(ngram_counts) != order:
            raise ValueError(f"a model of order {order} needs {order} key and count arrays")
        self.order = order
        self.language = language
        self.vocabulary = vocabulary
        self.training_chars = training_chars
        self.corpus = corpus
        self.bits = _bits_for(len(vocabulary))
        if self.bits * order > 64:
            raise ValueError(f"{len(vocabulary)} characters x order {order} do not fit 64-bit keys")
        self.ngram_keys = [np.ascontiguousarray(k, dtype=np.uint64) for k in ngram_keys]
        self.ngram_counts = [np.ascontiguousarray(c, dtype=np.int64) for c in ngram_counts]
        codepoints = np.array([ord(ch) for ch in vocabulary], dtype=np.uint32)
        self._sorted_codepoints = np.sort(codepoints)
        self._sorted_ids = (np.argsort(codepoints, kind="stable") + _FIRST_CHAR_ID).astype(np.uint64)
        self._derive()

    def _derive(self) -> None:
        """Interpolated Witten-Bell: P_k(c|h) = (C(hc) + N1+(h.) P_{k-1}(c|h')) / (C(h) + N1+(h.)); an unseen
        (h, c) gets gamma(h) P_{k-1}(c|h') with gamma(h) = N1+(h.) / (C(h) + N1+(h.)); order 0 is uniform."""
        bits = np.uint64(self.bits)
        self._log_uniform = -math.log(len(self.vocabulary) + 1)  # characters + OOV can be predicted
        self._ngram_index: list[HashIndex] = []
        self._ngram_logp: list[np.ndarray] = []
        self._context_index: list[HashIndex] = []
        self._context_log_gamma: list[np.ndarray] = []
        lower_prob = np.empty(0)
        for k, (keys, counts) in enumerate(zip(self.ngram_keys, self.ngram_counts, strict=True), start=1):
            # keys are sorted with the predicted id in the lowest bits, so their contexts come sorted too
            contexts = keys >> bits
            starts = _run_starts(contexts)
            context_keys = contexts[starts]
            totals = np.add.reduceat(counts, starts).astype(np.float64) if len(keys) else np.empty(0)
            sizes = np.diff(np.append(starts, len(keys)))
            types = sizes.astype(np.float64)
            group = np.repeat(np.arange(len(starts)), sizes)
            if k == 1:
                lower = np.full(len(keys), math.exp(self._log_uniform))
            else:
                suffix = keys & np.uint64((1 << (self.bits * (k - 1))) - 1)
                lower = lower_prob[self._ngram_index[-1].find(suffix)]
            prob = (counts + types[group] * lower) / (totals[group] + types[group])
            lower_prob = prob
            self._ngram_index.append(HashIndex(keys))
            self._ngram_logp.append(np.log(prob))
            self._context_index.append(HashIndex(context_keys))
            self._context_log_gamma.append(np.log(types / (totals + types)))
        self._flat_tables: tuple[np.ndarray, ...] = (
            *self._lay_end_to_end(self._ngram_index, self._ngram_logp),
            *self._lay_end_to_end(self._context_index, self._context_log_gamma),
        )
        # The n-gram keys are the ngram index's keys: point them at the same views.
        self.ngram_keys = [index.keys for index in self._ngram_index]

    @staticmethod
    def _lay_end_to_end(indexes: list[HashIndex], values: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Every order's table in one array each, with offsets, for the compiled loop; the per-order arrays
        become views into them (the numpy passes keep working), so the model is held once, not twice. Keys and
        values are interleaved in one buffer (key i at 2i as uint64, its value at 2i + 1 as float64): the
        loop's hit then reads one cache line after the slot instead of two."""

        def offsets(arrays: Sequence[np.ndarray]) -> np.ndarray:
            return np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)

        slot_at, key_at = offsets([ix.slots for ix in indexes]), offsets([ix.keys for ix in indexes])
        slots = np.concatenate([ix.slots for ix in indexes])
        pairs = np.empty((int(key_at[-1]), 2), dtype=np.uint64)
        for k, index in enumerate(indexes):
            pairs[key_at[k] : key_at[k + 1], 0] = index.keys
            pairs[key_at[k] : key_at[k + 1], 1] = np.asarray(values[k], dtype=np.float64).view(np.uint64)
        as_float = pairs.view(np.float64)
        for k, index in enumerate(indexes):
            index.slots = slots[slot_at[k] : slot_at[k + 1]]
            index.keys = pairs[key_at[k] : key_at[k + 1], 0]
            values[k] = as_float[key_at[k] : key_at[k + 1], 1]
        shifts = np.array([index.shift for index in indexes], dtype=np.uint64)
        return slots, slot_at, pairs.reshape(-1), key_at, shifts, as_float.reshape(-1)

    @classmethod
    def train(
        cls, texts: Iterable[str], order: int = 5, language: str = "und", *, corpus: str = "", max_vocabulary: int = 0
    ) -> CharNgramLM:
        """Count every k-gram (k <= order) of `texts` after `_prepare`; each text starts from BOS context.

        The vocabulary is every character seen, most frequent first, capped so that `order` ids fit 64 bits
        (4094 characters at order 5) or at `max_vocabulary` if set; the rest count as one OOV character.
        `corpus` describes the training data for `metadata()`.
        """
        if order < 1:
            raise ValueError(f"order must be at least 1, got {order}")
        # every text after `order - 1` NULs (BOS context), prepared
        prepared, _, _ = _prepared_windows([("", text) for text in texts if text], order - 1)
        # counted per code point (O(n), no sort): the same ascending code points and counts as np.unique
        char_counts = np.bincount(prepared)
        if char_counts.size:
            char_counts[0] = 0  # the BOS padding (prepared text has no NUL)
        codepoints = np.flatnonzero(char_counts).astype(np.uint32)
        char_counts = char_counts[codepoints]
        cap = (1 << (64 // order)) - _FIRST_CHAR_ID
        if max_vocabulary:
            cap = min(cap, max_vocabulary)
        # most frequent first, ties by code point (a stable sort keeps np.unique's ascending code points)
        ranked = codepoints[np.argsort(-char_counts, kind="stable")][:cap]
        vocabulary = "".join(map(chr, ranked.tolist()))
        bits = _bits_for(len(vocabulary))
        empty = cls(
            order=order,
            language=language,
            vocabulary=vocabulary,
            ngram_keys=[np.empty(0, np.uint64)] * order,
            ngram_counts=[np.empty(0, np.int64)] * order,
            training_chars=0,
            corpus=corpus,
        )
        ids = empty._encode_code_points(prepared)
        predicted = ids != _BOS
        keys, counts = _count_ngrams(_top_keys(ids, order, bits)[predicted], order, bits)
        return cls(
            order=order,
            language=language,
            vocabulary=vocabulary,
            ngram_keys=keys,
            ngram_counts=counts,
            training_chars=int(predicted.sum()),
            corpus=corpus,
        )

    def _encode(self, text: str) -> np.ndarray:
        """Character ids: NUL is BOS (never in prepared text), vocabulary chars 2.., everything else OOV."""
        return self._encode_code_points(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))

    def _encode_code_points(self, codepoints: np.ndarray) -> np.ndarray:
        kernels = _compiled_kernels()
        if kernels is not None:
            ids = kernels.table_ids(codepoints, self._bmp_ids)
            if ids.size == codepoints.size:
                return ids
        elif len(codepoints) and int(codepoints.max()) < len(self._bmp_ids):
            return self._bmp_ids[codepoints].astype(np.uint64)
        if not len(self._sorted_codepoints):
            return np.where(codepoints == 0, _BOS, _OOV).astype(np.uint64)
        at = np.minimum(np.searchsorted(self._sorted_codepoints, codepoints), len(self._sorted_codepoints) - 1)
        ids = np.where(self._sorted_codepoints[at] == codepoints, self._sorted_ids[at], np.uint64(_OOV))
        return np.where(codepoints == 0, np.uint64(_BOS), ids)

    @functools.cached_property
    def _bmp_ids(self) -> np.ndarray:
        """`_encode`'s answer for every Basic Multilingual Plane code point: one table look-up per character."""
        table = np.full(1 << 16, _OOV, dtype=np.uint32)  # ids < 2^21: there are no more code points
        bmp = self._sorted_codepoints < len(table)
        table[self._sorted_codepoints[bmp]] = self._sorted_ids[bmp]
        table[0] = _BOS
        return table

    def _log_probs(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """ln P(ids[i] | the order-1 ids before it) for each i in `positions`: the compiled loop (~4x the numpy
        passes, bit-identical to them), or the numpy passes where numba cannot load. (Scoring sums per document
        in the same loop, `window_log_prob_sums`, without this per-position array.)"""
        kernels = _compiled_kernels()
        if kernels is None:
            return self._log_probs_numpy(ids, positions)
        # each position a window of one, owned by itself: its sum is its value (0.0 + x is x)
        n = len(positions)
        windows = (positions.astype(np.int64), np.ones(n, dtype=np.int64), np.arange(n, dtype=np.int64), n)
        return kernels.window_log_prob_sums(ids, *windows, self.bits, self.order, *self._flat_tables, self._log_uniform)

    def _log_probs_numpy(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The reference for the compiled loop: one vectorised hash lookup per order."""
        key = _top_keys(ids, self.order, self.bits)[positions]
        bits = np.uint64(self.bits)
        result = np.zeros(len(positions))
        backoff = np.zeros(len(positions))
        pending = np.arange(len(positions))  # rows whose longest seen n-gram is still to be found
        for k in range(self.order, 0, -1):
            if k < self.order:
                key = key & np.uint64((1 << (self.bits * k)) - 1)
            found = self._ngram_index[k - 1].find(key)
            hit = found >= 0
            result[pending[hit]] = self._ngram_logp[k - 1][found[hit]] + backoff[pending[hit]]
            pending, key = pending[~hit], key[~hit]
            context = self._context_index[k - 1].find(key >> bits)
            seen = context >= 0
            backoff[pending[seen]] += self._context_log_gamma[k - 1][context[seen]]
        result[pending] = self._log_uniform + backoff[pending]
        return result

    def perplexities(self, texts: Sequence[str], max_chars_scored: int = 20_000) -> np.ndarray:
        """Per-character perplexity of each text (NaN for a text with nothing to score), vectorised over texts.

        A text longer than `max_chars_scored` is scored on evenly spaced windows of about 1,000 characters
        totalling `max_chars_scored`, each with its real preceding context, so the cost per document is bounded.
        Texts are scored in groups of about 1M characters, which bounds memory for any batch size.
        """
        pad = self.order - 1
        log_prob_sum = np.zeros(len(texts))
        scored_chars = np.zeros(len(texts), dtype=np.int64)
        windows: list[tuple[str, str]] = []
        owners: list[int] = []
        pending = 0
        for doc, text in enumerate(texts):
            for context, window in _windows(text or "", max_chars_scored, pad):
                windows.append((context, window))
                owners.append(doc)
                pending += pad + len(window)
            if pending >= _CHARS_PER_PASS or doc == len(texts) - 1:
                self._accumulate(windows, owners, log_prob_sum, scored_chars)
                windows, owners, pending = [], [], 0
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(scored_chars > 0, np.exp(-log_prob_sum / np.maximum(scored_chars, 1)), np.nan)

    def _accumulate(
        self,
        windows: list[tuple[str, str]],
        owners: list[int],
        log_prob_sum: np.ndarray,
        scored_chars: np.ndarray,
    ) -> None:
        """Score (context, window) pairs (the window after order-1 characters of context) and add to the owners'
        sums."""
        if not windows:
            return
        prepared, starts, lengths = _prepared_windows(windows, self.order - 1)
        ids = self._encode_code_points(prepared)
        owner = np.array(owners, dtype=np.int64)
        kernels = _compiled_kernels()
        if kernels is not None:
            log_prob_sum += kernels.window_log_prob_sums(
                ids, starts, lengths, owner, len(log_prob_sum), self.bits, self.order, *self._flat_tables,
                self._log_uniform,
            )  # fmt: skip
        else:
            values = self._log_probs_numpy(ids, _positions(starts, lengths))
            log_prob_sum += np.bincount(np.repeat(owner, lengths), weights=values, minlength=len(log_prob_sum))
        np.add.at(scored_chars, owner, lengths)

    def perplexity(self, text: str, max_chars_scored: int = 20_000) -> float:
        return float(self.perplexities([text], max_chars_scored)[0])

    def to_bytes(self) -> bytes:
        """Magic, header length, canonical JSON header, then the raw little-endian arrays. No pickle."""
        arrays = [*self.ngram_keys, *self.ngram_counts]
        header = {
            "format": FORMAT,
            "order": self.order,
            "language": self.language,
            "vocabulary": self.vocabulary,
            "training_chars": self.training_chars,
            "corpus": self.corpus,
            "smoothing": "interpolated Witten-Bell",
            "preprocessing": PREPROCESSING,
            "arrays": [len(a) for a in arrays],
        }
        blob = json.dumps(header, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode("ascii")
        body = b"".join(
            np.ascontiguousarray(a, dtype="<u8" if i < self.order else "<i8").tobytes() for i, a in enumerate(arrays)
        )
        return _MAGIC + struct.pack("<Q", len(blob)) + blob + body

    @classmethod
    def from_bytes(cls, data: bytes) -> CharNgramLM:
        if data[: len(_MAGIC)] != _MAGIC:
            raise ValueError("not a serialised CharNgramLM (bad magic bytes)")
        start = len(_MAGIC) + 8
        (size,) = struct.unpack("<Q", data[len(_MAGIC) : start])
        header = json.loads(data[start : start + size])
        if header.get("format") != FORMAT:
            raise ValueError(f"unsupported model format {header.get('format')!r}; expected {FORMAT!r}")
        order = header["order"]
        offset = start + size
        arrays = []
        for i, length in enumerate(header["arrays"]):
            dtype = np.dtype("<u8" if i < order else "<i8")
            arrays.append(np.frombuffer(data, dtype=dtype, count=length, offset=offset).copy())
            offset += length * 8
        if offset != len(data):
            raise ValueError(f"serialised CharNgramLM has {len(data) - offset} trailing bytes; the file is damaged")
        return cls(
            order=order,
            language=header["language"],
            vocabulary=header["vocabulary"],
            ngram_keys=arrays[:order],
            ngram_counts=arrays[order:],
            training_chars=header["training_chars"],
            corpus=header["corpus"],
        )

    @functools.cached_property
    def sha256(self) -> str:
        """Hash of `to_bytes()`: the model's identity in lineage metadata."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "order": self.order,
            "language": self.language,
            "smoothing": "interpolated Witten-Bell",
            "preprocessing": PREPROCESSING,
            "training_chars": self.training_chars,
            "vocabulary_size": len(self.vocabulary),
            "ngrams_per_order": [len(k) for k in self.ngram_keys],
            "training_corpus": self.corpus,
            "sha256": self.sha256,
        }


@functools.cache
def _compiled_kernels() -> Any:
    """The numba loop (imported on first use), or None where numba is missing or cannot keep its cache."""
    try:
        from llm_assets.curation import _ngram_kernels
    except (ImportError, RuntimeError):  # pragma: no cover - numba is a dependency
        return None
    return _ngram_kernels


def _bits_for(vocabulary_size: int) -> int:
    return max(1, (vocabulary_size + _FIRST_CHAR_ID - 1).bit_length())


def _windows(text: str, max_chars: int, context_chars: int) -> list[tuple[str, str]]:
    """(preceding context, window) pairs covering at most `max_chars` characters of `text`, evenly spaced."""
    if len(text) <= max_chars:
        return [("", text)] if text else []
    count = max(1, max_chars // _WINDOW_CHARS)
    width = max_chars // count
    starts = np.linspace(0, len(text) - width, count).astype(int)
    return [(text[max(0, s - context_chars) : s], text[s : s + width]) for s in starts]


class PercentileOverride(BaseModel):
    """Per-language replacement of the trimming percentiles; None keeps the default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lower_percentile: float | None = Field(default=None, ge=0.0, le=100.0)
    upper_percentile: float | None = Field(default=None, ge=0.0, le=100.0)


class PerplexityConfig(BaseModel):
    """Scoring and trimming. Percentiles are per language over the whole partition; 0 and 100 trim nothing.

    Languages with fewer than `min_docs_for_percentiles` scored documents are not trimmed (a percentile of
    a handful of documents would remove real text); `trim_batch` lists them in its stats.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    order: int = Field(default=5, ge=1, le=12)
    max_chars_scored: int = Field(default=20_000, ge=100)
    lower_percentile: float = Field(default=0.0, ge=0.0, le=100.0)
    upper_percentile: float = Field(default=99.0, ge=0.0, le=100.0)
    per_language: dict[str, PercentileOverride] = Field(default_factory=dict)
    min_docs_for_percentiles: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> PerplexityConfig:
        for language in [None, *sorted(self.per_language)]:
            low, high = self.percentiles_for(language)
            if low >= high:
                where = f"per_language[{language!r}]" if language else "the default"
                raise ValueError(f"{where}: lower_percentile {low} must be below upper_percentile {high}")
        return self

    def percentiles_for(self, language: str | None) -> tuple[float, float]:
        override = self.per_language.get(language or "")
        low = override.lower_percentile if override and override.lower_percentile is not None else None
        high = override.upper_percentile if override and override.upper_percentile is not None else None
        return (
            self.lower_percentile if low is None else low,
            self.upper_percentile if high is None else high,
        )


def score_batch(table: pa.Table, models: Mapping[str, CharNgramLM], *, max_chars_scored: int = 20_000) -> pa.Table:
    """Add `perplexity` (float64) under the model for each row's `lang`; null where there is no model."""
    texts = table.column("text").to_pylist()
    languages = table.column("lang").to_pylist()
    values: list[float | None] = [None] * len(texts)
    rows_by_language: dict[str, list[int]] = {}
    for i, language in enumerate(languages):
        if language in models:
            rows_by_language.setdefault(language, []).append(i)
    for language, rows in rows_by_language.items():
        scores = models[language].perplexities([texts[i] for i in rows], max_chars_scored)
        for i, score in zip(rows, scores.tolist(), strict=True):
            values[i] = None if math.isnan(score) else score
    column = pa.array(values, type=pa.float64())
    if "perplexity" in table.column_names:
        return table.set_column(table.schema.get_field_index("perplexity"), "perplexity", column)
    return table.append_column("perplexity", column)


def percentile_bounds(
    perplexities_by_lang: Mapping[str, np.ndarray], config: PerplexityConfig
) -> dict[str, tuple[float, float]]:
    """(low, high) per language from the perplexities of the whole partition; documents strictly outside
    are trimmed. A percentile of 0 gives -inf and 100 gives +inf. Languages with too few documents are absent."""
    bounds: dict[str, tuple[float, float]] = {}
    for language, values in sorted(perplexities_by_lang.items()):
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if len(finite) < config.min_docs_for_percentiles:
            continue
        low, high = config.percentiles_for(language)
        bounds[language] = (
            float(np.percentile(finite, low)) if low > 0 else -math.inf,
            float(np.percentile(finite, high)) if high < 100 else math.inf,
        )
    return bounds


def trim_batch(table: pa.Table, bounds: Mapping[str, tuple[float, float]]) -> StageOutput:
    """Reject documents whose perplexity is outside their language's bounds; others pass unchanged."""
    perplexities = table.column("perplexity").to_pylist()
    languages = table.column("lang").to_pylist()
    kept_idx: list[int] = []
    rejected: list[tuple[int, str, float, float, str]] = []
    untrimmed: Counter[str] = Counter()
    unscored = 0
    for i, (value, language) in enumerate(zip(perplexities, languages, strict=True)):
        if value is None or math.isnan(value):
            unscored += 1
            kept_idx.append(i)
            continue
        if language not in bounds:
            untrimmed[language] += 1
            kept_idx.append(i)
            continue
        low, high = bounds[language]
        if value < low:
            rejected.append((i, "perplexity_too_low", value, low, f"perplexity {value:.2f} < {low:.2f} ('{language}')"))
        elif value > high:
            rejected.append(
                (i, "perplexity_too_high", value, high, f"perplexity {value:.2f} > {high:.2f} ('{language}')")
            )
        else:
            kept_idx.append(i)
    kept = table.take(pa.array(kept_idx, type=pa.int64()))
    rejects = reject_rows(
        table,
        [r[0] for r in rejected],
        stage=STAGE,
        rules=[r[1] for r in rejected],
        reasons=[r[4] for r in rejected],
        scores=[r[2] for r in rejected],
        thresholds=[r[3] for r in rejected],
    )
    stats = {
        "docs_in": table.num_rows,
        "docs_kept": kept.num_rows,
        "docs_rejected": rejects.num_rows,
        "rejected_by_rule": dict(sorted(Counter(r[1] for r in rejected).items())),
        "languages_trimmed": sorted(bounds),
        "languages_not_trimmed": dict(sorted(untrimmed.items())),
        "docs_without_perplexity": unscored,
    }
    return StageOutput(kept=kept, rejects=rejects, stats=stats)
