"""Compiled (numba) loops for the character n-gram model: the back-off lookup, scored window by window and
summed per document (`window_log_prob_sums`: one loop over the positions instead of two numpy hash-table
passes per order), the text preparation that feeds it (`prepare_windows`, `perplexity._prepare` on code
points), and training's counting. `perplexity.CharNgramLM._log_probs_numpy` and `perplexity._prepare` stay
as the references (tests compare both) and as the fallback where numba cannot load.

Tables are `_hash_index.HashIndex`es of every order laid end to end (`_Tables`): for order k (1-based, index
k - 1) its slots are slots[slot_at[k-1] : slot_at[k]] holding indices into keys[key_at[k-1] : key_at[k]].
Each step adds in the same order as the numpy passes, so the log-probabilities are bit-identical.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True, inline="always")
def _find(
    slots: np.ndarray, slot_base: int, keys: np.ndarray, key_base: int, shift: Any, query: Any, stride: int = 1
) -> int:
    """Index (within its order) of `query` among that order's keys, or -1: linear probing from the home slot.
    Key i is keys[i * stride] (stride 2: keys interleaved with their values)."""
    slot = slot_base + np.int64((query * _GOLDEN) >> shift)
    while True:
        index = slots[slot]
        if index < 0:
            return -1
        if keys[(key_base + index) * stride] == query:
            return index
        slot += 1


@njit(cache=True, nogil=True)
def window_log_prob_sums(
    ids: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    owners: np.ndarray,
    size: int,
    bits: int,
    order: int,
    ngram_slots: np.ndarray,
    ngram_slot_at: np.ndarray,
    ngram_keys: np.ndarray,
    ngram_key_at: np.ndarray,
    ngram_shift: np.ndarray,
    ngram_logp: np.ndarray,
    context_slots: np.ndarray,
    context_slot_at: np.ndarray,
    context_keys: np.ndarray,
    context_key_at: np.ndarray,
    context_shift: np.ndarray,
    context_log_gamma: np.ndarray,
    log_uniform: float,
) -> np.ndarray:
    """Per owner (0 .. size - 1), the sum of ln P(ids[p] | the order-1 ids before it) over the positions p of
    its windows (window w: starts[w] .. starts[w] + lengths[w] - 1, owned by owners[w]), added in position
    order. ln P is the longest n-gram the model has plus the back-off weights of the longer contexts it had to
    skip. The n-gram ending at p is packed as `perplexity._top_keys` packs it (ids[p] in the lowest bits): at
    a window's start from the ids, then rolled on one id per position.

    Keys and values are interleaved: entry i's key is keys[2 * i] and its value values[2 * i + 1] (the same
    memory seen as uint64 and as float64), so a hit reads one cache line after the slot, not two. (One loop,
    not helpers: split into functions, numba's code was several times slower.)"""
    out = np.zeros(size)
    width = np.uint64(bits)
    masks = np.empty(order + 1, dtype=np.uint64)  # masks[k]: the lowest k ids of a key
    for k in range(order + 1):
        masks[k] = np.uint64(0xFFFFFFFFFFFFFFFF) if bits * k >= 64 else np.uint64((1 << (bits * k)) - 1)
    for w in range(starts.size):
        owner = owners[w]
        begin = starts[w]
        top = np.uint64(0)
        for back in range(min(order - 1, begin)):  # the ids before the window's first position
            top |= np.uint64(ids[begin - 1 - back]) << np.uint64(bits * back)
        for p in range(begin, begin + lengths[w]):
            top = ((top << width) | np.uint64(ids[p])) & masks[order]
            key = top
            backoff = 0.0
            result = log_uniform
            found = False
            for k in range(order, 0, -1):
                if k < order:
                    key = key & masks[k]
                j = k - 1
                if ngram_key_at[j + 1] > ngram_key_at[j]:
                    index = _find(ngram_slots, ngram_slot_at[j], ngram_keys, ngram_key_at[j], ngram_shift[j], key, 2)
                    if index >= 0:
                        result = ngram_logp[2 * (ngram_key_at[j] + index) + 1] + backoff
                        found = True
                        break
                if context_key_at[j + 1] > context_key_at[j]:
                    context = key >> width
                    index = _find(
                        context_slots, context_slot_at[j], context_keys, context_key_at[j], context_shift[j], context, 2
                    )
                    if index >= 0:
                        backoff += context_log_gamma[2 * (context_key_at[j] + index) + 1]
            if not found:
                result = log_uniform + backoff
            out[owner] += result
    return out


@njit(cache=True, nogil=True)
def count_keys(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of `keys` (uint64, in first-seen order) and the sum of their `weights` (int64; an empty
    array counts each occurrence once): one pass through an open-addressing table, so only the distinct keys are
    left to sort, not every position."""
    capacity, log2 = 16, 4
    while capacity < 2 * keys.size:
        capacity, log2 = capacity * 2, log2 + 1
    shift = np.uint64(64 - log2)
    slot_of = np.full(capacity, -1, dtype=np.int64)
    distinct = np.empty(keys.size, dtype=np.uint64)
    sums = np.zeros(keys.size, dtype=np.int64)
    weighted = weights.size > 0
    m = 0
    mask = capacity - 1
    for i in range(keys.size):
        key = keys[i]
        add = weights[i] if weighted else 1
        slot = np.int64((key * np.uint64(0x9E3779B97F4A7C15)) >> shift)
        while True:
            at = slot_of[slot]
            if at < 0:
                slot_of[slot] = m
                distinct[m] = key
                sums[m] = add
                m += 1
                break
            if distinct[at] == key:
                sums[at] += add
                break
            slot = (slot + 1) & mask
    return distinct[:m], sums[:m]


@njit(cache=True, nogil=True)
def stable_order(values: np.ndarray, size: int) -> np.ndarray:
    """np.argsort(values, kind="stable") for int64 values in [0, size): a counting sort, O(n + size)."""
    starts = np.zeros(size + 1, dtype=np.int64)
    for v in values:
        starts[v + 1] += 1
    for i in range(size):
        starts[i + 1] += starts[i]
    order = np.empty(values.size, dtype=np.int64)
    for i in range(values.size):
        v = values[i]
        order[starts[v]] = i
        starts[v] += 1
    return order


# `perplexity._character_tables` flags, per code point
CASE_IGNORABLE = 1
CASED = 2  # cased and not case-ignorable: what ends the scans of Python's Final_Sigma rule
DECIMAL = 4  # matched by the regex \d (str.isdecimal)
SPACE = 8  # str.isspace: what str.split() splits on
_CAPITAL_SIGMA = 0x3A3
_CAPITAL_I_WITH_DOT = 0x130  # the one code point whose str.lower() is two: "i" + COMBINING DOT ABOVE


@njit(cache=True, nogil=True, inline="always")
def _final_sigma(cps: np.ndarray, begin: int, end: int, i: int, props: np.ndarray) -> bool:
    """CPython's rule for lowercasing U+03A3 at cps[i] of the string cps[begin:end]: final sigma when a cased
    character precedes it and none follows it, skipping case-ignorable characters on both sides."""
    j = i - 1
    while j >= begin and props[cps[j]] & CASE_IGNORABLE:
        j -= 1
    if j < begin or not props[cps[j]] & CASED:
        return False
    j = i + 1
    while j < end and props[cps[j]] & CASE_IGNORABLE:
        j += 1
    return j == end or not props[cps[j]] & CASED


@njit(cache=True, nogil=True)
def _prepare_into(
    cps: np.ndarray, begin: int, end: int, lower: np.ndarray, props: np.ndarray, out: np.ndarray, w: int
) -> int:
    """`perplexity._prepare` of the string cps[begin:end], written at out[w:]; returns the new end. Lowercase
    (str.lower), drop NUL, decimal digits -> "0", every run of whitespace -> one space."""
    in_space = False
    for i in range(begin, end):
        c = cps[i]
        if c == _CAPITAL_SIGMA:
            low = np.uint32(0x3C2) if _final_sigma(cps, begin, end, i, props) else np.uint32(0x3C3)
        elif c == _CAPITAL_I_WITH_DOT:
            out[w] = 0x69
            out[w + 1] = 0x307
            w += 2
            in_space = False
            continue
        else:
            low = lower[c]
        if low == 0:
            continue
        flags = props[low]
        if flags & SPACE:
            if not in_space:
                out[w] = 0x20
                w += 1
                in_space = True
            continue
        in_space = False
        out[w] = np.uint32(0x30) if flags & DECIMAL else low
        w += 1
    return w


@njit(cache=True, nogil=True)
def prepare_windows(
    cps: np.ndarray,
    context_begin: np.ndarray,
    context_end: np.ndarray,
    window_begin: np.ndarray,
    window_end: np.ndarray,
    pad: int,
    lower: np.ndarray,
    props: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each window w: `pad` code points of context (the last `pad` of its prepared context, NUL-padded
    on the left) then its prepared text, end to end: what `CharNgramLM` scores, as code points. Returns them,
    and where each prepared window starts and how long it is (its characters are the positions to score)."""
    size = pad * window_begin.size
    longest_context = 0
    for k in range(window_begin.size):
        for i in range(window_begin[k], window_end[k]):
            size += 2 if cps[i] == _CAPITAL_I_WITH_DOT else 1  # the one character that lowercases to two
        longest_context = max(longest_context, context_end[k] - context_begin[k])
    out = np.empty(size, dtype=np.uint32)
    starts = np.zeros(window_begin.size, dtype=np.int64)
    lengths = np.zeros(window_begin.size, dtype=np.int64)
    context = np.empty(2 * longest_context + 1, dtype=np.uint32)
    w = 0
    for k in range(window_begin.size):
        if pad:
            n = _prepare_into(cps, context_begin[k], context_end[k], lower, props, context, 0)
            kept = min(n, pad)
            for _ in range(pad - kept):  # NUL (BOS) padding
                out[w] = 0
                w += 1
            for j in range(n - kept, n):
                out[w] = context[j]
                w += 1
        starts[k] = w
        w = _prepare_into(cps, window_begin[k], window_end[k], lower, props, out, w)
        lengths[k] = w - starts[k]
    return out[:w], starts, lengths


@njit(cache=True, nogil=True)
def table_ids(codepoints: np.ndarray, table: np.ndarray) -> np.ndarray:
    """table[c] (as uint64) for each code point c, in one pass; an empty array if one is beyond the table."""
    out = np.empty(codepoints.size, dtype=np.uint64)
    for i in range(codepoints.size):
        c = codepoints[i]
        if c >= table.size:
            return np.empty(0, dtype=np.uint64)
        out[i] = table[c]
    return out
