"""Compiled (numba) scan for the regexes of the structured PII pass that cost the most on number-heavy text:
`detectors._CLUSTER` (digits joined by single separators, at least 7 characters) and `detectors._IBAN` (two
letters, two digits, then 11-30 letters or digits, single spaces allowed), and the IPv6 candidates. Python's
regex engine tries the first two at every digit, and `_find_ipv6` looked at every "word:a", "Foo::Bar" and
"::=" of technical text; this walks each document's UTF-8 once for a whole batch and reports what the regexes
would match, in code-point offsets, so only the candidates reach Python.

Exactly the regexes' matches (tests compare both on generated text): for `_CLUSTER`, the non-overlapping
matches `finditer` gives, less those too short to be any identifier (under 7 digits and 3 dots: about half the
clusters of prose, mostly dates and years) and decimals with both digit groups under 7 digits (a fifth of the
rest in technical text), as `detectors._numeric_candidate`; for `_IBAN`, every start where it matches (with its
end), since `_find_ibans` resumes its search at a match's start + 1 or past a token. For IPv6, each maximal run
of `[0-9A-Fa-f:.]` that holds a `detectors._IPV6_HINT` match, a digit, and "::" or at least six colons: its
first hint's colon and the run's end (`_find_ipv6` reads only the first hint of a run, and takes an address
from within that run; one without those holds none, e.g. times like 12:30:45). Every character the patterns
name is ASCII except U+00A0, the only multi-byte character told apart.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_NBSP = 0xA0
MIN_DIGITS = 7  # every numeric identifier has 7+ digits except a dotted IPv4 address
# Character classes: only these matter to the two patterns, one byte each, so the scan reads a byte per character.
# HEX is the letters A-F and a-f, LETTER the other ASCII letters.
OTHER, DIGIT, LETTER, HEX, PLUS, OPEN, CLOSE, DOT, DASH, SPACE, TAB, NBSP, COLON = range(13)


def _members(*classes: int) -> np.ndarray:
    table = np.zeros(13, dtype=np.bool_)
    table[list(classes)] = True
    return table


_STARTS = _members(DIGIT, PLUS, OPEN)  # [+(0-9]
_JOINS = _members(DIGIT, DOT, OPEN, CLOSE, DASH)  # [0-9.()-]
_SPACES = _members(SPACE, TAB, NBSP)  # [ \t\u00a0]
_LETTERS = _members(LETTER, HEX)  # [A-Za-z]
_ALNUM = _members(DIGIT, LETTER, HEX)  # [A-Za-z0-9]
_IPV6_RUN = _members(DIGIT, HEX, COLON, DOT)  # [0-9A-Fa-f:.]
_AFTER_HINT = _members(DIGIT, HEX, COLON)  # [0-9A-Fa-f:], after the hint's colon
_MARKS = _members(DIGIT, PLUS, OPEN, COLON)  # where a cluster, an IBAN's digits or an IPv6 colon can begin


def ascii_classes() -> np.ndarray:
    """The class of each byte value below 0x80 (`scan`'s `classes` argument)."""
    table = np.full(128, OTHER, dtype=np.uint8)
    table[ord("0") : ord("9") + 1] = DIGIT
    table[ord("A") : ord("Z") + 1] = LETTER
    table[ord("a") : ord("z") + 1] = LETTER
    table[ord("A") : ord("F") + 1] = HEX
    table[ord("a") : ord("f") + 1] = HEX
    for char, value in (
        ("+", PLUS),
        ("(", OPEN),
        (")", CLOSE),
        (".", DOT),
        ("-", DASH),
        (" ", SPACE),
        ("\t", TAB),
        (":", COLON),
    ):
        table[ord(char)] = value
    return table


@njit(cache=True, nogil=True)
def _classify(
    data: np.ndarray, begin: int, end: int, classes: np.ndarray, out: np.ndarray, marks: np.ndarray
) -> tuple[int, int]:
    """The class of each code point of data[begin:end] (valid UTF-8) into `out`: ASCII by `classes`, U+00A0
    NBSP, every other character OTHER; and into `marks`, in order, the positions where a match can begin
    (`_MARKS`: digits, '+', '(' and ':'). Returns how many code points and how many marks."""
    n = 0
    m = 0
    i = begin
    while i < end:
        byte = data[i]
        if byte < 0x80:
            c = classes[byte]
            out[n] = c
            if _MARKS[c]:
                marks[m] = n
                m += 1
            i += 1
        else:
            out[n] = NBSP if byte == 0xC2 and i + 1 < end and data[i + 1] == _NBSP else OTHER
            i += 1
            while i < end and (data[i] & 0xC0) == 0x80:
                i += 1
        n += 1
    return n, m


@njit(cache=True, nogil=True)
def scan(data: np.ndarray, offsets: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over the docs data[offsets[d]:offsets[d + 1]]: the `_CLUSTER` matches that can hold an identifier
    (`detectors._numeric_candidate`: MIN_DIGITS digits or three dots, and not a short decimal), the `_IBAN`
    matches and the IPv6 candidate runs (first hint's colon, run end) as rows (doc, start, end), sorted by doc
    then start.

    Each pass visits only the marked positions (`_classify`), so prose costs one classifying read."""
    n_docs = offsets.size - 1
    longest = 0
    for d in range(n_docs):
        longest = max(longest, offsets[d + 1] - offsets[d])
    kind = np.empty(longest + 1, dtype=np.uint8)
    marks = np.empty(longest + 1, dtype=np.int64)
    total = offsets[n_docs] - offsets[0]
    # Clusters do not overlap and take >= 7 characters; two IBAN starts are >= 4 apart (letters, letters,
    # digit, digit each): so these bounds hold, and nothing grows inside the loop.
    clusters = np.empty((total // 7 + 1, 3), dtype=np.int64)
    ibans = np.empty((total // 4 + 1, 3), dtype=np.int64)
    # An IPv6 candidate run takes >= 3 characters and the next run starts after a character outside it.
    ipv6 = np.empty((total // 4 + 1, 3), dtype=np.int64)
    n_clusters = n_ibans = n_ipv6 = 0
    for d in range(n_docs):
        n, n_marks = _classify(data, offsets[d], offsets[d + 1], classes, kind, marks)
        # _CLUSTER: [+(0-9] (?: [0-9.()-] | [ \t\u00a0](?![ \t\u00a0]) ){5,} [0-9], leftmost, greedy
        i = 0
        for k in range(n_marks):
            if marks[k] < i or not _STARTS[kind[marks[k]]]:
                continue
            i = marks[k]
            j = i + 1
            last_digit = -1
            digits = 1 if kind[i] == DIGIT else 0
            dots = dots_to_last_digit = 0
            others = others_to_last_digit = 0 if kind[i] == DIGIT else 1  # neither digit nor dot
            first_group = -1  # digits before the first dot
            while j < n:
                c = kind[j]
                if not (_JOINS[c] or (_SPACES[c] and not (j + 1 < n and _SPACES[kind[j + 1]]))):
                    break
                if c == DIGIT:
                    last_digit = j
                    digits += 1
                    dots_to_last_digit = dots
                    others_to_last_digit = others
                elif c == DOT:
                    if dots == 0:
                        first_group = digits
                    dots += 1
                else:
                    others += 1
                j += 1
            decimal = (
                dots_to_last_digit == 1
                and others_to_last_digit == 0
                and first_group < MIN_DIGITS
                and digits - first_group < MIN_DIGITS
            )
            if last_digit >= i + 6 and (digits >= MIN_DIGITS or dots_to_last_digit >= 3) and not decimal:
                clusters[n_clusters, 0] = d
                clusters[n_clusters, 1] = i
                clusters[n_clusters, 2] = last_digit + 1
                n_clusters += 1
                i = last_digit + 1
            else:
                # Every start inside the run ends at the same last digit, even less far from it: all fail too.
                i = j
        # _IBAN: [0-9](?<=[A-Za-z]{2}[0-9])[0-9](?: ?[A-Za-z0-9]){11,30}, at every start
        for k in range(n_marks):
            i = marks[k]
            if i < 2 or i >= n - 1:
                continue
            if kind[i] != DIGIT or kind[i + 1] != DIGIT or not (_LETTERS[kind[i - 1]] and _LETTERS[kind[i - 2]]):
                continue
            j = i + 2
            reps = 0
            while reps < 30 and j < n:
                c = kind[j]
                if c == SPACE and j + 1 < n and _ALNUM[kind[j + 1]]:
                    j += 2
                elif _ALNUM[c]:
                    j += 1
                else:
                    break
                reps += 1
            if reps >= 11:
                ibans[n_ibans, 0] = d
                ibans[n_ibans, 1] = i
                ibans[n_ibans, 2] = j
                n_ibans += 1
        # IPv6: maximal [0-9A-Fa-f:.] runs with a ":[0-9A-Fa-f:]", a digit, and "::" or six colons (an address
        # without "::" has seven, or six before a dotted IPv4 tail). Found from their first colon.
        i = 0
        for k in range(n_marks):
            if marks[k] < i or kind[marks[k]] != COLON:
                continue
            j = marks[k]
            while j > 0 and _IPV6_RUN[kind[j - 1]]:
                j -= 1
            colons = 0
            digit = False
            double = False
            hint = -1
            while j < n and _IPV6_RUN[kind[j]]:
                c = kind[j]
                if c == COLON:
                    colons += 1
                    if j + 1 < n and _AFTER_HINT[kind[j + 1]]:
                        if hint < 0:
                            hint = j
                        if kind[j + 1] == COLON:
                            double = True
                elif c == DIGIT:
                    digit = True
                j += 1
            if hint >= 0 and digit and (double or colons >= 6):
                ipv6[n_ipv6, 0] = d
                ipv6[n_ipv6, 1] = hint
                ipv6[n_ipv6, 2] = j
                n_ipv6 += 1
            i = j
    return clusters[:n_clusters].copy(), ibans[:n_ibans].copy(), ipv6[:n_ipv6].copy()
