"""The CPU reference server against transformers itself, and lm-eval `local-completions` against the server."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_assets.evaluation.lm_eval_tasks import EvalTaskError, export_task, run_endpoint, run_local
from llm_assets.serving.reference_server import ReferenceEngine, ReferenceServer, main
from llm_assets.training.base_model import TinyLlamaConfig, bootstrap_tiny_llama
from llm_assets.training.tokenizer import TokenizerConfig, save_pretrained, train_bpe_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TEXTS = ["Question: What is the capital of Greece?\nAnswer: Athens", "Η επιτροπή ενέκρινε τον προϋπολογισμό."] * 50
PROMPT = "Question: What is the capital of Greece?\nAnswer:"
MC_ITEMS: list[dict[str, Any]] = [
    {
        "id": "mc0",
        "question": "What is the capital of Greece?",
        "choices": ["Athens", "Rome", "Paris"],
        "answer_index": 0,
    },
    {"id": "mc1", "question": "Ποια είναι η πρωτεύουσα της Ελλάδας;", "choices": ["Ρώμη", "Αθήνα"], "answer_index": 1},
    {"id": "mc2", "question": "Is the budget approved?", "choices": ["yes", "no"], "answer_index": 0},
    {"id": "mc3", "question": "Which is a colour?", "choices": ["table", "blue", "run"], "answer_index": 1},
]
GEN_ITEMS: list[dict[str, Any]] = [
    {"id": "g0", "question": "Capital of Greece?", "answer": "Athens"},
    {"id": "g1", "question": "Η ___ ενέκρινε τον προϋπολογισμό.", "answer": "επιτροπή"},
    {"id": "g2", "question": "Two plus two?", "answer": "4"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer_dir = tmp_path_factory.mktemp("tokenizer")
    save_pretrained(train_bpe_tokenizer(TEXTS, TokenizerConfig(vocab_size=300)), tokenizer_dir)
    folder = tmp_path_factory.mktemp("model")
    bootstrap_tiny_llama(tokenizer_dir, TinyLlamaConfig(hidden_size=32, intermediate_size=64), folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(model_dir)),
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():  # LoRA B starts at zero (a no-op adapter); perturb it so the adapter matters
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def engine(model_dir: Path, adapter_dir: Path) -> ReferenceEngine:
    return ReferenceEngine(model_dir, lora_modules={"tuned": adapter_dir}, served_model_name="tiny")


@pytest.fixture(scope="module")
def server(engine: ReferenceEngine) -> Iterator[ReferenceServer]:
    served = ReferenceServer(engine, "127.0.0.1", 0)
    thread = threading.Thread(target=served.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()


@pytest.fixture(scope="module")
def hf_model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()


def _post(server: ReferenceServer, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        server.url.removesuffix("/v1") + path, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _complete(server: ReferenceServer, **body: Any) -> dict[str, Any]:
    status, answer = _post(server, "/v1/completions", {"model": "tiny", **body})
    assert status == 200, answer
    return answer


def _log_softmax(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_greedy_completion_is_deterministic_and_matches_transformers(
    server: ReferenceServer, engine: ReferenceEngine, hf_model: Any
) -> None:
    import torch

    first = _complete(server, prompt=PROMPT, max_tokens=8, temperature=0)
    second = _complete(server, prompt=PROMPT, max_tokens=8, temperature=0, seed=123)
    assert first["choices"][0]["text"] == second["choices"][0]["text"]

    ids = engine.encode(PROMPT)
    with torch.no_grad():
        output = hf_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    expected = engine.tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)
    assert first["choices"][0]["text"] == expected
    assert first["usage"]["prompt_tokens"] == len(ids)
    assert first["usage"]["total_tokens"] == len(ids) + first["usage"]["completion_tokens"]

    by_ids = _complete(server, prompt=ids, max_tokens=8, temperature=0)
    assert by_ids["choices"][0]["text"] == expected


def test_echo_logprobs_equal_the_models_log_softmax(
    server: ReferenceServer, engine: ReferenceEngine, hf_model: Any
) -> None:
    ids = engine.encode(PROMPT)
    expected = _log_softmax(hf_model, ids)
    # what lm-eval's local-completions sends for a loglikelihood request
    answer = _complete(server, prompt=ids, max_tokens=1, temperature=0, logprobs=1, echo=True, seed=1234)
    logprobs = answer["choices"][0]["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    for position in range(1, len(ids)):
        assert logprobs["token_logprobs"][position] == pytest.approx(
            float(expected[position - 1, ids[position]]), abs=1e-4
        )
        top = logprobs["top_logprobs"][position]
        assert max(top.values()) == pytest.approx(float(expected[position - 1].max()), abs=1e-4)
        assert logprobs["token_logprobs"][position] in top.values()
    assert logprobs["token_logprobs"][-1] == pytest.approx(float(expected[-1].max()), abs=1e-4)  # greedy token

    text = answer["choices"][0]["text"]
    assert "".join(logprobs["tokens"]) == text and text.startswith(engine.decode(ids))
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"]) and logprobs["text_offset"][0] == 0

    scored_only = _complete(server, prompt=PROMPT, max_tokens=0, logprobs=0, echo=True)
    assert scored_only["choices"][0]["text"] == PROMPT
    assert scored_only["choices"][0]["logprobs"]["token_logprobs"] == pytest.approx(
        logprobs["token_logprobs"][: len(ids)], abs=1e-5
    )
    assert scored_only["usage"]["completion_tokens"] == 0


def test_batched_prompts_sampling_seed_and_stop(server: ReferenceServer, engine: ReferenceEngine) -> None:
    prompts = [engine.encode(PROMPT), engine.encode("Η επιτροπή")]
    batch = _complete(server, prompt=prompts, max_tokens=4, temperature=0)
    assert [c["index"] for c in batch["choices"]] == [0, 1]
    single = _complete(server, prompt=prompts[1], max_tokens=4, temperature=0)
    assert batch["choices"][1]["text"] == single["choices"][0]["text"]
    assert batch["usage"]["prompt_tokens"] == sum(len(p) for p in prompts)

    sampled = [
        _complete(server, prompt=PROMPT, max_tokens=6, temperature=1.0, top_p=0.9, seed=7)["choices"][0]["text"]
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]

    greedy = _complete(server, prompt=PROMPT, max_tokens=8, temperature=0)["choices"][0]
    assert greedy["finish_reason"] == "length" and len(greedy["text"]) >= 3
    stop = greedy["text"][1:3]
    cut = _complete(server, prompt=PROMPT, max_tokens=8, temperature=0, stop=[stop, "never"])["choices"][0]
    assert cut["text"] == greedy["text"][: greedy["text"].find(stop)] and cut["finish_reason"] == "stop"


def test_chat_uses_a_transcript_or_the_chat_template(server: ReferenceServer, engine: ReferenceEngine) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Greece?"}]
    body = {"model": "tiny", "messages": messages, "max_tokens": 5, "temperature": 0}
    status, chat = _post(server, "/v1/chat/completions", {**body, "response_format": {"type": "json_object"}})
    assert status == 200, chat
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    transcript = "system: Be brief.\nuser: Capital of Greece?\nassistant:"
    plain = _complete(server, prompt=transcript, max_tokens=5, temperature=0)
    assert chat["choices"][0]["message"]["content"] == plain["choices"][0]["text"]
    assert chat["usage"]["prompt_tokens"] == len(engine.encode(transcript))
    assert server.response_formats[-1] == {"type": "json_object"}

    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    engine.tokenizer.chat_template = template
    try:
        ids, templated = engine.render_chat(messages)
    finally:
        engine.tokenizer.chat_template = None
    assert templated and engine.decode(ids) == "<system>Be brief.\n<user>Capital of Greece?\n<assistant>"


def test_lora_module_selected_by_model_name(
    server: ReferenceServer, engine: ReferenceEngine, model_dir: Path, adapter_dir: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    status, listed = _post_get(server, "/v1/models")
    assert status == 200
    assert [(m["id"], m["parent"]) for m in listed["data"]] == [("tiny", None), ("tuned", "tiny")]

    ids = engine.encode(PROMPT)
    scores = {}
    for name in ("tiny", "tuned", "tiny"):
        answer = _complete(server, model=name, prompt=ids, max_tokens=0, logprobs=1, echo=True)
        scores.setdefault(name, []).append(answer["choices"][0]["logprobs"]["token_logprobs"][1:])
    assert scores["tiny"][0] == scores["tiny"][1]  # serving the adapter left the base model as it was
    assert scores["tiny"][0] != pytest.approx(scores["tuned"][0], abs=1e-3)

    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(adapter_dir)).eval()
    expected = _log_softmax(tuned, ids)
    assert scores["tuned"][0] == pytest.approx([float(expected[p - 1, ids[p]]) for p in range(1, len(ids))], abs=1e-4)


def _post_get(server: ReferenceServer, path: str) -> tuple[int, dict[str, Any]]:
    with urllib.request.urlopen(server.url.removesuffix("/v1") + path, timeout=30) as response:
        return response.status, json.loads(response.read())


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/completions", {"prompt": 5}, 400, "prompt must be"),
        ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens=-1"),
        ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature='hot'"),
        ("/v1/completions", {"prompt": "x", "n": 2}, 400, "send n=1"),
        ("/v1/completions", {"prompt": [999999]}, 400, "outside the vocabulary"),
        ("/v1/completions", {"prompt": ""}, 400, "prompt is empty"),
        ("/v1/completions", {"prompt": "x", "stop": [1]}, 400, "stop="),
        ("/v1/completions", {"prompt": "x " * 600}, 400, "maximum context length"),
        ("/v1/completions", {"prompt": "x", "model": "nope"}, 404, "`nope` does not exist"),
        ("/v1/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages must be"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "content must be"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "response_format": {}}, 400, "type"),
        ("/v1/embeddings", {"input": "x"}, 404, "no route"),
    ],
)
def test_bad_requests_get_json_errors(server: ReferenceServer, path: str, body: Any, status: int, message: str) -> None:
    code, answer = _post(server, path, body)
    assert code == status
    assert message in answer["error"]["message"] and "\n" not in answer["error"]["message"]
    assert answer["error"]["code"] == status


def test_health_and_cli(server: ReferenceServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _post_get(server, "/health") == (200, {"status": "ok"})
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "vLLM" in capsys.readouterr().out
    assert main(["--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path), "--lora-modules", "no-folder"])


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory, hf_model: Any, engine: ReferenceEngine) -> Path:
    """A random model rarely answers right, so `srv_copy` takes transformers' own greedy output as the answer
    of two items out of three: a server that generates anything else scores below 2/3."""
    import torch

    folder = tmp_path_factory.mktemp("tasks")
    export_task(MC_ITEMS, folder, "srv_mc", "multiple_choice")
    export_task(GEN_ITEMS, folder, "srv_gen", "generate", until=["\n"], max_gen_toks=4, regex=r"\w+")
    copy_items = []
    for number, question in enumerate(["What is the capital", "Η επιτροπή"]):
        ids = engine.encode(question)
        with torch.no_grad():
            output = hf_model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
        answer = engine.tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True).split("\n")[0].strip()
        copy_items.append({"id": f"c{number}", "question": question, "answer": answer})
    copy_items.append({"id": "c2", "question": "Two plus two?", "answer": "4"})
    export_task(
        copy_items, folder, "srv_copy", "generate", prompt_template="{{question}}", until=["\n"], max_gen_toks=4
    )
    return folder


def test_lm_eval_through_the_server_matches_in_process(
    server: ReferenceServer, task_dir: Path, model_dir: Path
) -> None:
    tasks = ["srv_mc", "srv_gen", "srv_copy"]
    local = run_local(task_dir, tasks, model_dir, seed=0)
    assert local.metrics["srv_copy"]["exact_match,strip"] == pytest.approx(2 / 3)
    served = run_endpoint(task_dir, tasks, server.url, "tiny", tokenizer_dir=model_dir, batch_size=2)
    assert served.metrics == local.metrics and served.samples == local.samples
    manifest = served.manifest
    assert manifest["backend"] == "local-completions" and manifest["backend_version"] == {"lm_eval": "0.4.13"}
    assert manifest["endpoint"] == {
        "url": f"{server.url}/completions",
        "model": "tiny",
        "num_concurrent": 1,
        "tokenized_requests": True,
    }
    assert manifest["tasks"] == local.manifest["tasks"]

    text_only = run_endpoint(task_dir, ["srv_gen", "srv_copy"], server.url, "tiny", num_concurrent=2)
    assert text_only.metrics == {name: local.metrics[name] for name in ("srv_gen", "srv_copy")}
    assert text_only.manifest["endpoint"]["tokenized_requests"] is False
    print("local", local.metrics, "served", served.metrics)


def test_run_endpoint_refuses_scoring_without_a_tokenizer(task_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EvalTaskError, match="srv_mc: log-likelihood tasks need tokenizer_dir"):
        run_endpoint(task_dir, ["srv_mc", "srv_gen"], "http://127.0.0.1:9/v1", "tiny")
    with pytest.raises(EvalTaskError, match=r"no tokenizer\.json"):
        run_endpoint(task_dir, ["srv_gen"], "http://127.0.0.1:9/v1", "tiny", tokenizer_dir=tmp_path)
    with pytest.raises(EvalTaskError, match="no task YAML"):
        run_endpoint(task_dir, ["nope"], "http://127.0.0.1:9/v1", "tiny")
