from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from llm_assets.evaluation.extractive import dedupe
from llm_assets.evaluation.llm_generator import (
    GROUNDED_QA_V1,
    REJECT_REASONS,
    ChatRequestError,
    GenerationResult,
    LlmGeneratorConfig,
    dedupe_key,
    generate_llm_items,
    passage_windows,
    response_format,
    validate_llm_item,
)

TEXT = (
    "The Parthenon is a former temple on the Athenian Acropolis in Greece. It was dedicated to the goddess Athena.\n"
    "Construction began in 447 BC when the Delian League was at the peak of its power. It was completed in 438 BC. "
    "Questions about the site go to info@example.org, the office of the Acropolis Museum."
)
RECORD = {"id": "parthenon", "text": TEXT, "lang": "en", "domain": "history"}
SHORT = LlmGeneratorConfig(kinds=("short_answer",), per_record=1, min_passage_chars=50)
CHOICE = LlmGeneratorConfig(kinds=("multiple_choice",), per_record=1, min_passage_chars=50)


class ScriptedClient:
    """Returns the given outputs in order (an Exception instance is raised instead), recording each call."""

    def __init__(self, outputs: Sequence[str | Exception]) -> None:
        self.outputs = list(outputs)
        self.calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []

    def chat(self, messages: list[dict[str, str]], **options: Any) -> str:
        self.calls.append((messages, options))
        output = self.outputs[(len(self.calls) - 1) % len(self.outputs)]
        if isinstance(output, Exception):
            raise output
        return output


def _out(**fields: Any) -> str:
    base = {
        "question": "To which goddess was the Parthenon dedicated?",
        "answer": "Athena",
        "evidence": "It was dedicated to the goddess Athena.",
    }
    return json.dumps({**base, **fields})


def _mc(**fields: Any) -> str:
    base = {
        "question": "In which year did construction of the Parthenon begin?",
        "answer": "447 BC",
        "choices": ["438 BC", "447 BC", "480 BC", "432 BC"],
        "evidence": "Construction began in 447 BC",
    }
    return json.dumps({**base, **fields})


def _run(outputs: Sequence[str | Exception], config: LlmGeneratorConfig = SHORT, **kwargs: Any) -> GenerationResult:
    return generate_llm_items([RECORD], ScriptedClient(outputs), config, model_name="qwen-test", **kwargs)


def _without(key: str) -> str:
    data = json.loads(_out())
    del data[key]
    return json.dumps(data)


@pytest.mark.parametrize(
    ("output", "config", "reason"),
    [
        pytest.param("Sure! The question is: who?", SHORT, "not_json", id="prose"),
        pytest.param('{"question": "Who?", "answer": ', SHORT, "not_json", id="truncated"),
        pytest.param("[1, 2]", SHORT, "schema", id="not-an-object"),
        pytest.param(_without("evidence"), SHORT, "schema", id="missing-evidence"),
        pytest.param(_out(answer=7), SHORT, "schema", id="answer-not-string"),
        pytest.param(_out(answer="  "), SHORT, "schema", id="answer-blank"),
        pytest.param(_out(source="page 2"), SHORT, "schema", id="extra-key"),
        pytest.param(_out(choices=["Athena", "Hera"]), SHORT, "schema", id="short-answer-with-choices"),
        pytest.param(_out(), CHOICE, "schema", id="choice-without-choices"),
        pytest.param(_mc(choices=["447 BC", 438, "480 BC", "432 BC"]), CHOICE, "schema", id="choice-not-string"),
        pytest.param(_out(evidence="The temple honours Athena."), SHORT, "ungrounded_evidence", id="paraphrased"),
        pytest.param(_out(answer="Pallas Athena"), SHORT, "ungrounded_answer", id="invented"),
        pytest.param(_out(answer="athena"), SHORT, "ungrounded_answer", id="case-sensitive"),
        pytest.param(_out(question="Goddess?"), SHORT, "length", id="question-short"),
        pytest.param(
            _out(answer="Construction began in 447 BC when the Delian League was at the peak of its power."),
            SHORT,
            "length",
            id="answer-is-a-sentence",
        ),
        pytest.param(_mc(choices=["447 BC", "438 BC", "480 BC"]), CHOICE, "choices", id="three-choices"),
        pytest.param(_mc(choices=["447 BC", "438 BC", "438  bc", "432 BC"]), CHOICE, "choices", id="repeated"),
        pytest.param(_mc(choices=["446 BC", "438 BC", "480 BC", "432 BC"]), CHOICE, "choices", id="answer-missing"),
        pytest.param(
            _out(question="Which goddess does info@example.org write about?"), SHORT, "pii", id="email-in-question"
        ),
        pytest.param(
            _out(
                question="Where do questions about the site go?",
                answer="info@example.org",
                evidence="Questions about the site go to info@example.org",
            ),
            SHORT,
            "pii",
            id="email-answer",
        ),
    ],
)
def test_each_bad_output_is_rejected_with_its_reason(output: str, config: LlmGeneratorConfig, reason: str) -> None:
    result = _run([output], config)
    assert result.requests == 1
    assert result.accepted == []
    [reject] = result.rejected
    assert (reject.source_id, reject.reason) == ("parthenon", reason)
    assert reject.detail
    assert "info@example.org" not in reject.detail
    assert result.reason_counts == {reason: 1}


@pytest.mark.parametrize(
    "output",
    [
        pytest.param(_out(), id="plain"),
        pytest.param("```json\n" + _out() + "\n```", id="code-fence"),
        pytest.param("  ```\n" + _out() + "```  ", id="bare-fence"),
        pytest.param(_out(evidence="It  was dedicated\nto the goddess   Athena."), id="whitespace-normalised"),
    ],
)
def test_good_output_becomes_a_grounded_item_with_provenance(output: str) -> None:
    result = _run([output])
    assert result.rejected == []
    [item] = result.accepted
    assert item.kind == "short_answer"
    assert item.answer == "Athena" == TEXT[item.span[0] : item.span[1]]
    assert item.generator == "llm:qwen-test"
    assert item.source_id == "parthenon" and item.lang == "en" and item.domain == "history"
    assert item.seed == SHORT.seed and item.template_version == "v1"
    assert item.metadata["template"] == {"name": "grounded_qa", "version": "v1", "sha256": GROUNDED_QA_V1.template_hash}
    assert (item.metadata["temperature"], item.metadata["top_p"]) == (SHORT.temperature, SHORT.top_p)
    start, end = item.metadata["evidence_span"]
    assert TEXT[start:end] == "It was dedicated to the goddess Athena."
    assert validate_llm_item(item, TEXT, SHORT) == []


def test_answer_across_a_line_break_keeps_the_source_whitespace() -> None:
    output = _out(
        question="Which goddess is named just before construction is mentioned?",
        answer="Athena. Construction",
        evidence="goddess Athena.\nConstruction began",
    )
    config = SHORT.model_copy(update={"max_answer_words": 3})
    [item] = _run([output], config).accepted
    assert item.answer == "Athena.\nConstruction" == TEXT[item.span[0] : item.span[1]]


def test_answer_span_is_taken_inside_the_evidence_when_it_repeats() -> None:
    output = _out(
        question="What was at the peak of its power when construction began?",
        answer="the Delian League",
        evidence="Construction began in 447 BC when the Delian League was at the peak",
    )
    text = "the Delian League was founded first. " + TEXT
    result = generate_llm_items(
        [{**RECORD, "text": text}],
        ScriptedClient([output]),
        SHORT.model_copy(update={"passage_chars": 2000}),
        model_name="m",
    )
    [item] = result.accepted
    start, end = item.metadata["evidence_span"]
    assert start <= item.span[0] < item.span[1] <= end


def test_multiple_choice_answer_index_points_at_the_source_answer() -> None:
    [item] = _run([_mc()], CHOICE).accepted
    assert item.kind == "multiple_choice"
    assert len(item.choices) == CHOICE.n_choices
    assert item.answer_index is not None and item.choices[item.answer_index] == "447 BC" == item.answer
    assert _run([_mc()], CHOICE).accepted[0].choices == item.choices  # seeded order
    assert validate_llm_item(item, TEXT, CHOICE) == []


def test_per_request_endpoint_error_is_a_reject_and_the_run_goes_on() -> None:
    config = LlmGeneratorConfig(per_record=1, min_passage_chars=50)
    result = _run([ChatRequestError("finish_reason=content_filter"), _mc()], config)
    assert result.requests == 2
    assert [r.reason for r in result.rejected] == ["endpoint_error"]
    assert "ChatRequestError" in result.rejected[0].detail
    assert [i.kind for i in result.accepted] == ["multiple_choice"]


def test_other_client_exceptions_stop_the_run() -> None:
    with pytest.raises(ConnectionError):
        _run([ConnectionError("endpoint down")])


def test_callers_can_widen_the_per_request_errors() -> None:
    result = _run([TimeoutError("read timed out")], request_errors=(TimeoutError,))
    assert [r.reason for r in result.rejected] == ["endpoint_error"]


def test_duplicates_of_accepted_and_existing_items_are_rejected() -> None:
    twins = [RECORD, {**RECORD, "id": "parthenon-copy"}]
    result = generate_llm_items(twins, ScriptedClient([_out()]), SHORT, model_name="m")
    assert [i.source_id for i in result.accepted] == ["parthenon"]
    assert [(r.source_id, r.reason) for r in result.rejected] == [("parthenon-copy", "duplicate")]
    again = _run([_out()], existing_keys={dedupe_key(result.accepted[0])})
    assert [r.reason for r in again.rejected] == ["duplicate"]
    assert dedupe([*result.accepted, *again.accepted]) == result.accepted


def test_requests_carry_the_locked_sampling_settings_and_schema() -> None:
    client = ScriptedClient([_mc()])
    generate_llm_items([RECORD], client, CHOICE, model_name="m")
    [(messages, options)] = client.calls
    assert [m["role"] for m in messages] == ["system", "user"]
    assert TEXT in messages[1]["content"] and "English (en)" in messages[1]["content"]
    assert options == {
        "temperature": CHOICE.temperature,
        "top_p": CHOICE.top_p,
        "max_tokens": CHOICE.max_tokens,
        "seed": CHOICE.seed,
        "response_format": response_format("multiple_choice", CHOICE.n_choices),
    }
    schema = options["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["question", "answer", "evidence", "choices"]
    assert schema["properties"]["choices"]["minItems"] == schema["properties"]["choices"]["maxItems"] == 4


def test_passage_with_template_syntax_is_inserted_literally() -> None:
    passage = "Price: $passage and ${language} stay as written."
    messages = GROUNDED_QA_V1.messages(passage, "el", "short_answer", 4)
    assert passage in messages[1]["content"] and "Greek (el)" in messages[1]["content"]


def test_template_hash_is_pinned() -> None:
    """Editing template text must come with a new version; update this hash only together with that."""
    assert GROUNDED_QA_V1.template_hash == "8c5d2a345917b6cd7170da73d6b2607b7ee971602617055065ef4e528f7978b9"
    assert GROUNDED_QA_V1.template_hash == GROUNDED_QA_V1.template_hash
    edited = type(GROUNDED_QA_V1)(**{**GROUNDED_QA_V1.__dict__, "system": GROUNDED_QA_V1.system + " "})
    assert edited.template_hash != GROUNDED_QA_V1.template_hash


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"temperature": 0.8}, "less than or equal to 0.7"),
        ({"top_p": 0.99}, "less than or equal to 0.95"),
        ({"min_answer_words": 9, "max_answer_words": 3}, "min_answer_words (9) is above max_answer_words (3)"),
        ({"template_version": "v9"}, "no prompt template grounded_qa@v9"),
        ({"kinds": ()}, "kinds is empty"),
        ({"kinds": ("cloze",)}, "kinds"),
    ],
)
def test_config_fails_fast(update: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        LlmGeneratorConfig(**update)


def test_passage_choice_is_seeded_and_windows_hold_whole_sentences() -> None:
    long_text = " ".join(f"Sentence number {i} talks about the temple at length." for i in range(60))
    windows = passage_windows(long_text, "en", 300, 100)
    assert len(windows) > 5 and all(w[1] - w[0] <= 300 for w in windows)
    assert all(long_text[w[1] - 1] == "." for w in windows)
    record = {"id": "long", "text": long_text, "lang": "en", "domain": "x"}
    config = SHORT.model_copy(update={"per_record": 3, "passage_chars": 300})

    def passages(seed: int) -> list[str]:
        client = ScriptedClient(["not json"])
        generate_llm_items([record], client, config.model_copy(update={"seed": seed}), model_name="m")
        return [messages[1]["content"] for messages, _ in client.calls]

    assert passages(1) == passages(1)
    assert passages(1) != passages(2)


def test_bad_record_names_its_index() -> None:
    with pytest.raises(ValueError, match="record 0: needs an 'id'"):
        generate_llm_items([{"text": TEXT}], ScriptedClient([_out()]), SHORT, model_name="m")


_FRAGMENT = st.builds(lambda i, n: TEXT[i : i + n], st.integers(0, len(TEXT) - 1), st.integers(1, 30))
_STRINGS = st.one_of(_FRAGMENT, st.text(max_size=40), st.just("Athena"), st.just("447 BC"))
_OUTPUTS = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda q, a, e, c, fence: (lambda body: f"```json\n{body}\n```" if fence else body)(
            json.dumps({"question": q, "answer": a, "evidence": e, **({"choices": c} if c is not None else {})})
        ),
        st.one_of(st.just("Which word of the passage is meant here?"), _STRINGS),
        _STRINGS,
        _STRINGS,
        st.one_of(st.none(), st.lists(_STRINGS, min_size=3, max_size=5)),
        st.booleans(),
    ),
    st.just(ChatRequestError("refused")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(outputs=st.lists(_OUTPUTS, min_size=1, max_size=4))
def test_every_request_is_accounted_for_and_every_answer_is_its_source_span(outputs: list[Any]) -> None:
    records = [RECORD, {**RECORD, "id": "second", "lang": "el"}]
    config = LlmGeneratorConfig(per_record=1, min_passage_chars=50)
    result = generate_llm_items(records, ScriptedClient(outputs), config, model_name="m")
    assert result.requests == 4
    assert len(result.accepted) + len(result.rejected) == result.requests
    assert {r.reason for r in result.rejected} <= set(REJECT_REASONS)
    texts: dict[str, str] = {r["id"]: r["text"] for r in records}
    check: Callable[[Any], list[str]] = lambda item: validate_llm_item(item, texts[item.source_id], config)  # noqa: E731
    for item in result.accepted:
        assert texts[item.source_id][item.span[0] : item.span[1]] == item.answer
        assert check(item) == []
