"""Compiled (numba) pass for the quality features: one walk over each document's UTF-8 bytes instead of a
dozen polars string passes (lowercase, extract words, explode, hash, join stopwords, split lines, strip,
group, ...).

It computes what `quality._measure_piece_polars` defines, on tables that `quality._char_tables` reads off
polars itself, one entry per code point: whether the lowercased character is a word character (`\\w`), is
whitespace (`\\s`, which is also what `strip_chars` strips), is a symbol (`\\p{S}` or
`\\p{Extended_Pictographic}`), and its lowercase (U+0130 lowercases to two code points, the second in
`lower_extra`). A capital sigma lowercases to final or medial sigma by the rule `str.to_lowercase` applies
(a cased letter before it and none after, case-ignorable characters skipped), with `sigma` from
`dedup._CodePoints`. Words, word 2-grams and lines are told apart by 64-bit hashes (of their lowercased and
their raw code points); a collision within one document could only merge two counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from llm_assets.curation._ngram_kernels import _find
from llm_assets.curation._utf8_kernels import _char_at, _char_before, _decode

_OTHER, _CASED, _IGNORABLE = 0, 1, 2
_SIGMA, _FINAL_SIGMA = 0x3A3, 0x3C2
WORD, SPACE, SYMBOL = 1, 2, 4  # bits of the `kind` table
FEATURES = (
    *("chars", "spaces", "symbols", "words", "stopwords"),
    *("top_ngram_chars", "lines", "duplicate_lines", "blocklist_hits"),
)  # the columns of measure_bytes's per_doc
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_PAIR = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_PACK = 1 << 32  # a 2-gram's span (characters) is below this, as in quality._PACK
_FREE, _ONE, _LOW = np.uint64(0), np.uint64(1 << 32), np.uint64((1 << 32) - 1)  # count table words (_counter)


@njit(cache=True, nogil=True, inline="always")
def _finish(h: Any) -> Any:
    """splitmix64's finaliser over an FNV-1a state, so nearby states spread over all 64 bits."""
    h = (h ^ (h >> _S30)) * _MIX1
    h = (h ^ (h >> _S27)) * _MIX2
    return h ^ (h >> _S31)


@njit(cache=True, nogil=True)
def _final_sigma(raw: np.ndarray, lead: int, begin: int, end: int, sigma: np.ndarray) -> bool:
    """Whether the capital sigma at raw[lead:lead + 2] lowercases to final sigma within raw[begin:end]: a cased
    character before it and none after it, case-ignorable characters skipped (as `str.to_lowercase`)."""
    before = _OTHER
    pos = lead
    while pos > begin:
        cp, start = _char_before(raw, pos)
        kind = sigma[cp] if cp < sigma.size else _OTHER
        pos = start
        if kind != _IGNORABLE:
            before = kind
            break
    if before != _CASED:
        return False
    pos = lead + 2
    while pos < end:
        cp, pos = _char_at(raw, pos)
        kind = sigma[cp] if cp < sigma.size else _OTHER
        if kind != _IGNORABLE:
            return kind != _CASED
    return True


@njit(cache=True, nogil=True)
def _counter(capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """An open-addressing count table of `capacity` slots, each a (key, count << 32 | value) pair of words
    side by side (count 0 = free), so a probe reads one cache line; and the list of slots in use."""
    return np.zeros(2 * capacity, dtype=np.uint64), np.zeros(capacity, dtype=np.int64)


@njit(cache=True, nogil=True, inline="always")
def _place(table: np.ndarray, slots: np.ndarray, used: int, key: Any, value: int) -> int:
    """Add one to `key`'s count (well mixed: its low bits pick the slot), keeping the first `value` seen
    with it (below 2^32); the table must have a free slot. Returns the slots in use."""
    mask = (table.size >> 1) - 1
    j = np.int64(key & np.uint64(mask))
    while True:
        meta = table[2 * j + 1]
        if meta == _FREE:
            table[2 * j] = key
            table[2 * j + 1] = _ONE | np.uint64(value)
            slots[used] = j
            return used + 1
        if table[2 * j] == key:
            table[2 * j + 1] = meta + _ONE
            return used
        j = (j + 1) & mask


@njit(cache=True, nogil=True, inline="always")
def _listed(
    slots: np.ndarray, slot_at: np.ndarray, keys: np.ndarray, key_at: np.ndarray, shift: np.ndarray, at: int, word: Any
) -> bool:
    """Whether `word` is in word list `at` (see measure_bytes)."""
    return _find(slots, slot_at[at], keys, key_at[at], shift[at], word) >= 0


@njit(cache=True, nogil=True)
def measure_bytes(
    raw: np.ndarray,
    starts: np.ndarray,
    size: int,
    kind: np.ndarray,
    lower: np.ndarray,
    lower_extra: np.ndarray,
    sigma: np.ndarray,
    doc_lang: np.ndarray,
    list_slots: np.ndarray,
    list_slot_at: np.ndarray,
    list_keys: np.ndarray,
    list_key_at: np.ndarray,
    list_shift: np.ndarray,
    block: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Measure each "\\n"-terminated doc of raw[:size] (doc d starts at starts[d]); its count tables take
    48-96 bytes per byte of the longest doc, so callers send long docs elsewhere (`quality.KERNEL_DOC_BYTES`).

    A word is a run of characters whose lowercase is a word character; it counts as a stopword when the hash
    of its lowercase is in word list l = doc_lang[d] (-1: no list), and as blocklisted when in word list
    `block` (-1: none). Word list l is a `_hash_index.HashIndex` laid end to end with the others, as the
    n-gram model's tables are: its slots are list_slots[list_slot_at[l]:list_slot_at[l + 1]], its keys
    list_keys[list_key_at[l]:list_key_at[l + 1]], its shift list_shift[l]; one or two probes per word where a
    binary search took ten. Lines are the "\\n" pieces that are not empty once stripped of whitespace.

    Returns per_doc [n, 9] in FEATURES order (top_ngram_chars: count times span of the doc's word 2-gram with
    the highest (count, span) among those occurring at least twice, else 0; duplicate_lines: lines minus
    distinct lines), and each doc's first word's hash and its lowercase length in characters (0 where none),
    which is how the stopword and blocklist tables are hashed."""
    n_docs = starts.size
    per_doc = np.zeros((n_docs, 9), dtype=np.int64)
    first_hash = np.zeros(n_docs, dtype=np.uint64)
    first_chars = np.zeros(n_docs, dtype=np.int64)
    pair_table, pair_slots = _counter(1024)
    line_table, line_slots = _counter(256)
    for d in range(n_docs):
        begin = starts[d]
        end = (starts[d + 1] if d + 1 < n_docs else size) - 1  # the doc's "\n" terminator is not its own
        # Tables at least twice the most words (and lines) the doc can hold, so they never fill (growing them
        # inside the loop cost ~7x), and not far larger: a table sized for a long doc would make a short
        # doc's few keys cache misses.
        capacity = 1024
        while capacity < 2 * ((end - begin) // 2 + 2):
            capacity *= 2
        if pair_slots.size < capacity or pair_slots.size > 8 * capacity:
            pair_table, pair_slots = _counter(capacity)
            line_table, line_slots = _counter(capacity)
        lang = doc_lang[d]
        has_list = lang >= 0 and list_key_at[lang + 1] > list_key_at[lang]
        chars = spaces = symbols = words = stopwords = blocked = lines = 0
        n_pairs = n_lines = 0
        in_word = False
        h = _FNV_OFFSET
        length = 0
        previous = np.uint64(0)
        previous_length = -1
        # the current line: its hash so far, and the hash up to its last non-space character
        line_h = _FNV_OFFSET
        line_kept = _FNV_OFFSET
        line_started = False
        i = begin
        while i <= end:
            if i == end:
                cp, width = np.int64(0x0A), 1  # the doc's end closes its last word and line
            elif raw[i] < 0x80:
                cp, width = np.int64(raw[i]), 1
            else:
                cp, width = _decode(raw, i)
                if width == 0:  # not well-formed (Arrow strings always are): the byte as a code point
                    cp, width = np.int64(raw[i]), 1
            flags = kind[cp] if cp < kind.size else 0
            if i < end:
                chars += 1
                spaces += (flags & SPACE) != 0
                symbols += (flags & SYMBOL) != 0
            if flags & WORD:
                if not in_word:
                    in_word = True
                    h = _FNV_OFFSET
                    length = 0
                low = lower[cp] if cp < lower.size else cp
                if cp == _SIGMA and _final_sigma(raw, i, begin, end, sigma):
                    low = _FINAL_SIGMA
                h = (h ^ np.uint64(low)) * _FNV_PRIME
                length += 1
                extra = lower_extra[cp] if cp < lower_extra.size else 0
                if extra:
                    h = (h ^ np.uint64(extra)) * _FNV_PRIME
                    length += 1
            elif in_word:
                in_word = False
                word = _finish(h)
                if words == 0:
                    first_hash[d] = word
                    first_chars[d] = length
                words += 1
                if has_list and _listed(list_slots, list_slot_at, list_keys, list_key_at, list_shift, lang, word):
                    stopwords += 1
                if block >= 0 and _listed(list_slots, list_slot_at, list_keys, list_key_at, list_shift, block, word):
                    blocked += 1
                if previous_length >= 0:
                    n_pairs = _place(
                        pair_table, pair_slots, n_pairs, _finish(previous * _PAIR ^ word), previous_length + length + 1
                    )
                previous = word
                previous_length = length
            if cp == 0x0A:
                if line_started:
                    n_lines = _place(line_table, line_slots, n_lines, _finish(line_kept), 0)
                    lines += 1
                line_h = _FNV_OFFSET
                line_kept = _FNV_OFFSET
                line_started = False
            elif flags & SPACE:
                if line_started:  # inner whitespace counts only once a later character is not whitespace
                    line_h = (line_h ^ np.uint64(cp)) * _FNV_PRIME
            else:
                line_started = True
                line_h = (line_h ^ np.uint64(cp)) * _FNV_PRIME
                line_kept = line_h
            i += width
        best = 0
        for k in range(n_pairs):  # read each pair's count and span, and free its slot for the next doc
            meta = pair_table[2 * pair_slots[k] + 1]
            pair_table[2 * pair_slots[k] + 1] = _FREE
            count = int(meta >> np.uint64(32))
            if count >= 2:
                best = max(best, count * _PACK + int(meta & _LOW))
        for k in range(n_lines):
            line_table[2 * line_slots[k] + 1] = _FREE
        per_doc[d, 0] = chars
        per_doc[d, 1] = spaces
        per_doc[d, 2] = symbols
        per_doc[d, 3] = words
        per_doc[d, 4] = stopwords
        per_doc[d, 5] = (best // _PACK) * (best % _PACK)
        per_doc[d, 6] = lines
        per_doc[d, 7] = lines - n_lines
        per_doc[d, 8] = blocked
    return per_doc, first_hash, first_chars
