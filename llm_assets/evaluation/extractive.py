"""Extractive eval items that need no model: cloze and multiple-choice questions cut from curated sentences.

Every item is grounded by construction: `source_text[span[0]:span[1]] == answer`, and the question is the
source sentence with that span blanked. Distractors come from the same corpus, language and token type
(number / capitalised / word), never equal the answer and never occur in the source sentence, so exactly one
choice fits. Everything is deterministic for a seed, and each item carries its provenance (source id, spans,
generator, template version, seed).

Difficulty is a corpus-frequency tercile of the answer within its language: answers whose case-folded form is
frequent in the corpus are guessable from priors ("easy"), rare ones and hapaxes are not ("hard"). Terciles keep
the three levels populated on any corpus size; on a corpus where most candidates are hapaxes "medium" may be empty.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import stopwordsiso

from llm_assets.curation.pii.scrub import rescan_clean

GENERATOR = "extractive"
TEMPLATE_VERSION = "v1"
BLANK = "____"
N_CHOICES = 4
KINDS: tuple[str, ...] = ("cloze", "multiple_choice")

MIN_SENTENCE_WORDS = 6
MAX_SENTENCE_WORDS = 60
MAX_SENTENCE_CHARS = 400
MIN_WORD_CHARS = 4
MAX_ANSWER_CHARS = 40
MIN_QUESTION_CHARS = 20

Kind = Literal["cloze", "multiple_choice", "short_answer"]
Difficulty = Literal["easy", "medium", "hard"]
TokenType = Literal["number", "capitalised", "word"]

# Greek writes its question mark as ';' (U+037E folds to it under NFC) and its semicolon as '·' (U+0387 → U+00B7).
_GREEK_LANGS = frozenset({"el", "grc"})
_HARD_END = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s)")
_GREEK_END = re.compile(r"[.!?…;\u037e·\u0387]+[\"'”’»)\]]*(?=\s)")
_OPENERS = "\"'“‘«(["
TOKEN_PATTERN = re.compile(r"\d+(?:[.,/]\d+)*|[^\W\d_]+(?:[-'’][^\W\d_]+)*")
_NUMBER = re.compile(r"\d+(?:[.,/]\d+)*")


@dataclass(frozen=True)
class EvalItem:
    """One question with its answer and provenance; `span` and `sentence_span` index the source record's text."""

    id: str
    kind: Kind
    question: str
    choices: list[str]
    answer: str
    answer_index: int | None
    source_id: str
    span: tuple[int, int]
    sentence_span: tuple[int, int]
    lang: str
    domain: str
    difficulty: Difficulty
    generator: str = GENERATOR
    template_version: str = TEMPLATE_VERSION
    seed: int = 0
    answer_type: TokenType = "word"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Candidate:
    source_id: str
    lang: str
    domain: str
    text: str
    span: tuple[int, int]
    sentence_span: tuple[int, int]
    token_type: TokenType


def split_sentences(text: str, lang: str) -> list[tuple[int, int]]:
    """Sentence spans (start, end) in `text`, whitespace-trimmed. Line breaks always end a sentence; '.', '!', '?'
    end one only before a capital letter (so "ν. 4270/2014" or "p. 3" do not); in Greek ';' (its question mark)
    and '·' end one too, whatever follows."""
    ender = _GREEK_END if lang in _GREEK_LANGS else _HARD_END
    spans: list[tuple[int, int]] = []
    for line in re.finditer(r"[^\n]+", text):
        start, stop = line.start(), line.end()
        for match in ender.finditer(text, start, stop):
            soft = any(ch in ";\u037e·\u0387" for ch in match.group())
            if soft or _next_is_capital(text, match.end(), stop):
                _append_trimmed(spans, text, start, match.end())
                start = match.end()
        _append_trimmed(spans, text, start, stop)
    return spans


def _next_is_capital(text: str, position: int, stop: int) -> bool:
    while position < stop and (text[position].isspace() or text[position] in _OPENERS):
        position += 1
    return position < stop and text[position].isupper()


def _append_trimmed(spans: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        spans.append((start, end))


@lru_cache(maxsize=64)
def _stopwords(lang: str) -> frozenset[str]:
    return frozenset(word.casefold() for word in stopwordsiso.stopwords(lang))


def fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


def _token_type(token: str) -> TokenType | None:
    if _NUMBER.fullmatch(token):
        return "number" if len(token) <= 12 else None
    if len(token) < MIN_WORD_CHARS or (token.isupper() and len(token) > 1):
        return None  # short words are mostly function words; all-caps headings and acronyms make poor blanks
    return "capitalised" if token[0].isupper() else "word"


def _tokens(text: str, start: int, end: int) -> list[re.Match[str]]:
    return list(TOKEN_PATTERN.finditer(text, start, end))


def _sentence_ok(span: tuple[int, int], tokens: Sequence[re.Match[str]]) -> bool:
    return MIN_SENTENCE_WORDS <= len(tokens) <= MAX_SENTENCE_WORDS and span[1] - span[0] <= MAX_SENTENCE_CHARS


def _candidates(record: Mapping[str, Any]) -> list[_Candidate]:
    """Answer candidates in one record: numbers and content words that are not stopwords, not the sentence's first
    token (its case and list markers give it away) and not repeated in the sentence (the repeat would answer it)."""
    text, lang = record["text"], record.get("lang") or "und"
    stop = _stopwords(lang)
    found = []
    for sentence in split_sentences(text, lang):
        tokens = _tokens(text, *sentence)
        if not _sentence_ok(sentence, tokens):
            continue
        folded = Counter(fold(t.group()) for t in tokens)
        for token in tokens[1:]:
            word = token.group()
            token_type = _token_type(word)
            if token_type is None or fold(word) in stop or folded[fold(word)] > 1 or len(word) > MAX_ANSWER_CHARS:
                continue
            found.append(
                _Candidate(
                    source_id=str(record["id"]),
                    lang=lang,
                    domain=str(record.get("domain") or "unknown"),
                    text=word,
                    span=(token.start(), token.end()),
                    sentence_span=sentence,
                    token_type=token_type,
                )
            )
    return found


@dataclass
class _Pool:
    """Distractor pool for one (lang, token type): case-folded form → (most common surface form, corpus count)."""

    counts: Counter[str] = field(default_factory=Counter)
    surfaces: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, word: str) -> None:
        self.counts[fold(word)] += 1
        self.surfaces[fold(word)][word] += 1

    def surface(self, folded: str) -> str:
        return min(self.surfaces[folded].items(), key=lambda kv: (-kv[1], kv[0]))[0]


def difficulty_cuts(counts: Iterable[int]) -> tuple[int, int]:
    ordered = sorted(counts)
    if not ordered:
        return 0, 0
    return ordered[len(ordered) // 3], ordered[(2 * len(ordered)) // 3]


def difficulty_of(count: int, cuts: tuple[int, int]) -> Difficulty:
    low, high = cuts
    if count <= low:
        return "hard"
    if count > high:
        return "easy"
    return "medium"


def _shares_stem(a: str, b: str) -> bool:
    """Inflections of the answer ("Διοικητής" for "Διοικητή") could also fit the blank, so they are not distractors."""
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return common >= max(4, min(len(a), len(b)) - 2)


def _distractors(candidate: _Candidate, pool: _Pool, sentence: str, rng: random.Random) -> list[str] | None:
    """N_CHOICES - 1 distractors of the answer's type with similar length and corpus frequency, or None."""
    answer = fold(candidate.text)
    sentence_folded = fold(sentence)
    answer_count = pool.counts[answer]
    eligible = []
    for folded, count in pool.counts.items():
        if folded == answer or folded in sentence_folded:
            continue
        if candidate.token_type != "number" and _shares_stem(folded, answer):
            continue
        length_gap = abs(len(folded) - len(answer))
        if length_gap > max(2, len(answer) // 3):
            continue
        closeness = (abs(math.log(count) - math.log(answer_count)), length_gap, folded)
        eligible.append((closeness, folded))
    if len(eligible) < N_CHOICES - 1:
        return None
    eligible.sort()
    nearest = [folded for _, folded in eligible[: 3 * (N_CHOICES - 1)]]
    picked = rng.sample(nearest, N_CHOICES - 1)
    return [pool.surface(folded) for folded in picked]


def _item_id(kind: str, candidate: _Candidate, choices: Sequence[str]) -> str:
    key = "\x00".join([GENERATOR, TEMPLATE_VERSION, kind, candidate.source_id, str(candidate.span), *choices])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _question(text: str, candidate: _Candidate) -> str:
    start, end = candidate.sentence_span
    return text[start : candidate.span[0]] + BLANK + text[candidate.span[1] : end]


def generate_items(
    records: Iterable[Mapping[str, Any]],
    *,
    per_record: int = 3,
    seed: int = 0,
    kinds: Collection[str] = KINDS,
) -> list[EvalItem]:
    """Up to `per_record` answers per record (from distinct sentences where possible), one item per kind each.

    Records need `id` and `text`, and should carry `lang` and `domain`; pass held-out (dev/test) records only, as
    the distractor pool is drawn from the same records. Items failing `validate_item` are dropped, never repaired.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown item kinds {sorted(unknown)}; use {list(KINDS)}")
    rows = list(records)
    texts = {str(r["id"]): str(r["text"]) for r in rows}
    per_row = [_candidates(r) for r in rows]
    pools: dict[tuple[str, TokenType], _Pool] = defaultdict(_Pool)
    for found in per_row:
        for c in found:
            pools[(c.lang, c.token_type)].add(c.text)
    frequency = word_frequency(rows)
    forms_by_lang: dict[str, set[str]] = defaultdict(set)
    for (lang, _), pool in pools.items():
        forms_by_lang[lang].update(pool.counts)
    cuts = {lang: difficulty_cuts(frequency[(lang, f)] for f in forms) for lang, forms in forms_by_lang.items()}

    items: list[EvalItem] = []
    for found in per_row:
        if not found:
            continue
        rng = random.Random(f"{seed}\x00{found[0].source_id}")
        for candidate in _pick(found, per_record, rng):
            text = texts[candidate.source_id]
            pool = pools[(candidate.lang, candidate.token_type)]
            difficulty = difficulty_of(frequency[(candidate.lang, fold(candidate.text))], cuts[candidate.lang])
            for kind in (k for k in KINDS if k in kinds):
                item = _build(kind, candidate, text, pool, difficulty, seed, rng)
                if item is not None and not validate_item(item, text):
                    items.append(item)
    return items


def word_frequency(rows: Iterable[Mapping[str, Any]]) -> Counter[tuple[str, str]]:
    """Case-folded token counts per language over whole records, the corpus prior that difficulty is read from."""
    counts: Counter[tuple[str, str]] = Counter()
    for row in rows:
        lang = row.get("lang") or "und"
        counts.update((lang, fold(m.group())) for m in TOKEN_PATTERN.finditer(str(row["text"])))
    return counts


def _pick(found: Sequence[_Candidate], per_record: int, rng: random.Random) -> list[_Candidate]:
    """A seeded sample that takes one answer per sentence before taking a second from any sentence."""
    shuffled = list(found)
    rng.shuffle(shuffled)
    seen: Counter[tuple[int, int]] = Counter()
    ranked: list[tuple[int, int, _Candidate]] = []
    for c in shuffled:
        ranked.append((seen[c.sentence_span], len(ranked), c))
        seen[c.sentence_span] += 1
    ranked.sort(key=lambda t: (t[0], t[1]))
    return [c for _, _, c in ranked[:per_record]]


def _build(
    kind: str,
    candidate: _Candidate,
    text: str,
    pool: _Pool,
    difficulty: Difficulty,
    seed: int,
    rng: random.Random,
) -> EvalItem | None:
    choices: list[str] = []
    answer_index: int | None = None
    if kind == "multiple_choice":
        sentence = text[candidate.sentence_span[0] : candidate.sentence_span[1]]
        distractors = _distractors(candidate, pool, sentence, rng)
        if distractors is None:
            return None
        answer_index = rng.randrange(N_CHOICES)
        choices = [*distractors[:answer_index], candidate.text, *distractors[answer_index:]]
    return EvalItem(
        id=_item_id(kind, candidate, choices),
        kind="multiple_choice" if kind == "multiple_choice" else "cloze",
        question=_question(text, candidate),
        choices=choices,
        answer=candidate.text,
        answer_index=answer_index,
        source_id=candidate.source_id,
        span=candidate.span,
        sentence_span=candidate.sentence_span,
        lang=candidate.lang,
        domain=candidate.domain,
        difficulty=difficulty,
        seed=seed,
        answer_type=candidate.token_type,
    )


def validate_item(item: EvalItem, source_text: str) -> list[str]:
    """Problems with one item against its source text; empty means grounded, well-formed and PII-free."""
    problems = []
    start, end = item.span
    s_start, s_end = item.sentence_span
    if source_text[start:end] != item.answer:
        problems.append(f"{item.id}: answer {item.answer!r} is not source_text[{start}:{end}]")
    if not s_start <= start < end <= s_end <= len(source_text):
        problems.append(f"{item.id}: span {item.span} lies outside sentence span {item.sentence_span}")
    elif item.question != source_text[s_start:start] + BLANK + source_text[end:s_end]:
        problems.append(f"{item.id}: question is not the source sentence with the answer blanked")
    if not 1 <= len(item.answer) <= MAX_ANSWER_CHARS:
        problems.append(f"{item.id}: answer length {len(item.answer)} outside 1..{MAX_ANSWER_CHARS}")
    if not MIN_QUESTION_CHARS <= len(item.question) <= MAX_SENTENCE_CHARS + len(BLANK):
        problems.append(f"{item.id}: question length {len(item.question)} outside bounds")
    problems.extend(_choice_problems(item, source_text[s_start:s_end]))
    pii = {kind: n for kind, n in rescan_clean([item.question, item.answer, *item.choices]).items() if n}
    if pii:
        problems.append(f"{item.id}: structured PII in item {pii}")
    return problems


def _choice_problems(item: EvalItem, sentence: str) -> list[str]:
    if item.kind == "cloze":
        return [] if not item.choices and item.answer_index is None else [f"{item.id}: cloze item has choices"]
    if len(item.choices) != N_CHOICES or item.answer_index is None or not 0 <= item.answer_index < N_CHOICES:
        return [f"{item.id}: needs {N_CHOICES} choices and a valid answer_index"]
    problems = []
    if item.choices[item.answer_index] != item.answer:
        problems.append(f"{item.id}: choices[{item.answer_index}] is not the answer")
    if len({fold(c) for c in item.choices}) != N_CHOICES:
        problems.append(f"{item.id}: choices repeat (case-folded)")
    folded_sentence = fold(sentence)
    for i, choice in enumerate(item.choices):
        if i != item.answer_index and fold(choice) in folded_sentence:
            problems.append(f"{item.id}: distractor {choice!r} occurs in the source sentence, so two choices fit")
    return problems


def decontamination_text(item: EvalItem) -> str:
    """The text to check against training data: the question with its blank filled, then the choices."""
    return " ".join([item.question.replace(BLANK, item.answer, 1), *item.choices])


def dedupe_key_of(item: EvalItem) -> tuple[str, str, str]:
    return item.kind, " ".join(fold(item.question).split()), fold(item.answer)


def dedupe(items: Iterable[EvalItem]) -> list[EvalItem]:
    """First of each (kind, normalised question, answer): boilerplate sentences repeat across documents."""
    seen: set[tuple[str, str, str]] = set()
    kept = []
    for item in items:
        key = dedupe_key_of(item)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


def _allocate(sizes: Mapping[tuple[str, str, str], int], size: int) -> dict[tuple[str, str, str], int]:
    """Proportional allocation (largest remainder), at least one per stratum when size allows."""
    total = sum(sizes.values())
    quota = {k: size * n / total for k, n in sizes.items()}
    floor = 1 if size >= len(sizes) else 0
    alloc = {k: min(sizes[k], max(floor, math.floor(q))) for k, q in quota.items()}
    while sum(alloc.values()) > size:
        over = [k for k in alloc if alloc[k] > floor]
        worst = max(over, key=lambda k: (alloc[k] - quota[k], k))
        alloc[worst] -= 1
    while sum(alloc.values()) < size:
        under = [k for k in alloc if alloc[k] < sizes[k]]
        best = max(under, key=lambda k: (quota[k] - alloc[k], sizes[k], k))
        alloc[best] += 1
    return alloc


def pilot_batch(items: Sequence[EvalItem], size: int, seed: int = 0) -> list[EvalItem]:
    """A seeded sample of `size` items stratified by (domain, lang, difficulty), sorted by id for review."""
    if size <= 0:
        raise ValueError(f"pilot size must be positive, got {size}")
    strata: dict[tuple[str, str, str], list[EvalItem]] = defaultdict(list)
    for item in sorted(items, key=lambda i: i.id):
        strata[(item.domain, item.lang, item.difficulty)].append(item)
    if size >= len(items):
        return sorted(items, key=lambda i: i.id)
    rng = random.Random(seed)
    chosen: list[EvalItem] = []
    for key, count in sorted(_allocate({k: len(v) for k, v in strata.items()}, size).items()):
        chosen.extend(rng.sample(strata[key], count))
    return sorted(chosen, key=lambda i: i.id)


def stratum_counts(items: Iterable[EvalItem]) -> dict[tuple[str, str, str], int]:
    """Items per (domain, lang, difficulty), the figure a pilot report shows."""
    return dict(Counter((i.domain, i.lang, i.difficulty) for i in items))


def to_jsonl(items: Iterable[EvalItem], path: str | Path) -> int:
    """Write items one JSON object a line (UTF-8, unescaped); returns the count."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
            count += 1
    return count


def from_jsonl(path: str | Path) -> list[EvalItem]:
    """Read items written by `to_jsonl`; a bad line fails with its file and line number."""
    items = []
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row["span"] = tuple(row["span"])
                row["sentence_span"] = tuple(row["sentence_span"])
                items.append(EvalItem(**row))
            except (ValueError, TypeError, KeyError) as error:
                raise ValueError(f"{path} line {number}: not a valid eval item ({error})") from error
    return items
