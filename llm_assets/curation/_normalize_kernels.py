"""Compiled (numba) pass for normalisation's character steps: line breaks, control characters, punctuation and
whitespace in one walk over each document's UTF-8, instead of seven polars string passes.

It does what `normalize._standardise_polars` defines, in the same order, on a per-code-point table that
`normalize._step_tables` reads off polars itself: LINE_BREAK (becomes "\\n"; "\\r\\n" is one break),
CONTROL (removed), PUNCTUATION (replaced by PUNCTUATION_OUT[code]), WHITE_SPACE (`\\s`, which is also what
`strip_chars` strips). The whitespace step: every run of whitespace other than "\\n" becomes one space,
spaces next to a "\\n" go, runs of three or more "\\n" become two, and the ends are stripped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from llm_assets.curation._utf8_kernels import _decode

LINE_BREAK, CONTROL, WHITE_SPACE = 1, 2, 4  # bits of `kind`
PUNCTUATION_OUT = ("", "'", '"', "-", "...")  # what `punctuation[cp]` codes 1.. stand for


@njit(cache=True, nogil=True, inline="always")
def _put(out: np.ndarray, w: int, cp: Any) -> int:
    """Write the UTF-8 of `cp` at out[w]; returns the position after it."""
    if cp < 0x80:
        out[w] = cp
        return w + 1
    if cp < 0x800:
        out[w] = 0xC0 | (cp >> 6)
        out[w + 1] = 0x80 | (cp & 0x3F)
        return w + 2
    if cp < 0x10000:
        out[w] = 0xE0 | (cp >> 12)
        out[w + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[w + 2] = 0x80 | (cp & 0x3F)
        return w + 3
    out[w] = 0xF0 | (cp >> 18)
    out[w + 1] = 0x80 | ((cp >> 12) & 0x3F)
    out[w + 2] = 0x80 | ((cp >> 6) & 0x3F)
    out[w + 3] = 0x80 | (cp & 0x3F)
    return w + 4


@njit(cache=True, nogil=True)
def standardise_bytes(
    data: np.ndarray,
    offsets: np.ndarray,
    kind: np.ndarray,
    punctuation: np.ndarray,
    punctuation_out: np.ndarray,
    punctuation_out_offsets: np.ndarray,
    line_breaks: bool,
    controls: bool,
    punctuate: bool,
    whitespace: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The steps switched on, over the docs data[offsets[d]:offsets[d + 1]] (valid UTF-8).

    Returns (out, out_offsets, per_doc [n, 3]: control characters removed, punctuation characters replaced,
    1 where the whitespace step changed the doc). `punctuation_out[punctuation_out_offsets[c]:...[c + 1]]`
    is the UTF-8 that punctuation code c becomes (none is longer than what it replaces)."""
    n_docs = offsets.size - 1
    out = np.empty(max(offsets[n_docs] - offsets[0], 1), dtype=np.uint8)
    out_offsets = np.zeros(n_docs + 1, dtype=np.int64)
    per_doc = np.zeros((n_docs, 3), dtype=np.int64)
    w = 0
    for d in range(n_docs):
        begin = offsets[d]
        end = offsets[d + 1]
        removed = replaced = 0
        changed = False
        started = False  # a character other than whitespace has been written (leading whitespace is stripped)
        pending_space = False  # horizontal whitespace seen since the last character written
        pending_breaks = 0  # "\n" seen since the last character written
        i = begin
        while i < end:
            byte = data[i]
            if 0x21 <= byte <= 0x7E:  # printable ASCII: no step changes it (PUNCTUATION has no ASCII key)
                i += 1
                if whitespace:
                    if started:
                        if pending_breaks:
                            if pending_breaks > 2:
                                changed = True
                            for _ in range(min(pending_breaks, 2)):
                                out[w] = 0x0A
                                w += 1
                        elif pending_space:
                            out[w] = 0x20
                            w += 1
                    started = True
                    pending_space = False
                    pending_breaks = 0
                out[w] = byte
                w += 1
                # The rest of the run of printable ASCII and single spaces between them (nothing pending, no step
                # changes them): copied as they are.
                while i < end:
                    byte = data[i]
                    if 0x21 <= byte <= 0x7E:
                        out[w] = byte
                        w += 1
                        i += 1
                    elif byte == 0x20 and i + 1 < end and 0x21 <= data[i + 1] <= 0x7E:
                        out[w] = 0x20
                        out[w + 1] = data[i + 1]
                        w += 2
                        i += 2
                    else:
                        break
                continue
            if byte < 0x80:
                cp, width = np.int64(byte), 1
            else:
                cp, width = _decode(data, i)
                if width == 0:  # not reached on valid UTF-8
                    cp, width = np.int64(byte), 1
            i += width
            flags = kind[cp] if cp < kind.size else 0
            if line_breaks and flags & LINE_BREAK:
                if cp == 0x0D and i < end and data[i] == 0x0A:
                    i += 1
                cp = np.int64(0x0A)
                flags = WHITE_SPACE
            elif controls and flags & CONTROL:
                removed += 1
                continue
            code = punctuation[cp] if punctuate and cp < punctuation.size else 0
            if code:
                replaced += 1
            if not whitespace:
                if code:
                    for k in range(punctuation_out_offsets[code], punctuation_out_offsets[code + 1]):
                        out[w] = punctuation_out[k]
                        w += 1
                else:
                    w = _put(out, w, cp)
                continue
            if cp == 0x0A:
                if pending_space or not started:
                    changed = True  # a space before a line break, or leading whitespace, goes
                pending_space = False
                pending_breaks += 1
                continue
            if flags & WHITE_SPACE and not code:
                if cp != 0x20 or pending_space or pending_breaks or not started:
                    changed = True  # another kind of space, a run, a space after a break, or leading
                if started and not pending_breaks:
                    pending_space = True
                continue
            if started:
                if pending_breaks:
                    if pending_breaks > 2:
                        changed = True
                    for _ in range(min(pending_breaks, 2)):
                        out[w] = 0x0A
                        w += 1
                elif pending_space:
                    out[w] = 0x20
                    w += 1
            started = True
            pending_space = False
            pending_breaks = 0
            if code:
                for k in range(punctuation_out_offsets[code], punctuation_out_offsets[code + 1]):
                    out[w] = punctuation_out[k]
                    w += 1
            else:
                w = _put(out, w, cp)
        if whitespace and (pending_space or pending_breaks):
            changed = True  # trailing whitespace is stripped
        out_offsets[d + 1] = w
        per_doc[d, 0] = removed
        per_doc[d, 1] = replaced
        per_doc[d, 2] = changed
    return out[:w], out_offsets, per_doc


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


@njit(cache=True, nogil=True)
def candidate_lines(
    raw: np.ndarray, starts: np.ndarray, size: int, space: np.ndarray, max_chars: int, min_words: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(doc, position, key) of every line of the "\\n"-terminated docs of raw[:size] that, stripped of the
    characters `space` marks, has 1 to `max_chars` characters and at least `min_words` words (runs between
    `space` characters); key: a 64-bit hash of the stripped line's code points."""
    n_docs = starts.size
    cap = size // 2 + 1  # a counted line and its "\n" take at least 2 bytes
    docs = np.empty(cap, dtype=np.int64)
    positions = np.empty(cap, dtype=np.int64)
    keys = np.empty(cap, dtype=np.uint64)
    m = 0
    for d in range(n_docs):
        end = (starts[d + 1] if d + 1 < n_docs else size) - 1  # the doc's "\n" terminator is not its own
        position = 0
        i = starts[d]
        while i <= end:
            # one line: raw[i:j], j at the next "\n" (or the doc's end)
            h = _FNV_OFFSET
            kept = _FNV_OFFSET  # the hash up to the last character that is not a space
            chars = kept_chars = 0  # characters from the first non-space on, and up to the last non-space
            runs = kept_runs = 0  # space runs after the first non-space, and those followed by a non-space
            in_space = False
            while i < end and raw[i] != 0x0A:
                byte = raw[i]
                if byte < 0x80:
                    cp, width = np.int64(byte), 1
                else:
                    cp, width = _decode(raw, i)
                    if width == 0:
                        cp, width = np.int64(byte), 1
                i += width
                is_space = cp < space.size and space[cp]
                if chars == 0 and is_space:
                    continue  # leading
                h = (h ^ np.uint64(cp)) * _FNV_PRIME
                chars += 1
                if is_space:
                    if not in_space:
                        runs += 1
                    in_space = True
                else:
                    in_space = False
                    kept = h
                    kept_chars = chars
                    kept_runs = runs
            if 1 <= kept_chars <= max_chars and kept_runs >= min_words - 1:
                z = kept
                z = (z ^ (z >> _S30)) * _MIX1
                z = (z ^ (z >> _S27)) * _MIX2
                docs[m] = d
                positions[m] = position
                keys[m] = z ^ (z >> _S31)
                m += 1
            position += 1
            i += 1  # past the "\n"
    return docs[:m], positions[:m], keys[:m]


@njit(cache=True, nogil=True)
def rows_with_flagged(data: np.ndarray, offsets: np.ndarray, rows: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """For each doc data[offsets[d]:offsets[d + 1]], d in `rows`: has it a code point `flagged` marks (or a
    malformed sequence)? Stops at the first one, so a flagged doc costs less than a whole walk."""
    out = np.zeros(rows.size, dtype=np.bool_)
    for k in range(rows.size):
        d = rows[k]
        i = offsets[d]
        end = offsets[d + 1]
        while i < end:
            if data[i] < 0x80:
                i += 1
                continue
            cp, width = _decode(data, i)
            if width == 0 or flagged[cp]:
                out[k] = True
                break
            i += width
    return out


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True)
def count_keys_per_doc(
    slot_keys: np.ndarray, slot_counts: np.ndarray, slot_last: np.ndarray, docs: np.ndarray, keys: np.ndarray
) -> int:
    """Add each key to the open-addressing table (power-of-two size, slot_last < 0 where empty), counting it
    once per document: `docs` must group each document's keys together (ascending, as the candidate lines
    come). Returns how many new keys took a slot; the caller keeps the table at most half full."""
    log2 = 0
    while (1 << log2) < slot_keys.size:
        log2 += 1
    shift = np.uint64(64 - log2)
    mask = slot_keys.size - 1
    added = 0
    for i in range(keys.size):
        key = keys[i]
        doc = docs[i]
        slot = np.int64((key * _GOLDEN) >> shift)
        while True:
            last = slot_last[slot]
            if last < 0:
                slot_keys[slot] = key
                slot_counts[slot] = 1
                slot_last[slot] = doc
                added += 1
                break
            if slot_keys[slot] == key:
                if last != doc:
                    slot_counts[slot] += 1
                    slot_last[slot] = doc
                break
            slot = (slot + 1) & mask
    return added


@njit(cache=True, nogil=True)
def rehash(
    old_keys: np.ndarray,
    old_counts: np.ndarray,
    old_last: np.ndarray,
    slot_keys: np.ndarray,
    slot_counts: np.ndarray,
    slot_last: np.ndarray,
) -> None:
    """Move every occupied slot of the old table (its key, count and last document) into the new, empty one."""
    log2 = 0
    while (1 << log2) < slot_keys.size:
        log2 += 1
    shift = np.uint64(64 - log2)
    mask = slot_keys.size - 1
    for i in range(old_keys.size):
        if old_last[i] < 0:
            continue
        slot = np.int64((old_keys[i] * _GOLDEN) >> shift)
        while slot_last[slot] >= 0:
            slot = (slot + 1) & mask
        slot_keys[slot] = old_keys[i]
        slot_counts[slot] = old_counts[i]
        slot_last[slot] = old_last[i]


@njit(cache=True, nogil=True)
def substitute(
    data: np.ndarray, offsets: np.ndarray, rows: np.ndarray, code: np.ndarray, replacement: np.ndarray, at: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The docs data[offsets[d]:offsets[d + 1]], d in `rows`, with each code point c where code[c] != 0
    replaced by replacement[at[k]:at[k + 1]] (k = |code[c]| - 1); returns the new docs (UTF-8 and offsets) and,
    per doc, whether a replaced code point had code > 0 (what the caller counts as a change)."""
    total = 0  # the output's size: a first walk, as a replacement can be much longer than what it replaces
    for k in range(rows.size):
        i = offsets[rows[k]]
        end = offsets[rows[k] + 1]
        while i < end:
            if data[i] < 0x80:
                total += 1
                i += 1
                continue
            cp, width = _decode(data, i)
            if width == 0:
                cp, width = np.int64(data[i]), 1
            c = code[cp] if cp < code.size else 0
            total += width if c == 0 else at[abs(c)] - at[abs(c) - 1]
            i += width
    out = np.empty(total, dtype=np.uint8)
    out_offsets = np.zeros(rows.size + 1, dtype=np.int64)
    counted = np.zeros(rows.size, dtype=np.bool_)
    w = 0
    for k in range(rows.size):
        i = offsets[rows[k]]
        end = offsets[rows[k] + 1]
        while i < end:
            byte = data[i]
            if byte < 0x80:
                out[w] = byte
                w += 1
                i += 1
                continue
            cp, width = _decode(data, i)
            if width == 0:  # not reached on valid UTF-8
                cp, width = np.int64(byte), 1
            c = code[cp] if cp < code.size else 0
            if c == 0:
                for j in range(width):
                    out[w + j] = data[i + j]
                w += width
            else:
                index = abs(c) - 1
                for j in range(at[index], at[index + 1]):
                    out[w] = replacement[j]
                    w += 1
                if c > 0:
                    counted[k] = True
            i += width
        out_offsets[k + 1] = w
    return out[:w], out_offsets, counted
