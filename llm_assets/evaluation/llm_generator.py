"""LLM-written eval items (short-answer and multiple-choice) from curated passages, kept only when grounded.

A model behind any OpenAI-compatible endpoint (`ChatClient`) reads one passage through a locked, versioned prompt
template and answers in JSON with a question, an answer and a verbatim evidence quote. Nothing it writes is
trusted: every output is parsed, schema-checked, grounded (answer and evidence must occur verbatim in the cited
source record), length-bounded, choice-checked, PII re-scanned and deduplicated, and it either becomes an
`EvalItem` (the same dataclass the extractive generator writes, so it flows through pilot, review and
decontamination) or an `LlmReject` with a reason code. `len(accepted) + len(rejected) == requests` always.

Grounding is case-sensitive after whitespace normalisation: each whitespace run in the model's answer matches any
whitespace run in the source, letters must match exactly (a changed case can change meaning, "Bill" vs "bill",
and the stored answer must be the source's own substring). The stored answer is `source_text[span[0]:span[1]]`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import defaultdict
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from string import Template
from typing import Any, Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm_assets.curation.pii import PLACEHOLDERS, PiiPolicy, scan_text
from llm_assets.curation.pii.detectors import STRUCTURED_KINDS
from llm_assets.evaluation.extractive import (
    TOKEN_PATTERN,
    EvalItem,
    Kind,
    dedupe_key_of,
    difficulty_cuts,
    difficulty_of,
    fold,
    split_sentences,
    word_frequency,
)

log = logging.getLogger(__name__)

LlmKind = Literal["short_answer", "multiple_choice"]
LLM_KINDS: tuple[str, ...] = ("short_answer", "multiple_choice")
RejectReason = Literal[
    "not_json",
    "schema",
    "ungrounded_answer",
    "ungrounded_evidence",
    "length",
    "choices",
    "pii",
    "duplicate",
    "endpoint_error",
]
REJECT_REASONS: tuple[str, ...] = (
    "not_json",
    "schema",
    "ungrounded_answer",
    "ungrounded_evidence",
    "length",
    "choices",
    "pii",
    "duplicate",
    "endpoint_error",
)
MAX_TEMPERATURE = 0.7
MAX_TOP_P = 0.95

_LANGUAGE_NAMES = {"en": "English", "el": "Greek", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian"}
_FENCE = re.compile(r"\A```[^\n]*\n(.*?)\n?```\Z", re.DOTALL)


class ChatClient(Protocol):
    """What the generator needs from an OpenAI-compatible chat endpoint; returns the assistant message text."""

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int | None,
        response_format: dict[str, Any] | None,
    ) -> str: ...


class ChatRequestError(Exception):
    """A failure confined to one request (a refused prompt, a truncated or filtered reply, a timeout after retries).

    Clients raise it (or a subclass) for those; `generate_llm_items` records an `endpoint_error` reject and goes
    on. Any other exception (endpoint down, bad credentials) stops the run, so an outage never looks like a run
    that merely rejected everything.
    """


@dataclass(frozen=True)
class PromptTemplate:
    """A locked prompt: `$passage`, `$language` and `$kind_instruction` are the only placeholders.

    Changing any text changes `template_hash`; bump `version` when you do, and register the new version rather
    than editing an old one, so existing items still name the text that produced them.
    """

    name: str
    version: str
    system: str
    user: str
    kind_instructions: Mapping[str, str]

    @property
    def template_hash(self) -> str:
        """SHA-256 of the system text, user text and each kind instruction (in kind order)."""
        parts = [
            self.system,
            self.user,
            *(f"{k}\x1f{self.kind_instructions[k]}" for k in sorted(self.kind_instructions)),
        ]
        return hashlib.sha256("\x1e".join(parts).encode("utf-8")).hexdigest()

    def messages(self, passage: str, lang: str, kind: str, n_choices: int) -> list[dict[str, str]]:
        """System and user messages; values are inserted literally (a '$' in the passage is kept as is)."""
        instruction = Template(self.kind_instructions[kind]).substitute(n_choices=n_choices)
        values = {
            "passage": passage,
            "language": f"{_LANGUAGE_NAMES.get(lang, lang)} ({lang})",
            "kind_instruction": instruction,
            "choices_shape": '"choices": ["...", ...], ' if kind == "multiple_choice" else "",
        }
        return [
            {"role": "system", "content": Template(self.system).substitute(values)},
            {"role": "user", "content": Template(self.user).substitute(values)},
        ]


GROUNDED_QA_V1 = PromptTemplate(
    name="grounded_qa",
    version="v1",
    system=(
        "You write exam questions that test reading comprehension of one passage. You use only facts stated in "
        "the passage and reply with a single JSON object and nothing else: no prose, no code fences."
    ),
    user=(
        "Passage ($language):\n<<<\n$passage\n>>>\n\n"
        "Write one question in $language whose answer is stated in the passage. $kind_instruction\n"
        "Rules:\n"
        '- "answer" is copied character for character from the passage: a short phrase, not a sentence.\n'
        '- "evidence" is a verbatim quote from the passage that shows the answer is right.\n'
        "- The question must make sense without the passage and must not contain the answer.\n"
        "- Do not ask about e-mail addresses, phone numbers, account or ID numbers.\n"
        "Reply with JSON only, in this shape:\n"
        '{"question": "...", "answer": "...", $choices_shape"evidence": "..."}'
    ),
    kind_instructions={
        "short_answer": "It is answered in a few words; give no choices.",
        "multiple_choice": (
            "Also give $n_choices choices: the answer plus wrong but plausible ones of the same type, all distinct."
        ),
    },
)

TEMPLATES: dict[tuple[str, str], PromptTemplate] = {(GROUNDED_QA_V1.name, GROUNDED_QA_V1.version): GROUNDED_QA_V1}


def get_template(name: str, version: str) -> PromptTemplate:
    try:
        return TEMPLATES[(name, version)]
    except KeyError:
        known = ", ".join(f"{n}@{v}" for n, v in sorted(TEMPLATES))
        raise ValueError(f"no prompt template {name}@{version}; registered: {known}") from None


class LlmGeneratorConfig(BaseModel):
    """Sampling and validation settings; the sampling caps keep outputs close to the passage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template_name: str = "grounded_qa"
    template_version: str = "v1"
    kinds: tuple[LlmKind, ...] = ("short_answer", "multiple_choice")
    temperature: float = Field(default=0.2, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float = Field(default=0.9, gt=0.0, le=MAX_TOP_P)
    max_tokens: int = Field(default=512, ge=32, le=4096)
    seed: int = 0
    per_record: int = Field(default=2, ge=1, description="Passages drawn per record at most; one request per kind.")
    passage_chars: int = Field(default=1200, ge=100, description="Window size; sentences are never cut unless longer.")
    min_passage_chars: int = Field(default=200, ge=1)
    min_answer_chars: int = Field(default=1, ge=1)
    max_answer_chars: int = Field(default=80, ge=1)
    min_answer_words: int = Field(default=1, ge=1)
    max_answer_words: int = Field(default=8, ge=1)
    min_question_chars: int = Field(default=15, ge=1)
    max_question_chars: int = Field(default=300, ge=1)
    n_choices: int = Field(default=4, ge=2, le=8)
    structured_output: bool = Field(default=True, description="Send a json_schema response_format.")

    @model_validator(mode="after")
    def _consistent(self) -> LlmGeneratorConfig:
        get_template(self.template_name, self.template_version)
        for low, high in (
            ("min_answer_chars", "max_answer_chars"),
            ("min_answer_words", "max_answer_words"),
            ("min_question_chars", "max_question_chars"),
            ("min_passage_chars", "passage_chars"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) is above {high} ({getattr(self, high)})")
        if not self.kinds:
            raise ValueError(f"kinds is empty; use some of {list(LLM_KINDS)}")
        return self

    @property
    def template(self) -> PromptTemplate:
        return get_template(self.template_name, self.template_version)


@dataclass(frozen=True)
class LlmReject:
    """One model output that did not become an item. `detail` never quotes model text (it may hold PII)."""

    source_id: str
    kind: str
    reason: RejectReason
    detail: str
    passage_span: tuple[int, int]


@dataclass(frozen=True)
class GenerationResult:
    accepted: list[EvalItem]
    rejected: list[LlmReject]
    requests: int
    template_hash: str
    reason_counts: dict[str, int] = field(default_factory=dict)


class _Rejected(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def response_format(kind: str, n_choices: int) -> dict[str, Any]:
    """The OpenAI `json_schema` response format for one kind (strict: all keys required, no others)."""
    properties: dict[str, Any] = {
        "question": {"type": "string"},
        "answer": {"type": "string"},
        "evidence": {"type": "string"},
    }
    if kind == "multiple_choice":
        properties["choices"] = {
            "type": "array",
            "items": {"type": "string"},
            "minItems": n_choices,
            "maxItems": n_choices,
        }
    schema = {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": f"eval_{kind}", "strict": True, "schema": schema}}


def passage_windows(text: str, lang: str, max_chars: int, min_chars: int) -> list[tuple[int, int]]:
    """Consecutive windows of whole sentences up to `max_chars`; a longer sentence is cut at `max_chars`."""
    windows: list[tuple[int, int]] = []
    start: int | None = None
    end = 0
    for s_start, s_end in split_sentences(text, lang):
        if start is not None and s_end - start > max_chars:
            windows.append((start, end))
            start = None
        if start is None:
            start = s_start
        end = min(s_end, start + max_chars)
        if s_end - start > max_chars:
            windows.append((start, end))
            start = None
    if start is not None:
        windows.append((start, end))
    return [w for w in windows if w[1] - w[0] >= min_chars]


def generate_llm_items(
    records: Iterable[Mapping[str, Any]],
    client: ChatClient,
    config: LlmGeneratorConfig,
    *,
    model_name: str,
    existing_keys: Collection[Hashable] = (),
    pii: PiiPolicy | Collection[str] = STRUCTURED_KINDS,
    request_errors: tuple[type[Exception], ...] = (ChatRequestError,),
) -> GenerationResult:
    """Up to `per_record` seeded passages per record, one request per passage and kind, each output validated.

    Records need `id` and `text` and should carry `lang` and `domain`; pass held-out records only. `existing_keys`
    are `dedupe_key` values of items already in the eval set. `pii` is the policy (or kinds) an item is re-scanned
    for; structured identifiers by default, as names in a question are usually the point of it. Exceptions of
    `request_errors` types become `endpoint_error` rejects; any other exception from the client propagates.
    """
    template = config.template
    rows = [_checked_record(i, r) for i, r in enumerate(records)]
    plan: list[tuple[dict[str, str], tuple[int, int], str]] = []
    for row in rows:
        windows = passage_windows(row["text"], row["lang"], config.passage_chars, config.min_passage_chars)
        rng = random.Random(f"{config.seed}\x00{row['id']}")
        for window in rng.sample(windows, min(config.per_record, len(windows))):
            plan.extend((row, window, kind) for kind in config.kinds)

    seen = set(existing_keys)
    accepted: list[EvalItem] = []
    rejected: list[LlmReject] = []
    for number, (row, window, kind) in enumerate(plan, start=1):
        try:
            item = _one_request(client, config, template, row, window, kind, model_name, pii, request_errors)
            key = dedupe_key(item)
            if key in seen:
                raise _Rejected("duplicate", "same kind, question and answer as an earlier or existing item")
            seen.add(key)
            accepted.append(item)
        except _Rejected as rejection:
            rejected.append(LlmReject(row["id"], kind, rejection.reason, rejection.detail, window))
        if number % 50 == 0 or number == len(plan):
            log.info("llm eval items: %d/%d requests, %d accepted", number, len(plan), len(accepted))

    counts: dict[str, int] = defaultdict(int)
    for reject in rejected:
        counts[reject.reason] += 1
    return GenerationResult(
        accepted=_with_difficulty(accepted, rows),
        rejected=rejected,
        requests=len(plan),
        template_hash=template.template_hash,
        reason_counts=dict(counts),
    )


def _checked_record(index: int, record: Mapping[str, Any]) -> dict[str, str]:
    if "id" not in record or not isinstance(record.get("text"), str):
        raise ValueError(f"record {index}: needs an 'id' and a string 'text' (got keys {sorted(record)})")
    return {
        "id": str(record["id"]),
        "text": record["text"],
        "lang": str(record.get("lang") or "und"),
        "domain": str(record.get("domain") or "unknown"),
    }


def _one_request(
    client: ChatClient,
    config: LlmGeneratorConfig,
    template: PromptTemplate,
    row: Mapping[str, str],
    window: tuple[int, int],
    kind: str,
    model_name: str,
    pii: PiiPolicy | Collection[str],
    request_errors: tuple[type[Exception], ...],
) -> EvalItem:
    text = row["text"]
    passage = text[window[0] : window[1]]
    messages = template.messages(passage, row["lang"], kind, config.n_choices)
    try:
        raw = client.chat(
            messages,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_tokens,
            seed=config.seed,
            response_format=response_format(kind, config.n_choices) if config.structured_output else None,
        )
    except request_errors as error:
        raise _Rejected("endpoint_error", f"{type(error).__name__}: {str(error)[:200]}") from error
    fields = _parse(raw, kind)
    evidence_span = _locate(text, fields["evidence"], window, None)
    if evidence_span is None:
        raise _Rejected(
            "ungrounded_evidence", f"evidence ({len(fields['evidence'])} chars) is not in record {row['id']}"
        )
    span = _locate(text, fields["answer"], window, evidence_span)
    if span is None:
        raise _Rejected("ungrounded_answer", f"answer ({len(fields['answer'])} chars) is not in record {row['id']}")
    answer = text[span[0] : span[1]]
    question = " ".join(fields["question"].split())
    choices, answer_index = _choices(fields.get("choices"), answer, config, row, window, kind)
    _check_lengths(question, answer, choices, config)
    _check_pii(question, answer, choices, pii)
    return _item(row, kind, question, answer, span, evidence_span, window, choices, answer_index, config, model_name)


def _parse(raw: str, kind: str) -> dict[str, Any]:
    body = raw.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        data = json.loads(body)
    except (ValueError, TypeError) as error:
        raise _Rejected("not_json", f"{type(error).__name__} at char {getattr(error, 'pos', '?')}") from None
    if not isinstance(data, dict):
        raise _Rejected("schema", f"top level is {type(data).__name__}, not an object")
    required = ["question", "answer", "evidence"]
    allowed = {*required, "choices"}
    extra = sorted(set(data) - allowed)
    if extra:
        raise _Rejected("schema", f"unexpected keys {extra}")
    for key in required:
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise _Rejected("schema", f"'{key}' must be a non-empty string")
    choices = data.get("choices")
    if kind == "multiple_choice":
        if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
            raise _Rejected("schema", "'choices' must be a list of non-empty strings")
    elif choices not in (None, []):
        raise _Rejected("schema", "short-answer output has 'choices'")
    return data


def _locate(text: str, wanted: str, window: tuple[int, int], inside: tuple[int, int] | None) -> tuple[int, int] | None:
    """Span of `wanted` in `text` (whitespace runs match any whitespace run, case-sensitive): the first match in
    `inside`, else in the passage window, else anywhere in the record."""
    pieces = wanted.split()
    if not pieces:
        return None
    pattern = re.compile(r"\s+".join(re.escape(p) for p in pieces))
    for start, end in [*([inside] if inside else []), window, (0, len(text))]:
        match = pattern.search(text, start, end)
        if match:
            return match.start(), match.end()
    return None


def _normal(text: str) -> str:
    return " ".join(text.split())


def _choices(
    raw: list[str] | None,
    answer: str,
    config: LlmGeneratorConfig,
    row: Mapping[str, str],
    window: tuple[int, int],
    kind: str,
) -> tuple[list[str], int | None]:
    """Choices in a seeded order (models favour a position for the answer), the answer as the source wrote it."""
    if kind != "multiple_choice" or raw is None:
        return [], None
    choices = [_normal(c) for c in raw]
    if len(choices) != config.n_choices:
        raise _Rejected("choices", f"{len(choices)} choices, need {config.n_choices}")
    if len({fold(c) for c in choices}) != len(choices):
        raise _Rejected("choices", "choices repeat (case-folded)")
    matches = [i for i, c in enumerate(choices) if c == _normal(answer)]
    if len(matches) != 1:
        raise _Rejected("choices", "the answer is not among the choices")
    choices[matches[0]] = answer
    random.Random(f"{config.seed}\x00{row['id']}\x00{window[0]}").shuffle(choices)
    return choices, choices.index(answer)


def _check_lengths(question: str, answer: str, choices: Sequence[str], config: LlmGeneratorConfig) -> None:
    problems = []
    if not config.min_question_chars <= len(question) <= config.max_question_chars:
        problems.append(
            f"question {len(question)} chars outside {config.min_question_chars}..{config.max_question_chars}"
        )
    for name, value in [("answer", answer), *(("choice", c) for c in choices)]:
        if not config.min_answer_chars <= len(value) <= config.max_answer_chars:
            problems.append(f"{name} {len(value)} chars outside {config.min_answer_chars}..{config.max_answer_chars}")
        words = len(value.split())
        if not config.min_answer_words <= words <= config.max_answer_words:
            problems.append(f"{name} {words} words outside {config.min_answer_words}..{config.max_answer_words}")
    if problems:
        raise _Rejected("length", "; ".join(problems[:3]))


def _check_pii(question: str, answer: str, choices: Sequence[str], kinds: PiiPolicy | Collection[str]) -> None:
    """Reject on any PII hit, and on redaction placeholders: "[EMAIL]" is no answer to ask a model for."""
    found: dict[str, int] = defaultdict(int)
    for value in (question, answer, *choices):
        for hit in scan_text(value, kinds):
            found[hit.kind] += 1
        for kind, placeholder in PLACEHOLDERS.items():
            if placeholder in value:
                found[f"{kind}_placeholder"] += 1
    if found:
        raise _Rejected("pii", f"PII in item {dict(sorted(found.items()))}")


def _item(
    row: Mapping[str, str],
    kind: str,
    question: str,
    answer: str,
    span: tuple[int, int],
    evidence_span: tuple[int, int],
    window: tuple[int, int],
    choices: list[str],
    answer_index: int | None,
    config: LlmGeneratorConfig,
    model_name: str,
) -> EvalItem:
    template = config.template
    generator = f"llm:{model_name}"
    key = "\x00".join([generator, template.template_hash, kind, row["id"], str(span), question, *choices])
    return EvalItem(
        id=hashlib.sha256(key.encode()).hexdigest()[:32],
        kind=cast(Kind, kind),  # the config validates kinds against LLM_KINDS
        question=question,
        choices=choices,
        answer=answer,
        answer_index=answer_index,
        source_id=row["id"],
        span=span,
        sentence_span=(min(span[0], evidence_span[0]), max(span[1], evidence_span[1])),
        lang=row["lang"],
        domain=row["domain"],
        difficulty="medium",
        generator=generator,
        template_version=template.version,
        seed=config.seed,
        answer_type="number" if re.fullmatch(r"[\d.,/ ]+", answer) else "word",
        metadata={
            "template": {"name": template.name, "version": template.version, "sha256": template.template_hash},
            "model": model_name,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "max_tokens": config.max_tokens,
            "evidence_span": list(evidence_span),
            "passage_span": list(window),
        },
    )


def dedupe_key(item: EvalItem) -> Hashable:
    """The key `extractive.dedupe` compares: (kind, whitespace-normalised case-folded question, folded answer)."""
    return dedupe_key_of(item)


def _with_difficulty(items: list[EvalItem], rows: Sequence[Mapping[str, str]]) -> list[EvalItem]:
    """Difficulty as in extractive: corpus-frequency terciles (per language) of the answer's rarest token."""
    frequency = word_frequency(rows)

    def rarity(item: EvalItem) -> int:
        tokens = [fold(m.group()) for m in TOKEN_PATTERN.finditer(item.answer)]
        return min((frequency[(item.lang, t)] for t in tokens), default=0)

    by_lang: dict[str, list[int]] = defaultdict(list)
    for item in items:
        by_lang[item.lang].append(rarity(item))
    cuts = {lang: difficulty_cuts(values) for lang, values in by_lang.items()}
    return [replace(item, difficulty=difficulty_of(rarity(item), cuts[item.lang])) for item in items]


def validate_llm_item(
    item: EvalItem, source_text: str, config: LlmGeneratorConfig, pii: PiiPolicy | Collection[str] = STRUCTURED_KINDS
) -> list[str]:
    """Problems with a stored LLM item against its source; empty means grounded, well-formed and PII-free.

    `extractive.validate_item` expects a blanked source sentence as the question, so LLM items need this one.
    """
    problems = []
    start, end = item.span
    if source_text[start:end] != item.answer:
        problems.append(f"{item.id}: answer {item.answer!r} is not source_text[{start}:{end}]")
    if item.kind == "multiple_choice" and (
        item.answer_index is None
        or not 0 <= item.answer_index < len(item.choices)
        or item.choices[item.answer_index] != item.answer
    ):
        problems.append(f"{item.id}: choices[answer_index] is not the answer")
    for check in (
        lambda: _check_lengths(item.question, item.answer, item.choices, config),
        lambda: _check_pii(item.question, item.answer, item.choices, pii),
    ):
        try:
            check()
        except _Rejected as rejection:
            problems.append(f"{item.id}: {rejection.reason}: {rejection.detail}")
    return problems
