"""Text normalisation: repair encoding damage, canonicalise Unicode and layout, drop cross-document boilerplate.

Two passes per source, so boilerplate is judged on the whole source and not on one batch: first
`count_lines` streams every shard and counts in how many documents each (normalised, stripped) line occurs,
then `boilerplate_lines` picks the repeated ones and `normalize_batch` rewrites each shard. Lines are
counted by an 8-byte hash, so memory grows with the number of distinct lines, never with their length.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, Literal

import ftfy
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from ftfy.badness import BADNESS_RE
from pydantic import BaseModel, ConfigDict, Field

from llm_assets.curation.stage import StageOutput, reject_rows

STAGE = "normalize"
RULE_EMPTY = "empty_after_normalization"
CHANGE_KINDS = (
    "mojibake_fixed",
    "unicode_normalized",
    "control_chars_removed",
    "punctuation_standardised",
    "whitespace_standardised",
    "boilerplate_lines_removed",
)
UnicodeForm = Literal["NFC", "NFKC", "NFD", "NFKD"]
_CHUNK_DOCS = 1024  # documents per vectorised step in the streaming pass
_CHUNK_CHARS = 64 * 2**20


class NormalizeConfig(BaseModel):
    """What normalisation does; every step can be switched off for sources where it would damage the text.

    Turn `standardise_whitespace` off for code or tables: it collapses runs of spaces and tabs and strips
    indentation. Boilerplate is a line of at least `boilerplate_min_line_words` words and at most
    `boilerplate_max_line_chars` characters that occurs in at least `boilerplate_min_docs` documents and in at
    least `boilerplate_min_doc_fraction` of the source's documents. The word floor keeps short structural
    headings ("Άρθρο 3", "ΚΕΦΑΛΑΙΟ Β’", "Σκοπός"), which every law repeats, out of the boilerplate set.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    unicode_form: UnicodeForm | None = "NFKC"
    fix_mojibake: bool = True
    remove_control_chars: bool = True
    standardise_whitespace: bool = True
    standardise_punctuation: bool = True
    boilerplate_min_docs: int = Field(default=3, ge=2)
    boilerplate_min_doc_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    boilerplate_max_line_chars: int = Field(default=200, ge=1)
    boilerplate_min_line_words: int = Field(default=4, ge=1)
    min_chars_after: int = Field(default=1, ge=1)


# ftfy restricted to encoding repair: everything else (width, ligatures, quotes, line breaks, control
# characters, Unicode form) is done below under our own switches, and HTML entities are left alone.
_FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html=False,
    remove_terminal_escapes=False,
    fix_encoding=True,
    restore_byte_a0=True,
    replace_lossy_sequences=True,
    decode_inconsistent_utf8=True,
    fix_c1_controls=True,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=False,
    fix_surrogates=True,
    remove_control_chars=False,
    normalization=None,
    explain=False,
)

# Spacing accents that NFKC would turn into a space plus a combining mark ("don´t" -> "don ́t"); as
# punctuation they are apostrophes (and U+0384 is how the Greek numeral sign is often typed).
_PRE_NFKC = {"\u00b4": "'", "\u0384": "'"}
# Curly quotes, dash variants and the ellipsis; guillemets and the Greek question mark (';' after NFC) stay.
# All non-ASCII (`_prepare_once` relies on it to leave ASCII texts out).
_PUNCTUATION = {
    **dict.fromkeys("\u2018\u2019\u201a\u201b", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-"),
    "\u2026": "...",
}
_PUNCTUATION_RE = "[" + "".join(_PUNCTUATION) + "]"
_LINE_BREAKS = {"\r\n": "\n", **dict.fromkeys("\r\v\f\x85\u2028\u2029", "\n")}
# C0/C1 controls except tab, newline and CR, plus invisible format characters that carry no text:
# soft hyphen, zero-width space, word joiner, BOM, bidi embeddings/overrides/isolates, annotation marks.
# ZWJ/ZWNJ stay: they change spelling in Persian and Indic scripts and build emoji sequences.
_CONTROL_RE = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff\u202a-\u202e\u2066-\u2069\ufff9-\ufffb]"
_HSPACE_RE = r"[^\S\n]{2,}|[^\S\n ]"
_EDGE_SPACE_RE = r" \n ?|\n "
_BLANK_LINES_RE = re.compile(r"\n{3,}")
_PY_VERBOSE_WHITESPACE = " \t\n\r\v\f"


def _rust_pattern(pattern: str) -> str:
    """Rewrite a Python `re.VERBOSE` pattern for Rust's regex (polars): drop comments and layout, escape what
    Rust reads differently inside classes, and widen `\\w`/`\\s` to cover Python's wider Unicode sets."""
    out: list[str] = []
    i, n, in_class, class_open = 0, len(pattern), False, False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            escape = pattern[i : i + 2]
            out.append({"\\w": r"[\w\p{N}]", "\\s": r"[\s\x1c-\x1f]"}.get(escape, escape))
            i, class_open = i + 2, False
            continue
        if in_class:
            if ch == "]" and not class_open:
                in_class = False
                out.append(ch)
            elif ch.isspace() or ch in "[&~" or not ch.isprintable():
                out.append(f"\\x{{{ord(ch):X}}}")
            else:
                out.append(ch)
            class_open = False
            i += 1
            continue
        if ch in _PY_VERBOSE_WHITESPACE:
            i += 1
        elif ch == "#":
            end = pattern.find("\n", i)
            i = n if end < 0 else end
        elif ch == "[":
            in_class, class_open = True, True
            out.append(ch)
            if pattern[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            i += 1
        else:
            out.append(f"\\x{{{ord(ch):X}}}" if ch.isspace() or not ch.isprintable() else ch)
            i += 1
    return "".join(out)


@functools.cache
def _mojibake_pattern() -> str | None:
    """ftfy's mojibake detector as a polars regex (~40x faster than Python's `re` on non-ASCII text).

    Verified to flag the same lines as `ftfy.badness.is_bad` (tests compare them); if a future ftfy pattern
    does not translate, return None and every non-ASCII document goes through ftfy (slower, same result).
    """
    pattern = _rust_pattern(BADNESS_RE.pattern)
    try:
        pl.Series(["\u00c3\u00a9"], dtype=pl.String).str.contains(pattern)
    except pl.exceptions.PolarsError:
        return None
    return pattern


def _large_strings(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.LargeStringArray:
    """Texts as one large_string array without nulls (null is the empty text): the form every step works on."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.large_string())
    if not isinstance(texts, pa.Array):
        texts = pa.array([text or "" for text in texts], pa.large_string())
    if not pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.large_string())
    if texts.null_count:
        texts = pc.fill_null(texts, "")
    return texts


def _non_ascii_rows(texts: pa.LargeStringArray) -> np.ndarray:
    return np.flatnonzero(~pc.string_is_ascii(texts).to_numpy(zero_copy_only=False))


def _replace_rows(
    texts: pa.LargeStringArray, rows: Sequence[int] | np.ndarray, values: list[str] | pa.Array
) -> pa.LargeStringArray:
    """`texts` with rows[i] (ascending) replaced by values[i]; the other strings' bytes are copied, not decoded."""
    if not len(rows):
        return texts
    mask = np.zeros(len(texts), dtype=bool)
    mask[np.asarray(rows, dtype=np.int64)] = True
    replacements = (
        values.cast(pa.large_string()) if isinstance(values, pa.Array) else pa.array(values, pa.large_string())
    )
    return pc.replace_with_mask(texts, pa.array(mask), replacements)


def _mojibake_rows(texts: pa.LargeStringArray, among: np.ndarray | None = None) -> np.ndarray:
    """Rows (ascending; of `among` if given) with a character sequence ftfy's badness heuristic flags (see
    `mojibake_candidates`)."""
    rows = _non_ascii_rows(texts)
    if among is not None:
        rows = np.intersect1d(rows, among, assume_unique=True)
    pattern = _mojibake_pattern()
    if pattern is None or not rows.size:
        return rows
    # Every character the heuristic looks for is non-ASCII (and ftfy leaves ASCII text alone): test the rest only.
    hits = pl.Series(texts.take(pa.array(rows))).str.contains(pattern).fill_null(False).to_numpy()
    return rows[hits]


def mojibake_candidates(texts: Sequence[str]) -> list[bool]:
    """Which texts ftfy must look at: those with a character sequence its badness heuristic flags.

    ftfy only changes text in which its heuristic finds something (or C1 controls, which it also flags), so
    skipping the rest gives the same output without ftfy's per-line cost on clean text.
    """
    flags = np.zeros(len(texts), dtype=bool)
    flags[_mojibake_rows(_large_strings(texts))] = True
    return [bool(flag) for flag in flags]


def _fix_text(text: str) -> str:
    """`ftfy.fix_text(text, _FTFY_CONFIG)`, with ftfy run only on the lines that hold a non-ASCII character.

    ftfy fixes a text line by line (a line longer than `max_decode_length` in pieces, which it does the same
    for the line alone), and every fix `_FTFY_CONFIG` turns on looks for non-ASCII characters (mojibake, C1
    controls, surrogates, lossy sequences): an ASCII line is a fixed point. A flagged text is mostly such
    lines, so this skips most of ftfy's per-line cost; tests compare both."""
    out: list[str] = []
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        line = text[pos:end]
        out.append(line if line.isascii() else ftfy.fix_text(line, _FTFY_CONFIG))
        pos = end
    return "".join(out)


def _prepare(texts: Sequence[str], config: NormalizeConfig, changes: dict[str, int]) -> list[str]:
    """`_prepare_array` of Python strings."""
    return list(_prepare_array(_large_strings(texts), config, changes).to_pylist())


def _prepare_array(texts: pa.LargeStringArray, config: NormalizeConfig, changes: dict[str, int]) -> pa.LargeStringArray:
    """Every step except boilerplate removal, vectorised over the Arrow strings except ftfy's repair of flagged
    texts (only those become Python strings).

    `count_lines` and `normalize_text`/`normalize_batch` all go through here, so lines hash the same in both
    passes. `changes` is incremented in place. A later step can expose mojibake that an earlier one hid (a
    C1 control character in the middle of it), so texts still flagged afterwards go round again, at most
    twice more, which keeps the result idempotent.
    """
    out = _prepare_once(texts, config, changes)
    if not config.fix_mojibake:
        return out
    # A text that a round left as it was is a fixed point of `_prepare_once`: only changed ones can need another.
    changed = np.flatnonzero(pc.not_equal(texts, out).to_numpy(zero_copy_only=False))
    for _ in range(2):
        rows = _mojibake_rows(out, changed)
        if not rows.size:
            break
        flagged = out.take(pa.array(rows)).to_pylist()
        again = [row for row, text in zip(rows.tolist(), flagged, strict=True) if _fix_text(text) != text]
        if not again:
            break
        before = out.take(pa.array(again, pa.int64()))
        redone = _prepare_once(before, config, changes)
        changed = np.asarray(again, dtype=np.int64)[~pc.equal(before, redone).to_numpy(zero_copy_only=False)]
        out = _replace_rows(out, again, redone.to_pylist())
    return out


def _prepare_once(texts: pa.LargeStringArray, config: NormalizeConfig, changes: dict[str, int]) -> pa.LargeStringArray:
    if config.fix_mojibake and len(texts):
        rows = _mojibake_rows(texts)
        if rows.size:
            flagged = texts.take(pa.array(rows)).to_pylist()
            fixed = [_fix_text(text) for text in flagged]
            changes["mojibake_fixed"] += sum(a != b for a, b in zip(fixed, flagged, strict=True))
            texts = _replace_rows(texts, rows, fixed)
    non_ascii = _non_ascii_rows(texts)
    unstable = _unstable_rows(texts, non_ascii, config.unicode_form)
    if config.unicode_form is not None and unstable.size:
        texts, unstable = _substitute_in_place(texts, unstable, config, changes)
    if config.unicode_form is not None and unstable.size:
        # The rest are already in the normal form and have none of the _PRE_NFKC characters (ASCII text in
        # particular is the same in every form), so polars normalises only these.
        series = pl.Series(texts)
        part = series.gather(unstable)
        if config.standardise_punctuation and config.unicode_form in ("NFKC", "NFKD"):
            part = part.str.replace_many(_PRE_NFKC)
        normalized = part.str.normalize(config.unicode_form)
        changes["unicode_normalized"] += int((normalized != part).sum())
        texts = _large_strings(series.scatter(unstable, normalized).to_arrow())
    if not (config.standardise_whitespace or config.remove_control_chars or config.standardise_punctuation):
        return texts
    kernels = _normalize_kernels()
    if kernels is None:  # pragma: no cover - numba is a dependency
        standardised = _standardise_polars(pl.Series(texts), config, changes, non_ascii.tolist())
        return _large_strings(standardised.to_arrow())
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset : texts.offset + len(texts) + 1]
    data = texts.buffers()[2]
    kind, punctuation, replacement, replacement_offsets = _step_tables()
    out, out_offsets, per_doc = kernels.standardise_bytes(
        np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8),
        offsets,
        kind,
        punctuation,
        replacement,
        replacement_offsets,
        config.standardise_whitespace,
        config.remove_control_chars,
        config.standardise_punctuation,
        config.standardise_whitespace,
    )
    changes["control_chars_removed"] += int(per_doc[:, 0].sum())
    changes["punctuation_standardised"] += int(per_doc[:, 1].sum())
    changes["whitespace_standardised"] += int(per_doc[:, 2].sum())
    return pa.LargeStringArray.from_buffers(len(texts), pa.py_buffer(out_offsets), pa.py_buffer(out))


def _substitute_in_place(
    texts: pa.LargeStringArray, rows: np.ndarray, config: NormalizeConfig, changes: dict[str, int]
) -> tuple[pa.LargeStringArray, np.ndarray]:
    """Normalise the `rows` whose only unstable characters have a normal form that can be put in their place
    (`_substitutions`: NBSP, fullwidth punctuation, the ellipsis, ...) in one compiled pass, and return the
    rows left for polars' normaliser."""
    kernels = _normalize_kernels()
    if kernels is None:  # pragma: no cover - numba is a dependency
        return texts, rows
    form = config.unicode_form
    assert form is not None
    pre = config.standardise_punctuation and form in ("NFKC", "NFKD")
    code, replacement, at, left_for_polars = _substitutions(form, pre)
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset : texts.offset + len(texts) + 1]
    data = np.frombuffer(texts.buffers()[2], dtype=np.uint8)
    left = kernels.rows_with_flagged(data, offsets, rows.astype(np.int64), left_for_polars)
    simple = rows[~left]
    if not simple.size:
        return texts, rows
    out, out_offsets, counted = kernels.substitute(data, offsets, simple.astype(np.int64), code, replacement, at)
    changes["unicode_normalized"] += int(counted.sum())
    values = pa.LargeStringArray.from_buffers(simple.size, pa.py_buffer(out_offsets), pa.py_buffer(out))
    return _replace_rows(texts, simple, values), rows[left]


@functools.cache
def _substitutions(form: UnicodeForm, pre_nfkc: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The unstable code points (`_unstable_code_points`) whose `form` can be substituted in place: not a mark
    (combining class 0, not a polars mark), normal form (after `_PRE_NFKC` where `pre_nfkc`) non-empty and made only of
    stable code points. In a text whose unstable code points are all such, nothing composes, decomposes or
    reorders across them, so the text's normal form is the text with each replaced (tests hold this to polars).

    Returns code (per code point: 0, or +-(k + 1) for replacement k, negative where only `_PRE_NFKC` changed
    it, which `unicode_normalized` does not count), the replacements' UTF-8 end to end with offsets, and the
    unstable code points left (a text with one goes to polars)."""
    from llm_assets.curation._codepoints import code_point_series

    unstable = _unstable_code_points(form)
    points, chars = code_point_series()
    chars = chars.filter(pl.Series(unstable[points]))
    sources = chars.str.replace_many(_PRE_NFKC) if pre_nfkc else chars
    normals = sources.str.normalize(form)
    # only what the form (or _PRE_NFKC) changes: a flagged character left as it is stays flagged in its output
    wanted = (normals != chars) & ~chars.str.contains(r"^\p{M}$")
    chars, sources, normals = chars.filter(wanted), sources.filter(wanted), normals.filter(wanted)
    code = np.zeros(0x110000, dtype=np.int32)
    pieces: list[bytes] = []
    for char, source, normal in zip(chars.to_list(), sources.to_list(), normals.to_list(), strict=True):
        if not normal or unicodedata.combining(char) or any(unstable[ord(c)] for c in normal):
            continue
        pieces.append(normal.encode("utf-8"))
        code[ord(char)] = len(pieces) if normal != source else -len(pieces)
    at = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum([len(piece) for piece in pieces], out=at[1:])
    return code, np.frombuffer(b"".join(pieces) or b"\0", dtype=np.uint8), at, unstable & (code == 0)


def _unstable_rows(texts: pa.LargeStringArray, rows: np.ndarray, form: UnicodeForm | None) -> np.ndarray:
    """The `rows` (non-ASCII texts) with a character that `form` could change (see `_unstable_code_points`);
    all of them where the compiled pass cannot load."""
    kernels = _normalize_kernels()
    if form is None or kernels is None or not rows.size:  # pragma: no cover - numba is a dependency
        return rows
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset : texts.offset + len(texts) + 1]
    data = np.frombuffer(texts.buffers()[2], dtype=np.uint8)
    return rows[kernels.rows_with_flagged(data, offsets, rows.astype(np.int64), _unstable_code_points(form))]


# Second characters of Hangul syllable composition (vowel and trailing jamo): algorithmic, not in the
# decomposition data.
_HANGUL_SECONDS = (range(0x1161, 0x1176), range(0x11A8, 0x11C3))


@functools.cache
def _unstable_code_points(form: UnicodeForm) -> np.ndarray:
    """Per code point: could a text's `form` differ from it because the text holds this character?

    The Unicode quick check, widened: a character that `form` changes on its own (polars' normaliser decides),
    a mark or any character with a nonzero combining class (canonical reordering, composition), the second
    character of a canonical composition pair and the Hangul vowel and trailing jamo (they compose with the
    character before them), and every character Python's (maybe older) Unicode data does not know. A text
    with none of them is already in `form`; the tests check that against polars on random texts.
    """
    from llm_assets.curation._codepoints import code_point_series

    points, chars = code_point_series()
    table = np.ones(0x110000, dtype=np.bool_)  # surrogates stay flagged: never in valid UTF-8
    stable = (chars.str.normalize(form) == chars) & ~chars.str.contains(r"^\p{M}$")
    table[points] = ~stable.to_numpy()
    for point in points[points < 0x30000].tolist():  # beyond: unassigned, or CJK ideographs with no form
        char = chr(point)
        if unicodedata.combining(char) or unicodedata.category(char) == "Cn":
            table[point] = True
        decomposition = unicodedata.decomposition(char)
        if decomposition and not decomposition.startswith("<") and " " in decomposition:
            table[int(decomposition.rsplit(" ", 1)[1], 16)] = True
    for block in _HANGUL_SECONDS:
        table[block.start : block.stop] = True
    return table


def _standardise_polars(
    series: pl.Series, config: NormalizeConfig, changes: dict[str, int], non_ascii: list[int]
) -> pl.Series:
    """Line breaks, control characters, punctuation and whitespace as polars string passes: the definition the
    compiled pass (`_normalize_kernels`) is tested against, and the path where numba cannot load."""
    if config.standardise_whitespace:
        series = series.str.replace_many(_LINE_BREAKS, leftmost=True)
    if config.remove_control_chars:
        chars = series.str.len_chars()
        series = series.str.replace_all(_CONTROL_RE, "")  # one character per match: the length says how many
        changes["control_chars_removed"] += int((chars - series.str.len_chars()).sum())
    if config.standardise_punctuation and non_ascii:
        # every character it replaces is non-ASCII, and no step before adds one to an ASCII text
        part = series.gather(non_ascii)
        changes["punctuation_standardised"] += int(part.str.count_matches(_PUNCTUATION_RE).sum())
        series = series.scatter(non_ascii, part.str.replace_many(_PUNCTUATION))
    if config.standardise_whitespace:
        spaced = (
            series.str.replace_all(_HSPACE_RE, " ")
            .str.replace_all(_EDGE_SPACE_RE, "\n")
            .str.replace_all(r"\n{3,}", "\n\n")
            .str.strip_chars()
        )
        changes["whitespace_standardised"] += int((spaced != series).sum())
        series = spaced
    return series


@functools.cache
def _normalize_kernels() -> Any:
    """The numba pass (imported on first use), or None where numba cannot load: polars then does the steps."""
    try:
        from llm_assets.curation import _normalize_kernels
    except (ImportError, RuntimeError):  # pragma: no cover - numba is a dependency
        return None
    return _normalize_kernels


@functools.cache
def _step_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per code point, read off polars so the compiled pass agrees with `_standardise_polars`: the kind bits,
    the punctuation code; and the replacements' UTF-8 laid end to end with their offsets."""
    from llm_assets.curation._codepoints import code_point_series
    from llm_assets.curation._normalize_kernels import CONTROL, LINE_BREAK, PUNCTUATION_OUT, WHITE_SPACE

    # Every control, line break, white space and replaced punctuation character is in the basic plane.
    points, chars = code_point_series(0x10000)
    kind = np.zeros(0x10000, dtype=np.uint8)
    kind[points] = (
        chars.str.contains(f"^{_CONTROL_RE}$").to_numpy().astype(np.uint8) * CONTROL
        | chars.str.contains(r"^\s$").to_numpy().astype(np.uint8) * WHITE_SPACE
    )
    for key in _LINE_BREAKS:
        if len(key) == 1:  # "\r\n" is read as its "\r"
            kind[ord(key)] |= LINE_BREAK
    punctuation = np.zeros(0x10000, dtype=np.uint8)
    for key, value in _PUNCTUATION.items():
        punctuation[ord(key)] = PUNCTUATION_OUT.index(value)
    encoded = [text.encode("utf-8") for text in PUNCTUATION_OUT]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return kind, punctuation, np.frombuffer(b"".join(encoded) or b"\0", dtype=np.uint8), offsets


# What Python's str.split()/str.strip() treat as whitespace (str.isspace; none above U+3000), for polars.
_PY_SPACE_CHARS = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
_PY_SPACE_RUN = "[" + "".join(f"\\x{{{ord(ch):X}}}" for ch in _PY_SPACE_CHARS) + "]+"
_LINE_HASH_SEED = 0x626F696C6572706C


def _candidate_lines(texts: Sequence[str] | pa.Array, config: NormalizeConfig) -> pl.DataFrame:
    """(doc, position, key) of every line that may be boilerplate: stripped, not empty, short, enough words.

    `key` is a 64-bit hash of the stripped line (collisions: ~1 in 2^64 per pair); both passes of one run hash
    alike, which is all the keys are used for (they are never stored). One compiled pass over the UTF-8;
    `_candidate_lines_polars` defines the same lines (with other keys).
    """
    kernels = _normalize_kernels()
    if kernels is None:  # pragma: no cover - numba is a dependency
        return _candidate_lines_polars(texts, config)
    from llm_assets.curation.dedup import _arrow_pieces, _joined, _joined_size

    if isinstance(texts, pa.Array):
        pieces = _arrow_pieces(texts)
    else:
        pieces = [text.encode("utf-8", "surrogatepass") for text in texts]
    raw, starts = _joined(pieces)
    docs, positions, keys = kernels.candidate_lines(
        raw,
        starts,
        _joined_size(starts, pieces),
        _python_space_table(),
        config.boilerplate_max_line_chars,
        config.boilerplate_min_line_words,
    )
    return pl.DataFrame({"doc": docs, "position": positions, "key": keys})


@functools.cache
def _python_space_table() -> np.ndarray:
    table = np.zeros(0x10000, dtype=np.bool_)
    table[[ord(ch) for ch in _PY_SPACE_CHARS]] = True
    return table


def _candidate_lines_polars(texts: Sequence[str] | pa.Array, config: NormalizeConfig) -> pl.DataFrame:
    """`_candidate_lines` in polars string passes: the definition the compiled pass is tested against."""
    stripped = pl.col("line").str.strip_chars(_PY_SPACE_CHARS)
    return (
        pl.DataFrame({"text": pl.Series(texts, dtype=pl.String)})
        .select(
            doc=pl.int_range(pl.len(), dtype=pl.Int64),
            line=pl.col("text").str.split("\n"),
        )
        .select("doc", "line", position=pl.int_ranges(0, pl.col("line").list.len(), dtype=pl.Int64))
        .explode("line", "position")
        .with_columns(stripped)
        .filter(
            pl.col("line").str.len_chars().is_between(1, config.boilerplate_max_line_chars),
            pl.col("line").str.count_matches(_PY_SPACE_RUN) >= config.boilerplate_min_line_words - 1,
        )
        .select("doc", "position", key=pl.col("line").hash(_LINE_HASH_SEED))
    )


def _chunks(texts: Iterable[str]) -> Iterator[list[str]]:
    """Groups small enough to vectorise without holding a whole shard: at most _CHUNK_DOCS documents
    or _CHUNK_CHARS characters (a single longer document forms its own group)."""
    chunk: list[str] = []
    chars = 0
    for text in texts:
        text = text or ""
        if chunk and (len(chunk) == _CHUNK_DOCS or chars + len(text) > _CHUNK_CHARS):
            yield chunk
            chunk, chars = [], 0
        chunk.append(text)
        chars += len(text)
    if chunk:
        yield chunk


class LineCounts:
    """In how many documents each candidate line key occurs: an open-addressing table of keys, counts and the
    last document counted (24 bytes a slot, at most half full), filled by a compiled loop, so a shard's
    candidate lines are counted in one pass with no sort or unique; sorted numpy arrays, compacted as keys
    stream in, where numba cannot load."""

    _COMPACT_EVERY = 1 << 20  # pending keys before they are merged into the sorted arrays (no numba)

    def __init__(self) -> None:
        self._docs_seen = 0
        self._used = 0
        self._slot_keys = np.zeros(1 << 10, dtype=np.uint64)
        self._slot_counts = np.zeros(1 << 10, dtype=np.int64)
        self._slot_last = np.full(1 << 10, -1, dtype=np.int64)
        self._keys = np.empty(0, dtype=np.uint64)
        self._counts = np.empty(0, dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    def add(self, keys: np.ndarray, docs: np.ndarray | None = None) -> None:
        """Some documents' candidate line keys; `docs` numbers their documents (0, 1, ... within this call,
        ascending), each key counting once per document. Without `docs`, each key is one document's."""
        keys = np.asarray(keys, dtype=np.uint64)
        if not len(keys):
            return
        docs = np.arange(len(keys), dtype=np.int64) if docs is None else np.asarray(docs, dtype=np.int64)
        if len(docs) != len(keys) or (len(docs) > 1 and bool((np.diff(docs) < 0).any())):
            raise ValueError("LineCounts.add: docs must be ascending, one per key")
        first = self._docs_seen
        self._docs_seen += int(docs[-1]) + 1
        kernels = _normalize_kernels()
        if kernels is None:  # pragma: no cover - numba is a dependency
            unique = pl.DataFrame({"doc": docs, "key": keys}).unique(["doc", "key"]).get_column("key").to_numpy()
            self._pending.append(unique)
            self._pending_size += len(unique)
            if self._pending_size >= self._COMPACT_EVERY:
                self._compact()
            return
        while 2 * (self._used + len(keys)) > len(self._slot_keys):
            self._grow()
        self._used += kernels.count_keys_per_doc(
            self._slot_keys, self._slot_counts, self._slot_last, docs + first, keys
        )

    def _grow(self) -> None:
        """Twice the slots, the occupied ones moved over with their counts."""
        size = 2 * len(self._slot_keys)
        keys, counts, last = self._slot_keys, self._slot_counts, self._slot_last
        self._slot_keys = np.zeros(size, dtype=np.uint64)
        self._slot_counts = np.zeros(size, dtype=np.int64)
        self._slot_last = np.full(size, -1, dtype=np.int64)
        _normalize_kernels().rehash(keys, counts, last, self._slot_keys, self._slot_counts, self._slot_last)

    def _compact(self) -> None:
        if not self._pending:
            return
        keys, counts = np.unique(np.concatenate(self._pending), return_counts=True)
        merged = np.concatenate([self._keys, keys])
        weights = np.concatenate([self._counts, counts.astype(np.int64)])
        self._keys, inverse = np.unique(merged, return_inverse=True)
        self._counts = np.bincount(inverse, weights=weights, minlength=len(self._keys)).astype(np.int64)
        self._pending, self._pending_size = [], 0

    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys ascending, their counts)."""
        self._compact()
        occupied = self._slot_last >= 0
        keys = np.concatenate([self._keys, self._slot_keys[occupied]])
        counts = np.concatenate([self._counts, self._slot_counts[occupied]])
        order = np.argsort(keys, kind="stable")
        return keys[order], counts[order]

    def at_least(self, floor: float) -> frozenset[int]:
        """Keys of the lines counted in at least `floor` documents."""
        keys, counts = self._sorted()
        return frozenset(keys[counts >= floor].tolist())

    def __len__(self) -> int:
        self._compact()
        return len(self._keys) + self._used

    def max_count(self) -> int:
        """The most documents any one line occurs in (0 when nothing was counted)."""
        _, counts = self._sorted()
        return int(counts.max()) if len(counts) else 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LineCounts):
            return NotImplemented
        mine, theirs = self._sorted(), other._sorted()
        return np.array_equal(mine[0], theirs[0]) and np.array_equal(mine[1], theirs[1])

    __hash__ = None  # type: ignore[assignment]


def count_prepared_lines(
    prepared: Sequence[str] | pa.Array, config: NormalizeConfig, counts: LineCounts
) -> pl.DataFrame:
    """Adds the candidate lines of already prepared texts (see `prepare_text_array`) to `counts`; returns them
    (doc, position, key), which pass 2 can take as `normalize_batch(lines=...)` instead of finding them again."""
    lines = _candidate_lines(prepared, config)
    counts.add(lines.get_column("key").to_numpy(), lines.get_column("doc").to_numpy())
    return lines


def count_lines(texts: Iterable[str], config: NormalizeConfig, counts: LineCounts | None = None) -> LineCounts:
    """Pass 1: for each candidate line, in how many documents of `texts` it occurs.

    Pass `counts` to keep adding across the shards of one source; the caller counts the documents.
    """
    counts = LineCounts() if counts is None else counts
    scratch = dict.fromkeys(CHANGE_KINDS, 0)
    for chunk in _chunks(texts):
        count_prepared_lines(_prepare(chunk, config, scratch), config, counts)
    return counts


def boilerplate_lines(counts: LineCounts, total_docs: int, config: NormalizeConfig) -> frozenset[int]:
    """Keys of lines in at least `boilerplate_min_docs` and `boilerplate_min_doc_fraction` of the docs."""
    return counts.at_least(max(config.boilerplate_min_docs, config.boilerplate_min_doc_fraction * total_docs))


def _drop_boilerplate(
    texts: pa.LargeStringArray,
    config: NormalizeConfig,
    boilerplate: frozenset[int],
    changes: dict[str, int],
    lines: pl.DataFrame | None = None,
) -> pa.LargeStringArray:
    """`texts` without their boilerplate lines; only the documents that have one become Python strings."""
    if not boilerplate or not len(texts):
        return texts
    lines = _candidate_lines(texts, config) if lines is None else lines
    drops = lines.filter(pl.col("key").is_in(pl.Series(list(boilerplate), dtype=pl.UInt64).implode()))
    if not drops.height:
        return texts
    pairs = drops.select("doc", "position").unique()
    changes["boilerplate_lines_removed"] += pairs.height
    docs, out = _remove_lines(texts, pairs, config.standardise_whitespace)
    return _replace_rows(texts, docs, out)


def _remove_lines(
    texts: pa.LargeStringArray, pairs: pl.DataFrame, standardise_whitespace: bool
) -> tuple[np.ndarray, pa.Array]:
    """The documents named in `pairs` (doc, position: distinct line numbers, 0-based, of "\n"-separated lines)
    without those lines, re-joined, with runs of 3+ newlines made 2 and white space stripped where
    `standardise_whitespace`: (ascending docs, new texts). Polars passes over every line of those documents;
    `_remove_lines_python` defines the result (Python loops cost ~1 s per 17,000 documents)."""
    docs = pairs.get_column("doc").cast(pl.Int64).unique().sort()
    subset = pl.DataFrame({"doc": docs, "text": pl.Series(texts.take(pa.array(docs.to_numpy())))})
    lines = (
        subset.select("doc", line=pl.col("text").str.split("\n"))
        .with_columns(position=pl.int_ranges(0, pl.col("line").list.len(), dtype=pl.Int64))
        .explode("line", "position")
    )
    kept = lines.join(
        pairs.cast({"doc": pl.Int64, "position": pl.Int64}), on=["doc", "position"], how="anti", maintain_order="left"
    )
    joined = kept.group_by("doc", maintain_order=True).agg(pl.col("line").str.join("\n"))
    text = (
        subset.select(pl.col("doc").cast(pl.Int64))
        .join(joined, on="doc", how="left", maintain_order="left")
        .get_column("line")
        .fill_null("")
    )
    if standardise_whitespace:
        text = text.str.replace_all(r"\n{3,}", "\n\n").str.strip_chars(_PY_SPACE_CHARS)
    return docs.to_numpy(), text.to_arrow()


def _remove_lines_python(
    texts: Sequence[str], drops: Sequence[Collection[int]], standardise_whitespace: bool
) -> list[str]:
    """The reference for `_remove_lines`: each text without the lines at its positions."""
    out: list[str] = []
    for text, drop in zip(texts, drops, strict=True):
        kept = "\n".join(line for position, line in enumerate(text.split("\n")) if position not in drop)
        out.append(_BLANK_LINES_RE.sub("\n\n", kept).strip() if standardise_whitespace else kept)
    return out


def prepare_texts(texts: Sequence[str | None], config: NormalizeConfig) -> tuple[list[str], dict[str, int]]:
    """`prepare_text_array` of Python strings, as Python strings."""
    prepared, changes = prepare_text_array(_large_strings(texts), config)
    return list(prepared.to_pylist()), changes


def prepare_text_array(
    texts: pa.Array | pa.ChunkedArray, config: NormalizeConfig
) -> tuple[pa.LargeStringArray, dict[str, int]]:
    """Every step but boilerplate removal (null is the empty text), and how much each kind of change touched the
    texts: what pass 1 computes anyway, so a caller can keep it for `normalize_batch(prepared=...)` instead of
    redoing it."""
    changes = dict.fromkeys(CHANGE_KINDS, 0)
    return _prepare_array(_large_strings(texts), config, changes), changes


def normalize_text(
    text: str, config: NormalizeConfig, boilerplate: frozenset[int] = frozenset()
) -> tuple[str, dict[str, int]]:
    """One document: the normalised text and how much each kind of change touched it.

    `mojibake_fixed`, `unicode_normalized` and `whitespace_standardised` are 0/1 per document; the others
    count characters or lines. For many documents use `normalize_batch`: it vectorises across them.
    """
    changes = dict.fromkeys(CHANGE_KINDS, 0)
    prepared = _prepare_array(_large_strings([text]), config, changes)
    return str(_drop_boilerplate(prepared, config, boilerplate, changes)[0].as_py()), changes


def normalize_batch(
    table: pa.Table,
    config: NormalizeConfig,
    boilerplate: frozenset[int],
    prepared: tuple[Sequence[str] | pa.Array, dict[str, int]] | None = None,
    lines: pl.DataFrame | None = None,
) -> StageOutput:
    """Pass 2: replace `text` by its normalised form; reject documents left shorter than `min_chars_after`.

    `prepared` is `prepare_text_array` of this table's texts when pass 1 kept it; otherwise it is computed here.
    `lines` is what `count_prepared_lines` returned for those prepared texts, if pass 1 kept that too.
    Text stays in Arrow throughout: only documents that lose a boilerplate line become Python strings.
    """
    texts = _large_strings(table.column("text"))
    if prepared is None:
        prepared = prepare_text_array(texts, config)
    prepared_texts = _large_strings(prepared[0])
    if len(prepared_texts) != len(texts):
        raise ValueError(f"normalize_batch: {len(prepared_texts)} prepared texts for a table of {len(texts)} rows")
    changes = dict(prepared[1])
    normalized = _drop_boilerplate(prepared_texts, config, boilerplate, changes, lines)
    docs_changed = int(pc.sum(pc.not_equal(texts, normalized)).as_py() or 0)
    lengths = pc.utf8_length(normalized).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = lengths >= config.min_chars_after
    kept_idx = np.flatnonzero(keep)
    rejected_idx = np.flatnonzero(~keep).tolist()
    rejected_len = lengths[~keep].tolist()

    position = table.schema.get_field_index("text")
    field = table.schema.field(position)
    take = pa.array(kept_idx, type=pa.int64())
    kept = table.take(take)
    kept = kept.set_column(position, field, normalized.take(take).cast(field.type))
    rejects = reject_rows(
        table,
        rejected_idx,
        stage=STAGE,
        rules=[RULE_EMPTY] * len(rejected_idx),
        reasons=[
            f"{n} characters left after normalization; at least {config.min_chars_after} required" for n in rejected_len
        ],
        scores=[float(n) for n in rejected_len],
        thresholds=[float(config.min_chars_after)] * len(rejected_idx),
    )
    chars_in = pc.sum(pc.utf8_length(table.column("text"))).as_py() or 0
    stats = {
        "docs_in": table.num_rows,
        "docs_kept": kept.num_rows,
        "docs_rejected": rejects.num_rows,
        "docs_changed": docs_changed,
        **changes,
        "boilerplate_hashes": len(boilerplate),
        "chars_in": chars_in,
        "chars_out": int(lengths[keep].sum()),
    }
    return StageOutput(kept=kept, rejects=rejects, stats=stats)
