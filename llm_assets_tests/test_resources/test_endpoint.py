"""`InferenceEndpoint` against the CPU reference server, and its one-line errors against stub servers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import pytest
from pydantic import ValidationError

from llm_assets.resources.endpoint import EndpointError, InferenceEndpoint
from llm_assets.serving.reference_server import ReferenceEngine, ReferenceServer
from llm_assets.training.base_model import TinyLlamaConfig, bootstrap_tiny_llama
from llm_assets.training.tokenizer import TokenizerConfig, save_pretrained, train_bpe_tokenizer

TEXTS = ["Question: What is the capital of Greece?\nAnswer: Athens", "Η επιτροπή ενέκρινε τον προϋπολογισμό."] * 50
KEY_ENV = "LLM_ASSETS_TEST_ENDPOINT_KEY"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> ReferenceEngine:
    tokenizer_dir = tmp_path_factory.mktemp("tokenizer")
    save_pretrained(train_bpe_tokenizer(TEXTS, TokenizerConfig(vocab_size=300)), tokenizer_dir)
    folder = tmp_path_factory.mktemp("model")
    bootstrap_tiny_llama(tokenizer_dir, TinyLlamaConfig(hidden_size=32, intermediate_size=64), folder)
    return ReferenceEngine(folder, served_model_name="tiny")


def _serve(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(engine: ReferenceEngine) -> Iterator[ReferenceServer]:
    yield from _serve(ReferenceServer(engine, "127.0.0.1", 0))  # type: ignore[misc]


@pytest.fixture(scope="module")
def keyed_server(engine: ReferenceEngine) -> Iterator[ReferenceServer]:
    yield from _serve(ReferenceServer(engine, "127.0.0.1", 0, api_key="s3cret"))  # type: ignore[misc]


class _Stub(BaseHTTPRequestHandler):
    """Answers from the server's `script`: a list of (status, body) pairs, one per request, the last repeated."""

    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.hits += 1
        status, body = self.server.script[min(self.server.hits, len(self.server.script)) - 1]
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _answer
    do_POST = _answer


@pytest.fixture
def stub() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.daemon_threads = True
    server.hits = 0
    server.script = [(200, "{}")]
    yield from _serve(server)


def _url(server: Any) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def _endpoint(server: Any, **config: Any) -> InferenceEndpoint:
    return InferenceEndpoint(base_url=_url(server), **{"model": "tiny", "backoff_s": 0.0, **config})


def test_health_models_complete_and_chat(server: ReferenceServer) -> None:
    endpoint = _endpoint(server)
    assert endpoint.health() >= 0
    assert endpoint.models() == ["tiny"]
    answer = endpoint.complete("Question: What", max_tokens=3, temperature=0)
    assert answer["usage"]["completion_tokens"] <= 3 and isinstance(answer["choices"][0]["text"], str)
    assert endpoint.complete([1, 2, 3], max_tokens=2, temperature=0)["usage"]["prompt_tokens"] == 3

    messages = [{"role": "user", "content": "Capital of Greece?"}]
    reply = endpoint.chat(
        messages, temperature=0, max_tokens=4, seed=1, stop=["\n"], response_format={"type": "json_object"}
    )
    assert reply == endpoint.chat(messages, temperature=0, max_tokens=4, stop=["\n"])
    assert server.response_formats[-1] == {"type": "json_object"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_server_is_retried_then_one_line() -> None:
    endpoint = InferenceEndpoint(base_url=f"http://127.0.0.1:{_free_port()}/v1", model="m", max_retries=1, backoff_s=0)
    with pytest.raises(EndpointError) as error:
        endpoint.models()
    message = str(error.value)
    assert "unreachable (connection refused)" in message and "after 2 attempts" in message
    assert message.endswith("start the server or fix base_url") and "\n" not in message


def test_timeout_names_the_setting() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        endpoint = InferenceEndpoint(
            base_url=f"http://127.0.0.1:{silent.getsockname()[1]}/v1", model="m", timeout_s=0.3, max_retries=3
        )
        with pytest.raises(EndpointError, match=r"no answer within 0\.3s; raise timeout_s"):
            endpoint.complete("x")


def test_unknown_model_and_bad_request_are_not_retried(server: ReferenceServer) -> None:
    with pytest.raises(EndpointError) as error:
        _endpoint(server, model="nope").complete("x")
    assert "HTTP 404 (The model `nope` does not exist; served: tiny)" in str(error.value)
    assert "model 'nope' is not served" in str(error.value)
    with pytest.raises(EndpointError, match=r"HTTP 400 \(n=2: .*send n=1\); fix the request parameters"):
        _endpoint(server).complete("x", n=2)


def test_server_errors_are_retried_with_backoff(stub: Any) -> None:
    ok = json.dumps({"choices": [{"index": 0, "text": "fine"}]})
    stub.script = [(503, '{"error": {"message": "warming up"}}'), (502, "bad gateway"), (200, ok)]
    assert _endpoint(stub, max_retries=2).complete("x")["choices"][0]["text"] == "fine"
    assert stub.hits == 3

    stub.hits = 0
    stub.script = [(500, '{"message": "engine dead"}')]
    with pytest.raises(EndpointError, match=r"HTTP 500 \(engine dead\) after 2 attempts; check the server's log"):
        _endpoint(stub, max_retries=1).complete("x")
    assert stub.hits == 2

    stub.hits = 0
    stub.script = [(422, '{"detail": "bad field"}')]
    with pytest.raises(EndpointError, match=r"HTTP 422 \(bad field\)"):
        _endpoint(stub, max_retries=3).complete("x")
    assert stub.hits == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<html>nginx</html>", "answer is not JSON"),
        ("[1, 2]", "not an object"),
        ('{"choices": []}', r"no choices\[0\]\.message\.content"),
    ],
)
def test_malformed_answers(stub: Any, body: str, message: str) -> None:
    stub.script = [(200, body)]
    with pytest.raises(EndpointError, match=message):
        _endpoint(stub).chat([{"role": "user", "content": "x"}])


def test_api_key_comes_from_the_named_environment_variable(
    keyed_server: ReferenceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = _endpoint(keyed_server, api_key_env=KEY_ENV)
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(EndpointError, match=f"environment variable {KEY_ENV} .* is unset"):
        endpoint.models()
    monkeypatch.setenv(KEY_ENV, "wrong")
    with pytest.raises(EndpointError, match=rf"HTTP 401 .*check the key in \${KEY_ENV}"):
        endpoint.models()
    monkeypatch.setenv(KEY_ENV, "s3cret")
    assert endpoint.models() == ["tiny"]
    with pytest.raises(EndpointError, match="set api_key_env"):
        _endpoint(keyed_server).models()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"base_url": "localhost:8000/v1"}, "not an http"),
        ({"api_key_env": "sk-live-0123456789"}, "NAME of an environment variable"),
        ({"timeout_s": 0}, "greater than 0"),
    ],
)
def test_config_fails_fast(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        InferenceEndpoint(model="m", **config)


def test_endpoint_is_a_dagster_resource(server: ReferenceServer) -> None:
    @dg.asset
    def served_models(endpoint: InferenceEndpoint) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"models": endpoint.models(), "health_s": endpoint.health()})

    with dg.instance_for_test() as instance:
        result = dg.materialize([served_models], resources={"endpoint": _endpoint(server)}, instance=instance)
    assert result.success
    event = result.get_asset_materialization_events()[0]
    assert event.materialization.metadata["models"].value == ["tiny"]
