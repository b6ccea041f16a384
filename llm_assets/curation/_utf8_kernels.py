"""Compiled (numba) loops for dedup: normalisation over UTF-8 bytes, word hashes and n-gram shingle sums,
one pass per batch instead of a dozen numpy passes each. `dedup` keeps the numpy versions as the reference
(tests compare both) and as the fallback where numba cannot load.

They implement exactly what `dedup._normalise_pieces` defines (the numpy version stays as the reference and
the fallback where numba cannot compile): every byte >= 0xC0 is decoded on its own, malformed sequences keep
their bytes, a capital sigma takes its final or medial form by the look-around `str.lower` uses (at most
four case-ignorable characters skipped each way), and a character whose lowercase has another UTF-8 length
marks its document for `str.lower`. Tables come from `dedup._CodePoints` (`packed`: the lowercase code point
and flag bits, one lookup per character); every single byte value must have been learnt, and
`normalise_bytes` stops at the first code point that has not (`unknown_code_points` lists them all).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

_OTHER, _CASED, _IGNORABLE = 0, 1, 2
_SIGMA, _FINAL_SIGMA, _MEDIAL_SIGMA = 0x3A3, 0x3C2, 0x3C3
_KNOWN, _SEPARATOR, _SPECIAL = 1 << 21, 1 << 22, 1 << 23  # bits of `packed` above the lowercase code point


@njit(cache=True, nogil=True)
def _decode(raw: np.ndarray, i: int) -> tuple[Any, int]:
    """(code point, width) of the sequence whose lead byte (>= 0xC0) is raw[i]; width 0 when malformed.
    raw is padded with zero bytes, so raw[i + 3] exists."""
    b0 = np.int64(raw[i])
    b1 = np.int64(raw[i + 1])
    if (b1 & 0xC0) != 0x80:
        return 0, 0
    if b0 < 0xE0:
        return ((b0 & 0x1F) << 6) | (b1 & 0x3F), 2
    b2 = np.int64(raw[i + 2])
    if (b2 & 0xC0) != 0x80:
        return 0, 0
    three = ((b0 & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F)
    if b0 < 0xF0:
        return three, 3
    b3 = np.int64(raw[i + 3])
    if (b3 & 0xC0) != 0x80 or b0 >= 0xF8:
        return 0, 0
    wide = ((b0 & 0x07) << 18) | ((three & 0xFFF) << 6) | (b3 & 0x3F)
    return min(wide, 0x10FFFF), 4


@njit(cache=True, nogil=True)
def unknown_code_points(raw: np.ndarray, size: int, known: np.ndarray) -> np.ndarray:
    """The code points of well-formed multi-byte characters in raw[:size] not yet in `known` (with repeats;
    counted first, so the common case, none, allocates nothing)."""
    count = 0
    for i in range(size):
        if raw[i] >= 0xC0:
            cp, width = _decode(raw, i)
            if width and not known[cp]:
                count += 1
    out = np.empty(count, dtype=np.uint32)
    if count:
        count = 0
        for i in range(size):
            if raw[i] >= 0xC0:
                cp, width = _decode(raw, i)
                if width and not known[cp]:
                    out[count] = cp
                    count += 1
    return out


@njit(cache=True, nogil=True)
def _char_before(raw: np.ndarray, pos: int) -> tuple[Any, int]:
    """The character ending just before `pos`: (code point, its start). A byte that does not end a
    well-formed sequence counts as the code point of its value (as in the numpy version)."""
    for back in range(1, 5):
        j = pos - back
        if j < 0:
            break
        if raw[j] >= 0xC0:
            cp, width = _decode(raw, j)
            if width:
                if j + width == pos:
                    return cp, j
                break
    return np.int64(raw[max(pos - 1, 0)]), pos - 1


@njit(cache=True, nogil=True)
def _char_at(raw: np.ndarray, pos: int) -> tuple[Any, int]:
    """The character starting at `pos`: (code point, where the next one starts)."""
    if raw[pos] >= 0xC0:
        cp, width = _decode(raw, pos)
        if width:
            return cp, pos + width
    return np.int64(raw[pos]), pos + 1


@njit(cache=True, nogil=True)
def _sigma_form(raw: np.ndarray, lead: int, sigma: np.ndarray) -> Any:
    """Final (U+03C2) or medial (U+03C3) form of the capital sigma at `lead`; 0 when four case-ignorable
    characters in a row leave it undecided (the document then goes through `str.lower`)."""
    prev = _IGNORABLE
    pos = lead
    for _ in range(4):
        cp, start = _char_before(raw, pos)
        prev = sigma[cp] if pos > 0 else _OTHER
        pos = start
        if prev != _IGNORABLE:
            break
    nxt = _IGNORABLE
    pos = lead + 2
    for _ in range(4):
        cp, pos = _char_at(raw, pos)
        nxt = sigma[cp]
        if nxt != _IGNORABLE:
            break
    if prev == _OTHER or nxt == _CASED:
        return _MEDIAL_SIGMA
    if prev == _CASED and nxt == _OTHER:
        return _FINAL_SIGMA
    return 0


@njit(cache=True, nogil=True)
def normalise_bytes(
    raw: np.ndarray,
    starts: np.ndarray,
    size: int,
    ascii_single: np.ndarray,
    packed: np.ndarray,
    sigma: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Normalise the "\n"-terminated docs of raw[:size] (doc d starts at starts[d]) in one pass: ASCII
    lowercased, separators a space, runs of spaces one space, leading spaces dropped (so each non-empty doc
    ends with one space, from its "\n", which its length leaves out). A multi-byte sequence never crosses
    a doc's end: "\n" is not a continuation byte.
    Returns (buf, doc starts in buf, doc lengths, flags: 1 where the doc needs `str.lower`, -1) or, as soon
    as a code point not learnt turns up, empty arrays and that code point (learn it, call again)."""
    n_docs = starts.size
    buf = np.empty(size, dtype=np.uint8)
    doc_starts = np.zeros(n_docs, dtype=np.int64)
    lengths = np.zeros(n_docs, dtype=np.int64)
    flags = np.zeros(n_docs, dtype=np.uint8)
    w = 0
    for d in range(n_docs):
        end = starts[d + 1] if d + 1 < n_docs else size
        doc_starts[d] = w
        previous_space = True
        i = starts[d]
        while i < end:
            byte = raw[i]
            while byte < 0xC0:  # ASCII through the table; continuation and stray bytes as they are
                mapped = ascii_single[byte]
                buf[w] = mapped  # always written; kept (w advances) unless a space follows a space
                space = mapped == 0x20
                w += not (space and previous_space)
                previous_space = space
                i += 1
                if i == end:
                    break
                byte = raw[i]
            if i == end:
                break
            cp, width = _decode(raw, i)
            if not width:
                buf[w] = byte
                w += 1
                previous_space = False
                i += 1
                continue
            info = packed[cp]
            if not info & _KNOWN:
                return buf[:0], doc_starts, lengths, flags, cp
            if info & _SPECIAL:
                flags[d] = 1
            if info & _SEPARATOR:
                buf[w] = 0x20
                w += not previous_space
                previous_space = True
                i += width
                continue
            low = np.int64(info & 0x1FFFFF)
            if cp == _SIGMA:
                low = _sigma_form(raw, i, sigma)
                if low == 0:
                    flags[d] = 1
                    low = cp
            if low == cp:
                for k in range(width):
                    buf[w + k] = raw[i + k]
            elif width == 2:
                buf[w] = 0xC0 | (low >> 6)
                buf[w + 1] = 0x80 | (low & 0x3F)
            elif width == 3:
                buf[w] = 0xE0 | (low >> 12)
                buf[w + 1] = 0x80 | ((low >> 6) & 0x3F)
                buf[w + 2] = 0x80 | (low & 0x3F)
            else:
                buf[w] = 0xF0 | (low >> 18)
                buf[w + 1] = 0x80 | ((low >> 12) & 0x3F)
                buf[w + 2] = 0x80 | ((low >> 6) & 0x3F)
                buf[w + 3] = 0x80 | (low & 0x3F)
            w += width
            previous_space = False
            i += width
        lengths[d] = max(w - doc_starts[d] - 1, 0)
    return buf[:w], doc_starts, lengths, flags, -1


_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


@njit(cache=True, nogil=True, inline="always")
def _mix(z: Any) -> Any:
    """splitmix64's finaliser, as `dedup._mix64` (uint64 arithmetic wraps)."""
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(cache=True, nogil=True)
def word_hashes(
    buf: np.ndarray, doc_starts: np.ndarray, doc_lengths: np.ndarray, base: np.uint64
) -> tuple[np.ndarray, np.ndarray]:
    """Polynomial hash sum((byte + 1) * base**k) mod 2**64 of every word (space-separated run) of each
    normalised doc buf[doc_starts[d]:doc_starts[d] + doc_lengths[d]], mixed by splitmix64's finaliser; and the
    words per doc. The same values as `dedup._segment_hashes`."""
    out = np.empty(buf.size // 2 + 1, dtype=np.uint64)
    per_doc = np.zeros(doc_starts.size, dtype=np.int64)
    one = np.uint64(1)
    count = 0
    for d in range(doc_starts.size):
        begin = doc_starts[d]
        end = begin + doc_lengths[d]
        if end == begin:
            continue
        h = np.uint64(0)
        power = one
        words = 0
        for i in range(begin, end):
            byte = buf[i]
            if byte == 0x20:
                out[count] = _mix(h)
                count += 1
                words += 1
                h = np.uint64(0)
                power = one
            else:
                h += (np.uint64(byte) + one) * power
                power *= base
        out[count] = _mix(h)  # the last word (a normalised doc neither starts nor ends with a space)
        count += 1
        per_doc[d] = words + 1
    return out[:count], per_doc


@njit(cache=True, nogil=True)
def shingle_sums(
    units: np.ndarray, per_doc: np.ndarray, n: int, multipliers: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """sum(units[first + k] * multipliers[k]) mod 2**64 over each n-gram of consecutive units within a doc
    (a doc shorter than n is one shingle of all its units), mixed by splitmix64's finaliser; and the shingles
    per doc."""
    windows = np.empty(per_doc.size, dtype=np.int64)
    total = 0
    for d in range(per_doc.size):
        count = per_doc[d]
        windows[d] = count - n + 1 if count >= n else min(count, 1)
        total += windows[d]
    out = np.empty(total, dtype=np.uint64)
    unit = 0
    w = 0
    for d in range(per_doc.size):
        width = min(per_doc[d], n)
        for s in range(windows[d]):
            acc = np.uint64(0)
            for k in range(width):
                acc += units[unit + s + k] * multipliers[k]
            out[w] = _mix(acc)
            w += 1
        unit += per_doc[d]
    return out, windows


@njit(cache=True, nogil=True)
def minhash(shingles: np.ndarray, windows: np.ndarray, mult: np.ndarray, add: np.ndarray) -> np.ndarray:
    """[docs, num_perm] uint32 minima of (mult[p] * x + add[p]) mod 2**32 over each doc's shingles x (uint32,
    windows[d] of them per doc, in order); 0xFFFFFFFF for a doc without shingles. The same values as
    `dedup._minhash_numpy`: one pass over the shingles with the doc's row of minima in registers, instead of
    one pass per permutation."""
    num_perm = mult.size
    out = np.full((windows.size, num_perm), np.uint32(0xFFFFFFFF), dtype=np.uint32)
    at = 0
    for d in range(windows.size):
        row = out[d]
        for j in range(at, at + windows[d]):
            x = shingles[j]
            for p in range(num_perm):
                # truncated to 32 bits and taken by min() without a branch, the loop compiles to 32-bit vector
                # multiplies (~2.3x the 64-bit multiply, masked, and a compare-and-store)
                row[p] = min(row[p], np.uint32(mult[p] * x + add[p]))
        at += windows[d]
    return out


@njit(cache=True, nogil=True)
def paragraph_starts(raw: np.ndarray, doc_starts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each paragraph of each "\n"-terminated doc of raw[:size] starts, and paragraphs per doc: the
    pieces `dedup.PARAGRAPH_SEPARATOR.split` gives (a separator is "\n" followed by one or more runs of
    " \t\r\f\v" that each end in "\n"; greedy, leftmost first). The same as `dedup._paragraph_starts_python`."""
    n_docs = doc_starts.size
    out = np.empty(size // 2 + n_docs + 1, dtype=np.int64)  # a separator takes at least 2 bytes
    counts = np.zeros(n_docs, dtype=np.int64)
    m = 0
    for d in range(n_docs):
        end = (doc_starts[d + 1] if d + 1 < n_docs else size) - 1  # the doc's "\n" terminator is not its own
        out[m] = doc_starts[d]
        m += 1
        count = 1
        i = doc_starts[d]
        while i < end:
            if raw[i] != 0x0A:
                i += 1
                continue
            matched = -1
            j = i + 1
            while True:
                k = j
                while k < end and (raw[k] == 0x20 or (raw[k] >= 0x09 and raw[k] <= 0x0D and raw[k] != 0x0A)):
                    k += 1
                if k < end and raw[k] == 0x0A:
                    j = k + 1
                    matched = j
                else:
                    break
            if matched < 0:
                i += 1
                continue
            out[m] = matched
            m += 1
            count += 1
            i = matched
        counts[d] = count
    return out[:m], counts


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@njit(cache=True, nogil=True)
def segment_fnv(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """64-bit FNV-1a of each byte segment buf[starts[i]:starts[i] + lengths[i]], mixed by splitmix64's
    finaliser (`dedup.paragraph_hash` is the reference)."""
    out = np.empty(starts.size, dtype=np.uint64)
    for k in range(starts.size):
        h = _FNV_OFFSET
        for i in range(starts[k], starts[k] + lengths[k]):
            h = (h ^ np.uint64(buf[i])) * _FNV_PRIME
        out[k] = _mix(h)
    return out


@njit(cache=True, nogil=True)
def word_counts(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Words in each normalised segment buf[starts[i]:starts[i] + lengths[i]]: its spaces plus one, 0 when
    empty (a normalised text neither starts nor ends with a space)."""
    out = np.zeros(starts.size, dtype=np.int64)
    for k in range(starts.size):
        if lengths[k]:
            spaces = 0
            for i in range(starts[k], starts[k] + lengths[k]):
                spaces += buf[i] == 0x20
            out[k] = spaces + 1
    return out
