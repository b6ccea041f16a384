"""The CPU reference server: a small OpenAI-compatible HTTP server over a local transformers model folder.

It exists for offline development and tests (the `InferenceEndpoint` resource, lm-eval `local-completions`
runs); vLLM is the production server and speaks the same API. Like vLLM, named PEFT LoRA adapters
(`--lora-modules name=DIR`) are selected by the request's `model` field. Requests run one at a time under a
single lock around the model, prompt by prompt, with float32 weights by default, so results are
deterministic and match `transformers` greedy generation and log-softmax scores.

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/completions` (`echo` + `logprobs` give prompt-token
log-probabilities as lm-eval's loglikelihood requests expect), `POST /v1/chat/completions` (rendered with the
tokenizer's chat template, or a plain `role: content` transcript ending in `assistant:` when it has none).
`response_format` (`json_object` / `json_schema`) is accepted and recorded, but decoding is NOT constrained:
callers must validate the JSON they get back.

    python -m llm_assets.serving.reference_server --model DIR [--lora-modules NAME=DIR ...] [--port 8000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_LOGPROBS = 20
_DTYPES = ("float32", "bfloat16", "float16")


class RequestError(ValueError):
    """A request the server refuses; `status` is the HTTP status and the message says what to change."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST, param: str | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.param = param


@dataclass
class Sampling:
    """Decoding parameters of one request, validated."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None
    echo: bool = False


@dataclass
class Completion:
    """One prompt's result: generated text and ids, why it stopped, and the OpenAI `logprobs` object."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    logprobs: dict[str, Any] | None = None


class ReferenceEngine:
    """A transformers causal LM plus optional LoRA adapters; every call holds the one lock around the model."""

    def __init__(
        self,
        model_dir: Path,
        *,
        lora_modules: Mapping[str, Path] | None = None,
        served_model_name: str | None = None,
        dtype: str = "float32",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise ValueError(f"{model_dir}: no config.json; pass a transformers model folder to --model")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: use one of {', '.join(_DTYPES)}")
        lora_modules = dict(lora_modules or {})
        self.model_dir = model_dir
        self.served_model_name = served_model_name or str(model_dir)
        if self.served_model_name in lora_modules:
            raise ValueError(f"LoRA module name {self.served_model_name!r} clashes with the served model name")
        for name, folder in lora_modules.items():
            if not (Path(folder) / "adapter_config.json").is_file():
                raise ValueError(
                    f"--lora-modules {name}={folder}: no adapter_config.json; save it with save_pretrained"
                )
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
        self.lora_modules = {name: Path(folder) for name, folder in lora_modules.items()}
        if self.lora_modules:
            from peft import PeftModel

            names = list(self.lora_modules)
            model = PeftModel.from_pretrained(model, str(self.lora_modules[names[0]]), adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(str(self.lora_modules[name]), adapter_name=name)
        model.eval()
        self.model = model
        self.max_model_len = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.vocab_size = int(model.config.vocab_size)
        self.eos_token_ids = self._eos_ids()
        self.lock = threading.Lock()
        self.created = int(time.time())

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(int(i) for i in source)
        return ids

    @property
    def model_names(self) -> list[str]:
        return [self.served_model_name, *self.lora_modules]

    def resolve(self, model: Any) -> str | None:
        """The adapter a request's `model` selects (None: the base model); unknown names are a 404."""
        if model is None or model == self.served_model_name:
            return None
        if isinstance(model, str) and model in self.lora_modules:
            return model
        raise RequestError(
            f"The model `{model}` does not exist; served: {', '.join(self.model_names)}",
            HTTPStatus.NOT_FOUND,
            "model",
        )

    # ------------------------------------------------------------ tokens and text

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return str(
            self.tokenizer.decode(
                list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
            )
        )

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """Each token's share of the decoded text; a token ending inside a multi-byte character gets ''."""
        pieces: list[str] = []
        stable = ""
        for end in range(1, len(ids) + 1):
            text = self.decode(ids[:end])
            if text.endswith("\ufffd"):
                pieces.append("")
                continue
            pieces.append(text[len(stable) :])
            stable = text
        return pieces

    def check_prompt(self, ids: list[int], max_tokens: int) -> None:
        if not ids:
            raise RequestError("prompt is empty; send at least one token", param="prompt")
        if bad := [i for i in ids if not 0 <= i < self.vocab_size]:
            raise RequestError(f"prompt token ids {bad[:5]} are outside the vocabulary (0..{self.vocab_size - 1})")
        if len(ids) + max_tokens > self.max_model_len:
            raise RequestError(
                f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's maximum context "
                f"length ({self.max_model_len}); shorten the prompt or lower max_tokens",
                param="prompt",
            )

    # ------------------------------------------------------------ the model

    def complete(self, ids: list[int], sampling: Sampling, adapter: str | None) -> Completion:
        """Scores the prompt (when asked) and decodes up to `max_tokens` tokens, holding the model lock."""
        import torch

        self.check_prompt(ids, sampling.max_tokens)
        with self.lock, torch.inference_mode():
            if adapter is not None:
                self.model.set_adapter(adapter)
                return self._complete(ids, sampling)
            if self.lora_modules:
                with self.model.disable_adapter():
                    return self._complete(ids, sampling)
            return self._complete(ids, sampling)

    def _complete(self, ids: list[int], sampling: Sampling) -> Completion:
        import torch

        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator()
            generator.manual_seed(sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4)))
        output = self.model(input_ids=torch.tensor([ids]), use_cache=True)
        step_logprobs = torch.log_softmax(output.logits[0].float(), dim=-1)
        want_logprobs = sampling.logprobs is not None
        token_logprobs: list[float | None] = []
        top_logprobs: list[dict[int, float] | None] = []
        if sampling.echo and want_logprobs:
            token_logprobs.append(None)
            top_logprobs.append(None)
            for position in range(1, len(ids)):
                row = step_logprobs[position - 1]
                token_logprobs.append(float(row[ids[position]]))
                top_logprobs.append(self._top(row, ids[position], sampling.logprobs or 0))
        past = output.past_key_values
        row = step_logprobs[-1]
        generated: list[int] = []
        finish_reason = "length"
        text = ""
        while len(generated) < sampling.max_tokens:
            token = self._pick(row, sampling, generator)
            if token in self.eos_token_ids:
                finish_reason = "stop"
                break
            generated.append(token)
            if want_logprobs:
                token_logprobs.append(float(row[token]))
                top_logprobs.append(self._top(row, token, sampling.logprobs or 0))
            text = self.decode(generated, skip_special_tokens=True)
            if sampling.stop and (cut := _first_stop(text, sampling.stop)) is not None:
                text = text[:cut]
                finish_reason = "stop"
                break
            if len(generated) == sampling.max_tokens:
                break
            output = self.model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past = output.past_key_values
            row = torch.log_softmax(output.logits[0, -1].float(), dim=-1)
        result = Completion(text, len(ids), len(generated), finish_reason)
        if want_logprobs:
            result.logprobs = self._logprobs_object(ids, generated, sampling.echo, token_logprobs, top_logprobs)
        return result

    @staticmethod
    def _pick(row: Any, sampling: Sampling, generator: Any) -> int:
        import torch

        if sampling.temperature <= 0:
            return int(torch.argmax(row))
        probs = torch.softmax(row / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=generator))

    @staticmethod
    def _top(row: Any, chosen: int, k: int) -> dict[int, float]:
        import torch

        top: dict[int, float] = {}
        if k > 0:
            values, indices = torch.topk(row, k)
            top = {int(i): float(v) for v, i in zip(values, indices, strict=True)}
        top.setdefault(chosen, float(row[chosen]))
        return top

    def _logprobs_object(
        self,
        prompt: list[int],
        generated: list[int],
        echo: bool,
        token_logprobs: list[float | None],
        top_logprobs: list[dict[int, float] | None],
    ) -> dict[str, Any]:
        """OpenAI's legacy completions `logprobs`: tokens, token_logprobs, top_logprobs, text_offset."""
        pieces = self.pieces(prompt + generated)
        if not echo:
            pieces = pieces[len(prompt) :]
        offset = 0  # offsets are into the returned text
        offsets = []
        for piece in pieces:
            offsets.append(offset)
            offset += len(piece)
        tops: list[dict[str, float] | None] = []
        for top in top_logprobs:
            tops.append(None if top is None else {self.decode([token]): value for token, value in top.items()})
        return {"tokens": pieces, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}

    def render_chat(self, messages: list[dict[str, str]]) -> tuple[list[int], bool]:
        """Prompt ids for a chat; True when the tokenizer's chat template rendered it."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.encode(str(text), add_special_tokens=False), True
        transcript = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self.encode(transcript), False


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [index for stop in stops if (index := text.find(stop)) >= 0]
    return min(found) if found else None


# ------------------------------------------------------------ request parsing


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"{name}={value!r}: must be a number from {low} to {high}", param=name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{name}={value!r}: must be an integer from {low} to {high}", param=name)
    return value


def _stop(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError(f"stop={stop!r}: must be a string or a list of strings", param="stop")
    return [s for s in stop if s]


def _sampling(body: Mapping[str, Any], max_len: int, *, max_tokens_names: Sequence[str] = ("max_tokens",)) -> Sampling:
    n = _integer(body, "n", 1, 1, 128)
    if n != 1:
        raise RequestError(f"n={n}: the reference server returns one choice per prompt; send n=1", param="n")
    max_tokens: int | None = None
    for name in max_tokens_names:
        max_tokens = _integer(body, name, max_tokens, 0, max_len)
    return Sampling(
        max_tokens=16 if max_tokens is None else max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
        seed=_integer(body, "seed", None, -(2**63), 2**63 - 1),
        stop=_stop(body),
    )


def parse_prompts(engine: ReferenceEngine, prompt: Any) -> list[list[int]]:
    """`prompt` as str, list[str], list[int] or list[list[int]] -> one token list per prompt."""
    if isinstance(prompt, str):
        return [engine.encode(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [engine.encode(p) for p in prompt]
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise RequestError(
        "prompt must be a string, a list of strings, a list of token ids or a list of token-id lists", param="prompt"
    )


def _messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {role, content} objects", param="messages")
    rendered = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"messages[{number}]: needs a string role and a content", param="messages")
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts: only text is served here
            if not all(isinstance(part, dict) and part.get("type") == "text" for part in content):
                raise RequestError(f"messages[{number}]: only text content parts are supported", param="messages")
            content = "".join(str(part.get("text", "")) for part in content)
        if not isinstance(content, str):
            raise RequestError(f"messages[{number}]: content must be a string or text parts", param="messages")
        rendered.append({"role": message["role"], "content": content})
    return rendered


def _response_format(body: Mapping[str, Any]) -> dict[str, Any] | None:
    value = body.get("response_format")
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise RequestError(
            f"response_format={value!r}: type must be 'text', 'json_object' or 'json_schema'", param="response_format"
        )
    if kind == "json_schema" and not isinstance(value.get("json_schema"), dict):
        raise RequestError("response_format json_schema needs a json_schema object", param="response_format")
    return dict(value)


# ------------------------------------------------------------ HTTP


class ReferenceServer(ThreadingHTTPServer):
    """Serves `engine` over HTTP; `api_key`, when set, must come as `Authorization: Bearer <key>`."""

    daemon_threads = True

    def __init__(
        self, engine: ReferenceEngine, host: str = "127.0.0.1", port: int = 8000, *, api_key: str | None = None
    ) -> None:
        self.engine = engine
        self.api_key = api_key
        self.verbose = False
        self.response_formats: deque[dict[str, Any]] = deque(maxlen=100)  # requested, not enforced
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        """The OpenAI base URL (ends in /v1)."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def completions(self, body: Mapping[str, Any]) -> dict[str, Any]:
        engine = self.engine
        adapter = engine.resolve(body.get("model"))
        prompts = parse_prompts(engine, body.get("prompt"))
        sampling = _sampling(body, engine.max_model_len)
        sampling.echo = bool(body.get("echo", False))
        sampling.logprobs = _integer(body, "logprobs", None, 0, MAX_LOGPROBS)
        for ids in prompts:
            engine.check_prompt(ids, sampling.max_tokens)
        choices = []
        prompt_tokens = completion_tokens = 0
        for index, ids in enumerate(prompts):
            result = engine.complete(ids, sampling, adapter)
            text = result.text
            if sampling.echo:
                prompt = body["prompt"]
                original = prompt if isinstance(prompt, str) else prompt[index] if isinstance(prompt[0], str) else None
                text = (original if original is not None else engine.decode(ids)) + text
            choices.append(
                {"index": index, "text": text, "logprobs": result.logprobs, "finish_reason": result.finish_reason}
            )
            prompt_tokens += result.prompt_tokens
            completion_tokens += result.completion_tokens
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or engine.served_model_name,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    def chat(self, body: Mapping[str, Any]) -> dict[str, Any]:
        engine = self.engine
        adapter = engine.resolve(body.get("model"))
        messages = _messages(body)
        if body.get("logprobs"):
            raise RequestError("logprobs are not served on chat completions here; use /v1/completions with echo")
        sampling = _sampling(body, engine.max_model_len, max_tokens_names=("max_tokens", "max_completion_tokens"))
        response_format = _response_format(body)
        if response_format is not None:
            self.response_formats.append(response_format)
        ids, _templated = engine.render_chat(messages)
        result = engine.complete(ids, sampling, adapter)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or engine.served_model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "logprobs": None,
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": _usage(result.prompt_tokens, result.completion_tokens),
        }

    def models(self) -> dict[str, Any]:
        engine = self.engine
        base = {
            "id": engine.served_model_name,
            "object": "model",
            "created": engine.created,
            "owned_by": "llm-assets",
            "root": str(engine.model_dir),
            "parent": None,
            "max_model_len": engine.max_model_len,
        }
        adapters = [
            {**base, "id": name, "root": str(folder), "parent": engine.served_model_name}
            for name, folder in engine.lora_modules.items()
        ]
        return {"object": "list", "data": [base, *adapters]}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class _Handler(BaseHTTPRequestHandler):
    server: ReferenceServer
    server_version = "llm-assets-reference"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, param: str | None = None) -> None:
        kind = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError"}.get(status, "ServerError")
        error = {"message": " ".join(message.split()), "type": kind, "param": param, "code": status}
        self._json(status, {"error": error})

    def _authorized(self) -> bool:
        if self.server.api_key is None:
            return True
        if self.headers.get("Authorization", "") == f"Bearer {self.server.api_key}":
            return True
        self._error(HTTPStatus.UNAUTHORIZED, "missing or wrong API key; send Authorization: Bearer <key>")
        return False

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            return self._json(HTTPStatus.OK, {"status": "ok"})
        if not self._authorized():
            return None
        if path == "/v1/models":
            return self._json(HTTPStatus.OK, self.server.models())
        return self._error(HTTPStatus.NOT_FOUND, f"no route GET {path}; try /v1/models or /health")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length)
        if not self._authorized():
            return None
        routes = {"/v1/completions": self.server.completions, "/v1/chat/completions": self.server.chat}
        if path not in routes:
            return self._error(
                HTTPStatus.NOT_FOUND, f"no route POST {path}; use /v1/completions or /v1/chat/completions"
            )
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            return self._error(HTTPStatus.BAD_REQUEST, f"request body is not valid JSON ({exc})")
        if not isinstance(body, dict):
            return self._error(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
        try:
            return self._json(HTTPStatus.OK, routes[path](body))
        except RequestError as exc:
            return self._error(exc.status, str(exc), exc.param)
        except Exception as exc:  # a bug or a model failure must still answer with JSON, not a dropped connection
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------ command line


def _lora_module(value: str) -> tuple[str, Path]:
    name, sep, folder = value.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAME=DIR (a PEFT adapter folder)")
    return name, Path(folder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llm_assets.serving.reference_server",
        description="CPU reference OpenAI-compatible server over a local transformers model folder, for offline "
        "development and tests (production serves with vLLM). Endpoints: GET /health, GET /v1/models, "
        "POST /v1/completions, POST /v1/chat/completions. Requests run one at a time.",
    )
    parser.add_argument("--model", required=True, type=Path, help="transformers model folder (config.json, tokenizer)")
    parser.add_argument(
        "--lora-modules",
        nargs="+",
        action="extend",
        default=[],
        type=_lora_module,
        metavar="NAME=DIR",
        help="PEFT LoRA adapters, selected by the request's model field (as in vLLM)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    parser.add_argument("--served-model-name", help="model name clients send (default: the --model path)")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32", help="weight dtype (default: float32)")
    parser.add_argument(
        "--api-key-env", metavar="NAME", help="environment variable holding the API key clients must send"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"error: environment variable {args.api_key_env} is empty or unset", file=sys.stderr)
            return 2
    lora = dict(args.lora_modules)
    if len(lora) != len(args.lora_modules):
        print("error: --lora-modules names must be unique", file=sys.stderr)
        return 2
    try:
        engine = ReferenceEngine(
            args.model, lora_modules=lora, served_model_name=args.served_model_name, dtype=args.dtype
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = ReferenceServer(engine, args.host, args.port, api_key=api_key)
    server.verbose = args.verbose
    print(f"reference server ready at {server.url} serving {', '.join(engine.model_names)}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
